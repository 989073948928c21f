//! Long-lived random keys the vault keeps for keyed hashes (and MACs): 256 random bits per
//! purpose, sealed under a data key like any secret. They are not derived from a master-key
//! version: keyed hashes of secrets cannot be recomputed when the master key rotates, and
//! `keys destroy` must not make anything unverifiable. Rotation re-wraps their data keys
//! like every other.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::{Result, Vault, VaultError};
use crate::crypto::{random_bytes, Binding, KEY_LEN};
use crate::keys::KeyRing;
use crate::store::rows;
use crate::store::sql::Conn;

/// The key of agent client-secret hashes.
pub(super) const AGENT_SECRETS: &str = "agent_secrets";
const FIELD: &str = "key";

/// A vault key in memory.
pub(super) type VaultKey = Arc<Zeroizing<[u8; KEY_LEN]>>;

fn binding(purpose: &str) -> Binding {
    Binding::new("vault_key", "", "", purpose, 1)
}

impl Vault {
    /// The key for `purpose`, created on first use (by whichever process gets there first).
    pub(super) fn vault_key(&self, purpose: &'static str) -> Result<VaultKey> {
        if let Some(k) = self.vault_keys.lock().unwrap_or_else(|p| p.into_inner()).get(purpose) {
            return Ok(k.clone());
        }
        let key = match self.store.read(|c| rows::get_vault_key(c, purpose))? {
            Some(sealed) => self.open_vault_key(purpose, &sealed)?,
            None => self.store.write(|tx| match rows::get_vault_key(tx, purpose)? {
                Some(sealed) => self.open_vault_key(purpose, &sealed),
                None => self.create_vault_key(tx, purpose).map(Arc::new),
            })?,
        };
        self.vault_keys.lock().unwrap_or_else(|p| p.into_inner()).insert(purpose, key.clone());
        Ok(key)
    }

    /// Creates the key for `purpose` in the caller's write transaction.
    pub(super) fn create_vault_key(&self, tx: &Conn<'_>, purpose: &str) -> Result<Zeroizing<[u8; KEY_LEN]>> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(key.as_mut())?;
        let b = binding(purpose);
        let (dek, dek_id) = self.new_dek(tx, &b)?;
        rows::insert_vault_key(tx, purpose, dek_id, &dek.seal(key.as_ref(), &b, FIELD)?, self.clock.now())?;
        Ok(key)
    }

    fn open_vault_key(&self, purpose: &str, sealed: &rows::SealedSecret) -> Result<VaultKey> {
        open_sealed(&self.keys, purpose, sealed).map(Arc::new)
    }

    /// For `keys verify`: every vault key decrypts. Returns (count, failures).
    pub(super) fn verify_vault_keys(&self) -> Result<(u64, Vec<String>)> {
        let purposes = self.store.read(rows::vault_key_purposes)?;
        let mut failures = Vec::new();
        for p in &purposes {
            let sealed = self.store.read(|c| rows::get_vault_key(c, p))?;
            if let Some(s) = sealed {
                if let Err(e) = self.open_vault_key(p, &s) {
                    failures.push(e.to_string());
                }
            }
        }
        Ok((purposes.len() as u64, failures))
    }
}

/// Opens the sealed vault key for `purpose` with the master keys in `keys`.
pub(super) fn open_sealed(keys: &KeyRing, purpose: &str, sealed: &rows::SealedSecret) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let b = binding(purpose);
    let plain = super::open_dek_with(keys, &sealed.dek, &b)?
        .open(&sealed.ciphertext, &b, FIELD)
        .map_err(|_| VaultError::Integrity(format!("vault key '{purpose}' failed to decrypt")))?;
    let key: [u8; KEY_LEN] =
        plain.as_slice().try_into().map_err(|_| VaultError::Integrity(format!("vault key '{purpose}' is malformed")))?;
    Ok(Zeroizing::new(key))
}
