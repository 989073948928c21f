//! Trusted-issuer bodies (`POST /v1/admin/issuers`, read as `NewIssuer` from the body bytes,
//! with an inline `jwks` or a `jwks_uri`). Checks: no panic; an accepted issuer satisfies the
//! documented rules and yields what token verification needs; errors, cleaned as the API
//! cleans them, never echo input.
#![no_main]

use latchkey::auth::subject::{owner_prefix, valid_subject_prefix, NewIssuer};
use latchkey::model::clean_serde_error;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

mod common;

fuzz_target!(|data: &[u8]| {
    let body = serde_json::from_slice::<Value>(data).unwrap_or(Value::Null);
    match serde_json::from_slice::<NewIssuer>(data) {
        Ok(n) => {
            let c = &n.config;
            assert!(valid_subject_prefix(&c.subject_prefix));
            assert_eq!(owner_prefix(&c.owner_id("x")), Some(c.subject_prefix.as_str()));
            assert_eq!(c.local_id(&c.owner_id("a:b")), Some("a:b"));
            assert!(c.expect().is_some(), "an accepted issuer names its keys");
            assert!(c.jwks.as_ref().is_none_or(|s| !s.keys.is_empty()));
            assert!(c.jwks.as_ref().is_none_or(|s| s.keys.iter().all(|k| latchkey::fuzzing::pinned_algorithm(k).is_some())));
            assert_eq!(c.owner_proof.as_ref().is_some_and(|p| p.client_secret_set), n.proof_client_secret.is_some());
            let _ = serde_json::to_value(c).unwrap();
        }
        Err(e) => {
            let reparse = |v: &Value| serde_json::from_value::<NewIssuer>(v.clone()).err().map(|e| clean_serde_error(&e.to_string()));
            common::assert_no_echo(&clean_serde_error(&e.to_string()), &body, reparse, |_| false)
        }
    }
});
