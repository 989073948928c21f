//! The embedded backend: one SQLite file in WAL mode, `<data_dir>/latchkey.db`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::sql::Owned;
use super::StoreError;

/// Schema migrations, applied in order; the index + 1 is the schema version.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_agents.sql"),
    include_str!("../../migrations/sqlite/0003_oauth.sql"),
    include_str!("../../migrations/sqlite/0004_config_generation.sql"),
    include_str!("../../migrations/sqlite/0005_dek_references.sql"),
    include_str!("../../migrations/sqlite/0006_scopes_known.sql"),
    include_str!("../../migrations/sqlite/0007_connect_and_scopes.sql"),
    include_str!("../../migrations/sqlite/0008_hardening.sql"),
    include_str!("../../migrations/sqlite/0009_catalog_auth_method.sql"),
    include_str!("../../migrations/sqlite/0010_schema_meta.sql"),
    include_str!("../../migrations/sqlite/0011_replicas.sql"),
    include_str!("../../migrations/sqlite/0012_integrity.sql"),
];
const DB_FILE: &str = "latchkey.db";

/// How long a write waits for another process's write lock (then `SQLITE_BUSY`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval while waiting for it. SQLite's own busy handler backs off to sleeps of
/// 25–100 ms, which tends to miss the gaps of a process taking the lock in a loop (a
/// `keys rotate` sweep) while every release waits for the audit commit behind it; short,
/// even polls find them.
const BUSY_POLL: Duration = Duration::from_micros(500);

pub(super) fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DB_FILE)
}

pub(super) fn schema_version() -> u32 {
    MIGRATIONS.len() as u32
}

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

/// Creates the data directory (0700) and a new, empty database file (0600).
pub(super) fn create(data_dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    let path = db_path(data_dir);
    if path.exists() {
        return Err(StoreError::AlreadyInitialised(path.display().to_string()));
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
    Ok(())
}

/// Opens the writer connection of an existing database and applies pending migrations.
pub(super) fn open_writer(data_dir: &Path) -> Result<Owned, StoreError> {
    let path = db_path(data_dir);
    if !path.exists() {
        return Err(StoreError::NotInitialised(path.display().to_string()));
    }
    tighten_modes(data_dir, &path)?;
    let mut writer = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    configure(&mut writer)?;
    writer.execute_batch("PRAGMA journal_mode = WAL;")?;
    migrate(&mut writer)?;
    Ok(Owned::Lite(writer))
}

pub(super) fn open_reader(data_dir: &Path) -> Result<Owned, StoreError> {
    let mut c = Connection::open_with_flags(db_path(data_dir), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    configure(&mut c)?;
    Ok(Owned::Lite(c))
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

/// Applies what is missing, each step in a `BEGIN IMMEDIATE` transaction (so two
/// processes opening the file at once apply each step once). A schema newer than this
/// binary is accepted unless it records a minimum binary version above ours.
fn migrate(c: &mut Connection) -> Result<(), StoreError> {
    let current: u32 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = schema_version();
    if current > known {
        return super::check_min_binary_version(&super::sql::Conn::bare(super::sql::Db::Lite(c)));
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
    super::check_min_binary_version(&super::sql::Conn::bare(super::sql::Db::Lite(c)))
}
