//! Group commit for audit records on the hot path (releases, token issuance).
//!
//! Callers hand an event to one writer thread and wait for its commit; the writer takes
//! everything queued at that moment and appends it in one transaction, so one fsync
//! covers many decisions. A caller learns whether *its* record committed, which is what
//! lets releases fail closed. Callers wait on a future, so a request waiting for the
//! fsync holds no thread. (Blocking callers need no sink: `Store::write` group-commits.)

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use crate::audit::Event;
use crate::store::{self, Store};

const MAX_BATCH: usize = 1024;
const MIN_COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_micros(1000);

type Committed = Result<i64, String>;

struct Job {
    event: Event,
    ts_ms: i64,
    /// A caller that went away (a dropped request) no longer needs the answer.
    done: tokio::sync::oneshot::Sender<Committed>,
}

pub struct AuditSink {
    tx: Mutex<Sender<Job>>,
}

impl AuditSink {
    pub fn start(store: Arc<Store>) -> AuditSink {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new().name("latchkey-audit".into()).spawn(move || run(&store, rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the audit writer; releases will be refused");
        }
        AuditSink { tx: Mutex::new(tx) }
    }

    /// Appends `event`; the future resolves when it is committed, with its sequence number.
    pub fn append(&self, event: Event, ts_ms: i64) -> impl std::future::Future<Output = Committed> + 'static {
        let (done, wait) = tokio::sync::oneshot::channel();
        let submitted = self.tx.lock().unwrap_or_else(|p| p.into_inner()).send(Job { event, ts_ms, done }).map_err(|_| STOPPED.to_owned());
        async move {
            submitted?;
            wait.await.map_err(|_| STOPPED.to_owned())?
        }
    }
}

const STOPPED: &str = "audit writer stopped";

fn run(store: &Store, rx: Receiver<Job>) {
    let mut last_commit = std::time::Instant::now();
    while let Ok(first) = rx.recv() {
        // Under load, let a batch gather for up to MIN_COMMIT_INTERVAL: fewer commits mean
        // fewer fsyncs and, above all, fewer invalidations of every reader's page cache
        // (SQLite drops a connection's cache when another connection has committed).
        // An isolated record is committed at once.
        if let Some(wait) = MIN_COMMIT_INTERVAL.checked_sub(last_commit.elapsed()) {
            std::thread::sleep(wait);
        }
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(MAX_BATCH - 1));
        last_commit = std::time::Instant::now();
        let written = store.write(|tx| store::audit::append_all(tx, batch.iter().map(|j| (&j.event, j.ts_ms))));
        match written {
            Ok(seqs) => {
                for (job, seq) in batch.into_iter().zip(seqs) {
                    let _ = job.done.send(Ok(seq));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for job in batch {
                    let _ = job.done.send(Err(msg.clone()));
                }
            }
        }
    }
}
