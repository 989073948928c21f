//! Trusted issuers for token exchange.

use serde_json::json;

use super::{Actor, Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::auth::subject::IssuerConfig;
use crate::store::identity::{self as rows, IssuerRow};

fn config(r: IssuerRow) -> Result<IssuerConfig> {
    let jwks = r.jwks.as_deref().map(serde_json::from_str).transpose().map_err(|e| VaultError::Integrity(e.to_string()))?;
    Ok(IssuerConfig {
        issuer: r.issuer,
        jwks_uri: r.jwks_uri,
        jwks,
        audience: r.audience,
        tenant_claim: r.tenant_claim,
        roles_claim: r.roles_claim,
    })
}

impl Vault {
    /// Adds or replaces a trusted issuer.
    pub fn put_issuer(&self, actor: &Actor, cfg: IssuerConfig) -> Result<IssuerConfig> {
        let row = IssuerRow {
            issuer: cfg.issuer.clone(),
            jwks_uri: cfg.jwks_uri.clone(),
            jwks: cfg.jwks.as_ref().map(serde_json::to_string).transpose().map_err(|e| VaultError::Integrity(e.to_string()))?,
            audience: cfg.audience.clone(),
            tenant_claim: cfg.tenant_claim.clone(),
            roles_claim: cfg.roles_claim.clone(),
            created_at: self.clock.now(),
        };
        self.store.write(|tx| {
            rows::put_issuer(tx, &row)?;
            self.audit(
                tx,
                Event::new(
                    &actor.name(),
                    "issuer.put",
                    cfg.issuer.as_str(),
                    Outcome::Ok,
                    json!({"audience": cfg.audience, "jwks_uri": cfg.jwks_uri}),
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

    pub fn delete_issuer(&self, actor: &Actor, issuer: &str) -> Result<()> {
        self.store.write(|tx| {
            if !rows::delete_issuer(tx, issuer)? {
                return Err(VaultError::NotFound("issuer".into()));
            }
            self.audit(tx, Event::new(&actor.name(), "issuer.delete", issuer, Outcome::Ok, json!({})))?;
            Ok(())
        })
    }
}
