//! The audit trail's record type and hash chain (pure; SQL is in `store::audit`).
//!
//! Each record's hash covers its sequence number, time, actor, action, target,
//! outcome, detail and the previous record's hash, so editing, deleting or reordering
//! any record breaks the chain from that point on. The hash is keyed (HMAC-SHA256 under
//! the long-lived `audit_chain` vault key): a database writer cannot recompute the chain
//! after an edit. Cutting the newest records off is what signed checkpoints outside the
//! database catch (`store::checkpoint`). Records never hold secrets: callers put ids,
//! names and decisions in `detail`, nothing else.

use serde::Serialize;

use crate::crypto::{sha256, MacKey};

/// The hash that precedes the first record.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// An event to append.
#[derive(Debug, Clone)]
pub struct Event {
    pub actor: String,
    pub action: &'static str,
    pub target: String,
    pub outcome: Outcome,
    /// JSON text.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Denied,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

impl Event {
    pub fn new(actor: &str, action: &'static str, target: impl Into<String>, outcome: Outcome, detail: serde_json::Value) -> Self {
        Event { actor: actor.to_owned(), action, target: target.into(), outcome, detail: detail.to_string() }
    }

    /// An event whose detail is serialised straight from `detail` (no intermediate JSON tree:
    /// the release path's records).
    pub fn serialized(actor: String, action: &'static str, target: String, outcome: Outcome, detail: &impl Serialize) -> Self {
        Event { actor, action, target, outcome, detail: serde_json::to_string(detail).unwrap_or_else(|_| "{}".into()) }
    }
}

/// When an audit record, and the checkpoint that covers it, are on disk before the
/// callers of its transaction return (`audit_durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Written to the operating system: survives a crash of latchkey, not of the machine.
    Os,
    /// Flushed to the disk (`fdatasync`): survives a power loss.
    #[default]
    Fsync,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "os" => Ok(Durability::Os),
            "fsync" => Ok(Durability::Fsync),
            other => Err(format!("audit_durability must be \"os\" or \"fsync\", not \"{other}\"")),
        }
    }
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Os => "os",
            Durability::Fsync => "fsync",
        }
    }
}

/// Filters for reading the trail (`GET /v1/admin/audit`).
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Records with a sequence number above this.
    pub after: i64,
    pub limit: usize,
    pub connection: Option<String>,
    pub agent: Option<String>,
    pub owner: Option<String>,
    pub outcome: Option<Outcome>,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: i64,
    pub ts_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl Record {
    /// The record as the API and `audit tail --json` show it.
    pub fn to_json(&self) -> serde_json::Value {
        // `detail` is JSON written by latchkey; show it as text if it somehow is not.
        let detail = serde_json::from_str(&self.detail).unwrap_or_else(|_| serde_json::Value::String(self.detail.clone()));
        serde_json::json!({"seq": self.seq, "ts": crate::time::rfc3339_millis(self.ts_ms), "actor": self.actor, "action": self.action,
            "target": self.target, "outcome": self.outcome, "detail": detail})
    }
}

/// The chain hash of a record's content following `prev_hash`, keyed.
#[allow(clippy::too_many_arguments)]
pub fn chain_hash(
    key: &MacKey,
    seq: i64,
    ts_ms: i64,
    actor: &str,
    action: &str,
    target: &str,
    outcome: &str,
    detail: &str,
    prev_hash: &[u8],
) -> [u8; 32] {
    key.mac(&chain_input(b"latchkey/audit/v2", seq, ts_ms, actor, action, target, outcome, detail, prev_hash))
}

/// The unkeyed hash of versions before 0.2 (only to check a trail before it is chained
/// again with the key).
#[allow(clippy::too_many_arguments)]
pub fn legacy_chain_hash(
    seq: i64,
    ts_ms: i64,
    actor: &str,
    action: &str,
    target: &str,
    outcome: &str,
    detail: &str,
    prev_hash: &[u8],
) -> [u8; 32] {
    sha256(&chain_input(b"latchkey/audit/v1", seq, ts_ms, actor, action, target, outcome, detail, prev_hash))
}

#[allow(clippy::too_many_arguments)]
fn chain_input(
    domain: &[u8],
    seq: i64,
    ts_ms: i64,
    actor: &str,
    action: &str,
    target: &str,
    outcome: &str,
    detail: &str,
    prev_hash: &[u8],
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128 + detail.len());
    buf.extend_from_slice(domain);
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&ts_ms.to_be_bytes());
    for part in [actor, action, target, outcome, detail] {
        buf.extend_from_slice(&(part.len() as u64).to_be_bytes());
        buf.extend_from_slice(part.as_bytes());
    }
    buf.extend_from_slice(prev_hash);
    buf
}

/// Why the chain is broken at a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub seq: i64,
    pub reason: &'static str,
}

/// Incremental verifier: feed records in sequence order.
#[derive(Debug)]
pub struct Verifier<'k> {
    /// `None`: the legacy unkeyed chain.
    key: Option<&'k MacKey>,
    prev_seq: i64,
    prev_hash: Vec<u8>,
    pub checked: u64,
}

impl<'k> Verifier<'k> {
    pub fn new(key: &'k MacKey) -> Self {
        Verifier { key: Some(key), prev_seq: 0, prev_hash: GENESIS.to_vec(), checked: 0 }
    }

    /// For a trail written before the chain was keyed.
    pub fn legacy() -> Self {
        Verifier { key: None, prev_seq: 0, prev_hash: GENESIS.to_vec(), checked: 0 }
    }

    pub fn check(&mut self, r: &Record) -> Result<(), Break> {
        let fail = |reason| Err(Break { seq: r.seq, reason });
        if r.seq != self.prev_seq + 1 {
            return fail("a record is missing before this one (sequence gap)");
        }
        if r.prev_hash != self.prev_hash {
            return fail("prev_hash does not match the previous record's hash");
        }
        let h = match self.key {
            Some(k) => chain_hash(k, r.seq, r.ts_ms, &r.actor, &r.action, &r.target, &r.outcome, &r.detail, &r.prev_hash),
            None => legacy_chain_hash(r.seq, r.ts_ms, &r.actor, &r.action, &r.target, &r.outcome, &r.detail, &r.prev_hash),
        };
        if r.hash != h {
            return fail("the record's content does not match its hash (modified)");
        }
        self.prev_seq = r.seq;
        self.prev_hash = r.hash.clone();
        self.checked += 1;
        Ok(())
    }

    /// The hash of the last record checked: record it elsewhere to detect truncation.
    pub fn head(&self) -> &[u8] {
        &self.prev_hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MacKey {
        MacKey::new(zeroize::Zeroizing::new([7u8; 32])).unwrap()
    }

    fn record(seq: i64, prev: &[u8], detail: &str) -> Record {
        let hash = chain_hash(&key(), seq, 1, "cli:root", "keys.rotate", "v2", "ok", detail, prev).to_vec();
        Record {
            seq,
            ts_ms: 1,
            actor: "cli:root".into(),
            action: "keys.rotate".into(),
            target: "v2".into(),
            outcome: "ok".into(),
            detail: detail.into(),
            prev_hash: prev.to_vec(),
            hash,
        }
    }

    #[test]
    fn chain_verifies_and_detects_edits_and_gaps() {
        let a = record(1, &GENESIS, "{}");
        let b = record(2, &a.hash, "{\"n\":1}");
        let c = record(3, &b.hash, "{}");
        let k = key();
        let mut v = Verifier::new(&k);
        for r in [&a, &b, &c] {
            v.check(r).unwrap();
        }
        assert_eq!(v.head(), c.hash.as_slice());
        let other = MacKey::new(zeroize::Zeroizing::new([8u8; 32])).unwrap();
        assert_eq!(Verifier::new(&other).check(&a).unwrap_err().reason, "the record's content does not match its hash (modified)");
        assert!(Verifier::legacy().check(&a).is_err(), "a keyed chain is not the plain hash");

        let mut edited = b.clone();
        edited.detail = "{\"n\":2}".into();
        let k = key();
        let mut v = Verifier::new(&k);
        v.check(&a).unwrap();
        assert_eq!(v.check(&edited).unwrap_err().seq, 2);

        let k = key();
        let mut v = Verifier::new(&k);
        v.check(&a).unwrap();
        assert_eq!(v.check(&c).unwrap_err().reason, "a record is missing before this one (sequence gap)");
    }
}
