//! Replicas: each server announces itself in the database every few seconds with the
//! master key versions it can load. `keys rotate` activates a new version only when every
//! live replica can load it (activating a key some replica cannot read would be an
//! outage), and each replica measures the database clock, so that leases, due times and
//! expiries written by different replicas compare on one clock.

use crate::model::MasterKeyState;
use crate::store::rows::{self, ReplicaRow};

use super::{Result, Vault, VaultError};

/// How often a replica announces itself.
pub const HEARTBEAT_INTERVAL_MS: i64 = 2_000;
/// A replica not heard from for this long is not live (a crash, a partition).
pub const LIVE_WINDOW_MS: i64 = 10_000;

/// What `/readyz` reports, each part separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// `None`: reachable. Otherwise why not.
    pub database: Option<String>,
    /// `None`: every key version that holds data loads. Otherwise which do not.
    pub keys: Option<String>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.database.is_none() && self.keys.is_none()
    }
}

impl Vault {
    /// Records that `replica` (on `host`, up since `started_at`) is alive and which
    /// master key versions it can load now (a staged version's file may appear later, on
    /// a shared mount). Loads what it can: call it on the blocking pool.
    pub fn heartbeat(&self, replica: &str, host: &str, started_at: i64) -> Result<ReplicaRow> {
        if let Some(db_ms) = self.store.server_time_ms()? {
            self.clock.set_reference_millis(db_ms);
        }
        let keys = self.store.read(rows::master_keys)?;
        let (mut loadable, mut missing) = (Vec::new(), Vec::new());
        for k in keys.iter().filter(|k| k.state.holds_data()) {
            match self.keys.get(k.version) {
                Ok(_) => loadable.push(k.version),
                Err(e) => {
                    if k.state != MasterKeyState::Staged {
                        tracing::error!(version = k.version, error = %e, "a master key that holds data cannot be loaded; this replica fails closed");
                    }
                    missing.push(k.version);
                }
            }
        }
        let now = self.clock.now_millis();
        let row = ReplicaRow {
            id: replica.to_owned(),
            host: host.to_owned(),
            started_at,
            seen_at: now,
            key_versions: loadable,
            missing_keys: missing,
        };
        self.store.write(|tx| rows::upsert_replica(tx, &row))?;
        Ok(row)
    }

    /// Whether a staged master key exists that is not in `reported` (errors: no).
    pub fn staged_key_unreported(&self, reported: &[u32]) -> bool {
        self.store
            .read(rows::master_keys)
            .is_ok_and(|keys| keys.iter().any(|k| k.state == MasterKeyState::Staged && !reported.contains(&k.version)))
    }

    /// A replica that stops says so (and stale rows of crashed ones go).
    pub fn leave(&self, replica: &str) -> Result<()> {
        let before = self.clock.now_millis() - 10 * LIVE_WINDOW_MS;
        Ok(self.store.write(|tx| rows::delete_replica(tx, replica, before))?)
    }

    /// Replicas heard from within the live window.
    pub fn live_replicas(&self) -> Result<Vec<ReplicaRow>> {
        let since = self.clock.now_millis() - LIVE_WINDOW_MS;
        Ok(self.store.read(|c| rows::live_replicas(c, since))?)
    }

    /// Live replicas that cannot load master key `version`.
    pub fn replicas_missing_key(&self, version: u32) -> Result<Vec<ReplicaRow>> {
        Ok(self.live_replicas()?.into_iter().filter(|r| !r.key_versions.contains(&version)).collect())
    }

    /// Whether the database answers and every key version holding data loads.
    pub fn readiness(&self) -> Readiness {
        // The reason goes to the log; the answer says only what is wrong.
        let unavailable = |e: crate::store::StoreError| {
            tracing::warn!(error = %e, "the database does not answer");
            Readiness { database: Some("unavailable".into()), keys: None }
        };
        if let Err(e) = self.store.ping() {
            return unavailable(e);
        }
        if self.integrity_failed() {
            return Readiness { database: Some("integrity violation (see the audit trail)".into()), keys: None };
        }
        let keys = match self.store.read(rows::master_keys) {
            Ok(keys) => keys,
            Err(e) => return unavailable(e),
        };
        let mut missing = Vec::new();
        let mut active = false;
        for k in keys.iter().filter(|k| k.state.holds_data() && k.state != MasterKeyState::Staged) {
            active |= k.state == MasterKeyState::Active;
            if self.keys.get(k.version).is_err() {
                missing.push(format!("v{}", k.version));
            }
        }
        let keys = if !active {
            Some("no active master key is recorded".to_owned())
        } else if !missing.is_empty() {
            Some(format!("cannot load master key {}", missing.join(", ")))
        } else {
            None
        };
        Readiness { database: None, keys }
    }

    /// Refuses to activate `version` while a live replica cannot load it.
    pub(super) fn check_replicas_have(&self, version: u32) -> Result<()> {
        let missing = self.replicas_missing_key(version)?;
        if missing.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = missing.iter().map(|r| format!("{} on {}", r.id, r.host)).collect();
        Err(VaultError::Conflict(format!(
            "master key v{version} is staged but {} cannot load it yet: {}; give them the file master-v{version}.key, then run `latchkey keys rotate` again (or `--wait`)",
            if missing.len() == 1 { "a live replica" } else { "live replicas" },
            names.join(", ")
        )))
    }
}
