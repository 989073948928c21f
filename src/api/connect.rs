//! The connect flow for end users: a single-use link → the provider (state + PKCE
//! S256) → our callback → tokens stored. The callback's query (code, state) is never
//! logged: the request log records the path only.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{blocking, method_not_allowed, ApiError, AppState};
use crate::model::{ConnectionId, Owner, OwnerKind};
use crate::policy::{self, ReleaseRequest};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/connect/sessions").route(web::post().to(create_session)).default_service(web::to(method_not_allowed)))
        .service(web::resource("/v1/connect/s/{session}").route(web::get().to(open_link)).default_service(web::to(method_not_allowed)))
        .service(web::resource("/v1/connect/callback").route(web::get().to(callback)).default_service(web::to(method_not_allowed)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSession {
    connection_id: String,
    owner: String,
    return_to: Option<String>,
}

fn bearer(req: &HttpRequest) -> Option<String> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// Admin token, or an agent token whose policy covers that connection for that owner.
async fn create_session(req: HttpRequest, state: web::Data<AppState>, body: web::Json<NewSession>) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let token = bearer(&req).ok_or_else(ApiError::unauthorized)?;
    let connection = ConnectionId::parse(&body.connection_id)?;
    let owner = Owner::parse(&body.owner)?;
    let actor = if token.starts_with("lka_") {
        let t = token.clone();
        blocking(&state, move |v| v.authenticate_admin(&t)).await?.actor().name()
    } else {
        let claims = state.tokens.verify(&token, state.vault.clock().now()).map_err(|_| ApiError::unauthorized())?;
        let principal = claims.principal();
        let agent_id = principal.agent_id.clone();
        let agent = blocking(&state, move |v| v.active_agent(&agent_id)).await?.ok_or_else(ApiError::unauthorized)?;
        let request = match owner.kind() {
            OwnerKind::User => ReleaseRequest { user_id: Some(owner.id().to_owned()), ..Default::default() },
            OwnerKind::Tenant => ReleaseRequest { tenant_id: Some(owner.id().to_owned()), ..Default::default() },
        };
        match policy::authorize(&agent.policy, &connection, &principal, &request) {
            Ok((_, o)) if o == owner => format!("agent:{}", agent.id),
            _ => {
                return Err(ApiError::new(
                    actix_web::http::StatusCode::FORBIDDEN,
                    "access_denied",
                    "the agent's policy does not cover this connection for this owner",
                ))
            }
        }
    };
    let (c, o, r) = (connection.clone(), owner.clone(), body.return_to);
    let (id, expires_at) = blocking(&state, move |v| v.create_connect_session(&actor, &c, &o, r)).await?;
    Ok(HttpResponse::Created().insert_header((header::CACHE_CONTROL, "no-store")).json(json!({
        "connect_url": format!("{}/v1/connect/s/{id}", state.tokens.public_url()),
        "expires_at": crate::time::rfc3339(expires_at),
    })))
}

fn page(status: actix_web::http::StatusCode, title: &str, message: &str) -> HttpResponse {
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"))
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
             <body style=\"font-family:sans-serif;max-width:36em;margin:4em auto\"><h1>{t}</h1><p>{m}</p></body></html>",
            t = esc(title),
            m = esc(message)
        ))
}

fn invalid_link() -> HttpResponse {
    page(
        actix_web::http::StatusCode::NOT_FOUND,
        "Link not valid",
        "This connect link is invalid, was already used, or has expired. Ask for a new one.",
    )
}

/// Audits a connect flow that ended without storing anything (best effort: the user
/// already gets the answer, and the failure is logged if the record cannot be written).
async fn audit_failure(state: &AppState, target: &str, reason: &str) {
    let (t, r) = (target.to_owned(), reason.to_owned());
    let _ = blocking(state, move |v| {
        v.audit_connect_failure(&t, &r);
        Ok(())
    })
    .await;
}

/// Opens a connect link once: 302 to the provider with state and PKCE S256.
async fn open_link(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    if id.len() > 80 || !id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        return Ok(invalid_link());
    }
    let opened = match blocking(&state, move |v| v.open_connect_session(&id)).await {
        Ok(o) => o,
        Err(_) => return Ok(invalid_link()),
    };
    match state.oauth.authorize_url(&opened).await {
        Ok(url) => {
            Ok(HttpResponse::Found().insert_header((header::LOCATION, url)).insert_header((header::CACHE_CONTROL, "no-store")).finish())
        }
        Err(e) => {
            tracing::error!(error = %e, connection = %opened.connection, "cannot build the authorization URL");
            Ok(page(
                actix_web::http::StatusCode::BAD_GATEWAY,
                "Provider not reachable",
                "The provider's configuration could not be loaded. Try again later.",
            ))
        }
    }
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

fn finish(return_to: Option<&str>, outcome: Result<(), &str>) -> HttpResponse {
    match (return_to.and_then(|r| url::Url::parse(r).ok()), outcome) {
        (Some(mut url), outcome) => {
            match outcome {
                Ok(()) => url.query_pairs_mut().append_pair("status", "connected"),
                Err(code) => url.query_pairs_mut().append_pair("error", code),
            };
            HttpResponse::Found()
                .insert_header((header::LOCATION, url.to_string()))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .finish()
        }
        (None, Ok(())) => page(actix_web::http::StatusCode::OK, "Connected", "Your account is connected. You can close this window."),
        (None, Err("access_denied")) => {
            page(actix_web::http::StatusCode::OK, "Not connected", "You declined the request; nothing was stored.")
        }
        (None, Err(_)) => page(
            actix_web::http::StatusCode::BAD_GATEWAY,
            "Not connected",
            "The provider did not complete the connection; nothing was stored. Try again with a new link.",
        ),
    }
}

/// The provider's redirect back. Checks state (single use), `iss` where sent, then
/// exchanges the code and stores the credential.
async fn callback(state: web::Data<AppState>, q: web::Query<Callback>) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let Some(st) = q.state.filter(|s| !s.is_empty() && s.len() <= 256) else {
        return Ok(page(
            actix_web::http::StatusCode::BAD_REQUEST,
            "Invalid request",
            "The response is missing its state; nothing was stored.",
        ));
    };
    let session = match blocking(&state, move |v| v.finish_connect_session(&st)).await {
        Ok(s) => s,
        Err(_) => {
            return Ok(page(
                actix_web::http::StatusCode::BAD_REQUEST,
                "Link not valid",
                "This response does not match an open connect session (forged, replayed or expired); nothing was stored.",
            ));
        }
    };
    let target = format!("{}/{}", session.connection, session.owner);
    if let Some(err) = q.error {
        let code = if err == "access_denied" { "access_denied" } else { "provider_error" };
        audit_failure(&state, &target, code).await;
        return Ok(finish(session.return_to.as_deref(), Err(code)));
    }
    let Some(code) = q.code.filter(|c| !c.is_empty() && c.len() <= 4096) else {
        return Ok(finish(session.return_to.as_deref(), Err("invalid_request")));
    };
    match state.oauth.complete_connect(&session, &code, q.iss.as_deref()).await {
        Ok(()) => Ok(finish(session.return_to.as_deref(), Ok(()))),
        Err(reason) => {
            tracing::warn!(connection = %session.connection, reason = %reason, "connect flow failed");
            audit_failure(&state, &target, &reason).await;
            Ok(finish(session.return_to.as_deref(), Err("connect_failed")))
        }
    }
}
