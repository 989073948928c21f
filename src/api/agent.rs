//! Agent-facing routes: the OAuth token endpoint (client credentials and RFC 8693
//! token exchange), token release, and the well-known documents.

use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{blocking, method_not_allowed, ApiError, AppState, RequestId};
use crate::audit::Outcome;
use crate::auth::subject::{unverified_issuer, SubjectError};
use crate::auth::tokens::{Act, AgentClaims, MAX_TOKEN_TTL};
use crate::model::{AgentId, ConnectionId, Owner, OwnerKind, Scope};
use crate::oauth::Refreshed;
use crate::policy::ReleaseRequest;
use crate::time::rfc3339;
use crate::vault::{new_id, ReleaseError, ReleaseInput, ReleasedSecret, VaultError};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPES: [&str; 3] =
    ["urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:access_token", "urn:ietf:params:oauth:token-type:id_token"];

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/oauth2/token").route(web::post().to(token)).default_service(web::to(method_not_allowed)))
        .service(web::resource("/v1/connections/{id}/token").route(web::get().to(release)).default_service(web::to(method_not_allowed)))
        .service(web::resource("/.well-known/jwks.json").route(web::get().to(jwks)))
        .service(web::resource("/.well-known/oauth-authorization-server").route(web::get().to(metadata)));
}

fn no_store(mut b: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    b.insert_header((header::CACHE_CONTROL, "no-store")).insert_header((header::PRAGMA, "no-cache"));
    b
}

fn oauth_error(status: u16, code: &'static str, description: &str) -> ApiError {
    ApiError::new(actix_web::http::StatusCode::from_u16(status).unwrap_or_default(), code, description)
}

#[derive(Debug, Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<crate::secret::Secret>,
    subject_token: Option<crate::secret::Secret>,
    subject_token_type: Option<String>,
}

/// `client_secret_basic` or `client_secret_post`, exactly one.
fn client_credentials(req: &HttpRequest, form: &TokenForm) -> Result<(String, crate::secret::Secret), ApiError> {
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")));
    let decode = |s: &str| url::form_urlencoded::parse(format!("v={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    match (basic, &form.client_id, &form.client_secret) {
        (Some(_), _, Some(_)) => Err(oauth_error(400, "invalid_request", "use one client authentication method, not two")),
        (Some(b), _, None) => {
            let raw = crate::auth::b64url_decode(b.trim().trim_end_matches('=').replace('+', "-").replace('/', "_").as_str())
                .and_then(|v| String::from_utf8(v).ok())
                .ok_or_else(|| oauth_error(401, "invalid_client", "malformed Basic credentials"))?;
            let raw = zeroize::Zeroizing::new(raw);
            let (id, secret) = raw.split_once(':').ok_or_else(|| oauth_error(401, "invalid_client", "malformed Basic credentials"))?;
            let (id, secret) = (decode(id).unwrap_or_default(), decode(secret).unwrap_or_default());
            Ok((id, crate::secret::Secret::new(secret)))
        }
        (None, Some(id), Some(secret)) => Ok((id.clone(), secret.clone())),
        _ => Err(oauth_error(401, "invalid_client", "client authentication is required")),
    }
}

async fn token(req: HttpRequest, state: web::Data<AppState>, form: web::Form<TokenForm>) -> Result<HttpResponse, ApiError> {
    let form = form.into_inner();
    let (client_id, secret) = client_credentials(&req, &form)?;
    let grant_type = form.grant_type.clone().unwrap_or_default();
    if grant_type != "client_credentials" && grant_type != TOKEN_EXCHANGE {
        return Err(oauth_error(400, "unsupported_grant_type", "grant_type must be client_credentials or token exchange"));
    }
    let audit_id = AgentId::parse(&client_id).map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let cid = client_id.clone();
    let agent = blocking(&state, move |v| v.authenticate_agent(&cid, secret.expose())).await;
    let agent = match agent {
        Ok(a) => a,
        Err(_) => {
            let aid = audit_id.clone();
            blocking(&state, move |v| {
                v.audit_token_decision(
                    &aid,
                    "token.issue",
                    Outcome::Denied,
                    json!({"grant_type": grant_type, "reason": "client authentication failed"}),
                )
            })
            .await?;
            return Err(oauth_error(401, "invalid_client", "client authentication failed"));
        }
    };
    let now = state.vault.clock().now();
    let public = state.tokens.public_url().to_owned();
    let mut claims = AgentClaims {
        iss: public.clone(),
        aud: public,
        sub: agent.id.clone(),
        client_id: agent.id.clone(),
        iat: now,
        nbf: now,
        exp: now + MAX_TOKEN_TTL,
        jti: new_id("").map_err(|_| ApiError::internal())?,
        act: None,
        tenant: None,
        roles: vec![],
    };
    if grant_type == TOKEN_EXCHANGE {
        match exchange(&state, &form, &mut claims, now).await {
            Ok(()) => {}
            Err(reason) => {
                let (aid, r) = (agent.id.clone(), reason.clone());
                blocking(&state, move |v| v.audit_token_decision(&aid, "token.exchange", Outcome::Denied, json!({"reason": r}))).await?;
                return Err(oauth_error(400, "invalid_grant", &reason));
            }
        }
    }
    let action = if grant_type == TOKEN_EXCHANGE { "token.exchange" } else { "token.issue" };
    let detail =
        json!({"grant_type": grant_type, "user": claims.act.as_ref().map(|_| claims.sub.clone()), "jti": claims.jti, "exp": claims.exp});
    let aid = agent.id.clone();
    blocking(&state, move |v| v.audit_token_decision(&aid, action, Outcome::Ok, detail)).await?;
    let token = state.tokens.sign(&claims).ok_or_else(ApiError::internal)?;
    let mut body = json!({"access_token": token, "token_type": "Bearer", "expires_in": claims.exp - now});
    if grant_type == TOKEN_EXCHANGE {
        body["issued_token_type"] = json!("urn:ietf:params:oauth:token-type:access_token");
    }
    Ok(no_store(HttpResponse::Ok()).json(body))
}

/// Verifies the subject token and binds `claims` to its user. `Err` is a reason safe
/// to return as `invalid_grant`.
async fn exchange(state: &AppState, form: &TokenForm, claims: &mut AgentClaims, now: i64) -> Result<(), String> {
    let token = form.subject_token.clone().filter(|t| !t.is_empty() && t.len() <= 16 * 1024).ok_or("subject_token is required")?;
    let token = token.expose();
    if !form.subject_token_type.as_deref().is_some_and(|t| JWT_TYPES.contains(&t)) {
        return Err("subject_token_type must be a JWT, access_token or id_token type".into());
    }
    let iss = unverified_issuer(token).map_err(|e| e.to_string())?;
    let lookup = iss.clone();
    let cfg = blocking(state, move |v| v.issuer(&lookup))
        .await
        .map_err(|_| "issuer lookup failed".to_owned())?
        .ok_or_else(|| SubjectError::UnknownIssuer.to_string())?;
    let subject = state.jwks.verify(&cfg, token).await.map_err(|e| e.to_string())?;
    Owner::new(OwnerKind::User, &subject.sub).map_err(|_| "the subject's sub cannot name a latchkey owner".to_owned())?;
    let exp = claims.exp.min(subject.exp);
    if exp <= now {
        return Err("the subject token has expired".into());
    }
    claims.act = Some(Act { sub: claims.client_id.clone() });
    claims.sub = subject.sub;
    claims.exp = exp;
    claims.tenant = subject.tenant;
    claims.roles = subject.roles;
    Ok(())
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
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned())
        .ok_or_else(ApiError::unauthorized)?;
    let claims = state.tokens.verify(&token, state.vault.clock().now()).map_err(|e| {
        tracing::debug!(reason = %e, "agent token refused");
        ApiError::new(actix_web::http::StatusCode::UNAUTHORIZED, "invalid_token", "the agent token is invalid or expired")
    })?;
    let q = q.into_inner();
    let min_ttl = q.min_ttl.unwrap_or(60);
    if !(0..=86_400).contains(&min_ttl) {
        return Err(ApiError::invalid("min_ttl must be between 0 and 86400 seconds"));
    }
    let connection = ConnectionId::parse(&id)?;
    let mut input = ReleaseInput {
        principal: claims.principal(),
        connection: connection.clone(),
        request: ReleaseRequest {
            scopes: Scope::parse_list(q.scope.as_deref().unwrap_or(""))?,
            user_id: q.user_id,
            tenant_id: q.tenant_id,
        },
        min_ttl,
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default(),
        refresh_attempted: None,
    };
    let r = loop {
        // Decided on the worker, not the blocking pool: with the policy and spec cached it
        // is one SQLite point read (a few µs, from the page cache) and an AES-GCM open;
        // the hop to a pool thread and back cost more than that (bench/run.py: same
        // throughput, p99 8.5 -> 5.5 ms). The wait for the audit commit holds no thread.
        let decision = state.vault.decide_release(&input);
        match state.vault.commit_release(decision).await {
            Err(VaultError::Release(ReleaseError::RefreshNeeded { owner })) if input.refresh_attempted.is_none() => {
                // Refresh first (single flight with any concurrent release or the
                // background refresher), then decide again — that decision is audited.
                let retry = match state.oauth.refresh_for_release(&connection, &owner, min_ttl).await {
                    Refreshed::Failed { retry_after } => retry_after,
                    _ => 30,
                };
                input.refresh_attempted = Some(retry);
            }
            Err(e) => {
                state.oauth.metrics.release("deny");
                return Err(e.into());
            }
            Ok(r) => {
                state.oauth.metrics.release("allow");
                break r;
            }
        }
    };
    let lease = Lease { id: &r.lease_id, expires_in: r.lease_expires_in };
    let body = match &r.secret {
        ReleasedSecret::ApiKey { api_key, header_name, header_value } => serde_json::to_vec(&ApiKeyBody {
            connection_id: r.connection_id.as_str(),
            kind: "api_key",
            owner: r.owner.to_string(),
            api_key: api_key.expose(),
            header: Header { name: header_name, value: header_value.expose() },
            lease,
        }),
        ReleasedSecret::OAuth2 { access_token, token_type, scope, expires_at, expires_in, instance_url } => {
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
                lease,
            })
        }
    }
    .map_err(|_| ApiError::internal())?;
    Ok(no_store(HttpResponse::Ok()).content_type("application/json").body(body))
}

/// Release bodies, serialised straight from borrowed parts (no JSON tree per request).
#[derive(serde::Serialize)]
struct Lease<'a> {
    id: &'a str,
    expires_in: i64,
}

#[derive(serde::Serialize)]
struct Header<'a> {
    name: &'a str,
    value: &'a str,
}

#[derive(serde::Serialize)]
struct ApiKeyBody<'a> {
    connection_id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    owner: String,
    api_key: &'a str,
    header: Header<'a>,
    lease: Lease<'a>,
}

#[derive(serde::Serialize)]
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
    lease: Lease<'a>,
}

async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "public, max-age=300")).json(state.tokens.jwks())
}

async fn metadata(state: web::Data<AppState>) -> HttpResponse {
    let base = state.tokens.public_url();
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
