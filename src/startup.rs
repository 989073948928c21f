//! Builds the HTTP server from a vault and a bound listener (port 0 in tests).

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpServer};

use crate::api::{self, AppState, RequestContext};
use crate::auth::subject::JwksCache;
use crate::auth::TokenService;
use crate::oauth::OAuthService;
use crate::vault::Vault;

/// Threads per worker for SQLite and crypto work. Measured on 2 cores with 64 concurrent
/// releases (bench/run.py): 8 gave 5.1k releases/s, p99 35 ms; actix's default (512 / workers)
/// gave 2.7k/s, p99 89 ms — dozens of threads contending inside SQLite cost more than they add.
const BLOCKING_THREADS_PER_WORKER: usize = 8;

/// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE_SECS: u64 = 10;

/// What the server needs beyond the vault.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `iss` and `aud` of agent tokens; base of the well-known documents.
    pub public_url: String,
    pub max_body_bytes: usize,
    pub workers: Option<usize>,
    /// Run the background OAuth refresher.
    pub refresher: bool,
}

/// Loads the token-signing keys (creating the first) and builds the server.
pub fn server(vault: Arc<Vault>, listener: TcpListener, opts: ServerOptions) -> std::io::Result<Server> {
    let keys = vault.signing_keys().map_err(|e| std::io::Error::other(format!("cannot load token-signing keys: {e}")))?;
    let tokens = Arc::new(TokenService::new(opts.public_url.clone(), keys));
    let oauth = Arc::new(OAuthService::new(vault.clone(), opts.public_url.clone()));
    if opts.refresher {
        tokio::spawn(oauth.clone().run_refresher());
    }
    let state = AppState { vault, tokens, jwks: Arc::new(JwksCache::new()), oauth, max_body_bytes: opts.max_body_bytes };
    let mut http = HttpServer::new(move || App::new().wrap(RequestContext).configure(api::routes(state.clone())))
        .shutdown_timeout(SHUTDOWN_GRACE_SECS)
        .worker_max_blocking_threads(BLOCKING_THREADS_PER_WORKER)
        .listen(listener)?;
    if let Some(n) = opts.workers {
        http = http.workers(n);
    }
    Ok(http.run())
}
