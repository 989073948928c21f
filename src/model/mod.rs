//! The domain model, the bottom layer: validated types parsed once at the edge (HTTP or
//! CLI), so code past the edge never re-validates strings; and the OAuth data every layer
//! shares (token sets, PKCE pairs, the refresh schedule, the provider catalog).
//!
//! Imports nothing above itself: only `crypto` (randomness), `secret` and `time`.

mod connection;
mod credential;
mod ids;
pub mod oauth;
pub mod providers;
mod state;

pub use connection::*;
pub use credential::*;
pub use ids::*;
pub use state::*;

/// Input that does not describe a valid value; the message says what is wrong and is
/// safe to show to the caller (it never contains a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError(msg.into()))
}

/// serde's messages can quote the offending input (`unknown variant \`sk-live-…\``,
/// `invalid type: string "…"`, `invalid type: integer \`5\``): drop every quoted value
/// before "expected", and keep the quoted names after it, which are latchkey's own. Messages
/// without "expected" quote only latchkey's field names (`missing field \`x\``) unless
/// they are custom ones, whose values are dropped too.
pub fn clean_serde_error(msg: &str) -> String {
    let ours = msg.starts_with("missing field") || msg.starts_with("duplicate field");
    let (input, names) = match msg.find("expected") {
        Some(i) => msg.split_at(i),
        None if ours => ("", msg),
        None => (msg, ""),
    };
    let mut out = String::with_capacity(msg.len());
    let mut open: Option<char> = None;
    for c in input.chars() {
        match (open, c) {
            (None, '"' | '`') => {
                open = Some(c);
                out.push(c);
                out.push('…');
            }
            (Some(q), c) if c == q => {
                open = None;
                out.push(c);
            }
            (Some(_), _) => {}
            (None, c) => out.push(c),
        }
    }
    if open.is_some() {
        // An unterminated quote swallowed the rest of the input part; names follow.
        out.push(' ');
    }
    out.push_str(names);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_errors_do_not_echo_values() {
        let e = serde_json::from_str::<CredentialInput>(r#"{"expires_in": "sekrit"}"#).unwrap_err().to_string();
        assert!(!clean_serde_error(&e).contains("sekrit"), "{}", clean_serde_error(&e));
        let e = serde_json::from_str::<CredentialInput>(r#"{"sk-live-field": 1}"#).unwrap_err().to_string();
        let clean = clean_serde_error(&e);
        assert!(!clean.contains("sk-live") && clean.contains("`access_token`"), "{clean}");
        let e = serde_json::from_str::<crate::model::ScopeEnforcement>(r#""sk-live-variant""#).unwrap_err().to_string();
        let clean = clean_serde_error(&e);
        assert!(!clean.contains("sk-live") && clean.contains("`strict`"), "{clean}");
        let e = serde_json::from_str::<CredentialInput>(r#"{"api_key": 12345678}"#).unwrap_err().to_string();
        assert!(!clean_serde_error(&e).contains("12345678"), "{}", clean_serde_error(&e));
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Required {
            owner: String,
        }
        let e = serde_json::from_str::<Required>(r#"{}"#).unwrap_err().to_string();
        assert_eq!(clean_serde_error(&e), e, "names of missing fields are latchkey's own");
    }

    #[test]
    fn parse_errors_do_not_echo_values() {
        let errors = [
            ConnectionId::parse("SK-LIVE-0123").map(|_| ()).unwrap_err(),
            AgentId::parse("SK-LIVE-0123").map(|_| ()).unwrap_err(),
            Owner::parse("SK-LIVE-0123").map(|_| ()).unwrap_err(),
            Owner::parse("user:SK-LIVE 0123").map(|_| ()).unwrap_err(),
            Scope::parse("SK-LIVE 0123").map(|_| ()).unwrap_err(),
        ];
        for e in errors {
            assert!(!e.to_string().contains("SK-LIVE"), "{e}");
        }
    }
}
