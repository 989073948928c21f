//! latchkey's own token-signing keys: Ed25519 seeds sealed like any other secret.

use serde_json::json;

use super::{new_id, Actor, Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::auth::tokens::KeyPair;
use crate::crypto::{random_bytes, Binding};
use crate::store::identity::{self as rows, SigningKeyRow};

const FIELD: &str = "private_key";

fn binding(kid: &str) -> Binding {
    Binding::new("signing_key", "", "", kid, 1)
}

impl Vault {
    /// The signing keys (active first), creating the first one if there is none.
    pub fn signing_keys(&self) -> Result<Vec<KeyPair>> {
        let rows = self.store.read(rows::signing_keys)?;
        if !rows.is_empty() {
            return rows.iter().map(|r| self.open_signing_key(r)).collect();
        }
        let kid = new_id("lk-")?;
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        random_bytes(seed.as_mut())?;
        let pair = KeyPair::from_seed(kid.clone(), &seed);
        let b = binding(&kid);
        self.store.write(|tx| {
            // Another process may have created one meanwhile.
            if !rows::signing_keys(tx)?.is_empty() {
                return Ok(());
            }
            let (dek, dek_id) = self.new_dek(tx, &b)?;
            let sealed = dek.seal(seed.as_ref(), &b, FIELD)?;
            rows::insert_signing_key(tx, &kid, &pair.public_key(), dek_id, &sealed, self.clock.now())?;
            self.audit(tx, Event::new(&Actor::System.name(), "signing_key.create", kid.as_str(), Outcome::Ok, json!({"alg": "EdDSA"})))?;
            Ok::<_, VaultError>(())
        })?;
        let rows = self.store.read(rows::signing_keys)?;
        rows.iter().map(|r| self.open_signing_key(r)).collect()
    }

    pub(super) fn open_signing_key(&self, r: &SigningKeyRow) -> Result<KeyPair> {
        let b = binding(&r.kid);
        let dek = self.open_dek(&r.dek, &b)?;
        let seed =
            dek.open(&r.private_key, &b, FIELD).map_err(|_| VaultError::Integrity(format!("signing key {} failed to decrypt", r.kid)))?;
        let seed: [u8; 32] =
            seed.as_slice().try_into().map_err(|_| VaultError::Integrity(format!("signing key {} is malformed", r.kid)))?;
        let pair = KeyPair::from_seed(r.kid.clone(), &seed);
        if pair.public_key().as_slice() != r.public_key.as_slice() {
            return Err(VaultError::Integrity(format!("signing key {} does not match its public key", r.kid)));
        }
        Ok(pair)
    }

    /// For `keys verify`: every signing key decrypts and matches its public key.
    pub(super) fn verify_signing_keys(&self) -> Result<(u64, Vec<String>)> {
        let rows = self.store.read(rows::signing_keys)?;
        let failures = rows.iter().filter_map(|r| self.open_signing_key(r).err().map(|e| format!("signing key {}: {e}", r.kid))).collect();
        Ok((rows.len() as u64, failures))
    }
}
