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

/// Shortens untrusted input for use in an error message.
pub(crate) fn preview(s: &str) -> String {
    let mut p: String = s.chars().take(40).filter(|c| !c.is_control()).collect();
    if s.chars().count() > 40 {
        p.push('…');
    }
    p
}

/// serde's messages can quote the offending input; keep the field-level part only.
pub fn clean_serde_error(msg: &str) -> String {
    // serde_json reports e.g. "unknown field `x`, expected one of ..." or
    // "invalid type: string \"...\", expected u64 at line 1 column 9". Strip quoted values.
    let mut out = String::with_capacity(msg.len());
    let mut in_quote = false;
    for c in msg.chars() {
        if c == '"' {
            if !in_quote {
                out.push_str("\"…");
            }
            in_quote = !in_quote;
            if !in_quote {
                out.push('"');
            }
            continue;
        }
        if !in_quote {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_errors_do_not_echo_values() {
        let e = serde_json::from_str::<CredentialInput>(r#"{"expires_in": "sekrit"}"#).unwrap_err().to_string();
        assert!(!clean_serde_error(&e).contains("sekrit"), "{}", clean_serde_error(&e));
    }
}
