//! latchkey's agent tokens (`Authorization: Bearer …` on every agent route):
//! `TokenService::verify` and `verify_claims`. The first byte picks the mode:
//! - even: the rest is the token as presented (forgeries: header, `alg`, `kid`, base64,
//!   signature length);
//! - odd: the rest is a payload (or `header 0xFF payload`) that the target signs with the
//!   service's own key, so claims parsing and the time checks behind the signature are reached.
//!
//! Checks: no panic; an accepted token names our issuer and audience and is within its
//! lifetime; verifying twice (the cached path) answers the same.
#![no_main]

use std::sync::OnceLock;

use ed25519_dalek::{Signer, SigningKey};
use latchkey::auth::tokens::{KeyPair, TokenService, LEEWAY};
use libfuzzer_sys::fuzz_target;

mod common;

const URL: &str = "http://vault.test";
const SEED: [u8; 32] = [7; 32];
const NOW: i64 = 1_800_000_000;

fn service() -> &'static TokenService {
    static S: OnceLock<TokenService> = OnceLock::new();
    S.get_or_init(|| TokenService::new(URL.into(), vec![KeyPair::from_seed("k1".into(), &SEED)]))
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
            None => signed(br#"{"alg":"EdDSA","typ":"JWT","kid":"k1"}"#, rest),
        }
    };
    let full = service().verify_claims(&token, NOW);
    if let Ok(c) = &full {
        assert_eq!((c.iss.as_str(), c.aud.as_str()), (URL, URL));
        assert!(c.exp.saturating_add(LEEWAY) > NOW && c.nbf.saturating_sub(LEEWAY) <= NOW, "accepted outside its lifetime");
    }
    let first = service().verify(&token, NOW);
    assert_eq!(first.as_ref().map(|v| v.principal.clone()).ok(), full.as_ref().map(|c| c.principal()).ok(), "the cache keeps what was verified");
    let second = service().verify(&token, NOW);
    assert_eq!(first.map(|v| (*v).clone()), second.map(|v| (*v).clone()), "the cached path answers alike");
});
