//! HTTP API (actix-web). Handlers are thin: parse the request into domain types, call one
//! service method, map the result. Errors become responses in one place ([`error`]).
//! Routes and their order live in [`routes`].

mod admin;
mod agent;
mod connect;
pub mod error;
mod middleware;
mod ops;

use std::sync::Arc;

use actix_web::{web, HttpResponse};

pub use error::ApiError;
pub use middleware::{body_deadline, BodyDeadline, RequestContext, RequestId};

use crate::service::Services;
use crate::vault::{self, Vault};

/// Shared by every worker.
#[derive(Clone)]
pub struct AppState {
    pub services: Arc<Services>,
    pub max_body_bytes: usize,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<Vec<crate::config::Cidr>>,
    /// A bearer token `/metrics` requires.
    pub metrics_token: Option<crate::secret::Secret>,
    /// `/metrics` is served on its own listener, not here.
    pub metrics_elsewhere: bool,
}

impl AppState {
    /// Runs a vault call on the blocking pool; errors become API errors.
    async fn blocking<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Vault) -> vault::Result<T> + Send + 'static,
    {
        self.services.blocking(f).await.map_err(ApiError::from)
    }
}

fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default().limit(limit).error_handler(|e, _| ApiError::from(e).into())
}

/// Reads a JSON body by hand, for routes that authenticate before reading it; errors as
/// the `Json` extractor's.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: &actix_web::HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<T, ApiError> {
    use actix_web::error::{JsonPayloadError, PayloadError};
    use actix_web::HttpMessage;
    use futures_core::Stream;
    let json = req.mime_type().ok().flatten().is_some_and(|m| m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"));
    if !json {
        return Err(JsonPayloadError::ContentType.into());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut payload).poll_next(cx)).await {
        let chunk = chunk.map_err(JsonPayloadError::Payload)?;
        if body.len() + chunk.len() > limit {
            return Err(JsonPayloadError::Payload(PayloadError::Overflow).into());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| JsonPayloadError::Deserialize(e).into())
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such route"))
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::method_not_allowed())
}

/// The separate metrics listener's only route.
pub fn metrics_routes(state: AppState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(state)).configure(ops::metrics_route).default_service(web::to(not_found));
    }
}

/// Registers every route. The request-id middleware wraps the whole app.
pub fn routes(state: AppState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let limit = state.max_body_bytes;
        cfg.app_data(web::Data::new(state))
            .app_data(json_config(limit))
            .app_data(web::PathConfig::default().error_handler(|_, _| ApiError::invalid("invalid path parameter").into()))
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                ApiError::invalid(format!("invalid query: {}", crate::model::clean_serde_error(&e.to_string()))).into()
            }))
            .app_data(web::FormConfig::default().limit(limit).error_handler(|e, _| ApiError::from(e).into()))
            .configure(ops::routes)
            .configure(agent::routes)
            .configure(connect::routes)
            .service(web::scope("/v1/admin").wrap(actix_web::middleware::from_fn(middleware::require_admin)).configure(admin::routes))
            .default_service(web::to(not_found));
    }
}
