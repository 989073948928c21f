//! A trusted issuer for token exchange: serves a JWKS over HTTP and signs subject tokens
//! with its RSA, P-256 and Ed25519 keys. Also the small encoders tests share.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use latchkey::time::Clock;
use serde_json::{json, Value};

pub const ISSUER_RSA: &[u8] = include_bytes!("../fixtures/issuer-rsa.der");
pub const ISSUER_EC: &[u8] = include_bytes!("../fixtures/issuer-ec.der");
pub const ISSUER_JWKS: &str = include_str!("../fixtures/issuer-jwks.json");
pub const AUDIENCE: &str = "latchkey-tests";

/// A trusted issuer: serves its JWKS over HTTP and signs subject tokens.
pub struct Issuer {
    pub url: String,
    /// The clock of the app that verifies this issuer's tokens.
    pub clock: Clock,
    pub fetches: Arc<AtomicUsize>,
    ed_seed: [u8; 32],
}

impl Issuer {
    pub async fn start(clock: Clock) -> Issuer {
        let ed_seed = [42u8; 32];
        let ed_pub = ed25519_dalek::SigningKey::from_bytes(&ed_seed).verifying_key().to_bytes();
        let mut jwks: Value = serde_json::from_str(ISSUER_JWKS).unwrap();
        jwks["keys"].as_array_mut().unwrap().push(json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": b64(&ed_pub)}));
        let fetches = Arc::new(AtomicUsize::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // After a key compromise: the same document without the RSA key.
        let mut rotated = jwks.clone();
        rotated["keys"].as_array_mut().unwrap().retain(|k| k["kid"] != "rsa-1");
        let (body, rotated, counter) = (jwks.to_string(), rotated.to_string(), fetches.clone());
        let server = actix_web::HttpServer::new(move || {
            let (body, rotated, counter) = (body.clone(), rotated.clone(), counter.clone());
            actix_web::App::new()
                .route(
                    "/jwks.json",
                    actix_web::web::get().to(move || {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let body = body.clone();
                        async move {
                            // Slow enough that concurrent verifications overlap the fetch.
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            actix_web::HttpResponse::Ok().content_type("application/json").body(body)
                        }
                    }),
                )
                .route(
                    "/rotated.json",
                    actix_web::web::get().to(move || {
                        let body = rotated.clone();
                        async move { actix_web::HttpResponse::Ok().content_type("application/json").body(body) }
                    }),
                )
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        Issuer { url, clock, fetches, ed_seed }
    }

    pub fn token(&self, alg: Algorithm, kid: &str, claims: Value) -> String {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_der(ISSUER_RSA),
            Algorithm::ES256 => EncodingKey::from_ec_der(ISSUER_EC),
            Algorithm::EdDSA => {
                let mut der = hex("302e020100300506032b657004220420");
                der.extend_from_slice(&self.ed_seed);
                EncodingKey::from_ed_der(&der)
            }
            _ => EncodingKey::from_secret(b"unused"),
        };
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &claims, &key).unwrap()
    }

    /// Standard claims for `sub`, valid for an hour; `extra` overrides or adds.
    pub fn claims(&self, sub: &str, extra: Value) -> Value {
        let now = self.clock.now();
        let mut c = json!({"iss": self.url, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 3600});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    }
}

pub fn b64(b: &[u8]) -> String {
    use base64ct::{Base64UrlUnpadded, Encoding};
    Base64UrlUnpadded::encode_string(b)
}
pub fn base64_decode(s: &str) -> Vec<u8> {
    use base64ct::{Base64UrlUnpadded, Encoding};
    Base64UrlUnpadded::decode_vec(s).unwrap()
}
pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}
