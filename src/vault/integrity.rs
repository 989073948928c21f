//! Row integrity, the vault's part (the mechanism is in `store::integrity`): the row key
//! is a vault key like any other (sealed under a data key, re-wrapped by rotation, never
//! derived from a master-key version), a database is sealed once (new, or on the first
//! start of this version), full checks fail the vault closed, and violations go to the
//! audit trail.

use std::sync::atomic::Ordering;

use serde_json::json;

use super::{Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::crypto::{CheckpointSigner, MacKey};
use crate::store::checkpoint;
use crate::store::integrity::{self as sealing, Report};
use crate::store::sql::Conn;

pub(super) const ROW_KEY: &str = sealing::ROW_KEY_PURPOSE;

/// How often a running server re-verifies every sealed row and the digest of them all.
pub const INTEGRITY_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

fn missing(what: &str) -> VaultError {
    VaultError::Integrity(format!("the {what} is missing from the database: it was removed outside latchkey"))
}

impl Vault {
    /// Seals the rows of a database that predates row integrity (once, by whichever
    /// process gets there first); refuses one where only half of the setup is left.
    pub(super) fn ensure_integrity(&self) -> Result<()> {
        match self.store.read(sealing::setup_status)? {
            (true, true) => Ok(()),
            (false, false) => {
                let n = self.store.write(|tx| self.seal_database(tx))?;
                if n > 0 {
                    tracing::info!(rows = n, "sealed the existing rows with a MAC (row integrity is new in this version)");
                }
                Ok(())
            }
            (true, false) => Err(missing("row integrity key")),
            (false, true) => Err(missing("integrity state")),
        }
    }

    /// Creates the row key and seals every existing row, in the caller's write
    /// transaction; returns how many rows it sealed.
    pub(super) fn seal_database(&self, tx: &Conn<'_>) -> Result<u64> {
        match sealing::setup_status(tx)? {
            (true, true) => return Ok(0),
            (false, false) => {}
            (true, false) => return Err(missing("row integrity key")),
            (false, true) => return Err(missing("integrity state")),
        }
        let row = self.create_vault_key(tx, ROW_KEY)?;
        let chain = self.create_vault_key(tx, sealing::AUDIT_CHAIN_PURPOSE)?;
        let signing = self.create_vault_key(tx, sealing::AUDIT_SIGNING_PURPOSE)?;
        self.store.sealer().set_keys(MacKey::new(row)?, MacKey::new(chain)?, CheckpointSigner::from_seed(&signing));
        // The audit trail so far was chained with a plain hash: chained again with the key.
        crate::store::audit::rechain(tx)?;
        let n = sealing::seal_existing(tx)?;
        if n > 0 {
            self.audit(tx, Event::new("system", "integrity.sealed", "vault", Outcome::Ok, json!({"rows": n})))?;
        }
        Ok(n)
    }

    /// Verifies every sealed row, their digest and the integrity state, in one snapshot.
    pub fn verify_integrity(&self) -> Result<Report> {
        Ok(self.store.snapshot(sealing::verify_all)?)
    }

    /// A full check; on failure the vault fails closed (releases refused, not ready)
    /// until restarted on a database that passes.
    pub fn check_integrity(&self) -> Result<()> {
        let mut report = self.verify_integrity()?;
        if let Some(why) = self.behind_sink()? {
            self.store.sealer().violation(why.clone());
            report.failures.push(why);
        }
        self.record_violations();
        match report.failures.first() {
            None => Ok(()),
            Some(first) => {
                self.integrity_failed.store(true, Ordering::SeqCst);
                let more = report.failures.len() - 1;
                let more = if more > 0 { format!(" (and {more} more)") } else { String::new() };
                Err(VaultError::Integrity(format!("{first}{more}")))
            }
        }
    }

    /// Whether a full check failed (the vault then refuses releases).
    pub fn integrity_failed(&self) -> bool {
        self.integrity_failed.load(Ordering::Relaxed)
    }

    /// Writes an `integrity.violation` audit record for each violation found since the
    /// last call; returns how many.
    pub fn record_violations(&self) -> usize {
        let found = self.store.sealer().take_violations();
        for what in &found {
            let ev = Event::new("system", "integrity.violation", "vault", Outcome::Failed, json!({"violation": what}));
            if let Err(e) = self.store.write(|tx| self.audit(tx, ev)) {
                tracing::error!(error = %e, "cannot audit an integrity violation");
            }
        }
        found.len()
    }

    /// PostgreSQL: statements that read credentials for releases on the HTTP workers'
    /// connections, each for one or more releases (a metric).
    pub fn release_read_statements(&self) -> u64 {
        self.store.release_read_statements()
    }

    /// Integrity violations this process has found (a metric).
    pub fn integrity_violations(&self) -> u64 {
        self.store.sealer().violation_count()
    }

    /// Called with every configuration generation read, and the highest generation observed
    /// when that read began (`ConfigCache::highest`): one lower than that means the database
    /// was rolled back under a running server.
    pub(super) fn observe_generation(&self, generation: i64, seen: i64) -> Result<()> {
        match self.config.observe(generation, seen) {
            Ok(()) => Ok(()),
            Err(seen) => {
                Err(self.store.sealer().violation(format!("the configuration generation went back from {seen} to {generation}")).into())
            }
        }
    }
}

/// The checkpoint key as a JWK.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditKeyJwk {
    pub kty: &'static str,
    pub crv: &'static str,
    pub x: String,
    pub kid: String,
    pub r#use: &'static str,
    pub alg: &'static str,
}

/// What `audit verify` found in a checkpoint file.
#[derive(Debug, Default)]
pub struct CheckpointReport {
    pub lines: u64,
    /// The last valid checkpoint.
    pub last: Option<crate::store::checkpoint::Checkpoint>,
    pub problems: Vec<String>,
}

impl Vault {
    /// Sends checkpoints to `sink` from now on, durable as its durability mode says (which
    /// also sets how SQLite commits).
    pub fn configure_checkpoints(&self, sink: checkpoint::Sink) -> Result<()> {
        self.store.set_durability(sink.durability())?;
        self.store.sealer().set_sink(sink);
        Ok(())
    }

    /// Writes a checkpoint of everything committed so far (graceful shutdown).
    pub fn final_checkpoint(&self) -> Result<()> {
        Ok(self.store.checkpoint_now()?)
    }

    /// The audit checkpoints' public key as a JWK (published like the agent JWKS).
    pub fn audit_public_jwk(&self) -> Result<AuditKeyJwk> {
        let (public, kid) = self.store.read(checkpoint::public_key)?;
        Ok(AuditKeyJwk { kty: "OKP", crv: "Ed25519", x: crate::crypto::b64url(&public), kid, r#use: "sig", alg: "EdDSA" })
    }

    /// Why the database is behind the sink's last checkpoint, if it is.
    pub(super) fn behind_sink(&self) -> Result<Option<String>> {
        let Some(sink) = self.store.sealer().sink() else { return Ok(None) };
        let lines = sink.tail()?;
        let Some(last) = lines.last() else { return Ok(None) };
        let where_ = sink.path().map(|p| p.display().to_string()).unwrap_or_default();
        let (public, kid) = self.store.read(checkpoint::public_key)?;
        // The newest checkpoint among the last lines: processes sharing the file (a server
        // and CLI commands) may append theirs slightly out of order.
        let newest = lines.iter().filter_map(|l| checkpoint::parse_line(l, &public, &kid).ok()).max_by_key(|cp| cp.n);
        match (newest, checkpoint::parse_line(last, &public, &kid)) {
            (_, Err(e)) => Ok(Some(format!("the last checkpoint in {where_} is not this vault's: {e}"))),
            (Some(cp), Ok(_)) => {
                Ok(self.store.read(|c| checkpoint::behind(c, &cp))?.map(|why| format!("behind the audit checkpoints in {where_}: {why}")))
            }
            (None, Ok(_)) => Ok(None),
        }
    }

    /// Checks every checkpoint in `path` (signature, chain, and that the audit trail still
    /// holds what it covers).
    pub fn verify_checkpoints(&self, path: &std::path::Path) -> Result<CheckpointReport> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| VaultError::Integrity(format!("cannot read the checkpoint file {}: {e}", path.display())))?;
        let (public, kid) = self.store.read(checkpoint::public_key)?;
        let mut report = CheckpointReport::default();
        let mut seen: std::collections::HashMap<i64, &str> = std::collections::HashMap::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            report.lines += 1;
            let at = i + 1;
            let cp = match checkpoint::parse_line(line, &public, &kid) {
                Ok(cp) => cp,
                Err(e) => {
                    report.problems.push(format!("line {at}: {e}"));
                    continue;
                }
            };
            // Numbers grow, with gaps (checkpoints of other replicas or skipped by a grouped
            // flush) and small inversions (processes sharing the file): a link is checked
            // wherever both of its ends are in the file.
            if let Some(p_line) = seen.get(&(cp.n - 1)) {
                if cp.prev != crate::crypto::hex(&crate::crypto::sha256(p_line.as_bytes())) {
                    report.problems.push(format!("line {at}: checkpoint {} is not chained to checkpoint {}", cp.n, cp.n - 1));
                }
            }
            if seen.insert(cp.n, line).is_some() {
                report.problems.push(format!("line {at}: checkpoint {} appears twice", cp.n));
            }
            if let Some(why) = self.store.read(|c| checkpoint::behind(c, &cp))? {
                report.problems.push(format!("line {at}: {why}"));
            }
            if report.last.as_ref().is_none_or(|l| l.n < cp.n) {
                report.last = Some(cp);
            }
        }
        Ok(report)
    }
}
