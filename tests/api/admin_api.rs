//! Admin API: authentication, validation, and that bad input changes nothing.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{expect, TestApp};
use latchkey::model::{ConnectionId, Owner};

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), serde_json::json!({"status": "ready", "database": "ok", "keys": "ok"}));
}

#[tokio::test]
async fn admin_routes_require_a_valid_admin_token() {
    let app = TestApp::spawn().await;
    app.api_key_connection("crm").await;
    let before = app.audit_count();
    let bad_tokens: [Option<&str>; 5] = [None, Some("wrong"), Some("lka_0000000000000000.nope"), Some(""), Some(&"x".repeat(600))];
    let routes = [
        (Method::GET, "/v1/admin/connections"),
        (Method::POST, "/v1/admin/connections"),
        (Method::GET, "/v1/admin/connections/crm"),
        (Method::DELETE, "/v1/admin/connections/crm"),
        (Method::PUT, "/v1/admin/connections/crm/credentials/user:alice"),
        (Method::GET, "/v1/admin/connections/crm/credentials"),
    ];
    for (method, path) in &routes {
        for t in &bad_tokens {
            let mut req = app.http.request(method.clone(), app.url(path)).json(&json!({"api_key": "k"}));
            if let Some(t) = t {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {t:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"], "invalid_token");
            assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
        }
    }
    // A token with the right id but the wrong secret is refused too.
    let (id, _) = app.token.trim_start_matches("lka_").split_once('.').unwrap();
    let r = app.http.get(app.url("/v1/admin/connections")).bearer_auth(format!("lka_{id}.AAAA")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(app.audit_count(), before, "refused requests must change nothing");
    assert!(app.vault.list_credentials(&ConnectionId::parse("crm").unwrap(), None, 10).unwrap().is_empty());
}

#[tokio::test]
async fn revoked_admin_token_is_refused() {
    let app = TestApp::spawn().await;
    let (id, token) = app.vault.create_admin_token(&latchkey::vault::Actor::Cli("t".into()), Some("second")).unwrap();
    let ok = app.http.get(app.url("/v1/admin/connections")).bearer_auth(token.expose()).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    app.vault.revoke_admin_token(&latchkey::vault::Actor::Cli("t".into()), &id).unwrap();
    let r = app.http.get(app.url("/v1/admin/connections")).bearer_auth(token.expose()).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx_and_stores_nothing() {
    let app = TestApp::spawn().await;
    app.api_key_connection("crm").await;
    let before_audit = app.audit_count();
    let send_raw = |method: Method, path: &str, body: Vec<u8>, ctype: &str| {
        app.admin(method, path).header("content-type", ctype.to_owned()).body(body).send()
    };
    let long_id = "a".repeat(5000);
    // (method, path, body, content type, expected status, expected error code)
    type Case<'a> = (Method, String, Vec<u8>, &'a str, u16, &'a str);
    let cases: Vec<Case> = vec![
        (Method::POST, "/v1/admin/connections".into(), b"{not json".to_vec(), "application/json", 400, "invalid_request"),
        (
            Method::POST,
            "/v1/admin/connections".into(),
            br#"{"id":"x","kind":"api_key","api_key":{"header":"X"},"surprise":1}"#.to_vec(),
            "application/json",
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/admin/connections".into(),
            br#"{"id":"../x","kind":"api_key","api_key":{"header":"X"}}"#.to_vec(),
            "application/json",
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/admin/connections".into(),
            format!(r#"{{"id":"{long_id}","kind":"api_key","api_key":{{"header":"X"}}}}"#).into_bytes(),
            "application/json",
            400,
            "invalid_request",
        ),
        (Method::POST, "/v1/admin/connections".into(), br#"{"id":"x","kind":"ldap"}"#.to_vec(), "application/json", 400, "invalid_request"),
        (
            Method::POST,
            "/v1/admin/connections".into(),
            br#"{"id":"x","kind":"api_key","api_key":{"header":"X"}}"#.to_vec(),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (Method::POST, "/v1/admin/connections".into(), vec![b' '; 70 * 1024], "application/json", 413, "payload_too_large"),
        (
            Method::PUT,
            "/v1/admin/connections/crm/credentials/user:alice".into(),
            br#"{"api_key":"k","apikey":"k"}"#.to_vec(),
            "application/json",
            400,
            "invalid_request",
        ),
        (
            Method::PUT,
            "/v1/admin/connections/crm/credentials/user:alice".into(),
            br#"{"access_token":"t"}"#.to_vec(),
            "application/json",
            400,
            "invalid_request",
        ),
        (
            Method::PUT,
            "/v1/admin/connections/crm/credentials/user:alice".into(),
            br#"{"api_key":""}"#.to_vec(),
            "application/json",
            400,
            "invalid_request",
        ),
        (
            Method::PUT,
            "/v1/admin/connections/crm/credentials/group:x".into(),
            br#"{"api_key":"k"}"#.to_vec(),
            "application/json",
            400,
            "invalid_request",
        ),
        (
            Method::PUT,
            "/v1/admin/connections/crm/credentials/user:a%20b".into(),
            br#"{"api_key":"k"}"#.to_vec(),
            "application/json",
            400,
            "invalid_request",
        ),
        (
            Method::PUT,
            format!("/v1/admin/connections/crm/credentials/user:{}", "a".repeat(5000)),
            br#"{"api_key":"k"}"#.to_vec(),
            "application/json",
            400,
            "invalid_request",
        ),
        (
            Method::PUT,
            "/v1/admin/connections/..%2Fx/credentials/user:alice".into(),
            br#"{"api_key":"k"}"#.to_vec(),
            "application/json",
            400,
            "invalid_request",
        ),
        (
            Method::PUT,
            "/v1/admin/connections/CRM/credentials/user:alice".into(),
            br#"{"api_key":"k"}"#.to_vec(),
            "application/json",
            400,
            "invalid_request",
        ),
        (
            Method::PUT,
            "/v1/admin/connections/nope/credentials/user:alice".into(),
            br#"{"api_key":"k"}"#.to_vec(),
            "application/json",
            404,
            "not_found",
        ),
        (
            Method::PUT,
            "/v1/admin/connections/crm/credentials/user:alice".into(),
            vec![b'{'; 70 * 1024],
            "application/json",
            413,
            "payload_too_large",
        ),
        (Method::PATCH, "/v1/admin/connections/crm".into(), br#"{"kind":"oauth2"}"#.to_vec(), "application/json", 400, "invalid_request"),
        (
            Method::PATCH,
            "/v1/admin/connections/crm".into(),
            br#"{"api_key":{"format":"no placeholder"}}"#.to_vec(),
            "application/json",
            400,
            "invalid_request",
        ),
        (Method::PATCH, "/v1/admin/connections/crm".into(), br#"[1]"#.to_vec(), "application/json", 400, "invalid_request"),
        (Method::GET, "/v1/admin/connections/crm/credentials?limit=0".into(), vec![], "application/json", 400, "invalid_request"),
        (Method::GET, "/v1/admin/connections/crm/credentials?bogus=1".into(), vec![], "application/json", 400, "invalid_request"),
        (Method::DELETE, "/v1/admin/connections/nope".into(), vec![], "application/json", 404, "not_found"),
        (Method::POST, "/v1/admin/connections/crm".into(), vec![], "application/json", 405, "method_not_allowed"),
        (Method::GET, "/v1/admin/nothing-here".into(), vec![], "application/json", 404, "not_found"),
    ];
    for (method, path, body, ctype, status, code) in cases {
        let shown = path.chars().take(80).collect::<String>();
        let r = send_raw(method.clone(), &path, body, ctype).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{method} {shown}");
        let v: Value = r.json().await.unwrap_or_else(|e| panic!("{method} {shown}: non-JSON error body: {e}"));
        assert_eq!(v["error"], code, "{method} {shown}: {v}");
        assert!(v["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
        assert!(v["request_id"].as_str().is_some_and(|d| d.len() == 16), "{v}");
    }
    // Nothing was stored or changed.
    assert_eq!(app.audit_count(), before_audit);
    let conns = app.vault.list_connections().unwrap();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].spec.api_key.as_ref().unwrap().format, "{key}");
    assert!(app.vault.list_credentials(&ConnectionId::parse("crm").unwrap(), None, 10).unwrap().is_empty());
}

#[tokio::test]
async fn oauth_connection_client_secret_is_write_only() {
    let app = TestApp::spawn().await;
    let body = json!({"id": "crm-oauth", "kind": "oauth2", "display_name": "CRM", "oauth2": {
        "authorization_endpoint": "https://crm.example/authorize", "token_endpoint": "https://crm.example/token",
        "revocation_endpoint": "https://crm.example/revoke", "client_id": "client-1", "client_secret": "cs-first-secret",
        "scopes": ["crm:read", "crm:write"], "token_endpoint_auth_method": "client_secret_post"},
        "scope_roles": {"crm:write": ["sales-admin"]}});
    let r = app.post_json("/v1/admin/connections", body.clone()).await;
    assert_eq!(r.status(), 201);
    let text = r.text().await.unwrap();
    assert!(!text.contains("cs-first-secret"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["client_secret_set"], true);
    assert_eq!(v["oauth2"]["pkce"], true);
    assert_eq!(v["scope_roles"]["crm:write"][0], "sales-admin");

    // Creating it again conflicts.
    assert_eq!(app.post_json("/v1/admin/connections", body).await.status(), 409);

    for path in ["/v1/admin/connections", "/v1/admin/connections/crm-oauth"] {
        let t = app.get(path).await.text().await.unwrap();
        assert!(!t.contains("cs-first-secret") && !t.contains("client_secret\":"), "{t}");
    }
    let id = ConnectionId::parse("crm-oauth").unwrap();
    assert_eq!(app.vault.client_secret(&id).unwrap().unwrap().expose(), "cs-first-secret");

    // PATCH: merge semantics, secret replaced under a new data key.
    let r = app
        .admin(Method::PATCH, "/v1/admin/connections/crm-oauth")
        .json(&json!({"display_name": "CRM 2", "oauth2": {"client_secret": "cs-second"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["display_name"], "CRM 2");
    assert_eq!(v["oauth2"]["client_id"], "client-1");
    assert_eq!(v["oauth2"]["token_endpoint_auth_method"], "client_secret_post");
    assert_eq!(app.vault.client_secret(&id).unwrap().unwrap().expose(), "cs-second");
    let status = app.vault.key_status().unwrap();
    assert_eq!(status.versions[0].deks, 5, "the old client-secret data key is deleted (the others: token-signing, row, audit keys)");
}

#[tokio::test]
async fn credentials_round_trip_metadata_only() {
    let app = TestApp::spawn().await;
    app.api_key_connection("reporting").await;
    let r = app.post_json("/v1/admin/connections", json!({"id": "mail", "kind": "oauth2", "oauth2": {"discovery_url": "https://idp.example/.well-known/openid-configuration", "client_id": "c"}})).await;
    assert_eq!(r.status(), 201);

    let r = app.put_json("/v1/admin/connections/reporting/credentials/tenant:acme", json!({"api_key": "rk-tenant-secret"})).await;
    assert_eq!(r.status(), 200);
    let r = app.put_json("/v1/admin/connections/reporting/credentials/user:auth0%7Cabc123", json!({"api_key": "rk-user-secret"})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["owner"], "user:auth0|abc123");
    assert_eq!(v["version"], 1);
    let r = app
        .put_json(
            "/v1/admin/connections/mail/credentials/user:alice@example.com",
            json!({"access_token": "at-1", "refresh_token": "rt-1", "expires_in": 3600, "scope": "mail.read mail.send"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["has_refresh_token"], true);
    assert_eq!(v["scopes"], json!(["mail.read", "mail.send"]));
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));

    // Replace: version bumps, still one row, secret replaced.
    let r = app.put_json("/v1/admin/connections/reporting/credentials/tenant:acme", json!({"api_key": "rk-tenant-secret-2"})).await;
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 2);

    let list = app.get("/v1/admin/connections/reporting/credentials").await.text().await.unwrap();
    for s in ["rk-tenant-secret", "rk-user-secret"] {
        assert!(!list.contains(s), "listing leaked a secret: {list}");
    }
    let v: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v["credentials"].as_array().unwrap().len(), 2);
    let one = app.get("/v1/admin/connections/mail/credentials/user:alice@example.com").await.text().await.unwrap();
    assert!(!one.contains("at-1") && !one.contains("rt-1"), "{one}");

    // The vault decrypts what was stored, for the right owner only.
    let conn = ConnectionId::parse("reporting").unwrap();
    let opened = app.vault.open_credential(&conn, &Owner::parse("tenant:acme").unwrap()).unwrap().unwrap();
    match opened.secret {
        latchkey::model::CredentialSecret::ApiKey(k) => {
            assert_eq!(k.expose(), "rk-tenant-secret-2")
        }
        other => panic!("{other:?}"),
    }
    assert!(app.vault.open_credential(&conn, &Owner::parse("tenant:other").unwrap()).unwrap().is_none());

    // Pagination.
    let page: Value = app.get("/v1/admin/connections/reporting/credentials?limit=1").await.json().await.unwrap();
    assert_eq!(page["credentials"].as_array().unwrap().len(), 1);
    let next = page["next_after"].as_str().unwrap().to_owned();
    let page2: Value = app.get(&format!("/v1/admin/connections/reporting/credentials?limit=1&after={next}")).await.json().await.unwrap();
    assert_ne!(page2["credentials"][0]["owner"], page["credentials"][0]["owner"]);

    // Delete credential, then the connection; cascade needed while credentials exist.
    let r = app.delete("/v1/admin/connections/reporting/credentials/tenant:acme").await;
    assert_eq!(r.status(), 204);
    let r = app.delete("/v1/admin/connections/reporting/credentials/tenant:acme").await;
    assert_eq!(r.status(), 404);
    let r = app.delete("/v1/admin/connections/reporting").await;
    assert_eq!(r.status(), 409);
    let r = app.delete("/v1/admin/connections/reporting?cascade=true").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["credentials_deleted"], 1);
    let status = app.vault.key_status().unwrap();
    assert_eq!(status.versions[0].deks, 5, "only the mail credential's data key remains (besides the token-signing, row and audit keys)");

    // Every change was audited, with the admin token as actor and no secret.
    let audit = app.vault.audit_tail(100).unwrap();
    let actions: Vec<&str> = audit.iter().map(|r| r.action.as_str()).collect();
    for a in ["connection.create", "credential.put", "credential.delete", "connection.delete"] {
        assert!(actions.contains(&a), "{actions:?}");
    }
    assert!(audit
        .iter()
        .filter(|r| !matches!(r.action.as_str(), "vault.init" | "admin_token.create" | "signing_key.create"))
        .all(|r| r.actor.starts_with("admin:")));
    assert!(app.vault.audit_verify().unwrap().is_ok());
}

#[tokio::test]
async fn openapi_documents_only_routes_that_exist() {
    let app = TestApp::spawn().await;
    let doc: Value = app.http.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 23, "{}", paths.len());
    let mut checked = 0;
    for (path, ops) in paths {
        let concrete = path.replace("{id}", "x").replace("{owner}", "user:x").replace("{session}", "x");
        for method in ops.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = app.http.request(m, app.url(&concrete)).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert!(status != 405 && !body.contains("no such route"), "{method} {path} is documented but not routed ({status})");
            checked += 1;
        }
    }
    assert!(checked >= 28, "{checked}");
}

/// What schemathesis found: each refused with a clear 400 (or a 405 that says what is
/// allowed), nothing stored, nothing echoed.
#[tokio::test]
async fn bodies_and_methods_the_document_does_not_allow_are_refused_cleanly() {
    let app = TestApp::spawn().await;
    // 405 says which methods the route has.
    let r = app.http.request(Method::from_bytes(b"TRACE").unwrap(), app.url("/healthz")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["allow"].to_str().unwrap()), (405, "GET"));
    let r = app.admin(Method::PATCH, "/v1/admin/agents").send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["allow"].to_str().unwrap()), (405, "POST, GET"));
    let r = app.http.delete(app.url("/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(expect(r, 405).await["error"], "method_not_allowed", "a JSON error, like every route");

    // A JSON array is not an object, even where serde would read the struct from it.
    let arrays = [
        ("/v1/admin/connections", json!(["arr-conn", "api_key", null, null, null, {"header": "X"}])),
        ("/v1/admin/agents", json!(["arr-agent", "Arr", [[]]])),
    ];
    for (path, body) in arrays {
        assert_eq!(expect(app.post_json(path, body).await, 400).await["error_description"], "the body must be a JSON object");
    }
    assert!(app.get("/v1/admin/connections/arr-conn").await.status() == 404);

    // Whole numbers written with a zero fraction are whole numbers.
    app.api_key_connection("k").await;
    let policy = json!({"grants": [{"connection": "k", "owners": "any", "max_ttl": 41.0}]});
    expect(app.post_json("/v1/admin/agents", json!({"id": "a", "name": "a", "policy": policy})).await, 201).await;
    assert_eq!(expect(app.get("/v1/admin/agents/a").await, 200).await["policy"]["grants"][0]["max_ttl"], 41);
    let oauth = json!({"id": "o", "kind": "oauth2", "oauth2": {"client_id": "c", "authorization_endpoint": "https://p.example/a",
        "token_endpoint": "https://p.example/t"}});
    expect(app.post_json("/v1/admin/connections", oauth).await, 201).await;
    let put = |body: Value| app.put_json("/v1/admin/connections/o/credentials/user:bob", body);
    expect(put(json!({"access_token": "at", "expires_in": 3600.0})).await, 200).await;
    assert_eq!(put(json!({"access_token": "at", "expires_in": 3600.5})).await.status(), 400);
    // Expiry times stay printable: nothing past 9999-12-31.
    for t in [253_402_300_800_i64, i64::MAX] {
        let r = put(json!({"access_token": "at", "expires_at": t})).await;
        assert_eq!(r.status(), 400, "{t}");
    }
    let v = expect(put(json!({"access_token": "at", "expires_at": 253_402_300_799_i64})).await, 200).await;
    assert_eq!(v["expires_at"], "9999-12-31T23:59:59Z");

    // URLs as they will be used: canonical, without credentials (which would be stored and
    // shown back).
    for bad in [" https://a.example/x", "https:a.example", "HTTPS://A.EXAMPLE/", "http://127.1/x", "https://user:hunter2@a.example/"] {
        let body = json!({"id": "d", "kind": "oauth2", "oauth2": {"client_id": "c", "discovery_url": bad}});
        let v = expect(app.post_json("/v1/admin/connections", body).await, 400).await;
        assert!(!v.to_string().contains("hunter2"), "{v}");
    }
    assert_eq!(app.get("/v1/admin/connections/d").await.status(), 404);
}
