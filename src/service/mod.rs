//! Application services: what one request asks of latchkey, composed from the vault, the
//! OAuth service, agent tokens and metrics, and written so that each rule can be
//! unit-tested without HTTP. The API layer parses a request into these types, calls one
//! method, and maps the result; nothing here knows about HTTP.
//!
//! - [`tokens`]: the token endpoint (client credentials, RFC 8693 token exchange).
//! - [`release`]: a release, refreshing first when the token is too short-lived.
//! - [`proxy`]: a call forwarded with the credential injected (proxy mode).
//! - [`connect`]: who may create connect links, opening them, and the callback.
//! - [`credentials`]: disconnecting (revoke at the provider, then destroy).

pub mod connect;
pub mod credentials;
pub mod limits;
pub mod proxy;
pub mod release;
pub mod tokens;

use std::sync::Arc;

use crate::auth::subject::JwksCache;
use crate::auth::TokenService;
use crate::metrics::Metrics;
use crate::oauth::{self, ClientOptions, OAuthService};
use crate::vault::{self, Vault, VaultError};

/// Why the services could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot load the token-signing keys: {0}")]
    SigningKeys(VaultError),
    #[error(transparent)]
    OAuth(#[from] oauth::Error),
    #[error("cannot build the JWKS client: {0}")]
    Jwks(String),
    #[error("cannot build the proxy client: {0}")]
    Proxy(String),
}

/// Everything the request handlers use, shared by every worker.
pub struct Services {
    pub vault: Arc<Vault>,
    pub oauth: Arc<OAuthService>,
    pub tokens: Arc<TokenService>,
    pub jwks: Arc<JwksCache>,
    pub metrics: Arc<Metrics>,
    /// Failed client authentications per source address.
    pub failures: limits::FailureLimiter,
    /// Repeated failures per client, audited once a minute.
    pub failure_audit: limits::FailureAudit,
    /// Upstream clients for proxy mode.
    pub proxy_clients: proxy::ProxyClients,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").field("vault", &self.vault).finish_non_exhaustive()
    }
}

impl Services {
    /// Loads the token-signing keys (creating the first) and builds the OAuth service.
    pub fn new(vault: Arc<Vault>, public_url: String, client: ClientOptions) -> Result<Self, StartError> {
        let keys = vault.signing_keys().map_err(StartError::SigningKeys)?;
        let tokens = Arc::new(TokenService::new(public_url.clone(), keys));
        let metrics = Arc::new(Metrics::default());
        let jwks = Arc::new(JwksCache::new().map_err(|e| StartError::Jwks(e.to_string()))?);
        let oauth = Arc::new(OAuthService::new(vault.clone(), public_url, metrics.clone(), jwks.clone(), client)?);
        let proxy_clients =
            proxy::ProxyClients::new(Arc::new(crate::egress::SystemLookup)).map_err(|e| StartError::Proxy(e.to_string()))?;
        Ok(Services { vault, oauth, tokens, jwks, metrics, failures: Default::default(), failure_audit: Default::default(), proxy_clients })
    }

    /// Runs a vault call on the blocking pool: SQLite, argon2 and key loading must not
    /// block the async workers.
    pub async fn blocking<T, F>(&self, f: F) -> vault::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Vault) -> vault::Result<T> + Send + 'static,
    {
        let vault = self.vault.clone();
        match tokio::task::spawn_blocking(move || crate::store::blocking_section(|| f(&vault))).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "a blocking vault call panicked or was cancelled");
                Err(VaultError::Internal("a blocking task failed"))
            }
        }
    }

    /// Who a presented agent token speaks for; `None` if it is invalid or expired. (Whether
    /// the agent is still enabled is checked by each operation.)
    pub fn agent_principal(&self, token: &str) -> Option<crate::policy::Principal> {
        match self.tokens.verify(token, self.vault.clock().now()) {
            Ok(verified) => Some(verified.principal.clone()),
            Err(e) => {
                tracing::debug!(reason = %e, "agent token refused");
                None
            }
        }
    }

    /// Prometheus text for `/metrics`.
    pub async fn metrics_text(&self) -> vault::Result<String> {
        let by_status = self.blocking(|v| v.credentials_by_status()).await?;
        Ok(self.metrics.render(&by_status, self.vault.integrity_violations(), self.vault.release_read_statements()))
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A vault in a temporary directory with services around it, for unit tests of the
    //! service layer (no HTTP).
    use super::*;
    use crate::time::Clock;
    use crate::vault::Actor;

    pub struct Fixture {
        pub _dir: tempfile::TempDir,
        pub services: Services,
        pub admin_token: String,
        pub clock: Clock,
    }

    pub fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::fixed(1_800_000_000);
        let init =
            Vault::init(&dir.path().join("data"), &dir.path().join("keys"), None, clock.clone(), &Actor::Cli("test".into())).unwrap();
        let vault = Arc::new(init.vault);
        let services = Services::new(vault, "http://vault.test".into(), ClientOptions::default()).unwrap();
        Fixture { _dir: dir, services, admin_token: init.admin_token.expose().to_owned(), clock }
    }
}
