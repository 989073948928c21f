//! Credential bodies (`PUT …/credentials/{owner}`: an API key or an OAuth token import), from
//! the bytes of a request body, validated for both connection kinds. Checks: no panic; what
//! is accepted is within the documented bounds; errors (serde's, cleaned as the API cleans
//! them, and latchkey's) never echo input.
#![no_main]

use latchkey::model::{clean_serde_error, ConnectionKind, CredentialInput, CredentialSecret};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

mod common;

const NOW: i64 = 1_800_000_000;

/// An https URL as written: no spaces or control characters the URL parser would drop.
fn whole_https(u: &str) -> bool {
    u.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("https:")) && !u.chars().any(|c| c.is_whitespace() || c.is_control())
}

fuzz_target!(|data: &[u8]| {
    let body = serde_json::from_slice::<Value>(data).unwrap_or(Value::Null);
    let no_echo = |msg: &str, reparse: &dyn Fn(&Value) -> Option<String>| common::assert_no_echo(msg, &body, reparse, |_| false);
    let serde_error = |v: &Value| serde_json::from_slice::<CredentialInput>(&serde_json::to_vec(v).unwrap()).err();
    for kind in [ConnectionKind::ApiKey, ConnectionKind::Oauth2] {
        // As actix's JSON extractor reads it: straight from the bytes.
        let input: CredentialInput = match serde_json::from_slice(data) {
            Ok(i) => i,
            Err(e) => return no_echo(&clean_serde_error(&e.to_string()), &|v| serde_error(v).map(|e| clean_serde_error(&e.to_string()))),
        };
        match input.into_secret(kind, NOW) {
            Ok(CredentialSecret::ApiKey(k)) => {
                assert_eq!(kind, ConnectionKind::ApiKey);
                assert!((1..=16 * 1024).contains(&k.len()));
            }
            Ok(CredentialSecret::OAuth2 { access_token, refresh_token, expires_at, scopes, token_type, instance_url }) => {
                assert_eq!(kind, ConnectionKind::Oauth2);
                assert!((1..=16 * 1024).contains(&access_token.len()));
                assert!(refresh_token.is_none_or(|r| (1..=16 * 1024).contains(&r.len())));
                assert!(expires_at.is_none_or(|t| t > NOW));
                assert!((1..=32).contains(&token_type.len()));
                assert!(instance_url.is_none_or(|u| u.len() <= 512 && whole_https(&u)), "instance_url not a whole https URL");
                let _ = scopes.joined();
            }
            Err(e) => no_echo(&e.0, &|v| {
                serde_json::from_value::<CredentialInput>(v.clone()).ok().and_then(|i| i.into_secret(kind, NOW).err()).map(|e| e.0)
            }),
        }
    }
});
