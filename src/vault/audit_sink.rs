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
use crate::store::Store;

const MAX_BATCH: usize = 1024;
/// How long a record nobody waits for may wait for company (see [`AuditSink::append_lazy`]).
const LAZY_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

type Committed = Result<i64, String>;

struct Job {
    /// `None`: a flush (commits whatever is queued, writes nothing itself).
    event: Option<Event>,
    ts_ms: i64,
    /// A caller that went away (a dropped request) no longer needs the answer; a lazy record
    /// has none.
    done: Option<tokio::sync::oneshot::Sender<Committed>>,
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
        let submitted = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Job { event: Some(event), ts_ms, done: Some(done) })
            .map_err(|_| STOPPED.to_owned());
        async move {
            submitted?;
            wait.await.map_err(|_| STOPPED.to_owned())?
        }
    }

    /// Resolves once every record queued before it (lazy ones included) is committed.
    pub fn flush(&self) -> impl std::future::Future<Output = Committed> + 'static {
        let (done, wait) = tokio::sync::oneshot::channel();
        let submitted = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Job { event: None, ts_ms: 0, done: Some(done) })
            .map_err(|_| STOPPED.to_owned());
        async move {
            submitted?;
            wait.await.map_err(|_| STOPPED.to_owned())?
        }
    }

    /// Appends a record nobody waits for (a proxied call's outcome, written after the answer
    /// has gone): it is committed with the next batch someone waits for, or on its own within
    /// [`LAZY_WAIT`], so that it costs the hot path no commit of its own. A failure is logged.
    pub fn append_lazy(&self, event: Event, ts_ms: i64) {
        if self.tx.lock().unwrap_or_else(|p| p.into_inner()).send(Job { event: Some(event), ts_ms, done: None }).is_err() {
            tracing::error!("{STOPPED}: an audit record was not written");
        }
    }
}

const STOPPED: &str = "audit writer stopped";

fn run(store: &Store, rx: Receiver<Job>) {
    let min_commit_interval = store.audit_commit_interval();
    let mut last_commit = std::time::Instant::now();
    // Records callers waited for in the previous batch: more than one means concurrent load.
    let mut last_waited = 0usize;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        if batch[0].done.is_none() {
            // Only lazy records so far: wait for one somebody waits for, or LAZY_WAIT.
            let deadline = std::time::Instant::now() + LAZY_WAIT;
            while batch.len() < MAX_BATCH {
                match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                    Ok(job) => {
                        let waited = job.done.is_some();
                        batch.push(job);
                        if waited {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        // Under concurrent load, let a batch gather until the store's commit interval has passed
        // since the last commit began: fewer commits mean fewer fsyncs and round trips and, on
        // SQLite, fewer invalidations of every reader's page cache. A caller alone (the previous
        // batch held one waited-for record at most) is committed at once.
        if last_waited > 1 {
            if let Some(wait) = min_commit_interval.checked_sub(last_commit.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let room = MAX_BATCH.saturating_sub(batch.len());
        batch.extend(rx.try_iter().take(room));
        last_commit = std::time::Instant::now();
        last_waited = batch.iter().filter(|j| j.done.is_some()).count();
        let written = store.append_audit(batch.iter().filter_map(|j| j.event.as_ref().map(|e| (e, j.ts_ms))));
        match written {
            Ok(seqs) => {
                let mut seqs = seqs.into_iter();
                for job in batch {
                    let seq = if job.event.is_some() { seqs.next().unwrap_or_default() } else { 0 };
                    if let Some(done) = job.done {
                        let _ = done.send(Ok(seq));
                    }
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for job in batch {
                    match job.done {
                        Some(done) => {
                            let _ = done.send(Err(msg.clone()));
                        }
                        None => tracing::error!(error = %msg, "an audit record nobody waited for was not written"),
                    }
                }
            }
        }
    }
}
