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
    poll_until(retries, BUSY_TIMEOUT)
}

/// A busy handler's step: sleeps one poll and asks for another try, until `limit` has passed.
fn poll_until(retries: i32, limit: Duration) -> bool {
    if BUSY_POLL * u32::try_from(retries).unwrap_or(u32::MAX) >= limit {
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
    let mut writer = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    configure(&mut writer)?;
    writer.execute_batch("PRAGMA journal_mode = WAL;")?;
    writer.execute_batch(WRITER_CHECKPOINTS)?;
    migrate(&mut writer)?;
    Ok(Owned::Lite(writer))
}

pub(super) fn open_reader(data_dir: &Path) -> Result<Owned, StoreError> {
    let mut c = Connection::open_with_flags(db_path(data_dir), OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
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

/// How often the background checkpointer copies the log into the database file while commits
/// arrive (five times as long once they stop). Small checkpoints often, not large ones now
/// and then: a checkpoint flushes what it copies, and while that flush runs, commits that
/// append to the log pages being written back wait for it. At 5k releases/s (`os`) the p99
/// of six 10 s runs had a median of 3.9 ms with a checkpoint every 100 ms, 2.95 ms every
/// 20 ms, and was worse at 1 s (4–10 ms).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(20);
/// Log size (in pages) past which the checkpointer also restarts the log, holding the write
/// lock for the short tail the passive checkpoints have not copied yet.
const RESTART_AFTER_PAGES: i64 = 16_384;

/// Moves the WAL checkpoint off the commit path. SQLite's automatic checkpoint runs inside
/// the commit that crosses 1,000 log pages: that commit copies the pages and flushes the
/// database file, and every release waiting on its batch stalls behind it (the `os` tail).
/// The writer connection turns it off (`wal_autocheckpoint = 0`); this thread, on its own
/// connection, runs passive checkpoints (no lock: commits go on meanwhile) and, once the
/// log is long, a `RESTART` checkpoint, which takes the write lock for the little the
/// passive ones left and lets the next commit start the log from its beginning again (a
/// passive checkpoint alone never catches up with a steady stream of commits, so the log
/// would grow without bound).
pub(super) struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(data_dir: &Path) -> Result<Self, StoreError> {
        Self::start_with(data_dir, CHECKPOINT_EVERY, RESTART_AFTER_PAGES)
    }

    pub(super) fn start_with(data_dir: &Path, every: Duration, restart_after: i64) -> Result<Self, StoreError> {
        let mut c = Connection::open_with_flags(db_path(data_dir), OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        configure(&mut c)?;
        // A restart holds the write lock while it waits for readers of older snapshots (a full
        // integrity check reads one for seconds at a million credentials): it gives up after a
        // few ms and tries again a dozen rounds later, so commits never wait on it for long.
        c.busy_handler(Some(restart_busy))?;
        // NORMAL: a checkpoint flushes the log before it copies and the database file after.
        c.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;")?;
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("latchkey-checkpoint".into())
            .spawn(move || {
                let (mut wait, mut last_log) = (every, -1);
                let mut restart_not_before = std::time::Instant::now();
                loop {
                    match stopped.recv_timeout(wait) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    // After a restart that had to give up, the next waits a dozen rounds.
                    match checkpoint(&c, restart_after, &mut restart_not_before, every * 12) {
                        Ok(log) => {
                            wait = if log == last_log { every * 5 } else { every };
                            last_log = log;
                        }
                        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; retrying"),
                    }
                }
            })
            .map_err(|e| StoreError::Io(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long a restart may wait for the write lock or for readers before it gives up, when
/// the log is just past the restart point. The patience grows with the log (5 ms per
/// multiple of the restart point, up to the busy timeout), so that readers which keep
/// outlasting it hold the log back only until a restart is worth a longer stall.
const RESTART_PATIENCE: Duration = Duration::from_millis(5);

thread_local! {
    /// The current restart's patience (the busy handler is a plain function, called on the
    /// checkpoint thread).
    static PATIENCE: std::cell::Cell<Duration> = const { std::cell::Cell::new(RESTART_PATIENCE) };
}

fn restart_busy(retries: i32) -> bool {
    poll_until(retries, PATIENCE.get())
}

/// One round: a passive checkpoint, then a restart if the log is still long. Returns the
/// log's length in pages as the passive checkpoint found it (unchanged: no commits since).
fn checkpoint(
    c: &Connection,
    restart_after: i64,
    restart_not_before: &mut std::time::Instant,
    backoff: Duration,
) -> Result<i64, StoreError> {
    let (_, log, _) = wal_checkpoint(c, "PASSIVE")?;
    let started = std::time::Instant::now();
    if log >= restart_after && started >= *restart_not_before {
        let multiple = u32::try_from(log / restart_after.max(1)).unwrap_or(u32::MAX);
        PATIENCE.set(RESTART_PATIENCE.saturating_mul(multiple).min(BUSY_TIMEOUT));
        // Busy (a reader of an older snapshot, or a long write; the pragma reports it in its
        // first column): tried again after a pause, so that a long reader costs commits one
        // short wait per `backoff`, not one a round.
        let (busy, pages, done) = wal_checkpoint(c, "RESTART")?;
        if busy {
            *restart_not_before = started + backoff;
        }
        tracing::debug!(busy, pages, done, took_ms = started.elapsed().as_millis() as u64, "WAL restart");
    }
    Ok(log)
}

/// `PRAGMA wal_checkpoint(mode)`: (whether it was blocked, log pages, pages copied).
fn wal_checkpoint(c: &Connection, mode: &str) -> Result<(bool, i64, i64), StoreError> {
    Ok(c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| Ok((r.get::<_, i64>(0)? != 0, r.get(1)?, r.get(2)?)))?)
}

/// The writer's settings that go with the checkpointer: no checkpoint inside a commit, and
/// the log file cut back to 64 MiB when it restarts.
const WRITER_CHECKPOINTS: &str = "PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 67108864;";

#[cfg(test)]
mod checkpointer_tests {
    use super::*;

    /// A new database's writer (as the store opens it), with a table `t (v BLOB)`.
    fn database_with_table() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        create(dir.path()).unwrap();
        let Owned::Lite(w) = open_writer(dir.path()).unwrap() else { unreachable!() };
        w.execute_batch("PRAGMA synchronous = NORMAL; CREATE TABLE t (v BLOB)").unwrap();
        (dir, w)
    }

    fn wal_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("latchkey.db-wal")).map(|m| m.len()).unwrap_or(0)
    }

    /// With commits arriving without pause and a reader always in the middle of a (short)
    /// read, the log is still copied and restarted: its file stays bounded, nothing is lost.
    #[test]
    fn the_log_stays_bounded_under_a_steady_stream_of_commits_and_readers() {
        let (dir, w) = database_with_table();
        let page_limit = 200;
        let _cp = Checkpointer::start_with(dir.path(), Duration::from_millis(1), page_limit).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let Owned::Lite(r) = open_reader(dir.path()).unwrap() else { unreachable!() };
                // Point reads back to back, as releases make them.
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let _: Option<i64> = r.query_row("SELECT max(rowid) FROM t", [], |r| r.get(0)).unwrap();
                }
            });
            let mut max = 0;
            for _ in 0..3000 {
                w.execute("INSERT INTO t VALUES (zeroblob(2000))", []).unwrap();
                max = max.max(wal_len(dir.path()));
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            // 3,000 commits of a page or more each make a log of over 12 MB without
            // checkpoints; it restarts whenever it passes ~200 pages (plus what is appended
            // between two rounds).
            assert!(max < 2000 * 4200, "the log grew to {max} bytes");
            let auto: i64 = w.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
            assert_eq!(auto, 0);
        });
        let n: i64 = w.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 3000);
    }

    /// A reader holding an old snapshot (as a full integrity check does for seconds) keeps
    /// the log from restarting, but the restart's wait must not hold up commits meanwhile.
    #[test]
    fn a_long_reader_does_not_make_commits_wait_for_a_restart() {
        let (dir, w) = database_with_table();
        let _cp = Checkpointer::start_with(dir.path(), Duration::from_millis(2), 50).unwrap();
        let Owned::Lite(r) = open_reader(dir.path()).unwrap() else { unreachable!() };
        w.execute("INSERT INTO t VALUES (zeroblob(2000))", []).unwrap();
        r.execute_batch("BEGIN").unwrap();
        let _: i64 = r.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        // The reader's snapshot stays open through 500 commits, far past the restart point:
        // every restart attempt waits for it, and without a bounded wait each would hold the
        // write lock for the whole busy timeout (10 s).
        let started = std::time::Instant::now();
        for _ in 0..500 {
            w.execute("INSERT INTO t VALUES (zeroblob(2000))", []).unwrap();
        }
        let took = started.elapsed();
        r.execute_batch("COMMIT").unwrap();
        assert!(took < Duration::from_secs(5), "500 commits took {took:?} behind the restart");
        let n: i64 = w.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 501);
    }
}
