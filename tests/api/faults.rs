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
    // Every release below must reach the provider: no cooldown between on-demand refreshes.
    let app = TestApp::spawn_configured(None, |o| o.client.on_demand_cooldown = 0).await;
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

    let db = app.sql();
    let count = |sql: &str| -> i64 { db.int(sql).unwrap() };
    // All of them fall due at once.
    app.advance(2);
    app.eventually("the backlog to drain", || {
        count("SELECT count(*) FROM credentials WHERE connection_id = 'bulk' AND last_refresh_at IS NOT NULL") == N as i64
    })
    .await;
    assert_eq!(count("SELECT count(*) FROM credentials WHERE connection_id = 'bulk' AND refresh_failures > 0"), 0);
    // Each refreshed once: the new tokens live two hours, so nothing is due any more.
    let now = app.clock.now();
    let due = count(&format!("SELECT count(*) FROM credentials WHERE connection_id = 'bulk' AND refresh_due_at <= {now}"));
    assert_eq!(due, 0);
    let audited = count("SELECT count(*) FROM audit WHERE action = 'credential.refresh' AND target LIKE 'bulk/%'");
    assert_eq!(audited, N as i64, "one audited refresh per credential");
}

/// A connection at the fault server with alice's tokens (600 s left, lifetime unknown)
/// and an agent token that may release them.
async fn storm_setup(app: &TestApp, provider: &FaultServer) -> String {
    let conn = json!({"id": "storm", "kind": "oauth2", "oauth2": {"authorization_endpoint": format!("{}/authorize", provider.url),
        "token_endpoint": format!("{}/token", provider.url), "client_id": "c", "client_secret": "s"}});
    assert_eq!(app.post_json("/v1/admin/connections", conn).await.status(), 201);
    let r = app
        .put_json(
            "/v1/admin/connections/storm/credentials/user:alice",
            json!({"access_token": "at-original", "refresh_token": "rt-original", "expires_in": 600}),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.service_agent_token("storm").await
}

async fn release_storm(app: &TestApp, token: &str, min_ttl: Option<i64>) -> (u16, Value, Option<u64>) {
    let q = min_ttl.map(|t| format!("&min_ttl={t}")).unwrap_or_default();
    let r = app.http.get(app.url(&format!("/v1/connections/storm/token?user_id=alice{q}"))).bearer_auth(token).send().await.unwrap();
    let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    (r.status().as_u16(), r.json().await.unwrap(), retry)
}

#[tokio::test]
async fn an_unsatisfiable_min_ttl_refreshes_at_most_once() {
    let app = TestApp::spawn().await;
    let provider = FaultServer::start();
    let token = storm_setup(&app, &provider).await;
    let hits = || provider.hits.load(std::sync::atomic::Ordering::SeqCst);

    // The provider's lifetime (7200 s) is not known yet: one refresh learns it.
    for i in 0..20 {
        let (status, body, _) = release_storm(&app, &token, Some(86_400)).await;
        assert_eq!(status, 400, "release {i}: {body}");
        assert_eq!(body["error"], "min_ttl_unsatisfiable");
        assert_eq!(body["token_lifetime"], 7200);
    }
    let mut concurrent = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (http, url, token) = (app.http.clone(), app.url("/v1/connections/storm/token?user_id=alice&min_ttl=86400"), token.clone());
        concurrent.spawn(async move { http.get(url).bearer_auth(token).send().await.unwrap().status().as_u16() });
    }
    while let Some(status) = concurrent.join_next().await {
        assert_eq!(status.unwrap(), 400);
    }
    assert_eq!(hits(), 1, "forty releases, one provider refresh");
    // The refresh that happened was kept; a release without min_ttl shows its true expiry.
    let (status, body, _) = release_storm(&app, &token, None).await;
    assert_eq!((status, &body["access_token"], &body["expires_in"]), (200, &json!("at-recovered"), &json!(7200)));

    // A satisfiable but demanding min_ttl refreshes a valid token at most once per cooldown.
    app.clock.advance(60);
    let (status, body, _) = release_storm(&app, &token, Some(7190)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(hits(), 2);
    app.clock.advance(10);
    let (status, body, retry) = release_storm(&app, &token, Some(7195)).await;
    assert_eq!((status, &body["error"]), (503, &json!("provider_unavailable")), "{body}");
    assert_eq!(retry, Some(20), "the rest of the cooldown");
    assert_eq!(hits(), 2, "no refresh during the cooldown");
    app.clock.advance(20);
    assert_eq!(release_storm(&app, &token, Some(7195)).await.0, 200);
    assert_eq!(hits(), 3);
}

#[tokio::test]
async fn short_lived_tokens_release_without_min_ttl() {
    let app = TestApp::spawn().await;
    let provider = FaultServer::start();
    provider.set("short");
    let token = storm_setup(&app, &provider).await;
    // Learn the 30 s lifetime.
    app.clock.advance(599);
    let (status, body, _) = release_storm(&app, &token, None).await;
    assert_eq!((status, &body["access_token"], &body["expires_in"]), (200, &json!("at-short"), &json!(30)), "{body}");
    let hits = provider.hits.load(std::sync::atomic::Ordering::SeqCst);
    // Ten releases over the next 20 s: the default min_ttl adapts (7 s), none refreshes.
    for i in 0..10 {
        let (status, body, _) = release_storm(&app, &token, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["expires_in"], json!(30 - 2 * i));
        app.clock.advance(2);
    }
    assert_eq!(provider.hits.load(std::sync::atomic::Ordering::SeqCst), hits);
}

#[tokio::test]
async fn a_huge_expires_in_is_clamped() {
    let app = TestApp::spawn().await;
    let provider = FaultServer::start();
    provider.set("huge_expiry");
    let token = storm_setup(&app, &provider).await;
    let (status, body, _) = release_storm(&app, &token, Some(3600)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], "at-forever");
    let ten_years = 10 * 365 * 86_400;
    assert_eq!(body["expires_in"], json!(ten_years));
    // No hot loop: nothing is due for years.
    let due: i64 = app.sql().int("SELECT refresh_due_at FROM credentials WHERE connection_id = 'storm'").unwrap();
    assert!(due > app.clock.now() + ten_years - 3600, "due at {due}");
}

#[tokio::test]
async fn a_dead_grant_reported_with_http_200_needs_reauth_instead_of_backing_off() {
    let app = TestApp::spawn().await;
    let provider = FaultServer::start();
    provider.set("bad_refresh_token");
    let token = storm_setup(&app, &provider).await;
    let (status, body, _) = release_storm(&app, &token, Some(3600)).await;
    assert_eq!((status, &body["error"]), (409, &json!("reauth_required")), "{body}");
    let view = app.vault.get_credential(&ConnectionId::parse("storm").unwrap(), &Owner::parse("user:alice").unwrap()).unwrap();
    assert_eq!(view.status.as_str(), "needs_reauth");
    // No more provider calls for it: the background refresher leaves it alone.
    let hits = provider.hits.load(std::sync::atomic::Ordering::SeqCst);
    app.advance(601);
    assert_eq!(release_storm(&app, &token, None).await.0, 409);
    assert_eq!(provider.hits.load(std::sync::atomic::Ordering::SeqCst), hits);
}
