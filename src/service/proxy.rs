//! Proxy mode: the agent sends its request through latchkey, which decides it like a release
//! (same policy, same audit, refresh and narrowing included), injects the credential and
//! forwards it to the connection's upstream, streaming both ways. The secret never leaves.
//!
//! Order: the decision record is committed before anything is forwarded (fail closed);
//! the outcome (status, bytes, duration, or why there was no answer) follows in a second
//! record when the response has been relayed. Neither holds a body, a query string or a
//! header. An upstream 401 to a stored OAuth token leads to one refresh (single flight,
//! cooldown) and one retry, for idempotent requests without a body; the upstream's answer
//! never changes the credential's status.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

use super::Services;
use crate::audit::{Event, Outcome};
use crate::egress;
use crate::metrics::{status_class, Metrics};
use crate::model::{ConnectionId, Scope};
use crate::oauth::Refreshed;
use crate::policy::{Mode, Principal, ReleaseRequest};
use crate::secret::Secret;
use crate::vault::{MinTtl, Narrowing, ProxyCall, ProxyTarget, ReleaseInput, Released, ReleasedSecret, Vault, VaultError};

/// Why a proxied call got no upstream answer (after the policy allowed it).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A refusal by the policy, or the vault failing (mapped like a release's).
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("the request body is larger than this connection's proxy allows ({limit} bytes)")]
    BodyTooLarge { limit: u64 },
    #[error("the upstream did not answer within the connection's proxy timeout ({0} s)")]
    Timeout(u64),
    #[error("the upstream address is not public, and the connection does not allow private addresses")]
    EgressDenied,
    #[error("the upstream's response is larger than this connection's proxy allows ({limit} bytes)")]
    ResponseTooLarge { limit: u64 },
    #[error("the upstream could not be reached or broke off the exchange")]
    Unavailable,
    #[error("the request body could not be read")]
    BadBody,
}

/// Counts the request body as it streams to the upstream, against a limit set once the
/// decision has named the connection's `max_body`.
#[derive(Debug)]
pub struct BodyMeter {
    bytes: AtomicU64,
    limit: AtomicU64,
    exceeded: AtomicBool,
    failed: AtomicBool,
}

impl Default for BodyMeter {
    fn default() -> Self {
        BodyMeter {
            bytes: AtomicU64::new(0),
            limit: AtomicU64::new(u64::MAX),
            exceeded: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        }
    }
}

impl BodyMeter {
    /// Counts a chunk; `false` once the body is over its limit (the stream must stop).
    pub fn add(&self, n: usize) -> bool {
        let total = self.bytes.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        if total > self.limit.load(Ordering::SeqCst) {
            self.exceeded.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The agent's body failed (a slow or broken client).
    pub fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}

/// A request to forward, parsed by the API layer.
pub struct ProxyRequest {
    pub principal: Principal,
    pub connection: ConnectionId,
    pub user_id: Option<String>,
    pub tenant_id: Option<String>,
    pub scopes: Vec<Scope>,
    pub method: reqwest::Method,
    /// Below the connection's base URL, percent-encoded as sent.
    pub path: String,
    /// The raw query string: it belongs to the upstream and passes untouched.
    pub query: Option<String>,
    /// The agent's headers (filtered here before forwarding).
    pub headers: HeaderMap,
    /// The body, streaming; `None` when the request has none.
    pub body: Option<reqwest::Body>,
    /// The declared length, when the agent declared one.
    pub body_len: Option<u64>,
    pub meter: Arc<BodyMeter>,
    pub request_id: String,
}

/// The upstream's answer, headers filtered, body streaming.
pub struct ProxyResponse {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub content_length: Option<u64>,
    pub body: ResponseBody,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the ones only a proxy itself may set.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Request headers never forwarded: hop-by-hop ones, the agent's own credentials and
/// latchkey's, and what describes the agent's side of the network.
fn forwarded_request_header(name: &str) -> bool {
    !(HOP_BY_HOP.contains(&name)
        || matches!(name, "host" | "authorization" | "cookie" | "expect" | "forwarded" | "via" | "content-length")
        || OVERRIDES.contains(&name)
        || name.starts_with("x-latchkey-")
        || name.starts_with("x-forwarded-"))
}

/// Headers some APIs and frameworks take as the real method or path (Google honours
/// `X-HTTP-Method-Override` on POST): forwarded, they would walk past `allowed_methods` and
/// `allowed_paths`.
const OVERRIDES: [&str; 5] = ["x-http-method-override", "x-http-method", "x-method-override", "x-original-url", "x-rewrite-url"];

/// Idempotent methods (RFC 9110 §9.2.2): safe to send twice.
fn idempotent(m: &reqwest::Method) -> bool {
    matches!(m.as_str(), "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE")
}

/// What the credential puts on the request.
struct Injection {
    header: Option<(HeaderName, HeaderValue)>,
    query: Option<(String, Secret)>,
    /// The exact secret strings that must not come back in a response header.
    secrets: Vec<Secret>,
}

fn injection(secret: &ReleasedSecret, target: &ProxyTarget) -> Result<Injection, ProxyError> {
    let bad = || ProxyError::Vault(VaultError::Internal("the stored secret is not a valid header value"));
    match secret {
        ReleasedSecret::OAuth2 { access_token, token_type, .. } => {
            // RFC 6750 scheme names are case-insensitive, but some APIs only take "Bearer"
            // (GitHub and others answer token_type "bearer").
            let scheme = if token_type.eq_ignore_ascii_case("bearer") { "Bearer" } else { token_type.as_str() };
            let mut value = HeaderValue::from_str(&format!("{scheme} {}", access_token.expose())).map_err(|_| bad())?;
            value.set_sensitive(true);
            Ok(Injection { header: Some((reqwest::header::AUTHORIZATION, value)), query: None, secrets: vec![access_token.clone()] })
        }
        ReleasedSecret::ApiKey { api_key, header_name, header_value } => {
            let secrets = vec![api_key.clone(), header_value.clone()];
            if let Some(param) = &target.query_param {
                return Ok(Injection { header: None, query: Some((param.clone(), api_key.clone())), secrets });
            }
            let name = HeaderName::from_bytes(header_name.as_bytes()).map_err(|_| bad())?;
            let mut value = HeaderValue::from_str(header_value.expose()).map_err(|_| bad())?;
            value.set_sensitive(true);
            Ok(Injection { header: Some((name, value)), query: None, secrets })
        }
    }
}

/// The agent's query with the key's parameter set by latchkey. Any parameter the agent sent
/// that a server could read as the same name is dropped: compared case-insensitively, with
/// `.` and spaces as `_` (PHP), `[…]` suffixes removed, and `;`-separated pairs inside one
/// `&` part (servers that split on both). The upstream sees one key, the connection's.
fn query_with(query: Option<&str>, inject: Option<&(String, Secret)>) -> Option<String> {
    let Some((name, value)) = inject else { return query.map(str::to_owned) };
    let target = param_name_key(name);
    let mut parts: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            !p.split(';').any(|pair| {
                let key = pair.split('=').next().unwrap_or("");
                url::form_urlencoded::parse(format!("{key}=").as_bytes()).next().is_some_and(|(k, _)| param_name_key(&k) == target)
            })
        })
        .map(str::to_owned)
        .collect();
    let encoded: String = url::form_urlencoded::byte_serialize(value.expose().as_bytes()).collect();
    parts.push(format!("{name}={encoded}"));
    Some(parts.join("&"))
}

/// A query parameter name as lenient servers compare it.
fn param_name_key(name: &str) -> String {
    let base = name.split('[').next().unwrap_or("");
    base.trim().chars().map(|c| if c == '.' || c == ' ' { '_' } else { c.to_ascii_lowercase() }).collect()
}

/// The upstream's headers as the agent may see them: no hop-by-hop headers, no
/// `Set-Cookie` unless the connection passes cookies, no `WWW-Authenticate` (it describes
/// the credential latchkey holds, not the agent's), and none that carries the secret back
/// (an API echoing request headers, a `Location` with `?api_key=`).
fn response_headers(headers: &HeaderMap, pass_cookies: bool, secrets: &[Secret]) -> Vec<(HeaderName, HeaderValue)> {
    let named_in_connection: Vec<String> = headers
        .get_all(reqwest::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    headers
        .iter()
        .filter(|(name, value)| {
            let n = name.as_str();
            let carries_secret = carries(value.as_bytes(), secrets);
            !(HOP_BY_HOP.contains(&n)
                || named_in_connection.iter().any(|c| c == n)
                || n == "content-length"
                || n == "www-authenticate"
                || (n == "set-cookie" && !pass_cookies)
                || carries_secret)
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether a header value holds one of the secrets: as is, with JSON's `\\/` escapes undone,
/// or percent-decoded (either case of hex, `+` as a space or not, up to three times over).
/// The other forms are built only for values that have the characters they undo.
fn carries(value: &[u8], secrets: &[Secret]) -> bool {
    let found = |form: &[u8]| secrets.iter().any(|s| contains(form, s.expose().as_bytes()));
    if found(value) {
        return true;
    }
    if contains(value, b"\\/") && found(String::from_utf8_lossy(value).replace("\\/", "/").as_bytes()) {
        return true;
    }
    let plus: Vec<u8> = value.iter().map(|b| if *b == b'+' { b' ' } else { *b }).collect();
    if value.contains(&b'+') && found(&plus) {
        return true;
    }
    if !value.contains(&b'%') {
        return false;
    }
    [value.to_vec(), plus].into_iter().any(|start| {
        let mut current = start;
        for _ in 0..3 {
            let decoded: Vec<u8> = percent_encoding::percent_decode(&current).collect();
            if decoded == current {
                return false;
            }
            if found(&decoded) {
                return true;
            }
            current = decoded;
        }
        false
    })
}

/// Everything the outcome record needs, written once: when the body ends, fails, or the
/// agent goes away.
struct OutcomeRecord {
    vault: Arc<Vault>,
    metrics: Arc<Metrics>,
    started: Instant,
    meter: Arc<BodyMeter>,
    detail: OutcomeDetail,
    target: String,
}

#[derive(Serialize)]
struct OutcomeDetail {
    agent: String,
    user: Option<String>,
    connection: String,
    owner: String,
    method: String,
    host: String,
    path: String,
    status: Option<u16>,
    bytes_sent: u64,
    bytes_received: u64,
    duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    request_id: String,
}

impl OutcomeRecord {
    fn finish(mut self, received: u64, error: Option<&'static str>) {
        self.detail.bytes_sent = self.meter.bytes();
        self.detail.bytes_received = received;
        self.detail.duration_ms = self.started.elapsed().as_millis() as u64;
        self.detail.error = error;
        let class = match (self.detail.status, error) {
            (Some(s), _) => status_class(s),
            (None, _) => "error",
        };
        self.metrics.proxy_call(&self.detail.connection, class);
        let outcome = if error.is_none() { Outcome::Ok } else { Outcome::Failed };
        let event = Event::serialized(format!("agent:{}", self.detail.agent), "proxy.response", self.target.clone(), outcome, &self.detail);
        // The answer has gone: nothing waits for this record, so it rides with the next batch.
        self.vault.audit_lazily(event);
    }
}

/// The upstream's body on its way to the agent: limited in size, counted, and closed with
/// the outcome record.
pub struct ResponseBody {
    inner: Option<Pin<Box<dyn futures_core::Stream<Item = reqwest::Result<Bytes>> + Send>>>,
    received: u64,
    limit: u64,
    record: Option<OutcomeRecord>,
}

impl ResponseBody {
    /// Closes a body that will not be relayed, saying why in its outcome record.
    fn discard(mut self, why: &'static str) {
        self.finish(Some(why));
    }

    fn finish(&mut self, error: Option<&'static str>) {
        self.inner = None;
        if let Some(r) = self.record.take() {
            r.finish(self.received, error);
        }
    }
}

impl futures_core::Stream for ResponseBody {
    type Item = Result<Bytes, ProxyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        match inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.received += chunk.len() as u64;
                if self.received > self.limit {
                    self.finish(Some("response larger than max_body"));
                    let limit = self.limit;
                    return Poll::Ready(Some(Err(ProxyError::ResponseTooLarge { limit })));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                let (why, err) = if e.is_timeout() {
                    ("upstream timed out during the body", ProxyError::Timeout(0))
                } else {
                    ("upstream body broke off", ProxyError::Unavailable)
                };
                self.finish(Some(why));
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => {
                self.finish(None);
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if self.record.is_some() {
            self.finish(Some("the agent went away before the body ended"));
        }
    }
}

/// The two upstream clients: public addresses only, or any (`proxy.allow_private`).
pub struct ProxyClients {
    public: reqwest::Client,
    private: reqwest::Client,
}

impl ProxyClients {
    pub fn new(lookup: Arc<dyn egress::Lookup>) -> Result<Self, reqwest::Error> {
        Ok(ProxyClients { public: egress::client(lookup.clone(), false)?, private: egress::client(lookup, true)? })
    }
}

impl Services {
    /// Decides, audits and forwards one proxied call; the response streams back.
    pub async fn proxy(&self, mut req: ProxyRequest) -> Result<ProxyResponse, ProxyError> {
        let mut input = ReleaseInput {
            principal: req.principal.clone(),
            connection: req.connection.clone(),
            request: ReleaseRequest {
                scopes: std::mem::take(&mut req.scopes),
                user_id: req.user_id.take(),
                tenant_id: req.tenant_id.take(),
                mode: Mode::Proxy,
            },
            min_ttl: MinTtl::Default,
            request_id: req.request_id.clone(),
            refresh_attempted: None,
            narrowing: Narrowing::Allowed,
            proxy: Some(ProxyCall { method: req.method.as_str().to_owned(), path: std::mem::take(&mut req.path) }),
        };
        let released = self.release_for_proxy(&input).await?;
        let retryable = req.body.is_none() && idempotent(&req.method);
        let first = self.forward(&mut req, &released).await?;
        let oauth = matches!(released.secret, ReleasedSecret::OAuth2 { .. });
        if first.status != 401 || !oauth || released.narrowed || !retryable {
            return Ok(first);
        }
        // A 401 to a token the vault still holds as valid: refresh once (single flight and
        // cooldown) and retry once; otherwise the agent gets the 401.
        match self.oauth.refresh_after_rejection(&released.connection_id, &released.owner, released.secret_version).await {
            Refreshed::Done | Refreshed::NotNeeded => {}
            _ => return Ok(first),
        }
        first.body.discard("the upstream refused the stored token; refreshed and retried");
        input.refresh_attempted = Some(1);
        let again = self.release_for_proxy(&input).await?;
        self.forward(&mut req, &again).await
    }

    async fn release_for_proxy(&self, input: &ReleaseInput) -> Result<Released, ProxyError> {
        let released = self.release(input.clone()).await?;
        if released.proxy.is_none() {
            return Err(VaultError::Internal("a proxy decision without a target").into());
        }
        Ok(released)
    }

    /// One upstream exchange. Errors before the upstream answers are recorded here.
    async fn forward(&self, req: &mut ProxyRequest, released: &Released) -> Result<ProxyResponse, ProxyError> {
        let target = released.proxy.as_ref().ok_or(VaultError::Internal("a proxy decision without a target"))?;
        let inject = injection(&released.secret, target)?;
        let path = format!("{}/{}", target.base.path().trim_end_matches('/'), target.path.as_str());
        let mut record = OutcomeRecord {
            vault: self.vault.clone(),
            metrics: self.metrics.clone(),
            started: Instant::now(),
            meter: req.meter.clone(),
            target: format!("{}/{}", released.connection_id, released.owner),
            detail: OutcomeDetail {
                agent: req.principal.agent_id.clone(),
                user: req.principal.user.clone(),
                connection: released.connection_id.to_string(),
                owner: released.owner.to_string(),
                method: req.method.as_str().to_owned(),
                host: target.base.host_str().unwrap_or_default().to_owned(),
                path,
                status: None,
                bytes_sent: 0,
                bytes_received: 0,
                duration_ms: 0,
                error: None,
                request_id: req.request_id.clone(),
            },
        };
        // The path was joined and checked when the call was decided; only the query is new.
        let url = match egress::join(&target.base, &target.path, query_with(req.query.as_deref(), inject.query.as_ref()).as_deref()) {
            Ok(url) => url,
            Err(e) => {
                record.finish(0, Some("the query string was refused"));
                return Err(VaultError::Release(crate::vault::ReleaseError::InvalidPath(e.to_string())).into());
            }
        };
        req.meter.limit.store(target.max_body, Ordering::SeqCst);
        if req.body_len.is_some_and(|n| n > target.max_body) {
            record.finish(0, Some("request body larger than max_body"));
            return Err(ProxyError::BodyTooLarge { limit: target.max_body });
        }
        let mut headers = HeaderMap::with_capacity(req.headers.len() + 2);
        for (name, value) in req.headers.iter() {
            let injected = inject.header.as_ref().is_some_and(|(h, _)| h == name);
            if forwarded_request_header(name.as_str()) && !injected {
                headers.append(name.clone(), value.clone());
            }
        }
        if let Some(len) = req.body_len.filter(|_| req.body.is_some()) {
            headers.insert(reqwest::header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        if let Some((name, value)) = &inject.header {
            headers.insert(name.clone(), value.clone());
        }
        let client = if target.allow_private { &self.proxy_clients.private } else { &self.proxy_clients.public };
        let mut call = client.request(req.method.clone(), url).headers(headers).timeout(target.timeout);
        if let Some(body) = req.body.take() {
            call = call.body(body);
        }
        let sent = call.send().await;
        let upstream_time = record.started.elapsed();
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let (why, err) = if req.meter.exceeded.load(Ordering::SeqCst) {
                    ("request body larger than max_body", ProxyError::BodyTooLarge { limit: target.max_body })
                } else if egress::refused_by_guard(&e) {
                    ("upstream address not public", ProxyError::EgressDenied)
                } else if e.is_timeout() {
                    ("upstream timed out", ProxyError::Timeout(target.timeout.as_secs()))
                } else if req.meter.failed.load(Ordering::SeqCst) {
                    ("the agent's request body failed", ProxyError::BadBody)
                } else {
                    ("upstream unreachable", ProxyError::Unavailable)
                };
                tracing::warn!(connection = %released.connection_id, reason = why, "proxied call failed");
                record.finish(0, Some(why));
                return Err(err);
            }
        };
        self.metrics.proxy_latency(released.connection_id.as_str(), upstream_time);
        let status = resp.status().as_u16();
        let headers = response_headers(resp.headers(), target.pass_cookies, &inject.secrets);
        let content_length = resp.content_length().filter(|n| *n <= target.max_body);
        record.detail.status = Some(status);
        if resp.content_length().is_some_and(|n| n > target.max_body) {
            record.finish(0, Some("response larger than max_body"));
            return Err(ProxyError::ResponseTooLarge { limit: target.max_body });
        }
        Ok(ProxyResponse {
            status,
            headers,
            content_length,
            body: ResponseBody { inner: Some(Box::pin(resp.bytes_stream())), received: 0, limit: target.max_body, record: Some(record) },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_headers_that_never_reach_the_upstream() {
        for h in [
            "authorization",
            "host",
            "cookie",
            "connection",
            "te",
            "x-latchkey-user",
            "x-forwarded-for",
            "proxy-authorization",
            "forwarded",
        ] {
            assert!(!forwarded_request_header(h), "{h}");
        }
        for h in ["accept", "content-type", "user-agent", "x-request-id", "if-none-match"] {
            assert!(forwarded_request_header(h), "{h}");
        }
    }

    #[test]
    fn response_headers_never_carry_the_secret_back() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("x-echo", HeaderValue::from_static("Bearer sk-live-123"));
        h.insert("location", HeaderValue::from_static("https://elsewhere.example/?api_key=sk%2Flive"));
        h.insert("link", HeaderValue::from_static("<https://x.example/?k=sk%2flive>; rel=next"));
        h.insert("x-json", HeaderValue::from_static("{\"k\":\"sk\\/live\"}"));
        h.insert("x-double", HeaderValue::from_static("sk%252Flive"));
        h.insert("set-cookie", HeaderValue::from_static("s=1"));
        h.insert("www-authenticate", HeaderValue::from_static("Bearer error=\"invalid_token\", scope=\"admin\""));
        h.insert("connection", HeaderValue::from_static("x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let secrets = vec![Secret::new("sk-live-123".into()), Secret::new("sk/live".into())];
        let names = |v: Vec<(HeaderName, HeaderValue)>| v.into_iter().map(|(n, _)| n.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(names(response_headers(&h, false, &secrets)), vec!["content-type"]);
        assert_eq!(names(response_headers(&h, true, &secrets)), vec!["content-type", "set-cookie"]);
    }

    #[test]
    fn the_key_parameter_replaces_any_the_agent_sent() {
        let key = ("api_key".to_owned(), Secret::new("k 1&x".into()));
        // Names a lenient server would read as the same parameter.
        for variant in ["API_KEY=mine", "api.key=mine", "api_key[]=mine", "a=1;api_key=mine", "Api%20Key=mine"] {
            assert_eq!(query_with(Some(variant), Some(&key)).as_deref(), Some("api_key=k+1%26x"), "{variant}");
        }
        assert_eq!(query_with(Some("a=1&api_key=mine&b=2"), Some(&key)).as_deref(), Some("a=1&b=2&api_key=k+1%26x"));
        assert_eq!(query_with(Some("api%5Fkey=mine"), Some(&key)).as_deref(), Some("api_key=k+1%26x"));
        assert_eq!(query_with(None, Some(&key)).as_deref(), Some("api_key=k+1%26x"));
        assert_eq!(query_with(Some("a=%20"), None).as_deref(), Some("a=%20"), "untouched without a key parameter");
    }

    #[test]
    fn the_body_meter_stops_at_the_limit() {
        let m = BodyMeter::default();
        assert!(m.add(10));
        m.limit.store(15, Ordering::SeqCst);
        assert!(m.add(5));
        assert!(!m.add(1));
        assert!(m.exceeded.load(Ordering::SeqCst));
        assert_eq!(m.bytes(), 16);
    }
}
