//! The shared backend: a PostgreSQL database that any number of replicas use at once.
//!
//! Driver: the synchronous `postgres` crate (rust-postgres). The store's interface is
//! synchronous — every call already runs on a thread that may block (the blocking pool,
//! the audit writer, the CLI) — so an async pool would only add a runtime hop per
//! statement. Connections are opened lazily and replaced when the server drops them.
//!
//! TLS is rustls with the Mozilla roots (or `sslrootcert`), verifying the certificate
//! and host name. libpq's `sslmode=prefer`, which silently falls back to cleartext, is
//! refused; cleartext is used only for a loopback host or with `sslmode=disable`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use postgres::Socket;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::sql::{Conn, Owned, PgConn};
use super::StoreError;

/// Schema migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_replicas.sql"),
    include_str!("../../migrations/postgres/0003_integrity.sql"),
];

/// Held while migrating, so that replicas starting together apply each step once.
const MIGRATION_LOCK: i64 = 0x6c61_7463_686b_6579; // "latchkey"

pub(super) fn schema_version() -> u32 {
    MIGRATIONS.len() as u32
}

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Cleartext: a loopback host, or `sslmode=disable`.
    Disable,
    /// TLS, verifying the certificate chain and the host name.
    Verify,
}

/// A parsed `postgres://` URL. Its `Display` never shows the password.
#[derive(Clone)]
pub struct PgConfig {
    /// The asynchronous client's settings; the synchronous client's are made from them.
    config: tokio_postgres::Config,
    tls: TlsMode,
    root_cert: Option<std::path::PathBuf>,
    shown: String,
}

impl std::fmt::Display for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgConfig({}, {:?})", self.shown, self.tls)
    }
}

/// Why a database URL was refused. Never contains the URL itself.
#[derive(Debug, thiserror::Error)]
#[error("invalid database URL: {0}")]
pub struct UrlError(String);

fn bad(msg: impl Into<String>) -> UrlError {
    UrlError(msg.into())
}

impl PgConfig {
    /// Parses `postgres://user[:password]@host[:port]/database[?sslmode=…&sslrootcert=…]`.
    pub fn parse(raw: &str) -> Result<PgConfig, UrlError> {
        let raw = raw.trim();
        let url = url::Url::parse(raw).map_err(|_| bad("expected postgres://user:password@host:port/database"))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(bad("the scheme must be postgres:// or postgresql://"));
        }
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| bad("the URL names no host"))?.to_owned();
        let mut sslmode = None;
        let mut root_cert = None;
        let mut rest = url.clone();
        rest.set_query(None);
        {
            let mut q = rest.query_pairs_mut();
            for (k, v) in url.query_pairs() {
                match &*k {
                    "sslmode" => sslmode = Some(v.into_owned()),
                    "sslrootcert" => root_cert = Some(std::path::PathBuf::from(v.into_owned())),
                    "host" | "hostaddr" | "password" => return Err(bad(format!("put the {k} in the URL itself, not a parameter"))),
                    _ => {
                        q.append_pair(&k, &v);
                    }
                }
            }
        }
        let mut rest = rest.to_string();
        if rest.ends_with('?') {
            rest.pop();
        }
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| bad(e.to_string()))?;
        // `postgres:` is not a special scheme, so the URL parser leaves IPv4 hosts as names.
        let loopback = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost" || d.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
            None => false,
        };
        let tls = match sslmode.as_deref() {
            None if loopback => TlsMode::Disable,
            None | Some("require" | "verify-ca" | "verify-full") => TlsMode::Verify,
            Some("disable") => TlsMode::Disable,
            Some("prefer" | "allow") => {
                return Err(bad(
                    "sslmode=prefer and sslmode=allow may fall back to cleartext silently; use verify-full (the default) or disable",
                ))
            }
            Some(_) => return Err(bad("sslmode must be disable, require, verify-ca or verify-full")),
        };
        config.ssl_mode(postgres::config::SslMode::Disable);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("latchkey");
        }
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        let user = config.get_user().unwrap_or("");
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let db = config.get_dbname().unwrap_or("");
        let shown = format!("postgres://{}{}{host}{port}/{db}", user, if user.is_empty() { "" } else { "@" });
        Ok(PgConfig { config, tls, root_cert, shown })
    }

    pub fn tls(&self) -> TlsMode {
        self.tls
    }

    /// Opens one connection (not migrated).
    pub fn connect(&self) -> Result<PgConn, StoreError> {
        let client = match self.tls {
            TlsMode::Disable => postgres::Config::from(self.config.clone()).connect(postgres::NoTls),
            TlsMode::Verify => {
                let tls = RustlsConnect(Arc::new(self.client_tls()?));
                let mut config = postgres::Config::from(self.config.clone());
                config.ssl_mode(postgres::config::SslMode::Require);
                config.connect(tls)
            }
        };
        let client = client.map_err(|e| StoreError::Connect(format!("cannot connect to {}: {}", self.shown, describe(&e))))?;
        let pg = PgConn::new(client);
        // An audit record is committed before a secret leaves: never on a connection
        // where a commit may be acknowledged before the server has flushed it (`off` can
        // lose commits on a crash of the database server, not only on a power loss).
        pg.batch(
            "DO $$ BEGIN IF current_setting('synchronous_commit') = 'off' THEN PERFORM set_config('synchronous_commit', 'on', false); END IF; END $$",
        )?;
        // A process that stops inside a transaction (SIGSTOP, a hung host) must not hold the
        // write lock of every replica forever: the server ends such a session after 10 s.
        // And a write waits for the lock at most 10 s (as SQLite's busy timeout), then
        // answers 503 rather than queueing without end.
        pg.batch("SET idle_in_transaction_session_timeout = '10s'; SET lock_timeout = '10s'")?;
        Ok(pg)
    }

    /// Opens an asynchronous connection, for reads only; its I/O runs as a task on the
    /// calling runtime (an HTTP worker: no thread hop per statement, and the reads of every
    /// request on that worker share the one connection, batched; see `store::batch`).
    pub async fn connect_async(&self) -> Result<tokio_postgres::Client, StoreError> {
        let failed = |e: tokio_postgres::Error| StoreError::Connect(format!("cannot connect to {}: {}", self.shown, describe(&e)));
        match self.tls {
            TlsMode::Disable => Ok(drive(self.config.connect(postgres::NoTls).await.map_err(failed)?)),
            TlsMode::Verify => {
                let tls = RustlsConnect(Arc::new(self.client_tls()?));
                let mut config = self.config.clone();
                config.ssl_mode(postgres::config::SslMode::Require);
                Ok(drive(config.connect(tls).await.map_err(failed)?))
            }
        }
    }

    fn client_tls(&self) -> Result<rustls::ClientConfig, StoreError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                    .map_err(|e| StoreError::Io(format!("cannot read sslrootcert {}: {e}", path.display())))?;
                for cert in certs {
                    let cert = cert.map_err(|e| StoreError::Io(format!("cannot read sslrootcert {}: {e}", path.display())))?;
                    roots.add(cert).map_err(|e| StoreError::Io(format!("sslrootcert {}: {e}", path.display())))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Io(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    /// Whether the database holds a latchkey schema.
    pub fn is_initialised(&self) -> Result<bool, StoreError> {
        let c = self.connect()?;
        Conn::bare(super::sql::Db::Pg(&c)).query_one("SELECT to_regclass('latchkey_migrations') IS NOT NULL", &[], |r| r.get::<bool>(0))
    }

    /// Opens the writer connection: applies pending migrations under an advisory lock
    /// (replicas starting at the same moment apply each step exactly once) and refuses a
    /// database that needs a newer binary.
    pub(super) fn open_and_migrate(&self) -> Result<Owned, StoreError> {
        let pg = self.connect()?;
        let c = Conn::bare(super::sql::Db::Pg(&pg));
        c.batch(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))?;
        let migrated = migrate(&c);
        let unlocked = c.batch(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"));
        migrated?;
        unlocked?;
        Ok(Owned::Pg(Box::new(pg)))
    }
}

/// Runs a new asynchronous connection's I/O as a task on the calling runtime; returns its client.
fn drive<S, T>((client, connection): (tokio_postgres::Client, tokio_postgres::Connection<S, T>)) -> tokio_postgres::Client
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn migrate(c: &Conn<'_>) -> Result<(), StoreError> {
    c.batch("CREATE TABLE IF NOT EXISTS latchkey_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")?;
    let current: u32 = super::db_schema_version(c)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        c.batch("BEGIN")?;
        let applied = c.batch(sql).and_then(|()| {
            c.execute(
                "INSERT INTO latchkey_migrations (version, applied_at) VALUES (?1, CAST(extract(epoch FROM now()) AS BIGINT))",
                super::sql::params![version],
            )
        });
        match applied {
            Ok(_) => c.batch("COMMIT")?,
            Err(e) => {
                let _ = c.batch("ROLLBACK");
                return Err(e);
            }
        }
        tracing::info!(version, "applied a PostgreSQL schema migration");
    }
    super::check_min_binary_version(c)
}

/// A server error's message and SQLSTATE, or the client error; never a parameter value.
pub(super) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Lost connections and a server that is shutting down or starting are transient (503);
/// serialisation failures and deadlocks are `Busy`.
pub(super) fn classify(e: postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable;
    }
    match e.code().map(|c| c.code()) {
        Some("40001" | "40P01" | "55P03") => StoreError::Busy,
        Some(c) if c.starts_with("08") || c.starts_with("57P") || c == "53300" => StoreError::Unavailable,
        Some(_) => StoreError::Postgres(e),
        None if std::error::Error::source(&e).is_some_and(|s| s.is::<io::Error>()) => StoreError::Unavailable,
        None => StoreError::Postgres(e),
    }
}

// ---------------------------------------------------------------- rustls for the driver

#[derive(Clone)]
struct RustlsConnect(Arc<rustls::ClientConfig>);

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = TlsStream;
    type TlsConnect = RustlsConnector;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnector, Self::Error> {
        let name = rustls::pki_types::ServerName::try_from(domain.to_owned())?;
        Ok(RustlsConnector { config: self.0.clone(), name })
    }
}

struct RustlsConnector {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnector {
    type Stream = TlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let stream = tokio_rustls::TlsConnector::from(self.config).connect(self.name, stream).await?;
            Ok(TlsStream(stream))
        })
    }
}

struct TlsStream(tokio_rustls::client::TlsStream<Socket>);

impl AsyncRead for TlsStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl postgres::tls::TlsStream for TlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_verify_tls_by_default_and_never_show_the_password() {
        let c = PgConfig::parse("postgres://app:s3cret-pw@db.example.com:5433/latchkey").unwrap();
        assert_eq!(c.tls(), TlsMode::Verify);
        assert_eq!(c.to_string(), "postgres://app@db.example.com:5433/latchkey");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(PgConfig::parse("postgres://u@127.0.0.1/d").unwrap().tls(), TlsMode::Disable, "loopback");
        assert_eq!(PgConfig::parse("postgres://u@localhost/d").unwrap().tls(), TlsMode::Disable, "loopback");
        assert_eq!(PgConfig::parse("postgres://u@[::1]:5432/d").unwrap().tls(), TlsMode::Disable, "loopback");
        assert_eq!(PgConfig::parse("postgres://u@db.internal/d?sslmode=disable").unwrap().tls(), TlsMode::Disable, "explicit");
        assert_eq!(PgConfig::parse("postgres://u@127.0.0.1/d?sslmode=require").unwrap().tls(), TlsMode::Verify);
        for refused in [
            "postgres://u:pw@db.example.com/d?sslmode=prefer",
            "postgres://u:pw@db.example.com/d?sslmode=allow",
            "postgres://u:pw@db.example.com/d?sslmode=bogus",
            "mysql://u:pw@db.example.com/d",
            "postgres://u:pw@/d",
            "not a url pw",
        ] {
            let e = PgConfig::parse(refused).unwrap_err().to_string();
            assert!(!e.contains("pw"), "{e}");
        }
    }
}
