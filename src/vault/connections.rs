//! Connections: non-secret spec stored as JSON, client secret sealed apart.

use crate::store::sql::Conn;
use serde::Serialize;
use serde_json::json;

use super::{Actor, Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::crypto::Binding;
use crate::model::{ConnectionId, ConnectionPatch, ConnectionSpec, NewConnection};
use crate::secret::Secret;
use crate::store::rows::{self, ConnectionRow};
use crate::time::rfc3339;

const CLIENT_SECRET: &str = "client_secret";

/// A connection as the API shows it: never the client secret, only whether one is set.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionView {
    #[serde(flatten)]
    pub spec: ConnectionSpec,
    pub client_secret_set: bool,
    pub created_at: String,
    pub updated_at: String,
}

fn binding(id: &str, version: i64) -> Binding {
    Binding::new("connection", id, "", id, version as u64)
}

pub(super) fn parse_stored(row: &ConnectionRow) -> Result<ConnectionSpec> {
    serde_json::from_str(&row.spec).map_err(|e| VaultError::Integrity(format!("connection '{}' has an unreadable spec: {e}", row.id)))
}

fn view(row: &ConnectionRow) -> Result<ConnectionView> {
    Ok(ConnectionView {
        spec: parse_stored(row)?,
        client_secret_set: row.secret.is_some(),
        created_at: rfc3339(row.created_at),
        updated_at: rfc3339(row.updated_at),
    })
}

impl Vault {
    fn seal_client_secret(&self, tx: &Conn<'_>, id: &str, version: i64, secret: &Secret) -> Result<(i64, Vec<u8>)> {
        let b = binding(id, version);
        let (dek, dek_id) = self.new_dek(tx, &b)?;
        Ok((dek_id, dek.seal(secret.expose().as_bytes(), &b, CLIENT_SECRET)?))
    }

    pub fn create_connection(&self, actor: &Actor, new: NewConnection) -> Result<ConnectionView> {
        let id = new.spec.id.as_str().to_owned();
        let spec_json = serde_json::to_string(&new.spec).map_err(|e| VaultError::Integrity(e.to_string()))?;
        let now = self.clock.now();
        self.store.write(|tx| {
            if rows::get_connection(tx, &id)?.is_some() {
                return Err(VaultError::Conflict(format!("connection '{id}' already exists")));
            }
            let (version, sealed) = match &new.client_secret {
                Some(s) => (1, Some(self.seal_client_secret(tx, &id, 1, s)?)),
                None => (0, None),
            };
            rows::insert_connection(
                tx,
                &rows::NewConnectionRow {
                    id: &id,
                    kind: new.spec.kind,
                    spec: &spec_json,
                    secret_version: version,
                    secret: sealed.as_ref().map(|(d, ct)| (*d, ct.as_slice())),
                    now,
                },
            )?;
            self.audit(
                tx,
                Event::new(
                    &actor.name(),
                    "connection.create",
                    id.as_str(),
                    Outcome::Ok,
                    json!({"kind": new.spec.kind, "client_secret_set": sealed.is_some()}),
                ),
            )?;
            let stored = rows::get_connection(tx, &id)?.ok_or_else(|| VaultError::NotFound(format!("connection '{id}'")))?;
            view(&stored)
        })
    }

    pub fn get_connection(&self, id: &ConnectionId) -> Result<ConnectionView> {
        let row = self.store.read(|c| rows::get_connection(c, id.as_str()))?;
        view(&row.ok_or_else(|| VaultError::NotFound(format!("connection '{id}'")))?)
    }

    pub fn connection_spec(&self, id: &ConnectionId) -> Result<ConnectionSpec> {
        Ok(self.get_connection(id)?.spec)
    }

    pub fn list_connections(&self) -> Result<Vec<ConnectionView>> {
        self.store.read(rows::list_connections)?.iter().map(view).collect()
    }

    /// Applies a merge patch to a connection. `id` and `kind` cannot change (checked when
    /// the patch was parsed); a client secret in the patch replaces the stored one under a
    /// fresh data key.
    pub fn update_connection(&self, actor: &Actor, id: &ConnectionId, patch: ConnectionPatch) -> Result<ConnectionView> {
        let now = self.clock.now();
        self.store.write(|tx| {
            let row = rows::get_connection(tx, id.as_str())?.ok_or_else(|| VaultError::NotFound(format!("connection '{id}'")))?;
            let spec = patch.apply(&parse_stored(&row)?)?;
            let spec_json = serde_json::to_string(&spec).map_err(|e| VaultError::Integrity(e.to_string()))?;
            match &patch.client_secret {
                Some(s) => {
                    let (dek_id, ct) = self.seal_client_secret(tx, id.as_str(), row.secret_version + 1, s)?;
                    rows::update_connection(tx, id.as_str(), &spec_json, row.secret_version, Some((dek_id, &ct)), now)?;
                    if let Some(old) = &row.secret {
                        rows::delete_dek(tx, old.dek.id)?;
                    }
                }
                None => rows::update_connection(tx, id.as_str(), &spec_json, row.secret_version, None, now)?,
            }
            self.audit(
                tx,
                Event::new(
                    &actor.name(),
                    "connection.update",
                    id.as_str(),
                    Outcome::Ok,
                    json!({"fields": patch.fields(), "client_secret_replaced": patch.client_secret.is_some()}),
                ),
            )?;
            let stored = rows::get_connection(tx, id.as_str())?.ok_or_else(|| VaultError::NotFound(format!("connection '{id}'")))?;
            view(&stored)
        })
    }

    /// Deletes a connection. With credentials present it refuses unless `cascade`,
    /// because deleting them loses users' connections.
    pub fn delete_connection(&self, actor: &Actor, id: &ConnectionId, cascade: bool) -> Result<u64> {
        self.store.write(|tx| {
            let row = rows::get_connection(tx, id.as_str())?.ok_or_else(|| VaultError::NotFound(format!("connection '{id}'")))?;
            let n = rows::count_credentials(tx, id.as_str())?;
            if n > 0 && !cascade {
                return Err(VaultError::Conflict(format!(
                    "connection '{id}' still has {n} credential(s); delete them first, or delete with cascade (API: ?cascade=true, CLI: --cascade)"
                )));
            }
            let removed = rows::delete_credentials_of(tx, id.as_str())?;
            crate::store::sessions::delete_sessions_of(tx, id.as_str())?;
            rows::delete_connection(tx, id.as_str())?;
            if let Some(s) = &row.secret {
                rows::delete_dek(tx, s.dek.id)?;
            }
            self.audit(tx, Event::new(&actor.name(), "connection.delete", id.as_str(), Outcome::Ok, json!({"credentials_deleted": removed})))?;
            Ok(removed)
        })
    }

    /// The connection's client secret (for the OAuth client), if set.
    pub fn client_secret(&self, id: &ConnectionId) -> Result<Option<Secret>> {
        let row =
            self.store.read(|c| rows::get_connection(c, id.as_str()))?.ok_or_else(|| VaultError::NotFound(format!("connection '{id}'")))?;
        self.open_client_secret(&row)
    }

    pub(super) fn open_client_secret(&self, row: &ConnectionRow) -> Result<Option<Secret>> {
        let Some(sealed) = &row.secret else {
            return Ok(None);
        };
        let b = binding(&row.id, row.secret_version);
        let dek = self.open_dek(&sealed.dek, &b)?;
        let plain = dek
            .open(&sealed.ciphertext, &b, CLIENT_SECRET)
            .map_err(|_| VaultError::Integrity(format!("client secret of connection '{}' failed to decrypt", row.id)))?;
        let s = String::from_utf8(plain.to_vec()).map_err(|_| VaultError::Integrity("client secret is not UTF-8".into()))?;
        Ok(Some(Secret::new(s)))
    }
}
