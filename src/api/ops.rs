//! Operations endpoints: liveness and readiness.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::middleware::bearer;
use super::{not_allowed, ApiError, AppState};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/healthz").route(web::get().to(healthz)).default_service(not_allowed("GET")))
        .service(web::resource("/readyz").route(web::get().to(readyz)).default_service(not_allowed("GET")))
        .service(web::resource("/openapi.json").route(web::get().to(openapi)).default_service(not_allowed("GET")))
        .configure(metrics_route);
}

pub fn metrics_route(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/metrics").route(web::get().to(metrics)).default_service(not_allowed("GET")));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the database answers and the active master key is loaded.
async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let r = state.blocking(|v| Ok(v.readiness())).await?;
    if r.is_ready() {
        return Ok(HttpResponse::Ok().json(json!({"status": "ready", "database": "ok", "keys": "ok"})));
    }
    let (database, keys) = (r.database.unwrap_or_else(|| "ok".into()), r.keys.unwrap_or_else(|| "ok".into()));
    tracing::warn!(%database, %keys, "not ready");
    Err(ApiError::new(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, "not_ready", format!("database: {database}; keys: {keys}"))
        .with("database", json!(database))
        .with("keys", json!(keys)))
}

/// The OpenAPI 3.1 description of every route (kept next to the handlers; a test
/// checks that every documented operation is routed).
async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(include_str!("openapi.json"))
}

/// Prometheus metrics: refresh outcomes and latency, credentials by status, releases.
/// Counts, labelled by connection id at most (no owners, agents or secrets). Open by default; `metrics_token` requires a bearer token,
/// `metrics_bind` moves it to its own listener.
async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.metrics_elsewhere {
        return Err(ApiError::not_found("no such route"));
    }
    if let Some(expected) = &state.metrics_token {
        let given = bearer(req.headers()).unwrap_or_default();
        if !crate::crypto::ct_eq(given.as_bytes(), expected.expose().as_bytes()) {
            return Err(ApiError::unauthorized());
        }
    }
    let text = state.services.metrics_text().await?;
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(text))
}
