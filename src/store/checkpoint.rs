//! Signed audit checkpoints, and the sink outside the database they go to.
//!
//! Every write transaction that appended audit records commits with a checkpoint: the
//! audit head (sequence and keyed hash), the configuration generation and the integrity
//! state's sequence, chained to the previous checkpoint by its hash and signed with the
//! Ed25519 `audit_signing` key. The newest checkpoint is kept in the database (for the
//! chain); each one is written to the sink after its transaction commits and before any
//! caller of that transaction returns. A database found behind the sink's last
//! checkpoint — records cut off, or an old backup restored — is refused.
//!
//! A line is the checkpoint's JSON with its signature appended as the last member:
//! `{…,"sig":"<base64url>"}`; the signature covers the JSON without that member.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;

use super::sql::{params, Conn};
use super::StoreError;
pub use crate::audit::Durability;
use crate::crypto::{b64url, b64url_decode, ed25519_verify, hex, sha256};

type Result<T> = std::result::Result<T, StoreError>;

/// Where checkpoints go: an append-only JSON-lines file and/or standard output.
///
/// Flushes are grouped: a batch offers its checkpoint, then waits for the output; whoever
/// holds the output writes the newest checkpoint offered so far, which covers every batch
/// committed before it, so batches that committed while a flush was running share the next
/// one instead of queueing one each. No caller returns before a checkpoint at least as new
/// as its own is written (and flushed, for `fsync`).
pub struct Sink {
    path: Option<PathBuf>,
    stdout: bool,
    durability: Durability,
    /// The newest committed checkpoint not yet written: (number, line).
    offered: Mutex<Option<(i64, String)>>,
    out: Mutex<Output>,
}

struct Output {
    file: Option<std::fs::File>,
    /// The number of the newest checkpoint written.
    written: i64,
}

impl Sink {
    pub fn new(path: Option<PathBuf>, stdout: bool, durability: Durability) -> Sink {
        Sink { path, stdout, durability, offered: Mutex::new(None), out: Mutex::new(Output { file: None, written: 0 }) }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Returns once checkpoint `n` (`line`), or a newer one, is written (and flushed per the
    /// durability mode).
    pub fn append(&self, n: i64, line: String) -> Result<()> {
        {
            let mut offered = self.offered.lock().unwrap_or_else(|p| p.into_inner());
            if offered.as_ref().is_none_or(|(m, _)| *m < n) {
                *offered = Some((n, line));
            }
        }
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if out.written >= n {
            return Ok(());
        }
        let Some((m, line)) = self.offered.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Err(StoreError::Io("an audit checkpoint went missing before it was written".into()));
        };
        match self.write(&mut out, &line) {
            Ok(()) => {
                out.written = m;
                Ok(())
            }
            Err(e) => {
                // Offered again: the next batch writes it (or a newer one).
                let mut offered = self.offered.lock().unwrap_or_else(|p| p.into_inner());
                if offered.as_ref().is_none_or(|(k, _)| *k < m) {
                    *offered = Some((m, line));
                }
                Err(e)
            }
        }
    }

    fn write(&self, out: &mut Output, line: &str) -> Result<()> {
        if let Some(path) = &self.path {
            if out.file.is_none() {
                out.file = Some(open_append(path)?);
            }
            let io = |e: std::io::Error| StoreError::Io(format!("cannot write the audit checkpoint file {}: {e}", path.display()));
            if let Some(f) = out.file.as_mut() {
                let mut buf = Vec::with_capacity(line.len() + 1);
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
                let written = f.write_all(&buf).and_then(|()| if self.durability == Durability::Fsync { f.sync_data() } else { Ok(()) });
                if let Err(e) = written {
                    // Reopened next time (the file may have been rotated or the disk freed).
                    out.file = None;
                    return Err(io(e));
                }
            }
        }
        if self.stdout {
            let mut so = std::io::stdout().lock();
            writeln!(so, "{line}")
                .and_then(|()| so.flush())
                .map_err(|e| StoreError::Io(format!("cannot write a checkpoint to stdout: {e}")))?;
        }
        Ok(())
    }

    /// The newest lines of the file (at most its last 64 KiB), oldest first; empty when
    /// the sink has no file or the file does not exist yet.
    pub fn tail(&self) -> Result<Vec<String>> {
        match self.path() {
            Some(p) => tail_lines(p),
            None => Ok(Vec::new()),
        }
    }
}

fn open_append(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::Io(format!("cannot open the audit checkpoint file {}: {e}", path.display())))
}

/// The non-empty lines in the last 64 KiB of a file (the first, possibly cut, dropped
/// unless the file is shorter); empty if the file does not exist.
pub fn tail_lines(path: &Path) -> Result<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |e: std::io::Error| StoreError::Io(format!("cannot read the audit checkpoint file {}: {e}", path.display()));
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let len = f.metadata().map_err(io)?.len();
    let start = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).map_err(io)?;
    let text = String::from_utf8_lossy(&tail);
    let skip = usize::from(start > 0);
    Ok(text.lines().skip(skip).filter(|l| !l.trim().is_empty()).map(str::to_owned).collect())
}

/// What a checkpoint says.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// Checkpoint number (one chain across every replica).
    pub n: i64,
    pub audit_seq: i64,
    /// Hex of the audit record's keyed hash at `audit_seq`.
    pub audit_hash: String,
    pub config_generation: i64,
    pub integrity_seq: i64,
    /// Hex SHA-256 of the previous checkpoint's line (zeros for the first).
    pub prev: String,
    /// Unix milliseconds of the newest record covered.
    pub ts_ms: i64,
    /// Which audit key signed it.
    pub kid: String,
}

/// Why a checkpoint line is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not a checkpoint line")]
    Malformed,
    #[error("signed by another key ({0})")]
    OtherKey(String),
    #[error("its signature does not verify")]
    Signature,
}

/// Verifies a line with `public` and returns what it says.
pub fn parse_line(line: &str, public: &[u8; 32], kid: &str) -> std::result::Result<Checkpoint, LineError> {
    let line = line.trim_end();
    let cut = line.rfind(",\"sig\":\"").ok_or(LineError::Malformed)?;
    let sig = line[cut + 8..].strip_suffix("\"}").ok_or(LineError::Malformed)?;
    let body = format!("{}}}", &line[..cut]);
    let cp: Checkpoint = serde_json::from_str(&body).map_err(|_| LineError::Malformed)?;
    if cp.kid != kid {
        return Err(LineError::OtherKey(cp.kid));
    }
    let sig: [u8; 64] = b64url_decode(sig).and_then(|s| s.try_into().ok()).ok_or(LineError::Malformed)?;
    if !ed25519_verify(public, body.as_bytes(), &sig) {
        return Err(LineError::Signature);
    }
    Ok(cp)
}

/// Everything a checkpoint covers, as read in a write transaction: the audit head (sequence,
/// hash, time), the configuration generation, the integrity state and the previous checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    audit: Option<(i64, Vec<u8>, i64)>,
    generation: i64,
    head: super::integrity::Head,
    prev: Option<(i64, String)>,
}

impl State {
    /// The audit trail's last record: sequence and hash (0 and the genesis hash when empty).
    pub fn audit_head(&self) -> (i64, Vec<u8>) {
        self.audit.as_ref().map_or_else(|| (0, crate::audit::GENESIS.to_vec()), |(seq, hash, _)| (*seq, hash.clone()))
    }

    /// An empty database's state (for tests of what carries it).
    #[cfg(test)]
    pub(super) fn empty() -> State {
        State { audit: None, generation: 0, head: super::integrity::Head { seq: 0, generation: 0 }, prev: None }
    }

    /// The state once records up to `seq` (with `hash`, at `ts_ms`) are appended.
    pub fn appended(&mut self, seq: i64, hash: Vec<u8>, ts_ms: i64) {
        self.audit = Some((seq, hash, ts_ms));
    }
}

/// Reads what a checkpoint covers, in one statement (one round trip on PostgreSQL).
pub fn read_state(c: &Conn<'_>) -> Result<State> {
    let (audit, generation, head, prev) = c
        .query_opt(
            // Scalar subqueries, each an index seek: SQLite would materialise derived tables.
            "SELECT (SELECT seq FROM audit ORDER BY seq DESC LIMIT 1), (SELECT hash FROM audit ORDER BY seq DESC LIMIT 1), \
             (SELECT ts_ms FROM audit ORDER BY seq DESC LIMIT 1), g.value, s.seq, s.digest, s.generation, s.mac, \
             (SELECT seq FROM audit_checkpoints ORDER BY seq DESC LIMIT 1), (SELECT body FROM audit_checkpoints ORDER BY seq DESC LIMIT 1) \
             FROM integrity_state s, config_generation g WHERE s.id = 1 AND g.id = 1",
            params![],
            |r| {
                let audit: Option<(i64, Vec<u8>, i64)> = match r.get::<Option<i64>>(0)? {
                    Some(seq) => Some((seq, r.get(1)?, r.get(2)?)),
                    None => None,
                };
                let prev: Option<(i64, String)> = match r.get::<Option<i64>>(8)? {
                    Some(n) => Some((n, r.get(9)?)),
                    None => None,
                };
                Ok((audit, r.get::<i64>(3)?, super::integrity::head_from_row(c, r, 4)?, prev))
            },
        )?
        .ok_or_else(|| c.sealer.violation("the integrity state or the configuration generation row is missing".into()))?;
    Ok(State { audit, generation, head, prev })
}

/// Writes the checkpoint of the current state in the caller's write transaction and
/// returns its line (for the sink, once committed). `known`: the state as read in this
/// transaction after its last change (see `Store::append_audit`), which saves reading it again.
pub fn write(c: &Conn<'_>, known: Option<State>) -> Result<(i64, String)> {
    let signer = c.sealer.signer(c)?;
    let State { audit, generation, head, prev } = match known {
        Some(state) => {
            // Debug builds (the tests) check the reuse against a fresh read, so that every
            // test that commits audit records checks it.
            #[cfg(debug_assertions)]
            if read_state(c)? != state {
                return Err(StoreError::Corrupt("the checkpoint state reused at commit is not the state read now".into()));
            }
            state
        }
        None => read_state(c)?,
    };
    let (audit_seq, audit_hash, ts_ms) = audit.unwrap_or_else(|| (0, crate::audit::GENESIS.to_vec(), 0));
    let (n, prev_hash) = match &prev {
        Some((n, line)) => (n + 1, hex(&sha256(line.as_bytes()))),
        None => (1, hex(&[0u8; 32])),
    };
    let body = serde_json::json!({
        "latchkey_checkpoint": 1,
        "n": n,
        "audit_seq": audit_seq,
        "audit_hash": hex(&audit_hash),
        "config_generation": generation,
        "integrity_seq": head.seq,
        "prev": prev_hash,
        "ts_ms": ts_ms,
        "kid": signer.kid(),
    })
    .to_string();
    let sig = signer.sign(body.as_bytes());
    let line = format!("{},\"sig\":\"{}\"}}", &body[..body.len() - 1], b64url(&sig));
    // Only the newest is needed in the database (for the chain); the sink keeps them all.
    // So the previous one is replaced in place: one statement. (Only one row has ever been
    // kept: earlier versions deleted the older ones as they inserted.)
    let replaced = match &prev {
        Some((m, _)) => {
            c.execute("UPDATE audit_checkpoints SET seq = ?1, audit_seq = ?2, body = ?3 WHERE seq = ?4", params![n, audit_seq, line, m])?
        }
        None => 0,
    };
    if replaced == 0 {
        c.execute("INSERT INTO audit_checkpoints (seq, audit_seq, body) VALUES (?1, ?2, ?3)", params![n, audit_seq, line])?;
    }
    Ok((n, line))
}

/// The checkpoint key's public half and id (published, like the agent JWKS).
pub fn public_key(c: &Conn<'_>) -> Result<([u8; 32], String)> {
    let signer = c.sealer.signer(c)?;
    Ok((signer.public_key(), signer.kid()))
}

/// Why the database does not reach a checkpoint.
pub fn behind(c: &Conn<'_>, cp: &Checkpoint) -> Result<Option<String>> {
    let (head_seq, _) = super::audit::head(c)?;
    if head_seq < cp.audit_seq {
        return Ok(Some(format!(
            "the audit trail ends at record {head_seq} but checkpoint {} covers record {}: records were deleted or an older backup was restored",
            cp.n, cp.audit_seq
        )));
    }
    match super::audit::hash_at(c, cp.audit_seq)? {
        Some(h) if cp.audit_seq == 0 || hex(&h) == cp.audit_hash => {}
        None if cp.audit_seq == 0 => {}
        _ => return Ok(Some(format!("audit record {} is not the one checkpoint {} covers: the trail was replaced", cp.audit_seq, cp.n))),
    }
    let head = super::integrity::head(c)?;
    if head.seq < cp.integrity_seq {
        return Ok(Some(format!(
            "the sealed rows are at write {} but checkpoint {} saw write {}: an older backup was restored",
            head.seq, cp.n, cp.integrity_seq
        )));
    }
    let generation = super::rows::config_generation(c)?;
    if generation < cp.config_generation {
        return Ok(Some(format!(
            "the configuration generation is {generation} but checkpoint {} saw {}: it went back",
            cp.n, cp.config_generation
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_are_grouped_and_a_newer_checkpoint_covers_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.jsonl");
        let sink = Sink::new(Some(path.clone()), false, Durability::Fsync);
        sink.append(1, "1".into()).unwrap();
        sink.append(3, "3".into()).unwrap();
        sink.append(2, "2".into()).unwrap();
        assert_eq!(tail_lines(&path).unwrap(), ["1", "3"], "2 is covered by 3 and never written after it");

        // Many committers at once: the file only ever grows in number, and ends with the newest.
        let next = std::sync::atomic::AtomicI64::new(4);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        sink.append(n, n.to_string()).unwrap();
                    }
                });
            }
        });
        let numbers: Vec<i64> = tail_lines(&path).unwrap().iter().map(|l| l.parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
        assert_eq!(numbers.last(), Some(&(4 + 8 * 50 - 1)));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
