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
mod strict;

pub use connection::*;
pub use credential::*;
pub use ids::*;
pub use state::*;
pub use strict::from_value_strict;

/// Input that does not describe a valid value; the message says what is wrong and is
/// safe to show to the caller (it never contains a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError(msg.into()))
}

/// serde's messages can quote the offending input (`unknown variant \`sk-live-…\``,
/// `invalid type: string "…"`, `invalid type: integer \`5\``): they read `<what was found>,
/// expected <latchkey's names>`. The input can itself hold quotes, backticks (escaped or
/// not) and the word "expected", so the message is split at its *last* ", expected", and in
/// the part before it everything from the first quote to the last is dropped. Messages
/// without it quote only latchkey's field names (`missing field \`x\``) or nothing (JSON
/// syntax errors, `expected value at …`) unless they are custom ones, whose values are
/// dropped too.
pub fn clean_serde_error(msg: &str) -> String {
    let ours = msg.starts_with("missing field") || msg.starts_with("duplicate field") || msg.starts_with("expected");
    let (input, names) = match msg.rfind(", expected") {
        Some(i) => msg.split_at(i),
        None if ours => ("", msg),
        None => (msg, ""),
    };
    let mut out = String::with_capacity(msg.len());
    match (input.find(['"', '`']), input.rfind(['"', '`'])) {
        (Some(first), Some(last)) if last > first => {
            out.push_str(&input[..=first]);
            out.push('…');
            out.push_str(&input[last..]);
        }
        (Some(first), _) => {
            // A lone quote: whatever follows it may be input.
            out.push_str(&input[..=first]);
            out.push('…');
        }
        _ => out.push_str(input),
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
        let e = serde_json::from_str::<CredentialInput>("{").unwrap_err().to_string();
        assert_eq!(clean_serde_error(&e), e, "syntax errors quote no input");
    }

    /// Found by the fuzz targets (fuzz/): values holding a backtick, an escaped quote or the
    /// word "expected" were echoed, since the quotes were paired naively and the message was
    /// split at the first "expected".
    #[test]
    fn serde_errors_do_not_echo_values_holding_quotes_or_expected() {
        let cases: [(&str, &str); 5] = [
            // credential_body: a key with a backtick.
            (r##"{"`pi_k&ey":"#"}"##, "pi_k&ey"),
            // issuer_body: a key holding "expected".
            (r#"{"expectede":""}"#, "expectede"),
            // policy: a string holding an escaped quote.
            (r#""\"subrfix""#, "subrfix"),
            (r#"{"expires_in": "a\"sk-live-0123"}"#, "sk-live"),
            (r#"{"sk-live-0123, expected `x`": 1}"#, "sk-live"),
        ];
        for (body, secret) in cases {
            let e = serde_json::from_str::<CredentialInput>(body).unwrap_err().to_string();
            let clean = clean_serde_error(&e);
            assert!(!clean.contains(secret), "{body}: {clean}");
            assert!(clean.contains("expected"), "{body}: {clean}");
        }
        // connection_spec: a nested key with a backtick.
        let e = NewConnection::from_json(serde_json::json!({"id": "x", "kind": "api_key", "api_key": {"`ssingat": "To"}})).unwrap_err();
        assert!(!e.0.contains("ssingat") && e.0.contains("`header`"), "{e}");
        let e = serde_json::from_str::<CredentialInput>(r#"{"api_key": "k", "sk-live-0123": 1}"#).unwrap_err().to_string();
        assert_eq!(clean_serde_error(&e).split(" at line").next(), Some(
            "unknown field `…`, expected one of `api_key`, `access_token`, `refresh_token`, `expires_in`, `expires_at`, `scope`, `token_type`, `instance_url`"
        ));
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
