//! Agent-facing routes: the OAuth token endpoint, token release, and the well-known
//! documents. Wire formats live here; the decisions live in `service`.

use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::middleware::{bearer, client_ip};
use super::{not_allowed, ApiError, AppState, RequestId};
use crate::model::{ConnectionId, Scope};
use crate::policy::ReleaseRequest;
use crate::secret::Secret;
use crate::service::tokens::{TokenEndpointError, TokenRequest, TOKEN_EXCHANGE};
use crate::time::rfc3339;
use crate::vault::MinTtl;
use crate::vault::{Narrowing, ReleaseError, ReleaseInput, Released, ReleasedSecret};

/// The largest `min_ttl` a caller may ask for.
const MAX_MIN_TTL: i64 = 86_400;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/oauth2/token").route(web::post().to(token)).default_service(not_allowed("POST")))
        .service(web::resource("/v1/connections/{id}/token").route(web::get().to(release)).default_service(not_allowed("GET")))
        .service(web::resource("/.well-known/jwks.json").route(web::get().to(jwks)).default_service(not_allowed("GET")))
        .service(web::resource("/.well-known/latchkey-audit-key").route(web::get().to(audit_key)).default_service(not_allowed("GET")))
        .service(
            web::resource("/.well-known/oauth-authorization-server").route(web::get().to(metadata)).default_service(not_allowed("GET")),
        );
}

fn no_store(mut b: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    b.insert_header((header::CACHE_CONTROL, "no-store")).insert_header((header::PRAGMA, "no-cache"));
    b
}

#[derive(Debug, Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    subject_token: Option<Secret>,
    subject_token_type: Option<String>,
}

async fn token(req: HttpRequest, state: web::Data<AppState>, form: web::Form<TokenForm>) -> Result<HttpResponse, ApiError> {
    let request = token_request(&req, &state, form.into_inner())?;
    let issued = state.services.issue_token(request).await?;
    let mut body = json!({"access_token": issued.access_token.expose(), "token_type": "Bearer", "expires_in": issued.expires_in});
    if let Some(t) = issued.issued_token_type {
        body["issued_token_type"] = json!(t);
    }
    Ok(no_store(HttpResponse::Ok()).json(body))
}

/// Client authentication (`client_secret_basic` or `client_secret_post`, exactly one),
/// then the grant type.
fn token_request(req: &HttpRequest, state: &AppState, form: TokenForm) -> Result<TokenRequest, TokenEndpointError> {
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")));
    let (client_id, client_secret) = match (basic, form.client_id, form.client_secret) {
        (Some(_), _, Some(_)) => return Err(TokenEndpointError::InvalidRequest("use one client authentication method, not two")),
        (Some(b), _, None) => basic_credentials(b).ok_or(TokenEndpointError::InvalidClient)?,
        (None, Some(id), Some(secret)) => (id, secret),
        _ => return Err(TokenEndpointError::InvalidClient),
    };
    let grant = form.grant_type.as_deref().unwrap_or("").parse()?;
    Ok(TokenRequest {
        source: client_ip(req, &state.trusted_proxies),
        client_id,
        client_secret,
        grant,
        subject_token: form.subject_token,
        subject_token_type: form.subject_token_type,
    })
}

/// RFC 6749 §2.3.1: Basic credentials whose parts are form-encoded.
fn basic_credentials(b64: &str) -> Option<(String, Secret)> {
    let raw = crate::crypto::b64url_decode(b64.trim().trim_end_matches('=').replace('+', "-").replace('/', "_").as_str())?;
    let raw = zeroize::Zeroizing::new(String::from_utf8(raw).ok()?);
    let (id, secret) = raw.split_once(':')?;
    let decode = |s: &str| url::form_urlencoded::parse(format!("v={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Some((decode(id)?, Secret::new(decode(secret)?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseQuery {
    scope: Option<String>,
    min_ttl: Option<i64>,
    user_id: Option<String>,
    tenant_id: Option<String>,
}

async fn release(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    q: web::Query<ReleaseQuery>,
) -> Result<HttpResponse, ApiError> {
    let input = release_input(&req, &state, &id, q.into_inner())?;
    let released = state.services.release(input).await?;
    let body = release_body(&released).map_err(|_| ApiError::internal())?;
    Ok(no_store(HttpResponse::Ok()).content_type("application/json").body(body))
}

fn release_input(req: &HttpRequest, state: &AppState, id: &str, q: ReleaseQuery) -> Result<ReleaseInput, ApiError> {
    let token = bearer(req.headers()).ok_or_else(ApiError::unauthorized)?;
    let principal = state.services.agent_principal(token).ok_or(ReleaseError::InvalidToken)?;
    let min_ttl = match q.min_ttl {
        None => MinTtl::Default,
        Some(t) if (0..=MAX_MIN_TTL).contains(&t) => MinTtl::Explicit(t),
        Some(_) => return Err(ApiError::invalid(format!("min_ttl must be between 0 and {MAX_MIN_TTL} seconds"))),
    };
    Ok(ReleaseInput {
        principal,
        connection: ConnectionId::parse(id)?,
        request: ReleaseRequest {
            scopes: Scope::parse_list(q.scope.as_deref().unwrap_or(""))?,
            user_id: q.user_id,
            tenant_id: q.tenant_id,
            mode: crate::policy::Mode::Release,
        },
        min_ttl,
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default(),
        refresh_attempted: None,
        narrowing: Narrowing::Allowed,
        proxy: None,
    })
}

/// Release bodies, serialised straight from borrowed parts (no JSON tree per request).
#[derive(Serialize)]
struct Lease<'a> {
    id: &'a str,
    expires_in: i64,
    /// Whether the secret stops working when the lease ends (never for an API key).
    enforced: bool,
}

#[derive(Serialize)]
struct Header<'a> {
    name: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct ApiKeyBody<'a> {
    connection_id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    owner: String,
    api_key: &'a str,
    header: Header<'a>,
    lease: Lease<'a>,
}

#[derive(Serialize)]
struct OAuthBody<'a> {
    connection_id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    owner: String,
    access_token: &'a str,
    token_type: &'a str,
    scope: String,
    expires_at: Option<String>,
    expires_in: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_url: Option<&'a str>,
    /// Whether the token itself is limited to what the caller may have (`false`: the
    /// connection's scope enforcement is `label`).
    scope_enforced: bool,
    lease: Lease<'a>,
}

fn release_body(r: &Released) -> serde_json::Result<Vec<u8>> {
    let lease = Lease { id: &r.lease_id, expires_in: r.lease_expires_in, enforced: r.lease_enforced };
    match &r.secret {
        ReleasedSecret::ApiKey { api_key, header_name, header_value } => serde_json::to_vec(&ApiKeyBody {
            connection_id: r.connection_id.as_str(),
            kind: "api_key",
            owner: r.owner.to_string(),
            api_key: api_key.expose(),
            header: Header { name: header_name, value: header_value.expose() },
            lease,
        }),
        ReleasedSecret::OAuth2 { access_token, token_type, scope, expires_at, expires_in, instance_url, scope_enforced } => {
            serde_json::to_vec(&OAuthBody {
                connection_id: r.connection_id.as_str(),
                kind: "oauth2",
                owner: r.owner.to_string(),
                access_token: access_token.expose(),
                token_type,
                scope: scope.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "),
                expires_at: expires_at.map(rfc3339),
                expires_in: *expires_in,
                instance_url: instance_url.as_deref(),
                scope_enforced: *scope_enforced,
                lease,
            })
        }
    }
}

/// The public key that signs audit checkpoints (a JWK), to check a checkpoint file
/// without the vault.
async fn audit_key(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let jwk = state.blocking(|v| v.audit_public_jwk()).await?;
    Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "public, max-age=300")).json(jwk))
}

async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "public, max-age=300")).json(state.services.tokens.jwks())
}

async fn metadata(state: web::Data<AppState>) -> HttpResponse {
    let base = state.services.tokens.public_url();
    HttpResponse::Ok().json(json!({
        "issuer": base,
        "token_endpoint": format!("{base}/oauth2/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials", TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "response_types_supported": [],
        "service_documentation": format!("{base}/openapi.json"),
    }))
}
