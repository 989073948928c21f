//! HTTP API (actix-web). Handlers are thin: parse the request into domain types, call one
//! service method, map the result. Errors become responses in one place ([`error`]).
//! Routes and their order live in [`routes`].

mod admin;
mod agent;
mod connect;
pub mod error;
mod middleware;
mod ops;
mod proxy;

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
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(JsonPayloadError::Deserialize)?;
    object_body(value)
}

/// A body that must be a JSON object: an array is refused even where serde would read a
/// struct from it by position.
pub(crate) struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned + 'static> actix_web::FromRequest for Body<T> {
    type Error = actix_web::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &actix_web::HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let value = web::Json::<serde_json::Value>::from_request(req, payload);
        Box::pin(async move { Ok(Body(object_body(value.await?.into_inner())?)) })
    }
}

fn object_body<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::invalid("the body must be a JSON object"));
    }
    crate::model::from_value_strict(value)
        .map_err(|e| ApiError::invalid(format!("invalid JSON body: {}", crate::model::clean_serde_error(&e.to_string()))))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such route"))
}

/// The answer of a resource to any other method: 405 with `Allow: <allow>`.
fn not_allowed(allow: &'static str) -> actix_web::Route {
    web::to(move || async move {
        let mut e = ApiError::method_not_allowed();
        e.allow = Some(allow);
        Err::<HttpResponse, ApiError>(e)
    })
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
            .configure(proxy::routes)
            .service(web::scope("/v1/admin").wrap(actix_web::middleware::from_fn(middleware::require_admin)).configure(admin::routes))
            .default_service(web::to(not_found));
    }
}
