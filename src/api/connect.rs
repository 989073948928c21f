//! The connect flow for end users: a single-use link → the provider (state + PKCE S256)
//! → our callback → tokens stored. Pages are small, static HTML. The callback's query
//! (code, state) is never logged: the request log records the path only.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::middleware::bearer;
use super::{method_not_allowed, ApiError, AppState};
use crate::model::{ConnectionId, Owner};
use crate::service::connect::{Callback, CallbackOutcome, LinkError, NewConnectSession};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/connect/sessions").route(web::post().to(create_session)).default_service(web::to(method_not_allowed)))
        .service(web::resource("/v1/connect/s/{session}").route(web::get().to(open_link)).default_service(web::to(method_not_allowed)))
        .service(web::resource("/v1/connect/callback").route(web::get().to(callback)).default_service(web::to(method_not_allowed)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSessionBody {
    connection_id: ConnectionId,
    owner: Owner,
    return_to: Option<String>,
}

/// Admin token, or an agent token whose policy covers that connection for that owner.
async fn create_session(req: HttpRequest, state: web::Data<AppState>, body: web::Json<NewSessionBody>) -> Result<HttpResponse, ApiError> {
    let token = bearer(req.headers()).ok_or_else(ApiError::unauthorized)?;
    let body = body.into_inner();
    let new = NewConnectSession { connection: body.connection_id, owner: body.owner, return_to: body.return_to };
    let created = state.services.create_connect_session(token, new).await?;
    Ok(HttpResponse::Created().insert_header((header::CACHE_CONTROL, "no-store")).json(json!({
        "connect_url": created.connect_url,
        "expires_at": crate::time::rfc3339(created.expires_at),
    })))
}

/// Opens a connect link once: 302 to the provider.
async fn open_link(state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    match state.services.open_connect_link(&id).await {
        Ok(url) => HttpResponse::Found().insert_header((header::LOCATION, url)).insert_header((header::CACHE_CONTROL, "no-store")).finish(),
        Err(LinkError::Invalid) => page(
            StatusCode::NOT_FOUND,
            "Link not valid",
            "This connect link is invalid, was already used, or has expired. Ask for a new one.",
        ),
        Err(LinkError::ProviderUnreachable) => {
            page(StatusCode::BAD_GATEWAY, "Provider not reachable", "The provider's configuration could not be loaded. Try again later.")
        }
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

/// The provider's redirect back.
async fn callback(state: web::Data<AppState>, q: web::Query<CallbackQuery>) -> HttpResponse {
    let q = q.into_inner();
    let outcome = state.services.connect_callback(Callback { code: q.code, state: q.state, iss: q.iss, error: q.error }).await;
    match outcome {
        CallbackOutcome::MissingState => {
            page(StatusCode::BAD_REQUEST, "Invalid request", "The response is missing its state; nothing was stored.")
        }
        CallbackOutcome::UnknownState => page(
            StatusCode::BAD_REQUEST,
            "Link not valid",
            "This response does not match an open connect session (forged, replayed or expired); nothing was stored.",
        ),
        CallbackOutcome::Finished { return_to, result } => finish(return_to.as_deref(), result),
    }
}

/// The end of a flow: back to `return_to` with the outcome, or a small page.
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
        (None, Ok(())) => page(StatusCode::OK, "Connected", "Your account is connected. You can close this window."),
        (None, Err("access_denied")) => page(StatusCode::OK, "Not connected", "You declined the request; nothing was stored."),
        (None, Err(_)) => page(
            StatusCode::BAD_GATEWAY,
            "Not connected",
            "The provider did not complete the connection; nothing was stored. Try again with a new link.",
        ),
    }
}

fn page(status: StatusCode, title: &str, message: &str) -> HttpResponse {
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
