//! JWK Sets: fetched from an issuer's `jwks_uri` (`serde_json::from_slice::<JwkSet>` on up
//! to 256 KiB) or given inline, then the algorithm pinned to each key (`pinned_algorithm`),
//! the decoding key built, and fixed tokens verified against the set (key lookup by `kid`,
//! the single-key rule, algorithm mismatches). Checks: no panic, no wait; a pinned
//! algorithm is one of RS256, ES256, EdDSA.
#![no_main]

use std::sync::OnceLock;

use ed25519_dalek::{Signer, SigningKey};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use latchkey::auth::subject::{Expect, JwksCache, Keys};
use libfuzzer_sys::fuzz_target;

mod common;

const SEED: [u8; 32] = [9; 32];
const NOW: i64 = 1_800_000_000;

fn cache() -> &'static JwksCache {
    static C: OnceLock<JwksCache> = OnceLock::new();
    C.get_or_init(|| JwksCache::new().unwrap())
}

/// Tokens signed by the Ed25519 key of seed [`SEED`]: with `kid` "s1", "r1", and without one.
fn tokens() -> &'static [String] {
    static T: OnceLock<Vec<String>> = OnceLock::new();
    T.get_or_init(|| {
        let claims = format!(r#"{{"iss":"https://issuer.example","aud":"latchkey","sub":"alice","exp":{}}}"#, NOW + 60);
        [r#"{"alg":"EdDSA","kid":"s1"}"#, r#"{"alg":"EdDSA","kid":"r1"}"#, r#"{"alg":"EdDSA"}"#, r#"{"alg":"RS256","kid":"r1"}"#]
            .iter()
            .map(|h| {
                let mut t = format!("{}.{}", common::b64url(h.as_bytes()), common::b64url(claims.as_bytes()));
                let sig = SigningKey::from_bytes(&SEED).sign(t.as_bytes());
                t.push('.');
                t.push_str(&common::b64url(&sig.to_bytes()));
                t
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(set) = serde_json::from_slice::<JwkSet>(data) else { return };
    for k in &set.keys {
        if let Some(alg) = latchkey::fuzzing::pinned_algorithm(k) {
            assert!(matches!(alg, Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA));
            let _ = DecodingKey::from_jwk(k);
        }
    }
    let expect =
        Expect { issuer: "https://issuer.example", keys: Keys::Inline(&set), audience: "latchkey", tenant_claim: None, roles_claim: None };
    for t in tokens() {
        let _ = common::block_on(cache().verify(&expect, t, NOW));
    }
});
