//! Trusted issuers: for token exchange, and for owner proof on connect links (latchkey's
//! OIDC client there, whose secret is sealed like any other).

use serde_json::json;

use super::{Actor, Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::auth::subject::{IssuerConfig, NewIssuer, OwnerProofClient};
use crate::crypto::Binding;
use crate::secret::Secret;
use crate::store::identity::{self as rows, IssuerRow};
use crate::store::{self, StoreError};

const PROOF_SECRET: &str = "client_secret";

fn binding(issuer: &str) -> Binding {
    Binding::new("issuer_proof_client", "", "", issuer, 1)
}

fn config(r: IssuerRow) -> Result<IssuerConfig> {
    let jwks = r.jwks.as_deref().map(serde_json::from_str).transpose().map_err(|e| VaultError::Integrity(e.to_string()))?;
    let owner_proof = r.proof_client_id.map(|client_id| OwnerProofClient { client_id, client_secret_set: r.proof_secret.is_some() });
    Ok(IssuerConfig {
        issuer: r.issuer,
        subject_prefix: r.subject_prefix,
        display_name: r.display_name,
        jwks_uri: r.jwks_uri,
        jwks,
        audience: r.audience,
        tenant_claim: r.tenant_claim,
        roles_claim: r.roles_claim,
        owner_proof,
    })
}

impl Vault {
    /// Adds or replaces a trusted issuer. Its subject prefix must be unique.
    pub fn put_issuer(&self, actor: &Actor, new: NewIssuer) -> Result<IssuerConfig> {
        let cfg = new.config;
        let row = IssuerRow {
            issuer: cfg.issuer.clone(),
            subject_prefix: cfg.subject_prefix.clone(),
            display_name: cfg.display_name.clone(),
            jwks_uri: cfg.jwks_uri.clone(),
            jwks: cfg.jwks.as_ref().map(serde_json::to_string).transpose().map_err(|e| VaultError::Integrity(e.to_string()))?,
            audience: cfg.audience.clone(),
            tenant_claim: cfg.tenant_claim.clone(),
            roles_claim: cfg.roles_claim.clone(),
            proof_client_id: cfg.owner_proof.as_ref().map(|p| p.client_id.clone()),
            proof_secret: None,
            created_at: self.clock.now(),
        };
        self.store.write(|tx| {
            let sealed = match &new.proof_client_secret {
                Some(secret) => {
                    let b = binding(&cfg.issuer);
                    let (dek, dek_id) = self.new_dek(tx, &b)?;
                    Some((dek_id, dek.seal(secret.expose().as_bytes(), &b, PROOF_SECRET)?))
                }
                None => None,
            };
            let replaced = rows::put_issuer(tx, &row, sealed.as_ref().map(|(d, ct)| (*d, ct.as_slice()))).map_err(|e| match e {
                StoreError::Conflict => {
                    VaultError::Conflict(format!("another issuer already uses subject_prefix '{}'", cfg.subject_prefix))
                }
                other => other.into(),
            })?;
            if let Some(old) = replaced {
                store::rows::delete_dek(tx, old)?;
            }
            self.audit(
                tx,
                Event::new(
                    &actor.name(),
                    "issuer.put",
                    cfg.issuer.as_str(),
                    Outcome::Ok,
                    json!({"audience": cfg.audience, "jwks_uri": cfg.jwks_uri, "subject_prefix": cfg.subject_prefix,
                        "owner_proof": cfg.owner_proof.as_ref().map(|p| &p.client_id)}),
                ),
            )?;
            Ok::<_, VaultError>(())
        })?;
        Ok(cfg)
    }

    pub fn list_issuers(&self) -> Result<Vec<IssuerConfig>> {
        self.store.read(rows::list_issuers)?.into_iter().map(config).collect()
    }

    pub fn issuer(&self, issuer: &str) -> Result<Option<IssuerConfig>> {
        self.store.read(|c| rows::get_issuer(c, issuer))?.map(config).transpose()
    }

    /// The issuer whose owners carry `prefix`.
    pub fn issuer_by_prefix(&self, prefix: &str) -> Result<Option<IssuerConfig>> {
        self.store.read(|c| rows::issuer_by_prefix(c, prefix))?.map(config).transpose()
    }

    /// The owner-proof client secret of `issuer`, if one is stored.
    pub fn issuer_proof_secret(&self, issuer: &str) -> Result<Option<Secret>> {
        let row = self.store.read(|c| rows::get_issuer(c, issuer))?.ok_or_else(|| VaultError::NotFound("issuer".into()))?;
        let Some(sealed) = &row.proof_secret else { return Ok(None) };
        let b = binding(&row.issuer);
        let plain = self
            .open_dek(&sealed.dek, &b)?
            .open(&sealed.ciphertext, &b, PROOF_SECRET)
            .map_err(|_| VaultError::Integrity(format!("the owner-proof secret of issuer {} failed to decrypt", row.issuer)))?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| VaultError::Integrity("owner-proof secret is not UTF-8".into()))?;
        Ok(Some(Secret::new(text)))
    }

    /// For `keys verify`: every owner-proof secret decrypts.
    pub(super) fn verify_issuer_secrets(&self) -> Result<(u64, Vec<String>)> {
        let rows = self.store.read(rows::list_issuers)?;
        let mut n = 0;
        let mut failures = Vec::new();
        for r in rows.iter().filter(|r| r.proof_secret.is_some()) {
            n += 1;
            if let Err(e) = self.issuer_proof_secret(&r.issuer) {
                failures.push(format!("issuer {}: {e}", r.issuer));
            }
        }
        Ok((n, failures))
    }

    pub fn delete_issuer(&self, actor: &Actor, issuer: &str) -> Result<()> {
        self.store.write(|tx| {
            let Some(dek) = rows::delete_issuer(tx, issuer)? else {
                return Err(VaultError::NotFound("issuer".into()));
            };
            if let Some(d) = dek {
                store::rows::delete_dek(tx, d)?;
            }
            self.audit(tx, Event::new(&actor.name(), "issuer.delete", issuer, Outcome::Ok, json!({})))?;
            Ok(())
        })
    }
}
