//! Credentials: one per (connection, owner). Every write seals the secret fields under
//! a fresh data key bound to (connection, owner, credential id, version, field).

use serde::Serialize;
use serde_json::json;

use super::{new_id, Actor, Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::crypto::Binding;
use crate::model::oauth::refresh_due_at;
use crate::model::{ConnectionId, ConnectionKind, CredentialInput, CredentialSecret, CredentialStatus, HeldScopes, Owner};
use crate::secret::Secret;
use crate::store::rows::{self, CredentialMeta, CredentialRow, CredentialWrite};
use crate::store::sql::Conn;
use crate::time::rfc3339;

pub(super) const F_API_KEY: &str = "api_key";
pub(super) const F_ACCESS: &str = "access_token";
pub(super) const F_REFRESH: &str = "refresh_token";

/// Credential metadata as the API shows it (never a secret).
#[derive(Debug, Clone, Serialize)]
pub struct CredentialView {
    pub id: String,
    pub connection_id: String,
    pub owner: String,
    pub kind: ConnectionKind,
    pub status: CredentialStatus,
    pub version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    pub scopes: Vec<String>,
    /// `false` when nobody said which scopes the credential holds (see `HeldScopes`).
    pub scopes_known: bool,
    pub expires_at: Option<String>,
    pub has_refresh_token: bool,
    pub master_key_version: u32,
    pub created_at: String,
    pub updated_at: String,
    pub last_refresh_at: Option<String>,
    pub last_error: Option<String>,
    pub refresh_failures: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_url: Option<String>,
    /// The provider account the tokens belong to, from a verified ID token (`null`: unknown).
    pub account: Option<AccountView>,
}

/// A provider account's identity (not a secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountView {
    pub iss: String,
    pub sub: String,
}

impl From<CredentialMeta> for CredentialView {
    fn from(m: CredentialMeta) -> Self {
        CredentialView {
            id: m.id,
            connection_id: m.connection_id,
            owner: m.owner,
            kind: m.kind,
            status: m.status,
            version: m.secret_version,
            token_type: m.token_type,
            scopes: m.scopes.known().unwrap_or(&[]).iter().map(|s| s.as_str().to_owned()).collect(),
            scopes_known: m.scopes.known().is_some(),
            expires_at: m.expires_at.map(rfc3339),
            has_refresh_token: m.has_refresh_token,
            master_key_version: m.key_version,
            created_at: rfc3339(m.created_at),
            updated_at: rfc3339(m.updated_at),
            last_refresh_at: m.last_refresh_at.map(rfc3339),
            last_error: m.last_error,
            refresh_failures: m.refresh_failures,
            instance_url: m.instance_url,
            account: m.account.map(|(iss, sub)| AccountView { iss, sub }),
        }
    }
}

/// A decrypted credential, for release to an authorised caller.
#[derive(Debug)]
pub struct OpenedCredential {
    pub meta: CredentialMeta,
    pub secret: CredentialSecret,
}

fn binding(connection: &str, owner: &str, id: &str, version: i64) -> Binding {
    Binding::new("credential", connection, owner, id, version as u64)
}

fn connection_kind(tx: &Conn<'_>, connection: &ConnectionId) -> Result<ConnectionKind> {
    let conn = rows::get_connection(tx, connection.as_str())?.ok_or_else(|| VaultError::NotFound(format!("connection '{connection}'")))?;
    Ok(conn.kind)
}

const NO_SCOPES: &HeldScopes = &HeldScopes::Unknown;

fn held_scopes(secret: &CredentialSecret) -> &HeldScopes {
    match secret {
        CredentialSecret::ApiKey(_) => NO_SCOPES,
        CredentialSecret::OAuth2 { scopes, .. } => scopes,
    }
}

fn target(connection: &ConnectionId, owner: &Owner) -> String {
    format!("{connection}/{owner}")
}

impl Vault {
    /// Stores (or replaces) the credential of `owner` for `connection`.
    pub fn put_credential(
        &self,
        actor: &Actor,
        connection: &ConnectionId,
        owner: &Owner,
        input: CredentialInput,
    ) -> Result<CredentialView> {
        let now = self.clock.now();
        self.store.write(|tx| {
            let kind = connection_kind(tx, connection)?;
            let secret = input.into_secret(kind, now)?;
            // Tokens from elsewhere: how long the provider issues them for is not known.
            let (id, version, replaced) = self.write_credential(tx, connection, owner, kind, &secret, now, None, None, Some(None))?;
            let detail =
                json!({"credential_id": id, "version": version, "kind": kind, "replaced": replaced, "scopes": held_scopes(&secret).joined()});
            self.audit(tx, Event::new(&actor.name(), "credential.put", target(connection, owner), Outcome::Ok, detail))?;
            let stored = rows::get_credential(tx, connection.as_str(), &owner.to_string())?
                .ok_or_else(|| VaultError::NotFound("credential".into()))?;
            Ok(CredentialView::from(stored.meta))
        })
    }

    /// Stores many credentials of one connection in a single transaction with one
    /// audit record (bulk import, seeding). Each still gets its own data key.
    pub fn import_credentials(&self, actor: &Actor, connection: &ConnectionId, items: Vec<(Owner, CredentialInput)>) -> Result<u64> {
        let now = self.clock.now();
        self.store.write(|tx| {
            let kind = connection_kind(tx, connection)?;
            let mut n = 0u64;
            for (owner, input) in items {
                let secret = input
                    .into_secret(kind, now)
                    .map_err(|e| VaultError::Invalid(crate::model::ValidationError(format!("{owner}: {}", e.0))))?;
                self.write_credential(tx, connection, &owner, kind, &secret, now, None, None, Some(None))?;
                n += 1;
            }
            self.audit(tx, Event::new(&actor.name(), "credential.import", connection.as_str(), Outcome::Ok, json!({"count": n})))?;
            Ok(n)
        })
    }

    /// Seals `secret` under a fresh data key and writes it; returns (id, version, replaced).
    /// `refresh_of`: the version a refresh started from — the write fails with a conflict
    /// if the credential changed meanwhile, and it counts as a refresh (which keeps the
    /// provider account and any narrowed tokens). Anything else is new tokens, possibly of
    /// another account: `account` is what is known of it, and narrowed tokens are dropped.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_credential(
        &self,
        tx: &Conn<'_>,
        connection: &ConnectionId,
        owner: &Owner,
        kind: ConnectionKind,
        secret: &CredentialSecret,
        now: i64,
        refresh_of: Option<i64>,
        account: Option<(&str, &str)>,
        issued_lifetime: Option<Option<i64>>,
    ) -> Result<(String, i64, bool)> {
        let (conn_s, owner_s) = (connection.as_str(), owner.to_string());
        let existing = rows::get_credential(tx, conn_s, &owner_s)?;
        if let Some(v) = refresh_of {
            if existing.as_ref().map(|e| e.meta.secret_version) != Some(v) {
                return Err(VaultError::Conflict("the credential changed during the refresh".into()));
            }
        }
        let (id, version, previous) = match &existing {
            Some(e) => (e.meta.id.clone(), e.meta.secret_version + 1, Some((e.meta.secret_version, e.dek.id))),
            None => (new_id("cred_")?, 1, None),
        };
        let b = binding(conn_s, &owner_s, &id, version);
        let (dek, dek_id) = self.new_dek(tx, &b)?;
        let instance_url = match secret {
            CredentialSecret::OAuth2 { instance_url, .. } => instance_url.as_deref(),
            CredentialSecret::ApiKey(_) => None,
        };
        let (primary, refresh, token_type, expires_at) = match secret {
            CredentialSecret::ApiKey(k) => (dek.seal(k.expose().as_bytes(), &b, F_API_KEY)?, None, None, None),
            CredentialSecret::OAuth2 { access_token, refresh_token, expires_at, token_type, .. } => (
                dek.seal(access_token.expose().as_bytes(), &b, F_ACCESS)?,
                refresh_token.as_ref().map(|r| dek.seal(r.expose().as_bytes(), &b, F_REFRESH)).transpose()?,
                Some(token_type.as_str()),
                *expires_at,
            ),
        };
        let w = CredentialWrite {
            id: &id,
            connection_id: conn_s,
            owner: &owner_s,
            kind,
            secret_version: version,
            dek_id,
            primary: &primary,
            refresh: refresh.as_deref(),
            token_type,
            scopes: held_scopes(secret),
            expires_at,
            refresh_due_at: refresh.as_ref().and(expires_at).map(|e| refresh_due_at(now, e)),
            refreshed: refresh_of.is_some(),
            instance_url,
            account: if refresh_of.is_some() { None } else { Some(account) },
            issued_lifetime,
            now,
        };
        if refresh_of.is_none() && previous.is_some() {
            rows::delete_narrowed(tx, &id)?;
        }
        rows::put_credential(tx, &w, previous)?;
        Ok((id, version, previous.is_some()))
    }

    /// For deployments from before subject prefixes: moves every credential whose owner
    /// names no issuer (`user:alice`) to `prefix`'s namespace (`user:<prefix>:alice`), where
    /// token exchange now looks for it. Each is re-sealed, since the owner is bound into its
    /// ciphertexts. Returns the moves (made, or with `dry_run` only planned).
    pub fn namespace_owners(&self, actor: &Actor, prefix: &str, dry_run: bool) -> Result<Vec<(String, String)>> {
        if !crate::auth::subject::valid_subject_prefix(prefix) {
            return Err(crate::model::ValidationError("the prefix must be a subject prefix: 1-32 of a-z, 0-9 and '-'".into()).into());
        }
        let mut moves = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.store.read(|c| rows::credentials_page(c, &after, 1000))?;
            let Some(last) = page.last() else { break };
            after = last.meta.id.clone();
            for row in page {
                let owner = Owner::parse(&row.meta.owner)?;
                if owner.id().contains(':') {
                    continue;
                }
                let moved = Owner::new(owner.kind(), &format!("{prefix}:{}", owner.id()))?;
                let connection = crate::model::ConnectionId::parse(&row.meta.connection_id)?;
                if !dry_run {
                    self.move_credential(actor, &connection, row, &moved)?;
                }
                moves.push((format!("{connection}/{owner}"), format!("{connection}/{moved}")));
            }
        }
        Ok(moves)
    }

    fn move_credential(&self, actor: &Actor, connection: &ConnectionId, row: CredentialRow, to: &Owner) -> Result<()> {
        let now = self.clock.now();
        let (id, version, from) = (row.meta.id.clone(), row.meta.secret_version, row.meta.owner.clone());
        let opened = self.open_credential_row(row)?;
        let to_s = to.to_string();
        let b = binding(connection.as_str(), &to_s, &id, version + 1);
        self.store.write(|tx| {
            let (dek, dek_id) = self.new_dek(tx, &b)?;
            let (primary, refresh) = match &opened.secret {
                CredentialSecret::ApiKey(k) => (dek.seal(k.expose().as_bytes(), &b, F_API_KEY)?, None),
                CredentialSecret::OAuth2 { access_token, refresh_token, .. } => (
                    dek.seal(access_token.expose().as_bytes(), &b, F_ACCESS)?,
                    refresh_token.as_ref().map(|r| dek.seal(r.expose().as_bytes(), &b, F_REFRESH)).transpose()?,
                ),
            };
            rows::delete_narrowed(tx, &id)?;
            rows::move_credential(tx, &id, version, &to_s, version + 1, dek_id, &primary, refresh.as_deref(), now).map_err(
                |e| match e {
                    crate::store::StoreError::Conflict => {
                        VaultError::Conflict(format!("{connection}/{to_s} already has a credential, or {connection}/{from} changed"))
                    }
                    other => other.into(),
                },
            )?;
            let detail = json!({"credential_id": id, "from": from, "to": to_s});
            self.audit(tx, Event::new(&actor.name(), "credential.namespace", format!("{connection}/{to_s}"), Outcome::Ok, detail))?;
            Ok(())
        })
    }

    /// Credential metadata of a connection, by owner, `limit` at a time after `after`.
    pub fn list_credentials(&self, connection: &ConnectionId, after: Option<&Owner>, limit: usize) -> Result<Vec<CredentialView>> {
        let after = after.map(|o| o.to_string()).unwrap_or_default();
        self.store.read(|c| {
            if rows::get_connection(c, connection.as_str())?.is_none() {
                return Err(VaultError::NotFound(format!("connection '{connection}'")));
            }
            Ok(rows::list_credentials(c, connection.as_str(), &after, limit)?.into_iter().map(CredentialView::from).collect())
        })
    }

    pub fn get_credential(&self, connection: &ConnectionId, owner: &Owner) -> Result<CredentialView> {
        let row = self.store.read(|c| rows::get_credential(c, connection.as_str(), &owner.to_string()))?;
        Ok(row.ok_or_else(|| VaultError::NotFound(format!("credential of {owner} for connection '{connection}'")))?.meta.into())
    }

    /// Destroys a credential (ciphertext and data key). `revocation` says what happened
    /// at the provider (recorded in the audit event).
    pub fn delete_credential(&self, actor: &Actor, connection: &ConnectionId, owner: &Owner, revocation: Option<&str>) -> Result<()> {
        self.store.write(|tx| {
            if !rows::delete_credential(tx, connection.as_str(), &owner.to_string())? {
                return Err(VaultError::NotFound(format!("credential of {owner} for connection '{connection}'")));
            }
            self.audit(
                tx,
                Event::new(&actor.name(), "credential.delete", target(connection, owner), Outcome::Ok, json!({"revocation": revocation})),
            )?;
            Ok(())
        })
    }

    /// Decrypts a credential. `None` if there is none for that owner.
    pub fn open_credential(&self, connection: &ConnectionId, owner: &Owner) -> Result<Option<OpenedCredential>> {
        let row = self.store.read(|c| rows::get_credential(c, connection.as_str(), &owner.to_string()))?;
        row.map(|r| self.open_credential_row(r)).transpose()
    }

    pub(super) fn open_credential_row(&self, row: CredentialRow) -> Result<OpenedCredential> {
        let m = &row.meta;
        let b = binding(&m.connection_id, &m.owner, &m.id, m.secret_version);
        let dek = self.open_dek(&row.dek, &b)?;
        let fail = |field: &str| {
            VaultError::Integrity(format!("credential {} ({}/{}): {field} failed to decrypt", m.id, m.connection_id, m.owner))
        };
        let text =
            |bytes: zeroize::Zeroizing<Vec<u8>>, field: &str| String::from_utf8(bytes.to_vec()).map(Secret::new).map_err(|_| fail(field));
        let secret = if m.kind == ConnectionKind::ApiKey {
            CredentialSecret::ApiKey(text(dek.open(&row.primary, &b, F_API_KEY).map_err(|_| fail(F_API_KEY))?, F_API_KEY)?)
        } else {
            let access_token = text(dek.open(&row.primary, &b, F_ACCESS).map_err(|_| fail(F_ACCESS))?, F_ACCESS)?;
            let refresh_token = match &row.refresh {
                Some(r) => Some(text(dek.open(r, &b, F_REFRESH).map_err(|_| fail(F_REFRESH))?, F_REFRESH)?),
                None => None,
            };
            CredentialSecret::OAuth2 {
                access_token,
                refresh_token,
                expires_at: m.expires_at,
                scopes: m.scopes.clone(),
                token_type: m.token_type.clone().unwrap_or_else(|| "Bearer".into()),
                instance_url: m.instance_url.clone(),
            }
        };
        Ok(OpenedCredential { meta: row.meta, secret })
    }
}
