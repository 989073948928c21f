//! Agent identity: latchkey's own EdDSA agent tokens ([`tokens`]) and verification of
//! subject tokens from trusted issuers for RFC 8693 token exchange ([`subject`]).
//! Client secrets of agents are argon2id hashes ([`secrets`]).

pub mod secrets;
pub mod subject;
pub mod tokens;

pub use tokens::{AgentClaims, TokenError, TokenService};

/// Base64url without padding (JOSE).
pub(crate) fn b64url(data: &[u8]) -> String {
    use base64ct::{Base64UrlUnpadded, Encoding};
    Base64UrlUnpadded::encode_string(data)
}

pub(crate) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    use base64ct::{Base64UrlUnpadded, Encoding};
    Base64UrlUnpadded::decode_vec(s).ok()
}
