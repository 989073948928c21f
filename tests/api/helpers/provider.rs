//! The real OAuth provider (panva's oidc-provider, tests/provider), a browser that follows
//! its redirects by hand, and an app wired to it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{redirect, StatusCode};
use serde_json::{json, Value};

use super::TestApp;
use latchkey::model::{ConnectionId, CredentialSecret, Owner};

pub const CLIENT_ID: &str = "latchkey";
pub const CLIENT_SECRET: &str = "latchkey-test-secret";

/// The oidc-provider child process; killed on drop.
pub struct Provider {
    child: Child,
    pub url: String,
}

impl Provider {
    pub fn start(redirect_uri: &str, access_ttl: u32) -> Provider {
        let clients = json!([{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"], "token_endpoint_auth_method": "client_secret_basic"}]);
        Self::start_with(clients, access_ttl, json!({}))
    }

    /// A provider with these clients, access-token lifetime and extra claims per account
    /// (`{"alice": {"org": "acme", "roles": ["admin"]}}`, put in ID tokens).
    pub fn start_with(clients: Value, access_ttl: u32, account_claims: Value) -> Provider {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/provider");
        assert!(
            std::path::Path::new(dir).join("node_modules/oidc-provider").exists(),
            "the test OAuth provider is not installed: run `npm ci --prefix tests/provider`"
        );
        // A provider that never says it listens (seen once: node stalled before its first
        // write) is stopped and started again, rather than holding the test for ever.
        for _ in 0..3 {
            let mut child = Command::new("node")
                .arg(format!("{dir}/server.mjs"))
                .env("PORT", "0")
                .env("CLIENTS", clients.to_string())
                .env("ACCESS_TTL", access_ttl.to_string())
                .env("ACCOUNT_CLAIMS", account_claims.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start node tests/provider/server.mjs");
            let stdout = child.stdout.take().expect("stdout");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = tx.send(BufReader::new(stdout).read_line(&mut line).map(|_| line));
            });
            match rx.recv_timeout(std::time::Duration::from_secs(30)) {
                Ok(line) => {
                    let line = line.expect("provider output");
                    let url =
                        line.trim().strip_prefix("LISTENING ").unwrap_or_else(|| panic!("unexpected provider output: {line}")).to_owned();
                    return Provider { child, url };
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("the test OAuth provider did not start within 30 s, three times");
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

/// A browser: follows redirects by hand, with a cookie jar per origin, and tells each
/// provider's login page who signs in (`login_hint`, see tests/provider/server.mjs).
pub struct Browser {
    http: reqwest::Client,
    cookies: BTreeMap<(String, String), String>,
    /// Origin → account; `None` key: any provider.
    hints: BTreeMap<Option<String>, String>,
}

fn origin(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    format!("{}://{}:{}", u.scheme(), u.host_str().unwrap(), u.port_or_known_default().unwrap())
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder().redirect(redirect::Policy::none()).build().unwrap(),
            cookies: BTreeMap::new(),
            hints: BTreeMap::new(),
        }
    }

    /// Signs in as `account` at the provider (or issuer) at `url`.
    pub fn sign_in_at(&mut self, url: &str, account: &str) {
        self.hints.insert(Some(origin(url)), account.to_owned());
    }

    /// Sends the cookies of `from`'s origin to `to`'s as well: two replicas behind one load
    /// balancer are one site to a browser (in tests each listens on its own port).
    pub fn same_site(&mut self, from: &str, to: &str) {
        let (from, to) = (origin(from), origin(to));
        let copied: Vec<_> = self.cookies.iter().filter(|((o, _), _)| *o == from).map(|((_, k), v)| (k.clone(), v.clone())).collect();
        for (k, v) in copied {
            self.cookies.insert((to.clone(), k), v);
        }
    }

    fn cookie_header(&self, url: &str) -> Option<String> {
        let o = origin(url);
        let pairs: Vec<String> = self.cookies.iter().filter(|((co, _), _)| *co == o).map(|((_, k), v)| format!("{k}={v}")).collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }

    fn keep_cookies(&mut self, url: &str, r: &reqwest::Response) {
        for c in r.headers().get_all(SET_COOKIE) {
            if let Some((k, v)) = c.to_str().unwrap().split(';').next().and_then(|kv| kv.split_once('=')) {
                self.cookies.insert((origin(url), k.trim().to_owned()), v.to_owned());
            }
        }
    }

    pub async fn get(&mut self, url: &str) -> reqwest::Response {
        let mut req = self.http.get(url);
        if let Some(c) = self.cookie_header(url) {
            req = req.header(COOKIE, c);
        }
        let r = req.send().await.unwrap();
        self.keep_cookies(url, &r);
        r
    }

    pub async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.post(url).form(form);
        if let Some(c) = self.cookie_header(url) {
            req = req.header(COOKIE, c);
        }
        let r = req.send().await.unwrap();
        self.keep_cookies(url, &r);
        r
    }

    /// Shows a connect link's confirmation page and presses its button; returns where the
    /// browser is sent next.
    pub async fn continue_link(&mut self, connect_url: &str) -> String {
        let r = self.get(connect_url).await;
        assert_eq!(r.status(), StatusCode::OK, "confirmation page");
        assert_eq!(r.headers()["content-security-policy"], "default-src 'none'; frame-ancestors 'none'");
        let html = r.text().await.unwrap();
        let csrf = csrf_of(&html);
        let r = self.post_form(connect_url, &[("csrf", &csrf)]).await;
        assert_eq!(r.status(), StatusCode::FOUND, "continue");
        let next = location(&r, connect_url);
        assert!(next.contains("code_challenge_method=S256") && next.contains("state="), "{next}");
        next
    }

    /// Follows redirects from `start` until one leads to a URL starting with `stop`, which
    /// is returned (not fetched).
    pub async fn follow(&mut self, start: String, stop: &str) -> String {
        let mut next = start;
        for _ in 0..12 {
            if next.starts_with(stop) {
                return next;
            }
            if url::Url::parse(&next).unwrap().path() == "/auth" {
                let hint = self.hints.get(&Some(origin(&next))).or(self.hints.get(&None)).cloned();
                if let Some(h) = hint {
                    next.push_str(&format!("&login_hint={h}"));
                }
            }
            let r = self.get(&next).await;
            assert!(r.status().is_redirection(), "answered {} at {next}", r.status());
            next = location(&r, &next);
        }
        panic!("no redirect to {stop}");
    }

    /// Opens a connect link and follows the redirects up to (not into) the callback,
    /// signing in as `login_hint` wherever asked; returns the callback URL.
    pub async fn login(&mut self, connect_url: &str, callback_prefix: &str, login_hint: &str) -> String {
        self.hints.insert(None, login_hint.to_owned());
        let next = self.continue_link(connect_url).await;
        self.follow(next, callback_prefix).await
    }
}

/// The CSRF token in a confirmation page's form.
pub fn csrf_of(html: &str) -> String {
    let i = html.find("name=\"csrf\" value=\"").expect("csrf field") + "name=\"csrf\" value=\"".len();
    html[i..].split('"').next().unwrap().to_owned()
}

pub fn location(r: &reqwest::Response, base: &str) -> String {
    let loc = r.headers()[LOCATION].to_str().unwrap();
    url::Url::parse(base).unwrap().join(loc).unwrap().to_string()
}

pub struct OAuthWorld {
    pub app: TestApp,
    pub provider: Provider,
    pub agent_token: String,
}

impl OAuthWorld {
    pub async fn new(access_ttl: u32) -> OAuthWorld {
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

    pub fn callback_prefix(&self) -> String {
        format!("{}/v1/connect/callback", self.app.addr)
    }

    pub async fn connect_url(&self, owner: &str, return_to: Option<&str>) -> String {
        let mut body = json!({"connection_id": "crm", "owner": owner});
        if let Some(r) = return_to {
            body["return_to"] = json!(r);
        }
        let r = self.app.post_json("/v1/connect/sessions", body).await;
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["connect_url"].as_str().unwrap().to_owned()
    }

    /// A complete connect flow for `account` as `owner`; returns the callback response.
    pub async fn connect(&self, owner: &str, account: &str) -> reqwest::Response {
        let url = self.connect_url(owner, None).await;
        let mut b = Browser::new();
        let cb = b.login(&url, &self.callback_prefix(), account).await;
        b.get(&cb).await
    }

    pub async fn release(&self, owner_id: &str, min_ttl: i64) -> reqwest::Response {
        self.app
            .http
            .get(self.app.url(&format!("/v1/connections/crm/token?user_id={owner_id}&min_ttl={min_ttl}")))
            .bearer_auth(&self.agent_token)
            .send()
            .await
            .unwrap()
    }

    pub fn credential(&self, owner: &str) -> Option<latchkey::vault::CredentialView> {
        self.app.vault.get_credential(&ConnectionId::parse("crm").unwrap(), &Owner::parse(owner).unwrap()).ok()
    }

    pub fn tokens(&self, owner: &str) -> (String, String) {
        let c = self.app.vault.open_credential(&ConnectionId::parse("crm").unwrap(), &Owner::parse(owner).unwrap()).unwrap().unwrap();
        match c.secret {
            CredentialSecret::OAuth2 { access_token, refresh_token, .. } => {
                (access_token.expose().to_owned(), refresh_token.unwrap().expose().to_owned())
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A TCP proxy to the provider that holds each request for `delay` and forwards it only
/// if the client is still connected — so a client killed meanwhile never reaches the
/// provider (as when a process dies before its request leaves the machine).
pub fn holding_proxy(upstream: &str, delay: std::time::Duration) -> String {
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
