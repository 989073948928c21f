//! Connections: non-secret spec stored as JSON, client secret sealed apart.

use rusqlite::Connection;
use serde::Serialize;
use serde_json::{json, Value};

use super::{Actor, Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::crypto::Binding;
use crate::model::{take_client_secret, ConnectionId, ConnectionSpec, NewConnection, ValidationError};
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

fn parse_stored(row: &ConnectionRow) -> Result<ConnectionSpec> {
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

/// RFC 7396 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(serde_json::Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl Vault {
    fn seal_client_secret(&self, tx: &Connection, id: &str, version: i64, secret: &Secret) -> Result<(i64, Vec<u8>)> {
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
                    kind: new.spec.kind.as_str(),
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

    /// Applies a JSON merge patch (RFC 7396) to a connection. `id` and `kind` cannot
    /// change; `oauth2.client_secret` replaces the secret under a fresh data key.
    pub fn update_connection(&self, actor: &Actor, id: &ConnectionId, mut patch: Value) -> Result<ConnectionView> {
        if !patch.is_object() {
            return Err(ValidationError("the body must be a JSON object (JSON merge patch)".into()).into());
        }
        let new_secret = take_client_secret(&mut patch)?;
        let changed: Vec<String> = patch.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        let now = self.clock.now();
        self.store.write(|tx| {
            let row = rows::get_connection(tx, id.as_str())?.ok_or_else(|| VaultError::NotFound(format!("connection '{id}'")))?;
            let mut merged: Value = serde_json::from_str(&row.spec).map_err(|e| VaultError::Integrity(e.to_string()))?;
            merge_patch(&mut merged, &patch);
            let spec = ConnectionSpec::from_json(merged)?;
            let old = parse_stored(&row)?;
            if spec.id != old.id || spec.kind != old.kind {
                return Err(ValidationError("'id' and 'kind' of a connection cannot be changed".into()).into());
            }
            if new_secret.is_some() && spec.kind != crate::model::ConnectionKind::Oauth2 {
                return Err(ValidationError("client_secret is only valid for oauth2 connections".into()).into());
            }
            let spec_json = serde_json::to_string(&spec).map_err(|e| VaultError::Integrity(e.to_string()))?;
            match &new_secret {
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
                    json!({"fields": changed, "client_secret_replaced": new_secret.is_some()}),
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

#[cfg(test)]
mod tests {
    use super::merge_patch;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut t = json!({"a": 1, "o": {"x": 1, "y": 2}, "l": [1]});
        merge_patch(&mut t, &json!({"a": null, "o": {"y": 3, "z": 4}, "l": [2], "n": "v"}));
        assert_eq!(t, json!({"o": {"x": 1, "y": 3, "z": 4}, "l": [2], "n": "v"}));
    }
}
