//! The OAuth service: everything that talks to providers on the vault's behalf. It sits
//! above the vault (it holds the vault and drives it; the vault never imports it).
//!
//! - [`endpoints`]: where a connection's provider lives (explicit fields, discovery, catalog).
//! - [`client`]: bounded HTTP requests to token and revocation endpoints, with every failure
//!   classified as a refusal of the grant or something that may heal.
//! - [`connect`]: the provider side of the connect flow (authorization URL, code exchange).
//! - [`refresh`]: on-demand refresh with single flight.
//! - [`refresher`]: the background refresher.
//!
//! Single flight has two layers: an in-process async mutex per credential (concurrent
//! releases and the background refresher of this process queue behind one refresh and
//! then see its result), and a lease column in the credential row (so another process —
//! a CLI, another replica — never refreshes the same credential at the same time). A
//! refresh's new tokens are committed before anyone is handed the new access token.

pub mod client;
mod connect;
pub mod endpoints;
mod narrow;
mod proof;
mod refresh;
mod refresher;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use crate::auth::subject::JwksCache;
use crate::metrics::Metrics;
use crate::model::ConnectionId;
use crate::vault::{Vault, VaultError};
use client::ProviderError;

pub use narrow::Narrowed;
pub use refresh::Refreshed;

/// Refreshes (on demand and background) past their single-flight lock at once.
const MAX_CONCURRENT_REFRESHES: usize = 256;
/// Concurrent token requests to one provider host: its slot is held only for the HTTP
/// request, not for our reads and commits around it.
const MAX_PER_PROVIDER: usize = 8;

/// Why an OAuth operation failed. Messages are ours (never a provider's body) and safe to
/// log; what reaches an end user is chosen by the caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection '{0}' is not an oauth2 connection")]
    NotOAuth(ConnectionId),
    #[error("connection '{0}' has no usable endpoints (unknown provider?)")]
    NoEndpoints(ConnectionId),
    #[error("the connection's authorization endpoint is not a valid URL")]
    BadAuthorizationEndpoint,
    #[error("provider discovery failed: {0}")]
    Discovery(&'static str),
    #[error("the authorization response came from a different issuer (iss mismatch)")]
    IssuerMismatch,
    #[error("the authorization response has no iss, which its issuer always sends (RFC 9207)")]
    IssuerMissing,
    #[error("the ID token was refused: {0}")]
    IdToken(String),
    #[error("the trusted issuer has no owner_proof client configured")]
    NoProofClient,
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("a background task failed")]
    Task,
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
}

/// Limits of requests to providers; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Whole-request limit of one provider call.
    pub timeout: Duration,
    /// Seconds between two refreshes that releases ask for while the token is still valid
    /// (per credential, across processes; at most half the provider's token lifetime).
    pub on_demand_cooldown: i64,
}

/// Default of [`ClientOptions::on_demand_cooldown`].
pub const ON_DEMAND_COOLDOWN: i64 = 30;

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions { timeout: client::TIMEOUT, on_demand_cooldown: ON_DEMAND_COOLDOWN }
    }
}

pub struct OAuthService {
    vault: Arc<Vault>,
    http: reqwest::Client,
    public_url: String,
    /// This process's name in refresh leases.
    holder: String,
    /// A crashed holder blocks refreshes of its credential for at most this long: longer
    /// than one provider call plus the commit.
    lease_ms: i64,
    on_demand_cooldown: i64,
    /// Per credential: the single-flight lock and a count of refreshes completed under it.
    inflight: Mutex<HashMap<String, Arc<refresh::InFlight>>>,
    discovery: Mutex<HashMap<String, (client::Discovered, Instant)>>,
    per_provider: Mutex<HashMap<String, Arc<Semaphore>>>,
    global: Arc<Semaphore>,
    wake: Notify,
    metrics: Arc<Metrics>,
    /// Verification keys of providers' and issuers' ID tokens.
    jwks: Arc<JwksCache>,
    /// Scope sets a provider would not narrow to, per credential, until when: releases
    /// for them are decided as `strict` without asking the provider (and rotating its
    /// refresh token) every time.
    unnarrowable: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for OAuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthService").field("public_url", &self.public_url).field("holder", &self.holder).finish_non_exhaustive()
    }
}

impl OAuthService {
    /// Fails if the HTTP client cannot be built: running without its timeouts and
    /// no-redirect policy is not an option.
    pub fn new(
        vault: Arc<Vault>,
        public_url: String,
        metrics: Arc<Metrics>,
        jwks: Arc<JwksCache>,
        options: ClientOptions,
    ) -> Result<Self, Error> {
        let holder = crate::vault::new_id("lk-")?;
        let lease_ms = i64::try_from((options.timeout + Duration::from_secs(5)).as_millis()).unwrap_or(i64::MAX);
        Ok(OAuthService {
            vault,
            http: client::http_client(options.timeout).map_err(|e| Error::HttpClient(e.to_string()))?,
            public_url,
            holder,
            lease_ms,
            on_demand_cooldown: options.on_demand_cooldown,
            inflight: Mutex::new(HashMap::new()),
            discovery: Mutex::new(HashMap::new()),
            per_provider: Mutex::new(HashMap::new()),
            global: Arc::new(Semaphore::new(MAX_CONCURRENT_REFRESHES)),
            wake: Notify::new(),
            metrics,
            jwks,
            unnarrowable: Mutex::new(HashMap::new()),
        })
    }

    pub fn redirect_uri(&self) -> String {
        format!("{}/v1/connect/callback", self.public_url)
    }

    /// Wakes the background refresher (a credential was stored, or tests moved the clock).
    pub fn wake_refresher(&self) {
        self.wake.notify_one();
    }

    /// Runs a vault call on the blocking pool (SQLite and crypto must not block the
    /// async workers).
    async fn run_blocking<T: Send + 'static>(&self, f: impl FnOnce(&Vault) -> Result<T, VaultError> + Send + 'static) -> Result<T, Error> {
        let vault = self.vault.clone();
        tokio::task::spawn_blocking(move || crate::store::blocking_section(|| f(&vault)))
            .await
            .map_err(|_| Error::Task)?
            .map_err(Error::Vault)
    }
}
