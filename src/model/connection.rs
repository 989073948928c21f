//! Connections: the non-secret spec (stored as JSON, returned by the API) and the
//! write-only client secret, parsed and validated at the edge.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{clean_serde_error, invalid, ConnectionId, Scope, ValidationError};
use crate::secret::Secret;

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

impl FromStr for ConnectionKind {
    type Err = super::UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "oauth2" => Ok(ConnectionKind::Oauth2),
            "api_key" => Ok(ConnectionKind::ApiKey),
            other => Err(super::UnknownState { what: "connection kind", value: other.chars().take(32).collect() }),
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
    /// Where proxy mode sends requests, and within what limits. Absent: the catalog
    /// provider's API root, if it has one; otherwise the connection cannot be proxied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
}

/// Proxy mode for a connection (`ANY /v1/proxy/{connection}/{path}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {
    /// The API root requests go below: https (plain http only for loopback). For
    /// Salesforce-like providers it may start with `{instance_url}`, the credential's own host.
    pub base_url: String,
    /// Methods the proxy forwards (default: all but CONNECT and TRACE, which never pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_methods: Option<Vec<String>>,
    /// Paths below `base_url` the proxy forwards: `/`-separated patterns where `*` is one
    /// segment and a final `**` any rest (default: every path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_paths: Option<Vec<String>>,
    /// Seconds for the whole upstream exchange, bodies included (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "super::whole_u64")]
    pub timeout: Option<u64>,
    /// Largest request body and largest response body, in bytes (default 10 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "super::whole_u64")]
    pub max_body: Option<u64>,
    /// Allows upstream addresses that are not public (private, loopback, link-local,
    /// metadata). Off by default: proxy mode is not a way into the vault's network.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_private: bool,
    /// Passes the upstream's `Set-Cookie` to the agent (dropped by default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pass_cookies: bool,
}

/// Methods a proxy may forward.
pub const PROXY_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// Default and largest proxy time limit, in seconds.
pub const PROXY_TIMEOUT: (u64, u64) = (30, 300);
/// Default and largest proxy body limit, in bytes.
pub const PROXY_MAX_BODY: (u64, u64) = (10 * 1024 * 1024, 1024 * 1024 * 1024);
/// The placeholder for the credential's `instance_url` at the start of a `base_url`.
pub const INSTANCE_URL: &str = "{instance_url}";

impl ProxySpec {
    /// The proxy settings of a connection: its own, or its catalog provider's API root.
    pub fn of(spec: &ConnectionSpec) -> Option<std::borrow::Cow<'_, ProxySpec>> {
        if let Some(p) = &spec.proxy {
            return Some(std::borrow::Cow::Borrowed(p));
        }
        let base = spec.provider.as_deref().and_then(super::providers::find)?.api_base?;
        Some(std::borrow::Cow::Owned(ProxySpec {
            base_url: base.to_owned(),
            allowed_methods: None,
            allowed_paths: None,
            timeout: None,
            max_body: None,
            allow_private: false,
            pass_cookies: false,
        }))
    }

    pub fn timeout_secs(&self) -> u64 {
        self.timeout.unwrap_or(PROXY_TIMEOUT.0)
    }

    pub fn max_body_bytes(&self) -> u64 {
        self.max_body.unwrap_or(PROXY_MAX_BODY.0)
    }

    pub fn allows_method(&self, method: &str) -> bool {
        PROXY_METHODS.contains(&method) && self.allowed_methods.as_ref().is_none_or(|m| m.iter().any(|a| a == method))
    }

    /// The base URL for a credential (`instance_url` filled in), checked like a configured one.
    pub fn base_for(&self, instance_url: Option<&str>) -> Result<url::Url, ValidationError> {
        let raw = match self.base_url.strip_prefix(INSTANCE_URL) {
            Some(rest) => {
                let instance = instance_url.ok_or_else(|| ValidationError("the credential has no instance_url to proxy to".into()))?;
                format!("{}{rest}", instance.trim_end_matches('/'))
            }
            None => self.base_url.clone(),
        };
        check_proxy_base(&raw)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        match self.base_url.strip_prefix(INSTANCE_URL) {
            Some(rest) => {
                if !rest.is_empty() && !rest.starts_with('/') {
                    return invalid("proxy.base_url: '{instance_url}' is followed by a path starting with '/', or nothing");
                }
                check_proxy_base(&format!("https://instance.example{rest}"))?;
            }
            None => {
                check_proxy_base(&self.base_url)?;
            }
        }
        if let Some(m) = &self.allowed_methods {
            if m.is_empty() || m.iter().any(|x| !PROXY_METHODS.contains(&x.as_str())) {
                return invalid(format!("proxy.allowed_methods: a non-empty list of {}", PROXY_METHODS.join(", ")));
            }
        }
        if let Some(paths) = &self.allowed_paths {
            if paths.is_empty() || paths.len() > 64 {
                return invalid("proxy.allowed_paths: 1-64 patterns");
            }
            for p in paths {
                let ok = p.starts_with('/')
                    && p.len() <= 512
                    && p.bytes().all(|c| (0x21..=0x7e).contains(&c) && c != b'?' && c != b'#' && c != b'\\')
                    && !p.split('/').skip(1).any(|s| s == "." || s == "..")
                    && !p.split('/').rev().skip(1).any(|s| s == "**");
                if !ok {
                    return invalid("proxy.allowed_paths: patterns start with '/', use '*' for one segment and a final '**' for any rest");
                }
            }
        }
        if let Some(t) = self.timeout {
            if !(1..=PROXY_TIMEOUT.1).contains(&t) {
                return invalid(format!("proxy.timeout must be between 1 and {} seconds", PROXY_TIMEOUT.1));
            }
        }
        if let Some(b) = self.max_body {
            if !(1..=PROXY_MAX_BODY.1).contains(&b) {
                return invalid(format!("proxy.max_body must be between 1 and {} bytes", PROXY_MAX_BODY.1));
            }
        }
        Ok(())
    }
}

/// A proxy base URL: https (plain http only for loopback), canonical, without query or fragment.
fn check_proxy_base(raw: &str) -> Result<url::Url, ValidationError> {
    let url = web_url(raw).map_err(|why| ValidationError(format!("proxy.base_url: {why}")))?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return invalid("proxy.base_url: must use https (http only for localhost)"),
    }
    if url.query().is_some() || url.fragment().is_some() {
        return invalid("proxy.base_url: no query string or fragment");
    }
    Ok(url)
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
    /// Absent: the catalog provider's method, else `client_secret_basic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_method: Option<TokenEndpointAuthMethod>,
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
    /// Where the provider's ID-token keys are (filled by discovery when `discovery_url` is
    /// used): with them, the provider account of connected tokens is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// How a grant's scopes are enforced in what leaves the vault. Always explicit once
    /// stored: absent in a request, it defaults by provider (see [`ScopeEnforcement`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_enforcement: Option<ScopeEnforcement>,
    /// Whether a person opening a connect link made by an agent must first sign in at the
    /// owner's trusted issuer. Turning it off lets anyone holding such a link connect their
    /// own account as the owner: a phishing risk.
    #[serde(default = "yes")]
    pub owner_proof: bool,
}

fn yes() -> bool {
    true
}

/// How a grant's scopes limit what leaves the vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeEnforcement {
    /// Mint a narrower access token with the refresh grant (RFC 6749 §6); where the
    /// provider does not confirm the narrowing, behave as `strict`.
    Downscope,
    /// Release only if every scope the credential holds is allowed to the caller.
    Strict,
    /// Advisory: the scope field is narrowed, the full token leaves (audited as such).
    Label,
}

impl ScopeEnforcement {
    /// The default for a connection: `downscope` for catalog providers known to honour a
    /// narrower refresh, `strict` for everything else.
    pub fn default_for(provider: Option<&str>) -> Self {
        match provider.and_then(super::providers::find) {
            Some(p) if p.honours_narrow_refresh => ScopeEnforcement::Downscope,
            _ => ScopeEnforcement::Strict,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ScopeEnforcement::Downscope => "downscope",
            ScopeEnforcement::Strict => "strict",
            ScopeEnforcement::Label => "label",
        }
    }
}

impl OAuth2Spec {
    /// The connection's scope enforcement (`strict` if a stored spec somehow lacks one).
    pub fn scope_enforcement(&self) -> ScopeEnforcement {
        self.scope_enforcement.unwrap_or(ScopeEnforcement::Strict)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    pub header: String,
    #[serde(default = "default_format")]
    pub format: String,
    /// In proxy mode, put the key in this query parameter instead of the header (for
    /// APIs that want `?api_key=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_param: Option<String>,
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
        Some(_) => invalid("oauth2.client_secret must be a string of 1-4096 bytes"),
    }
}

/// A change to a connection: a JSON merge patch (RFC 7396) checked at the edge. It is an
/// object naming only connection fields other than `id` and `kind`, with the write-only
/// client secret taken out; [`ConnectionPatch::apply`] re-validates the result as a whole.
#[derive(Debug)]
pub struct ConnectionPatch {
    patch: serde_json::Map<String, serde_json::Value>,
    pub client_secret: Option<Secret>,
}

/// Top-level members a patch may change.
const PATCHABLE: [&str; 6] = ["display_name", "provider", "oauth2", "api_key", "scope_roles", "proxy"];

impl ConnectionPatch {
    pub fn from_json(mut value: serde_json::Value) -> Result<Self, ValidationError> {
        let client_secret = take_client_secret(&mut value)?;
        let serde_json::Value::Object(patch) = value else {
            return invalid("the body must be a JSON object (JSON merge patch)");
        };
        for key in patch.keys() {
            if key == "id" || key == "kind" {
                return invalid("'id' and 'kind' of a connection cannot be changed");
            }
            if !PATCHABLE.contains(&key.as_str()) {
                return invalid(format!("unknown field; a patch may change {}", PATCHABLE.join(", ")));
            }
        }
        Ok(ConnectionPatch { patch, client_secret })
    }

    /// The top-level fields the patch touches (for the audit trail).
    pub fn fields(&self) -> Vec<&str> {
        self.patch.keys().map(String::as_str).collect()
    }

    /// The connection as it is after the patch, validated as a whole.
    pub fn apply(&self, spec: &ConnectionSpec) -> Result<ConnectionSpec, ValidationError> {
        let mut merged = serde_json::to_value(spec).map_err(|_| ValidationError("the stored connection cannot be patched".into()))?;
        merge_patch(&mut merged, &serde_json::Value::Object(self.patch.clone()));
        let next = ConnectionSpec::from_json(merged)?;
        if self.client_secret.is_some() && next.kind != ConnectionKind::Oauth2 {
            return invalid("client_secret is only valid for oauth2 connections");
        }
        Ok(next)
    }
}

/// RFC 7396 JSON merge patch.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(serde_json::Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl ConnectionSpec {
    /// Parses and validates a spec; an OAuth connection without `scope_enforcement` gets its
    /// provider's default, so that a stored spec always states it.
    pub fn from_json(value: serde_json::Value) -> Result<Self, ValidationError> {
        let mut spec: ConnectionSpec = super::from_value_strict(value).map_err(|e| ValidationError(clean_serde_error(&e.to_string())))?;
        spec.validate()?;
        let provider = spec.provider.clone();
        if let Some(o) = spec.oauth2.as_mut() {
            o.scope_enforcement.get_or_insert_with(|| ScopeEnforcement::default_for(provider.as_deref()));
        }
        Ok(spec)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if let Some(n) = &self.display_name {
            if n.is_empty() || n.chars().count() > 200 || n.chars().any(char::is_control) {
                return invalid("display_name must be 1-200 characters without control characters");
            }
        }
        if let Some(p) = &self.provider {
            if super::providers::find(p).is_none() {
                return invalid("unknown provider: see `latchkey providers list`");
            }
        }
        for roles in self.scope_roles.values() {
            if roles.is_empty() {
                return invalid("scope_roles: list at least one role per scope");
            }
            for r in roles {
                if !(1..=128).contains(&r.len()) || !r.bytes().all(|c| (0x21..=0x7e).contains(&c)) {
                    return invalid("scope_roles: a role is 1-128 printable ASCII characters without spaces");
                }
            }
        }
        if let Some(p) = &self.proxy {
            p.validate()?;
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
            ("jwks_uri", &self.jwks_uri),
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
        const RESERVED: [&str; 8] =
            ["response_type", "client_id", "redirect_uri", "state", "scope", "code_challenge", "code_challenge_method", "nonce"];
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

/// URLs must be absolute https (plain http only for loopback: local providers, tests), in
/// canonical form (lowercase scheme and host, no spaces), with no credentials in them.
fn check_url(field: &str, raw: &str) -> Result<(), ValidationError> {
    let url = web_url(raw).map_err(|why| ValidationError(format!("oauth2.{field}: {why}")))?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => invalid(format!("oauth2.{field}: must use https (http only for localhost)")),
    }
}

/// Parses an absolute http(s) URL written the way it will be used: the scheme and host as
/// the parser would write them (so `HTTPS://A.EXAMPLE`, `https:a.example` and `http://127.1`
/// are refused rather than silently rewritten), no whitespace, no user or password.
pub fn web_url(raw: &str) -> Result<url::Url, &'static str> {
    if raw.len() > 2048 || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("not a URL (at most 2048 characters, no spaces)");
    }
    let url = url::Url::parse(raw).map_err(|_| "not an absolute URL")?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a URL may not carry a user name or password");
    }
    let host = url.host_str().ok_or("the URL names no host")?;
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    if !raw.starts_with(&format!("{}://{host}{port}", url.scheme())) {
        return Err("write the URL in canonical form: lowercase scheme and host, e.g. https://auth.example.com/token");
    }
    Ok(url)
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
        if let Some(q) = &self.query_param {
            if q.is_empty() || q.len() > 128 || !q.bytes().all(|c| c.is_ascii_alphanumeric() || b"-._~".contains(&c)) {
                return invalid("api_key.query_param must be 1-128 characters of A-Z, a-z, 0-9, '-', '.', '_', '~'");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut t = json!({"a": 1, "o": {"x": 1, "y": 2}, "l": [1]});
        merge_patch(&mut t, &json!({"a": null, "o": {"y": 3, "z": 4}, "l": [2], "n": "v"}));
        assert_eq!(t, json!({"o": {"x": 1, "y": 3, "z": 4}, "l": [2], "n": "v"}));
    }

    #[test]
    fn patches_are_checked_at_the_edge_and_revalidated_whole() {
        let spec = NewConnection::from_json(json!({"id": "k", "kind": "api_key", "api_key": {"header": "X-Key"}})).unwrap().spec;
        let p = ConnectionPatch::from_json(json!({"display_name": "Key", "api_key": {"format": "Bearer {key}"}})).unwrap();
        let next = p.apply(&spec).unwrap();
        assert_eq!(next.display_name.as_deref(), Some("Key"));
        assert_eq!(next.api_key.unwrap().format, "Bearer {key}");
        assert!(ConnectionPatch::from_json(json!({"kind": "oauth2"})).is_err());
        assert!(ConnectionPatch::from_json(json!({"id": "other"})).is_err());
        assert!(ConnectionPatch::from_json(json!({"colour": "red"})).is_err());
        assert!(ConnectionPatch::from_json(json!([1])).is_err());
        // A patch that leaves an invalid whole is refused.
        let broken = ConnectionPatch::from_json(json!({"api_key": {"format": "no placeholder"}})).unwrap();
        assert!(broken.apply(&spec).is_err());
        let secret = ConnectionPatch::from_json(json!({"oauth2": {"client_secret": "s"}})).unwrap();
        assert!(secret.apply(&spec).is_err(), "client_secret on an api_key connection");
    }

    /// Found by schemathesis: `12884.0` is an integer to JSON Schema (and to the OpenAPI
    /// document), so the proxy's limits take it; a fraction is still refused.
    #[test]
    fn proxy_limits_take_whole_numbers_written_with_a_fraction() {
        let spec = |proxy: serde_json::Value| {
            NewConnection::from_json(json!({"id": "pm", "kind": "api_key", "api_key": {"header": "X-Key"}, "proxy": proxy}))
        };
        let c = spec(json!({"base_url": "https://api.example", "max_body": 12884.0, "timeout": 30.0})).unwrap();
        let proxy = c.spec.proxy.unwrap();
        assert_eq!((proxy.max_body, proxy.timeout), (Some(12884), Some(30)));
        assert!(spec(json!({"base_url": "https://api.example", "max_body": 1.5})).is_err());
        assert!(spec(json!({"base_url": "https://api.example", "timeout": -1})).is_err());
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
}
