//! Credential bodies (API keys and OAuth token imports) and the validated secret to store.

use serde::Deserialize;

use super::{invalid, ConnectionKind, Scope, ValidationError};
use crate::secret::Secret;

/// Credential body (`PUT …/credentials/{owner}`): an API key, or an OAuth token import.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialInput {
    pub api_key: Option<Secret>,
    pub access_token: Option<Secret>,
    pub refresh_token: Option<Secret>,
    #[serde(default, deserialize_with = "whole_number")]
    pub expires_in: Option<i64>,
    #[serde(default, deserialize_with = "whole_number")]
    pub expires_at: Option<i64>,
    pub scope: Option<String>,
    pub token_type: Option<String>,
    /// Salesforce-style API host returned with the token.
    pub instance_url: Option<String>,
}

/// The latest `expires_at` accepted: the end of year 9999 (timestamps print as RFC 3339).
pub const MAX_TIMESTAMP: i64 = crate::time::LATEST;

/// An optional integer field that also accepts JSON numbers written with a zero fraction
/// (`41.0` is the integer 41 to JSON Schema, and to many clients).
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        // Below 2^53 every whole f64 is exactly an integer.
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        _ => Err(D::Error::custom("expected a whole number")),
    }
}

/// [`whole_number`], non-negative.
pub fn whole_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    whole_number(d)?.map(|n| u64::try_from(n).map_err(|_| D::Error::custom("expected a non-negative whole number"))).transpose()
}

/// The scopes an OAuth credential holds. `Unknown` when nobody said (a token imported
/// without `scope`) or what was said could not be parsed: scope enforcement must then
/// assume the credential holds more than any grant allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldScopes {
    Known(Vec<Scope>),
    Unknown,
}

impl HeldScopes {
    /// `Known` scopes as a slice; `None` when unknown.
    pub fn known(&self) -> Option<&[Scope]> {
        match self {
            HeldScopes::Known(s) => Some(s),
            HeldScopes::Unknown => None,
        }
    }

    /// The space-separated form (empty when unknown or none).
    pub fn joined(&self) -> String {
        self.known().unwrap_or(&[]).iter().map(Scope::as_str).collect::<Vec<_>>().join(" ")
    }
}

/// A validated credential to store.
#[derive(Debug)]
pub enum CredentialSecret {
    ApiKey(Secret),
    OAuth2 {
        access_token: Secret,
        refresh_token: Option<Secret>,
        expires_at: Option<i64>,
        scopes: HeldScopes,
        token_type: String,
        instance_url: Option<String>,
    },
}

const MAX_SECRET_LEN: usize = 16 * 1024;

impl CredentialInput {
    /// A body holding only an API key.
    pub fn api_key(key: Secret) -> Self {
        CredentialInput {
            api_key: Some(key),
            access_token: None,
            refresh_token: None,
            expires_in: None,
            expires_at: None,
            scope: None,
            token_type: None,
            instance_url: None,
        }
    }

    /// Validates the body against the connection's kind; `now` resolves `expires_in`.
    pub fn into_secret(self, kind: ConnectionKind, now: i64) -> Result<CredentialSecret, ValidationError> {
        let check = |name: &str, s: &Secret| {
            if s.is_empty() || s.len() > MAX_SECRET_LEN {
                invalid(format!("{name} must be 1-{MAX_SECRET_LEN} bytes"))
            } else {
                Ok(())
            }
        };
        match kind {
            ConnectionKind::ApiKey => {
                let oauth_fields = self.instance_url.is_some()
                    || self.access_token.is_some()
                    || self.refresh_token.is_some()
                    || self.expires_in.is_some()
                    || self.expires_at.is_some()
                    || self.scope.is_some()
                    || self.token_type.is_some();
                match self.api_key {
                    Some(k) if !oauth_fields => {
                        check("api_key", &k)?;
                        Ok(CredentialSecret::ApiKey(k))
                    }
                    _ => invalid("an api_key connection takes exactly {\"api_key\": \"...\"}"),
                }
            }
            ConnectionKind::Oauth2 => {
                if self.api_key.is_some() {
                    return invalid("an oauth2 connection takes an OAuth token import, not 'api_key'");
                }
                let Some(access_token) = self.access_token else {
                    return invalid("access_token is required for an oauth2 credential");
                };
                check("access_token", &access_token)?;
                if let Some(r) = &self.refresh_token {
                    check("refresh_token", r)?;
                }
                let expires_at = match (self.expires_in, self.expires_at) {
                    (Some(_), Some(_)) => return invalid("give expires_in or expires_at, not both"),
                    (Some(s), None) if (1..=10 * 365 * 86_400).contains(&s) => Some(now + s),
                    (Some(_), None) => return invalid("expires_in must be between 1 second and 10 years"),
                    (None, Some(t)) if t > MAX_TIMESTAMP => return invalid("expires_at (unix seconds) must be before the year 10000"),
                    (None, Some(t)) if t > now => Some(t),
                    (None, Some(_)) => return invalid("expires_at (unix seconds) is in the past"),
                    (None, None) => None,
                };
                let scopes = match self.scope.as_deref() {
                    Some(s) => HeldScopes::Known(Scope::parse_list(s)?),
                    None => HeldScopes::Unknown,
                };
                let token_type = self.token_type.unwrap_or_else(|| "Bearer".to_owned());
                if token_type.is_empty()
                    || token_type.len() > 32
                    || !token_type.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
                {
                    return invalid("token_type must be a short word such as 'Bearer'");
                }
                if let Some(u) = &self.instance_url {
                    // As written and canonical: the URL parser would quietly drop surrounding
                    // spaces, which would then be stored; no user or password in it.
                    if !super::web_url(u).is_ok_and(|u| u.scheme() == "https") || u.len() > 512 {
                        return invalid("instance_url must be an https URL in canonical form, at most 512 bytes");
                    }
                }
                Ok(CredentialSecret::OAuth2 {
                    access_token,
                    refresh_token: self.refresh_token,
                    expires_at,
                    scopes,
                    token_type,
                    instance_url: self.instance_url,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use serde_json::json;

    #[test]
    fn credential_bodies() {
        let now = 1_000;
        let k = CredentialInput::api_key(Secret::new("k".into()));
        assert!(matches!(k.into_secret(ConnectionKind::ApiKey, now).unwrap(), CredentialSecret::ApiKey(_)));
        let t: CredentialInput =
            serde_json::from_value(json!({"access_token": "a", "refresh_token": "r", "expires_in": 3600, "scope": "x y"})).unwrap();
        match t.into_secret(ConnectionKind::Oauth2, now).unwrap() {
            CredentialSecret::OAuth2 { expires_at, scopes, .. } => {
                assert_eq!(expires_at, Some(4_600));
                assert_eq!(scopes.known().unwrap().len(), 2);
            }
            other => panic!("{other:?}"),
        }
        let t: CredentialInput = serde_json::from_value(json!({"access_token": "a"})).unwrap();
        assert!(t.into_secret(ConnectionKind::ApiKey, now).is_err());
        let t: CredentialInput = serde_json::from_value(json!({"access_token": "a", "expires_at": 10})).unwrap();
        assert!(t.into_secret(ConnectionKind::Oauth2, now).is_err());
        assert!(serde_json::from_value::<CredentialInput>(json!({"apikey": "a"})).is_err());
    }

    /// The gap the `provider_token` fuzz target found in token answers, here in imports: an
    /// `instance_url` the URL parser accepts only after trimming is refused, not stored.
    #[test]
    fn instance_urls_are_whole_https_urls() {
        for bad in [" https:/n", "https://na1.example\n", "https://na\t1.example"] {
            let t: CredentialInput = serde_json::from_value(json!({"access_token": "a", "instance_url": bad})).unwrap();
            assert!(t.into_secret(ConnectionKind::Oauth2, 1_000).is_err(), "{bad:?}");
        }
        let t: CredentialInput = serde_json::from_value(json!({"access_token": "a", "instance_url": "https://na1.example"})).unwrap();
        assert!(t.into_secret(ConnectionKind::Oauth2, 1_000).is_ok());
    }
}
