//! Proxy mode end to end: a real upstream API (helpers/upstream.rs) and the real OAuth
//! provider's userinfo endpoint behind `/v1/proxy/…`, with the refusals an attacker tries
//! first: a release on a proxy-only grant, private and metadata addresses, path escapes,
//! redirects carrying the key, oversized and slow upstreams, and the secret coming back.

use std::fs;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::provider::OAuthWorld;
use crate::helpers::upstream::{self, pattern, raw_status};
use crate::helpers::{contains, expect, register_agent, stderr, Dirs, ServerProcess, TestApp};

const KEY: &str = "sk-CANARY-proxy-key-7731";

/// An API-key connection `id` proxied to `base_url`, with alice's key stored.
async fn api_key_connection(app: &TestApp, id: &str, proxy: Value) {
    let r = app
        .post_json("/v1/admin/connections", json!({"id": id, "kind": "api_key", "api_key": {"header": "X-API-Key"}, "proxy": proxy}))
        .await;
    expect(r, 201).await;
    let r = app.put_json(&format!("/v1/admin/connections/{id}/credentials/user:alice"), json!({"api_key": KEY})).await;
    expect(r, 200).await;
}

/// The newest audit records, once the outcome records nobody waits for are committed.
async fn audit(app: &TestApp, n: usize) -> Vec<latchkey::audit::Record> {
    app.vault.flush_audit().await.unwrap();
    app.vault.audit_tail(n).unwrap()
}

fn call(app: &TestApp, token: &str, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    app.http.request(method, app.url(path)).bearer_auth(token).header("x-latchkey-user", "alice")
}

async fn error_code(r: reqwest::Response, status: u16) -> String {
    expect(r, status).await["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_proxy_only_grant_calls_an_api_key_api_without_ever_seeing_the_key() {
    let app = TestApp::spawn().await;
    let up = upstream::start(("x-api-key", KEY.to_owned())).await;
    api_key_connection(&app, "k", json!({"base_url": format!("{}/api", up.url), "allow_private": true})).await;
    let token = app.agent_token("tool", json!([{"connection": "k", "owners": "any", "modes": ["proxy"]}])).await;

    // Method, path and query pass through untouched; the key is injected.
    let r = call(&app, &token, reqwest::Method::GET, "/v1/proxy/k/whoami?x=1&y=%20z")
        .header("cookie", "agent=1")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    let body = expect(r, 200).await;
    assert_eq!(body["target"], "/api/whoami?x=1&y=%20z");
    let seen = up.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!((seen.method.as_str(), seen.target.as_str()), ("GET", "/api/whoami?x=1&y=%20z"));
    assert_eq!(seen.header("x-api-key"), Some(KEY));
    assert_eq!(seen.header("x-custom"), Some("kept"));
    for stripped in ["authorization", "x-latchkey-user", "cookie", "x-forwarded-for"] {
        assert_eq!(seen.header(stripped), None, "{stripped} must not reach the upstream");
    }
    // Paths real APIs use, with '@' and ':'.
    for (path, target) in
        [("users/a@x.com", "/api/users/a@x.com"), ("@scope/pkg", "/api/@scope/pkg"), ("v1/items:batchGet", "/api/v1/items:batchGet")]
    {
        let r = call(&app, &token, reqwest::Method::GET, &format!("/v1/proxy/k/{path}")).send().await.unwrap();
        assert_eq!(expect(r, 200).await["target"], target);
    }
    // A body passes through.
    let r = call(&app, &token, reqwest::Method::POST, "/v1/proxy/k/upload").json(&json!({"hello": "world"})).send().await.unwrap();
    assert_eq!(expect(r, 200).await["bytes"], 17);

    // The same agent may not have the key itself.
    let r = app.http.get(app.url("/v1/connections/k/token?user_id=alice")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(error_code(r, 403).await, "access_denied");
    // Another owner without a credential, no owner, a forged token.
    let r = app.http.get(app.url("/v1/proxy/k/whoami")).bearer_auth(&token).header("x-latchkey-user", "bob").send().await.unwrap();
    assert_eq!(error_code(r, 404).await, "not_connected");
    let r = app.http.get(app.url("/v1/proxy/k/whoami")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(error_code(r, 400).await, "invalid_request");
    let r = app
        .http
        .get(app.url("/v1/proxy/k/whoami"))
        .bearer_auth(format!("{token}x"))
        .header("x-latchkey-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, 401).await, "invalid_token");
    // A release-only grant does not allow proxy mode.
    let releaser = app.agent_token("releaser", json!([{"connection": "k", "owners": "any"}])).await;
    let r = call(&app, &releaser, reqwest::Method::GET, "/v1/proxy/k/whoami").send().await.unwrap();
    assert_eq!(error_code(r, 403).await, "access_denied");

    // Audited: the decision, then the outcome; never the query string or a header.
    let audit = audit(&app, 200).await;
    let decided: Vec<_> = audit.iter().filter(|r| r.action == "proxy.request").collect();
    let outcomes: Vec<_> = audit.iter().filter(|r| r.action == "proxy.response").collect();
    assert!(decided.iter().any(|r| r.outcome == "ok"
        && r.detail.contains("\"method\":\"GET\"")
        && r.detail.contains("\"host\":\"127.0.0.1\"")
        && r.detail.contains("\"path\":\"/api/whoami\"")));
    assert!(decided.iter().any(|r| r.outcome == "denied" && r.detail.contains("does not allow proxy mode")));
    assert!(outcomes.iter().any(|r| r.detail.contains("\"status\":200") && r.detail.contains("\"bytes_sent\":17")));
    for r in &audit {
        assert!(!r.detail.contains("y=%20z") && !r.detail.contains("x-custom") && !r.detail.contains(KEY), "{}", r.detail);
    }
    let metrics = app.services.metrics_text().await.unwrap();
    assert!(metrics.contains("latchkey_proxy_requests_total{connection=\"k\",status=\"2xx\"} 5"), "{metrics}");
    assert!(metrics.contains("latchkey_proxy_upstream_duration_seconds_count{connection=\"k\"} 5"), "{metrics}");
}

#[tokio::test]
async fn large_bodies_stream_both_ways_within_the_limits() {
    let app = TestApp::spawn().await;
    let up = upstream::start(("x-api-key", KEY.to_owned())).await;
    let limit = 48 * 1024 * 1024;
    api_key_connection(&app, "k", json!({"base_url": format!("{}/api", up.url), "allow_private": true, "max_body": limit})).await;
    let token = app.agent_token("tool", json!([{"connection": "k", "owners": "any", "modes": ["proxy"]}])).await;

    // 40 MiB up, sent chunked as it is produced, and hashed by the upstream.
    let size = 40 * 1024 * 1024u64;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = pattern(size).chunks(256 * 1024).map(|c| Ok(c.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures_util_stream(chunks));
    let r = call(&app, &token, reqwest::Method::PUT, "/v1/proxy/k/upload").body(body).send().await.unwrap();
    let got = expect(r, 200).await;
    assert_eq!(got["bytes"], size);
    use sha2::Digest;
    let want: String = sha2::Sha256::digest(pattern(size)).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got["sha256"], want);

    // 40 MiB down, read as it streams.
    let mut r = call(&app, &token, reqwest::Method::GET, &format!("/v1/proxy/k/download?n={size}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut received = Vec::with_capacity(size as usize);
    while let Some(chunk) = r.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    assert!(received == pattern(size), "the downloaded body differs");

    // Over the limit: a declared length is refused before anything is sent; a chunked body
    // is cut off at the limit; an upstream's oversized answer is not relayed.
    let before = up.seen.lock().unwrap().len();
    let r = call(&app, &token, reqwest::Method::POST, "/v1/proxy/k/upload").body(vec![0u8; limit as usize + 1]).send().await.unwrap();
    assert_eq!(error_code(r, 413).await, "payload_too_large");
    assert_eq!(up.seen.lock().unwrap().len(), before, "nothing was forwarded");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..50).map(|_| Ok(vec![1u8; 1024 * 1024])).collect();
    let r = call(&app, &token, reqwest::Method::POST, "/v1/proxy/k/upload")
        .body(reqwest::Body::wrap_stream(futures_util_stream(chunks)))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(error_code(r, 413).await, "payload_too_large");
    }
    let r = call(&app, &token, reqwest::Method::GET, &format!("/v1/proxy/k/big?n={}", limit + 1)).send().await.unwrap();
    assert_eq!(error_code(r, 502).await, "upstream_too_large");
    let outcomes = audit(&app, 50).await;
    assert!(outcomes.iter().any(|r| r.action == "proxy.response" && r.detail.contains("request body larger than max_body")));
    assert!(outcomes.iter().any(|r| r.action == "proxy.response" && r.detail.contains(&format!("\"bytes_received\":{size}"))));
}

/// A stream of ready items (what `futures::stream::iter` would give).
fn futures_util_stream(
    items: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + Sync + 'static {
    struct Iter(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>);
    impl futures_core::Stream for Iter {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

#[tokio::test]
async fn private_and_metadata_addresses_path_escapes_and_redirects_are_refused() {
    let app = TestApp::spawn().await;
    let up = upstream::start(("x-api-key", KEY.to_owned())).await;
    let port = up.url.rsplit(':').next().unwrap().to_owned();
    let refused = [
        ("meta", "https://169.254.169.254/latest".to_owned()),
        ("metav6", "https://[fd00:ec2::254]".to_owned()),
        ("mapped", "https://[::ffff:7f00:1]".to_owned()),
        ("nat64", "https://[64:ff9b::a9fe:a9fe]".to_owned()),
        ("zero", "https://0.0.0.0".to_owned()),
        ("shared", "https://100.100.100.200".to_owned()),
        ("private", "https://10.0.0.1/api".to_owned()),
        ("loopback", format!("http://127.0.0.1:{port}/api")),
        // A name: refused when it resolves, before any connection is made.
        ("byname", format!("http://localhost:{port}/api")),
    ];
    let mut grants = vec![json!({"connection": "k", "owners": "any", "modes": ["proxy"]})];
    for (id, base) in &refused {
        api_key_connection(&app, id, json!({"base_url": base})).await;
        grants.push(json!({"connection": id, "owners": "any", "modes": ["proxy"]}));
    }
    api_key_connection(&app, "k", json!({"base_url": format!("{}/api", up.url), "allow_private": true})).await;
    let token = app.agent_token("tool", json!(grants)).await;
    for (id, _) in &refused {
        let r = call(&app, &token, reqwest::Method::GET, &format!("/v1/proxy/{id}/whoami")).send().await.unwrap();
        assert_eq!(error_code(r, 502).await, "egress_denied", "{id}");
    }
    assert!(up.seen.lock().unwrap().is_empty(), "no refused call reached the upstream");
    // Plain http to anything but loopback is refused when the connection is made.
    let r = app
        .post_json(
            "/v1/admin/connections",
            json!({"id": "plain", "kind": "api_key", "api_key": {"header": "X"}, "proxy": {"base_url": "http://api.example.com"}}),
        )
        .await;
    assert_eq!(r.status(), 400);

    // Path escapes, sent raw (an HTTP client would normalise them away first).
    let addr = app.addr.clone();
    let escapes = [
        "/v1/proxy/k/../x",
        "/v1/proxy/k/a/%2e%2e/x",
        "/v1/proxy/k/%2E./x",
        "/v1/proxy/k/a%2fb",
        "/v1/proxy/k/a%5cb",
        "/v1/proxy/k/%252e%252e/x",
        "/v1/proxy/k//x",
        "/v1/proxy/k/a/./b",
    ];
    let t = token.clone();
    let statuses = tokio::task::spawn_blocking(move || escapes.map(|p| (p, raw_status(&addr, "GET", p, &t)))).await.unwrap();
    for (p, status) in statuses {
        assert_eq!(status, 400, "{p}");
    }
    assert!(up.seen.lock().unwrap().is_empty(), "no escape reached the upstream");
    let audit = audit(&app, 100).await;
    assert!(audit.iter().any(|r| r.action == "proxy.request" && r.outcome == "denied" && r.detail.contains("could escape")));

    // Redirects are returned, not followed; one that carries the key loses its Location.
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_redirects.get(app.url("/v1/proxy/k/moved")).bearer_auth(&token).header("x-latchkey-user", "alice").send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/api/whoami");
    let r = no_redirects.get(app.url("/v1/proxy/k/redirect")).bearer_auth(&token).header("x-latchkey-user", "alice").send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert!(r.headers().get("location").is_none(), "a Location carrying the key is dropped");
    assert_eq!(up.seen.lock().unwrap().len(), 2, "no redirect was followed");

    // Methods and paths outside the connection's lists.
    api_key_connection(
        &app,
        "narrow",
        json!({"base_url": format!("{}/api", up.url), "allow_private": true,
        "allowed_methods": ["GET"], "allowed_paths": ["/whoami", "/calendars/*/events"]}),
    )
    .await;
    let token = app.agent_token("narrow-tool", json!([{"connection": "narrow", "owners": "any", "modes": ["proxy"]}])).await;
    let r = call(&app, &token, reqwest::Method::GET, "/v1/proxy/narrow/calendars/primary/events").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = call(&app, &token, reqwest::Method::POST, "/v1/proxy/narrow/whoami").send().await.unwrap();
    assert_eq!(error_code(r, 405).await, "method_not_allowed");
    let r = call(&app, &token, reqwest::Method::GET, "/v1/proxy/narrow/keys/new").send().await.unwrap();
    assert_eq!(error_code(r, 403).await, "path_not_allowed");
}

#[tokio::test]
async fn a_slow_upstream_gets_a_gateway_timeout() {
    let app = TestApp::spawn().await;
    let up = upstream::start(("x-api-key", KEY.to_owned())).await;
    api_key_connection(&app, "k", json!({"base_url": format!("{}/api", up.url), "allow_private": true, "timeout": 1})).await;
    let token = app.agent_token("tool", json!([{"connection": "k", "owners": "any", "modes": ["proxy"]}])).await;
    let r = call(&app, &token, reqwest::Method::GET, "/v1/proxy/k/slow?s=4").send().await.unwrap();
    assert_eq!(error_code(r, 504).await, "upstream_timeout");
    let r = call(&app, &token, reqwest::Method::GET, "/v1/proxy/k/whoami").send().await.unwrap();
    assert_eq!(r.status(), 200, "the next call is unaffected");
    let audit = audit(&app, 10).await;
    assert!(audit.iter().any(|r| r.action == "proxy.response" && r.outcome == "failed" && r.detail.contains("upstream timed out")));
}

#[tokio::test]
async fn an_oauth_api_through_the_proxy_with_one_refresh_and_retry_after_a_401() {
    let w = OAuthWorld::new(3600).await;
    let app = &w.app;
    let r = app
        .admin(reqwest::Method::PATCH, "/v1/admin/connections/crm")
        .json(&json!({"proxy": {"base_url": w.provider.url, "allow_private": true}}))
        .send()
        .await
        .unwrap();
    expect(r, 200).await;
    assert_eq!(w.connect("user:alice", "alice").await.status(), 200);
    let token = app.agent_token("tool", json!([{"connection": "crm", "owners": "any", "modes": ["proxy"]}])).await;
    let me = || call(app, &token, reqwest::Method::GET, "/v1/proxy/crm/me").send();

    // The provider's userinfo endpoint, called with alice's token that the agent never sees.
    let body = expect(me().await.unwrap(), 200).await;
    assert_eq!(body["sub"], "alice");
    // The agent of the world (a release-only grant) cannot use proxy mode.
    let r = call(app, &w.agent_token, reqwest::Method::GET, "/v1/proxy/crm/me").send().await.unwrap();
    assert_eq!(r.status(), 403);

    // The provider stops honouring the stored access token before it expires: one refresh,
    // one retry, and the agent sees only the success.
    let (access, _) = w.tokens("user:alice");
    revoke(&w, &access).await;
    let before = w.provider.stats().await["refresh"].as_u64().unwrap();
    let body = expect(me().await.unwrap(), 200).await;
    assert_eq!(body["sub"], "alice");
    assert_eq!(w.provider.stats().await["refresh"].as_u64().unwrap(), before + 1, "exactly one refresh");
    let (renewed, _) = w.tokens("user:alice");
    assert_ne!(renewed, access);

    // Again within the cooldown: no second refresh; the 401 reaches the agent, and the
    // credential stays active (an upstream's answer never changes its status).
    revoke(&w, &renewed).await;
    let r = me().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_none());
    assert_eq!(w.provider.stats().await["refresh"].as_u64().unwrap(), before + 1);
    assert_eq!(w.credential("user:alice").unwrap().status.to_string(), "active");
    let audit = audit(app, 50).await;
    assert!(audit.iter().any(|r| r.action == "proxy.response" && r.detail.contains("\"status\":401")));
    assert!(audit.iter().any(|r| r.action == "proxy.response" && r.detail.contains("refreshed and retried")));
}

/// The provider stops honouring one access token (its grant and refresh token stay).
async fn revoke(w: &OAuthWorld, token: &str) {
    let r = reqwest::Client::new().post(format!("{}/_test/drop-access-token/{token}", w.provider.url)).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["dropped"], true);
    assert_eq!(w.provider.introspect(token).await["active"], false);
}

/// The key never comes back: not in a response (headers or body), not in the server's
/// debug log, not in the audit trail, even from an upstream that echoes it or redirects
/// with it in the URL.
#[test]
fn proxied_secrets_never_reach_responses_logs_or_audit() {
    let dirs = Dirs::new();
    let tok = dirs.root.path().join("tok");
    let out = dirs.run(&["init", "--no-passphrase", "--admin-token-file", tok.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let admin = fs::read_to_string(&tok).unwrap().trim().to_owned();
    let mut server = ServerProcess::start(&dirs, &[("LATCHKEY_LOG", "debug")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut seen = Vec::new();
    rt.block_on(async {
        let up = upstream::start(("authorization", format!("Bearer {KEY}"))).await;
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let url = |p: &str| format!("{}{p}", server.addr);
        let conn = json!({"id": "k", "kind": "api_key", "api_key": {"header": "Authorization", "format": "Bearer {key}"},
            "proxy": {"base_url": format!("{}/api", up.url), "allow_private": true, "timeout": 1}});
        assert_eq!(http.post(url("/v1/admin/connections")).bearer_auth(&admin).json(&conn).send().await.unwrap().status(), 201);
        let r = http
            .put(url("/v1/admin/connections/k/credentials/user:alice"))
            .bearer_auth(&admin)
            .json(&json!({"api_key": KEY}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let grants = json!([{"connection": "k", "owners": "any", "modes": ["proxy"]}]);
        let token = register_agent(&http, &server.addr, &admin, "tool", grants).await;
        for (method, path) in
            [("GET", "whoami"), ("GET", "echo"), ("GET", "redirect"), ("POST", "upload"), ("GET", "slow?s=3"), ("GET", "../x")]
        {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let r = http
                .request(m, url(&format!("/v1/proxy/k/{path}")))
                .bearer_auth(&token)
                .header("x-latchkey-user", "alice")
                .body("payload")
                .send()
                .await
                .unwrap();
            assert_ne!(r.status(), StatusCode::INTERNAL_SERVER_ERROR, "{path}");
            for (n, v) in r.headers() {
                seen.extend_from_slice(n.as_str().as_bytes());
                seen.extend_from_slice(v.as_bytes());
            }
            if path == "echo" {
                assert_eq!(r.headers()["x-kept"], "yes");
                assert!(r.headers().get("x-echo-credential").is_none() && r.headers().get("set-cookie").is_none());
            }
            seen.extend_from_slice(&r.bytes().await.unwrap());
        }
        // The upstream did receive the key (so its absence everywhere else means something).
        assert!(up.seen.lock().unwrap().iter().any(|s| s.header("authorization") == Some(&format!("Bearer {KEY}"))));
    });
    assert!(server.terminate().success());
    let log = server.log_text();
    assert!(log.contains("/v1/proxy/k/"), "proxied requests are logged");
    let audit = dirs.sql().text("SELECT string_agg(actor || action || target || outcome || detail, '|') FROM audit");
    assert!(audit.contains("proxy.response"));
    for (name, bytes) in [("responses", &seen), ("server log", &log.into_bytes()), ("audit", &audit.into_bytes())] {
        assert!(!contains(bytes, KEY.as_bytes()), "the key found in {name}");
    }
}
