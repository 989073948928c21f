//! Talking to providers' token and revocation endpoints, bounded in size and time, and
//! classifying every failure: a refusal of the grant (`Rejected` → the owner must
//! reconnect) versus anything that may heal by itself (`Transient` → back off, keep the
//! stored tokens). Nothing from a response body is logged raw.

use std::time::Duration;

use serde::Deserialize;

use super::endpoints::Endpoints;
use crate::model::oauth::TokenSet;
use crate::model::providers::{GrantGone, ResponseShape};
use crate::model::TokenEndpointAuthMethod;
use crate::secret::Secret;

/// Largest response body read from a provider.
pub const MAX_BODY: usize = 1024 * 1024;
/// Whole-request time limit.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How a provider call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused the grant (`invalid_grant` or equivalent).
    #[error("the provider refused the grant ({code})")]
    Rejected { code: String },
    /// The provider refused the scopes asked for (`invalid_scope`): a narrower token is not
    /// to be had. The grant itself is not in question.
    #[error("the provider refused the requested scope")]
    ScopeRefused,
    /// Anything that may heal: transport, timeout, 5xx, 429, garbage, oversized.
    #[error("{reason}")]
    Transient { reason: String, retry_after: Option<u64> },
}

impl ProviderError {
    fn transient(reason: impl Into<String>) -> Self {
        ProviderError::Transient { reason: reason.into(), retry_after: None }
    }

    /// Short class for metrics and audit.
    pub fn class(&self) -> &'static str {
        match self {
            ProviderError::Rejected { .. } => "rejected",
            ProviderError::ScopeRefused => "scope_refused",
            ProviderError::Transient { .. } => "transient",
        }
    }
}

/// Error codes meaning "this grant is gone", across providers: RFC 6749's `invalid_grant`,
/// Slack's and others' token codes, GitHub's `bad_refresh_token` (sent with HTTP 200),
/// Microsoft's "the user must sign in again" codes, Salesforce's inactive user or org.
const REJECTED_CODES: [&str; 11] = [
    "invalid_grant",
    "invalid_refresh_token",
    "token_revoked",
    "token_expired",
    "refresh_token_expired",
    "bad_refresh_token",
    "interaction_required",
    "consent_required",
    "login_required",
    "inactive_user",
    "inactive_org",
];

/// Codes meaning latchkey's own client credentials are refused: an operator must fix the
/// connection, the owner's grant is not in question (GitHub's, Slack's, HubSpot's names).
const CLIENT_CODES: [&str; 5] =
    ["invalid_client", "unauthorized_client", "incorrect_client_credentials", "bad_client_secret", "BAD_CLIENT_ID"];

/// The client for provider calls: bounded in time, never following redirects.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("latchkey/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[derive(Deserialize)]
struct Raw {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
    token_type: Option<String>,
    instance_url: Option<String>,
    id_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    /// Zoom's explanation next to `error`.
    reason: Option<String>,
    /// HubSpot's error code (and a number elsewhere).
    status: Option<serde_json::Value>,
    ok: Option<bool>,
    authed_user: Option<Box<Raw>>,
}

impl Raw {
    /// A body field a provider rule may look at.
    fn field(&self, name: &str) -> Option<&str> {
        match name {
            "error_description" => self.error_description.as_deref(),
            "reason" => self.reason.as_deref(),
            "status" => self.status.as_ref().and_then(|s| s.as_str()),
            _ => None,
        }
    }
}

/// Sanitised for storage and logs: short, printable, no spaces.
fn code_of(s: &str) -> String {
    s.chars().take(64).filter(|c| c.is_ascii_graphic()).collect()
}

impl Drop for Raw {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        if let Some(t) = self.access_token.as_mut() {
            t.zeroize();
        }
        if let Some(t) = self.refresh_token.as_mut() {
            t.zeroize();
        }
        if let Some(t) = self.id_token.as_mut() {
            t.zeroize();
        }
    }
}

/// Reads at most [`MAX_BODY`] bytes.
async fn bounded_body(mut resp: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    if resp.content_length().is_some_and(|l| l as usize > MAX_BODY) {
        return Err(ProviderError::transient("provider response too large"));
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                body.extend_from_slice(&c);
                if body.len() > MAX_BODY {
                    return Err(ProviderError::transient("provider response too large"));
                }
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => return Err(ProviderError::transient("provider timed out")),
            Err(_) => return Err(ProviderError::transient("provider response truncated")),
        }
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<u64> {
    resp.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok().map(|s: u64| s.min(3600))
}

/// Adds client authentication: HTTP Basic (RFC 6749 §2.3.1: both parts form-encoded
/// first) or the client id and secret in the form; a public client sends only its id.
fn authenticate(
    req: reqwest::RequestBuilder,
    form: &mut Vec<(&str, String)>,
    method: TokenEndpointAuthMethod,
    client_id: &str,
    secret: Option<&Secret>,
) -> reqwest::RequestBuilder {
    match (method, secret) {
        (TokenEndpointAuthMethod::ClientSecretBasic, Some(s)) => {
            let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
            req.basic_auth(enc(client_id), Some(enc(s.expose())))
        }
        (TokenEndpointAuthMethod::ClientSecretPost, Some(s)) => {
            form.push(("client_id", client_id.to_owned()));
            form.push(("client_secret", s.expose().to_owned()));
            req
        }
        (_, None) => {
            form.push(("client_id", client_id.to_owned()));
            req
        }
    }
}

/// Posts a form to the token endpoint with client authentication; returns the parsed
/// token response or a classified error.
async fn token_request(
    http: &reqwest::Client,
    ep: &Endpoints,
    client_id: &str,
    secret: Option<&Secret>,
    mut form: Vec<(&str, String)>,
) -> Result<TokenSet, ProviderError> {
    let req = http.post(&ep.token).header(reqwest::header::ACCEPT, "application/json");
    let req = authenticate(req, &mut form, ep.auth_method, client_id, secret);
    let resp = req.form(&form).send().await.map_err(|e| {
        if e.is_timeout() {
            ProviderError::transient("provider timed out")
        } else {
            ProviderError::transient("provider unreachable")
        }
    })?;
    drop(zeroize::Zeroizing::new(form.into_iter().map(|(_, v)| v).collect::<Vec<_>>()));
    let status = resp.status();
    let wait = retry_after(&resp);
    if status.as_u16() == 429 || status.is_server_error() {
        return Err(ProviderError::Transient { reason: format!("provider answered HTTP {}", status.as_u16()), retry_after: wait });
    }
    let body = bounded_body(resp).await?;
    let raw: Raw = serde_json::from_slice(&body)
        .map_err(|_| ProviderError::transient(format!("provider answered HTTP {} with a non-JSON or malformed body", status.as_u16())))?;
    drop(zeroize::Zeroizing::new(body));
    parse(raw, status.as_u16(), ep.shape, ep.grant_gone)
}

/// The provider's own rule that says this answer means the grant is gone, if any.
fn grant_gone(raw: &Raw, status: u16, rules: &[GrantGone]) -> Option<String> {
    rules.iter().find_map(|r| {
        let status_ok = r.status.is_none_or(|s| s == status);
        let error_ok = r.error.is_none_or(|e| raw.error.as_deref() == Some(e));
        let field = match r.field {
            None => Some(None),
            Some((name, text)) => raw.field(name).filter(|v| v.contains(text)).map(Some),
        };
        match (status_ok && error_ok, field) {
            (true, Some(value)) => Some(code_of(raw.error.as_deref().or(value).unwrap_or("grant_gone"))),
            _ => None,
        }
    })
}

fn parse(raw: Raw, status: u16, shape: ResponseShape, rules: &[GrantGone]) -> Result<TokenSet, ProviderError> {
    if let Some(code) = grant_gone(&raw, status, rules) {
        return Err(ProviderError::Rejected { code });
    }
    let error = match shape {
        ResponseShape::Slack if raw.ok == Some(false) => Some(raw.error.clone().unwrap_or_else(|| "unknown_error".into())),
        _ => raw.error.clone().or_else(|| raw.field("status").filter(|_| !(200..300).contains(&status)).map(str::to_owned)),
    };
    if let Some(code) = error {
        let code = code_of(&code);
        if REJECTED_CODES.contains(&code.as_str()) {
            return Err(ProviderError::Rejected { code });
        }
        if code == "invalid_scope" {
            return Err(ProviderError::ScopeRefused);
        }
        if CLIENT_CODES.contains(&code.as_str()) {
            return Err(ProviderError::transient(format!(
                "the provider refused latchkey's client credentials ('{code}', HTTP {status}): check the connection's client_id and client_secret"
            )));
        }
        return Err(ProviderError::transient(format!("provider error '{code}' (HTTP {status})")));
    }
    if !(200..300).contains(&status) {
        return Err(ProviderError::transient(format!("provider answered HTTP {status}")));
    }
    // Slack puts a user token under authed_user when no bot token was issued.
    let raw = match (shape, raw.access_token.is_none(), raw.authed_user.as_deref()) {
        (ResponseShape::Slack, true, Some(u)) if u.access_token.is_some() => Raw {
            access_token: u.access_token.clone(),
            refresh_token: u.refresh_token.clone(),
            expires_in: u.expires_in.clone(),
            scope: u.scope.clone(),
            token_type: u.token_type.clone(),
            instance_url: None,
            id_token: None,
            error: None,
            error_description: None,
            reason: None,
            status: None,
            ok: None,
            authed_user: None,
        },
        _ => raw,
    };
    let access_token = raw
        .access_token
        .as_ref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ProviderError::transient("provider response has no access_token"))?;
    let token_type = match raw.token_type.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("bearer") => "Bearer".to_owned(),
        // Slack: "bot" / "user" tokens are presented as Bearer.
        Some("bot" | "user") if shape == ResponseShape::Slack => "Bearer".to_owned(),
        Some(_) => return Err(ProviderError::transient("provider issued an unsupported token_type")),
    };
    let expires_in = raw.expires_in.as_ref().and_then(expires_in);
    Ok(TokenSet {
        access_token: Secret::new(access_token.clone()),
        refresh_token: raw.refresh_token.as_ref().filter(|t| !t.is_empty()).map(|t| Secret::new(t.clone())),
        expires_in,
        scope: raw.scope.clone(),
        token_type,
        // Whole: the URL parser drops surrounding spaces and inner tabs and newlines, which
        // would be kept in the stored string and handed out (found by fuzzing).
        instance_url: raw
            .instance_url
            .clone()
            .filter(|u| !u.chars().any(|c| c.is_whitespace() || c.is_control()) && url::Url::parse(u).is_ok_and(|u| u.scheme() == "https")),
        id_token: raw.id_token.as_ref().filter(|t| !t.is_empty() && t.len() <= 16 * 1024).map(|t| Secret::new(t.clone())),
    })
}

/// The longest token lifetime believed: a larger `expires_in` is clamped to it (a huge
/// value would overflow the expiry time).
pub const MAX_EXPIRES_IN: i64 = 10 * 365 * 86_400;

/// `expires_in` as a number or a numeric string (some providers send one), clamped to
/// [`MAX_EXPIRES_IN`]; anything else, zero or negative means no expiry is known.
fn expires_in(v: &serde_json::Value) -> Option<i64> {
    let seconds = match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    // `as` saturates: NaN becomes 0 and infinities the bounds.
    (seconds.is_finite() && seconds >= 1.0).then(|| (seconds as i64).min(MAX_EXPIRES_IN))
}

/// Authorization-code exchange (with the PKCE verifier).
pub async fn exchange_code(
    http: &reqwest::Client,
    ep: &Endpoints,
    client_id: &str,
    secret: Option<&Secret>,
    code: &str,
    verifier: Option<&Secret>,
    redirect_uri: &str,
) -> Result<TokenSet, ProviderError> {
    let mut form =
        vec![("grant_type", "authorization_code".to_owned()), ("code", code.to_owned()), ("redirect_uri", redirect_uri.to_owned())];
    if let Some(v) = verifier {
        form.push(("code_verifier", v.expose().to_owned()));
    }
    token_request(http, ep, client_id, secret, form).await
}

/// Refresh-token grant; `scope` asks for a narrower access token (RFC 6749 §6).
pub async fn refresh(
    http: &reqwest::Client,
    ep: &Endpoints,
    client_id: &str,
    secret: Option<&Secret>,
    refresh_token: &Secret,
    scope: Option<&str>,
) -> Result<TokenSet, ProviderError> {
    let mut form = vec![("grant_type", "refresh_token".to_owned()), ("refresh_token", refresh_token.expose().to_owned())];
    if let Some(s) = scope {
        form.push(("scope", s.to_owned()));
    }
    token_request(http, ep, client_id, secret, form).await
}

/// RFC 7009 revocation of a refresh token. `Ok(())` when the provider accepted it.
pub async fn revoke(
    http: &reqwest::Client,
    ep: &Endpoints,
    client_id: &str,
    secret: Option<&Secret>,
    token: &Secret,
) -> Result<(), ProviderError> {
    let Some(url) = &ep.revocation else { return Err(ProviderError::transient("no revocation endpoint")) };
    let mut form = vec![("token", token.expose().to_owned()), ("token_type_hint", "refresh_token".to_owned())];
    let req = http.post(url);
    let req = authenticate(req, &mut form, ep.auth_method, client_id, secret);
    let resp = req.form(&form).send().await.map_err(|_| ProviderError::transient("revocation endpoint unreachable"))?;
    drop(zeroize::Zeroizing::new(form.into_iter().map(|(_, v)| v).collect::<Vec<_>>()));
    match resp.status().as_u16() {
        200..=299 => Ok(()),
        s => Err(ProviderError::transient(format!("revocation endpoint answered HTTP {s}"))),
    }
}

/// What discovery says about a provider.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub issuer: Option<String>,
    pub authorization: String,
    pub token: String,
    pub revocation: Option<String>,
    pub jwks_uri: Option<String>,
    /// RFC 9207: the provider puts `iss` in every authorization response.
    pub iss_parameter_supported: bool,
}

/// Fetches OIDC discovery / RFC 8414 metadata and checks that `issuer` is exactly the
/// one the URL names.
pub async fn discover(http: &reqwest::Client, discovery_url: &str) -> Result<Discovered, &'static str> {
    let expected = discovery_url
        .strip_suffix("/.well-known/openid-configuration")
        .or_else(|| discovery_url.strip_suffix("/.well-known/oauth-authorization-server"))
        .ok_or("discovery_url must end in /.well-known/openid-configuration or /.well-known/oauth-authorization-server")?;
    let resp = http.get(discovery_url).send().await.map_err(|_| "discovery endpoint unreachable")?;
    if !resp.status().is_success() {
        return Err("discovery endpoint answered an error status");
    }
    let body = bounded_body(resp).await.map_err(|_| "discovery document too large, truncated or too slow")?;
    discovery_document(&body, expected)
}

/// Reads a discovery document whose `issuer` must be `expected`.
fn discovery_document(body: &[u8], expected: &str) -> Result<Discovered, &'static str> {
    #[derive(Deserialize)]
    struct Meta {
        issuer: String,
        authorization_endpoint: String,
        token_endpoint: String,
        revocation_endpoint: Option<String>,
        jwks_uri: Option<String>,
        #[serde(default)]
        authorization_response_iss_parameter_supported: bool,
    }
    let m: Meta = serde_json::from_slice(body).map_err(|_| "discovery document is malformed")?;
    if m.issuer.trim_end_matches('/') != expected.trim_end_matches('/') {
        return Err("discovery document names a different issuer than its URL");
    }
    Ok(Discovered {
        issuer: Some(m.issuer),
        authorization: m.authorization_endpoint,
        token: m.token_endpoint,
        revocation: m.revocation_endpoint,
        jwks_uri: m.jwks_uri,
        iss_parameter_supported: m.authorization_response_iss_parameter_supported,
    })
}

/// A token endpoint's answer (`body` with HTTP `status`) read as `token_request` reads it,
/// for a catalog `provider` (`None`: a custom one); for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub fn provider_token_response_for_fuzzing(body: &[u8], status: u16, provider: Option<&str>) -> Result<TokenSet, ProviderError> {
    let p = provider.and_then(crate::model::providers::find);
    let shape = p.map(|p| p.response_shape).unwrap_or(ResponseShape::Standard);
    let rules = p.map(|p| p.grant_gone).unwrap_or(&[]);
    let raw: Raw = serde_json::from_slice(body).map_err(|_| ProviderError::transient("malformed body"))?;
    parse(raw, status, shape, rules)
}

/// [`discovery_document`], for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub fn discovery_document_for_fuzzing(body: &[u8], expected: &str) -> Result<Discovered, &'static str> {
    discovery_document(body, expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(v: serde_json::Value) -> Raw {
        serde_json::from_value(v).unwrap()
    }

    /// Every documented "the grant is gone" answer of the catalog's providers, and answers
    /// that look alike but are not (client misconfiguration, outages).
    #[test]
    fn dead_grants_per_provider() {
        use crate::model::providers::find;
        let rules = |name: &str| find(name).unwrap().grant_gone;
        let shape = |name: &str| find(name).unwrap().response_shape;
        let cases: &[(&str, u16, serde_json::Value, bool)] = &[
            // (provider, HTTP status, body, grant gone?)
            ("google", 400, serde_json::json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}), true),
            ("microsoft", 400, serde_json::json!({"error": "invalid_grant", "error_description": "AADSTS70008"}), true),
            ("microsoft", 400, serde_json::json!({"error": "interaction_required"}), true),
            ("microsoft", 400, serde_json::json!({"error": "consent_required"}), true),
            ("microsoft", 400, serde_json::json!({"error": "login_required"}), true),
            ("microsoft", 400, serde_json::json!({"error": "temporarily_unavailable"}), false),
            (
                "github",
                200,
                serde_json::json!({"error": "bad_refresh_token", "error_description": "The refresh token passed is incorrect or expired."}),
                true,
            ),
            ("github", 200, serde_json::json!({"error": "incorrect_client_credentials"}), false),
            ("slack", 200, serde_json::json!({"ok": false, "error": "invalid_refresh_token"}), true),
            ("slack", 200, serde_json::json!({"ok": false, "error": "token_revoked"}), true),
            ("slack", 200, serde_json::json!({"ok": false, "error": "token_expired"}), true),
            ("slack", 200, serde_json::json!({"ok": false, "error": "bad_client_secret"}), false),
            ("slack", 200, serde_json::json!({"ok": false, "error": "ratelimited"}), false),
            ("salesforce", 400, serde_json::json!({"error": "invalid_grant", "error_description": "expired access/refresh token"}), true),
            ("salesforce", 400, serde_json::json!({"error": "inactive_user"}), true),
            ("salesforce", 400, serde_json::json!({"error": "inactive_org"}), true),
            ("atlassian", 403, serde_json::json!({"error": "unauthorized_client", "error_description": "refresh_token is invalid"}), true),
            ("atlassian", 401, serde_json::json!({"error": "access_denied", "error_description": "Unauthorized"}), false),
            ("atlassian", 400, serde_json::json!({"error": "unauthorized_client"}), false),
            ("hubspot", 400, serde_json::json!({"status": "BAD_REFRESH_TOKEN", "message": "missing or unknown refresh token"}), true),
            ("hubspot", 400, serde_json::json!({"status": "BAD_CLIENT_ID", "message": "missing or unknown client id"}), false),
            ("zoom", 400, serde_json::json!({"reason": "Invalid Token!", "error": "invalid_request"}), true),
            ("zoom", 401, serde_json::json!({"reason": "Invalid client_id or client_secret", "error": "invalid_client"}), false),
            ("zoom", 400, serde_json::json!({"error": "invalid_grant"}), true),
            (
                "discord",
                400,
                serde_json::json!({"error": "invalid_request", "error_description": "Invalid \"refresh_token\" in request."}),
                true,
            ),
            ("discord", 400, serde_json::json!({"error": "invalid_request", "error_description": "Missing \"code\" in request."}), false),
            (
                "dropbox",
                400,
                serde_json::json!({"error": "invalid_grant", "error_description": "refresh token is invalid or revoked"}),
                true,
            ),
            ("box", 400, serde_json::json!({"error": "invalid_grant", "error_description": "Refresh token has expired"}), true),
            ("gitlab", 400, serde_json::json!({"error": "invalid_grant"}), true),
            ("linear", 400, serde_json::json!({"error": "invalid_grant"}), true),
            ("asana", 400, serde_json::json!({"error": "invalid_grant"}), true),
            ("spotify", 400, serde_json::json!({"error": "invalid_grant", "error_description": "Refresh token revoked"}), true),
            ("spotify", 400, serde_json::json!({"error": "invalid_client"}), false),
            ("google", 503, serde_json::json!({"error": "server_error"}), false),
        ];
        for (provider, status, body, gone) in cases {
            let outcome = parse(raw(body.clone()), *status, shape(provider), rules(provider));
            match (gone, &outcome) {
                (true, Err(ProviderError::Rejected { .. })) | (false, Err(ProviderError::Transient { .. })) => {}
                _ => panic!("{provider} HTTP {status} {body}: {outcome:?}"),
            }
        }
        // Provider rules do not leak onto other providers: Atlassian's 403 elsewhere is a
        // client problem, not a dead grant.
        let other = parse(raw(serde_json::json!({"error": "unauthorized_client"})), 403, ResponseShape::Standard, &[]);
        assert!(matches!(other, Err(ProviderError::Transient { .. })), "{other:?}");
    }

    /// Found by the `provider_token` fuzz target (fuzz/): an `instance_url` with a leading
    /// space passed the https check (the URL parser trims it) and was kept as sent.
    #[test]
    fn instance_urls_are_taken_only_as_written_https_urls() {
        let std = ResponseShape::Standard;
        for bad in [" https:/n", "https://na1.example\n", "https://na\t1.example", "http://na1.example"] {
            let t = parse(raw(serde_json::json!({"access_token": "y", "instance_url": bad})), 200, std, &[]).unwrap();
            assert_eq!(t.instance_url, None, "{bad:?}");
        }
        let t = parse(raw(serde_json::json!({"access_token": "y", "instance_url": "https://na1.example"})), 200, std, &[]).unwrap();
        assert_eq!(t.instance_url.as_deref(), Some("https://na1.example"));
    }

    #[test]
    fn catalog_auth_method_applies_unless_the_connection_names_one() {
        let names = include_str!("../../migrations/sqlite/0009_catalog_auth_method.sql");
        for p in crate::model::providers::CATALOG {
            let listed = names.contains(&format!("'{}'", p.name));
            assert_eq!(listed, p.token_endpoint_auth_method == TokenEndpointAuthMethod::ClientSecretPost, "{} in migration 0009", p.name);
        }
    }

    #[test]
    fn classification() {
        let std = ResponseShape::Standard;
        assert!(matches!(parse(raw(serde_json::json!({"error": "invalid_grant"})), 400, std, &[]), Err(ProviderError::Rejected { .. })));
        assert!(matches!(parse(raw(serde_json::json!({"error": "invalid_client"})), 401, std, &[]), Err(ProviderError::Transient { .. })));
        assert!(matches!(parse(raw(serde_json::json!({"token_type": "bearer"})), 200, std, &[]), Err(ProviderError::Transient { .. })));
        assert!(matches!(
            parse(raw(serde_json::json!({"access_token": "a", "token_type": "mac"})), 200, std, &[]),
            Err(ProviderError::Transient { .. })
        ));
        let ok = parse(
            raw(serde_json::json!({"access_token": "a", "token_type": "bearer", "expires_in": "3600", "refresh_token": "r"})),
            200,
            std,
            &[],
        )
        .unwrap();
        assert_eq!((ok.token_type.as_str(), ok.expires_in), ("Bearer", Some(3600)));
        // A huge expires_in is clamped, never wrapped into the past.
        for huge in [
            serde_json::json!(i64::MAX),
            serde_json::json!(u64::MAX),
            serde_json::json!(1e300),
            serde_json::json!("99999999999999999999999"),
        ] {
            let t = parse(raw(serde_json::json!({"access_token": "a", "expires_in": huge})), 200, std, &[]).unwrap();
            assert_eq!(t.expires_in, Some(MAX_EXPIRES_IN), "{huge}");
        }
        for none in
            [serde_json::json!(0), serde_json::json!(-5), serde_json::json!("soon"), serde_json::json!(null), serde_json::json!([1])]
        {
            let t = parse(raw(serde_json::json!({"access_token": "a", "expires_in": none})), 200, std, &[]).unwrap();
            assert_eq!(t.expires_in, None, "{none}");
        }
        assert_eq!(
            parse(raw(serde_json::json!({"access_token": "a", "expires_in": 3599.9})), 200, std, &[]).unwrap().expires_in,
            Some(3599)
        );
        // Slack: errors in a 200, user tokens under authed_user.
        let slack = ResponseShape::Slack;
        assert!(matches!(
            parse(raw(serde_json::json!({"ok": false, "error": "invalid_refresh_token"})), 200, slack, &[]),
            Err(ProviderError::Rejected { .. })
        ));
        let u = parse(raw(serde_json::json!({"ok": true, "authed_user": {"access_token": "xoxp", "token_type": "user"}})), 200, slack, &[])
            .unwrap();
        assert_eq!(u.access_token.expose(), "xoxp");
    }
}
