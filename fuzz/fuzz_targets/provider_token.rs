//! Token endpoint answers (code exchange and refresh): the JSON body and HTTP status as
//! `oauth::client` reads them, with each catalog provider's response shape and dead-grant
//! rules. Input: status (2 bytes, big-endian), provider (1 byte: 0 a custom provider, else a
//! catalog entry), body. Checks: no panic; a token set comes only from a 2xx answer and is
//! within bounds; error codes are sanitised.
#![no_main]

use latchkey::model::providers::CATALOG;
use latchkey::oauth::client::{ProviderError, MAX_EXPIRES_IN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [s0, s1, p, body @ ..] = data else { return };
    let status = u16::from_be_bytes([*s0, *s1]);
    let provider = match *p as usize {
        0 => None,
        i => Some(CATALOG[(i - 1) % CATALOG.len()].name),
    };
    match latchkey::fuzzing::provider_token_response(body, status, provider) {
        Ok(t) => {
            assert!((200..300).contains(&status), "a token set from HTTP {status}");
            assert!(!t.access_token.is_empty());
            assert_eq!(t.token_type, "Bearer");
            assert!(t.expires_in.is_none_or(|e| (1..=MAX_EXPIRES_IN).contains(&e)));
            assert!(t.refresh_token.is_none_or(|r| !r.is_empty()));
            assert!(t.id_token.is_none_or(|i| !i.is_empty() && i.len() <= 16 * 1024));
            assert!(
                t.instance_url.is_none_or(|u| u.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("https:"))
                    && !u.chars().any(|c| c.is_whitespace() || c.is_control())),
                "instance_url not a whole https URL"
            );
        }
        Err(ProviderError::Rejected { code }) => {
            assert!(code.len() <= 64 && code.bytes().all(|c| c.is_ascii_graphic()), "unsanitised code {code:?}");
        }
        Err(ProviderError::ScopeRefused) => {}
        Err(ProviderError::Transient { reason, .. }) => assert!(reason.len() <= 512, "reason of {} bytes", reason.len()),
    }
});
