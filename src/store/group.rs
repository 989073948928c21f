//! Group commit for the one writer connection.
//!
//! Writers on different threads take turns on the connection, each inside its own
//! savepoint of one shared `BEGIN IMMEDIATE` transaction. Whoever finishes while nobody
//! else is queued commits for everyone in the batch; the others wait for that commit.
//! So concurrent writes share one fsync (and one invalidation of the readers' page
//! caches) instead of paying one each, while every caller still returns only after its
//! own changes are durable, and a failing write rolls back only its own savepoint.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::integrity::Sealer;
use super::sql::{Conn, Owned};
use super::StoreError;

/// A batch is committed once it holds this many writes even if more are queued, so that
/// a steady stream of writers cannot hold its first member back indefinitely.
const MAX_BATCH: usize = 256;

pub(super) struct GroupWriter {
    state: Mutex<State>,
    /// Threads waiting for `state`: while any are, the current holder leaves the commit to them.
    queued: AtomicUsize,
    sealer: Arc<Sealer>,
    /// Whether each commit had the checkpoint state from the batch's last write.
    #[cfg(test)]
    known_at_commit: Mutex<Vec<bool>>,
}

type Reopen = Box<dyn Fn() -> Result<Owned, StoreError> + Send + Sync>;

struct State {
    /// `None` after the connection broke: the next write opens a new one.
    conn: Option<Owned>,
    reopen: Reopen,
    /// The open transaction's batch, if one is open.
    batch: Option<Arc<Batch>>,
    writes: usize,
    /// The last write's savepoint is still open: it is released with the next statement
    /// sent (the next savepoint, or the commit), not with a round trip of its own.
    savepoint_open: bool,
    /// What the commit's checkpoint covers, when the batch's last write was an audit append
    /// that read it ([`GroupWriter::write_audit`]) and succeeded: nothing has changed it since,
    /// so the commit need not read it again. Any other write clears it.
    checkpoint: Option<super::checkpoint::State>,
}

/// The outcome of one transaction, shared by the writes it holds.
#[derive(Default)]
struct Batch {
    committed: Mutex<Option<Result<(), String>>>,
    done: Condvar,
}

impl Batch {
    fn finish(&self, outcome: Result<(), String>) {
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        self.done.notify_all();
    }

    fn wait(&self) -> Result<(), String> {
        let mut g = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(outcome) = g.as_ref() {
                return outcome.clone();
            }
            g = self.done.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl GroupWriter {
    pub fn new(conn: Owned, reopen: Reopen, sealer: Arc<Sealer>) -> Self {
        GroupWriter {
            state: Mutex::new(State { conn: Some(conn), reopen, batch: None, writes: 0, savepoint_open: false, checkpoint: None }),
            queued: AtomicUsize::new(0),
            sealer,
            #[cfg(test)]
            known_at_commit: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.queued.fetch_sub(1, Ordering::SeqCst);
        g
    }

    /// Runs `f` in a savepoint of the shared transaction; returns once it is committed.
    pub fn write<T, E: From<StoreError>>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T, E>) -> Result<T, E> {
        self.write_with(|c| f(c).map(|v| (v, None)))
    }

    /// [`GroupWriter::write`] for a write that appends audit records and nothing else, and
    /// returns the checkpoint state as it left it ([`super::audit::append_all_for_checkpoint`]).
    pub fn write_audit<T>(&self, f: impl FnOnce(&Conn<'_>) -> Result<(T, super::checkpoint::State), StoreError>) -> Result<T, StoreError> {
        self.write_with(|c| f(c).map(|(v, state)| (v, Some(state))))
    }

    fn write_with<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Conn<'_>) -> Result<(T, Option<super::checkpoint::State>), E>,
    ) -> Result<T, E> {
        let mut st = self.lock();
        // The statement that opens this write's savepoint: sent with the transaction's
        // `BEGIN` for the first write of a batch, else with the release of the last one.
        let (batch, open) = match &st.batch {
            Some(b) => (b.clone(), Some(if st.savepoint_open { "RELEASE write; SAVEPOINT write" } else { "SAVEPOINT write" })),
            None => {
                if st.conn.as_ref().is_none_or(Owned::is_broken) {
                    st.conn = None;
                    st.conn = Some((st.reopen)()?);
                }
                let began = st.conn.as_ref().map_or(Err(StoreError::Unavailable), Owned::begin_write);
                if let Err(e) = began {
                    // Part of it may have run (a lock timeout after `BEGIN`): end whatever is
                    // open, or the next write would find the transaction aborted.
                    if let Some(c) = st.conn.as_ref() {
                        let _ = c.conn(Sealer::none()).batch("ROLLBACK");
                    }
                    st.conn.take_if(|c| c.is_broken());
                    return Err(e.into());
                }
                let b = Arc::new(Batch::default());
                st.batch = Some(b.clone());
                st.writes = 0;
                (b, None)
            }
        };
        st.writes += 1;
        st.savepoint_open = false;
        st.checkpoint = None;
        let out = match st.conn.as_ref() {
            Some(conn) => run_in_savepoint(&conn.conn(&self.sealer), open, f),
            None => Err(StoreError::Unavailable),
        };
        let out = match out {
            Ok(Written::Done(Ok((v, checkpoint)))) => {
                st.savepoint_open = true;
                st.checkpoint = checkpoint;
                Written::Done(Ok(v))
            }
            Ok(Written::Done(Err(e))) => Written::Done(Err(e)),
            Ok(Written::Panicked(p)) => Written::Panicked(p),
            Err(broken) => {
                // The savepoint itself could not be opened or closed: the transaction is
                // in an unknown state, so nobody in this batch commits.
                let msg = broken.to_string();
                let rolled_back = st.conn.as_ref().is_some_and(|c| c.conn(Sealer::none()).batch("ROLLBACK").is_ok() && !c.is_broken());
                if !rolled_back {
                    st.conn = None;
                }
                st.batch = None;
                st.savepoint_open = false;
                drop(st);
                batch.finish(Err(msg));
                return Err(broken.into());
            }
        };
        if self.queued.load(Ordering::SeqCst) == 0 || st.writes >= MAX_BATCH {
            let known = st.checkpoint.take();
            let outcome = match st.conn.as_ref() {
                Some(c) => self.commit(&c.conn(&self.sealer), st.savepoint_open, known).map_err(|e| e.to_string()),
                None => Err(StoreError::Unavailable.to_string()),
            };
            if outcome.is_err() {
                let rolled_back = st.conn.as_ref().is_some_and(|c| c.conn(Sealer::none()).batch("ROLLBACK").is_ok() && !c.is_broken());
                if !rolled_back {
                    st.conn = None;
                }
            }
            st.batch = None;
            st.savepoint_open = false;
            drop(st);
            // To the sink outside the writer: the next batch commits meanwhile, and batches
            // that committed during a flush share the next one.
            let outcome = match (outcome, self.sealer.sink()) {
                (Ok(Some((n, line))), Some(sink)) => sink.append(n, line).map_err(|e| e.to_string()),
                (outcome, _) => outcome.map(|_| ()),
            };
            batch.finish(outcome);
        } else {
            drop(st);
        }
        let committed = batch.wait();
        match out {
            Written::Panicked(p) => resume_unwind(p),
            Written::Done(Err(e)) => Err(e),
            Written::Done(Ok(v)) => committed.map(|()| v).map_err(|e| StoreError::Io(format!("commit failed: {e}")).into()),
        }
    }

    /// Commits the open transaction: with a checkpoint when it appended audit records,
    /// which goes to the sink once committed and before anyone in the batch returns.
    /// Returns the checkpoint for the sink, written by the caller once the writer is free.
    ///
    /// The last write's savepoint, if still open, is released explicitly in the same batch:
    /// PostgreSQL answers `COMMIT` in an aborted transaction with a rollback and no error, but
    /// a failing `RELEASE` is an error, and the `COMMIT` after it is then not run.
    ///
    /// `known`: the checkpoint state as the batch's last write left it, if it read it.
    fn commit(
        &self,
        c: &Conn<'_>,
        savepoint_open: bool,
        known: Option<super::checkpoint::State>,
    ) -> Result<Option<(i64, String)>, StoreError> {
        #[cfg(test)]
        self.known_at_commit.lock().unwrap_or_else(|p| p.into_inner()).push(known.is_some());
        let checkpoint = if self.sealer.take_audit_dirty() { Some(super::checkpoint::write(c, known)?) } else { None };
        c.batch(if savepoint_open { "RELEASE write; COMMIT" } else { "COMMIT" })?;
        Ok(checkpoint)
    }

    /// Runs `f` on the writer connection between transactions (connection settings).
    /// Waits (bounded) for the open transaction, if any, to end.
    pub fn between_transactions<T>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            // Not `lock()`: a writer that sees someone queued leaves the commit to them, and
            // this caller never commits.
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match (&st.conn, &st.batch) {
                (Some(c), None) => return f(&c.conn(&self.sealer)),
                (None, _) => return Err(StoreError::Unavailable),
                (Some(_), Some(_)) if std::time::Instant::now() > deadline => return Err(StoreError::Busy),
                (Some(_), Some(_)) => {
                    drop(st);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }

    /// Direct use of the connection outside any batch.
    #[cfg(test)]
    pub fn with_conn<T>(&self, f: impl FnOnce(&Conn<'_>) -> T) -> T {
        let st = self.lock();
        f(&st.conn.as_ref().expect("a test writer's connection").conn(&self.sealer))
    }
}

enum Written<T, E> {
    Done(Result<T, E>),
    Panicked(Box<dyn std::any::Any + Send>),
}

/// `f` inside the savepoint `write`, which `open` opens (`None`: already open); rolled back
/// to it if `f` fails or panics. A savepoint that `f` leaves with `Ok` stays open, to be
/// released by whatever the writer sends next. `Err` only if the savepoint statements
/// themselves fail.
fn run_in_savepoint<T, E>(
    c: &Conn<'_>,
    open: Option<&str>,
    f: impl FnOnce(&Conn<'_>) -> Result<T, E>,
) -> Result<Written<T, E>, StoreError> {
    if let Some(open) = open {
        c.batch(open)?;
    }
    let out = catch_unwind(AssertUnwindSafe(|| f(c)));
    if !matches!(out, Ok(Ok(_))) {
        c.batch("ROLLBACK TO write; RELEASE write")?;
    }
    Ok(match out {
        Ok(r) => Written::Done(r),
        Err(p) => Written::Panicked(p),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (tempfile::TempDir, GroupWriter) {
        let dir = tempfile::tempdir().unwrap();
        let c = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        c.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER UNIQUE);").unwrap();
        (dir, GroupWriter::new(Owned::Lite(c), Box::new(|| Err(StoreError::Unavailable)), Arc::default()))
    }

    fn count(w: &GroupWriter) -> i64 {
        w.with_conn(|c| c.query_one("SELECT count(*) FROM t", &[], |r| r.get(0)).unwrap())
    }

    #[test]
    fn concurrent_writes_all_commit_and_a_failing_one_rolls_back_alone() {
        let (_d, w) = writer();
        std::thread::scope(|s| {
            for i in 0..8i64 {
                let w = &w;
                s.spawn(move || {
                    for j in 0..50i64 {
                        let v = i * 1000 + j;
                        let r = w.write(|c| {
                            c.execute("INSERT INTO t (v) VALUES (?1)", super::super::sql::params![v])?;
                            if j % 10 == 0 {
                                // Duplicate: fails after a successful insert in the same write.
                                c.execute("INSERT INTO t (v) VALUES (?1)", super::super::sql::params![v])?;
                            }
                            Ok::<_, StoreError>(v)
                        });
                        assert_eq!(r.is_ok(), j % 10 != 0, "{v}");
                    }
                });
            }
        });
        assert_eq!(count(&w), 8 * 45, "failed writes left nothing, the others all committed");
    }

    /// Runs `first` while another writer is said to be waiting (so it leaves the commit to the
    /// next write), then `second`, which commits the batch holding both.
    fn one_batch(w: &GroupWriter, first: impl FnOnce(&GroupWriter) + Send, second: impl FnOnce(&GroupWriter)) {
        w.queued.fetch_add(1, Ordering::SeqCst);
        std::thread::scope(|s| {
            let first = s.spawn(|| first(w));
            // Until the first write has run and waits for its batch to commit.
            while w.state.lock().unwrap().batch.is_none() {
                std::thread::yield_now();
            }
            w.queued.fetch_sub(1, Ordering::SeqCst);
            second(w);
            first.join().unwrap();
        });
    }

    fn audit_write(w: &GroupWriter, v: i64) {
        let state = super::super::checkpoint::State::empty();
        w.write_audit(|c| Ok((c.execute("INSERT INTO t (v) VALUES (?1)", super::super::sql::params![v])?, state))).unwrap();
    }

    fn other_write(w: &GroupWriter, v: i64) {
        w.write(|c| c.execute("INSERT INTO t (v) VALUES (?1)", super::super::sql::params![v])).unwrap();
    }

    #[test]
    fn the_commit_reuses_the_checkpoint_state_only_when_the_batch_ends_with_the_append_that_read_it() {
        let (_d, w) = writer();
        one_batch(&w, |w| audit_write(w, 1), |w| other_write(w, 2));
        one_batch(&w, |w| other_write(w, 3), |w| audit_write(w, 4));
        audit_write(&w, 5);
        other_write(&w, 6);
        // An append that fails (a duplicate) after one that succeeded: no state at commit.
        one_batch(
            &w,
            |w| audit_write(w, 7),
            |w| {
                let state = super::super::checkpoint::State::empty();
                assert!(w.write_audit(|c| Ok((c.execute("INSERT INTO t (v) VALUES (7)", &[])?, state))).is_err());
            },
        );
        assert_eq!(
            *w.known_at_commit.lock().unwrap(),
            [false, true, true, false, false],
            "a write after the append, or a failed one, makes the commit read the state again"
        );
        assert_eq!(count(&w), 7);
    }

    #[test]
    fn a_panicking_write_rolls_back_and_the_writer_stays_usable() {
        let (_d, w) = writer();
        let r = catch_unwind(AssertUnwindSafe(|| {
            w.write(|c| {
                c.execute("INSERT INTO t (v) VALUES (1)", &[])?;
                panic!("boom");
                #[allow(unreachable_code)]
                Ok::<_, StoreError>(())
            })
        }));
        assert!(r.is_err());
        w.write(|c| c.execute("INSERT INTO t (v) VALUES (2)", &[])).unwrap();
        assert_eq!(count(&w), 1);
    }
}
