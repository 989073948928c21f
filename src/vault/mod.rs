//! The vault: the one service layer that both the HTTP API and the CLI call.
//!
//! Owns the rules: what is sealed under which binding, which master key is active,
//! what is audited. Composes the store (ciphertext only) with crypto (no I/O) and the
//! key ring. Every change and its audit record commit in one transaction.

mod admin_tokens;
mod agents;
mod audit_sink;
mod config_cache;
mod connect_sessions;
mod connections;
mod credentials;
mod integrity;
mod issuers;
mod keys;
mod narrowed;
mod refresh_state;
mod release;
mod replicas;
mod signing;
mod vault_keys;

use std::path::Path;
use std::sync::Arc;

use crate::store::sql::Conn;

use crate::audit::{self, Event};
use crate::crypto::{Binding, CryptoError, Dek, MasterKey};
use crate::keys::{KeyError, KeyRing, PassphraseSource};
use crate::model::{MasterKeyState, ValidationError};
use crate::secret::Secret;
use crate::store::{self, rows, Location, Store, StoreError};
use crate::time::Clock;

pub use admin_tokens::{AdminPrincipal, AdminTokenView};
pub use agents::{AgentState, AgentView, NewAgent, TokenDecision};
pub use connect_sessions::{
    CreatedLink, FinishedSession, LinkView, NewLink, ProofPlan, ProofSession, SessionRefusal, StageStart, SESSION_TTL,
};
pub use connections::ConnectionView;
pub use credentials::{CredentialView, OpenedCredential};
pub use integrity::{CheckpointReport, INTEGRITY_CHECK_INTERVAL};
pub use keys::{
    KeyStatus, KeyVersionStatus, RotateProgress, RotateReport, RotationStatus, VerifyReport, DEFAULT_BATCH as DEFAULT_ROTATE_BATCH,
    ROTATE_GRACE,
};
pub use refresh_state::{AccountChange, RefreshMaterial, Replacement};
pub use release::{
    Decision, MinTtl, Narrowing, ProxyCall, ProxyTarget, ReleaseError, ReleaseInput, Released, ReleasedSecret, DEFAULT_MIN_TTL,
};
pub use replicas::{Readiness, HEARTBEAT_INTERVAL_MS, LIVE_WINDOW_MS};

/// Why a vault operation failed. Mapped to HTTP statuses in one place (`api::error`)
/// and to exit codes in one place (`cli::CliError`).
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid or revoked admin token")]
    Unauthorized,
    #[error("{0}")]
    Integrity(String),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Store(StoreError),
    #[error("{0}")]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// A failure with no better description (a crashed background task).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => VaultError::Conflict("the record changed concurrently; retry".into()),
            StoreError::Integrity(what) => VaultError::Integrity(format!("integrity violation: {what}")),
            other => VaultError::Store(other),
        }
    }
}

pub type Result<T> = std::result::Result<T, VaultError>;

/// Who is acting, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The CLI, run by a local user.
    Cli(String),
    /// An admin API call, by admin token id.
    Admin(String),
    /// latchkey itself (background work).
    System,
}

impl Actor {
    pub fn cli() -> Self {
        use std::os::unix::fs::MetadataExt;
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| std::fs::metadata("/proc/self").map(|m| format!("uid{}", m.uid())).unwrap_or_else(|_| "unknown".into()));
        Actor::Cli(user)
    }

    pub fn name(&self) -> String {
        match self {
            Actor::Cli(u) => format!("cli:{u}"),
            Actor::Admin(id) => format!("admin:{id}"),
            Actor::System => "system".into(),
        }
    }
}

pub struct Vault {
    store: Arc<Store>,
    keys: Arc<KeyRing>,
    clock: Clock,
    audit_sink: std::sync::OnceLock<audit_sink::AuditSink>,
    config: config_cache::ConfigCache,
    vault_keys: std::sync::Mutex<std::collections::HashMap<&'static str, vault_keys::VaultKey>>,
    /// Set when a full integrity check failed: releases are refused and `/readyz` fails.
    integrity_failed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("store", &self.store).field("keys", &self.keys).finish()
    }
}

/// A freshly initialised vault and its first admin token (shown once).
pub struct Initialised {
    pub vault: Vault,
    pub admin_token: Secret,
}

impl Vault {
    /// Whether `location` holds a database already.
    pub fn is_initialised(location: &Location) -> Result<bool> {
        Ok(Store::is_initialised(location)?)
    }

    /// [`Vault::init_at`] with the embedded database in `data_dir`.
    pub fn init(data_dir: &Path, keys_dir: &Path, passphrase: Option<Secret>, clock: Clock, actor: &Actor) -> Result<Initialised> {
        Self::init_at(&Location::Embedded(data_dir.to_owned()), keys_dir, passphrase, clock, actor)
    }

    /// Creates the keys directory with master key v1 and the database, and issues the
    /// first admin token. Refuses if either is initialised already.
    pub fn init_at(location: &Location, keys_dir: &Path, passphrase: Option<Secret>, clock: Clock, actor: &Actor) -> Result<Initialised> {
        if Store::is_initialised(location)? {
            return Err(StoreError::AlreadyInitialised(location.to_string()).into());
        }
        let keys = KeyRing::init(keys_dir, passphrase)?;
        let store = match Store::create(location) {
            Ok(s) => s,
            Err(e) => {
                // Leave nothing half-made: the key was never used.
                let _ = keys.destroy(1);
                return Err(e.into());
            }
        };
        let vault = Vault::assemble(store, keys, clock);
        let now = vault.clock.now();
        let protected = vault.keys.protected();
        let admin_token = vault.store.write(|tx| {
            rows::insert_master_key(tx, 1, MasterKeyState::Active, now)?;
            vault.seal_database(tx)?;
            vault.audit(
                tx,
                Event::new(
                    &actor.name(),
                    "vault.init",
                    "vault",
                    audit::Outcome::Ok,
                    serde_json::json!({"master_key_version": 1, "passphrase": protected}),
                ),
            )?;
            admin_tokens::create_in(&vault, tx, actor, Some("initial"))
        })?;
        Ok(Initialised { vault, admin_token: admin_token.1 })
    }

    /// Opens an initialised vault. Key files are checked (type, mode, header) now;
    /// the passphrase is asked for when a key is first needed.
    pub fn open(data_dir: &Path, keys_dir: &Path, passphrase: PassphraseSource, clock: Clock) -> Result<Self> {
        Self::open_at(&Location::Embedded(data_dir.to_owned()), keys_dir, passphrase, clock)
    }

    /// Opens an initialised vault at `location` (see [`Vault::open`]).
    pub fn open_at(location: &Location, keys_dir: &Path, passphrase: PassphraseSource, clock: Clock) -> Result<Self> {
        Self::open_with_keys(location, KeyRing::open(keys_dir, passphrase)?, clock)
    }

    /// Opens an initialised vault at `location` with master keys opened by the caller
    /// (for example from a mounted directory, [`KeyRing::open_mounted`]).
    pub fn open_with_keys(location: &Location, keys: KeyRing, clock: Clock) -> Result<Self> {
        let store = Store::open(location)?;
        // On a shared database every process (server or CLI) takes times from its clock:
        // leases, due times and replica liveness are compared across hosts.
        if let Some(ms) = store.server_time_ms()? {
            clock.set_reference_millis(ms);
        }
        let vault = Vault::assemble(store, keys, clock);
        vault.ensure_integrity()?;
        Ok(vault)
    }

    fn assemble(store: Store, keys: KeyRing, clock: Clock) -> Vault {
        let keys = Arc::new(keys);
        let ring = keys.clone();
        store.sealer().set_loader(Box::new(move |purpose, sealed| {
            vault_keys::open_sealed(&ring, purpose, sealed)
                .map_err(|e| StoreError::Io(format!("cannot open the vault key '{purpose}': {e}")))
        }));
        Vault {
            store: Arc::new(store),
            keys,
            clock,
            audit_sink: Default::default(),
            config: Default::default(),
            vault_keys: Default::default(),
            integrity_failed: Default::default(),
        }
    }

    /// Loads every master key that data may be wrapped under, so a server refuses to
    /// start (rather than fail later) on a missing file or a wrong passphrase.
    pub fn load_keys(&self) -> Result<u32> {
        let versions = self.store.read(rows::master_keys)?;
        let mut active = None;
        // A staged version is not needed yet: its file may still be on its way to this
        // replica (see `keys rotate`).
        for k in versions.iter().filter(|k| k.state.holds_data() && k.state != MasterKeyState::Staged) {
            self.keys.get(k.version)?;
            if k.state == MasterKeyState::Active {
                active = Some(k.version);
            }
        }
        active.ok_or_else(|| VaultError::Integrity("no active master key is recorded in the database".into()))
    }

    /// Loads master key `version` (a key derivation: call it on the blocking pool).
    pub fn load_key(&self, version: u32) -> Result<()> {
        self.keys.get(version)?;
        Ok(())
    }

    /// Master key files decoded by this process so far.
    pub fn key_loads(&self) -> u64 {
        self.keys.loads()
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The group-commit audit writer (started on first use).
    fn audit_sink(&self) -> &audit_sink::AuditSink {
        self.audit_sink.get_or_init(|| audit_sink::AuditSink::start(self.store.clone()))
    }

    /// Appends a record nobody waits for through the group-commit writer (it rides with the
    /// next batch someone waits for; a failure is logged).
    pub fn audit_lazily(&self, event: Event) {
        self.audit_sink().append_lazy(event, self.clock.now_millis());
    }

    /// Resolves once every record queued so far through the group-commit writer (lazy ones
    /// included) is committed (graceful shutdown, tests).
    pub fn flush_audit(&self) -> impl std::future::Future<Output = Result<()>> + 'static {
        let flushed = self.audit_sink().flush();
        async move { flushed.await.map(|_| ()).map_err(|_| VaultError::Internal("the audit writer failed")) }
    }

    fn audit(&self, c: &Conn<'_>, event: Event) -> std::result::Result<i64, StoreError> {
        store::audit::append(c, &event, self.clock.now_millis())
    }

    /// Starts a fresh data key for the record named by `binding`, wrapped under the
    /// active master key as read inside the caller's write transaction: a write that
    /// commits after a rotation's activation can never use the old version.
    fn new_dek(&self, tx: &Conn<'_>, binding: &Binding) -> Result<(Dek, i64)> {
        let version = rows::active_key_version(tx)?.ok_or_else(|| VaultError::Integrity("no active master key".into()))?;
        let mk = self.keys.get(version)?;
        let dek = Dek::generate()?;
        let wrapped = mk.wrap(&dek, binding)?;
        let id = rows::insert_dek(tx, version, binding.as_bytes(), &wrapped)?;
        Ok((dek, id))
    }

    /// Unwraps a stored data key after checking it belongs to `binding`.
    fn open_dek(&self, dek: &rows::DekRow, binding: &Binding) -> Result<Dek> {
        open_dek_with(&self.keys, dek, binding)
    }

    /// Audit trail: the last `n` records.
    pub fn audit_tail(&self, n: usize) -> Result<Vec<audit::Record>> {
        Ok(self.store.read(|c| store::audit::tail(c, n))?)
    }

    /// Audit records, oldest first, with the admin API's filters.
    pub fn audit_query(&self, q: &audit::Query) -> Result<Vec<audit::Record>> {
        Ok(self.store.read(|c| store::audit::query(c, q))?)
    }

    /// Walks the whole audit chain. `Ok((records, head hash))`, or the first break.
    pub fn audit_verify(&self) -> Result<std::result::Result<(u64, Vec<u8>), audit::Break>> {
        let key = self.store.audit_chain_key()?;
        let mut v = audit::Verifier::new(key);
        let mut after = 0;
        loop {
            let page = self.store.read(|c| store::audit::page(c, after, 5_000))?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for r in &page {
                if let Err(b) = v.check(r) {
                    return Ok(Err(b));
                }
            }
        }
        Ok(Ok((v.checked, v.head().to_vec())))
    }
}

/// Unwraps a stored data key with `keys` after checking it belongs to `binding`.
fn open_dek_with(keys: &KeyRing, dek: &rows::DekRow, binding: &Binding) -> Result<Dek> {
    if dek.binding != binding.as_bytes() {
        return Err(VaultError::Integrity(format!("data key {} is bound to another record", dek.id)));
    }
    let header_version = crate::crypto::wrapped_key_version(&dek.wrapped)?;
    if header_version != dek.key_version {
        return Err(VaultError::Integrity(format!(
            "data key {} names master key v{header_version} but is recorded under v{}",
            dek.id, dek.key_version
        )));
    }
    let mk: Arc<MasterKey> = keys.get(dek.key_version)?;
    mk.unwrap(&dek.wrapped, binding).map_err(|_| VaultError::Integrity(format!("data key {} failed to unwrap", dek.id)))
}

/// A random identifier: `prefix` + 16 hex characters (64 bits).
pub fn new_id(prefix: &str) -> Result<String> {
    let mut b = [0u8; 8];
    crate::crypto::random_bytes(&mut b)?;
    let mut id = String::with_capacity(prefix.len() + 16);
    id.push_str(prefix);
    id.push_str(&crate::crypto::hex(&b));
    Ok(id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_and_ids() {
        assert_eq!(crate::crypto::hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        let id = super::new_id("lease_").unwrap();
        assert_eq!(id.len(), 6 + 16);
        assert!(id.starts_with("lease_") && id[6..].bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(id, super::new_id("lease_").unwrap());
    }
}
