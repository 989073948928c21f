//! Builds the HTTP server from a vault and a bound listener (port 0 in tests).

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpServer};

use crate::api::{self, AppState, RequestContext};
use crate::vault::Vault;

/// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE_SECS: u64 = 10;

pub fn server(
    vault: Arc<Vault>,
    listener: TcpListener,
    max_body_bytes: usize,
    workers: Option<usize>,
) -> std::io::Result<Server> {
    let state = AppState {
        vault,
        max_body_bytes,
    };
    let mut http = HttpServer::new(move || {
        App::new()
            .wrap(RequestContext)
            .configure(api::routes(state.clone()))
    })
    .shutdown_timeout(SHUTDOWN_GRACE_SECS)
    .listen(listener)?;
    if let Some(n) = workers {
        http = http.workers(n);
    }
    Ok(http.run())
}
