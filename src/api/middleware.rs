//! Request middleware: a request id on every response (and in every error body), one
//! access-log line per request (method, path without query, status, duration), and the
//! admin-token gate for `/v1/admin`.

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage};

use super::{ApiError, AppState};

/// The request id of the current request (in request extensions).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Middleware factory: request ids, error bodies, access log.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestContext;

impl<S, B> Transform<S, ServiceRequest> for RequestContext
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Transform = RequestContextService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestContextService { service: Rc::new(service) }))
    }
}

pub struct RequestContextService<S> {
    service: Rc<S>,
}

impl<S, B> Service<ServiceRequest> for RequestContextService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = self.service.clone();
        Box::pin(async move {
            let started = Instant::now();
            let id = new_request_id();
            req.extensions_mut().insert(RequestId(id.clone()));
            let (method, path) = (req.method().clone(), req.path().to_owned());
            // Inner layers answer errors as responses carrying the `ApiError`; rebuild
            // those with the request id. Anything else passes through untouched.
            let res = service.call(req).await?;
            let mut res = match res.response().error().and_then(|e| e.as_error::<ApiError>()).cloned() {
                Some(api) => {
                    let (http_req, _) = res.into_parts();
                    ServiceResponse::new(http_req, api.to_response(&id))
                }
                None => res.map_into_boxed_body(),
            };
            if let Ok(v) = HeaderValue::from_str(&id) {
                res.headers_mut().insert(HeaderName::from_static("x-request-id"), v);
            }
            tracing::info!(
                request_id = %id,
                method = %method,
                path = %path,
                status = res.status().as_u16(),
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                "request"
            );
            Ok(res)
        })
    }
}

/// 16 hex digits, unique within the process and unpredictable across processes: a counter
/// from a random start, through a bijective mix (so consecutive ids do not look
/// consecutive). No system call per request, unlike drawing 8 random bytes each time.
fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: std::sync::LazyLock<AtomicU64> = std::sync::LazyLock::new(|| {
        let mut b = [0u8; 8];
        // A request id only correlates log lines: a failing RNG makes the start zero, nothing worse.
        let _ = crate::crypto::random_bytes(&mut b);
        AtomicU64::new(u64::from_le_bytes(b))
    });
    let mut z = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(0x9e37_79b9_7f4a_7c15);
    // splitmix64's finaliser: a bijection on u64, so distinct counters give distinct ids.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    crate::crypto::hex(&z.to_be_bytes())
}

/// How long a request's body may take to arrive (app data, set by `startup`).
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub std::time::Duration);

/// A request body that fails once its deadline passes: a client sending its body a byte a
/// second cannot hold a handler (and its connection) open indefinitely.
struct DeadlineBody {
    inner: actix_web::dev::Payload,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl futures_core::Stream for DeadlineBody {
    type Item = Result<web::Bytes, actix_web::error::PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "request body too slow");
                Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(timeout))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Puts a deadline on every request body.
pub async fn body_deadline(mut req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse<BoxBody>, Error> {
    if let Some(d) = req.app_data::<BodyDeadline>().copied() {
        let inner = req.take_payload();
        let body = DeadlineBody { inner, deadline: Box::pin(tokio::time::sleep(d.0)) };
        req.set_payload(actix_web::dev::Payload::Stream { payload: Box::pin(body) });
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the last address
/// in `X-Forwarded-For` that is not one (the ones before it could be forged by the client).
pub fn client_ip(req: &actix_web::HttpRequest, trusted: &[crate::config::Cidr]) -> std::net::IpAddr {
    let peer = req.peer_addr().map(|a| a.ip()).unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    // Walk the hops right to left (nearest first): the first one not a trusted proxy is
    // the client. Hops left of it were written by the client and mean nothing; a hop that
    // does not parse ends the walk at the last proxy that vouched for it.
    let hops: Vec<&str> =
        req.headers().get_all("x-forwarded-for").filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<std::net::IpAddr>() {
            Ok(ip) if is_trusted(ip) => client = ip,
            Ok(ip) => return ip,
            Err(_) => return client,
        }
    }
    client
}

/// Longest bearer token accepted (agent tokens are well under 2 KiB).
const MAX_BEARER: usize = 8 * 1024;

/// The token of `Authorization: Bearer <token>`, if present and well-formed. The one
/// bearer parser: every route that takes a token uses it.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= MAX_BEARER).then_some(token)
}

/// Admin gate: only requests with a valid admin token reach `/v1/admin` handlers, which
/// receive the [`crate::vault::AdminPrincipal`] through request data.
pub async fn require_admin(req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse<BoxBody>, Error> {
    let Some(token) = bearer(req.headers()).map(str::to_owned) else {
        return Ok(req.error_response(ApiError::unauthorized()));
    };
    let Some(state) = req.app_data::<web::Data<AppState>>().map(|d| d.get_ref().clone()) else {
        return Ok(req.error_response(ApiError::internal()));
    };
    match state.blocking(move |v| v.authenticate_admin(&token)).await {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            Ok(next.call(req).await?.map_into_boxed_body())
        }
        Err(e) => Ok(req.error_response(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::client_ip;
    use crate::config::Cidr;
    use actix_web::test::TestRequest;

    fn ip(req: TestRequest, trusted: &[&str]) -> String {
        let trusted: Vec<Cidr> = trusted.iter().map(|c| Cidr::parse(c).expect("cidr")).collect();
        client_ip(&req.to_http_request(), &trusted).to_string()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let from = |peer: &str| TestRequest::default().peer_addr(peer.parse().expect("addr"));
        // No trusted proxies: the header is the client's to forge.
        assert_eq!(ip(from("203.0.113.9:1").insert_header(("x-forwarded-for", "1.1.1.1")), &[]), "203.0.113.9");
        // Behind a trusted proxy: the nearest hop the proxies did not write.
        let lb = &["10.0.0.0/8"];
        assert_eq!(ip(from("10.0.0.2:1").insert_header(("x-forwarded-for", "1.1.1.1, 198.51.100.7")), lb), "198.51.100.7");
        assert_eq!(ip(from("10.0.0.2:1").insert_header(("x-forwarded-for", "198.51.100.7, 10.0.0.5")), lb), "198.51.100.7");
        // Garbage the client put first does not hide the address the proxy appended.
        assert_eq!(ip(from("10.0.0.2:1").insert_header(("x-forwarded-for", "nonsense, 198.51.100.7")), lb), "198.51.100.7");
        // Garbage right after a proxy: the proxy is the last address anyone vouched for.
        assert_eq!(ip(from("10.0.0.2:1").insert_header(("x-forwarded-for", "198.51.100.7, nonsense")), lb), "10.0.0.2");
        assert_eq!(ip(from("10.0.0.2:1"), lb), "10.0.0.2");
    }

    #[test]
    fn request_ids_are_distinct_hex_and_do_not_look_consecutive() {
        let ids: Vec<String> = (0..10_000).map(|_| super::new_request_id()).collect();
        assert!(ids.iter().all(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())));
        assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), ids.len());
        // Consecutive ids differ in about half their bits, not only in the last digits.
        let differing = |a: &str, b: &str| (u64::from_str_radix(a, 16).unwrap() ^ u64::from_str_radix(b, 16).unwrap()).count_ones();
        let mean = ids.windows(2).map(|w| differing(&w[0], &w[1])).sum::<u32>() as f64 / (ids.len() - 1) as f64;
        assert!((24.0..40.0).contains(&mean), "consecutive ids differ in {mean} bits on average");
    }
}
