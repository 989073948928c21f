//! Group commit for audit records on the hot path (releases, token issuance).
//!
//! Callers hand an event to one writer thread and wait for its commit; the writer takes
//! everything queued at that moment and appends it in one transaction, so one fsync
//! covers many decisions. A caller learns whether *its* record committed, which is what
//! lets releases fail closed.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use crate::audit::Event;
use crate::store::{self, Store, StoreError};

const MAX_BATCH: usize = 1024;

struct Job {
    event: Event,
    ts_ms: i64,
    done: SyncSender<Result<i64, String>>,
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

    /// Appends `event` and waits until it is committed; returns its sequence number.
    pub fn append(&self, event: Event, ts_ms: i64) -> Result<i64, String> {
        let (done, wait) = mpsc::sync_channel(1);
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Job { event, ts_ms, done })
            .map_err(|_| "audit writer stopped".to_owned())?;
        wait.recv().map_err(|_| "audit writer stopped".to_owned())?
    }
}

fn run(store: &Store, rx: Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(MAX_BATCH - 1));
        let written = store.write(|tx| {
            let mut seqs = Vec::with_capacity(batch.len());
            for job in &batch {
                seqs.push(store::audit::append(tx, &job.event, job.ts_ms)?);
            }
            Ok::<_, StoreError>(seqs)
        });
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
