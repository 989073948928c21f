//! Subject tokens (RFC 8693 token exchange) and owner-proof ID tokens: JWTs from trusted
//! issuers, verified by `JwksCache::verify` against an inline JWK Set (RSA, P-256 and
//! Ed25519 keys; no network). Also `jsonwebtoken::decode_header` and `unverified_issuer`,
//! which read a token before anything is trusted. The first byte picks the mode:
//! - even: the rest is the token as presented;
//! - odd: the rest is a claims payload (or `header 0xFF payload`) that the target signs with
//!   the issuer's Ed25519 key, so claims handling behind the signature is reached.
//!
//! Checks: no panic; an accepted token is within its lifetime and has a subject; verifying
//! never waits (inline keys need no fetch).
#![no_main]

use std::sync::OnceLock;

use ed25519_dalek::{Signer, SigningKey};
use jsonwebtoken::jwk::JwkSet;
use latchkey::auth::subject::{unverified_issuer, Expect, JwksCache, Keys};
use libfuzzer_sys::fuzz_target;

mod common;

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "latchkey";
const SEED: [u8; 32] = [9; 32];
const NOW: i64 = 1_800_000_000;
const LEEWAY: i64 = latchkey::auth::tokens::LEEWAY;

/// The issuer's keys: one of each kind latchkey accepts; only the Ed25519 one signs here.
fn keys() -> &'static JwkSet {
    static K: OnceLock<JwkSet> = OnceLock::new();
    K.get_or_init(|| {
        let x = common::b64url(SigningKey::from_bytes(&SEED).verifying_key().as_bytes());
        serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "s1", "alg": "EdDSA", "x": x},
            {"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig", "e": "AQAB", "n": "ve0iguspoxLojbLeanBrSuu5jqrO0QqcavlywRPM3lQfZrDfl9RbJFIuLf7b2r7XdMN_6l6M3DBMaii-X_I_q5LIIBea3j7UEPy91XTtoJT6uk5xjswMfGIZCll7Mj2WDNKHKW7Lemm1-t7twh9NWKQXjJhPlcdJGw-56alNqu9MXmlxf_vFhhTzV7odcAVV_E8A1x9wzrZehGacChFSUmTAjBHFI0HEyv9_IBgvAO_fnmOkhksO6XaajBHW8ZAZJMNv90w1TVyVJoMAjp59cokVX_x5cYBHChON7Hsgx6agNk_wZBvP8wSKRGN13-cm-YHJRKsne-nqEckSiFqpDQ"},
            {"kty": "EC", "crv": "P-256", "kid": "e1", "x": "uwmj7vn8RxSXe_ojJc8Mt28TNyR2kGQhqYAhbZ8H_zc", "y": "h5Km9p7xil-eFYY6RlcCZh2CJh-e9pslhasUp8YT1Cw"}
        ]}))
        .unwrap()
    })
}

fn cache() -> &'static JwksCache {
    static C: OnceLock<JwksCache> = OnceLock::new();
    C.get_or_init(|| JwksCache::new().unwrap())
}

fn signed(header: &[u8], payload: &[u8]) -> String {
    let mut t = format!("{}.{}", common::b64url(header), common::b64url(payload));
    let sig = SigningKey::from_bytes(&SEED).sign(t.as_bytes());
    t.push('.');
    t.push_str(&common::b64url(&sig.to_bytes()));
    t
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let token = if mode % 2 == 0 {
        let Ok(t) = std::str::from_utf8(rest) else { return };
        t.to_owned()
    } else {
        match rest.iter().position(|&b| b == 0xff) {
            Some(i) => signed(&rest[..i], &rest[i + 1..]),
            None => signed(br#"{"alg":"EdDSA","typ":"JWT","kid":"s1"}"#, rest),
        }
    };
    let _ = jsonwebtoken::decode_header(&token);
    let _ = unverified_issuer(&token);
    let expect =
        Expect { issuer: ISSUER, keys: Keys::Inline(keys()), audience: AUDIENCE, tenant_claim: Some("tid"), roles_claim: Some("roles") };
    if let Ok(s) = common::block_on(cache().verify(&expect, &token, NOW)) {
        assert!(!s.sub.is_empty());
        assert!(s.exp.saturating_add(LEEWAY) > NOW, "accepted an expired token");
        assert_eq!(unverified_issuer(&token).as_deref(), Ok(ISSUER));
    }
});
