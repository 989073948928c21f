//! A small HTTP API for proxy tests: it checks the credential latchkey injects and records
//! what reached it, and has the misbehaviours an attacker would use (echoing the
//! credential back, redirecting with it in the URL, answering slowly or hugely).

use std::net::TcpListener;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use sha2::Digest;

/// What one request looked like when it reached the upstream.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent on the wire.
    pub target: String,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

pub struct Upstream {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

/// `expected` is the header (name, value) an authorised request carries, or, for
/// `?api_key=` connections, the query parameter.
pub async fn start(expected: (&'static str, String)) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let (s, e) = (seen.clone(), Arc::new(expected));
    let server = actix_web::HttpServer::new(move || {
        let (seen, expected) = (s.clone(), e.clone());
        actix_web::App::new().default_service(web::to(move |req: HttpRequest, body: web::Payload| {
            let (seen, expected) = (seen.clone(), expected.clone());
            async move { handle(req, body, &seen, &expected).await }
        }))
    })
    .workers(2)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    Upstream { url, seen }
}

fn authorised(req: &HttpRequest, expected: &(&'static str, String)) -> bool {
    let (name, value) = expected;
    if *name == "query" {
        return req.query_string().split('&').any(|p| p == value.as_str());
    }
    req.headers().get(*name).and_then(|v| v.to_str().ok()) == Some(value.as_str())
}

async fn handle(req: HttpRequest, mut body: web::Payload, seen: &Mutex<Vec<Seen>>, expected: &(&'static str, String)) -> HttpResponse {
    use futures_core::Stream;
    let target = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: req.method().as_str().to_owned(),
        target: target.clone(),
        headers: req.headers().iter().map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect(),
    });
    if !authorised(&req, expected) {
        return HttpResponse::Unauthorized().insert_header(("www-authenticate", "Bearer realm=\"api\", error=\"invalid_token\"")).finish();
    }
    let path = req.path().to_owned();
    let n = |key: &str| -> u64 {
        req.query_string().split('&').find_map(|p| p.strip_prefix(&format!("{key}="))).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    match path.as_str() {
        "/api/upload" => {
            let (mut bytes, mut hash) = (0u64, sha2::Sha256::new());
            while let Some(chunk) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_next(cx)).await {
                let Ok(chunk) = chunk else { return HttpResponse::BadRequest().finish() };
                bytes += chunk.len() as u64;
                hash.update(&chunk);
            }
            let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
            HttpResponse::Ok().json(json!({"bytes": bytes, "sha256": hex}))
        }
        "/api/download" => HttpResponse::Ok().content_type("application/octet-stream").streaming(Pattern { left: n("n") }),
        "/api/big" => HttpResponse::Ok().body(vec![b'x'; n("n") as usize]),
        "/api/echo" => HttpResponse::Ok()
            // An API that reflects request headers back, as some debugging endpoints do.
            .insert_header(("x-echo-credential", req.headers().get(expected.0).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()))
            .insert_header(("set-cookie", "session=abc; HttpOnly"))
            .insert_header(("www-authenticate", "Bearer realm=\"api\", scope=\"admin\""))
            .insert_header(("x-kept", "yes"))
            .body("echoed"),
        "/api/redirect" => HttpResponse::Found()
            .insert_header(("location", format!("https://elsewhere.example/next?api_key={}", expected.1.rsplit(' ').next().unwrap_or(""))))
            .finish(),
        "/api/moved" => HttpResponse::Found().insert_header(("location", "/api/whoami")).finish(),
        "/api/slow" => {
            tokio::time::sleep(Duration::from_secs(n("s"))).await;
            HttpResponse::Ok().body("late")
        }
        _ => HttpResponse::Ok().json(json!({"method": req.method().as_str(), "target": target})),
    }
}

/// `left` bytes of a repeating pattern, in 64 KiB chunks.
struct Pattern {
    left: u64,
}

impl futures_core::Stream for Pattern {
    type Item = Result<web::Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(64 * 1024);
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(web::Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>()))))
    }
}

/// The bytes [`Pattern`] yields, for comparing what arrived.
pub fn pattern(n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n as usize);
    let mut left = n;
    while left > 0 {
        let c = left.min(64 * 1024);
        out.extend((0..c).map(|i| (i % 251) as u8));
        left -= c;
    }
    out
}

/// One raw HTTP/1.1 request (paths exactly as written: an HTTP client would normalise
/// `..` and `%2e` before sending). Returns the status code.
pub fn raw_status(addr: &str, method: &str, target: &str, token: &str) -> u16 {
    use std::io::{Read, Write};
    let host = addr.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {token}\r\nx-latchkey-user: alice\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {text}"))
}
