//! Abuse limits: failed client authentications per source address, aggregated failure
//! audit, slow bodies, and authentication before reading a body.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

/// An agent with a known secret; returns the secret.
async fn agent(app: &TestApp, id: &str) -> String {
    let r = app.post_json("/v1/admin/agents", json!({"id": id, "name": id, "policy": {"grants": []}})).await;
    expect(r, 201).await["client_secret"].as_str().expect("secret").to_owned()
}

async fn token_request(app: &TestApp, client: &str, secret: &str, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut r = app.http.post(app.url("/oauth2/token")).basic_auth(client, Some(secret)).form(&[("grant_type", "client_credentials")]);
    if let Some(xff) = forwarded_for {
        r = r.header("x-forwarded-for", xff);
    }
    r.send().await.expect("token request")
}

fn failure_records(app: &TestApp) -> Vec<Value> {
    app.vault
        .audit_tail(10_000)
        .expect("audit")
        .iter()
        .filter(|r| r.action == "token.issue" && r.outcome == "denied")
        .map(|r| r.to_json())
        .collect()
}

#[tokio::test]
async fn failed_authentications_are_limited_per_address_and_audited_in_aggregate() {
    let app = TestApp::spawn().await;
    let secret = agent(&app, "victim").await;
    for i in 0..20 {
        let r = token_request(&app, "victim", "wrong", None).await;
        assert_eq!(r.status(), 401, "attempt {i}");
    }
    // Past the limit the address is refused before any work, with a hint when to retry...
    let r = token_request(&app, "victim", "wrong", None).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(expect(r, 429).await["error"], "too_many_requests");
    // ...even with the right secret: the limit is the address's, not the client's.
    assert_eq!(token_request(&app, "victim", &secret, None).await.status(), 429);

    // Twenty failures made one audit record so far; the rest are counted.
    assert_eq!(failure_records(&app).len(), 1);
    app.clock.advance(61);
    app.services.flush_failure_audit().await.expect("flush");
    let records = failure_records(&app);
    assert_eq!(records.len(), 2, "{records:?}");
    let reason = records[1]["detail"]["reason"].as_str().expect("reason");
    assert!(reason.contains("19 more time(s)"), "{reason}");
    // Nothing is written twice.
    app.services.flush_failure_audit().await.expect("flush");
    assert_eq!(failure_records(&app).len(), 2);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_limit_follows_the_forwarded_address_not_the_client_id() {
    let trusted = vec![latchkey::config::Cidr::parse("127.0.0.1/32").expect("cidr")];
    let app = TestApp::spawn_configured(None, |o| o.trusted_proxies = trusted).await;
    let secret = agent(&app, "victim").await;
    for _ in 0..20 {
        assert_eq!(token_request(&app, "victim", "wrong", Some("198.51.100.7")).await.status(), 401);
    }
    assert_eq!(token_request(&app, "victim", "wrong", Some("198.51.100.7")).await.status(), 429);
    // The attacker cannot escape by adding hops of their own in front.
    assert_eq!(token_request(&app, "victim", "wrong", Some("1.2.3.4, 198.51.100.7")).await.status(), 429);
    // Nobody can lock an agent out by naming it: its own address still gets tokens.
    assert_eq!(token_request(&app, "victim", &secret, Some("192.0.2.1")).await.status(), 200);
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = TestApp::spawn().await;
    agent(&app, "victim").await;
    for i in 0..20 {
        // A fresh forged address each time does not buy fresh attempts.
        let forged = format!("198.51.100.{i}");
        assert_eq!(token_request(&app, "victim", "wrong", Some(&forged)).await.status(), 401);
    }
    assert_eq!(token_request(&app, "victim", "wrong", Some("203.0.113.1")).await.status(), 429);
}

/// Sends `head` and then `body` over a raw connection, and reads whatever the server answers
/// within `within`. Returns the status code and how long the answer took.
fn raw_exchange(addr: &str, head: &str, body: &[u8], within: Duration) -> (u16, Duration) {
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(addr.trim_start_matches("http://")).expect("connect");
    s.set_read_timeout(Some(within)).expect("timeout");
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(body).expect("body");
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).expect("the server answered in time");
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    (status, started.elapsed())
}

#[tokio::test]
async fn a_body_that_never_finishes_is_cut_off() {
    let app = TestApp::spawn_configured(None, |o| o.limits.request_timeout = Duration::from_secs(1)).await;
    let (addr, token) = (app.addr.clone(), app.token.clone());
    // Ten of a promised hundred bytes, then nothing.
    let head = format!(
        "POST /v1/admin/connections HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    let (status, took) =
        tokio::task::spawn_blocking(move || raw_exchange(&addr, &head, b"{\"id\": \"sl", Duration::from_secs(10))).await.expect("join");
    assert_eq!(status, 408);
    assert!(took < Duration::from_secs(8), "took {took:?}");
    // Nothing was created.
    assert_eq!(expect(app.get("/v1/admin/connections").await, 200).await["connections"].as_array().map(Vec::len), Some(0));
    // The token endpoint's form body too.
    let addr = app.addr.clone();
    let head = "POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n";
    let (status, _) =
        tokio::task::spawn_blocking(move || raw_exchange(&addr, head, b"grant_type=", Duration::from_secs(10))).await.expect("join");
    assert_eq!(status, 408);
}

#[tokio::test]
async fn a_request_head_that_never_finishes_is_cut_off() {
    let app = TestApp::spawn_configured(None, |o| o.limits.request_timeout = Duration::from_secs(1)).await;
    let addr = app.addr.clone();
    let (status, _) =
        tokio::task::spawn_blocking(move || raw_exchange(&addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n", b"", Duration::from_secs(10)))
            .await
            .expect("join");
    assert_eq!(status, 408);
}

#[tokio::test]
async fn connect_sessions_authenticate_before_reading_the_body() {
    let app = TestApp::spawn().await;
    let addr = app.addr.clone();
    // A promised body that never comes: a bad token is refused at once, not after the
    // body deadline (10 s by default), and not as a JSON error.
    let head = "POST /v1/connect/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer lk_at_forged\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n";
    let (status, _) = tokio::task::spawn_blocking(move || raw_exchange(&addr, head, b"{", Duration::from_secs(5))).await.expect("join");
    assert_eq!(status, 401);
    // Malformed JSON with a forged token: still 401, never a parse error.
    let r = app
        .http
        .post(app.url("/v1/connect/sessions"))
        .bearer_auth("forged")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 401);
    // An admin's malformed body is a 400 that names no input.
    let r = app
        .admin(reqwest::Method::POST, "/v1/connect/sessions")
        .header("content-type", "application/json")
        .body(r#"{"connection_id": "x", "owner": "sk-live-abcdef", "return_to": null}"#)
        .send()
        .await
        .expect("request");
    let body = expect(r, 400).await;
    assert!(!body.to_string().contains("sk-live"), "{body}");
}

#[tokio::test]
async fn metrics_can_require_a_token_or_move_to_their_own_address() {
    // Default: open on the main listener (counts only, no identifiers).
    let app = TestApp::spawn().await;
    let r = app.http.get(app.url("/metrics")).send().await.expect("metrics");
    assert_eq!(r.status(), 200);

    let token = "metrics-token-0123456789";
    let app = TestApp::spawn_configured(None, |o| o.metrics_token = Some(latchkey::secret::Secret::new(token.to_owned()))).await;
    assert_eq!(app.http.get(app.url("/metrics")).send().await.expect("metrics").status(), 401);
    assert_eq!(app.http.get(app.url("/metrics")).bearer_auth("metrics-token-0123456780").send().await.expect("metrics").status(), 401);
    // The admin token is not the metrics token.
    assert_eq!(app.get("/metrics").await.status(), 401);
    let r = app.http.get(app.url("/metrics")).bearer_auth(token).send().await.expect("metrics");
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("text").contains("latchkey_"));

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let metrics_addr = format!("http://{}", listener.local_addr().expect("addr"));
    let app = TestApp::spawn_configured(None, |o| o.metrics_listener = Some(std::sync::Arc::new(listener))).await;
    assert_eq!(app.http.get(app.url("/metrics")).send().await.expect("metrics").status(), 404);
    let r = app.http.get(format!("{metrics_addr}/metrics")).send().await.expect("metrics");
    assert_eq!(r.status(), 200);
    // Nothing else is served there.
    assert_eq!(app.http.get(format!("{metrics_addr}/v1/admin/agents")).send().await.expect("agents").status(), 404);
}
