//! HTTP API (actix-web). Handlers are thin: parse into domain types, call the vault on
//! the blocking pool, map the error. (One measured exception: the release decision, a
//! single cached-statement read, runs on the worker — see `agent::release`.) Routes and
//! their order live in [`routes`].

mod admin;
mod agent;
mod connect;
pub mod error;
mod middleware;
mod ops;

use std::sync::Arc;

use actix_web::{web, HttpResponse};

pub use error::ApiError;

use crate::vault::{self, Vault};

/// Shared by every worker.
#[derive(Clone)]
pub struct AppState {
    pub vault: Arc<Vault>,
    pub tokens: Arc<crate::auth::TokenService>,
    pub jwks: Arc<crate::auth::subject::JwksCache>,
    pub oauth: Arc<crate::oauth::OAuthService>,
    pub max_body_bytes: usize,
}

/// Runs a vault call on the blocking pool (SQLite and crypto must not block workers).
async fn blocking<T, F>(state: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Vault) -> vault::Result<T> + Send + 'static,
{
    let vault = state.vault.clone();
    match web::block(move || f(&vault)).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(_) => Err(ApiError::internal()),
    }
}

fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default().limit(limit).error_handler(|e, _| ApiError::from(e).into())
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such route"))
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(actix_web::http::StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route"))
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
            .app_data(
                web::FormConfig::default()
                    .limit(limit)
                    .error_handler(|_, _| ApiError::invalid("the body must be application/x-www-form-urlencoded").into()),
            )
            .configure(ops::routes)
            .configure(agent::routes)
            .configure(connect::routes)
            .service(web::scope("/v1/admin").wrap(actix_web::middleware::from_fn(middleware::require_admin)).configure(admin::routes))
            .default_service(web::to(not_found));
    }
}

/// Wraps any app in the request-id / access-log middleware.
pub use middleware::{RequestContext, RequestId};
