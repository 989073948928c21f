//! The release path's one read on PostgreSQL, made on the HTTP worker that serves the
//! request, through the asynchronous client.
//!
//! Through the synchronous driver a release's read costs a hop to the blocking pool and
//! back and a wake-up of a read backend per request. Here each worker thread keeps one
//! asynchronous connection per store, whose I/O task runs on that worker: no thread hop.
//!
//! Reads are batched per connection without waiting for company: a read sent while none is
//! in flight goes at once, alone; reads that arrive while one is in flight wait for it, and
//! are then sent together as one statement (one snapshot, one execution), led by the first
//! of them. Under load most of a statement's cost in the server is per execution, not per
//! row, so this is what keeps the database's share of a release small; an idle vault pays
//! nothing for it.
//!
//! Anything unusual (no connection yet and none to be had, the row key not loaded, an
//! error of the connection, a batch abandoned by its leader) answers "not here", and the
//! caller reads through the pool as before, which reports the error as usual.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::batch::Batcher;
use super::postgres::PgConfig;
use super::rows::{self, CredentialRow};
use super::sql::Row;
use super::{Location, Store, StoreError};

/// After a failed connection attempt, how long this worker reads through the pool instead
/// (doubling with each failure in a row, up to [`MAX_RETRY_AFTER`]).
const RETRY_CONNECT_AFTER: Duration = Duration::from_secs(1);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// A read that takes longer (a lock held by a migration, a half-open connection) gives up
/// here; the pool then reads, and this worker opens a new connection next time.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Reads per statement at most; more waiting go in the next one.
const MAX_BATCH: usize = 128;

/// What a read found: `Ok(None)` "not here" (read through the pool); `Ok(Some((generation,
/// credential)))`; an `Err` is a finding about the data (a row that fails its MAC).
type Found = Result<Option<(i64, Option<CredentialRow>)>, StoreError>;

struct Reader {
    client: tokio_postgres::Client,
    /// [`batch_sql`], prepared.
    batch: tokio_postgres::Statement,
    /// Reads of `(connection, owner)`.
    reads: Batcher<(String, String), Found>,
}

/// The batch statement: one row per requested `(connection, owner)`, ending with the pair
/// asked for and its position (`q.i`), with the configuration generation first (one
/// snapshot for all); a credential that does not exist is a row of NULLs. `OFFSET 0` keeps the lateral
/// subquery from being flattened: each pair is an index lookup, whatever the plan thinks
/// of the array's length.
fn batch_sql() -> String {
    format!(
        "SELECT (SELECT value FROM config_generation WHERE id = 1), x.*, q.connection_id, q.owner, q.i \
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(connection_id, owner, i) \
         LEFT JOIN LATERAL (SELECT {} FROM credentials k JOIN deks d ON d.id = k.dek_id \
         WHERE k.connection_id = q.connection_id AND k.owner = q.owner OFFSET 0) x ON true",
        rows::credential_cols()
    )
}

enum Slot {
    Ready(Rc<Reader>),
    /// A request of this worker is opening the connection: the others read through the pool.
    Connecting,
    /// The last attempt failed at this time; the next waits for the backoff.
    Failed {
        at: Instant,
        backoff: Duration,
    },
}

thread_local! {
    /// This thread's connection per store (by [`Store::id`]).
    static READERS: RefCell<HashMap<u64, Slot>> = RefCell::new(HashMap::new());
    /// Set while a decision runs on an async worker ([`without_pool`]).
    static WITHOUT_POOL: Cell<bool> = const { Cell::new(false) };
    /// A store call was refused during [`without_pool`].
    static REFUSED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (a decision on an async worker) with every PostgreSQL call of the store refused:
/// a blocking call there would stall the worker and every request waiting on its
/// connection. Returns whether one was refused, in which case the caller discards `f`'s
/// result and decides again on the blocking pool.
pub fn without_pool<T>(f: impl FnOnce() -> T) -> (T, bool) {
    let outer = WITHOUT_POOL.replace(true);
    let refused = REFUSED.replace(false);
    let out = f();
    WITHOUT_POOL.set(outer);
    (out, REFUSED.replace(refused))
}

/// Whether a PostgreSQL call must be refused here (see [`without_pool`]); records it.
pub(super) fn refused_here() -> bool {
    let refused = WITHOUT_POOL.get();
    if refused {
        REFUSED.set(true);
    }
    refused
}

impl Store {
    /// [`rows::credential_at_generation`] on this worker's asynchronous connection, batched
    /// with the other reads of this worker that wait meanwhile (see the module comment).
    pub async fn credential_for_release(&self, connection_id: &str, owner: &str) -> Found {
        let Location::Postgres(cfg) = &self.location else { return Ok(None) };
        let Some(reader) = self.async_reader(cfg).await else { return Ok(None) };
        let read = (connection_id.to_owned(), owner.to_owned());
        reader.reads.run(read, |reads| self.read_batch(&reader, reads)).await.unwrap_or(Ok(None))
    }

    /// Statements [`Store::credential_for_release`] has sent: its reads divided by this are
    /// the mean batch.
    pub fn release_read_statements(&self) -> u64 {
        self.read_statements.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One statement for `reads`; an outcome per read, in order. A failed or late
    /// statement forgets the connection and answers "not here" for every read, and so does
    /// a connection already forgotten (reads queued on it before a timeout do not wait for
    /// a timeout each).
    async fn read_batch(&self, reader: &Rc<Reader>, reads: Vec<(String, String)>) -> Vec<Found> {
        let mut found: Vec<Found> = reads.iter().map(|_| Ok(None)).collect();
        if reader.client.is_closed() || !self.is_current(reader) {
            return found;
        }
        let connections: Vec<&str> = reads.iter().map(|r| r.0.as_str()).collect();
        let owners: Vec<&str> = reads.iter().map(|r| r.1.as_str()).collect();
        self.read_statements.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rows = match tokio::time::timeout(READ_TIMEOUT, reader.client.query(&reader.batch, &[&connections, &owners])).await {
            Ok(Ok(rows)) => rows,
            _ => {
                self.forget_async_reader(reader);
                return found;
            }
        };
        let mut answered = vec![false; reads.len()];
        for row in &rows {
            let r = Row::Pg(row);
            let Some(at) = row.len().checked_sub(3) else { continue };
            let Some(i) = r.get::<i64>(at + 2).ok().and_then(|i| usize::try_from(i).ok()).and_then(|i| i.checked_sub(1)) else { continue };
            let (Some(slot), Some((connection, owner)), Some(seen)) = (found.get_mut(i), reads.get(i), answered.get_mut(i)) else {
                continue;
            };
            // A row answers the read at its position only if it echoes that read's pair; a
            // second row for one read (the unique key broken) leaves it to the pool, which
            // reports it.
            let echoed = r.get::<String>(at).ok().as_ref() == Some(connection) && r.get::<String>(at + 1).ok().as_ref() == Some(owner);
            *slot = if *seen || !echoed { Ok(None) } else { read_row(&self.sealer, &r, connection, owner) };
            *seen = true;
        }
        found
    }

    /// Whether `reader` is still this worker's connection (not forgotten after an error).
    fn is_current(&self, reader: &Rc<Reader>) -> bool {
        READERS.with(|r| matches!(r.borrow().get(&self.id), Some(Slot::Ready(current)) if Rc::ptr_eq(current, reader)))
    }

    async fn async_reader(&self, cfg: &PgConfig) -> Option<Rc<Reader>> {
        // `None`: open one now (this request does, the slot says so meanwhile).
        let (cached, backoff) = READERS.with(|r| {
            let mut r = r.borrow_mut();
            let (cached, backoff) = match r.get(&self.id) {
                Some(Slot::Ready(reader)) if !reader.client.is_closed() => (Some(Some(reader.clone())), RETRY_CONNECT_AFTER),
                Some(Slot::Ready(_)) | None => (None, RETRY_CONNECT_AFTER),
                Some(Slot::Connecting) => (Some(None), RETRY_CONNECT_AFTER),
                Some(Slot::Failed { at, backoff }) if at.elapsed() < *backoff => (Some(None), *backoff),
                Some(Slot::Failed { backoff, .. }) => (None, (*backoff * 2).min(MAX_RETRY_AFTER)),
            };
            if cached.is_none() {
                r.insert(self.id, Slot::Connecting);
            }
            (cached, backoff)
        });
        if let Some(cached) = cached {
            return cached;
        }
        // A request dropped while connecting (its client went away) must not leave the slot
        // `Connecting` for good.
        struct Abandoned(u64, Duration);
        impl Drop for Abandoned {
            fn drop(&mut self) {
                let (id, backoff) = (self.0, self.1);
                READERS.with(|r| {
                    let mut r = r.borrow_mut();
                    if matches!(r.get(&id), Some(Slot::Connecting)) {
                        r.insert(id, Slot::Failed { at: Instant::now(), backoff });
                    }
                });
            }
        }
        let abandoned = Abandoned(self.id, backoff);
        let made = async {
            let client = cfg.connect_async().await?;
            // This connection runs one statement, whose best plan does not depend on the
            // arrays' contents: planning it again per execution would cost more than running it.
            client.batch_execute("SET plan_cache_mode = force_generic_plan").await?;
            let batch = client.prepare(&batch_sql()).await?;
            Ok::<_, StoreError>(Rc::new(Reader { client, batch, reads: Batcher::new(MAX_BATCH) }))
        }
        .await;
        let slot = match &made {
            Ok(reader) => Slot::Ready(reader.clone()),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = backoff.as_secs(), "the release path's read connection could not be opened; reading through the pool meanwhile");
                Slot::Failed { at: Instant::now(), backoff }
            }
        };
        READERS.with(|r| r.borrow_mut().insert(self.id, slot));
        drop(abandoned);
        made.ok()
    }

    /// Drops this worker's connection after an error or a timeout, unless another request
    /// has replaced it already (the next read opens a new one).
    fn forget_async_reader(&self, failed: &Rc<Reader>) {
        READERS.with(|r| {
            let mut r = r.borrow_mut();
            if matches!(r.get(&self.id), Some(Slot::Ready(current)) if Rc::ptr_eq(current, failed)) {
                r.remove(&self.id);
            }
        });
    }
}

/// One row of [`batch_sql`] for the read of `(connection, owner)`.
fn read_row(sealer: &super::integrity::Sealer, r: &Row<'_>, connection: &str, owner: &str) -> Found {
    // No credential: NULLs from the credential's id on.
    if r.get::<Option<String>>(1)?.is_none() {
        return Ok(Some((r.get(0)?, None)));
    }
    Ok(match rows::credential_at_generation_row(sealer, r)? {
        // The statement joins on the pair; checked again here, as the decision trusts it.
        Some((generation, c)) if c.meta.connection_id == connection && c.meta.owner == owner => Some((generation, Some(c))),
        // The row key is not loaded yet (or, impossibly, another row): the pool reads.
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_pool_reports_a_refused_call_and_restores_the_outer_state() {
        assert!(!refused_here(), "outside, nothing is refused");
        let ((), refused) = without_pool(|| ());
        assert!(!refused, "a decision that made no call ran whole");
        let (inner, refused) = without_pool(|| {
            assert!(refused_here());
            let ((), nested) = without_pool(|| ());
            assert!(refused_here(), "still refused after a nested call returned");
            nested
        });
        assert!(refused, "the refused call is reported");
        assert!(!inner, "the nested run made no call of its own");
        assert!(!refused_here(), "and afterwards calls go through again");
    }
}
