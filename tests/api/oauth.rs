//! The OAuth lifecycle against a real provider: panva's oidc-provider (tests/provider,
//! installed by `npm ci --prefix tests/provider`) with PKCE required, rotating refresh
//! tokens (reuse revokes the grant), revocation and introspection.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{redirect, Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::TestApp;
use latchkey::model::{ConnectionId, CredentialSecret, Owner};

const CLIENT_ID: &str = "latchkey";
const CLIENT_SECRET: &str = "latchkey-test-secret";

/// The oidc-provider child process; killed on drop.
pub struct Provider {
    child: Child,
    pub url: String,
}

impl Provider {
    pub fn start(redirect_uri: &str, access_ttl: u32) -> Provider {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/provider");
        assert!(
            std::path::Path::new(dir).join("node_modules/oidc-provider").exists(),
            "the test OAuth provider is not installed: run `npm ci --prefix tests/provider`"
        );
        let clients = json!([{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"], "token_endpoint_auth_method": "client_secret_basic"}]);
        let mut child = Command::new("node")
            .arg(format!("{dir}/server.mjs"))
            .env("PORT", "0")
            .env("CLIENTS", clients.to_string())
            .env("ACCESS_TTL", access_ttl.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node tests/provider/server.mjs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("provider output");
        let url = line.trim().strip_prefix("LISTENING ").unwrap_or_else(|| panic!("unexpected provider output: {line}")).to_owned();
        Provider { child, url }
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/_test/stats", self.url)).await.unwrap().json().await.unwrap()
    }

    pub async fn forget(&self, account: &str) {
        let r = reqwest::Client::new().post(format!("{}/_test/forget/{account}", self.url)).send().await.unwrap();
        assert!(r.status().is_success());
    }

    /// RFC 7662 introspection with the test client's credentials.
    pub async fn introspect(&self, token: &str) -> Value {
        let r = reqwest::Client::new()
            .post(format!("{}/token/introspection", self.url))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser: follows redirects by hand with a cookie jar.
struct Browser {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new() -> Browser {
        Browser { http: reqwest::Client::builder().redirect(redirect::Policy::none()).build().unwrap(), cookies: BTreeMap::new() }
    }

    async fn get(&mut self, url: &str) -> reqwest::Response {
        let mut req = self.http.get(url);
        if !self.cookies.is_empty() {
            req = req.header(COOKIE, self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "));
        }
        let r = req.send().await.unwrap();
        for c in r.headers().get_all(SET_COOKIE) {
            if let Some((k, v)) = c.to_str().unwrap().split(';').next().and_then(|kv| kv.split_once('=')) {
                self.cookies.insert(k.trim().to_owned(), v.to_owned());
            }
        }
        r
    }

    /// Opens a connect link and follows the provider's redirects up to (not into) the
    /// callback; returns the callback URL.
    async fn login(&mut self, connect_url: &str, callback_prefix: &str, login_hint: &str) -> String {
        let r = self.get(connect_url).await;
        assert_eq!(r.status(), StatusCode::FOUND, "connect link");
        let mut next = location(&r, connect_url);
        assert!(next.contains("code_challenge_method=S256") && next.contains("state="), "{next}");
        next.push_str(&format!("&login_hint={login_hint}"));
        for _ in 0..10 {
            if next.starts_with(callback_prefix) {
                return next;
            }
            let r = self.get(&next).await;
            assert!(r.status().is_redirection(), "provider answered {} at {next}", r.status());
            next = location(&r, &next);
        }
        panic!("no redirect to the callback");
    }
}

fn location(r: &reqwest::Response, base: &str) -> String {
    let loc = r.headers()[LOCATION].to_str().unwrap();
    url::Url::parse(base).unwrap().join(loc).unwrap().to_string()
}

struct OAuthWorld {
    app: TestApp,
    provider: Provider,
    agent_token: String,
}

impl OAuthWorld {
    async fn new(access_ttl: u32) -> OAuthWorld {
        let app = TestApp::spawn().await;
        let provider = Provider::start(&format!("{}/v1/connect/callback", app.addr), access_ttl);
        let conn = json!({"id": "crm", "kind": "oauth2", "oauth2": {
            "discovery_url": format!("{}/.well-known/openid-configuration", provider.url),
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scopes": ["openid", "crm:read"],
            "return_to_allowlist": ["http://127.0.0.1:9/done"]}});
        assert_eq!(app.post_json("/v1/admin/connections", conn).await.status(), 201);
        let agent_token = app.service_agent_token("crm").await;
        OAuthWorld { app, provider, agent_token }
    }

    fn callback_prefix(&self) -> String {
        format!("{}/v1/connect/callback", self.app.addr)
    }

    async fn connect_url(&self, owner: &str, return_to: Option<&str>) -> String {
        let mut body = json!({"connection_id": "crm", "owner": owner});
        if let Some(r) = return_to {
            body["return_to"] = json!(r);
        }
        let r = self.app.post_json("/v1/connect/sessions", body).await;
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["connect_url"].as_str().unwrap().to_owned()
    }

    /// A complete connect flow for `account` as `owner`; returns the callback response.
    async fn connect(&self, owner: &str, account: &str) -> reqwest::Response {
        let url = self.connect_url(owner, None).await;
        let mut b = Browser::new();
        let cb = b.login(&url, &self.callback_prefix(), account).await;
        b.get(&cb).await
    }

    async fn release(&self, owner_id: &str, min_ttl: i64) -> reqwest::Response {
        self.app
            .http
            .get(self.app.url(&format!("/v1/connections/crm/token?user_id={owner_id}&min_ttl={min_ttl}")))
            .bearer_auth(&self.agent_token)
            .send()
            .await
            .unwrap()
    }

    fn credential(&self, owner: &str) -> Option<latchkey::vault::CredentialView> {
        self.app.vault.get_credential(&ConnectionId::parse("crm").unwrap(), &Owner::parse(owner).unwrap()).ok()
    }

    fn tokens(&self, owner: &str) -> (String, String) {
        let c = self.app.vault.open_credential(&ConnectionId::parse("crm").unwrap(), &Owner::parse(owner).unwrap()).unwrap().unwrap();
        match c.secret {
            CredentialSecret::OAuth2 { access_token, refresh_token, .. } => {
                (access_token.expose().to_owned(), refresh_token.unwrap().expose().to_owned())
            }
            other => panic!("{other:?}"),
        }
    }
}

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
    // Connect sessions need an admin token or a covering agent token.
    let r =
        w.app.http.post(w.app.url("/v1/connect/sessions")).json(&json!({"connection_id": "crm", "owner": "user:x"})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = w
        .app
        .http
        .post(w.app.url("/v1/connect/sessions"))
        .bearer_auth(&w.agent_token)
        .json(&json!({"connection_id": "crm", "owner": "user:dave"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "the agent's policy covers crm for any owner");
}

#[tokio::test]
async fn concurrent_releases_of_an_expiring_token_cause_exactly_one_refresh() {
    // 30 s access tokens; asking for 29 s of validity after a few seconds forces a refresh.
    let w = OAuthWorld::new(30).await;
    assert_eq!(w.connect("user:alice", "alice").await.status(), 200);
    let (_, old_refresh) = w.tokens("user:alice");
    reqwest::Client::new().post(format!("{}/_test/reset", w.provider.url)).send().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
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
    assert_eq!(w.credential("user:alice").unwrap().status, "active");
    let metrics = w.app.http.get(w.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("latchkey_refresh_total{connection=\"crm\",outcome=\"ok\"} 1"), "{metrics}");
    assert!(metrics.contains("latchkey_credentials{status=\"active\"} 1"), "{metrics}");
    assert!(metrics.contains("latchkey_releases_total{decision=\"allow\"} 40"), "{metrics}");
}

#[tokio::test]
async fn background_refresh_renews_before_expiry_without_a_release() {
    // 8 s tokens: refreshed min(300, 4) s (less jitter) before expiry.
    let w = OAuthWorld::new(8).await;
    assert_eq!(w.connect("user:alice", "alice").await.status(), 200);
    let (access0, _) = w.tokens("user:alice");
    let before = w.credential("user:alice").unwrap();
    assert!(before.last_refresh_at.is_none());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(12);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let c = w.credential("user:alice").unwrap();
        if c.last_refresh_at.is_some() {
            assert!(c.version > before.version);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no background refresh within 12 s");
    }
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
    let r = w.release("bob", 3600).await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "reauth_required");
    assert!(v["error_description"].as_str().unwrap().contains("/v1/connect/sessions"), "says how to get a new link");
    let c = w.credential("user:bob").unwrap();
    assert_eq!(c.status, "needs_reauth");
    assert!(c.last_error.unwrap().contains("invalid_grant"));
    let refreshes = w.provider.stats().await["refresh_failed"].as_u64().unwrap();
    // No further retries: another release does not call the provider again.
    assert_eq!(w.release("bob", 3600).await.status(), 409);
    assert_eq!(w.provider.stats().await["refresh_failed"].as_u64().unwrap(), refreshes);
    let audit = w.app.vault.audit_tail(1000).unwrap();
    assert!(audit.iter().any(|r| r.action == "credential.needs_reauth"));
    // Reconnecting restores the credential.
    assert_eq!(w.connect("user:bob", "bob").await.status(), 200);
    assert_eq!(w.credential("user:bob").unwrap().status, "active");
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

/// A TCP proxy to the provider that holds each request for `delay` and forwards it only
/// if the client is still connected — so a client killed meanwhile never reaches the
/// provider (as when a process dies before its request leaves the machine).
fn holding_proxy(upstream: &str, delay: std::time::Duration) -> String {
    use std::io::{Read, Write};
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut buf = [0u8; 16384];
                // Read headers and the declared body.
                loop {
                    let Ok(n) = client.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let until = std::time::Instant::now() + delay;
                client.set_nonblocking(true).unwrap();
                while std::time::Instant::now() < until {
                    let mut probe = [0u8; 1];
                    if let Ok(0) = client.peek(&mut probe) {
                        return; // the client went away: never forward
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                client.set_nonblocking(false).unwrap();
                let text =
                    String::from_utf8_lossy(&req).replace("\r\nhost: ", "\r\nx-orig-host: ").replace("\r\nHost: ", "\r\nX-Orig-Host: ");
                let req = text.replacen("\r\n", &format!("\r\nHost: {upstream}\r\n"), 1);
                let Ok(mut up) = std::net::TcpStream::connect(&upstream) else { return };
                let _ = up.write_all(req.as_bytes());
                let mut resp = Vec::new();
                let _ = up.read_to_end(&mut resp);
                let _ = client.write_all(&resp);
            });
        }
    });
    addr
}

#[tokio::test]
async fn killing_the_server_during_a_refresh_loses_nothing() {
    use crate::helpers::{Dirs, ServerProcess};
    let dirs = Dirs::new();
    let tok = dirs.root.path().join("admin");
    let out = dirs.run(&["init", "--no-passphrase", "--admin-token-file", tok.to_str().unwrap()]);
    assert!(out.status.success());
    let admin = std::fs::read_to_string(&tok).unwrap().trim().to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let env = [("LATCHKEY_PUBLIC_URL", base.as_str())];
    let bind = format!("127.0.0.1:{port}");
    let start = |dirs: &Dirs| {
        let mut cmd_env = env.to_vec();
        cmd_env.push(("LATCHKEY_BIND", bind.as_str()));
        ServerProcess::start_bound(dirs, &cmd_env)
    };
    let mut server = start(&dirs);
    let provider = Provider::start(&format!("{base}/v1/connect/callback"), 30);
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
    let url = r.json::<Value>().await.unwrap()["connect_url"].as_str().unwrap().to_owned();
    let mut b = Browser::new();
    let cb = b.login(&url, &format!("{base}/v1/connect/callback"), "alice").await;
    assert_eq!(b.get(&cb).await.status(), 200, "connected through the real binary");
    reqwest::Client::new().post(format!("{}/_test/reset", provider.url)).send().await.unwrap();

    let agent_token = || async {
        let t: Value = http
            .post(format!("{base}/oauth2/token"))
            .basic_auth("svc", Some(&secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        t["access_token"].as_str().unwrap().to_owned()
    };
    let token = agent_token().await;
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
    let _server = start(&dirs);
    let token = agent_token().await;
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
