//! Connect links connect the right person: who may create them, the confirmation page, the
//! binding to one browser, owner proof at the owner's trusted issuer (a second oidc-provider),
//! and what a replacement revokes. Each attack is tried end to end.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::provider::{csrf_of, Browser, Provider, CLIENT_ID, CLIENT_SECRET};
use crate::helpers::{expect, TestApp};
use latchkey::auth::tokens::{Act, AgentClaims};
use latchkey::model::{ConnectionId, CredentialSecret, Owner};

const PROOF_CLIENT: &str = "latchkey-proof";
const PROOF_SECRET: &str = "latchkey-proof-secret";

/// An app, the third-party provider, and a trusted issuer (the people's IdP) where latchkey
/// is an OIDC client for owner proof.
struct World {
    app: TestApp,
    provider: Provider,
    idp: Provider,
}

impl World {
    async fn new() -> World {
        let app = TestApp::spawn().await;
        let provider = Provider::start(&format!("{}/v1/connect/callback", app.addr), 300);
        let proof_client = json!([{"client_id": PROOF_CLIENT, "client_secret": PROOF_SECRET, "redirect_uris": [format!("{}/v1/connect/proof", app.addr)],
            "grant_types": ["authorization_code"], "response_types": ["code"], "token_endpoint_auth_method": "client_secret_basic"}]);
        let people = json!({"alice": {"org": "acme"}, "acme-admin": {"org": "acme", "roles": ["admin"]}, "mallory": {"org": "evil"}});
        let idp = Provider::start_with(proof_client, 300, people);
        let conn = json!({"id": "crm", "kind": "oauth2", "oauth2": {
            "discovery_url": format!("{}/.well-known/openid-configuration", provider.url),
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scopes": ["openid", "crm:read"]}});
        expect(app.post_json("/v1/admin/connections", conn).await, 201).await;
        let issuer = json!({"issuer": idp.url, "subject_prefix": "idp", "display_name": "Acme SSO", "jwks_uri": format!("{}/jwks", idp.url),
            "audience": "latchkey-agents", "tenant_claim": "org", "roles_claim": "roles",
            "owner_proof": {"client_id": PROOF_CLIENT, "client_secret": PROOF_SECRET}});
        let v = expect(app.post_json("/v1/admin/issuers", issuer).await, 201).await;
        assert_eq!(v["owner_proof"], json!({"client_id": PROOF_CLIENT, "client_secret_set": true}), "the secret is never returned");
        for (id, grant) in [
            ("reader", json!({"connection": "crm", "owners": "any"})),
            ("svc", json!({"connection": "crm", "owners": "any", "connect": true})),
            ("cal", json!({"connection": "crm", "owners": "self", "connect": true})),
            ("team", json!({"connection": "crm", "owners": "tenant", "connect": true, "connect_role": "admin"})),
        ] {
            expect(app.post_json("/v1/admin/agents", json!({"id": id, "name": id, "policy": {"grants": [grant]}})).await, 201).await;
        }
        World { app, provider, idp }
    }

    /// An agent token of `agent`, bound to `user` of the IdP (as token exchange makes them).
    fn token(&self, agent: &str, user: Option<&str>) -> String {
        let now = self.app.clock.now();
        let epoch = self.app.vault.active_agent(agent).unwrap().unwrap().token_epoch;
        let claims = AgentClaims {
            iss: self.app.addr.clone(),
            aud: self.app.addr.clone(),
            sub: user.map(|u| format!("idp:{u}")).unwrap_or_else(|| agent.to_owned()),
            client_id: agent.into(),
            iat: now,
            nbf: now,
            exp: now + 600,
            jti: format!("{agent}-{}", user.unwrap_or("-")),
            act: user.map(|_| Act { sub: agent.into() }),
            tenant: user.map(|_| "idp:acme".to_owned()),
            roles: vec![],
            epoch,
        };
        self.app.services.tokens.sign(&claims).unwrap()
    }

    async fn link(&self, token: &str, owner: &str) -> reqwest::Response {
        let body = json!({"connection_id": "crm", "owner": owner});
        self.app.http.post(self.app.url("/v1/connect/sessions")).bearer_auth(token).json(&body).send().await.unwrap()
    }

    async fn link_url(&self, token: &str, owner: &str) -> (String, Value) {
        let v = expect(self.link(token, owner).await, 201).await;
        (v["connect_url"].as_str().unwrap().to_owned(), v)
    }

    fn callback(&self) -> String {
        format!("{}/v1/connect/callback", self.app.addr)
    }

    fn credential(&self, owner: &str) -> Option<latchkey::vault::CredentialView> {
        self.app.vault.get_credential(&ConnectionId::parse("crm").unwrap(), &Owner::parse(owner).unwrap()).ok()
    }

    fn refresh_token(&self, owner: &str) -> String {
        let c = self.app.vault.open_credential(&ConnectionId::parse("crm").unwrap(), &Owner::parse(owner).unwrap()).unwrap().unwrap();
        match c.secret {
            CredentialSecret::OAuth2 { refresh_token, .. } => refresh_token.unwrap().expose().to_owned(),
            other => panic!("{other:?}"),
        }
    }

    fn audit(&self, action: &str) -> Vec<latchkey::audit::Record> {
        self.app.vault.audit_tail(10_000).unwrap().into_iter().filter(|r| r.action == action).collect()
    }

    /// Opens `url` and signs in at the IdP as `person` (owner proof); returns the answer to
    /// the proof callback.
    async fn prove(&self, b: &mut Browser, url: &str, person: &str) -> reqwest::Response {
        b.sign_in_at(&self.idp.url, person);
        let next = b.continue_link(url).await;
        assert!(next.starts_with(&self.idp.url), "owner proof comes first: {next}");
        let proof_cb = b.follow(next, &format!("{}/v1/connect/proof", self.app.addr)).await;
        b.get(&proof_cb).await
    }

    /// Opens `url`, signs in at the IdP as `person` (owner proof, where the link needs it)
    /// and at the provider as `account`, and finishes at the callback; returns the answer.
    async fn complete(&self, b: &mut Browser, url: &str, person: &str, account: &str) -> reqwest::Response {
        b.sign_in_at(&self.idp.url, person);
        b.sign_in_at(&self.provider.url, account);
        let next = b.continue_link(url).await;
        let cb = b.follow(next, &self.callback()).await;
        b.get(&cb).await
    }
}

#[tokio::test]
async fn a_read_only_agent_cannot_create_links_and_no_agent_can_replace_someone_elses_credential() {
    let w = World::new().await;
    // The reported attack: an agent that may *read* bob's credential wants to replace it.
    let r = w.link(&w.token("reader", None), "user:idp:bob").await;
    assert_eq!(expect(r, 403).await["error"], "access_denied");
    // A `self` grant with connect covers only the token's own user.
    let alice = w.token("cal", Some("alice"));
    assert_eq!(w.link(&alice, "user:idp:bob").await.status(), 403);
    // Membership of a tenant is not enough to replace the tenant's credential.
    assert_eq!(w.link(&alice, "tenant:idp:acme").await.status(), 403);
    assert!(w.audit("connect.session").is_empty(), "no link was created");

    // An agent allowed to connect anyone still cannot store the wrong account: the person
    // opening the link must prove at the IdP that they are bob. The attacker opens it
    // itself and signs in as mallory.
    let (url, v) = w.link_url(&w.token("svc", None), "user:idp:bob").await;
    assert_eq!((v["owner_proof"].as_bool(), v["replaces_existing"].as_bool()), (Some(true), Some(false)));
    let r = w.prove(&mut Browser::new(), &url, "mallory").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("not the one this link is for"));
    assert!(w.credential("user:idp:bob").is_none(), "nothing stored for bob");
    assert_eq!(w.provider.stats().await["code"], 0, "the provider was never reached");
    let denied = w.audit("connect.proof");
    assert!(denied.iter().any(|r| r.outcome == "denied" && r.target == "crm/user:idp:bob"), "{denied:?}");
    // The link is spent: bob himself cannot be tricked into finishing it later.
    assert_eq!(Browser::new().get(&url).await.status(), 404);
    // Bob with a fresh link proves himself and connects.
    let (url, _) = w.link_url(&w.token("svc", None), "user:idp:bob").await;
    let r = w.complete(&mut Browser::new(), &url, "bob", "bob-at-crm").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(w.credential("user:idp:bob").unwrap().account.unwrap().sub, "bob-at-crm");
}

#[tokio::test]
async fn a_phishing_link_is_stopped_by_owner_proof() {
    let w = World::new().await;
    // Mallory makes a link for herself and sends it to Alice.
    let mallory = w.token("cal", Some("mallory"));
    let (url, _) = w.link_url(&mallory, "user:idp:mallory").await;
    let page = Browser::new().get(&url).await.text().await.unwrap();
    assert!(page.contains("mallory at Acme SSO"), "the page names the owner as people know it: {page}");
    assert!(page.contains("the agent \u{201c}cal\u{201d}"), "{page}");
    // Alice goes ahead anyway: she signs in at the IdP as herself, and is refused before the
    // provider ever sees her account.
    assert_eq!(w.prove(&mut Browser::new(), &url, "alice").await.status(), StatusCode::FORBIDDEN);
    assert!(w.credential("user:idp:mallory").is_none());
    assert_eq!(w.provider.stats().await["code"], 0);
    // Mallory herself can connect her own account.
    let (url, _) = w.link_url(&mallory, "user:idp:mallory").await;
    assert_eq!(w.complete(&mut Browser::new(), &url, "mallory", "mallory").await.status(), 200);
}

#[tokio::test]
async fn a_tenant_link_needs_the_tenant_and_the_role_at_the_issuer() {
    let w = World::new().await;
    let alice = w.token("team", Some("alice"));
    let (url, _) = w.link_url(&alice, "tenant:idp:acme").await;
    // Alice is in acme but lacks the admin role the grant requires.
    assert_eq!(w.prove(&mut Browser::new(), &url, "alice").await.status(), StatusCode::FORBIDDEN);
    assert!(w.credential("tenant:idp:acme").is_none());
    assert!(w.audit("connect.proof").iter().any(|r| r.detail.contains("lacks the role")));
    // Someone from another tenant is refused too.
    let (url, _) = w.link_url(&alice, "tenant:idp:acme").await;
    assert_eq!(w.prove(&mut Browser::new(), &url, "mallory").await.status(), StatusCode::FORBIDDEN);
    // acme's admin connects the tenant's account.
    let (url, _) = w.link_url(&alice, "tenant:idp:acme").await;
    assert_eq!(w.complete(&mut Browser::new(), &url, "acme-admin", "acme-crm").await.status(), 200);
    assert_eq!(w.credential("tenant:idp:acme").unwrap().account.unwrap().sub, "acme-crm");
}

#[tokio::test]
async fn links_bind_to_the_browser_that_continued_them_and_previews_consume_nothing() {
    let w = World::new().await;
    let (url, _) = w.link_url(&w.app.token, "user:idp:carol").await;
    // Link-preview bots and mail scanners fetch the page: nothing happens.
    for _ in 0..3 {
        let r = Browser::new().get(&url).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["referrer-policy"], "no-referrer");
        assert!(r.text().await.unwrap().contains("<form method=\"post\""));
    }
    // A POST without the page's CSRF cookie (a cross-site form) is refused.
    let csrf = csrf_of(&Browser::new().get(&url).await.text().await.unwrap());
    assert_eq!(Browser::new().post_form(&url, &[("csrf", &csrf)]).await.status(), StatusCode::FORBIDDEN);
    // Carol continues it; someone who captures the callback URL and opens it in another
    // browser (no binding cookie) gets nothing, and does not spend the session.
    let mut carol = Browser::new();
    carol.sign_in_at(&w.provider.url, "carol");
    let next = carol.continue_link(&url).await;
    let cb = carol.follow(next, &w.callback()).await;
    let r = Browser::new().get(&cb).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("another browser"));
    assert!(w.credential("user:idp:carol").is_none());
    assert_eq!(w.provider.stats().await["code"], 0, "the code was not exchanged");
    assert!(w.audit("connect.callback").iter().any(|r| r.outcome == "denied" && r.detail.contains("binding cookie")));
    assert_eq!(carol.get(&cb).await.status(), 200, "carol's own browser finishes");
    assert!(w.credential("user:idp:carol").is_some());
    // The continued link cannot be continued again.
    assert_eq!(Browser::new().get(&url).await.status(), 404);
}

#[tokio::test]
async fn a_callback_without_iss_is_refused_when_the_provider_always_sends_it() {
    let w = World::new().await;
    let (url, _) = w.link_url(&w.app.token, "user:idp:dave").await;
    let mut b = Browser::new();
    b.sign_in_at(&w.provider.url, "dave");
    let next = b.continue_link(&url).await;
    let cb = b.follow(next, &w.callback()).await;
    let mut stripped = url::Url::parse(&cb).unwrap();
    let kept: Vec<(String, String)> =
        stripped.query_pairs().filter(|(k, _)| k != "iss").map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    stripped.query_pairs_mut().clear().extend_pairs(kept);
    let r = b.get(stripped.as_str()).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "RFC 9207: the mix-up defence needs iss");
    assert!(w.credential("user:idp:dave").is_none());
}

#[tokio::test]
async fn reconnecting_the_same_account_keeps_the_grant_and_another_account_revokes_the_old_one() {
    let w = World::new().await;
    let admin = w.app.token.clone();
    let (url, v) = w.link_url(&admin, "user:idp:erin").await;
    assert_eq!(v["replaces_existing"], false);
    assert_eq!(w.complete(&mut Browser::new(), &url, "-", "erin").await.status(), 200);
    let first_refresh = w.refresh_token("user:idp:erin");
    // The same provider account again (oidc-provider revokes the whole grant on revocation:
    // revoking here would kill the new tokens too).
    let (url, v) = w.link_url(&admin, "user:idp:erin").await;
    assert_eq!(v["replaces_existing"], true);
    assert_eq!(w.complete(&mut Browser::new(), &url, "-", "erin").await.status(), 200);
    let second_refresh = w.refresh_token("user:idp:erin");
    assert_eq!(w.provider.introspect(&second_refresh).await["active"], true, "the reconnected grant works");
    assert_eq!(w.provider.stats().await["revocations"], 0);
    let replaced = w.audit("credential.replaced");
    assert!(replaced.last().unwrap().detail.contains("same provider account"), "{replaced:?}");
    let svc = w.token("svc", None);
    let r = w.app.http.get(w.app.url("/v1/connections/crm/token?user_id=idp:erin")).bearer_auth(&svc).send().await.unwrap();
    let released = expect(r, 200).await;
    assert_eq!(w.provider.introspect(released["access_token"].as_str().unwrap()).await["active"], true);
    assert_ne!(first_refresh, second_refresh);

    // Another account replaces it: the old grant is revoked, after the new one is stored.
    let (url, _) = w.link_url(&admin, "user:idp:erin").await;
    assert_eq!(w.complete(&mut Browser::new(), &url, "-", "erin-work").await.status(), 200);
    assert_eq!(w.credential("user:idp:erin").unwrap().account.unwrap().sub, "erin-work");
    assert_eq!(w.provider.introspect(&second_refresh).await["active"], false, "the previous account's grant is revoked");
    assert_eq!(w.provider.introspect(&w.refresh_token("user:idp:erin")).await["active"], true);
    let revoked = w.audit("credential.revoke_previous");
    assert_eq!(revoked.len(), 1);
    assert!(revoked[0].detail.contains("\"revoked\""), "{}", revoked[0].detail);
}

#[tokio::test]
async fn every_way_out_revokes_at_the_provider() {
    let w = World::new().await;
    for (owner, account) in [("user:idp:f1", "f1"), ("user:idp:f2", "f2")] {
        let (url, _) = w.link_url(&w.app.token, owner).await;
        assert_eq!(w.complete(&mut Browser::new(), &url, "-", account).await.status(), 200);
    }
    let (r1, r2) = (w.refresh_token("user:idp:f1"), w.refresh_token("user:idp:f2"));
    // Deleting the connection with its credentials revokes each of them first.
    let r = w.app.delete("/v1/admin/connections/crm?cascade=true").await;
    assert_eq!(expect(r, 200).await["credentials_deleted"], 2);
    for t in [&r1, &r2] {
        assert_eq!(w.provider.introspect(t).await["active"], false);
    }
    let deletes = w.audit("credential.delete");
    assert_eq!(deletes.len(), 2);
    assert!(deletes.iter().all(|r| r.detail.contains("\"revoked\"")), "{deletes:?}");

    // The connection's connect sessions went with it, data keys included.
    let out = w.app._dirs.run(&["keys", "verify"]);
    assert!(out.status.success(), "{}", crate::helpers::stdout(&out));

    // The CLI disconnects the same way, next to the running server.
    let conn = json!({"id": "crm", "kind": "oauth2", "oauth2": {
        "discovery_url": format!("{}/.well-known/openid-configuration", w.provider.url),
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scopes": ["openid", "crm:read"]}});
    expect(w.app.post_json("/v1/admin/connections", conn).await, 201).await;
    let (url, _) = w.link_url(&w.app.token, "user:idp:f3").await;
    assert_eq!(w.complete(&mut Browser::new(), &url, "-", "f3").await.status(), 200);
    let r3 = w.refresh_token("user:idp:f3");
    let out = w.app._dirs.run(&["credentials", "rm", "crm", "user:idp:f3"]);
    assert!(out.status.success(), "{}", crate::helpers::stderr(&out));
    assert_eq!(w.provider.introspect(&r3).await["active"], false, "credentials rm revokes at the provider");
    assert!(w.credential("user:idp:f3").is_none());
}

/// Over https the session cookies are `__Host-` cookies, and a same-named cookie without the
/// prefix (which a sibling domain could plant) does not count.
#[tokio::test]
async fn over_https_only_host_prefixed_cookies_count() {
    let app = TestApp::spawn_with(Some("https://vault.example")).await;
    let conn = json!({"id": "crm", "kind": "oauth2", "oauth2": {"client_id": "c", "authorization_endpoint": "https://crm.example/authorize",
        "token_endpoint": "https://crm.example/token"}});
    expect(app.post_json("/v1/admin/connections", conn).await, 201).await;
    let v = expect(app.post_json("/v1/connect/sessions", json!({"connection_id": "crm", "owner": "user:alice"})).await, 201).await;
    let url = v["connect_url"].as_str().unwrap().replace("https://vault.example", &app.addr);
    let r = app.http.get(&url).send().await.unwrap();
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.starts_with("__Host-lk_csrf_") && set_cookie.contains("; Secure") && set_cookie.contains("; HttpOnly"),
        "{set_cookie}"
    );
    let csrf = csrf_of(&r.text().await.unwrap());
    let (name, value) = set_cookie.split(';').next().unwrap().split_once('=').unwrap();
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let post = |cookie: String| client.post(&url).header("cookie", cookie).form(&[("csrf", csrf.as_str())]).send();
    assert_eq!(
        post(format!("{}={value}", name.trim_start_matches("__Host-"))).await.unwrap().status(),
        StatusCode::FORBIDDEN,
        "unprefixed"
    );
    let r = post(format!("{name}={value}")).await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(r.headers()["set-cookie"].to_str().unwrap().starts_with("__Host-lk_bind_"));
}
