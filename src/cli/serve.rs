//! `latchkey serve [--dev]`.

use std::net::TcpListener;
use std::sync::Arc;

use super::location;
use super::{open_vault_for_server, CliError, CliResult, NO_PASSPHRASE_WARNING};
use crate::config::Settings;
use crate::time::Clock;
use crate::vault::{Actor, Vault};

pub fn exec(settings: &Settings, dev: bool) -> CliResult {
    crate::telemetry::init(&settings.log, settings.log_format);
    if dev && !Vault::is_initialised(&location(settings)?)? {
        eprintln!("{NO_PASSPHRASE_WARNING}");
        let init = Vault::init_at(&location(settings)?, &settings.keys_dir, None, Clock::system(), &Actor::cli())?;
        eprintln!("development vault initialised in {} and {}", location(settings)?, settings.keys_dir.display());
        super::deliver_token(&init.admin_token, None)?;
    }
    let vault = open_vault_for_server(settings)?;
    let active = vault.load_keys()?;
    if settings.audit_checkpoint_file.is_none() && !settings.audit_checkpoint_stdout {
        tracing::warn!(
            "no audit checkpoint sink (audit_checkpoint_file, audit_checkpoint_stdout): records cut off the end of the audit trail and restored old backups go undetected"
        );
    }
    // A database changed outside latchkey is refused before anything is served.
    if let Err(e) = vault.check_integrity() {
        return Err(CliError::failed(format!("refusing to start: {e}")));
    }
    if let Some(f) = &settings.audit_checkpoint_file {
        tracing::info!(file = %f.display(), durability = settings.audit_durability.as_str(), "audit checkpoints go to a file");
    }
    let listener = TcpListener::bind(&settings.bind).map_err(|e| CliError::failed(format!("cannot listen on {}: {e}", settings.bind)))?;
    let addr = listener.local_addr()?;
    let vault = Arc::new(vault);
    let mut opts = crate::startup::ServerOptions::new(settings.public_url.clone(), settings.max_body_bytes);
    opts.trusted_proxies = settings.trusted_proxies.clone();
    opts.limits = settings.limits;
    opts.metrics_token = settings.metrics_token.clone();
    if let Some(bind) = &settings.metrics_bind {
        let l = TcpListener::bind(bind).map_err(|e| CliError::failed(format!("cannot listen on {bind} for metrics: {e}")))?;
        opts.metrics_listener = Some(Arc::new(l));
    }
    let public_url = opts.public_url.clone();
    actix_web::rt::System::new().block_on(async move {
        let app = crate::startup::Application::build(vault, listener, opts)?;
        tracing::info!(%addr, %public_url, master_key_version = active, "latchkey listening");
        app.run().await
    })?;
    tracing::info!("latchkey stopped");
    Ok(())
}
