//! Narrower access tokens (`downscope`): minted with the refresh grant for a subset of a
//! credential's scopes (RFC 6749 §6), sealed, one per credential and scope set. They never
//! change the credential's own token or recorded scopes; a refresh token the provider
//! rotated while minting one is committed as the credential's before the narrow token is
//! released.

use serde_json::json;

use super::{Actor, Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::crypto::Binding;
use crate::model::oauth::TokenSet;
use crate::model::{ConnectionId, ConnectionKind, CredentialSecret, Owner, Scope};
use crate::secret::Secret;
use crate::store::rows;

const FIELD: &str = "access_token";
/// How long a narrower token without `expires_in` is reused.
const UNDATED_NARROW_TTL: i64 = 3600;

fn binding(connection: &str, owner: &str, credential_id: &str, scopes: &str) -> Binding {
    Binding::new("narrowed_token", connection, owner, &format!("{credential_id}/{scopes}"), 1)
}

fn key(scopes: &[Scope]) -> String {
    let mut s: Vec<&str> = scopes.iter().map(Scope::as_str).collect();
    s.sort_unstable();
    s.dedup();
    s.join(" ")
}

/// A narrower token, decrypted.
#[derive(Debug)]
pub struct NarrowedToken {
    pub access_token: Secret,
    pub token_type: String,
    pub expires_at: Option<i64>,
}

impl Vault {
    /// The narrower token of a credential for exactly `scopes`, if one is stored.
    pub(super) fn open_narrowed(
        &self,
        connection: &ConnectionId,
        owner: &Owner,
        credential_id: &str,
        scopes: &[Scope],
    ) -> Result<Option<NarrowedToken>> {
        let k = key(scopes);
        let Some(row) = self.store.read(|c| rows::get_narrowed(c, credential_id, &k))? else { return Ok(None) };
        let b = binding(connection.as_str(), &owner.to_string(), credential_id, &k);
        let plain = self
            .open_dek(&row.dek, &b)?
            .open(&row.access_token, &b, FIELD)
            .map_err(|_| VaultError::Integrity(format!("a narrowed token of credential {credential_id} failed to decrypt")))?;
        let token = String::from_utf8(plain.to_vec()).map_err(|_| VaultError::Integrity("narrowed token is not UTF-8".into()))?;
        Ok(Some(NarrowedToken { access_token: Secret::new(token), token_type: row.token_type, expires_at: row.expires_at }))
    }

    /// Whether a usable narrower token for `scopes` is stored (valid for `min_ttl` more seconds).
    pub fn has_narrowed(&self, connection: &ConnectionId, owner: &Owner, scopes: &[Scope], min_ttl: i64) -> Result<bool> {
        let now = self.clock.now();
        let Some(cred) = self.store.read(|c| rows::get_credential(c, connection.as_str(), &owner.to_string()))? else { return Ok(false) };
        Ok(self
            .open_narrowed(connection, owner, &cred.meta.id, scopes)?
            .is_some_and(|t| t.expires_at.is_none_or(|e| e - now >= min_ttl.max(1))))
    }

    /// Stores what a narrowing refresh of the credential at `version` returned, in one
    /// transaction: a rotated refresh token becomes the credential's (its own access token,
    /// expiry and scopes unchanged), and the narrower token is kept when `confirmed` (the
    /// provider's answer shows it holds no more than `scopes`). Fails with a conflict if the
    /// credential changed meanwhile.
    pub fn store_narrowed(
        &self,
        connection: &ConnectionId,
        owner: &Owner,
        version: i64,
        tokens: TokenSet,
        scopes: &[Scope],
        confirmed: bool,
    ) -> Result<()> {
        let now = self.clock.now();
        let (owner_s, k) = (owner.to_string(), key(scopes));
        self.store.write(|tx| {
            let row = rows::get_credential(tx, connection.as_str(), &owner_s)?.ok_or_else(|| VaultError::NotFound("credential".into()))?;
            if row.meta.secret_version != version {
                return Err(VaultError::Conflict("the credential changed during the narrowing refresh".into()));
            }
            let credential_id = row.meta.id.clone();
            let rotated = tokens.refresh_token.is_some();
            if let Some(new_refresh) = tokens.refresh_token {
                let CredentialSecret::OAuth2 { access_token, expires_at, scopes: held, token_type, instance_url, .. } =
                    self.open_credential_row(row)?.secret
                else {
                    return Err(VaultError::Integrity("a narrowing refresh of an API key".into()));
                };
                let kept = CredentialSecret::OAuth2 {
                    access_token,
                    refresh_token: Some(new_refresh),
                    expires_at,
                    scopes: held,
                    token_type,
                    instance_url,
                };
                self.write_credential(tx, connection, owner, ConnectionKind::Oauth2, &kept, now, Some(version), None, None)?;
            }
            if confirmed {
                let b = binding(connection.as_str(), &owner_s, &credential_id, &k);
                let (dek, dek_id) = self.new_dek(tx, &b)?;
                let sealed = dek.seal(tokens.access_token.expose().as_bytes(), &b, FIELD)?;
                // A narrower token the provider gives no lifetime is reused for an hour at
                // most, then minted again, rather than kept indefinitely.
                let expires_at = Some(now + tokens.expires_in.unwrap_or(UNDATED_NARROW_TTL));
                rows::put_narrowed(tx, &credential_id, &k, dek_id, &sealed, &tokens.token_type, expires_at, now)?;
            }
            let detail = json!({"scopes": k, "confirmed": confirmed, "refresh_token_rotated": rotated});
            self.audit(tx, Event::new(&Actor::System.name(), "credential.narrow", format!("{connection}/{owner}"), Outcome::Ok, detail))?;
            Ok(())
        })
    }

    /// For `keys verify`: every narrowed token decrypts. Returns (count, failures).
    pub(super) fn verify_narrowed(&self) -> Result<(u64, Vec<String>)> {
        let all = self.store.read(rows::all_narrowed)?;
        let mut failures = Vec::new();
        for n in &all {
            let b = binding(&n.connection_id, &n.owner, &n.credential_id, &n.scopes);
            let ok = self.open_dek(&n.row.dek, &b).is_ok_and(|dek| dek.open(&n.row.access_token, &b, FIELD).is_ok());
            if !ok {
                failures.push(format!(
                    "narrowed token of credential {} ({}/{}, {}) failed to decrypt",
                    n.credential_id, n.connection_id, n.owner, n.scopes
                ));
            }
        }
        Ok((all.len() as u64, failures))
    }
}
