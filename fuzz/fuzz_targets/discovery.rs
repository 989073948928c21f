//! OIDC discovery / RFC 8414 metadata documents, as `oauth::client::discover` reads them
//! after the fetch. Input: the expected issuer (up to the first 0xFF byte), then the body.
//! Checks: no panic; an accepted document names the expected issuer (up to trailing slashes).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (expected, body) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"https://issuer.example"[..], data),
    };
    let Ok(expected) = std::str::from_utf8(expected) else { return };
    if let Ok(d) = latchkey::fuzzing::discovery_document(body, expected) {
        let issuer = d.issuer.expect("discovery always states the issuer");
        assert_eq!(issuer.trim_end_matches('/'), expected.trim_end_matches('/'));
    }
});
