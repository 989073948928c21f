//! Builds the application from a vault and a bound listener (port 0 in tests): the
//! services, the background refresher and the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpServer};

use crate::api::{self, body_deadline, AppState, BodyDeadline, RequestContext};
use crate::oauth::ClientOptions;
use crate::service::Services;
use crate::vault::Vault;

/// Threads per worker for SQLite and crypto work. A handful per core: more threads
/// contend inside SQLite and cost more than they add (see docs/performance.md).
const BLOCKING_THREADS_PER_WORKER: usize = 8;

/// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE_SECS: u64 = 10;

/// What the server needs beyond the vault.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `iss` and `aud` of agent tokens; base of the well-known documents and links.
    pub public_url: String,
    pub max_body_bytes: usize,
    /// HTTP workers (default: one per core).
    pub workers: Option<usize>,
    /// Run the background OAuth refresher.
    pub refresher: bool,
    /// Limits of calls to OAuth providers.
    pub client: ClientOptions,
    pub trusted_proxies: Vec<crate::config::Cidr>,
    pub limits: crate::config::HttpLimits,
    pub metrics_token: Option<crate::secret::Secret>,
    /// Serve `/metrics` here only (not on the main listener).
    pub metrics_listener: Option<Arc<TcpListener>>,
}

impl ServerOptions {
    pub fn new(public_url: String, max_body_bytes: usize) -> Self {
        ServerOptions {
            public_url,
            max_body_bytes,
            workers: None,
            refresher: true,
            client: ClientOptions::default(),
            trusted_proxies: Vec::new(),
            limits: crate::config::HttpLimits::default(),
            metrics_token: None,
            metrics_listener: None,
        }
    }
}

/// Writes the audit records of repeated authentication failures every few seconds.
async fn flush_failure_audit(services: Arc<Services>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        if let Err(e) = services.flush_failure_audit().await {
            tracing::error!(error = %e, "cannot write the audit record of repeated authentication failures");
        }
    }
}

/// This server as other replicas see it in the database.
#[derive(Debug, Clone)]
pub struct ReplicaIdentity {
    pub id: String,
    pub host: String,
    pub started_at: i64,
}

impl ReplicaIdentity {
    fn new(now: i64) -> std::io::Result<Self> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
        let host = if host.is_empty() { "unknown".to_owned() } else { host };
        let id = crate::vault::new_id(&format!("{host}-{}-", std::process::id())).map_err(std::io::Error::other)?;
        Ok(ReplicaIdentity { id, host, started_at: now })
    }
}

/// Announces this replica every few seconds (and measures the database clock), on a
/// thread of its own: a busy or blocked runtime must not make a live replica look dead.
/// Ends when the vault is dropped.
fn heartbeat(vault: std::sync::Weak<crate::vault::Vault>, me: ReplicaIdentity) {
    let interval = std::time::Duration::from_millis(crate::vault::HEARTBEAT_INTERVAL_MS as u64);
    let glance = std::time::Duration::from_millis(200);
    let mut failing = false;
    let mut reported: Vec<u32> = Vec::new();
    let mut last = std::time::Instant::now() - interval;
    let mut last_check = std::time::Instant::now();
    loop {
        let Some(v) = vault.upgrade() else { return };
        crate::store::blocking_section(|| {
            v.record_violations();
            if last_check.elapsed() >= crate::vault::INTEGRITY_CHECK_INTERVAL && !v.integrity_failed() {
                last_check = std::time::Instant::now();
                if let Err(e) = v.check_integrity() {
                    tracing::error!(error = %e, "integrity check failed; refusing releases until restarted on a sound database");
                }
            }
        });
        // Between beats, a cheap look for a newly staged key this replica has not reported:
        // `keys rotate` is waiting for exactly that report.
        if last.elapsed() < interval && !crate::store::blocking_section(|| v.staged_key_unreported(&reported)) {
            drop(v);
            std::thread::sleep(glance);
            continue;
        }
        let beat = crate::store::blocking_section(|| v.heartbeat(&me.id, &me.host, me.started_at));
        drop(v);
        last = std::time::Instant::now();
        if let Ok(row) = &beat {
            reported = row.key_versions.iter().chain(&row.missing_keys).copied().collect();
        }
        match beat {
            Ok(_) if failing => {
                tracing::info!("heartbeat recorded again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot record this replica's heartbeat");
                failing = true;
            }
            Err(_) => {}
        }
        std::thread::sleep(glance);
    }
}

/// A built, not yet running, latchkey server.
pub struct Application {
    server: Server,
    services: Arc<Services>,
    replica: ReplicaIdentity,
    /// SIGTERM and SIGINT, handled from the moment the server is built: a signal that
    /// arrives as soon as "listening" is logged must still stop it gracefully (the HTTP
    /// server's own handlers would only be installed once it is first polled).
    stop_signals: (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
}

impl Application {
    /// Loads the token-signing keys (creating the first), starts the refresher and binds
    /// the HTTP server to `listener`. Must run inside the server's runtime.
    pub fn build(vault: Arc<Vault>, listener: TcpListener, opts: ServerOptions) -> std::io::Result<Application> {
        let services = Arc::new(Services::new(vault, opts.public_url.clone(), opts.client).map_err(std::io::Error::other)?);
        if opts.refresher {
            tokio::spawn(services.oauth.clone().run_refresher());
        }
        tokio::spawn(flush_failure_audit(services.clone()));
        let replica = ReplicaIdentity::new(services.vault.clock().now())?;
        let (vault, me) = (Arc::downgrade(&services.vault), replica.clone());
        std::thread::Builder::new().name("latchkey-heartbeat".into()).spawn(move || heartbeat(vault, me))?;
        let state = AppState {
            services: services.clone(),
            max_body_bytes: opts.max_body_bytes,
            trusted_proxies: Arc::new(opts.trusted_proxies),
            metrics_token: opts.metrics_token,
            metrics_elsewhere: opts.metrics_listener.is_some(),
        };
        let metrics_server = match &opts.metrics_listener {
            Some(l) => {
                let metrics_state = AppState { metrics_elsewhere: false, ..state.clone() };
                let server = HttpServer::new(move || App::new().configure(api::metrics_routes(metrics_state.clone())))
                    .disable_signals()
                    .workers(1)
                    .shutdown_timeout(1)
                    .listen(l.try_clone()?)?
                    .run();
                Some(server)
            }
            None => None,
        };
        let limits = opts.limits;
        let deadline = BodyDeadline(limits.request_timeout);
        let mut http = HttpServer::new(move || {
            App::new()
                .app_data(deadline)
                .wrap(actix_web::middleware::from_fn(body_deadline))
                .wrap(RequestContext)
                .configure(api::routes(state.clone()))
        })
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE_SECS)
        .worker_max_blocking_threads(BLOCKING_THREADS_PER_WORKER)
        // A client has this long to send a request's head, the body deadline covers the rest.
        .client_request_timeout(limits.request_timeout)
        .client_disconnect_timeout(std::time::Duration::from_secs(1))
        .keep_alive(std::time::Duration::from_secs(30))
        // Answers leave at once: a proxied answer goes out in several writes (head, chunks),
        // and with Nagle's algorithm the later ones waited for the client's delayed ACK
        // (40 ms on Linux) — the proxy's p99 was 44 ms at any offered rate.
        .tcp_nodelay(true)
        .max_connections(limits.max_connections)
        .listen(listener)?;
        if let Some(n) = opts.workers {
            http = http.workers(n);
        }
        if let Some(m) = metrics_server {
            // Stops with the process: it has no state of its own to drain.
            tokio::spawn(m);
        }
        use tokio::signal::unix::{signal, SignalKind};
        let stop_signals = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
        Ok(Application { server: http.run(), services, replica, stop_signals })
    }

    /// The services behind the server (tests use them to move time and wake the refresher).
    pub fn services(&self) -> Arc<Services> {
        self.services.clone()
    }

    /// Serves until SIGTERM/SIGINT (then drains for up to [`SHUTDOWN_GRACE_SECS`]).
    pub async fn run(mut self) -> std::io::Result<()> {
        let (term, int) = &mut self.stop_signals;
        let served = tokio::select! {
            r = &mut self.server => r,
            _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
                tracing::info!("stop signal: draining");
                // The command is sent at once; the server future (polled below) does the stop.
                drop(self.server.handle().stop(true));
                (&mut self.server).await
            }
        };
        // Bounded: a database that does not answer must not hold the shutdown (the row then
        // simply ages out of the live window).
        // Records nobody waited for (proxied calls' outcomes) are committed first, so that the
        // last checkpoint covers everything this process wrote.
        match tokio::time::timeout(std::time::Duration::from_secs(2), self.services.vault.flush_audit()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the last audit records"),
            Err(_) => tracing::warn!("writing the last audit records timed out"),
        }
        match tokio::time::timeout(std::time::Duration::from_secs(2), self.services.blocking(|v| v.final_checkpoint())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the final audit checkpoint"),
            Err(_) => tracing::warn!("writing the final audit checkpoint timed out"),
        }
        let id = self.replica.id.clone();
        match tokio::time::timeout(std::time::Duration::from_secs(2), self.services.blocking(move |v| v.leave(&id))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove this replica's heartbeat"),
            Err(_) => tracing::warn!("removing this replica's heartbeat timed out"),
        }
        served
    }
}
