//! The `latchkey` command line. Each subcommand converts its arguments and calls the
//! library. Settings are resolved first: environment over the configuration file (the
//! one `--config` names, or `./latchkey.toml`) over defaults.
//!
//! Exit codes: 0 success; 1 the operation failed (the message says why and what to do);
//! 2 bad usage or bad input — clap's usage errors, bad configuration, and arguments or
//! input files that do not parse or validate. [`CliError`] is the one place that decides.

mod admin_token;
mod agents;
mod audit;
mod connections;
mod credentials;
mod keys;
mod serve;

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::keys::PassphraseSource;
use crate::secret::Secret;
use crate::time::Clock;
use crate::vault::Vault;

#[derive(Debug, Parser)]
#[command(name = "latchkey", version, about = "Self-hosted credential vault for AI agents", propagate_version = true)]
pub struct Cli {
    /// Configuration file (TOML). Default: ./latchkey.toml if present.
    #[arg(long, env = "LATCHKEY_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve {
        /// Development: initialise an empty data/keys directory without a passphrase.
        #[arg(long)]
        dev: bool,
    },
    /// Create the data directory, master key v1 and the first admin token.
    Init {
        /// Development only: store the master key without passphrase protection.
        #[arg(long)]
        no_passphrase: bool,
        /// Write the admin token to FILE (mode 0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        admin_token_file: Option<PathBuf>,
    },
    /// Apply pending database migrations.
    Migrate,
    /// Exit 0 if the local server answers GET /healthz (for container health checks).
    Healthcheck {
        /// Ask GET /readyz instead: the database answers and every master key in use loads
        /// (for readiness checks and load balancers).
        #[arg(long)]
        ready: bool,
    },
    /// The OAuth provider catalog.
    #[command(subcommand)]
    Providers(ProvidersCmd),
    /// Master-key lifecycle.
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// Admin tokens for the HTTP admin API.
    #[command(subcommand, name = "admin-token")]
    AdminToken(admin_token::AdminTokenCmd),
    /// Connections (third-party services).
    #[command(subcommand)]
    Connections(connections::ConnectionsCmd),
    /// Stored credentials.
    #[command(subcommand)]
    Credentials(credentials::CredentialsCmd),
    /// Agents and their policies.
    #[command(subcommand)]
    Agents(agents::AgentsCmd),
    /// The audit trail.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
}

#[derive(Debug, Subcommand)]
enum ProvidersCmd {
    /// List catalog providers with their endpoints and quirks.
    List {
        #[arg(long)]
        json: bool,
    },
}

fn providers(json: bool) -> CliResult {
    let catalog = crate::model::providers::CATALOG;
    if json {
        return print_json(&catalog);
    }
    for p in catalog {
        println!("{:<11} {}", p.name, p.display_name);
        println!("            authorize  {}", p.authorization_endpoint);
        println!("            token      {}", p.token_endpoint);
        println!("            revoke     {}", p.revocation_endpoint.unwrap_or("(none: no RFC 7009 endpoint)"));
        println!("            {}", p.notes);
    }
    Ok(())
}

/// A failed command: the message is printed as `error: …`, and the exit code says
/// whose fault it was (see the module doc).
#[derive(Debug)]
pub struct CliError {
    message: String,
    code: u8,
}

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

impl CliError {
    /// Bad usage or bad input: exit 2.
    pub fn usage(msg: impl Into<String>) -> Self {
        CliError { message: msg.into(), code: EXIT_USAGE }
    }

    /// The operation failed: exit 1.
    pub fn failed(msg: impl Into<String>) -> Self {
        CliError { message: msg.into(), code: EXIT_FAILED }
    }
}

impl From<crate::model::ValidationError> for CliError {
    fn from(e: crate::model::ValidationError) -> Self {
        CliError::usage(e.0)
    }
}

impl From<crate::vault::VaultError> for CliError {
    fn from(e: crate::vault::VaultError) -> Self {
        match e {
            crate::vault::VaultError::Invalid(v) => v.into(),
            other => CliError::failed(other.to_string()),
        }
    }
}

impl From<crate::keys::KeyError> for CliError {
    fn from(e: crate::keys::KeyError) -> Self {
        CliError::failed(e.to_string())
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> Self {
        CliError::failed(e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::failed(e.to_string())
    }
}

pub type CliResult = Result<(), CliError>;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::from_env(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve { dev } => serve::exec(&settings, dev),
        Command::Init { no_passphrase, admin_token_file } => init(&settings, no_passphrase, admin_token_file.as_deref()),
        Command::Migrate => migrate(&settings),
        Command::Healthcheck { ready } => healthcheck(&settings, ready),
        Command::Providers(ProvidersCmd::List { json }) => providers(json),
        Command::Keys(cmd) => keys::exec(&settings, cmd),
        Command::AdminToken(cmd) => admin_token::exec(&settings, cmd),
        Command::Connections(cmd) => connections::exec(&settings, cmd),
        Command::Credentials(cmd) => credentials::exec(&settings, cmd),
        Command::Agents(cmd) => agents::exec(&settings, cmd),
        Command::Audit(cmd) => audit::exec(&settings, cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// Where the passphrase comes from: the file setting, else a prompt on a terminal.
pub fn passphrase_source(settings: &Settings) -> PassphraseSource {
    match &settings.passphrase_file {
        Some(p) => PassphraseSource::File(p.clone()),
        None if std::io::stdin().is_terminal() => PassphraseSource::Prompt,
        None => PassphraseSource::None,
    }
}

/// Prints `v` as pretty JSON on stdout.
pub fn print_json(v: &impl serde::Serialize) -> CliResult {
    let text = serde_json::to_string_pretty(v).map_err(|e| CliError::failed(format!("cannot format the output: {e}")))?;
    println!("{text}");
    Ok(())
}

/// Reads a JSON document from a file or standard input; malformed JSON is bad input.
pub fn read_json(path: &Path) -> Result<serde_json::Value, CliError> {
    let text = read_input(path)?;
    serde_json::from_str(&text).map_err(|e| CliError::usage(format!("invalid JSON: {}", crate::model::clean_serde_error(&e.to_string()))))
}

/// Runs `f` with the services a running server has (for commands that call providers,
/// such as revoking at disconnect), on a runtime of its own.
pub fn with_services<T>(
    settings: &Settings,
    f: impl AsyncFnOnce(std::sync::Arc<crate::service::Services>) -> Result<T, CliError>,
) -> Result<T, CliError> {
    let vault = std::sync::Arc::new(open_vault(settings)?);
    actix_web::rt::System::new().block_on(async move {
        let services = crate::service::Services::new(vault, settings.public_url.clone(), crate::oauth::ClientOptions::default())
            .map_err(|e| CliError::failed(e.to_string()))?;
        f(std::sync::Arc::new(services)).await
    })
}

/// Where the data lives: PostgreSQL when a database URL is configured, else
/// `<data_dir>/latchkey.db`.
pub fn location(settings: &Settings) -> Result<crate::store::Location, CliError> {
    match &settings.database_url {
        Some(url) => {
            let pg = crate::store::PgConfig::parse(url.expose()).map_err(|e| CliError::usage(e.to_string()))?;
            Ok(crate::store::Location::Postgres(Box::new(pg)))
        }
        None => Ok(crate::store::Location::Embedded(settings.data_dir.clone())),
    }
}

pub fn open_vault(settings: &Settings) -> Result<Vault, CliError> {
    // Commands write their checkpoints to the file (never to stdout, which is their output).
    open_vault_with(settings, false)
}

/// [`open_vault`] for `serve`: checkpoints also go to stdout when configured.
pub fn open_vault_for_server(settings: &Settings) -> Result<Vault, CliError> {
    open_vault_with(settings, settings.audit_checkpoint_stdout)
}

fn open_vault_with(settings: &Settings, checkpoints_to_stdout: bool) -> Result<Vault, CliError> {
    let keys = if settings.keys_mounted {
        crate::keys::KeyRing::open_mounted(&settings.keys_dir, passphrase_source(settings))
    } else {
        crate::keys::KeyRing::open(&settings.keys_dir, passphrase_source(settings))
    };
    let keys = keys.map_err(crate::vault::VaultError::from)?;
    let vault = Vault::open_with_keys(&location(settings)?, keys, Clock::system())?;
    let sink =
        crate::store::checkpoint::Sink::new(settings.audit_checkpoint_file.clone(), checkpoints_to_stdout, settings.audit_durability);
    vault.configure_checkpoints(sink)?;
    Ok(vault)
}

const NO_PASSPHRASE_WARNING: &str = "WARNING: the master key is stored WITHOUT passphrase protection. Anyone who can read the keys \
directory can decrypt every secret. Use this for development only.";

fn init(settings: &Settings, no_passphrase: bool, token_file: Option<&Path>) -> CliResult {
    if settings.keys_mounted {
        return Err(CliError::usage(
            "init writes the first master key: run it with a writable keys directory (keys_mounted off), then provide the files as the mounted secret",
        ));
    }
    if let Some(f) = token_file {
        if f.exists() {
            return Err(CliError::usage(format!("{} already exists; choose a new file for the admin token", f.display())));
        }
    }
    let passphrase = if no_passphrase {
        eprintln!("{NO_PASSPHRASE_WARNING}");
        None
    } else {
        match passphrase_source(settings) {
            PassphraseSource::None => {
                return Err(CliError::usage(
                    "a passphrase is needed: set LATCHKEY_PASSPHRASE_FILE to a file holding it, run from a terminal to be prompted, or pass --no-passphrase for development",
                ))
            }
            src => src.resolve(true)?,
        }
    };
    let init = Vault::init_at(&location(settings)?, &settings.keys_dir, passphrase, Clock::system(), &crate::vault::Actor::cli())?;
    eprintln!("initialised {} (database) and {} (master key v1)", location(settings)?, settings.keys_dir.display());
    deliver_token(&init.admin_token, token_file)
}

/// Prints an admin token once, or writes it to a new file with mode 0600.
pub fn deliver_token(token: &Secret, file: Option<&Path>) -> CliResult {
    match file {
        Some(f) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(f)
                .map_err(|e| CliError::failed(format!("cannot create {}: {e}", f.display())))?;
            out.write_all(token.expose().as_bytes()).and_then(|_| out.write_all(b"\n")).and_then(|_| out.sync_all())?;
            eprintln!("admin token written to {} (mode 0600)", f.display());
        }
        None => {
            eprintln!("admin token (shown once; store it safely):");
            println!("{}", token.expose());
        }
    }
    Ok(())
}

fn migrate(settings: &Settings) -> CliResult {
    let store = crate::store::Store::open(&location(settings)?)?;
    let v = store.read(crate::store::db_schema_version)?;
    println!("database schema is at version {v} (latest known: {})", crate::store::schema_version(store.is_remote()));
    Ok(())
}

/// GET /healthz on the configured bind address (a wildcard address means loopback).
fn healthcheck(settings: &Settings, ready: bool) -> CliResult {
    use std::io::Write;
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;
    let mut addr: SocketAddr = settings.bind.parse().map_err(|_| CliError::usage("invalid bind address"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| CliError::failed(format!("cannot connect to {addr}: {e}")))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let path = if ready { "/readyz" } else { "/healthz" };
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    if &head[9..12] == b"200" {
        println!("ok");
        Ok(())
    } else {
        Err(CliError::failed(format!("{}: {}", if ready { "not ready" } else { "unhealthy" }, String::from_utf8_lossy(&head))))
    }
}

/// Reads a whole file, or standard input for `-`.
pub fn read_input(path: &Path) -> Result<zeroize::Zeroizing<String>, CliError> {
    let mut s = zeroize::Zeroizing::new(String::new());
    if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut s)?;
    } else {
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut s))
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    }
    Ok(s)
}

/// Progress on a terminal: one rewritten line on stderr.
pub struct Progress {
    enabled: bool,
    last: std::time::Instant,
}

impl Progress {
    pub fn new() -> Self {
        Progress { enabled: std::io::stderr().is_terminal(), last: std::time::Instant::now() }
    }

    pub fn show(&mut self, label: &str, done: u64, total: u64) {
        if !self.enabled || (self.last.elapsed().as_millis() < 100 && done < total) {
            return;
        }
        self.last = std::time::Instant::now();
        let pct = if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 };
        eprint!("\r{label}: {done}/{total} ({pct:.1}%)   ");
        if done >= total {
            eprintln!();
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
