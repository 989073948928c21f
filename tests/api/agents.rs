//! Agents, policy, the token endpoint and token release — against a real external
//! issuer (a JWKS served over HTTP from this test, subject tokens signed with its keys).

use std::sync::atomic::Ordering;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::issuer::{b64, base64_decode, Issuer, AUDIENCE, ISSUER_EC};
use crate::helpers::{expect, TestApp, TestSql};
use latchkey::auth::tokens::{AgentClaims, TokenService};

const API_KEY: &str = "sk-tenant-canary-8d1f";

/// An app with connections, credentials, agents and a trusted issuer.
struct World {
    app: TestApp,
    issuer: Issuer,
    /// (client_id, client_secret)
    user_agent: (String, String),
    service_agent: (String, String),
}

impl World {
    async fn new() -> World {
        let app = TestApp::spawn().await;
        let issuer = Issuer::start(app.clock.clone()).await;
        let conns = [
            json!({"id": "crm", "kind": "oauth2", "oauth2": {"authorization_endpoint": "https://crm.example/a", "token_endpoint": "https://crm.example/t",
                "client_id": "c", "client_secret": "s", "scopes": ["crm:read", "crm:write"], "scope_enforcement": "label"}, "scope_roles": {"crm:write": ["sales-admin"]}}),
            json!({"id": "reports", "kind": "api_key", "api_key": {"header": "Authorization", "format": "Bearer {key}"}}),
            json!({"id": "notes", "kind": "api_key", "api_key": {"header": "X-API-Key"}}),
        ];
        for c in conns {
            expect(app.post_json("/v1/admin/connections", c).await, 201).await;
        }
        let creds = [
            (
                "crm",
                "user:idp:alice",
                json!({"access_token": "at-alice", "refresh_token": "rt-alice", "expires_in": 3600, "scope": "crm:read crm:write crm:admin"}),
            ),
            ("crm", "user:idp:bob", json!({"access_token": "at-bob", "expires_in": 3600, "scope": "crm:read"})),
            ("crm", "user:idp:carol", json!({"access_token": "at-carol-short", "expires_in": 30, "scope": "crm:read"})),
            ("reports", "tenant:idp:acme", json!({"api_key": API_KEY})),
            ("reports", "tenant:idp:globex", json!({"api_key": "sk-globex"})),
        ];
        for (c, o, body) in creds {
            expect(app.put_json(&format!("/v1/admin/connections/{c}/credentials/{o}"), body).await, 200).await;
        }
        let issuer_body = json!({"issuer": issuer.url, "jwks_uri": format!("{}/jwks.json", issuer.url), "audience": AUDIENCE, "subject_prefix": "idp", "tenant_claim": "org", "roles_claim": "roles"});
        expect(app.post_json("/v1/admin/issuers", issuer_body).await, 201).await;
        let user_policy = json!({"grants": [
            {"connection": "crm", "owners": "self", "scopes": ["crm:read", "crm:write"], "max_ttl": 600},
            {"connection": "reports", "owners": "tenant"}]});
        let user_agent = Self::agent(&app, "calendar-tool", user_policy).await;
        let service_policy =
            json!({"grants": [{"connection": "crm", "owners": "any"}, {"connection": "reports", "owners": "any", "max_ttl": 120}]});
        let service_agent = Self::agent(&app, "reporter", service_policy).await;
        World { app, issuer, user_agent, service_agent }
    }

    async fn agent(app: &TestApp, id: &str, policy: Value) -> (String, String) {
        let v = expect(app.post_json("/v1/admin/agents", json!({"id": id, "name": id, "policy": policy})).await, 201).await;
        assert_eq!(v["client_id"], id);
        (id.to_owned(), v["client_secret"].as_str().unwrap().to_owned())
    }

    async fn token_request(&self, agent: &(String, String), form: &[(&str, &str)], basic: bool) -> reqwest::Response {
        let mut req = self.app.http.post(self.app.url("/oauth2/token"));
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        if basic {
            req = req.basic_auth(&agent.0, Some(&agent.1));
        } else {
            fields.push(("client_id", &agent.0));
            fields.push(("client_secret", &agent.1));
        }
        req.form(&fields).send().await.unwrap()
    }

    async fn service_token(&self) -> String {
        let v = expect(self.token_request(&self.service_agent, &[("grant_type", "client_credentials")], true).await, 200).await;
        v["access_token"].as_str().unwrap().to_owned()
    }

    /// RFC 8693 exchange of a subject token by `agent` (client_secret_post).
    async fn exchange(&self, agent: &(String, String), subject: &str) -> reqwest::Response {
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", subject),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ];
        self.token_request(agent, &form, false).await
    }

    /// A user-bound token of the user agent for `sub`.
    async fn user_token(&self, sub: &str, extra: Value) -> String {
        let subject = self.issuer.token(Algorithm::RS256, "rsa-1", self.issuer.claims(sub, extra));
        let v = expect(self.exchange(&self.user_agent, &subject).await, 200).await;
        v["access_token"].as_str().unwrap().to_owned()
    }

    async fn release(&self, token: &str, path_and_query: &str) -> reqwest::Response {
        self.app.http.get(self.app.url(path_and_query)).bearer_auth(token).send().await.unwrap()
    }
}

#[tokio::test]
async fn client_credentials_and_service_release_of_an_api_key() {
    let w = World::new().await;
    // Both client authentication methods work.
    let basic = expect(w.token_request(&w.service_agent, &[("grant_type", "client_credentials")], true).await, 200).await;
    let post = expect(w.token_request(&w.service_agent, &[("grant_type", "client_credentials")], false).await, 200).await;
    assert_eq!(basic["token_type"], "Bearer");
    assert!(basic["expires_in"].as_i64().unwrap() <= 900);
    assert_ne!(basic["access_token"], post["access_token"]);
    let claims: Value = serde_json::from_slice(&base64_decode(basic["access_token"].as_str().unwrap().split('.').nth(1).unwrap())).unwrap();
    assert_eq!(claims["iss"], w.app.addr);
    assert_eq!(claims["aud"], w.app.addr);
    assert_eq!(claims["sub"], "reporter");
    assert!(claims["jti"].as_str().is_some());
    let jwks: Value = w.app.http.get(w.app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    let meta: Value = w.app.http.get(w.app.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["issuer"], w.app.addr);
    assert_eq!(meta["token_endpoint"], format!("{}/oauth2/token", w.app.addr));

    let token = basic["access_token"].as_str().unwrap();
    let r = w.release(token, "/v1/connections/reports/token?tenant_id=idp:acme").await;
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v = expect(r, 200).await;
    assert_eq!(v["type"], "api_key");
    assert_eq!(v["connection_id"], "reports");
    assert_eq!(v["owner"], "tenant:idp:acme");
    assert_eq!(v["api_key"], API_KEY);
    assert_eq!(v["header"], json!({"name": "Authorization", "value": format!("Bearer {API_KEY}")}));
    assert_eq!(v["lease"]["expires_in"], 120);
    assert!(v["lease"]["id"].as_str().unwrap().starts_with("lease_"));

    // Service agent naming a user (owners: any), OAuth body shape.
    let v = expect(w.release(token, "/v1/connections/crm/token?user_id=idp:bob&scope=crm:read").await, 200).await;
    assert_eq!(v["type"], "oauth2");
    assert_eq!(v["owner"], "user:idp:bob");
    assert_eq!(v["access_token"], "at-bob");
    assert_eq!(v["scope"], "crm:read");
    assert_eq!(v["token_type"], "Bearer");
    assert!(v["expires_in"].as_i64().unwrap() > 3500);
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    // Naming nobody is a bad request for a service agent.
    expect(w.release(token, "/v1/connections/crm/token").await, 400).await;

    // Token endpoint refusals.
    let wrong = (w.service_agent.0.clone(), "lks_wrong".to_owned());
    let r = w.token_request(&wrong, &[("grant_type", "client_credentials")], true).await;
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"latchkey\"");
    assert_eq!(expect(r, 401).await["error"], "invalid_client");
    let nobody = ("nobody".to_owned(), "lks_x".to_owned());
    assert_eq!(
        expect(w.token_request(&nobody, &[("grant_type", "client_credentials")], false).await, 401).await["error"],
        "invalid_client"
    );
    let both = w
        .app
        .http
        .post(w.app.url("/oauth2/token"))
        .basic_auth(&w.service_agent.0, Some(&w.service_agent.1))
        .form(&[("grant_type", "client_credentials"), ("client_id", &w.service_agent.0), ("client_secret", &w.service_agent.1)])
        .send()
        .await
        .unwrap();
    assert_eq!(expect(both, 400).await["error"], "invalid_request");
    assert_eq!(
        expect(w.token_request(&w.service_agent, &[("grant_type", "password")], true).await, 400).await["error"],
        "unsupported_grant_type"
    );
}

#[tokio::test]
async fn policy_matrix() {
    let w = World::new().await;
    let alice = w.user_token("alice", json!({"org": "acme", "roles": ["sales"]})).await;
    let alice_admin = w.user_token("alice", json!({"org": "acme", "roles": ["sales-admin"]})).await;

    // Allowed: own credential, scope within grant, credential and roles.
    let v = expect(w.release(&alice, "/v1/connections/crm/token?scope=crm:read&min_ttl=300").await, 200).await;
    assert_eq!(v["owner"], "user:idp:alice");
    assert_eq!(v["access_token"], "at-alice");
    assert_eq!(v["lease"]["expires_in"], 600, "max_ttl caps the lease");
    // No scope asked: what the credential holds, within grant and roles.
    assert_eq!(expect(w.release(&alice, "/v1/connections/crm/token").await, 200).await["scope"], "crm:read");
    // Scope escalation beyond the grant.
    let v = expect(w.release(&alice, "/v1/connections/crm/token?scope=crm:read%20crm:admin").await, 403).await;
    assert_eq!(v["error"], "insufficient_scope");
    assert_eq!(v["refused_scopes"], json!(["crm:admin"]));
    // Role-gated scope: without the role, then with it.
    let v = expect(w.release(&alice, "/v1/connections/crm/token?scope=crm:write").await, 403).await;
    assert_eq!(v["refused_scopes"], json!(["crm:write"]));
    assert_eq!(expect(w.release(&alice_admin, "/v1/connections/crm/token?scope=crm:write").await, 200).await["scope"], "crm:write");
    // A self agent naming another user.
    assert_eq!(expect(w.release(&alice, "/v1/connections/crm/token?user_id=idp:bob").await, 403).await["error"], "access_denied");
    // Tenant credential of its own tenant, and of another.
    let v = expect(w.release(&alice, "/v1/connections/reports/token").await, 200).await;
    assert_eq!(v["owner"], "tenant:idp:acme");
    assert_eq!(expect(w.release(&alice, "/v1/connections/reports/token?tenant_id=idp:globex").await, 403).await["error"], "access_denied");
    // Permitted but not connected.
    let dave = w.user_token("dave", json!({"org": "acme"})).await;
    assert_eq!(expect(w.release(&dave, "/v1/connections/crm/token").await, 404).await["error"], "not_connected");
    // An unknown connection and a connection without a grant look the same.
    let unknown = expect(w.release(&alice, "/v1/connections/no-such-thing/token").await, 403).await;
    let ungranted = expect(w.release(&alice, "/v1/connections/notes/token").await, 403).await;
    assert_eq!(unknown["error"], ungranted["error"]);
    assert_eq!(unknown["error_description"], ungranted["error_description"]);
    // A token expiring within min_ttl (refresh arrives with issue 4).
    let carol = w.user_token("carol", json!({})).await;
    let r = w.release(&carol, "/v1/connections/crm/token?min_ttl=300").await;
    assert_eq!(r.headers()["retry-after"], "30");
    assert_eq!(expect(r, 503).await["error"], "provider_unavailable");
    assert_eq!(expect(w.release(&carol, "/v1/connections/crm/token?min_ttl=10").await, 200).await["access_token"], "at-carol-short");
    // Bad query parameters.
    expect(w.release(&alice, "/v1/connections/crm/token?min_ttl=-1").await, 400).await;
    expect(w.release(&alice, "/v1/connections/crm/token?bogus=1").await, 400).await;
}

#[tokio::test]
async fn forged_and_bad_agent_tokens_are_refused() {
    let w = World::new().await;
    let good = w.service_token().await;
    let parts: Vec<&str> = good.split('.').collect();
    let payload: Value = serde_json::from_slice(&base64_decode(parts[1])).unwrap();
    let jwks: Value = w.app.http.get(w.app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let public_key = base64_decode(jwks["keys"][0]["x"].as_str().unwrap());
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();

    // Tokens signed with latchkey's real key but with bad claims.
    let sign_with = |f: &dyn Fn(&mut AgentClaims)| {
        let svc = TokenService::new(w.app.addr.clone(), w.app.vault.signing_keys().unwrap());
        let mut c: AgentClaims = serde_json::from_value(payload.clone()).unwrap();
        f(&mut c);
        svc.sign(&c).unwrap()
    };
    let hs256 = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.clone());
        jsonwebtoken::encode(&h, &payload, &EncodingKey::from_secret(&public_key)).unwrap()
    };
    let mut tampered: Value = payload.clone();
    tampered["sub"] = json!("calendar-tool");
    tampered["client_id"] = json!("calendar-tool");
    let subject = w.issuer.token(Algorithm::RS256, "rsa-1", w.issuer.claims("alice", json!({})));
    let forged = [
        ("alg none", format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1])),
        ("HS256 with the public key", hs256),
        ("unknown kid", format!("{}.{}.{}", b64(br#"{"alg":"EdDSA","kid":"nope"}"#), parts[1], parts[2])),
        ("wrong iss", sign_with(&|c| c.iss = "http://evil.example".into())),
        ("wrong aud", sign_with(&|c| c.aud = "http://evil.example".into())),
        ("expired", sign_with(&|c| c.exp = w.app.clock.now() - 3600)),
        ("nbf in the future", sign_with(&|c| c.nbf = w.app.clock.now() + 3600)),
        ("tampered claims", format!("{}.{}.{}", parts[0], b64(tampered.to_string().as_bytes()), parts[2])),
        ("subject token presented directly", subject),
        ("garbage", "not-a-token".to_owned()),
    ];
    for (what, token) in forged {
        let r = w.release(&token, "/v1/connections/reports/token?tenant_id=idp:acme").await;
        let challenge = r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(challenge.as_deref(), Some("Bearer error=\"invalid_token\""), "{what}");
        let v = expect(r, 401).await;
        assert_eq!(v["error"], "invalid_token", "{what}");
        assert!(!v.to_string().contains(API_KEY));
    }
    let r = w.app.http.get(w.app.url("/v1/connections/reports/token")).send().await.unwrap();
    assert_eq!(expect(r, 401).await["error"], "invalid_token");

    // Disabling an agent takes effect at once, also for its cached tokens.
    expect(w.release(&good, "/v1/connections/reports/token?tenant_id=idp:acme").await, 200).await;
    expect(w.app.admin(Method::POST, "/v1/admin/agents/reporter/disable").send().await.unwrap(), 200).await;
    assert_eq!(expect(w.release(&good, "/v1/connections/reports/token?tenant_id=idp:acme").await, 401).await["error"], "invalid_token");
    expect(w.token_request(&w.service_agent, &[("grant_type", "client_credentials")], true).await, 401).await;
    // Enabling it again does not revive tokens issued before it was disabled.
    expect(w.app.admin(Method::POST, "/v1/admin/agents/reporter/enable").send().await.unwrap(), 200).await;
    assert_eq!(expect(w.release(&good, "/v1/connections/reports/token?tenant_id=idp:acme").await, 401).await["error"], "invalid_token");
    let fresh = w.service_token().await;
    expect(w.release(&fresh, "/v1/connections/reports/token?tenant_id=idp:acme").await, 200).await;

    // Rotating the secret retires the old one, and every token issued with it.
    let v = expect(w.app.admin(Method::POST, "/v1/admin/agents/reporter/secret").send().await.unwrap(), 200).await;
    expect(w.token_request(&w.service_agent, &[("grant_type", "client_credentials")], true).await, 401).await;
    assert_eq!(expect(w.release(&fresh, "/v1/connections/reports/token?tenant_id=idp:acme").await, 401).await["error"], "invalid_token");
    let rotated = (w.service_agent.0.clone(), v["client_secret"].as_str().unwrap().to_owned());
    let t = expect(w.token_request(&rotated, &[("grant_type", "client_credentials")], true).await, 200).await;
    let after_rotation = t["access_token"].as_str().unwrap().to_owned();
    expect(w.release(&after_rotation, "/v1/connections/reports/token?tenant_id=idp:acme").await, 200).await;

    // Deleted and created again under the same id: tokens from before the delete stay dead.
    expect(w.app.admin(Method::DELETE, "/v1/admin/agents/reporter").send().await.unwrap(), 204).await;
    let policy = json!({"grants": [{"connection": "reports", "owners": "any"}]});
    expect(w.app.post_json("/v1/admin/agents", json!({"id": "reporter", "name": "again", "policy": policy})).await, 201).await;
    assert_eq!(
        expect(w.release(&after_rotation, "/v1/connections/reports/token?tenant_id=idp:acme").await, 401).await["error"],
        "invalid_token"
    );
}

#[tokio::test]
async fn token_exchange_verifies_subject_tokens_from_the_trusted_issuer() {
    let w = World::new().await;
    // RS256, ES256 and EdDSA subject tokens are accepted; the result is bound to the user.
    for (alg, kid) in [(Algorithm::RS256, "rsa-1"), (Algorithm::ES256, "ec-1"), (Algorithm::EdDSA, "ed-1")] {
        let subject = w.issuer.token(alg, kid, w.issuer.claims("alice", json!({"org": "acme", "roles": "sales sales-admin"})));
        let v = expect(w.exchange(&w.user_agent, &subject).await, 200).await;
        assert_eq!(v["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token");
        let claims: Value = serde_json::from_slice(&base64_decode(v["access_token"].as_str().unwrap().split('.').nth(1).unwrap())).unwrap();
        assert_eq!(claims["sub"], "idp:alice", "{alg:?}: the user is namespaced by the issuer's subject prefix");
        assert_eq!(claims["act"]["sub"], "calendar-tool");
        assert_eq!(claims["client_id"], "calendar-tool");
        assert_eq!(claims["tenant"], "idp:acme");
        assert_eq!(claims["roles"], json!(["sales", "sales-admin"]));
        assert_eq!(claims["iss"], w.app.addr);
    }
    // exp is bounded by the subject token's.
    let short = w.issuer.token(Algorithm::RS256, "rsa-1", w.issuer.claims("alice", json!({"exp": w.app.clock.now() + 120})));
    let v = expect(w.exchange(&w.user_agent, &short).await, 200).await;
    assert!(v["expires_in"].as_i64().unwrap() <= 120);

    let alg_mismatch = {
        // An ES256 signature under the RSA key's kid: the key pins RS256.
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("rsa-1".into());
        jsonwebtoken::encode(&h, &w.issuer.claims("alice", json!({})), &EncodingKey::from_ec_der(ISSUER_EC)).unwrap()
    };
    let wrongly_signed = {
        let t = w.issuer.token(Algorithm::ES256, "ec-1", w.issuer.claims("alice", json!({})));
        let t2 = w.issuer.token(Algorithm::ES256, "ec-1", w.issuer.claims("mallory", json!({})));
        let (a, b): (Vec<&str>, Vec<&str>) = (t.split('.').collect(), t2.split('.').collect());
        format!("{}.{}.{}", a[0], b[1], a[2])
    };
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("rsa-1".into());
    let hmac = jsonwebtoken::encode(&hs, &w.issuer.claims("alice", json!({})), &EncodingKey::from_secret(b"guess")).unwrap();
    let refusals = [
        ("expired", w.issuer.token(Algorithm::RS256, "rsa-1", w.issuer.claims("alice", json!({"exp": w.app.clock.now() - 3600})))),
        ("wrong audience", w.issuer.token(Algorithm::RS256, "rsa-1", w.issuer.claims("alice", json!({"aud": "someone-else"})))),
        ("unknown issuer", w.issuer.token(Algorithm::RS256, "rsa-1", w.issuer.claims("alice", json!({"iss": "https://unknown.example"})))),
        ("algorithm not matching the key", alg_mismatch),
        ("wrongly signed", wrongly_signed),
        ("HMAC", hmac),
        ("unknown kid", w.issuer.token(Algorithm::RS256, "rsa-404", w.issuer.claims("alice", json!({})))),
        ("sub that cannot name an owner", w.issuer.token(Algorithm::RS256, "rsa-1", w.issuer.claims("a/b", json!({})))),
        ("not a JWT", "opaque-token".to_owned()),
    ];
    for (what, subject) in refusals {
        let v = expect(w.exchange(&w.user_agent, &subject).await, 400).await;
        assert_eq!(v["error"], "invalid_grant", "{what}: {v}");
    }
    // A wrong client secret fails client authentication before anything else.
    let good = w.issuer.token(Algorithm::RS256, "rsa-1", w.issuer.claims("alice", json!({})));
    let wrong = (w.user_agent.0.clone(), "lks_nope".to_owned());
    assert_eq!(expect(w.exchange(&wrong, &good).await, 401).await["error"], "invalid_client");
    // JWKS refetches are rate-limited: many unknown kids cause at most one more fetch.
    let before = w.issuer.fetches.load(Ordering::SeqCst);
    for i in 0..5 {
        let t = w.issuer.token(Algorithm::RS256, &format!("rotated-{i}"), w.issuer.claims("alice", json!({})));
        expect(w.exchange(&w.user_agent, &t).await, 400).await;
    }
    assert!(w.issuer.fetches.load(Ordering::SeqCst) - before <= 1, "JWKS refetch must be rate-limited");
}

#[tokio::test]
async fn every_decision_is_audited_without_secrets_and_audit_fails_closed() {
    let w = World::new().await;
    let svc = w.service_token().await;
    let alice = w.user_token("alice", json!({"org": "acme"})).await;
    let calls = [
        (&svc, "/v1/connections/reports/token?tenant_id=idp:acme", 200),
        (&svc, "/v1/connections/crm/token?user_id=idp:bob", 200),
        (&alice, "/v1/connections/crm/token?user_id=idp:bob", 403),
        (&alice, "/v1/connections/crm/token?scope=crm:admin", 403),
        (&alice, "/v1/connections/notes/token", 403),
        (&svc, "/v1/connections/crm/token?user_id=idp:nobody", 404),
    ];
    let count = |records: &[latchkey::audit::Record]| records.iter().filter(|r| r.action == "token.release").count();
    let before = count(&w.app.vault.audit_tail(10_000).unwrap());
    for (t, path, status) in &calls {
        expect(w.release(t, path).await, *status).await;
    }
    let records = w.app.vault.audit_tail(10_000).unwrap();
    let releases: Vec<_> = records.iter().filter(|r| r.action == "token.release").collect();
    assert_eq!(count(&records) - before, calls.len(), "one record per decision");
    assert_eq!(releases.iter().filter(|r| r.outcome == "denied").count(), 4);
    let allowed: Value = serde_json::from_str(&releases[0].detail).unwrap();
    for field in [
        "agent",
        "owner",
        "connection",
        "scopes_requested",
        "scopes_granted",
        "scopes_refused",
        "decision",
        "reason",
        "lease_id",
        "request_id",
    ] {
        assert!(allowed.get(field).is_some(), "audit detail lacks {field}: {allowed}");
    }
    assert_eq!(allowed["decision"], "allow");
    for r in &records {
        for secret in [API_KEY, "at-bob", "at-alice", "rt-alice", w.service_agent.1.as_str(), svc.as_str()] {
            assert!(!r.detail.contains(secret) && !r.target.contains(secret), "secret in audit record {}", r.seq);
        }
    }
    // Filters.
    let v = expect(w.app.get("/v1/admin/audit?agent=reporter&decision=allow").await, 200).await;
    let recs = v["records"].as_array().unwrap();
    assert!(recs.iter().all(|r| r["actor"] == "agent:reporter" && r["outcome"] == "ok"));
    assert!(recs.iter().any(|r| r["action"] == "token.release"));
    let v = expect(w.app.get("/v1/admin/audit?connection=crm&owner=user:idp:bob&decision=deny").await, 200).await;
    let recs = v["records"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "{v}");
    assert_eq!(recs[0]["detail"]["reason"], "the grant does not allow naming this user");
    expect(w.app.get("/v1/admin/audit?decision=maybe").await, 400).await;
    assert!(w.app.vault.audit_verify().unwrap().is_ok());

    // Make the audit table refuse writes: releases are refused, and no secret leaves.
    let c = w.app.sql();
    c.exec_either(
        "CREATE TRIGGER block_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit disk full'); END;",
        "CREATE FUNCTION block_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit disk full'; END $$; \
         CREATE TRIGGER block_audit BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION block_audit();",
    );
    let r = w.release(&svc, "/v1/connections/reports/token?tenant_id=idp:acme").await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("audit_unavailable"), "{text}");
    assert!(!text.contains(API_KEY));
    c.exec_either("DROP TRIGGER block_audit;", "DROP TRIGGER block_audit ON audit;");
    expect(w.release(&svc, "/v1/connections/reports/token?tenant_id=idp:acme").await, 200).await;
}

#[tokio::test]
async fn agent_admin_api_validates_and_never_returns_secret_hashes() {
    let w = World::new().await;
    let list = w.app.get("/v1/admin/agents").await.text().await.unwrap();
    assert!(!list.contains("argon2") && !list.contains(&w.user_agent.1), "{list}");
    let v = expect(w.app.get("/v1/admin/agents/calendar-tool").await, 200).await;
    assert_eq!(v["policy"]["grants"][0]["owners"], "self");
    for bad in [
        json!({"id": "../x", "name": "x"}),
        json!({"id": "x", "name": "x", "policy": {"grants": [{"connection": "crm", "owners": "everyone"}]}}),
        json!({"id": "x", "name": "x", "extra": 1}),
        json!({"id": "calendar-tool", "name": "dup"}),
    ] {
        let r = w.app.post_json("/v1/admin/agents", bad.clone()).await;
        assert!(matches!(r.status().as_u16(), 400 | 409), "{bad}");
    }
    let r = w.app.put_json("/v1/admin/agents/calendar-tool/policy", json!({"grants": [{"connection": "notes", "owners": "self"}]})).await;
    assert_eq!(expect(r, 200).await["policy"]["grants"][0]["connection"], "notes");
    assert_eq!(w.app.delete("/v1/admin/agents/calendar-tool").await.status(), 204);
    assert_eq!(w.app.get("/v1/admin/agents/calendar-tool").await.status(), 404);
    // Issuers: validation and deletion.
    let r = w
        .app
        .post_json("/v1/admin/issuers", json!({"issuer": "http://evil.example", "jwks_uri": "http://evil.example/jwks", "audience": "x"}))
        .await;
    assert_eq!(r.status(), 400, "plain http only for localhost");
    let r = w
        .app
        .post_json(
            "/v1/admin/issuers",
            json!({"issuer": "https://idp.example", "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "audience": "x"}),
        )
        .await;
    assert_eq!(r.status(), 400, "symmetric keys are refused");
    let issuers = expect(w.app.get("/v1/admin/issuers").await, 200).await;
    assert_eq!(issuers["issuers"].as_array().unwrap().len(), 1);
    let r = w.app.admin(Method::DELETE, &format!("/v1/admin/issuers?issuer={}", w.issuer.url)).send().await.unwrap();
    assert_eq!(r.status(), 204);
}

/// The release path caches parsed policies and connection specs; a change committed by
/// another process (the CLI on the same database) must be seen by the very next release.
#[tokio::test]
async fn changes_from_another_process_reach_the_next_release() {
    let w = World::new().await;
    let token = w.service_token().await;
    let path = "/v1/connections/reports/token?tenant_id=idp:acme";
    let cli = |args: &[&str]| {
        let out = w.app._dirs.run(args);
        assert!(out.status.success(), "{args:?}: {}", crate::helpers::stderr(&out));
    };
    // Warm the cache.
    for _ in 0..3 {
        expect(w.release(&token, path).await, 200).await;
    }

    cli(&["agents", "disable", "reporter"]);
    assert_eq!(expect(w.release(&token, path).await, 401).await["error"], "invalid_token");
    cli(&["agents", "enable", "reporter"]);
    assert_eq!(expect(w.release(&token, path).await, 401).await["error"], "invalid_token", "disabling ended the token");
    let token = w.service_token().await;
    expect(w.release(&token, path).await, 200).await;

    // A narrower policy: the reports grant is gone at once (and comes back at once).
    let policy = w.app._dirs.root.path().join("policy.json");
    std::fs::write(&policy, json!({"grants": [{"connection": "crm", "owners": "any"}]}).to_string()).unwrap();
    cli(&["agents", "policy", "reporter", "--from", policy.to_str().unwrap()]);
    assert_eq!(expect(w.release(&token, path).await, 403).await["error"], "access_denied");
    std::fs::write(&policy, json!({"grants": [{"connection": "reports", "owners": "any"}]}).to_string()).unwrap();
    cli(&["agents", "policy", "reporter", "--from", policy.to_str().unwrap()]);
    expect(w.release(&token, path).await, 200).await;

    // The connection is replaced with another presentation: the next release uses it.
    cli(&["connections", "rm", "reports", "--cascade"]);
    assert_eq!(expect(w.release(&token, path).await, 403).await["error"], "access_denied");
    let conn = w.app._dirs.root.path().join("conn.json");
    std::fs::write(&conn, json!({"id": "reports", "kind": "api_key", "api_key": {"header": "X-Report-Key"}}).to_string()).unwrap();
    cli(&["connections", "add", "--from", conn.to_str().unwrap()]);
    assert_eq!(expect(w.release(&token, path).await, 404).await["error"], "not_connected");
    let key = w.app._dirs.root.path().join("key.txt");
    std::fs::write(&key, "sk-replaced").unwrap();
    cli(&["credentials", "put", "reports", "tenant:idp:acme", "--api-key-file", key.to_str().unwrap()]);
    let v = expect(w.release(&token, path).await, 200).await;
    assert_eq!(v["header"], json!({"name": "X-Report-Key", "value": "sk-replaced"}));

    // Master keys rotated by another process: releases load the new version once, on the
    // blocking pool, and go on working.
    let loads = w.app.vault.key_loads();
    cli(&["keys", "rotate"]);
    for _ in 0..5 {
        let v = expect(w.release(&token, path).await, 200).await;
        assert_eq!(v["header"]["value"], "sk-replaced");
    }
    assert_eq!(w.app.vault.key_loads(), loads + 1);
}

/// The reported attack: a second trusted issuer's `alice` released the first issuer's
/// Alice's credentials. Subjects are now namespaced by each issuer's subject prefix.
#[tokio::test]
async fn a_second_issuers_alice_is_someone_else() {
    let w = World::new().await;
    let other = Issuer::start(w.app.clock.clone()).await;
    let body = json!({"issuer": other.url, "jwks_uri": format!("{}/jwks.json", other.url), "audience": AUDIENCE, "subject_prefix": "other", "tenant_claim": "org"});
    expect(w.app.post_json("/v1/admin/issuers", body).await, 201).await;
    // The prefix is unique: a third issuer cannot claim "idp".
    let clash = json!({"issuer": "http://127.0.0.1:9/x", "jwks_uri": "http://127.0.0.1:9/jwks", "audience": "a", "subject_prefix": "idp"});
    assert_eq!(expect(w.app.post_json("/v1/admin/issuers", clash).await, 409).await["error"], "conflict");
    let subject = other.token(Algorithm::RS256, "rsa-1", other.claims("alice", json!({"org": "acme"})));
    let v = expect(w.exchange(&w.user_agent, &subject).await, 200).await;
    let token = v["access_token"].as_str().unwrap().to_owned();
    let claims: Value = serde_json::from_slice(&base64_decode(token.split('.').nth(1).unwrap())).unwrap();
    assert_eq!((claims["sub"].as_str(), claims["tenant"].as_str()), (Some("other:alice"), Some("other:acme")));
    // Neither idp's Alice's credential nor idp's acme's key is reachable with it.
    let r = w.release(&token, "/v1/connections/crm/token").await;
    assert_eq!(expect(r, 404).await["error"], "not_connected");
    let r = w.release(&token, "/v1/connections/reports/token").await;
    let v = expect(r, 404).await;
    assert!(!v.to_string().contains(API_KEY));
    // The first issuer's alice still gets hers.
    let alice = w.user_token("alice", json!({"org": "acme"})).await;
    let v = expect(w.release(&alice, "/v1/connections/crm/token").await, 200).await;
    assert_eq!(v["owner"], "user:idp:alice");
}

/// Agent secrets are keyed hashes now; a secret stored as an argon2 hash by an older
/// version still works, and is replaced by a keyed hash on its first successful use.
#[tokio::test]
async fn legacy_argon2_secrets_work_once_and_become_keyed_hashes() {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let w = World::new().await;
    let salt = SaltString::encode_b64(&[9u8; 16]).unwrap();
    let params = argon2::Params::new(19 * 1024, 2, 1, None).unwrap();
    let legacy = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(b"lks_from-an-older-version", &salt)
        .unwrap()
        .to_string();
    let db = w.app.sql();
    let stored = |db: &TestSql| -> String { db.text("SELECT secret_hash FROM agents WHERE id = 'reporter'") };
    assert!(stored(&db).starts_with("hmac-sha256$"), "new secrets are keyed hashes");
    assert!(legacy.chars().all(|c| c != '\''));
    // As an older version stored it (through the store, so the row stays sealed: a direct
    // UPDATE is an integrity violation, tested in `integrity`).
    let current = stored(&db);
    w.app.vault.store().write(|tx| latchkey::store::identity::upgrade_agent_hash(tx, "reporter", &current, &legacy)).unwrap();
    assert_eq!(stored(&db), legacy);
    let old = (w.service_agent.0.clone(), "lks_from-an-older-version".to_owned());
    expect(w.token_request(&old, &[("grant_type", "client_credentials")], true).await, 200).await;
    assert!(stored(&db).starts_with("hmac-sha256$"), "replaced on first use");
    expect(w.token_request(&old, &[("grant_type", "client_credentials")], true).await, 200).await;
    let wrong = (w.service_agent.0.clone(), "lks_wrong".to_owned());
    expect(w.token_request(&wrong, &[("grant_type", "client_credentials")], true).await, 401).await;
}

#[tokio::test]
async fn replaced_or_deleted_issuer_keys_are_not_trusted_from_the_cache() {
    let w = World::new().await;
    // Twenty concurrent exchanges with a cold cache: one JWKS fetch.
    let subject = w.issuer.token(Algorithm::RS256, "rsa-1", w.issuer.claims("alice", json!({})));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (http, url, agent, subject) = (w.app.http.clone(), w.app.url("/oauth2/token"), w.user_agent.clone(), subject.clone());
        set.spawn(async move {
            let form = [
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", subject.as_str()),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ];
            http.post(url).basic_auth(&agent.0, Some(&agent.1)).form(&form).send().await.unwrap().status().as_u16()
        });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(w.issuer.fetches.load(Ordering::SeqCst), 1, "one fetch per issuer at a time");

    // The RSA key is compromised: the admin points the issuer at a JWKS without it. A token
    // signed with it is refused at once, although the old document is still cached.
    let delete_issuer = format!("/v1/admin/issuers?issuer={}", w.issuer.url);
    let replaced = json!({"issuer": w.issuer.url, "jwks_uri": format!("{}/rotated.json", w.issuer.url), "audience": AUDIENCE,
        "subject_prefix": "idp", "tenant_claim": "org", "roles_claim": "roles"});
    expect(w.app.post_json("/v1/admin/issuers", replaced.clone()).await, 201).await;
    assert_eq!(expect(w.exchange(&w.user_agent, &subject).await, 400).await["error"], "invalid_grant");
    let ec = w.issuer.token(Algorithm::ES256, "ec-1", w.issuer.claims("alice", json!({})));
    expect(w.exchange(&w.user_agent, &ec).await, 200).await;

    // Deleted and added again (first with the old location, which is fetched afresh, then
    // with the new): nothing from before the delete is reused.
    assert_eq!(w.app.delete(&delete_issuer).await.status(), 204);
    assert_eq!(w.exchange(&w.user_agent, &ec).await.status(), 400, "no issuer, no exchange");
    let before = w.issuer.fetches.load(Ordering::SeqCst);
    let original = json!({"issuer": w.issuer.url, "jwks_uri": format!("{}/jwks.json", w.issuer.url), "audience": AUDIENCE,
        "subject_prefix": "idp", "tenant_claim": "org", "roles_claim": "roles"});
    expect(w.app.post_json("/v1/admin/issuers", original).await, 201).await;
    expect(w.exchange(&w.user_agent, &subject).await, 200).await;
    assert_eq!(w.issuer.fetches.load(Ordering::SeqCst), before + 1, "the re-added issuer's keys are fetched again");
    assert_eq!(w.app.delete(&delete_issuer).await.status(), 204);
    expect(w.app.post_json("/v1/admin/issuers", replaced).await, 201).await;
    assert_eq!(expect(w.exchange(&w.user_agent, &subject).await, 400).await["error"], "invalid_grant");
}
