//! The one place where errors become HTTP responses.
//!
//! Bodies are `{"error", "error_description", "request_id"}`. Server-side failures
//! are logged in full (they never contain secrets) and answered with a fixed, boring
//! description so no internals leak.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::model::ValidationError;
use crate::service::connect::ConnectError;
use crate::service::proxy::ProxyError;
use crate::service::tokens::TokenEndpointError;
use crate::vault::{ReleaseError, VaultError};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: String,
    /// Extra body members (e.g. `refused_scopes`).
    pub extra: serde_json::Map<String, serde_json::Value>,
    pub retry_after: Option<u64>,
    /// The methods a 405's resource allows (the `Allow` header).
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        ApiError { status, code, description: description.into(), extra: serde_json::Map::new(), retry_after: None, allow: None }
    }

    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    pub fn invalid(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_token", "a valid bearer token is required")
    }

    pub fn not_found(description: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", description)
    }

    pub fn forbidden(description: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "access_denied", description)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
    }

    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal error; see the server log for this request id")
    }

    /// The database is busy or unreachable (a failover, a restart): nothing was changed
    /// half-way; retrying after `Retry-After` seconds is safe.
    pub fn unavailable() -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the vault is temporarily unavailable; retry shortly");
        e.retry_after = Some(2);
        e
    }

    /// The response, with the request id filled in by the request middleware.
    pub fn to_response(&self, request_id: &str) -> HttpResponse {
        let mut b = HttpResponse::build(self.status);
        b.insert_header((header::CACHE_CONTROL, "no-store"));
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = match self.code {
                "invalid_client" => "Basic realm=\"latchkey\"".to_owned(),
                code => format!("Bearer error=\"{code}\""),
            };
            b.insert_header((header::WWW_AUTHENTICATE, challenge));
        }
        if let Some(a) = self.allow {
            b.insert_header((header::ALLOW, a));
        }
        if let Some(s) = self.retry_after {
            b.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        let mut body = json!({"error": self.code, "error_description": self.description, "request_id": request_id});
        if let Some(obj) = body.as_object_mut() {
            obj.extend(self.extra.clone());
        }
        b.json(body)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.description)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        // Replaced by the request middleware, which knows the request id.
        self.to_response("")
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::invalid(e.0)
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Invalid(v) => v.into(),
            VaultError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            VaultError::Conflict(msg) => ApiError::new(StatusCode::CONFLICT, "conflict", msg),
            VaultError::Unauthorized => ApiError::unauthorized(),
            VaultError::Release(r) => r.into(),
            VaultError::Store(e) if e.is_transient() => {
                tracing::warn!(error = %e, "database busy or unavailable");
                ApiError::unavailable()
            }
            other => {
                tracing::error!(error = %other, "request failed");
                ApiError::internal()
            }
        }
    }
}

impl From<ReleaseError> for ApiError {
    fn from(e: ReleaseError) -> Self {
        let msg = e.to_string();
        match e {
            ReleaseError::InvalidToken => Self::new(StatusCode::UNAUTHORIZED, "invalid_token", msg),
            ReleaseError::InvalidRequest(m) => Self::invalid(m),
            ReleaseError::AccessDenied => Self::new(StatusCode::FORBIDDEN, "access_denied", msg),
            ReleaseError::InsufficientScope(refused) => {
                Self::new(StatusCode::FORBIDDEN, "insufficient_scope", msg).with("refused_scopes", json!(refused))
            }
            ReleaseError::ExcessScope { excess, unknown } => Self::new(StatusCode::FORBIDDEN, "insufficient_scope", msg)
                .with("refused_scopes", json!([]))
                .with("excess_scopes", json!(excess))
                .with("held_scopes_unknown", json!(unknown)),
            ReleaseError::NotConnected => Self::new(StatusCode::NOT_FOUND, "not_connected", msg),
            ReleaseError::ReauthRequired => Self::new(StatusCode::CONFLICT, "reauth_required", msg),
            ReleaseError::ProviderUnavailable { retry_after } => {
                let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "provider_unavailable", msg);
                e.retry_after = Some(retry_after);
                e
            }
            ReleaseError::AuditUnavailable => {
                let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", msg);
                e.retry_after = Some(2);
                e
            }
            ReleaseError::MinTtlUnsatisfiable { lifetime } => {
                Self::new(StatusCode::BAD_REQUEST, "min_ttl_unsatisfiable", msg).with("token_lifetime", json!(lifetime))
            }
            ReleaseError::ProxyNotConfigured => Self::new(StatusCode::CONFLICT, "proxy_not_configured", msg),
            ReleaseError::MethodNotAllowed => Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", msg),
            ReleaseError::InvalidPath(_) => Self::new(StatusCode::BAD_REQUEST, "invalid_path", msg),
            ReleaseError::PathNotAllowed(_) => Self::new(StatusCode::FORBIDDEN, "path_not_allowed", msg),
            ReleaseError::EgressDenied => Self::new(StatusCode::BAD_GATEWAY, "egress_denied", msg),
            ReleaseError::RefreshNeeded { .. }
            | ReleaseError::NarrowNeeded { .. }
            | ReleaseError::KeyNeeded { .. }
            | ReleaseError::Internal => Self::internal(),
        }
    }
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> Self {
        let msg = e.to_string();
        match e {
            ProxyError::Vault(v) => v.into(),
            ProxyError::BodyTooLarge { limit } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", msg).with("max_body", serde_json::json!(limit))
            }
            ProxyError::Timeout(_) => Self::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", msg),
            ProxyError::EgressDenied => Self::new(StatusCode::BAD_GATEWAY, "egress_denied", msg),
            ProxyError::ResponseTooLarge { .. } => Self::new(StatusCode::BAD_GATEWAY, "upstream_too_large", msg),
            ProxyError::Unavailable => Self::new(StatusCode::BAD_GATEWAY, "upstream_unavailable", msg),
            ProxyError::BadBody => Self::invalid(msg),
        }
    }
}

impl From<TokenEndpointError> for ApiError {
    /// RFC 6749 §5.2 error codes.
    fn from(e: TokenEndpointError) -> Self {
        let msg = e.to_string();
        match e {
            TokenEndpointError::InvalidRequest(_) => Self::new(StatusCode::BAD_REQUEST, "invalid_request", msg),
            TokenEndpointError::UnsupportedGrantType => Self::new(StatusCode::BAD_REQUEST, "unsupported_grant_type", msg),
            TokenEndpointError::InvalidClient => Self::new(StatusCode::UNAUTHORIZED, "invalid_client", msg),
            TokenEndpointError::InvalidGrant(_) => Self::new(StatusCode::BAD_REQUEST, "invalid_grant", msg),
            TokenEndpointError::AuditUnavailable => {
                let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", msg);
                e.retry_after = Some(2);
                e
            }
            TokenEndpointError::Unavailable => Self::unavailable(),
            TokenEndpointError::TooManyRequests { retry_after } => {
                let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", msg);
                e.retry_after = Some(retry_after);
                e
            }
            TokenEndpointError::Internal => Self::internal(),
        }
    }
}

impl From<ConnectError> for ApiError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Unauthorized => Self::unauthorized(),
            ConnectError::Forbidden => Self::forbidden(e.to_string()),
            ConnectError::ProofUnavailable(msg) => Self::invalid(msg),
            ConnectError::Vault(v) => v.into(),
        }
    }
}

impl From<actix_web::error::UrlencodedError> for ApiError {
    fn from(e: actix_web::error::UrlencodedError) -> Self {
        use actix_web::error::UrlencodedError as U;
        match e {
            U::Overflow { limit, .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("the request body exceeds {limit} bytes"))
            }
            U::Payload(actix_web::error::PayloadError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request body did not arrive in time")
            }
            _ => ApiError::invalid("the body must be application/x-www-form-urlencoded"),
        }
    }
}

impl From<actix_web::error::JsonPayloadError> for ApiError {
    fn from(e: actix_web::error::JsonPayloadError) -> Self {
        use actix_web::error::JsonPayloadError as J;
        match e {
            J::OverflowKnownLength { limit, .. } | J::Overflow { limit } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("the request body exceeds {limit} bytes"))
            }
            J::ContentType => {
                ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "send the body as application/json")
            }
            J::Deserialize(d) => ApiError::invalid(format!("invalid JSON body: {}", crate::model::clean_serde_error(&d.to_string()))),
            J::Payload(actix_web::error::PayloadError::Overflow) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
            }
            J::Payload(actix_web::error::PayloadError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request body did not arrive in time")
            }
            _ => ApiError::invalid("the request body could not be read"),
        }
    }
}
