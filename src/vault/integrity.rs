//! Row integrity, the vault's part (the mechanism is in `store::integrity`): the row key
//! is a vault key like any other (sealed under a data key, re-wrapped by rotation, never
//! derived from a master-key version), a database is sealed once (new, or on the first
//! start of this version), full checks fail the vault closed, and violations go to the
//! audit trail.

use std::sync::atomic::Ordering;

use serde_json::json;

use super::{Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::crypto::MacKey;
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
        let key = self.create_vault_key(tx, ROW_KEY)?;
        self.store.sealer().set_key(MacKey::new(key));
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
        let report = self.verify_integrity()?;
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

    /// Integrity violations this process has found (a metric).
    pub fn integrity_violations(&self) -> u64 {
        self.store.sealer().violation_count()
    }

    /// Called with every configuration generation read: one lower than a generation
    /// already seen means the database was rolled back under a running server.
    pub(super) fn observe_generation(&self, generation: i64) -> Result<()> {
        match self.config.observe(generation) {
            Ok(()) => Ok(()),
            Err(seen) => {
                Err(self.store.sealer().violation(format!("the configuration generation went back from {seen} to {generation}")).into())
            }
        }
    }
}
