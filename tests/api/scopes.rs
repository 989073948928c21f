//! Scopes limit what leaves the vault, not only a label: `strict`, `label` and `downscope`
//! (a narrower token minted with the refresh grant, tried against oidc-provider with
//! rotating refresh tokens), a provider that ignores or refuses the narrower scope, and API
//! keys, which cannot be narrowed at all.

use serde_json::{json, Value};

use crate::helpers::faults::FaultServer;
use crate::helpers::provider::{Browser, OAuthWorld, CLIENT_ID, CLIENT_SECRET};
use crate::helpers::{expect, TestApp};
use latchkey::model::{ConnectionId, CredentialSecret, CredentialStatus, Owner};

const FULL_POWER: &str = "crm:read crm:write crm:admin";

/// An agent `id` with one grant; returns a client-credentials agent token.
async fn agent(app: &TestApp, id: &str, grant: Value) -> String {
    let v = expect(app.post_json("/v1/admin/agents", json!({"id": id, "name": id, "policy": {"grants": [grant]}})).await, 201).await;
    let secret = v["client_secret"].as_str().unwrap().to_owned();
    let r = app
        .http
        .post(app.url("/oauth2/token"))
        .basic_auth(id, Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    expect(r, 200).await["access_token"].as_str().unwrap().to_owned()
}

async fn release(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    app.http.get(app.url(path)).bearer_auth(token).send().await.unwrap()
}

/// A connection `id` in `mode` whose `user:alice` holds a full-power token.
async fn imported(app: &TestApp, id: &str, mode: &str, token_url: &str, scope: Option<&str>) {
    let conn = json!({"id": id, "kind": "oauth2", "oauth2": {"authorization_endpoint": format!("{token_url}/authorize"),
        "token_endpoint": format!("{token_url}/token"), "client_id": "c", "client_secret": "s", "scope_enforcement": mode}});
    expect(app.post_json("/v1/admin/connections", conn).await, 201).await;
    let mut body = json!({"access_token": format!("at-{id}-full"), "refresh_token": format!("rt-{id}"), "expires_in": 3600});
    if let Some(s) = scope {
        body["scope"] = json!(s);
    }
    expect(app.put_json(&format!("/v1/admin/connections/{id}/credentials/user:alice"), body).await, 200).await;
}

#[tokio::test]
async fn a_full_power_token_never_leaves_under_a_narrow_grant_unless_the_connection_says_label() {
    let app = TestApp::spawn().await;
    let faults = FaultServer::start();
    imported(&app, "strict", "strict", &faults.url, Some(FULL_POWER)).await;
    imported(&app, "labelled", "label", &faults.url, Some(FULL_POWER)).await;
    imported(&app, "unknown", "strict", &faults.url, None).await;
    let mut tokens = Vec::new();
    for c in ["strict", "labelled", "unknown"] {
        tokens.push(agent(&app, &format!("read-{c}"), json!({"connection": c, "owners": "any", "scopes": ["crm:read"]})).await);
    }
    // strict: the credential holds more than crm:read, so nothing leaves.
    let v = expect(release(&app, &tokens[0], "/v1/connections/strict/token?user_id=alice&scope=crm:read").await, 403).await;
    assert_eq!(v["error"], "insufficient_scope");
    assert_eq!(v["refused_scopes"], json!([]), "nothing asked for was refused");
    assert_eq!(v["excess_scopes"], json!(["crm:admin", "crm:write"]));
    assert!(!v.to_string().contains("at-strict-full"));
    // Unknown scopes (imported without `scope`) count as more.
    let v = expect(release(&app, &tokens[2], "/v1/connections/unknown/token?user_id=alice").await, 403).await;
    assert_eq!(v["held_scopes_unknown"], true);
    // label: today's behaviour, named for what it is and audited as such.
    let v = expect(release(&app, &tokens[1], "/v1/connections/labelled/token?user_id=alice").await, 200).await;
    assert_eq!((v["access_token"].as_str(), v["scope"].as_str()), (Some("at-labelled-full"), Some("crm:read")));
    assert_eq!(v["scope_enforced"], false);
    let audit = app.vault.audit_tail(20).unwrap();
    let rec = audit.iter().rev().find(|r| r.action == "token.release" && r.target.starts_with("labelled/")).unwrap();
    assert!(rec.detail.contains("\"scope_enforcement\":\"label\"") && rec.detail.contains("\"scope_enforced\":false"), "{}", rec.detail);
    // A grant that allows everything the credential holds gets the token under strict.
    let all = agent(&app, "all", json!({"connection": "strict", "owners": "any"})).await;
    let v = expect(release(&app, &all, "/v1/connections/strict/token?user_id=alice").await, 200).await;
    assert_eq!((v["scope"].as_str(), v["scope_enforced"].as_bool()), (Some("crm:admin crm:read crm:write"), Some(true)));
}

#[tokio::test]
async fn a_provider_that_ignores_or_refuses_the_narrower_scope_gets_strict_and_keeps_the_grant() {
    let app = TestApp::spawn().await;
    let faults = FaultServer::start();
    imported(&app, "crm", "downscope", &faults.url, Some(FULL_POWER)).await;
    let token = agent(&app, "reader", json!({"connection": "crm", "owners": "any", "scopes": ["crm:read"]})).await;
    let stored = || {
        let c = app.vault.open_credential(&ConnectionId::parse("crm").unwrap(), &Owner::parse("user:alice").unwrap()).unwrap().unwrap();
        match c.secret {
            CredentialSecret::OAuth2 { refresh_token, scopes, .. } => (c.meta.status, refresh_token.unwrap().expose().to_owned(), scopes),
            other => panic!("{other:?}"),
        }
    };
    // The endpoint answers a full token with no scope: not confirmed narrow, so strict.
    faults.set("ok");
    let v = expect(release(&app, &token, "/v1/connections/crm/token?user_id=alice").await, 403).await;
    assert_eq!(v["excess_scopes"], json!(["crm:admin", "crm:write"]));
    assert!(!v.to_string().contains("at-recovered"), "the unconfirmed token never leaves");
    // The refresh token it rotated is the credential's now; its scopes are unchanged.
    let (status, refresh, scopes) = stored();
    assert_eq!((status, refresh.as_str()), (CredentialStatus::Active, "rt-recovered"));
    assert_eq!(scopes.joined(), "crm:admin crm:read crm:write");
    // The refusal is remembered: more releases do not call the provider (and rotate its
    // refresh token) each time.
    let hits = faults.hits.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..3 {
        expect(release(&app, &token, "/v1/connections/crm/token?user_id=alice").await, 403).await;
    }
    assert_eq!(faults.hits.load(std::sync::atomic::Ordering::SeqCst), hits);
    // invalid_scope: strict again, and the credential is not marked needs_reauth.
    faults.set("invalid_scope");
    imported(&app, "crm2", "downscope", &faults.url, Some(FULL_POWER)).await;
    let token2 = agent(&app, "reader2", json!({"connection": "crm2", "owners": "any", "scopes": ["crm:read"]})).await;
    let v = expect(release(&app, &token2, "/v1/connections/crm2/token?user_id=alice").await, 403).await;
    assert_eq!(v["excess_scopes"], json!(["crm:admin", "crm:write"]));
    assert_eq!(faults.hits.load(std::sync::atomic::Ordering::SeqCst), hits + 1, "asked once");
    let c = app.vault.get_credential(&ConnectionId::parse("crm2").unwrap(), &Owner::parse("user:alice").unwrap()).unwrap();
    assert_eq!(c.status, CredentialStatus::Active);
    assert_eq!(stored().0, CredentialStatus::Active);
}

#[tokio::test]
async fn downscope_mints_narrower_tokens_without_killing_the_grant() {
    let w = OAuthWorld::new(300).await;
    let conn = json!({"id": "wide", "kind": "oauth2", "oauth2": {
        "discovery_url": format!("{}/.well-known/openid-configuration", w.provider.url),
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scopes": ["openid", "crm:read", "crm:write"], "scope_enforcement": "downscope"}});
    expect(w.app.post_json("/v1/admin/connections", conn).await, 201).await;
    let r = w.app.post_json("/v1/connect/sessions", json!({"connection_id": "wide", "owner": "user:alice"})).await;
    let url = expect(r, 201).await["connect_url"].as_str().unwrap().to_owned();
    let mut b = Browser::new();
    let cb = b.login(&url, &w.callback_prefix(), "alice").await;
    assert_eq!(b.get(&cb).await.status(), 200);
    reqwest::Client::new().post(format!("{}/_test/reset", w.provider.url)).send().await.unwrap();
    let reader = agent(&w.app, "reader", json!({"connection": "wide", "owners": "any", "scopes": ["crm:read"]})).await;
    let both = agent(&w.app, "both", json!({"connection": "wide", "owners": "any", "scopes": ["crm:read", "crm:write"]})).await;
    let full = agent(&w.app, "full", json!({"connection": "wide", "owners": "any"})).await;

    // A crm:read grant gets a token the provider itself says is crm:read only.
    let v = expect(release(&w.app, &reader, "/v1/connections/wide/token?user_id=alice").await, 200).await;
    assert_eq!((v["scope"].as_str(), v["scope_enforced"].as_bool()), (Some("crm:read"), Some(true)));
    let introspected = w.provider.introspect(v["access_token"].as_str().unwrap()).await;
    assert_eq!(introspected["active"], true);
    assert_eq!(introspected["scope"], "crm:read", "{introspected}");
    // Cached per scope set: the next release mints nothing.
    let again = expect(release(&w.app, &reader, "/v1/connections/wide/token?user_id=alice").await, 200).await;
    assert_eq!(again["access_token"], v["access_token"]);
    assert_eq!(w.provider.stats().await["refresh"], 1);

    // Concurrent releases for two scope sets share the single flight: the rotating refresh
    // token is never spent twice, so the grant survives.
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let (http, url, token) = (
                w.app.http.clone(),
                w.app.url(&format!(
                    "/v1/connections/wide/token?user_id=alice&scope={}",
                    if i % 2 == 0 { "crm:write" } else { "crm:read%20crm:write" }
                )),
                both.clone(),
            );
            tokio::spawn(async move { http.get(url).bearer_auth(token).send().await.unwrap() })
        })
        .collect();
    for h in handles {
        let r = h.await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let stats = w.provider.stats().await;
    assert_eq!(stats["refresh_failed"], 0, "no refresh token was reused: {stats}");
    assert_eq!(stats["refresh"], 3, "one mint per new scope set: {stats}");
    let v = expect(release(&w.app, &both, "/v1/connections/wide/token?user_id=alice&scope=crm:write").await, 200).await;
    assert_eq!(w.provider.introspect(v["access_token"].as_str().unwrap()).await["scope"], "crm:write");

    // A later full release still gets the full scope, and the grant is alive.
    let v = expect(release(&w.app, &full, "/v1/connections/wide/token?user_id=alice").await, 200).await;
    assert_eq!(v["scope"], "crm:read crm:write openid");
    let introspected = w.provider.introspect(v["access_token"].as_str().unwrap()).await;
    assert_eq!((introspected["active"].as_bool(), introspected["scope"].as_str()), (Some(true), Some("openid crm:read crm:write")));
    let c = w.app.vault.get_credential(&ConnectionId::parse("wide").unwrap(), &Owner::parse("user:alice").unwrap()).unwrap();
    assert_eq!(c.scopes, ["crm:read", "crm:write", "openid"], "narrow mints never change the recorded scopes");
    assert_eq!(c.status, CredentialStatus::Active);
}

#[tokio::test]
async fn api_key_leases_say_they_are_not_enforced() {
    let app = TestApp::spawn().await;
    app.api_key_connection("keys").await;
    expect(app.put_json("/v1/admin/connections/keys/credentials/tenant:acme", json!({"api_key": "sk-1"})).await, 200).await;
    let token = app.service_agent_token("keys").await;
    let v = expect(release(&app, &token, "/v1/connections/keys/token?tenant_id=acme").await, 200).await;
    assert_eq!(v["lease"]["enforced"], false, "an API key cannot be narrowed or expired: {v}");
}
