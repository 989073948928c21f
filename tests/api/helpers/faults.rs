//! A raw-TCP token endpoint for provider faults a real provider will not produce on demand.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A token endpoint whose next answers are chosen by the test.
pub struct FaultServer {
    pub url: String,
    /// Requests answered so far.
    pub hits: Arc<std::sync::atomic::AtomicUsize>,
    mode: Arc<Mutex<&'static str>>,
}

impl FaultServer {
    pub fn start() -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mode = Arc::new(Mutex::new("ok"));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (m, h) = (mode.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mode = *m.lock().unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = s.read(&mut buf);
                    let reply = |s: &mut std::net::TcpStream, status: &str, ctype: &str, body: &[u8]| {
                        let head = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = s.write_all(head.as_bytes());
                        let _ = s.write_all(body);
                    };
                    match mode {
                        "ok" => reply(
                            &mut s,
                            "200 OK",
                            "application/json",
                            br#"{"access_token":"at-recovered","refresh_token":"rt-recovered","token_type":"bearer","expires_in":7200,"instance_url":"https://acme.my.salesforce.example"}"#,
                        ),
                        "500" => reply(&mut s, "500 Internal Server Error", "text/plain", b"oops"),
                        // A provider that issues 30-second tokens.
                        "short" => reply(
                            &mut s,
                            "200 OK",
                            "application/json",
                            br#"{"access_token":"at-short","refresh_token":"rt-short","token_type":"Bearer","expires_in":30}"#,
                        ),
                        // GitHub's answer to a dead refresh token: an error in an HTTP 200.
                        "bad_refresh_token" => reply(
                            &mut s,
                            "200 OK",
                            "application/json",
                            br#"{"error":"bad_refresh_token","error_description":"The refresh token passed is incorrect or expired."}"#,
                        ),
                        "huge_expiry" => reply(
                            &mut s,
                            "200 OK",
                            "application/json",
                            br#"{"access_token":"at-forever","token_type":"Bearer","expires_in":1e300}"#,
                        ),
                        "invalid_scope" => reply(&mut s, "400 Bad Request", "application/json", br#"{"error":"invalid_scope"}"#),
                        "429" => {
                            let body = b"slow down";
                            let head = format!(
                                "HTTP/1.1 429 Too Many Requests\r\nretry-after: 120\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = s.write_all(head.as_bytes());
                            let _ = s.write_all(body);
                        }
                        "html" => reply(&mut s, "200 OK", "text/html", b"<html><body>Maintenance</body></html>"),
                        "missing" => reply(&mut s, "200 OK", "application/json", br#"{"token_type":"Bearer","expires_in":3600}"#),
                        "unknown_type" => {
                            reply(&mut s, "200 OK", "application/json", br#"{"access_token":"x","token_type":"MAC","expires_in":3600}"#)
                        }
                        "truncated" => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{\"access_token\":\"at-tru");
                        }
                        "huge" => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 33554432\r\n\r\n");
                            let chunk = vec![b' '; 64 * 1024];
                            for _ in 0..512 {
                                if s.write_all(&chunk).is_err() {
                                    break;
                                }
                            }
                        }
                        "huge_chunked" => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n");
                            let chunk = vec![b' '; 64 * 1024];
                            for _ in 0..512 {
                                let _ = s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
                                if s.write_all(&chunk).is_err() || s.write_all(b"\r\n").is_err() {
                                    break;
                                }
                            }
                        }
                        // Longer than the test app's provider timeout.
                        "slow" => std::thread::sleep(Duration::from_secs(5)),
                        _ => {}
                    }
                });
            }
        });
        FaultServer { url, hits, mode }
    }

    pub fn set(&self, mode: &'static str) {
        *self.mode.lock().unwrap() = mode;
    }
}
