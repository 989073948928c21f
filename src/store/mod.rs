//! SQLite storage. Owns the schema, migrations and every SQL statement. Sees only
//! ciphertext and metadata; never decrypts, never logs row contents.
//!
//! One writer connection and a small pool of readers (WAL). Writes run in
//! `BEGIN IMMEDIATE` transactions so that the CLI and a running server can write to the
//! same file safely; a busy handler makes them wait for each other instead of failing.
//! Concurrent writes of one process share a transaction and its fsync ([`group`]).

pub mod audit;
mod group;
pub mod identity;
pub mod rows;
pub mod sessions;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

/// Schema migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_agents.sql"),
    include_str!("../../migrations/sqlite/0003_oauth.sql"),
    include_str!("../../migrations/sqlite/0004_config_generation.sql"),
    include_str!("../../migrations/sqlite/0005_dek_references.sql"),
    include_str!("../../migrations/sqlite/0006_scopes_known.sql"),
    include_str!("../../migrations/sqlite/0007_connect_and_scopes.sql"),
    include_str!("../../migrations/sqlite/0008_hardening.sql"),
    include_str!("../../migrations/sqlite/0009_catalog_auth_method.sql"),
];
const DB_FILE: &str = "latchkey.db";
const MAX_IDLE_READERS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {0} is not initialised: run `latchkey init` (or `latchkey serve --dev` for development)")]
    NotInitialised(String),
    #[error("data directory {0} already holds a database; refusing to initialise over it")]
    AlreadyInitialised(String),
    #[error(
        "the database schema is version {found}, newer than this latchkey knows ({known}); refusing to downgrade: run a newer latchkey"
    )]
    TooNew { found: u32, known: u32 },
    #[error("the row changed concurrently")]
    Conflict,
    /// Another process holds the database lock past the busy timeout: retry later.
    #[error("the database is busy")]
    Busy,
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    #[error("{0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
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

/// Reads column `i` as text and parses it (a state or kind enum): an unknown value is a
/// conversion error, never a default.
pub(crate) fn parsed<T>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = r.get(i)?;
    text.parse().map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))
}

pub struct Store {
    path: PathBuf,
    writer: group::GroupWriter,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

/// How long a write waits for another process's write lock (then `SQLITE_BUSY`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval while waiting for it. SQLite's own busy handler backs off to sleeps of
/// 25–100 ms, which tends to miss the gaps of a process taking the lock in a loop (a
/// `keys rotate` sweep) while every release waits for the audit commit behind it; short,
/// even polls find them.
const BUSY_POLL: Duration = Duration::from_micros(500);

fn busy(retries: i32) -> bool {
    if BUSY_POLL * u32::try_from(retries).unwrap_or(u32::MAX) >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_POLL);
    true
}

fn configure(c: &mut Connection) -> Result<(), StoreError> {
    c.busy_handler(Some(busy))?;
    // More than the default 16: the write paths alone use ~20 distinct statements.
    c.set_prepared_statement_cache_capacity(64);
    // Query-planner stability: without it, a statement on a table with a partial index
    // (credentials_refresh_due) is re-prepared on every new binding, and the release path
    // would spend most of its time in SQLite's parser.
    c.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // FULL: a refreshed token must survive power loss before it is released.
    c.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; PRAGMA trusted_schema = OFF;")?;
    Ok(())
}

impl Store {
    pub fn db_path(data_dir: &Path) -> PathBuf {
        data_dir.join(DB_FILE)
    }

    pub fn is_initialised(data_dir: &Path) -> bool {
        Self::db_path(data_dir).exists()
    }

    /// Creates the data directory (0700) and a new database with the schema applied.
    pub fn create(data_dir: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        let path = Self::db_path(data_dir);
        if path.exists() {
            return Err(StoreError::AlreadyInitialised(data_dir.display().to_string()));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|e| StoreError::Io(format!("cannot create data directory {}: {e}", data_dir.display())))?;
        // Created 0600 before SQLite opens it (SQLite gives its -wal and -shm files the
        // database file's mode).
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| StoreError::Io(format!("cannot create database {}: {e}", path.display())))?;
        }
        let c = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE)?;
        c.execute_batch("PRAGMA journal_mode = WAL;")?;
        drop(c);
        Self::open(data_dir)
    }

    /// Opens an existing database and applies pending migrations.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = Self::db_path(data_dir);
        if !path.exists() {
            return Err(StoreError::NotInitialised(data_dir.display().to_string()));
        }
        tighten_modes(data_dir, &path)?;
        let mut writer = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        configure(&mut writer)?;
        writer.execute_batch("PRAGMA journal_mode = WAL;")?;
        migrate(&mut writer)?;
        Ok(Store { path, writer: group::GroupWriter::new(writer), readers: Mutex::new(Vec::new()) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a pooled read connection.
    pub fn read<T, E: From<StoreError>>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E> {
        let conn = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let mut c = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(StoreError::from)?;
                configure(&mut c)?;
                c
            }
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        out
    }

    /// Runs `f` atomically in a `BEGIN IMMEDIATE` transaction (a savepoint of one shared
    /// with concurrent writers); returns once its changes are committed. If `f` fails, its
    /// changes are rolled back and nothing else is affected.
    pub fn write<T, E: From<StoreError>>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E> {
        self.writer.write(f)
    }

    /// Cheap liveness check for `/readyz`.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(StoreError::from))
    }
}

/// The data directory is 0700 and the database files 0600: looser modes (an older
/// version, a restore, a umask) are tightened at every open, or the open fails.
fn tighten_modes(data_dir: &Path, db: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    let files = [(data_dir.to_path_buf(), 0o700), (db.to_path_buf(), 0o600), (wal.into(), 0o600), (shm.into(), 0o600)];
    for (path, mode) in files {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
                StoreError::Io(format!(
                    "{} is readable by others and cannot be made {mode:o}: {e}; run chmod {mode:o} on it",
                    path.display()
                ))
            })?;
            tracing::warn!(path = %path.display(), "tightened the mode to {mode:o}");
        }
    }
    Ok(())
}

fn migrate(c: &mut Connection) -> Result<(), StoreError> {
    let current: u32 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as u32;
    if current > known {
        return Err(StoreError::TooNew { found: current, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the lock.
        let now: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now > i as u32 {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(())
}

/// The schema version this binary knows.
pub fn schema_version() -> u32 {
    MIGRATIONS.len() as u32
}

/// The schema version of an open database.
pub fn db_schema_version(c: &Connection) -> Result<u32, StoreError> {
    Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_files_are_private_and_loose_modes_are_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let store = Store::create(&dir).unwrap();
        store.write(|c| c.execute_batch("CREATE TABLE t (x)").map_err(StoreError::from)).unwrap();
        let wal = dir.join(format!("{DB_FILE}-wal"));
        assert_eq!((mode(&dir), mode(&Store::db_path(&dir)), mode(&wal)), (0o700, 0o600, 0o600));
        drop(store);
        // As an older version or a careless restore left them.
        for (p, m) in [(dir.clone(), 0o755), (Store::db_path(&dir), 0o644)] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
        }
        drop(Store::open(&dir).unwrap());
        assert_eq!((mode(&dir), mode(&Store::db_path(&dir))), (0o700, 0o600));
    }

    /// A database at schema `version`, as an older latchkey left it.
    fn database_at(dir: &Path, version: usize) -> Connection {
        let c = Connection::open(Store::db_path(dir)).unwrap();
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
        let store = Store::open(dir.path()).unwrap();
        let mode = |id: &str| -> String {
            store
                .read(|c| {
                    c.query_row("SELECT json_extract(spec, '$.oauth2.scope_enforcement') FROM connections WHERE id = ?1", [id], |r| {
                        r.get(0)
                    })
                    .map_err(StoreError::from)
                })
                .unwrap()
        };
        assert_eq!((mode("ms").as_str(), mode("crm").as_str(), mode("lbl").as_str()), ("downscope", "strict", "label"));
        let prefix: String =
            store.read(|c| c.query_row("SELECT subject_prefix FROM issuers", [], |r| r.get(0)).map_err(StoreError::from)).unwrap();
        assert_eq!(prefix, "iss1");
        // The stored specs still parse, now stating their mode.
        let spec: String = store
            .read(|c| c.query_row("SELECT spec FROM connections WHERE id = 'crm'", [], |r| r.get(0)).map_err(StoreError::from))
            .unwrap();
        let parsed: crate::model::ConnectionSpec = serde_json::from_str(&spec).unwrap();
        assert_eq!(parsed.oauth2.unwrap().scope_enforcement, Some(crate::model::ScopeEnforcement::Strict));
    }
}
