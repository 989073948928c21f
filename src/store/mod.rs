//! Storage: the schema, migrations and every SQL statement, for two backends — an
//! embedded SQLite file (the default) and a PostgreSQL database shared by any number of
//! replicas. Sees only ciphertext and metadata; never decrypts, never logs row contents.
//!
//! Statements are written once against the query layer in [`sql`]; what differs per
//! backend (opening, migrations, the write lock) lives in [`sqlite`] and [`postgres`].
//! One writer connection and a small pool of readers. Writes run in transactions that
//! hold the write lock (`BEGIN IMMEDIATE`, or PostgreSQL's `write_lock` row), so the CLI,
//! a running server and other replicas write safely side by side. Concurrent writes of
//! one process share a transaction and its commit ([`group`]).

mod async_read;
mod batch;
pub use async_read::without_pool;
pub mod audit;
pub mod checkpoint;
mod group;
pub mod identity;
pub mod integrity;
pub mod postgres;
pub mod rows;
pub mod sessions;
pub mod sql;
mod sqlite;

use std::path::PathBuf;
use std::sync::Mutex;

pub use postgres::PgConfig;
use sql::{Conn, Owned};

const MAX_IDLE_READERS: usize = 16;
/// Read connections one replica may hold open on PostgreSQL (plus its writer): the
/// server's `max_connections` (100 by default) is shared by every replica and the CLI.
/// Readers past this wait for a free connection.
const MAX_PG_READERS: usize = 8;

/// Where the data lives.
#[derive(Clone)]
pub enum Location {
    /// `<data_dir>/latchkey.db`.
    Embedded(PathBuf),
    /// A PostgreSQL database, shared by every replica.
    Postgres(Box<PgConfig>),
}

impl std::fmt::Display for Location {
    /// Safe to log: never shows a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Embedded(dir) => write!(f, "{}", sqlite::db_path(dir).display()),
            Location::Postgres(pg) => write!(f, "{pg}"),
        }
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Location({self})")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} is not initialised: run `latchkey init` (or `latchkey serve --dev` for development)")]
    NotInitialised(String),
    #[error("{0} already holds a latchkey database; refusing to initialise over it")]
    AlreadyInitialised(String),
    #[error("the database needs latchkey {needs} or newer (this is {ours}); a newer replica has upgraded it: run a newer latchkey")]
    TooOld { needs: String, ours: &'static str },
    #[error("the row changed concurrently")]
    Conflict,
    /// Another process holds the database lock past the busy timeout: retry later.
    #[error("the database is busy")]
    Busy,
    /// The database cannot be reached (connection lost, server restarting): retry later.
    #[error("the database is unavailable")]
    Unavailable,
    /// A PostgreSQL call refused on an async worker ([`without_pool`]): the caller makes the
    /// decision again on the blocking pool. Not a failure, and never an answer.
    #[error("a database call was deferred to the blocking pool")]
    RefusedHere,
    /// A new connection was refused (server down, failover, credentials): retry later.
    #[error("{0}")]
    Connect(String),
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    #[error("database error: {}", postgres::describe(.0))]
    Postgres(::postgres::Error),
    #[error("{0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A sealed row (or the integrity state) does not match its MAC: changed outside
    /// latchkey. Never retried and never answered with the data.
    #[error("integrity violation: {0}")]
    Integrity(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                StoreError::Busy
            }
            _ => StoreError::Sqlite(e),
        }
    }
}

impl From<::postgres::Error> for StoreError {
    fn from(e: ::postgres::Error) -> Self {
        postgres::classify(e)
    }
}

impl StoreError {
    /// Whether retrying later may succeed (the caller answers 503, not 500).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Busy | StoreError::Unavailable | StoreError::RefusedHere | StoreError::Connect(_))
    }
}

type Reopen = Box<dyn Fn() -> Result<Owned, StoreError> + Send + Sync>;

thread_local! {
    static MAY_BLOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` on this thread, marked as one that may block on the database (a thread of
/// the blocking pool): PostgreSQL calls in `f` then run here, not on a helper thread.
pub fn blocking_section<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            MAY_BLOCK.set(self.0);
        }
    }
    let _reset = Reset(MAY_BLOCK.replace(true));
    f()
}

/// Whether this thread may block: a thread outside any async runtime, or one marked by
/// [`blocking_section`]. The PostgreSQL driver blocks on a runtime of its own, which
/// is impossible (it panics) on an async worker.
pub(crate) fn may_block_here() -> bool {
    MAY_BLOCK.get() || tokio::runtime::Handle::try_current().is_err()
}

/// Runs `f` here when this thread may block, else on a scoped thread of its own (a
/// PostgreSQL call from an async worker: correct, but slower, so the hot paths go
/// through the blocking pool instead).
fn off_async<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if may_block_here() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(|| blocking_section(f)).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

pub struct Store {
    /// Distinguishes stores within a process (each worker's asynchronous reads are per store).
    id: u64,
    location: Location,
    writer: group::GroupWriter,
    readers: Mutex<Vec<Owned>>,
    open_reader: Reopen,
    /// Read connections that exist (idle or in use), when their number is bounded.
    open_readers: Mutex<usize>,
    reader_returned: std::sync::Condvar,
    max_readers: Option<usize>,
    /// The row-integrity key (and what went wrong with it), shared by every connection.
    sealer: std::sync::Arc<integrity::Sealer>,
    /// Statements that read credentials for releases on HTTP workers' connections (a metric).
    read_statements: std::sync::atomic::AtomicU64,
    /// SQLite's WAL checkpoints, off the commit path (`None` on PostgreSQL).
    _checkpointer: Option<sqlite::Checkpointer>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("location", &self.location).finish_non_exhaustive()
    }
}

impl Store {
    /// Whether `location` holds a latchkey database.
    pub fn is_initialised(location: &Location) -> Result<bool, StoreError> {
        match location {
            Location::Embedded(dir) => Ok(sqlite::db_path(dir).exists()),
            Location::Postgres(pg) => off_async(|| pg.is_initialised()),
        }
    }

    /// Creates a new database with the schema applied; refuses one that exists.
    pub fn create(location: &Location) -> Result<Self, StoreError> {
        match location {
            Location::Embedded(dir) => sqlite::create(dir)?,
            Location::Postgres(_) => {
                if Self::is_initialised(location)? {
                    return Err(StoreError::AlreadyInitialised(location.to_string()));
                }
            }
        }
        Self::open(location)
    }

    /// Opens an existing database and applies pending migrations.
    pub fn open(location: &Location) -> Result<Self, StoreError> {
        let (writer, open_writer, open_reader): (Owned, Reopen, Reopen) = match location {
            Location::Embedded(dir) => {
                let writer = sqlite::open_writer(dir)?;
                let (w, r) = (dir.clone(), dir.clone());
                (writer, Box::new(move || sqlite::open_writer(&w)), Box::new(move || sqlite::open_reader(&r)))
            }
            Location::Postgres(pg) => {
                let writer = off_async(|| pg.open_and_migrate())?;
                let (w, r) = (pg.clone(), pg.clone());
                (
                    writer,
                    Box::new(move || w.connect().map(|c| Owned::Pg(Box::new(c)))),
                    Box::new(move || r.connect().map(|c| Owned::Pg(Box::new(c)))),
                )
            }
        };
        let checkpointer = match location {
            Location::Embedded(dir) => Some(sqlite::Checkpointer::start(dir)?),
            Location::Postgres(_) => None,
        };
        let sealer = std::sync::Arc::new(integrity::Sealer::default());
        static STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Ok(Store {
            id: STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            _checkpointer: checkpointer,
            read_statements: std::sync::atomic::AtomicU64::new(0),
            location: location.clone(),
            writer: group::GroupWriter::new(writer, open_writer, sealer.clone()),
            sealer,
            readers: Mutex::new(Vec::new()),
            open_reader,
            open_readers: Mutex::new(0),
            reader_returned: std::sync::Condvar::new(),
            max_readers: matches!(location, Location::Postgres(_)).then_some(MAX_PG_READERS),
        })
    }

    /// Whether the data lives in PostgreSQL: every statement is then a network round trip
    /// and must run on a thread that may block.
    pub fn is_remote(&self) -> bool {
        matches!(self.location, Location::Postgres(_))
    }

    /// How long, under concurrent load, the audit writer lets a batch of records gather
    /// between the starts of two commits (a caller alone is committed at once).
    ///
    /// SQLite: 250 µs. With no pause saturated throughput fell by about a third (a commit
    /// per handful of releases, each dropping every reader's page cache); at 1 ms every
    /// release under load waited ~0.5 ms more for nothing.
    ///
    /// PostgreSQL: 1 ms. A commit there costs round trips and a WAL flush in the database
    /// server, so small batches spend the shared cores on commits: at saturation the
    /// writer's backend cost 43 µs of CPU per release with 250 µs (about six releases per
    /// batch). See docs/performance.md for the measurements.
    pub fn audit_commit_interval(&self) -> std::time::Duration {
        match self.location {
            Location::Postgres(_) => std::time::Duration::from_millis(1),
            _ => std::time::Duration::from_micros(250),
        }
    }

    /// Runs `f`, a database call: on PostgreSQL off the async worker, and refused during a
    /// decision made on the worker ([`without_pool`]).
    fn call<T: Send, E: From<StoreError> + Send>(&self, f: impl FnOnce() -> Result<T, E> + Send) -> Result<T, E> {
        if !self.is_remote() {
            return f();
        }
        if async_read::refused_here() {
            return Err(StoreError::RefusedHere.into());
        }
        off_async(f)
    }

    /// Runs `f` on a pooled read connection.
    pub fn read<T: Send, E: From<StoreError> + Send>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T, E> + Send) -> Result<T, E> {
        self.call(|| self.read_here(f))
    }

    fn read_here<T, E: From<StoreError>>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T, E>) -> Result<T, E> {
        let conn = self.take_reader()?;
        let out = f(&conn.conn(&self.sealer));
        self.return_reader(conn);
        out
    }

    /// An idle reader, or a new one if the bound allows, else waits for one.
    fn take_reader(&self) -> Result<Owned, StoreError> {
        loop {
            let idle = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                Some(c) if !c.is_broken() => return Ok(c),
                Some(_broken) => self.forget_reader(),
                None => {}
            }
            let Some(max) = self.max_readers else { return (self.open_reader)() };
            let mut open = self.open_readers.lock().unwrap_or_else(|p| p.into_inner());
            if *open < max {
                *open += 1;
                drop(open);
                return (self.open_reader)().inspect_err(|_| self.forget_reader());
            }
            // All in use: wait until one comes back (bounded, then look again).
            let _ = self.reader_returned.wait_timeout(open, std::time::Duration::from_millis(50));
        }
    }

    fn return_reader(&self, conn: Owned) {
        if conn.is_broken() {
            self.forget_reader();
            return;
        }
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
            drop(pool);
            // Only a bounded pool has waiters (and a wake-up is a system call).
            if self.max_readers.is_some() {
                self.reader_returned.notify_one();
            }
        } else {
            drop(pool);
            self.forget_reader();
        }
    }

    fn forget_reader(&self) {
        if self.max_readers.is_some() {
            let mut open = self.open_readers.lock().unwrap_or_else(|p| p.into_inner());
            *open = open.saturating_sub(1);
            drop(open);
            self.reader_returned.notify_one();
        }
    }

    /// Runs `f` on a read connection inside one read transaction: every statement sees the
    /// same snapshot (a full integrity check compares rows with a digest of them all).
    pub fn snapshot<T: Send>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T, StoreError> + Send) -> Result<T, StoreError> {
        self.read(|c| {
            c.batch(if c.is_postgres() { "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" } else { "BEGIN" })?;
            let out = f(c);
            let ended = c.batch(if out.is_ok() { "COMMIT" } else { "ROLLBACK" });
            let out = out?;
            ended?;
            Ok(out)
        })
    }

    /// Runs `f` atomically in a write transaction (a savepoint of one shared with
    /// concurrent writers); returns once its changes are committed. If `f` fails, its
    /// changes are rolled back and nothing else is affected.
    pub fn write<T: Send, E: From<StoreError> + Send>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T, E> + Send) -> Result<T, E> {
        self.call(|| self.writer.write(f))
    }

    /// Appends audit records in a write of their own, group-committed like [`Store::write`];
    /// returns their sequence numbers. The commit's checkpoint then reuses the state read
    /// with the chain head instead of reading it again (a round trip fewer on PostgreSQL).
    pub fn append_audit<'a>(
        &self,
        events: impl IntoIterator<Item = (&'a crate::audit::Event, i64)> + Send,
    ) -> Result<Vec<i64>, StoreError> {
        self.call(|| self.writer.write_audit(|c| audit::append_all_for_checkpoint(c, events)))
    }

    /// The row-integrity key slot and its violation record.
    pub fn sealer(&self) -> &integrity::Sealer {
        &self.sealer
    }

    /// The audit chain's key (loaded on first use).
    pub fn audit_chain_key(&self) -> Result<&crate::crypto::MacKey, StoreError> {
        self.read(|c| self.sealer.chain_key(c).map(|_| ()))?;
        self.sealer.loaded_chain_key().ok_or(StoreError::Unavailable)
    }

    /// How durable a commit is before the caller returns: `fsync` flushes SQLite's log to
    /// the disk at every commit (`synchronous = FULL`), `os` leaves it to the operating
    /// system (`NORMAL`: a crash of latchkey loses nothing, a power loss may lose the last
    /// commits). PostgreSQL commits are flushed by the server either way
    /// (`synchronous_commit` is never `off` on latchkey's connections).
    pub fn set_durability(&self, d: checkpoint::Durability) -> Result<(), StoreError> {
        if self.is_remote() {
            return Ok(());
        }
        let pragma = match d {
            checkpoint::Durability::Os => "PRAGMA synchronous = NORMAL",
            checkpoint::Durability::Fsync => "PRAGMA synchronous = FULL",
        };
        self.writer.between_transactions(|c| c.batch(pragma))
    }

    /// Commits a checkpoint of the current audit head now (at shutdown).
    pub fn checkpoint_now(&self) -> Result<(), StoreError> {
        self.write(|_| {
            self.sealer.mark_audit();
            Ok(())
        })
    }

    /// Cheap liveness check for `/readyz`.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_one("SELECT 1", &[], |r| r.get::<i64>(0)).map(|_| ()))
    }

    /// The database server's clock in milliseconds since the epoch (`None` for SQLite,
    /// whose clock is this host's): replicas compare leases and due times written by
    /// each other, so they take them from one clock.
    pub fn server_time_ms(&self) -> Result<Option<i64>, StoreError> {
        if !self.is_remote() {
            return Ok(None);
        }
        self.read(|c| {
            c.query_one("SELECT CAST(floor(extract(epoch FROM clock_timestamp()) * 1000) AS BIGINT)", &[], |r| r.get::<i64>(0)).map(Some)
        })
    }
}

/// The schema version this binary knows, per backend.
pub fn schema_version(postgres: bool) -> u32 {
    if postgres {
        postgres::schema_version()
    } else {
        sqlite::schema_version()
    }
}

/// The schema version of an open database.
pub fn db_schema_version(c: &Conn<'_>) -> Result<u32, StoreError> {
    match c.db {
        sql::Db::Lite(c) => Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?),
        sql::Db::Pg(_) => c.query_one("SELECT coalesce(max(version), 0) FROM latchkey_migrations", &[], |r| r.get(0)),
    }
}

/// Refuses a database whose recorded minimum binary version is newer than this binary.
/// A newer *schema* alone is fine: migrations are expand/contract, so an older replica
/// keeps working during a rolling upgrade until a contract step raises the minimum.
pub(crate) fn check_min_binary_version(c: &Conn<'_>) -> Result<(), StoreError> {
    let needs: Option<String> = c.query_opt("SELECT value FROM schema_meta WHERE key = 'min_binary_version'", &[], |r| r.get(0))?;
    let ours = env!("CARGO_PKG_VERSION");
    match needs {
        Some(needs) if version_tuple(&needs) > version_tuple(ours) => Err(StoreError::TooOld { needs, ours }),
        _ => Ok(()),
    }
}

fn version_tuple(v: &str) -> Vec<u64> {
    v.split(['.', '-', '+']).take(3).map(|p| p.parse().unwrap_or(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;
    use sqlite::{db_path, MIGRATIONS};
    use std::path::Path;

    #[test]
    fn database_files_are_private_and_loose_modes_are_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let store = Store::create(&Location::Embedded(dir.clone())).unwrap();
        store.write(|c| c.batch("CREATE TABLE t (x)")).unwrap();
        let wal = dir.join("latchkey.db-wal");
        assert_eq!((mode(&dir), mode(&db_path(&dir)), mode(&wal)), (0o700, 0o600, 0o600));
        drop(store);
        // As an older version or a careless restore left them.
        for (p, m) in [(dir.clone(), 0o755), (db_path(&dir), 0o644)] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
        }
        drop(Store::open(&Location::Embedded(dir.clone())).unwrap());
        assert_eq!((mode(&dir), mode(&db_path(&dir))), (0o700, 0o600));
    }

    /// A database at schema `version`, as an older latchkey left it.
    fn database_at(dir: &Path, version: usize) -> Connection {
        let c = Connection::open(db_path(dir)).unwrap();
        c.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
        for sql in &MIGRATIONS[..version] {
            c.execute_batch(sql).unwrap();
        }
        c.execute_batch(&format!("PRAGMA user_version = {version}")).unwrap();
        c
    }

    #[test]
    fn schema_7_makes_scope_enforcement_explicit_and_namespaces_issuers() {
        let dir = tempfile::tempdir().unwrap();
        let c = database_at(dir.path(), 6);
        let insert = |id: &str, spec: &str| {
            c.execute("INSERT INTO connections (id, kind, spec, created_at, updated_at) VALUES (?1, 'oauth2', ?2, 0, 0)", [id, spec])
                .unwrap();
        };
        insert("ms", r#"{"id":"ms","kind":"oauth2","provider":"microsoft","oauth2":{"client_id":"c"}}"#);
        insert(
            "crm",
            r#"{"id":"crm","kind":"oauth2","oauth2":{"client_id":"c","authorization_endpoint":"https://a.example/a","token_endpoint":"https://a.example/t"}}"#,
        );
        insert(
            "lbl",
            r#"{"id":"lbl","kind":"oauth2","oauth2":{"client_id":"c","discovery_url":"https://a.example/.well-known/openid-configuration","scope_enforcement":"label"}}"#,
        );
        c.execute("INSERT INTO issuers (issuer, jwks_uri, audience, created_at) VALUES ('https://idp.example', 'https://idp.example/jwks', 'a', 0)", [])
            .unwrap();
        drop(c);
        let store = Store::open(&Location::Embedded(dir.path().to_owned())).unwrap();
        let mode = |id: &str| -> String {
            store
                .read(|c| {
                    c.query_one(
                        "SELECT json_extract(spec, '$.oauth2.scope_enforcement') FROM connections WHERE id = ?1",
                        sql::params![id],
                        |r| r.get(0),
                    )
                })
                .unwrap()
        };
        assert_eq!((mode("ms").as_str(), mode("crm").as_str(), mode("lbl").as_str()), ("downscope", "strict", "label"));
        let prefix: String = store.read(|c| c.query_one("SELECT subject_prefix FROM issuers", &[], |r| r.get(0))).unwrap();
        assert_eq!(prefix, "iss1");
        // The stored specs still parse, now stating their mode.
        let spec: String = store.read(|c| c.query_one("SELECT spec FROM connections WHERE id = 'crm'", &[], |r| r.get(0))).unwrap();
        let parsed: crate::model::ConnectionSpec = serde_json::from_str(&spec).unwrap();
        assert_eq!(parsed.oauth2.unwrap().scope_enforcement, Some(crate::model::ScopeEnforcement::Strict));
    }
}
