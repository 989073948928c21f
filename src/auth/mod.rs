//! Agent identity: latchkey's own EdDSA agent tokens ([`tokens`]) and verification of
//! subject tokens from trusted issuers for RFC 8693 token exchange ([`subject`]).
//! Client secrets of agents are argon2id hashes ([`secrets`]).

pub mod secrets;
pub mod subject;
pub mod tokens;

pub use tokens::{AgentClaims, TokenError, TokenService};
