//! Master-key lifecycle: status, rotate, verify, retire, destroy.
//!
//! Rotation is crash-safe by construction:
//! 1. *Stage*: under the database write lock, write key file N+1 (temp, fsync,
//!    rename, fsync dir), read it back, then record it as `staged`.
//! 2. *Activate*: one transaction makes N+1 `active` and every older active key
//!    `decrypt_only`. From then on every new data key is wrapped under N+1, because
//!    writers read the active version inside their own write transaction.
//! 3. *Sweep*: re-wrap data keys still under older versions in id order, one batch per
//!    transaction, each row updated only if still under the version it was read with
//!    (compare-and-swap). Killed at any point, a re-run resumes at step 1, 2 or 3; no
//!    key is ever unreadable because old versions stay loadable until retired.

use serde::Serialize;
use serde_json::json;

use super::{Actor, Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::crypto::Binding;
use crate::model::MasterKeyState;
use crate::store::rows::{self, MasterKeyRow};
use crate::time::rfc3339;

/// Data keys re-wrapped per transaction by default: large enough to amortise the
/// commit, small enough that a concurrent writer waits only milliseconds.
pub const DEFAULT_BATCH: usize = 5_000;
/// Warn long before the 2^32 random-nonce limit for one AES-GCM key.
const WRAP_WARN: u64 = 1 << 30;

#[derive(Debug, Clone, Serialize)]
pub struct KeyVersionStatus {
    pub version: u32,
    pub state: MasterKeyState,
    pub created_at: String,
    pub activated_at: Option<String>,
    pub retired_at: Option<String>,
    pub destroyed_at: Option<String>,
    pub deks: u64,
    pub wraps: u64,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RotationStatus {
    pub target_version: u32,
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyStatus {
    pub active_version: Option<u32>,
    pub versions: Vec<KeyVersionStatus>,
    pub rotation: Option<RotationStatus>,
}

#[derive(Debug, Clone, Copy)]
pub struct RotateProgress {
    pub target_version: u32,
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RotateReport {
    pub from_versions: Vec<u32>,
    pub to_version: u32,
    pub resumed: bool,
    pub rewrapped: u64,
    pub skipped_concurrent: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub credentials: u64,
    pub connection_secrets: u64,
    pub deks: u64,
    /// Rows whose MAC was checked (with the digest of them all).
    pub sealed_rows: u64,
    pub failures: Vec<String>,
}

/// How long `keys rotate` gives live replicas to report that they can load a new key
/// (a few heartbeats) before it stops, unless told to wait longer.
pub const ROTATE_GRACE: std::time::Duration = std::time::Duration::from_millis(3 * super::HEARTBEAT_INTERVAL_MS as u64 + 500);

impl Vault {
    pub fn key_status(&self) -> Result<KeyStatus> {
        let (keys, counts) = self.store.read(|c| Ok::<_, VaultError>((rows::master_keys(c)?, rows::dek_counts(c)?)))?;
        let active = keys.iter().find(|k| k.state == MasterKeyState::Active).map(|k| k.version);
        let versions = keys
            .iter()
            .map(|k| {
                let deks = counts.get(&k.version).copied().unwrap_or(0);
                let file = match (k.state, self.keys.file_ok(k.version)) {
                    (MasterKeyState::Destroyed, Err(crate::keys::KeyError::Missing { .. })) => "removed".to_owned(),
                    (MasterKeyState::Destroyed, Ok(())) => "present (run `keys destroy` again to remove it)".to_owned(),
                    (_, Ok(())) => "ok".to_owned(),
                    (_, Err(e)) => e.to_string(),
                };
                let warning = (k.wraps >= WRAP_WARN)
                    .then(|| format!("{} wraps under this key: rotate soon (AES-GCM random-nonce limit is 2^32)", k.wraps));
                KeyVersionStatus {
                    version: k.version,
                    state: k.state,
                    created_at: rfc3339(k.created_at),
                    activated_at: k.activated_at.map(rfc3339),
                    retired_at: k.retired_at.map(rfc3339),
                    destroyed_at: k.destroyed_at.map(rfc3339),
                    deks,
                    wraps: k.wraps,
                    file,
                    warning,
                }
            })
            .collect();
        let total: u64 = counts.values().sum();
        let done = active.and_then(|a| counts.get(&a)).copied().unwrap_or(0);
        let staged = keys.iter().find(|k| k.state == MasterKeyState::Staged).map(|k| k.version);
        let rotation = match (staged, active) {
            (Some(s), _) => Some(RotationStatus { target_version: s, done: 0, total }),
            (None, Some(a)) if done < total => Some(RotationStatus { target_version: a, done, total }),
            _ => None,
        };
        Ok(KeyStatus { active_version: active, versions, rotation })
    }

    /// Rotates to a new master key, or finishes an interrupted rotation.
    pub fn rotate_keys(&self, actor: &Actor, batch: usize, progress: &mut dyn FnMut(RotateProgress)) -> Result<RotateReport> {
        self.rotate_keys_waiting(actor, batch, ROTATE_GRACE, &mut |_, _| {}, progress)
    }

    /// [`Vault::rotate_keys`]; while live replicas cannot load the new version yet, waits
    /// up to `wait` for them (telling `waiting` which), then stops if some still cannot.
    pub fn rotate_keys_waiting(
        &self,
        actor: &Actor,
        batch: usize,
        wait: std::time::Duration,
        waiting: &mut dyn FnMut(u32, &[crate::store::rows::ReplicaRow]),
        progress: &mut dyn FnMut(RotateProgress),
    ) -> Result<RotateReport> {
        let batch = batch.clamp(1, 100_000);
        let keys = self.store.read(rows::master_keys)?;
        let active = keys.iter().find(|k| k.state == MasterKeyState::Active).map(|k| k.version);
        let staged = keys.iter().find(|k| k.state == MasterKeyState::Staged).map(|k| k.version);
        let pending = self.store.read(rows::dek_counts)?.into_iter().any(|(v, n)| n > 0 && Some(v) != active);
        let resumed = staged.is_some() || pending;
        let target = match (staged, active) {
            (Some(s), _) => s,
            (None, Some(a)) if pending => a,
            _ => self.stage_key(actor, &keys)?,
        };
        if Some(target) != active {
            let deadline = std::time::Instant::now() + wait;
            loop {
                let missing = self.replicas_missing_key(target)?;
                if missing.is_empty() || std::time::Instant::now() >= deadline {
                    break;
                }
                waiting(target, &missing);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            self.activate_key(actor, target)?;
        } else {
            self.store.write(|tx| {
                self.audit(tx, Event::new(&actor.name(), "keys.rotate.resume", format!("v{target}"), Outcome::Ok, json!({})))
            })?;
        }
        self.sweep(actor, target, resumed, batch, progress)
    }

    fn stage_key(&self, actor: &Actor, keys: &[MasterKeyRow]) -> Result<u32> {
        self.store.write(|tx| {
            // Re-read under the write lock: a concurrent `keys rotate` may have staged.
            let keys_now = rows::master_keys(tx)?;
            if keys_now.len() != keys.len() {
                return Err(VaultError::Conflict("another `keys rotate` is running; wait for it, then run this again".into()));
            }
            let next = keys_now.iter().map(|k| k.version).max().unwrap_or(0) + 1;
            if self.keys.dir().versions()?.contains(&next) {
                // Left by a rotation killed between writing the file and recording it:
                // adopt it only if it opens and checks.
                self.keys.get(next).map_err(|e| {
                    VaultError::Integrity(format!("an unrecorded key file for v{next} exists and cannot be used ({e}); move it out of the keys directory and run this again"))
                })?;
            } else {
                self.keys.create_version(next)?;
            }
            rows::insert_master_key(tx, next, MasterKeyState::Staged, self.clock.now())?;
            self.audit(tx, Event::new(&actor.name(), "keys.stage", format!("v{next}"), Outcome::Ok, json!({})))?;
            Ok(next)
        })
    }

    fn activate_key(&self, actor: &Actor, version: u32) -> Result<()> {
        // The key must load (file present, passphrase right) here and on every live
        // replica before anything uses it.
        self.keys.get(version)?;
        self.check_replicas_have(version)?;
        let now = self.clock.now();
        self.store.write(|tx| {
            let mut demoted = Vec::new();
            for k in rows::master_keys(tx)?.into_iter().filter(|k| k.state == MasterKeyState::Active) {
                rows::set_master_key_state(tx, k.version, MasterKeyState::Active, MasterKeyState::DecryptOnly, now)?;
                demoted.push(k.version);
            }
            if !rows::set_master_key_state(tx, version, MasterKeyState::Staged, MasterKeyState::Active, now)? {
                return Err(VaultError::Conflict(format!("master key v{version} is no longer staged; another rotation ran")));
            }
            self.audit(tx, Event::new(&actor.name(), "keys.activate", format!("v{version}"), Outcome::Ok, json!({"demoted": demoted})))?;
            Ok(())
        })
    }

    fn sweep(
        &self,
        actor: &Actor,
        target: u32,
        resumed: bool,
        batch: usize,
        progress: &mut dyn FnMut(RotateProgress),
    ) -> Result<RotateReport> {
        let new_key = self.keys.get(target)?;
        let counts = self.store.read(rows::dek_counts)?;
        let total: u64 = counts.values().sum();
        let mut done = counts.get(&target).copied().unwrap_or(0);
        let from: Vec<u32> = counts.iter().filter(|(v, n)| **v != target && **n > 0).map(|(v, _)| *v).collect();
        let (mut rewrapped, mut skipped) = (0u64, 0u64);
        progress(RotateProgress { target_version: target, done, total });
        for &old in &from {
            let old_key = self.keys.get(old)?;
            let mut after = 0i64;
            loop {
                let page = self.store.read(|c| rows::deks_under(c, old, after, batch))?;
                let Some(last) = page.last() else { break };
                after = last.id;
                let mut updates = Vec::with_capacity(page.len());
                for d in &page {
                    let binding = Binding::from_stored(d.binding.clone());
                    let dek = old_key.unwrap(&d.wrapped, &binding).map_err(|_| {
                        VaultError::Integrity(format!(
                            "data key {} under v{old} failed to unwrap; run `latchkey keys verify` to list damaged records",
                            d.id
                        ))
                    })?;
                    updates.push((d.id, new_key.wrap(&dek, &binding)?));
                }
                let n = self.store.write(|tx| {
                    let mut n = 0u64;
                    for (id, wrapped) in &updates {
                        n += u64::from(rows::rewrap_dek(tx, *id, old, target, wrapped)?);
                    }
                    rows::add_wraps(tx, target, n)?;
                    Ok::<_, VaultError>(n)
                })?;
                rewrapped += n;
                skipped += updates.len() as u64 - n;
                done += updates.len() as u64;
                progress(RotateProgress { target_version: target, done: done.min(total), total });
            }
        }
        let report = RotateReport { from_versions: from, to_version: target, resumed, rewrapped, skipped_concurrent: skipped };
        self.store.write(|tx| {
            let detail = json!({"from": report.from_versions, "rewrapped": rewrapped, "resumed": resumed});
            self.audit(tx, Event::new(&actor.name(), "keys.rotate", format!("v{target}"), Outcome::Ok, detail))
        })?;
        Ok(report)
    }

    /// Unwraps every data key and authenticates every sealed field.
    pub fn verify_keys(&self, actor: &Actor, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport> {
        // Every version that may hold data must unlock, even if nothing uses it yet.
        self.load_keys()?;
        let total_creds = self.store.read(rows::count_all_credentials)?;
        let mut report = VerifyReport { credentials: 0, connection_secrets: 0, deks: 0, sealed_rows: 0, failures: Vec::new() };
        // Row integrity first: a row that fails its MAC is not read for its ciphertexts.
        let integrity = self.verify_integrity()?;
        report.sealed_rows = integrity.rows;
        self.record_violations();
        if !integrity.failures.is_empty() {
            report.failures.extend(integrity.failures.iter().map(|f| format!("integrity: {f}")));
            report
                .failures
                .push("ciphertexts were not checked: the database was changed outside latchkey (restore it from a backup)".into());
            self.store.write(|tx| {
                let detail = json!({"sealed_rows": report.sealed_rows, "failures": report.failures.len()});
                self.audit(tx, Event::new(&actor.name(), "keys.verify", "vault", Outcome::Failed, detail))
            })?;
            return Ok(report);
        }
        let mut after = String::new();
        loop {
            let page = self.store.read(|c| rows::credentials_page(c, &after, DEFAULT_BATCH))?;
            let Some(last) = page.last() else { break };
            after = last.meta.id.clone();
            for row in page {
                let label = format!("credential {} ({}/{})", row.meta.id, row.meta.connection_id, row.meta.owner);
                report.credentials += 1;
                if let Err(e) = self.open_credential_row(row) {
                    report.failures.push(format!("{label}: {e}"));
                }
            }
            progress(report.credentials, total_creds);
        }
        for row in self.store.read(rows::list_connections)? {
            if row.secret.is_some() {
                report.connection_secrets += 1;
                if let Err(e) = self.open_client_secret(&row) {
                    report.failures.push(format!("connection '{}' client secret: {e}", row.id));
                }
            }
        }
        let (signing_keys, failures) = self.verify_signing_keys()?;
        report.failures.extend(failures);
        let (issuer_secrets, failures) = self.verify_issuer_secrets()?;
        report.failures.extend(failures);
        report.deks = self.store.read(rows::count_deks)?;
        let sessions = self.store.read(crate::store::sessions::count_session_deks)?;
        let (narrowed, failures) = self.verify_narrowed()?;
        report.failures.extend(failures);
        let (vault_keys, failures) = self.verify_vault_keys()?;
        report.failures.extend(failures);
        let referenced = report.credentials + report.connection_secrets + signing_keys + sessions + issuer_secrets + narrowed + vault_keys;
        if report.deks != referenced {
            report.failures.push(format!("{} data keys are stored but {referenced} records reference one", report.deks));
        }
        let outcome = if report.failures.is_empty() { Outcome::Ok } else { Outcome::Failed };
        self.store.write(|tx| {
            let detail = json!({"credentials": report.credentials, "connection_secrets": report.connection_secrets, "sealed_rows": report.sealed_rows, "failures": report.failures.len()});
            self.audit(tx, Event::new(&actor.name(), "keys.verify", "vault", outcome, detail))
        })?;
        Ok(report)
    }

    /// Marks a decrypt-only version retired; only when no data key references it.
    pub fn retire_key(&self, actor: &Actor, version: u32) -> Result<()> {
        let now = self.clock.now();
        let res = self.store.write(|tx| {
            let key = rows::master_keys(tx)?
                .into_iter()
                .find(|k| k.version == version)
                .ok_or_else(|| VaultError::NotFound(format!("master key v{version}")))?;
            if key.state != MasterKeyState::DecryptOnly {
                return Err(VaultError::Conflict(format!(
                    "master key v{version} is {}; only a decrypt_only version can be retired",
                    key.state
                )));
            }
            let n = rows::dek_count_for(tx, version)?;
            if n > 0 {
                return Err(VaultError::Conflict(format!(
                    "{n} data keys still reference v{version}: run `latchkey keys rotate` to finish re-wrapping, then retire"
                )));
            }
            rows::set_master_key_state(tx, version, MasterKeyState::DecryptOnly, MasterKeyState::Retired, now)?;
            self.audit(tx, Event::new(&actor.name(), "keys.retire", format!("v{version}"), Outcome::Ok, json!({})))?;
            Ok(())
        });
        self.audit_failure(actor, "keys.retire", version, &res);
        res
    }

    /// Destroys a retired version: recorded as destroyed, then its file removed.
    pub fn destroy_key(&self, actor: &Actor, version: u32) -> Result<()> {
        let now = self.clock.now();
        let res = self.store.write(|tx| {
            let key = rows::master_keys(tx)?
                .into_iter()
                .find(|k| k.version == version)
                .ok_or_else(|| VaultError::NotFound(format!("master key v{version}")))?;
            match key.state {
                MasterKeyState::Retired => {
                    rows::set_master_key_state(tx, version, MasterKeyState::Retired, MasterKeyState::Destroyed, now)?;
                }
                MasterKeyState::Destroyed => {} // finish removing a file left by an interrupted destroy
                other => {
                    return Err(VaultError::Conflict(format!(
                    "master key v{version} is {other}; only a retired version can be destroyed (`latchkey keys retire {version}` first)"
                )))
                }
            }
            self.audit(tx, Event::new(&actor.name(), "keys.destroy", format!("v{version}"), Outcome::Ok, json!({})))?;
            Ok(())
        });
        self.audit_failure(actor, "keys.destroy", version, &res);
        res?;
        self.keys.destroy(version)?;
        Ok(())
    }

    fn audit_failure(&self, actor: &Actor, action: &'static str, version: u32, res: &Result<()>) {
        if let Err(e) = res {
            let ev = Event::new(&actor.name(), action, format!("v{version}"), Outcome::Failed, json!({"reason": e.to_string()}));
            if let Err(err) = self.store.write(|tx| self.audit(tx, ev)) {
                tracing::error!(error = %err, "could not audit a failed key operation");
            }
        }
    }
}
