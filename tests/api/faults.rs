//! Provider faults a real provider will not produce on demand, from a raw-TCP token
//! endpoint: every failure is bounded in size and time, classified, keeps the stored
//! tokens, and the credential recovers once the provider does.

use std::time::Instant;

use serde_json::{json, Value};

use crate::helpers::faults::FaultServer;
use crate::helpers::TestApp;
use latchkey::model::{ConnectionId, CredentialSecret, Owner};

#[tokio::test]
async fn provider_faults_are_bounded_keep_tokens_and_recover() {
    let app = TestApp::spawn().await;
    let faults = FaultServer::start();
    let conn = json!({"id": "flaky", "kind": "oauth2", "oauth2": {"authorization_endpoint": format!("{}/authorize", faults.url),
        "token_endpoint": format!("{}/token", faults.url), "client_id": "c", "client_secret": "s"}});
    assert_eq!(app.post_json("/v1/admin/connections", conn).await.status(), 201);
    let r = app
        .put_json(
            "/v1/admin/connections/flaky/credentials/user:alice",
            json!({"access_token": "at-original", "refresh_token": "rt-original", "expires_in": 600}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let token = app.service_agent_token("flaky").await;
    let release = |min_ttl: i64| {
        app.http.get(app.url(&format!("/v1/connections/flaky/token?user_id=alice&min_ttl={min_ttl}"))).bearer_auth(&token).send()
    };
    let stored = || {
        let c = app.vault.open_credential(&ConnectionId::parse("flaky").unwrap(), &Owner::parse("user:alice").unwrap()).unwrap().unwrap();
        match c.secret {
            CredentialSecret::OAuth2 { access_token, refresh_token, .. } => {
                (c.meta.status, access_token.expose().to_owned(), refresh_token.unwrap().expose().to_owned(), c.meta.refresh_failures)
            }
            other => panic!("{other:?}"),
        }
    };

    for (i, mode) in ["500", "html", "truncated", "missing", "unknown_type", "huge", "huge_chunked", "slow", "429"].into_iter().enumerate()
    {
        faults.set(mode);
        let started = Instant::now();
        // Needs 3600 s of validity: the 600 s token must be refreshed, and that fails.
        let r = release(3600).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(r.status(), 503, "{mode}");
        let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry_after >= 1, "{mode}");
        if mode == "429" {
            assert!(retry_after >= 120, "Retry-After from the provider is honoured");
        }
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "provider_unavailable", "{mode}");
        assert!(elapsed < crate::helpers::TEST_PROVIDER_TIMEOUT * 3, "{mode} took {elapsed:?}: provider calls are bounded in time");
        // Nothing lost: the stored tokens are untouched and the failure is recorded.
        let (status, access, refresh, failures) = stored();
        assert_eq!((status.as_str(), access.as_str(), refresh.as_str()), ("active", "at-original", "rt-original"), "{mode}");
        assert_eq!(failures, i as i64 + 1, "{mode}");
        // Still valid for a shorter min_ttl: the old token is released without a refresh.
        let v: Value = release(60).await.unwrap().json().await.unwrap();
        assert_eq!(v["access_token"], "at-original", "{mode}");
    }
    let view = app.vault.get_credential(&ConnectionId::parse("flaky").unwrap(), &Owner::parse("user:alice").unwrap()).unwrap();
    assert!(view.last_error.is_some());
    assert!(!view.last_error.unwrap().contains("rt-original"));

    // The provider recovers: the next refresh works and the new refresh token is stored.
    faults.set("ok");
    let v: Value = release(3600).await.unwrap().json().await.unwrap();
    assert_eq!(v["access_token"], "at-recovered", "{v}");
    assert_eq!(v["token_type"], "Bearer", "lowercase bearer is normalised");
    assert_eq!(v["instance_url"], "https://acme.my.salesforce.example", "Salesforce-style instance_url is kept and released");
    let (status, _, refresh, failures) = stored();
    assert_eq!((status.as_str(), refresh.as_str(), failures), ("active", "rt-recovered", 0));
}

/// More credentials due at once than the refresher keeps in flight (128): the backlog
/// drains completely, each credential refreshed exactly once, none left behind.
#[tokio::test]
async fn a_due_backlog_larger_than_the_refresh_window_drains() {
    let app = TestApp::spawn().await;
    let provider = FaultServer::start();
    let conn = json!({"id": "bulk", "kind": "oauth2", "oauth2": {"authorization_endpoint": format!("{}/authorize", provider.url),
        "token_endpoint": format!("{}/token", provider.url), "client_id": "c", "client_secret": "s"}});
    assert_eq!(app.post_json("/v1/admin/connections", conn).await.status(), 201);
    const N: usize = 300;
    let items = (0..N)
        .map(|i| {
            let body = json!({"access_token": format!("at-{i}"), "refresh_token": format!("rt-{i}"), "expires_in": 1});
            (Owner::parse(&format!("user:u{i}")).unwrap(), serde_json::from_value(body).unwrap())
        })
        .collect();
    let actor = latchkey::vault::Actor::Cli("test".into());
    app.vault.import_credentials(&actor, &ConnectionId::parse("bulk").unwrap(), items).unwrap();

    let db = rusqlite::Connection::open(app.vault.store().path()).unwrap();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    // All of them fall due at once.
    app.advance(2);
    app.eventually("the backlog to drain", || {
        count("SELECT count(*) FROM credentials WHERE connection_id = 'bulk' AND last_refresh_at IS NOT NULL") == N as i64
    })
    .await;
    assert_eq!(count("SELECT count(*) FROM credentials WHERE connection_id = 'bulk' AND refresh_failures > 0"), 0);
    // Each refreshed once: the new tokens live two hours, so nothing is due any more.
    let now = app.clock.now();
    let due: i64 = db
        .query_row("SELECT count(*) FROM credentials WHERE connection_id = 'bulk' AND refresh_due_at <= ?1", [now], |r| r.get(0))
        .unwrap();
    assert_eq!(due, 0);
    let audited: i64 =
        db.query_row("SELECT count(*) FROM audit WHERE action = 'credential.refresh' AND target LIKE 'bulk/%'", [], |r| r.get(0)).unwrap();
    assert_eq!(audited, N as i64, "one audited refresh per credential");
}
