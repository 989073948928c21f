//! Master keys at rest and in memory.
//!
//! Owns the keys directory (see [`files`]) and the [`KeyRing`], which loads versions
//! on first use, so a server picks up a version created by `latchkey keys rotate`
//! without a restart. Key *state* (active, decrypt-only, …) lives in the database and
//! is managed by the vault; this module only knows files and bytes.

pub mod files;

use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use crate::crypto::keyfile::{self, KdfLimits, KdfParams, KeyFileError, Protection};
use crate::crypto::{ct_eq, CryptoError, MasterKey};
use crate::secret::Secret;
pub use files::KeyDir;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("keys directory {0} does not exist: run `latchkey init` (or `latchkey serve --dev` for development)")]
    NotInitialised(String),
    #[error("keys directory {0} already holds master keys; refusing to initialise over it")]
    AlreadyInitialised(String),
    #[error("{0}")]
    Insecure(String),
    #[error("master key version {version} is needed but its file {path} is missing: restore it from backup")]
    Missing { version: u32, path: String },
    #[error("{0}")]
    Io(String),
    #[error("master key file {path}: {source}{hint}")]
    File { path: String, source: KeyFileError, hint: &'static str },
    #[error("the master keys are passphrase-protected: set LATCHKEY_PASSPHRASE_FILE to a file holding the passphrase, or run from a terminal to be prompted")]
    PassphraseRequired,
    #[error("the key written for version {0} did not read back identically; nothing was activated")]
    ReadBack(u32),
    #[error("master key file {path} is not passphrase-protected, but this vault's keys are; refusing to adopt it (anyone who can read it would hold the key to new data): remove it and run `latchkey keys rotate`")]
    Unprotected { path: String },
    /// The key is needed on a thread that must not derive it (an async worker).
    #[error("master key version {0} is not loaded yet")]
    NotLoaded(u32),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

fn hint(e: &KeyFileError) -> &'static str {
    match e {
        KeyFileError::OpenFailed => " (check the passphrase in LATCHKEY_PASSPHRASE_FILE; if it is right, restore the key file from backup)",
        KeyFileError::KdfParamsOutOfRange { .. } | KeyFileError::NotAKeyFile | KeyFileError::UnknownKdf(_) => {
            " (restore the key file from backup; do not edit key files)"
        }
        KeyFileError::PassphraseRequired => " (set LATCHKEY_PASSPHRASE_FILE)",
        _ => "",
    }
}

/// Where the passphrase comes from, resolved only if a key file needs one.
#[derive(Debug, Clone)]
pub enum PassphraseSource {
    File(std::path::PathBuf),
    Prompt,
    None,
}

impl PassphraseSource {
    pub fn resolve(&self, confirm: bool) -> Result<Option<Secret>, KeyError> {
        match self {
            PassphraseSource::None => Ok(None),
            PassphraseSource::File(p) => {
                let raw = std::fs::read_to_string(p).map_err(|e| {
                    KeyError::Io(format!("cannot read the passphrase file {} (LATCHKEY_PASSPHRASE_FILE): {e}", p.display()))
                })?;
                let s = raw.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&raw);
                let s = Secret::new(s.to_owned());
                drop(zeroize::Zeroizing::new(raw));
                if s.len() < 12 {
                    return Err(KeyError::Io(format!("the passphrase in {} is shorter than 12 characters; use a longer one", p.display())));
                }
                Ok(Some(s))
            }
            PassphraseSource::Prompt => {
                let first = Secret::new(
                    rpassword::prompt_password("latchkey passphrase: ")
                        .map_err(|e| KeyError::Io(format!("cannot read passphrase: {e}")))?,
                );
                if confirm {
                    if first.len() < 12 {
                        return Err(KeyError::Io("the passphrase must be at least 12 characters".into()));
                    }
                    let again = Secret::new(
                        rpassword::prompt_password("again: ").map_err(|e| KeyError::Io(format!("cannot read passphrase: {e}")))?,
                    );
                    if !ct_eq(first.expose().as_bytes(), again.expose().as_bytes()) {
                        return Err(KeyError::Io("the passphrases do not match".into()));
                    }
                }
                Ok(Some(first))
            }
        }
    }
}

/// The loaded master keys of one keys directory.
pub struct KeyRing {
    dir: KeyDir,
    /// Whether key files are passphrase-protected (new versions follow suit).
    protected: bool,
    source: PassphraseSource,
    passphrase: OnceLock<Option<Secret>>,
    limits: KdfLimits,
    loaded: RwLock<HashMap<u32, Arc<MasterKey>>>,
    /// Held while a key file is decoded (argon2 at 64 MiB): concurrent callers wait and
    /// share the one derivation.
    loading: Mutex<()>,
    /// Key files decoded so far.
    loads: AtomicU64,
}

thread_local! {
    static NO_LOADING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with key loading forbidden on this thread: a version not loaded yet is
/// [`KeyError::NotLoaded`] instead of a key derivation that would stall an async worker.
pub fn without_loading<T>(f: impl FnOnce() -> T) -> T {
    let before = NO_LOADING.with(|n| n.replace(true));
    let out = f();
    NO_LOADING.with(|n| n.set(before));
    out
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("dir", &self.dir.path()).finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Opens the keys directory and checks every key file's type, mode and header.
    /// The passphrase is asked of `source` only when a protected key is first needed.
    pub fn open(path: &Path, source: PassphraseSource) -> Result<Self, KeyError> {
        let dir = KeyDir::open(path)?;
        let mut protection = Vec::new();
        for v in dir.versions()? {
            let bytes = dir.read(v)?;
            let header = keyfile::header(&bytes, &KdfLimits::PRODUCTION).map_err(|source| file_error(&dir, v, source))?;
            protection.push((v, matches!(header.protection, Protection::Passphrase(_))));
        }
        let protected = protection.iter().any(|(_, p)| *p);
        if let Some((v, _)) = protection.iter().find(|(_, p)| protected && !*p) {
            return Err(KeyError::Unprotected { path: dir.file_path(*v).display().to_string() });
        }
        Ok(KeyRing {
            dir,
            protected,
            source,
            passphrase: OnceLock::new(),
            limits: KdfLimits::PRODUCTION,
            loaded: RwLock::new(HashMap::new()),
            loading: Mutex::new(()),
            loads: AtomicU64::new(0),
        })
    }

    /// Opens platform-provided key files on a read-only mount (see [`KeyDir::open_mounted`]).
    /// Files there may be readable by other users of the host or pod, so every one must
    /// be passphrase-protected.
    pub fn open_mounted(path: &Path, source: PassphraseSource) -> Result<Self, KeyError> {
        let dir = KeyDir::open_mounted(path)?;
        for v in dir.versions()? {
            let bytes = dir.read(v)?;
            let header = keyfile::header(&bytes, &KdfLimits::PRODUCTION).map_err(|source| file_error(&dir, v, source))?;
            if header.protection == Protection::None {
                return Err(KeyError::Insecure(format!(
                    "{} is not passphrase-protected; mounted key files must be (they may be readable by others on the host)",
                    dir.file_path(v).display()
                )));
            }
        }
        Ok(KeyRing {
            dir,
            protected: true,
            source,
            passphrase: OnceLock::new(),
            limits: KdfLimits::PRODUCTION,
            loaded: RwLock::new(HashMap::new()),
            loading: Mutex::new(()),
            loads: AtomicU64::new(0),
        })
    }

    /// Creates a new keys directory with its first master key (version 1).
    pub fn init(path: &Path, passphrase: Option<Secret>) -> Result<Self, KeyError> {
        let dir = KeyDir::create(path)?;
        let ring = KeyRing {
            dir,
            protected: passphrase.is_some(),
            source: PassphraseSource::None,
            passphrase: OnceLock::from(passphrase),
            limits: KdfLimits::PRODUCTION,
            loaded: RwLock::new(HashMap::new()),
            loading: Mutex::new(()),
            loads: AtomicU64::new(0),
        };
        ring.create_version(1)?;
        Ok(ring)
    }

    fn passphrase(&self) -> Result<Option<&[u8]>, KeyError> {
        if !self.protected {
            return Ok(None);
        }
        if self.passphrase.get().is_none() {
            let p = self.source.resolve(false)?.ok_or(KeyError::PassphraseRequired)?;
            let _ = self.passphrase.set(Some(p));
        }
        Ok(self.passphrase.get().and_then(|p| p.as_ref()).map(|p| p.expose().as_bytes()))
    }

    pub fn dir(&self) -> &KeyDir {
        &self.dir
    }

    pub fn protected(&self) -> bool {
        self.protected
    }

    fn cached(&self, version: u32) -> Option<Arc<MasterKey>> {
        self.loaded.read().unwrap_or_else(|p| p.into_inner()).get(&version).cloned()
    }

    /// The key of `version`, loaded from its file on first use (once, however many ask at
    /// the same time). Inside [`without_loading`] only a loaded key is returned.
    pub fn get(&self, version: u32) -> Result<Arc<MasterKey>, KeyError> {
        if let Some(k) = self.cached(version) {
            return Ok(k);
        }
        if NO_LOADING.with(Cell::get) {
            return Err(KeyError::NotLoaded(version));
        }
        let _loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = self.cached(version) {
            return Ok(k);
        }
        let bytes = self.dir.read(version)?;
        let header = keyfile::header(&bytes, &self.limits).map_err(|source| file_error(&self.dir, version, source))?;
        if self.protected && header.protection == Protection::None {
            return Err(KeyError::Unprotected { path: self.dir.file_path(version).display().to_string() });
        }
        let key =
            keyfile::decode(&bytes, version, self.passphrase()?, &self.limits).map_err(|source| file_error(&self.dir, version, source))?;
        self.loads.fetch_add(1, Ordering::Relaxed);
        let key = Arc::new(key);
        self.loaded.write().unwrap_or_else(|p| p.into_inner()).insert(version, key.clone());
        Ok(key)
    }

    /// Key files decoded so far (each at most once).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Generates `version`, writes it atomically, reads it back and checks it, and only
    /// then makes it available.
    pub fn create_version(&self, version: u32) -> Result<Arc<MasterKey>, KeyError> {
        let protection = if self.protected { Protection::Passphrase(KdfParams::RECOMMENDED) } else { Protection::None };
        let key = MasterKey::generate(version)?;
        let pass = self.passphrase()?;
        let bytes = keyfile::encode(&key, protection, pass).map_err(|source| file_error(&self.dir, version, source))?;
        self.dir.write_new(version, &bytes)?;
        let back = self.dir.read(version)?;
        let reread = keyfile::decode(&back, version, pass, &self.limits).map_err(|source| file_error(&self.dir, version, source))?;
        if !ct_eq(reread.expose(), key.expose()) {
            return Err(KeyError::ReadBack(version));
        }
        let key = Arc::new(key);
        self.loaded.write().unwrap_or_else(|p| p.into_inner()).insert(version, key.clone());
        Ok(key)
    }

    /// Forgets a version (after it was destroyed) and removes its file.
    pub fn destroy(&self, version: u32) -> Result<(), KeyError> {
        self.loaded.write().unwrap_or_else(|p| p.into_inner()).remove(&version);
        self.dir.remove(version)
    }

    /// Whether the file of `version` is present with safe permissions.
    pub fn file_ok(&self, version: u32) -> Result<(), KeyError> {
        self.dir.check(version)
    }
}

fn file_error(dir: &KeyDir, version: u32, source: KeyFileError) -> KeyError {
    let hint = hint(&source);
    KeyError::File { path: dir.file_path(version).display().to_string(), source, hint }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protected_ring(dir: &Path) -> (KeyRing, std::path::PathBuf) {
        let pass_file = dir.join("pass");
        std::fs::write(&pass_file, "correct horse battery staple").unwrap();
        let keys = dir.join("keys");
        KeyRing::init(&keys, Some(Secret::new("correct horse battery staple".into()))).unwrap();
        (KeyRing::open(&keys, PassphraseSource::File(pass_file.clone())).unwrap(), pass_file)
    }

    #[test]
    fn a_key_is_derived_once_however_many_ask_and_never_where_loading_is_forbidden() {
        let tmp = tempfile::tempdir().unwrap();
        let (ring, _) = protected_ring(tmp.path());
        assert!(matches!(without_loading(|| ring.get(1)), Err(KeyError::NotLoaded(1))));
        assert_eq!(ring.loads(), 0, "nothing was derived on the forbidden thread");
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| ring.get(1).unwrap());
            }
        });
        assert_eq!(ring.loads(), 1, "eight callers, one derivation");
        assert!(without_loading(|| ring.get(1)).is_ok(), "a loaded key is there for everyone");
    }

    #[test]
    fn an_unprotected_key_file_is_not_adopted_into_a_protected_vault() {
        let tmp = tempfile::tempdir().unwrap();
        let (ring, pass_file) = protected_ring(tmp.path());
        // Someone who can write the keys directory (not read the passphrase) plants v2.
        let planted = MasterKey::generate(2).unwrap();
        let bytes = keyfile::encode(&planted, Protection::None, None).unwrap();
        ring.dir().write_new(2, &bytes).unwrap();
        // A running server refuses to load it...
        assert!(matches!(ring.get(2), Err(KeyError::Unprotected { .. })));
        // ...and so does the next start.
        let keys = tmp.path().join("keys");
        assert!(matches!(KeyRing::open(&keys, PassphraseSource::File(pass_file)), Err(KeyError::Unprotected { .. })));
        // An unprotected (development) vault is all unprotected and opens.
        let dev = tmp.path().join("dev");
        KeyRing::init(&dev, None).unwrap();
        let ring = KeyRing::open(&dev, PassphraseSource::None).unwrap();
        assert!(ring.get(1).is_ok());
    }
}
