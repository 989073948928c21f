//! Admin tokens: `lka_<id>.<secret>`. Only SHA-256 of the secret part is stored; the
//! id finds the row, the hash is compared in constant time.

use crate::store::sql::Conn;
use base64ct::{Base64UrlUnpadded, Encoding};
use serde::Serialize;

use super::{new_id, Actor, Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::crypto::{ct_eq, random_bytes, sha256};
use crate::secret::Secret;
use crate::store::rows::{self, AdminTokenRow};
use crate::time::rfc3339;

const PREFIX: &str = "lka_";

/// Proof that a request presented a valid admin token. Admin-only vault operations
/// are reached through handlers that hold one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPrincipal {
    pub token_id: String,
}

impl AdminPrincipal {
    pub fn actor(&self) -> Actor {
        Actor::Admin(self.token_id.clone())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminTokenView {
    pub id: String,
    pub label: Option<String>,
    pub created_at: String,
    pub created_by: String,
    pub revoked_at: Option<String>,
}

impl From<AdminTokenRow> for AdminTokenView {
    fn from(r: AdminTokenRow) -> Self {
        AdminTokenView {
            id: r.id,
            label: r.label,
            created_at: rfc3339(r.created_at),
            created_by: r.created_by,
            revoked_at: r.revoked_at.map(rfc3339),
        }
    }
}

/// Creates a token inside `tx` (with its audit record); returns (id, token).
pub(super) fn create_in(vault: &Vault, tx: &Conn<'_>, actor: &Actor, label: Option<&str>) -> Result<(String, Secret)> {
    let id = new_id("")?;
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    random_bytes(raw.as_mut())?;
    let secret = zeroize::Zeroizing::new(Base64UrlUnpadded::encode_string(raw.as_ref()));
    let row = AdminTokenRow {
        id: id.clone(),
        secret_hash: sha256(secret.as_bytes()).to_vec(),
        label: label.map(str::to_owned),
        created_at: vault.clock.now(),
        created_by: actor.name(),
        revoked_at: None,
    };
    rows::insert_admin_token(tx, &row)?;
    vault.audit(tx, Event::new(&actor.name(), "admin_token.create", id.as_str(), Outcome::Ok, serde_json::json!({"label": label})))?;
    Ok((id.clone(), Secret::new(format!("{PREFIX}{id}.{}", secret.as_str()))))
}

impl Vault {
    pub fn create_admin_token(&self, actor: &Actor, label: Option<&str>) -> Result<(String, Secret)> {
        if let Some(l) = label {
            if l.is_empty() || l.len() > 100 || l.chars().any(char::is_control) {
                return Err(crate::model::ValidationError("label must be 1-100 characters without control characters".into()).into());
            }
        }
        self.store.write(|tx| create_in(self, tx, actor, label))
    }

    pub fn list_admin_tokens(&self) -> Result<Vec<AdminTokenView>> {
        Ok(self.store.read(rows::list_admin_tokens)?.into_iter().map(Into::into).collect())
    }

    pub fn revoke_admin_token(&self, actor: &Actor, id: &str) -> Result<()> {
        self.store.write(|tx| {
            if !rows::revoke_admin_token(tx, id, self.clock.now())? {
                return Err(VaultError::NotFound(format!("active admin token '{}'", id.chars().take(32).collect::<String>())));
            }
            self.audit(tx, Event::new(&actor.name(), "admin_token.revoke", id, Outcome::Ok, serde_json::json!({})))?;
            Ok::<_, VaultError>(())
        })
    }

    /// Checks a presented admin token. Unknown ids, malformed tokens, wrong secrets and
    /// revoked tokens all give the same `Unauthorized`.
    pub fn authenticate_admin(&self, token: &str) -> Result<AdminPrincipal> {
        let parsed = token.strip_prefix(PREFIX).and_then(|t| t.split_once('.'));
        let Some((id, secret)) = parsed else {
            return Err(VaultError::Unauthorized);
        };
        if id.len() != 16 || !id.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(VaultError::Unauthorized);
        }
        // The whole (small) table against its digest first: a revoked token whose old row
        // was put back verifies on its own, but not as part of the set.
        let row = self.store.snapshot(|c| {
            crate::store::integrity::verify_table(c, &crate::store::integrity::ADMIN_TOKENS)?;
            rows::get_admin_token(c, id)
        })?;
        let presented = sha256(secret.as_bytes());
        // Compare against something even when the id is unknown, so timing does not
        // reveal which ids exist.
        let stored = row.as_ref().map(|r| r.secret_hash.clone()).unwrap_or_else(|| vec![0u8; 32]);
        let matches = ct_eq(&presented, &stored);
        match row {
            Some(r) if matches && r.revoked_at.is_none() => Ok(AdminPrincipal { token_id: r.id }),
            _ => Err(VaultError::Unauthorized),
        }
    }
}
