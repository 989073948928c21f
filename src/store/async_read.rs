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

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::postgres::PgConfig;
use super::rows::{self, CredentialRow};
use super::sql::{dollar_placeholders, params, pg_params, Row};
use super::{Location, Store, StoreError};

/// After a failed connection attempt, how long this worker reads through the pool instead.
const RETRY_CONNECT_AFTER: Duration = Duration::from_secs(1);

struct Reader {
    client: tokio_postgres::Client,
    credential: tokio_postgres::Statement,
    generation: tokio_postgres::Statement,
}

enum Slot {
    Ready(Arc<Reader>),
    Failed(Instant),
}

thread_local! {
    /// This thread's connection per store (by [`Store::id`]).
    static READERS: RefCell<HashMap<u64, Slot>> = RefCell::new(HashMap::new());
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
        let found = match reader.client.query_opt(&reader.credential, &pg_params(params)).await {
            Ok(found) => found,
            Err(_) => return Ok(self.forget_async_reader()),
        };
        match found {
            Some(row) => Ok(rows::credential_at_generation_row(&self.sealer, &Row::Pg(&row))?.map(|(g, c)| (g, Some(c)))),
            // No credential: the generation from a second statement, as the pool's read does.
            None => match reader.client.query_one(&reader.generation, &[]).await {
                Ok(row) => Ok(Some((Row::Pg(&row).get(0)?, None))),
                Err(_) => Ok(self.forget_async_reader()),
            },
        }
    }

    async fn async_reader(&self, cfg: &PgConfig) -> Option<Arc<Reader>> {
        let cached = READERS.with(|r| match r.borrow().get(&self.id) {
            Some(Slot::Ready(reader)) if !reader.client.is_closed() => Some(Some(reader.clone())),
            Some(Slot::Failed(at)) if at.elapsed() < RETRY_CONNECT_AFTER => Some(None),
            _ => None,
        });
        if let Some(cached) = cached {
            return cached;
        }
        let made = async {
            let client = cfg.connect_async().await?;
            let credential = client.prepare(&dollar_placeholders(rows::credential_at_generation_sql())).await?;
            let generation = client.prepare("SELECT value FROM config_generation WHERE id = 1").await?;
            Ok::<_, StoreError>(Arc::new(Reader { client, credential, generation }))
        }
        .await;
        let slot = match &made {
            Ok(reader) => Slot::Ready(reader.clone()),
            Err(_) => Slot::Failed(Instant::now()),
        };
        READERS.with(|r| r.borrow_mut().insert(self.id, slot));
        made.ok()
    }

    /// Drops this worker's connection after an error (the next read opens a new one).
    fn forget_async_reader<T>(&self) -> Option<T> {
        READERS.with(|r| r.borrow_mut().remove(&self.id));
        None
    }
}
