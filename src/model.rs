//! Validated domain types, parsed once at the edge (HTTP or CLI). Code past the edge
//! receives these types and never re-validates strings.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Input that does not describe a valid value; the message says what is wrong and is
/// safe to show to the caller (it never contains a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError(msg.into()))
}

/// Shortens untrusted input for use in an error message.
fn preview(s: &str) -> String {
    let mut p: String = s.chars().take(40).filter(|c| !c.is_control()).collect();
    if s.chars().count() > 40 {
        p.push('…');
    }
    p
}

/// A connection id: `^[a-z0-9][a-z0-9._-]{0,62}$`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectionId(String);

impl TryFrom<String> for ConnectionId {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ConnectionId::parse(&s)
    }
}

impl From<ConnectionId> for String {
    fn from(c: ConnectionId) -> String {
        c.0
    }
}

impl ConnectionId {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let b = s.as_bytes();
        let ok = (1..=63).contains(&b.len())
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'));
        if ok {
            Ok(ConnectionId(s.to_owned()))
        } else {
            invalid(format!(
                "invalid connection id '{}': use 1-63 characters from a-z, 0-9, '.', '_', '-', starting with a letter or digit",
                preview(s)
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An agent id (also its OAuth `client_id`): same rule as connection ids.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct AgentId(String);

impl AgentId {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        ConnectionId::parse(s).map(|c| AgentId(c.0)).map_err(|_| {
            ValidationError(format!(
                "invalid agent id '{}': use 1-63 characters from a-z, 0-9, '.', '_', '-', starting with a letter or digit",
                preview(s)
            ))
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnerKind {
    User,
    Tenant,
}

/// Whose credential it is: `user:<id>` or `tenant:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    kind: OwnerKind,
    id: String,
}

impl Owner {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let (kind, id) = match s.split_once(':') {
            Some(("user", id)) => (OwnerKind::User, id),
            Some(("tenant", id)) => (OwnerKind::Tenant, id),
            _ => return invalid(format!("invalid owner '{}': expected 'user:<id>' or 'tenant:<id>'", preview(s))),
        };
        Self::new(kind, id)
    }

    pub fn new(kind: OwnerKind, id: &str) -> Result<Self, ValidationError> {
        let ok = (1..=128).contains(&id.len()) && id.bytes().all(|c| (0x21..=0x7e).contains(&c) && !matches!(c, b'/' | b'?' | b'#' | b'%'));
        if ok {
            Ok(Owner { kind, id: id.to_owned() })
        } else {
            invalid(format!(
                "invalid owner id '{}': use 1-128 printable ASCII characters without '/', '?', '#', '%' or spaces",
                preview(id)
            ))
        }
    }

    pub fn kind(&self) -> OwnerKind {
        self.kind
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match self.kind {
            OwnerKind::User => "user",
            OwnerKind::Tenant => "tenant",
        };
        write!(f, "{k}:{}", self.id)
    }
}

impl Serialize for Owner {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An OAuth scope token (RFC 6749 §3.3: printable ASCII except space, `"` and `\`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(String);

impl Scope {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let ok = (1..=256).contains(&s.len()) && s.bytes().all(|c| c == 0x21 || (0x23..=0x5b).contains(&c) || (0x5d..=0x7e).contains(&c));
        if ok {
            Ok(Scope(s.to_owned()))
        } else {
            invalid(format!("invalid scope '{}'", preview(s)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses a space-separated scope string; empty input gives no scopes.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, ValidationError> {
        let mut out: Vec<Scope> = s.split(' ').filter(|p| !p.is_empty()).map(Scope::parse).collect::<Result<_, _>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl TryFrom<String> for Scope {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Scope::parse(&s)
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> String {
        s.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionKind {
    Oauth2,
    ApiKey,
}

impl ConnectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionKind::Oauth2 => "oauth2",
            ConnectionKind::ApiKey => "api_key",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpointAuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

/// The non-secret configuration of a connection: what is stored as JSON and returned
/// by the API. The client secret is held apart, encrypted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSpec {
    pub id: ConnectionId,
    pub kind: ConnectionKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Spec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeySpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scope_roles: BTreeMap<Scope, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Spec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    pub client_id: String,
    #[serde(default)]
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub token_endpoint_auth_method: TokenEndpointAuthMethod,
    #[serde(default = "yes")]
    pub pkce: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_authorize_params: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub return_to_allowlist: Vec<String>,
    /// The provider's issuer identifier, checked against `iss` on callbacks (RFC 9207);
    /// filled by discovery when `discovery_url` is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Microsoft Entra tenant for the catalog's `{tenant}` URLs (default `common`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    pub header: String,
    #[serde(default = "default_format")]
    pub format: String,
}

fn default_format() -> String {
    "{key}".to_owned()
}

/// A connection as submitted: configuration plus the write-only client secret.
#[derive(Debug)]
pub struct NewConnection {
    pub spec: ConnectionSpec,
    pub client_secret: Option<Secret>,
}

/// Wire form of a connection body; `client_secret` is pulled out before the rest is
/// parsed as a [`ConnectionSpec`].
impl NewConnection {
    /// Parses and validates a connection body (`POST /v1/admin/connections`).
    pub fn from_json(mut value: serde_json::Value) -> Result<Self, ValidationError> {
        let client_secret = take_client_secret(&mut value)?;
        let spec = ConnectionSpec::from_json(value)?;
        if client_secret.is_some() && spec.kind != ConnectionKind::Oauth2 {
            return invalid("client_secret is only valid for oauth2 connections");
        }
        Ok(NewConnection { spec, client_secret })
    }
}

/// Removes `oauth2.client_secret` from a JSON body, as a [`Secret`].
pub fn take_client_secret(value: &mut serde_json::Value) -> Result<Option<Secret>, ValidationError> {
    let Some(oauth2) = value.get_mut("oauth2").and_then(|o| o.as_object_mut()) else {
        return Ok(None);
    };
    match oauth2.remove("client_secret") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if (1..=4096).contains(&s.len()) => Ok(Some(Secret::new(s))),
        Some(_) => invalid("oauth2.client_secret must be a string of 1-4096 characters"),
    }
}

impl ConnectionSpec {
    pub fn from_json(value: serde_json::Value) -> Result<Self, ValidationError> {
        let spec: ConnectionSpec = serde_json::from_value(value).map_err(|e| ValidationError(clean_serde_error(&e.to_string())))?;
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if let Some(n) = &self.display_name {
            if n.is_empty() || n.chars().count() > 200 || n.chars().any(char::is_control) {
                return invalid("display_name must be 1-200 characters without control characters");
            }
        }
        if let Some(p) = &self.provider {
            if crate::oauth::providers::find(p).is_none() {
                return invalid(format!("unknown provider '{}': see `latchkey providers list`", preview(p)));
            }
        }
        for (scope, roles) in &self.scope_roles {
            if roles.is_empty() {
                return invalid(format!("scope_roles.{}: list at least one role", scope.as_str()));
            }
            for r in roles {
                if !(1..=128).contains(&r.len()) || !r.bytes().all(|c| (0x21..=0x7e).contains(&c)) {
                    return invalid(format!("scope_roles.{}: invalid role '{}'", scope.as_str(), preview(r)));
                }
            }
        }
        match (self.kind, &self.oauth2, &self.api_key) {
            (ConnectionKind::Oauth2, Some(o), None) => o.validate(self.provider.is_some()),
            (ConnectionKind::ApiKey, None, Some(a)) => a.validate(),
            (ConnectionKind::Oauth2, _, _) => invalid("an oauth2 connection needs an 'oauth2' object and no 'api_key' object"),
            (ConnectionKind::ApiKey, _, _) => invalid("an api_key connection needs an 'api_key' object and no 'oauth2' object"),
        }
    }
}

impl OAuth2Spec {
    fn validate(&self, has_provider: bool) -> Result<(), ValidationError> {
        if self.client_id.is_empty() || self.client_id.len() > 512 || !self.client_id.bytes().all(|c| (0x20..=0x7e).contains(&c)) {
            return invalid("oauth2.client_id must be 1-512 printable ASCII characters");
        }
        for (name, url) in [
            ("discovery_url", &self.discovery_url),
            ("authorization_endpoint", &self.authorization_endpoint),
            ("token_endpoint", &self.token_endpoint),
            ("revocation_endpoint", &self.revocation_endpoint),
        ] {
            if let Some(u) = url {
                check_url(name, u)?;
            }
        }
        for u in &self.return_to_allowlist {
            check_url("return_to_allowlist", u)?;
        }
        if let Some(i) = &self.issuer {
            check_url("issuer", i)?;
        }
        if let Some(t) = &self.tenant {
            if t.is_empty() || t.len() > 64 || !t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.') {
                return invalid("oauth2.tenant must be a tenant id or domain");
            }
        }
        let explicit = self.authorization_endpoint.is_some() && self.token_endpoint.is_some();
        if !explicit && self.discovery_url.is_none() && !has_provider {
            return invalid("oauth2 needs 'authorization_endpoint' and 'token_endpoint', or 'discovery_url', or a 'provider'");
        }
        const RESERVED: [&str; 7] =
            ["response_type", "client_id", "redirect_uri", "state", "scope", "code_challenge", "code_challenge_method"];
        for (k, v) in &self.extra_authorize_params {
            if RESERVED.contains(&k.as_str()) {
                return invalid(format!("extra_authorize_params may not set '{k}'"));
            }
            if k.is_empty() || k.len() > 128 || v.len() > 1024 || k.chars().chain(v.chars()).any(char::is_control) {
                return invalid("extra_authorize_params: keys 1-128 and values up to 1024 characters, no control characters");
            }
        }
        Ok(())
    }
}

/// URLs must be absolute https; plain http only for loopback (local providers, tests).
fn check_url(field: &str, raw: &str) -> Result<(), ValidationError> {
    let url = url::Url::parse(raw).map_err(|_| ValidationError(format!("oauth2.{field}: not an absolute URL")))?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => invalid(format!("oauth2.{field}: must use https (http only for localhost)")),
    }
}

impl ApiKeySpec {
    fn validate(&self) -> Result<(), ValidationError> {
        let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
        if self.header.is_empty() || self.header.len() > 128 || !self.header.bytes().all(token) {
            return invalid("api_key.header must be a valid HTTP header name");
        }
        if self.format.matches("{key}").count() != 1 || self.format.len() > 512 || !self.format.bytes().all(|c| (0x20..=0x7e).contains(&c))
        {
            return invalid("api_key.format must contain '{key}' exactly once, in printable ASCII (e.g. 'Bearer {key}')");
        }
        Ok(())
    }
}

/// Credential body (`PUT …/credentials/{owner}`): an API key, or an OAuth token import.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialInput {
    pub api_key: Option<Secret>,
    pub access_token: Option<Secret>,
    pub refresh_token: Option<Secret>,
    pub expires_in: Option<i64>,
    pub expires_at: Option<i64>,
    pub scope: Option<String>,
    pub token_type: Option<String>,
    /// Salesforce-style API host returned with the token.
    pub instance_url: Option<String>,
}

/// A validated credential to store.
#[derive(Debug)]
pub enum CredentialSecret {
    ApiKey(Secret),
    OAuth2 {
        access_token: Secret,
        refresh_token: Option<Secret>,
        expires_at: Option<i64>,
        scopes: Vec<Scope>,
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
                    (None, Some(t)) if t > now => Some(t),
                    (None, Some(_)) => return invalid("expires_at (unix seconds) is in the past"),
                    (None, None) => None,
                };
                let scopes = Scope::parse_list(self.scope.as_deref().unwrap_or(""))?;
                let token_type = self.token_type.unwrap_or_else(|| "Bearer".to_owned());
                if token_type.is_empty()
                    || token_type.len() > 32
                    || !token_type.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
                {
                    return invalid("token_type must be a short word such as 'Bearer'");
                }
                if let Some(u) = &self.instance_url {
                    if !url::Url::parse(u).is_ok_and(|u| u.scheme() == "https") || u.len() > 512 {
                        return invalid("instance_url must be an https URL");
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
    use serde_json::json;

    #[test]
    fn connection_ids() {
        for ok in ["a", "google-calendar", "crm.v2", "0_x", &"a".repeat(63)] {
            assert!(ConnectionId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "A", "-a", ".a", "a/b", "a b", "é", &"a".repeat(64), &"a".repeat(5000)] {
            assert!(ConnectionId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn owners() {
        for ok in ["user:alice", "tenant:acme", "user:auth0|abc123", "user:a@b.example", &format!("user:{}", "x".repeat(128))] {
            assert_eq!(Owner::parse(ok).unwrap().to_string(), ok);
        }
        for bad in [
            "alice",
            "group:x",
            "user:",
            "user:a b",
            "user:a/b",
            "user:a?b",
            "user:a#b",
            "user:a%2F",
            "user:\u{7f}",
            &format!("user:{}", "x".repeat(129)),
        ] {
            assert!(Owner::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes() {
        assert_eq!(Scope::parse_list("b a  a").unwrap(), vec![Scope::parse("a").unwrap(), Scope::parse("b").unwrap()]);
        assert!(Scope::parse("a\"b").is_err());
        assert!(Scope::parse("https://www.googleapis.com/auth/calendar.readonly").is_ok());
    }

    #[test]
    fn connection_bodies() {
        let c = NewConnection::from_json(
            json!({"id": "internal-reporting", "kind": "api_key", "api_key": {"header": "X-API-Key", "format": "{key}"}}),
        )
        .unwrap();
        assert_eq!(c.spec.kind, ConnectionKind::ApiKey);
        let c = NewConnection::from_json(json!({"id": "crm", "kind": "oauth2", "oauth2": {
            "authorization_endpoint": "https://crm.example/authorize", "token_endpoint": "https://crm.example/token",
            "client_id": "abc", "client_secret": "shh", "scopes": ["crm:read"], "token_endpoint_auth_method": "client_secret_post"},
            "scope_roles": {"crm:write": ["sales-admin"]}}))
        .unwrap();
        assert_eq!(c.client_secret.unwrap().expose(), "shh");
        assert!(c.spec.oauth2.unwrap().pkce);
        let bad = [
            json!({"id": "x", "kind": "api_key"}),
            json!({"id": "x", "kind": "api_key", "api_key": {"header": "X Bad"}}),
            json!({"id": "x", "kind": "api_key", "api_key": {"header": "X", "format": "no placeholder"}}),
            json!({"id": "x", "kind": "api_key", "api_key": {"header": "X"}, "extra": 1}),
            json!({"id": "x", "kind": "oauth2", "oauth2": {"client_id": "a"}}),
            json!({"id": "x", "kind": "oauth2", "oauth2": {"client_id": "a", "authorization_endpoint": "http://evil.example/a", "token_endpoint": "https://t.example/t"}}),
            json!({"id": "x", "kind": "oauth2", "oauth2": {"client_id": "a", "discovery_url": "https://a.example", "extra_authorize_params": {"state": "x"}}}),
            json!({"id": "x", "kind": "api_key", "api_key": {"header": "X"}, "oauth2": {"client_id": "a", "client_secret": "s"}}),
            json!({"id": "../x", "kind": "api_key", "api_key": {"header": "X"}}),
        ];
        for b in bad {
            assert!(NewConnection::from_json(b.clone()).is_err(), "{b}");
        }
    }

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
                assert_eq!(scopes.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        let t: CredentialInput = serde_json::from_value(json!({"access_token": "a"})).unwrap();
        assert!(t.into_secret(ConnectionKind::ApiKey, now).is_err());
        let t: CredentialInput = serde_json::from_value(json!({"access_token": "a", "expires_at": 10})).unwrap();
        assert!(t.into_secret(ConnectionKind::Oauth2, now).is_err());
        assert!(serde_json::from_value::<CredentialInput>(json!({"apikey": "a"})).is_err());
    }

    #[test]
    fn serde_errors_do_not_echo_values() {
        let e = serde_json::from_str::<CredentialInput>(r#"{"expires_in": "sekrit"}"#).unwrap_err().to_string();
        assert!(!clean_serde_error(&e).contains("sekrit"), "{}", clean_serde_error(&e));
    }
}
