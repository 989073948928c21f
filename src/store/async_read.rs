//! The release path's one read on PostgreSQL, made on the HTTP worker that serves the
//! request, through the asynchronous client.
//!
//! Through the synchronous driver a release's read costs a hop to the blocking pool and
//! back and a wake-up of a read backend per request. Here each worker thread keeps one
//! asynchronous connection per store, whose I/O task runs on that worker: no thread hop,
//! and the reads of all the requests the worker has in flight are pipelined on the one
//! connection. Anything unusual (no connection yet and none to be had, the row key not
//! loaded, an error of the connection) answers "not here", and the caller reads through
//! the pool as before, which reports the error as usual.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::postgres::PgConfig;
use super::rows::{self, CredentialRow};
use super::sql::{dollar_placeholders, params, pg_params, Row};
use super::{Location, Store, StoreError};

/// After a failed connection attempt, how long this worker reads through the pool instead
/// (doubling with each failure in a row, up to [`MAX_RETRY_AFTER`]).
const RETRY_CONNECT_AFTER: Duration = Duration::from_secs(1);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// A read that takes longer (a lock held by a migration, a half-open connection) gives up
/// here; the pool then reads, and this worker opens a new connection next time.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

struct Reader {
    client: tokio_postgres::Client,
    credential: tokio_postgres::Statement,
    generation: tokio_postgres::Statement,
}

enum Slot {
    Ready(Arc<Reader>),
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
/// a blocking call there would stall the worker and every request pipelined on its
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
    /// [`rows::credential_at_generation`] on this worker's asynchronous connection.
    /// `Ok(None)`: not here; read through the pool. An `Err` is a finding about the data
    /// (a row that fails its MAC), not about the connection.
    pub async fn credential_for_release(
        &self,
        connection_id: &str,
        owner: &str,
    ) -> Result<Option<(i64, Option<CredentialRow>)>, StoreError> {
        let Location::Postgres(cfg) = &self.location else { return Ok(None) };
        let Some(reader) = self.async_reader(cfg).await else { return Ok(None) };
        let params = params![connection_id, owner];
        let found = match tokio::time::timeout(READ_TIMEOUT, reader.client.query_opt(&reader.credential, &pg_params(params))).await {
            Ok(Ok(found)) => found,
            _ => return Ok(self.forget_async_reader(&reader)),
        };
        match found {
            Some(row) => Ok(rows::credential_at_generation_row(&self.sealer, &Row::Pg(&row))?.map(|(g, c)| (g, Some(c)))),
            // No credential: the generation from a second statement, as the pool's read does.
            None => match tokio::time::timeout(READ_TIMEOUT, reader.client.query_one(&reader.generation, &[])).await {
                Ok(Ok(row)) => Ok(Some((Row::Pg(&row).get(0)?, None))),
                _ => Ok(self.forget_async_reader(&reader)),
            },
        }
    }

    async fn async_reader(&self, cfg: &PgConfig) -> Option<Arc<Reader>> {
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
            let credential = client.prepare(&dollar_placeholders(rows::credential_at_generation_sql())).await?;
            let generation = client.prepare("SELECT value FROM config_generation WHERE id = 1").await?;
            Ok::<_, StoreError>(Arc::new(Reader { client, credential, generation }))
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
    fn forget_async_reader<T>(&self, failed: &Arc<Reader>) -> Option<T> {
        READERS.with(|r| {
            let mut r = r.borrow_mut();
            if matches!(r.get(&self.id), Some(Slot::Ready(current)) if Arc::ptr_eq(current, failed)) {
                r.remove(&self.id);
            }
        });
        None
    }
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
