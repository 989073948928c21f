//! The OAuth lifecycle against a real provider: panva's oidc-provider (tests/provider,
//! installed by `npm ci --prefix tests/provider`) with PKCE required, rotating refresh
//! tokens (reuse revokes the grant), revocation and introspection.

use reqwest::header::LOCATION;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::provider::{holding_proxy, Browser, OAuthWorld, Provider, CLIENT_ID, CLIENT_SECRET};
use latchkey::model::{ConnectionId, CredentialStatus, Owner};

#[tokio::test]
async fn connect_flow_end_to_end_refusal_and_forged_or_replayed_state() {
    let w = OAuthWorld::new(300).await;
    // Full flow: link → provider (PKCE S256, state) → callback → stored.
    let url = w.connect_url("user:alice", None).await;
    let mut b = Browser::new();
    let cb = b.login(&url, &w.callback_prefix(), "alice").await;
    assert!(cb.contains("iss="), "RFC 9207 iss on the callback: {cb}");
    let r = b.get(&cb).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Connected"));
    let cred = w.credential("user:alice").expect("stored");
    assert!(cred.has_refresh_token);
    assert!(cred.scopes.contains(&"crm:read".to_owned()));
    let v: Value = w.release("alice", 60).await.json().await.unwrap();
    assert_eq!(v["type"], "oauth2", "{v}");
    assert_eq!(
        w.provider.introspect(v["access_token"].as_str().unwrap()).await["active"],
        true,
        "the released token works at the provider"
    );

    // Replaying the callback, forging a state, reusing the link: refused, nothing stored.
    let version = w.credential("user:alice").unwrap().version;
    let r = b.get(&cb).await;
    assert_eq!(r.status(), 400);
    let forged = cb.replace("state=", "state=x");
    assert_eq!(b.get(&forged).await.status(), 400);
    assert_eq!(Browser::new().get(&format!("{}?code=abc&state=made-up", w.callback_prefix())).await.status(), 400);
    assert_eq!(b.get(&url).await.status(), 404, "connect links are single use");
    assert_eq!(w.credential("user:alice").unwrap().version, version);

    // The user refuses: nothing stored, and the page says so.
    let r = w.connect("user:bob", "deny").await;
    assert!(r.text().await.unwrap().contains("declined"));
    assert!(w.credential("user:bob").is_none());

    // return_to must be allow-listed; an allowed one gets the outcome appended.
    let r = w
        .app
        .post_json("/v1/connect/sessions", json!({"connection_id": "crm", "owner": "user:carol", "return_to": "https://evil.example/"}))
        .await;
    assert_eq!(r.status(), 400);
    let url = w.connect_url("user:carol", Some("http://127.0.0.1:9/done")).await;
    let mut b = Browser::new();
    let cb = b.login(&url, &w.callback_prefix(), "carol").await;
    let r = b.get(&cb).await;
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()[LOCATION], "http://127.0.0.1:9/done?status=connected");
    // A callback whose iss names another issuer stores nothing (RFC 9207 mix-up defence).
    let wrong = json!({"id": "crm-mixup", "kind": "oauth2", "oauth2": {"authorization_endpoint": format!("{}/auth", w.provider.url),
        "token_endpoint": format!("{}/token", w.provider.url), "issuer": "https://not-this-provider.example",
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scopes": ["openid"]}});
    assert_eq!(w.app.post_json("/v1/admin/connections", wrong).await.status(), 201);
    let r = w.app.post_json("/v1/connect/sessions", json!({"connection_id": "crm-mixup", "owner": "user:erin"})).await;
    let url = r.json::<Value>().await.unwrap()["connect_url"].as_str().unwrap().to_owned();
    let mut b = Browser::new();
    let cb = b.login(&url, &w.callback_prefix(), "erin").await;
    let r = b.get(&cb).await;
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("nothing was stored"));
    assert!(w.app.vault.get_credential(&ConnectionId::parse("crm-mixup").unwrap(), &Owner::parse("user:erin").unwrap()).is_err());
    assert_eq!(w.provider.stats().await["code"], 2, "only alice's and carol's codes were exchanged, not erin's");
    // Connect sessions need an admin token or an agent grant with connect: true (see
    // the connect module for the attacks).
    let r =
        w.app.http.post(w.app.url("/v1/connect/sessions")).json(&json!({"connection_id": "crm", "owner": "user:x"})).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn concurrent_releases_of_an_expiring_token_cause_exactly_one_refresh() {
    // 30 s access tokens; asking for 29 s of validity five seconds later forces a refresh.
    let w = OAuthWorld::new(30).await;
    assert_eq!(w.connect("user:alice", "alice").await.status(), 200);
    let (_, old_refresh) = w.tokens("user:alice");
    reqwest::Client::new().post(format!("{}/_test/reset", w.provider.url)).send().await.unwrap();
    w.app.clock.advance(5);
    let url = w.app.url("/v1/connections/crm/token?user_id=alice&min_ttl=29");
    let handles: Vec<_> = (0..40)
        .map(|_| {
            let (http, url, token) = (w.app.http.clone(), url.clone(), w.agent_token.clone());
            tokio::spawn(async move { http.get(url).bearer_auth(token).send().await.unwrap() })
        })
        .collect();
    let mut answers = Vec::new();
    for h in handles {
        answers.push(h.await.unwrap());
    }
    let mut tokens = std::collections::BTreeSet::new();
    for r in answers {
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert!(v["expires_in"].as_i64().unwrap() >= 29, "{v}");
        tokens.insert(v["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(tokens.len(), 1, "all 40 releases got the same refreshed token");
    let stats = w.provider.stats().await;
    assert_eq!(stats["refresh"], 1, "exactly one refresh at the provider: {stats}");
    assert_eq!(stats["refresh_failed"], 0, "{stats}");
    // The connection survives: the rotated refresh token was stored and works.
    let (access, new_refresh) = w.tokens("user:alice");
    assert_ne!(new_refresh, old_refresh, "the provider rotated the refresh token and we kept the new one");
    assert_eq!(w.provider.introspect(&access).await["active"], true);
    assert_eq!(w.provider.introspect(&old_refresh).await["active"], false);
    assert_eq!(w.credential("user:alice").unwrap().status, CredentialStatus::Active);
    let metrics = w.app.http.get(w.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("latchkey_refresh_total{connection=\"crm\",outcome=\"ok\"} 1"), "{metrics}");
    assert!(metrics.contains("latchkey_credentials{status=\"active\"} 1"), "{metrics}");
    assert!(metrics.contains("latchkey_releases_total{decision=\"allow\"} 40"), "{metrics}");
}

#[tokio::test]
async fn background_refresh_renews_before_expiry_without_a_release() {
    // 8 s tokens: refreshed min(300, 4) s (less jitter) before expiry, i.e. 4 s after.
    let w = OAuthWorld::new(8).await;
    assert_eq!(w.connect("user:alice", "alice").await.status(), 200);
    let (access0, _) = w.tokens("user:alice");
    let before = w.credential("user:alice").unwrap();
    assert!(before.last_refresh_at.is_none());
    // Not due yet: moving the clock 3 s and waking the refresher changes nothing.
    w.app.advance(3);
    tokio::task::yield_now().await;
    assert!(w.credential("user:alice").unwrap().last_refresh_at.is_none(), "refreshed too early");
    w.app.advance(1);
    w.app.eventually("a background refresh", || w.credential("user:alice").unwrap().last_refresh_at.is_some()).await;
    assert!(w.credential("user:alice").unwrap().version > before.version);
    let (access1, _) = w.tokens("user:alice");
    assert_ne!(access0, access1);
    assert_eq!(w.provider.introspect(&access1).await["active"], true);
    assert!(w.provider.stats().await["refresh"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn a_provider_that_forgets_the_grant_gives_needs_reauth_then_reconnect_works() {
    let w = OAuthWorld::new(300).await;
    assert_eq!(w.connect("user:bob", "bob").await.status(), 200);
    w.provider.forget("bob").await;
    // 100 s of the 300 s token left, 200 asked for: a refresh, which the provider refuses.
    w.app.clock.advance(200);
    let r = w.release("bob", 200).await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "reauth_required");
    assert!(v["error_description"].as_str().unwrap().contains("/v1/connect/sessions"), "says how to get a new link");
    let c = w.credential("user:bob").unwrap();
    assert_eq!(c.status, CredentialStatus::NeedsReauth);
    assert!(c.last_error.unwrap().contains("invalid_grant"));
    let refreshes = w.provider.stats().await["refresh_failed"].as_u64().unwrap();
    // No further retries: another release does not call the provider again.
    assert_eq!(w.release("bob", 200).await.status(), 409);
    assert_eq!(w.provider.stats().await["refresh_failed"].as_u64().unwrap(), refreshes);
    let audit = w.app.vault.audit_tail(1000).unwrap();
    assert!(audit.iter().any(|r| r.action == "credential.needs_reauth"));
    // Reconnecting restores the credential.
    assert_eq!(w.connect("user:bob", "bob").await.status(), 200);
    assert_eq!(w.credential("user:bob").unwrap().status, CredentialStatus::Active);
    assert_eq!(w.release("bob", 60).await.status(), 200);
}

#[tokio::test]
async fn disconnect_revokes_at_the_provider() {
    let w = OAuthWorld::new(300).await;
    assert_eq!(w.connect("user:carol", "carol").await.status(), 200);
    let (_, refresh) = w.tokens("user:carol");
    assert_eq!(w.provider.introspect(&refresh).await["active"], true);
    let r = w.app.admin(Method::DELETE, "/v1/admin/connections/crm/credentials/user:carol").send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(w.provider.introspect(&refresh).await["active"], false, "the provider says the refresh token is gone");
    assert!(w.credential("user:carol").is_none());
    let audit = w.app.vault.audit_tail(100).unwrap();
    let del = audit.iter().rev().find(|r| r.action == "credential.delete").unwrap();
    assert!(del.detail.contains("\"revoked\""), "{}", del.detail);
}

/// Real time, real binary: the provider's clock does not move with ours, and the server is
/// SIGKILLed, so this test waits (a few seconds) for a token to age.
#[tokio::test]
async fn killing_the_server_during_a_refresh_loses_nothing() {
    use crate::helpers::{Dirs, ServerProcess};
    let dirs = Dirs::new();
    let tok = dirs.root.path().join("admin");
    let out = dirs.run(&["init", "--no-passphrase", "--admin-token-file", tok.to_str().unwrap()]);
    assert!(out.status.success());
    let admin = std::fs::read_to_string(&tok).unwrap().trim().to_owned();
    // The public URL is a name, not an address: each server binds a fresh port, and the
    // browser is pointed at whichever runs.
    let public = "http://latchkey.invalid";
    let start = |dirs: &Dirs| ServerProcess::start(dirs, &[("LATCHKEY_PUBLIC_URL", public)]);
    let mut server = start(&dirs);
    let base = server.addr.clone();
    let provider = Provider::start(&format!("{public}/v1/connect/callback"), 30);
    let proxy = holding_proxy(&provider.url, std::time::Duration::from_millis(1500));
    let http = reqwest::Client::new();
    let conn = json!({"id": "crm", "kind": "oauth2", "oauth2": {"authorization_endpoint": format!("{}/auth", provider.url),
        "token_endpoint": format!("{proxy}/token"), "revocation_endpoint": format!("{}/token/revocation", provider.url),
        "issuer": provider.url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scopes": ["openid", "crm:read"]}});
    let r = http.post(format!("{base}/v1/admin/connections")).bearer_auth(&admin).json(&conn).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .post(format!("{base}/v1/admin/agents"))
        .bearer_auth(&admin)
        .json(&json!({"id": "svc", "name": "svc", "policy": {"grants": [{"connection": "crm", "owners": "any"}]}}))
        .send()
        .await
        .unwrap();
    let secret = r.json::<Value>().await.unwrap()["client_secret"].as_str().unwrap().to_owned();
    let r = http
        .post(format!("{base}/v1/connect/sessions"))
        .bearer_auth(&admin)
        .json(&json!({"connection_id": "crm", "owner": "user:alice"}))
        .send()
        .await
        .unwrap();
    let url = r.json::<Value>().await.unwrap()["connect_url"].as_str().unwrap().replace(public, &base);
    let mut b = Browser::new();
    let cb = b.login(&url, &format!("{public}/v1/connect/callback"), "alice").await;
    assert_eq!(b.get(&cb.replace(public, &base)).await.status(), 200, "connected through the real binary");
    reqwest::Client::new().post(format!("{}/_test/reset", provider.url)).send().await.unwrap();

    let agent_token = |base: String| {
        let (http, secret) = (http.clone(), secret.clone());
        async move { crate::helpers::client_credentials(&http, &base, "svc", &secret).await }
    };
    let token = agent_token(base.clone()).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    // A release that must refresh; kill -9 the server while the refresh is in flight.
    let pending = {
        let (http, url, token) = (http.clone(), format!("{base}/v1/connections/crm/token?user_id=alice&min_ttl=29"), token.clone());
        tokio::spawn(async move { http.get(url).bearer_auth(token).send().await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert!(pending.await.unwrap().is_err(), "the in-flight release died with the server");

    // Restart: the credential is intact and refreshes (taking over the dead lease).
    let server = start(&dirs);
    let base = server.addr.clone();
    let token = agent_token(base.clone()).await;
    let r = http.get(format!("{base}/v1/connections/crm/token?user_id=alice&min_ttl=29")).bearer_auth(&token).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(provider.introspect(v["access_token"].as_str().unwrap()).await["active"], true);
    let stats = provider.stats().await;
    assert_eq!(stats["refresh_failed"], 0, "no refresh token was lost or reused: {stats}");
    assert!(stats["refresh"].as_u64().unwrap() >= 1);
    let out = dirs.run(&["credentials", "list", "crm"]);
    assert!(crate::helpers::stdout(&out).contains("\"status\": \"active\""));
}
