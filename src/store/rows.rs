//! Row types and statements for master keys, data keys, connections, credentials and
//! admin tokens. Secret columns are opaque byte strings here.

use std::collections::BTreeMap;

use super::integrity::{self, Checked, ADMIN_TOKENS, CONNECTIONS, CREDENTIALS};
use super::sql::{params, parsed, Conn, Row};

use super::StoreError;
use crate::model::{ConnectionKind, CredentialStatus, HeldScopes, MasterKeyState, Scope};

type Result<T> = std::result::Result<T, StoreError>;

// ---------------------------------------------------------------- master keys

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterKeyRow {
    pub version: u32,
    pub state: MasterKeyState,
    pub created_at: i64,
    pub activated_at: Option<i64>,
    pub retired_at: Option<i64>,
    pub destroyed_at: Option<i64>,
    pub wraps: u64,
}

pub fn master_keys(c: &Conn<'_>) -> Result<Vec<MasterKeyRow>> {
    let rows = c.query_all(
        "SELECT version, state, created_at, activated_at, retired_at, destroyed_at, wraps FROM master_keys ORDER BY version",
        params![],
        |r| {
            Ok(MasterKeyRow {
                version: r.get(0)?,
                state: parsed(r, 1)?,
                created_at: r.get(2)?,
                activated_at: r.get(3)?,
                retired_at: r.get(4)?,
                destroyed_at: r.get(5)?,
                wraps: r.get::<i64>(6)? as u64,
            })
        },
    )?;
    Ok(rows)
}

pub fn active_key_version(c: &Conn<'_>) -> Result<Option<u32>> {
    c.query_opt("SELECT version FROM master_keys WHERE state = 'active'", params![], |r| r.get(0))
}

pub fn insert_master_key(c: &Conn<'_>, version: u32, state: MasterKeyState, now: i64) -> Result<()> {
    let activated = (state == MasterKeyState::Active).then_some(now);
    c.execute(
        "INSERT INTO master_keys (version, state, created_at, activated_at) VALUES (?1, ?2, ?3, ?4)",
        params![version, state.as_str(), now, activated],
    )?;
    Ok(())
}

/// Moves a key to `state` if it is currently in `from`; returns whether it did.
pub fn set_master_key_state(c: &Conn<'_>, version: u32, from: MasterKeyState, state: MasterKeyState, now: i64) -> Result<bool> {
    // The column that records when a version entered `state`, if any.
    let stamped = match state {
        MasterKeyState::Active => Some("activated_at"),
        MasterKeyState::Retired => Some("retired_at"),
        MasterKeyState::Destroyed => Some("destroyed_at"),
        MasterKeyState::Staged | MasterKeyState::DecryptOnly => None,
    };
    let n = match stamped {
        Some(col) => c.execute(
            &format!("UPDATE master_keys SET state = ?2, {col} = ?4 WHERE version = ?1 AND state = ?3"),
            params![version, state.as_str(), from.as_str(), now],
        )?,
        None => c.execute(
            "UPDATE master_keys SET state = ?2 WHERE version = ?1 AND state = ?3",
            params![version, state.as_str(), from.as_str()],
        )?,
    };
    Ok(n == 1)
}

pub fn add_wraps(c: &Conn<'_>, version: u32, n: u64) -> Result<()> {
    c.execute("UPDATE master_keys SET wraps = wraps + ?2 WHERE version = ?1", params![version, n as i64])?;
    Ok(())
}

/// Number of data keys wrapped under each version.
pub fn dek_counts(c: &Conn<'_>) -> Result<BTreeMap<u32, u64>> {
    let rows = c.query_all("SELECT key_version, count(*) FROM deks GROUP BY key_version", params![], |r| {
        Ok((r.get::<u32>(0)?, r.get::<i64>(1)? as u64))
    })?;
    Ok(rows.into_iter().collect())
}

pub fn dek_count_for(c: &Conn<'_>, version: u32) -> Result<u64> {
    Ok(c.query_one("SELECT count(*) FROM deks WHERE key_version = ?1", params![version], |r| r.get::<i64>(0))? as u64)
}

// ---------------------------------------------------------------- data keys

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DekRow {
    pub id: i64,
    pub key_version: u32,
    pub binding: Vec<u8>,
    pub wrapped: Vec<u8>,
}

pub(super) fn dek_row(r: &Row<'_>, at: usize) -> Result<DekRow> {
    Ok(DekRow { id: r.get(at)?, key_version: r.get(at + 1)?, binding: r.get(at + 2)?, wrapped: r.get(at + 3)? })
}

pub fn insert_dek(c: &Conn<'_>, key_version: u32, binding: &[u8], wrapped: &[u8]) -> Result<i64> {
    let id = c.query_one(
        "INSERT INTO deks (key_version, binding, wrapped) VALUES (?1, ?2, ?3) RETURNING id",
        params![key_version, binding, wrapped],
        |r| r.get(0),
    )?;
    add_wraps(c, key_version, 1)?;
    Ok(id)
}

pub fn delete_dek(c: &Conn<'_>, id: i64) -> Result<()> {
    c.execute("DELETE FROM deks WHERE id = ?1", params![id])?;
    Ok(())
}

/// Up to `limit` data keys under `version` with id > `after`, in id order (index order).
pub fn deks_under(c: &Conn<'_>, version: u32, after: i64, limit: usize) -> Result<Vec<DekRow>> {
    let rows = c.query_all(
        "SELECT id, key_version, binding, wrapped FROM deks WHERE key_version = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        params![version, after, limit as i64],
        |r| dek_row(r, 0),
    )?;
    Ok(rows)
}

/// Compare-and-swap re-wrap: replaces the wrap only if the key is still under
/// `old_version`. Returns whether the row was updated.
pub fn rewrap_dek(c: &Conn<'_>, id: i64, old_version: u32, new_version: u32, wrapped: &[u8]) -> Result<bool> {
    let n = c.execute(
        "UPDATE deks SET key_version = ?3, wrapped = ?4 WHERE id = ?1 AND key_version = ?2",
        params![id, old_version, new_version, wrapped],
    )?;
    Ok(n == 1)
}

pub fn count_deks(c: &Conn<'_>) -> Result<u64> {
    Ok(c.query_one("SELECT count(*) FROM deks", params![], |r| r.get::<i64>(0))? as u64)
}

// ---------------------------------------------------------------- connections

#[derive(Debug, Clone)]
pub struct ConnectionRow {
    pub id: String,
    pub kind: ConnectionKind,
    pub spec: String,
    pub secret_version: i64,
    pub secret: Option<SealedSecret>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A sealed value and the data key it is sealed under.
#[derive(Debug, Clone)]
pub struct SealedSecret {
    pub dek: DekRow,
    pub ciphertext: Vec<u8>,
}

fn connection_cols() -> &'static str {
    static COLS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "c.id, c.kind, c.spec, c.secret_version, c.client_secret, c.created_at, c.updated_at, d.id, d.key_version, d.binding, d.wrapped, {}",
            CONNECTIONS.columns()
        )
    });
    &COLS
}

fn connection_row(c: &Conn<'_>, r: &Row<'_>) -> Result<ConnectionRow> {
    integrity::verify(c, &CONNECTIONS, r, 11)?;
    let ciphertext: Option<Vec<u8>> = r.get(4)?;
    let dek_id: Option<i64> = r.get(7)?;
    let secret = match (ciphertext, dek_id) {
        (Some(ciphertext), Some(_)) => Some(SealedSecret { dek: dek_row(r, 7)?, ciphertext }),
        _ => None,
    };
    Ok(ConnectionRow {
        id: r.get(0)?,
        kind: parsed(r, 1)?,
        spec: r.get(2)?,
        secret_version: r.get(3)?,
        secret,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

pub fn get_connection(c: &Conn<'_>, id: &str) -> Result<Option<ConnectionRow>> {
    let sql = format!("SELECT {} FROM connections c LEFT JOIN deks d ON d.id = c.dek_id WHERE c.id = ?1", connection_cols());
    c.query_opt(&sql, params![id], |r| connection_row(c, r))
}

/// A connection's spec JSON with the configuration generation it was read at.
pub fn connection_spec_at_generation(c: &Conn<'_>, id: &str) -> Result<(i64, Option<String>)> {
    let sql = format!(
        "SELECT g.value, c.spec, {} FROM config_generation g LEFT JOIN connections c ON c.id = ?1 WHERE g.id = 1",
        CONNECTIONS.columns()
    );
    c.query_one(&sql, params![id], |r| {
        integrity::verify_present(c, &CONNECTIONS, r, 2)?;
        Ok((r.get(0)?, r.get(1)?))
    })
}

/// The current configuration generation (see migration 0004).
pub fn config_generation(c: &Conn<'_>) -> Result<i64> {
    c.query_one("SELECT value FROM config_generation WHERE id = 1", params![], |r| r.get(0))
}

pub fn list_connections(c: &Conn<'_>) -> Result<Vec<ConnectionRow>> {
    let sql = format!("SELECT {} FROM connections c LEFT JOIN deks d ON d.id = c.dek_id ORDER BY c.id", connection_cols());
    let rows = c.query_all(&sql, params![], |r| connection_row(c, r))?;
    Ok(rows)
}

/// What a new connection stores.
#[derive(Debug)]
pub struct NewConnectionRow<'a> {
    pub id: &'a str,
    pub kind: ConnectionKind,
    pub spec: &'a str,
    pub secret_version: i64,
    /// (data key id, sealed client secret)
    pub secret: Option<(i64, &'a [u8])>,
    pub now: i64,
}

/// Inserts a connection; `Conflict` if the id is taken.
pub fn insert_connection(c: &Conn<'_>, row: &NewConnectionRow<'_>) -> Result<()> {
    let res = c.execute(
        "INSERT INTO connections (id, kind, spec, secret_version, dek_id, client_secret, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        params![row.id, row.kind.as_str(), row.spec, row.secret_version, row.secret.map(|s| s.0), row.secret.map(|s| s.1), row.now]);
    match res {
        Err(e) if super::sql::is_constraint(&e) => Err(StoreError::Conflict),
        Err(e) => Err(e),
        Ok(_) => integrity::seal(c, &CONNECTIONS, row.id, Checked::new_row()),
    }
}

/// Replaces a connection's spec (and secret, when `secret` is given) if its
/// secret_version is still `expected_version`.
pub fn update_connection(c: &Conn<'_>, id: &str, spec: &str, expected_version: i64, secret: Option<(i64, &[u8])>, now: i64) -> Result<()> {
    let checked = integrity::check(c, &CONNECTIONS, id)?;
    let n = match secret {
        Some((dek_id, ct)) => c.execute(
            "UPDATE connections SET spec = ?2, secret_version = secret_version + 1, dek_id = ?4, client_secret = ?5, updated_at = ?6 WHERE id = ?1 AND secret_version = ?3",
            params![id, spec, expected_version, dek_id, ct, now])?,
        None => c.execute(
            "UPDATE connections SET spec = ?2, updated_at = ?4 WHERE id = ?1 AND secret_version = ?3",
            params![id, spec, expected_version, now])?,
    };
    if n == 1 {
        integrity::seal(c, &CONNECTIONS, id, checked)
    } else {
        Err(StoreError::Conflict)
    }
}

pub fn delete_connection(c: &Conn<'_>, id: &str) -> Result<bool> {
    integrity::delete(c, &CONNECTIONS, id)
}

pub fn count_credentials(c: &Conn<'_>, connection_id: &str) -> Result<u64> {
    Ok(c.query_one("SELECT count(*) FROM credentials WHERE connection_id = ?1", params![connection_id], |r| r.get::<i64>(0))? as u64)
}

// ---------------------------------------------------------------- credentials

#[derive(Debug, Clone)]
pub struct CredentialMeta {
    pub id: String,
    pub connection_id: String,
    pub owner: String,
    pub kind: ConnectionKind,
    pub status: CredentialStatus,
    pub secret_version: i64,
    pub token_type: Option<String>,
    pub scopes: HeldScopes,
    pub expires_at: Option<i64>,
    pub has_refresh_token: bool,
    pub key_version: u32,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_refresh_at: Option<i64>,
    pub last_error: Option<String>,
    pub refresh_failures: i64,
    pub refresh_due_at: Option<i64>,
    pub instance_url: Option<String>,
    /// The provider account: (iss, sub) of a verified ID token, when known.
    pub account: Option<(String, String)>,
    /// The lifetime (`expires_in`) the provider gave the stored token, when it issued it.
    pub issued_lifetime: Option<i64>,
    /// When a release last asked for a refresh while the token was still valid.
    pub on_demand_refresh_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct CredentialRow {
    pub meta: CredentialMeta,
    pub dek: DekRow,
    pub primary: Vec<u8>,
    pub refresh: Option<Vec<u8>>,
}

fn meta_cols() -> &'static str {
    static COLS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "k.id, k.connection_id, k.owner, k.kind, k.status, k.secret_version, k.token_type, k.scopes, k.expires_at, \
    k.refresh_secret IS NOT NULL, d.key_version, k.created_at, k.updated_at, k.last_refresh_at, k.last_error, k.refresh_failures, k.refresh_due_at, k.instance_url, k.scopes_known, k.account_iss, k.account_sub, k.issued_lifetime, k.on_demand_refresh_at, {}",
            CREDENTIALS.columns()
        )
    });
    &COLS
}

/// The stored scope list and whether it is known.
fn held_scopes(r: &Row<'_>, scopes: usize, known: usize) -> Result<HeldScopes> {
    if !r.get::<bool>(known)? {
        return Ok(HeldScopes::Unknown);
    }
    let text: String = r.get(scopes)?;
    Scope::parse_list(&text).map(HeldScopes::Known).map_err(|e| StoreError::Corrupt(format!("column {scopes}: {e}")))
}

fn meta_row(r: &Row<'_>, o: usize) -> Result<CredentialMeta> {
    Ok(CredentialMeta {
        id: r.get(o)?,
        connection_id: r.get(o + 1)?,
        owner: r.get(o + 2)?,
        kind: parsed(r, o + 3)?,
        status: parsed(r, o + 4)?,
        secret_version: r.get(o + 5)?,
        token_type: r.get(o + 6)?,
        scopes: held_scopes(r, o + 7, o + 18)?,
        expires_at: r.get(o + 8)?,
        has_refresh_token: r.get(o + 9)?,
        key_version: r.get(o + 10)?,
        created_at: r.get(o + 11)?,
        updated_at: r.get(o + 12)?,
        last_refresh_at: r.get(o + 13)?,
        last_error: r.get(o + 14)?,
        refresh_failures: r.get(o + 15)?,
        refresh_due_at: r.get(o + 16)?,
        instance_url: r.get(o + 17)?,
        account: r.get::<Option<String>>(o + 19)?.zip(r.get::<Option<String>>(o + 20)?),
        issued_lifetime: r.get(o + 21)?,
        on_demand_refresh_at: r.get(o + 22)?,
    })
}

fn credential_row(c: &Conn<'_>, r: &Row<'_>, o: usize) -> Result<CredentialRow> {
    integrity::verify(c, &CREDENTIALS, r, o + CREDENTIAL_MAC_AT)?;
    credential_fields(r, o)
}

/// Where the row version and MAC columns start in [`credential_cols`].
const CREDENTIAL_MAC_AT: usize = 29;

fn credential_fields(r: &Row<'_>, o: usize) -> Result<CredentialRow> {
    Ok(CredentialRow { meta: meta_row(r, o)?, dek: dek_row(r, o + 23)?, primary: r.get(o + 27)?, refresh: r.get(o + 28)? })
}

/// [`credential_at_generation`]'s statement (`?1` connection, `?2` owner): the configuration
/// generation, then the credential's columns.
fn credential_at_generation_sql() -> &'static str {
    // A scalar subquery, not a LEFT JOIN onto a nested join (SQLite materialises that).
    // Built once: this is the release path's statement.
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT (SELECT value FROM config_generation WHERE id = 1), {} \
             FROM credentials k JOIN deks d ON d.id = k.dek_id WHERE k.connection_id = ?1 AND k.owner = ?2",
            credential_cols()
        )
    });
    &SQL
}

/// A row of [`credential_at_generation_sql`], verified with the loaded row key; `None` when
/// the key is not loaded yet.
pub(super) fn credential_at_generation_row(sealer: &integrity::Sealer, r: &Row<'_>) -> Result<Option<(i64, CredentialRow)>> {
    if !integrity::verify_loaded(sealer, &CREDENTIALS, r, 1 + CREDENTIAL_MAC_AT)? {
        return Ok(None);
    }
    Ok(Some((r.get(0)?, credential_fields(r, 1)?)))
}

pub(super) fn credential_cols() -> &'static str {
    static COLS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "k.id, k.connection_id, k.owner, k.kind, k.status, k.secret_version, k.token_type, k.scopes, k.expires_at, \
    k.refresh_secret IS NOT NULL, d.key_version, k.created_at, k.updated_at, k.last_refresh_at, k.last_error, k.refresh_failures, k.refresh_due_at, k.instance_url, k.scopes_known, k.account_iss, k.account_sub, \
    k.issued_lifetime, k.on_demand_refresh_at, d.id, d.key_version, d.binding, d.wrapped, k.primary_secret, k.refresh_secret, {}",
            CREDENTIALS.columns()
        )
    });
    &COLS
}

pub fn get_credential(c: &Conn<'_>, connection_id: &str, owner: &str) -> Result<Option<CredentialRow>> {
    let sql = format!(
        "SELECT {} FROM credentials k JOIN deks d ON d.id = k.dek_id WHERE k.connection_id = ?1 AND k.owner = ?2",
        credential_cols()
    );
    c.query_opt(&sql, params![connection_id, owner], |r| credential_row(c, r, 0))
}

/// A credential (with its data key) and the configuration generation, from one snapshot
/// when the credential exists: the release path's only statement when its policy and spec
/// are cached. Without a credential the generation is read by a second statement (a
/// generation never goes back, so it is at least as new as the miss).
pub fn credential_at_generation(c: &Conn<'_>, connection_id: &str, owner: &str) -> Result<(i64, Option<CredentialRow>)> {
    let found =
        c.query_opt(credential_at_generation_sql(), params![connection_id, owner], |r| Ok((r.get(0)?, credential_row(c, r, 1)?)))?;
    match found {
        Some((generation, row)) => Ok((generation, Some(row))),
        None => Ok((config_generation(c)?, None)),
    }
}

/// Credentials in id order after `after` (for verification sweeps; start with "").
pub fn credentials_page(c: &Conn<'_>, after: &str, limit: usize) -> Result<Vec<CredentialRow>> {
    let sql =
        format!("SELECT {} FROM credentials k JOIN deks d ON d.id = k.dek_id WHERE k.id > ?1 ORDER BY k.id LIMIT ?2", credential_cols());
    c.query_all(&sql, params![after, limit as i64], |r| credential_row(c, r, 0))
}

pub fn list_credentials(c: &Conn<'_>, connection_id: &str, after_owner: &str, limit: usize) -> Result<Vec<CredentialMeta>> {
    let sql = format!(
        "SELECT {} FROM credentials k JOIN deks d ON d.id = k.dek_id WHERE k.connection_id = ?1 AND k.owner > ?2 ORDER BY k.owner LIMIT ?3",
        meta_cols()
    );
    let rows = c.query_all(&sql, params![connection_id, after_owner, limit as i64], |r| {
        integrity::verify(c, &CREDENTIALS, r, 23)?;
        meta_row(r, 0)
    })?;
    Ok(rows)
}

/// What a credential write stores.
#[derive(Debug)]
pub struct CredentialWrite<'a> {
    pub id: &'a str,
    pub connection_id: &'a str,
    pub owner: &'a str,
    pub kind: ConnectionKind,
    pub secret_version: i64,
    pub dek_id: i64,
    pub primary: &'a [u8],
    pub refresh: Option<&'a [u8]>,
    pub token_type: Option<&'a str>,
    pub scopes: &'a HeldScopes,
    pub expires_at: Option<i64>,
    /// When the background refresher should renew this token (`None`: never).
    pub refresh_due_at: Option<i64>,
    /// Written by a refresh (sets `last_refresh_at`).
    pub refreshed: bool,
    pub instance_url: Option<&'a str>,
    /// The provider account: `None` keeps the stored one (a refresh); `Some(None)` clears it
    /// (tokens of an unknown account); `Some(Some((iss, sub)))` sets it.
    pub account: Option<Option<(&'a str, &'a str)>>,
    /// The provider's `expires_in` for these tokens: `None` keeps the stored one.
    pub issued_lifetime: Option<Option<i64>>,
    pub now: i64,
}

/// Inserts the credential (when `previous` is `None`) or replaces it if its
/// secret_version is still `previous`; deletes the replaced data key. A write resets
/// the status to active and clears refresh errors.
pub fn put_credential(c: &Conn<'_>, w: &CredentialWrite<'_>, previous: Option<(i64, i64)>) -> Result<()> {
    let last_refresh = w.refreshed.then_some(w.now);
    let (scopes, scopes_known) = (w.scopes.joined(), w.scopes.known().is_some());
    let set_account = w.account.is_some();
    let (account_iss, account_sub) = w.account.flatten().unzip();
    let (set_lifetime, lifetime) = (w.issued_lifetime.is_some(), w.issued_lifetime.flatten());
    match previous {
        None => {
            let res = c
                .execute(
                    "INSERT INTO credentials (id, connection_id, owner, kind, status, secret_version, dek_id, primary_secret, refresh_secret, token_type, scopes, \
                     expires_at, created_at, updated_at, refresh_due_at, last_refresh_at, instance_url, scopes_known, account_iss, account_sub, issued_lifetime) \
                     VALUES (?1, ?2, ?3, ?4, 'active', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
                params![
                    w.id,
                    w.connection_id,
                    w.owner,
                    w.kind.as_str(),
                    w.secret_version,
                    w.dek_id,
                    w.primary,
                    w.refresh,
                    w.token_type,
                    scopes,
                    w.expires_at,
                    w.now,
                    w.refresh_due_at,
                    last_refresh,
                    w.instance_url,
                    scopes_known,
                    account_iss,
                    account_sub,
                    lifetime
                ]);
            match res {
                Err(e) if super::sql::is_constraint(&e) => Err(StoreError::Conflict),
                Err(e) => Err(e),
                Ok(_) => integrity::seal(c, &CREDENTIALS, w.id, Checked::new_row()),
            }
        }
        Some((prev_version, prev_dek)) => {
            let checked = integrity::check(c, &CREDENTIALS, w.id)?;
            // A write resets the status and refresh state and releases any refresh lease.
            let n = c
                .execute(
                    "UPDATE credentials SET status = 'active', secret_version = ?2, dek_id = ?3, primary_secret = ?4, refresh_secret = ?5, token_type = ?6, \
                     scopes = ?7, expires_at = ?8, updated_at = ?9, last_error = NULL, refresh_failures = 0, refresh_due_at = ?11, \
                     last_refresh_at = coalesce(?12, last_refresh_at), refresh_lease_until = NULL, refresh_lease_holder = NULL, instance_url = ?13, scopes_known = ?14, \
                     account_iss = CASE WHEN ?15 THEN ?16 ELSE account_iss END, account_sub = CASE WHEN ?15 THEN ?17 ELSE account_sub END, \
                     issued_lifetime = CASE WHEN ?18 THEN ?19 ELSE issued_lifetime END \
                     WHERE id = ?1 AND secret_version = ?10",
                params![
                    w.id,
                    w.secret_version,
                    w.dek_id,
                    w.primary,
                    w.refresh,
                    w.token_type,
                    scopes,
                    w.expires_at,
                    w.now,
                    prev_version,
                    w.refresh_due_at,
                    last_refresh,
                    w.instance_url,
                    scopes_known,
                    set_account,
                    account_iss,
                    account_sub,
                    set_lifetime,
                    lifetime
                ])?;
            if n != 1 {
                return Err(StoreError::Conflict);
            }
            integrity::seal(c, &CREDENTIALS, w.id, checked)?;
            delete_dek(c, prev_dek)
        }
    }
}

/// Moves a credential to another owner (its ciphertexts re-sealed under the new binding by
/// the caller) if it is still at `version`; deletes the replaced data key. `Conflict` if
/// the credential changed or the new owner already has one.
#[allow(clippy::too_many_arguments)]
pub fn move_credential(
    c: &Conn<'_>,
    id: &str,
    version: i64,
    new_owner: &str,
    new_version: i64,
    dek_id: i64,
    primary: &[u8],
    refresh: Option<&[u8]>,
    now: i64,
) -> Result<()> {
    let old_dek: i64 = c.query_one("SELECT dek_id FROM credentials WHERE id = ?1", params![id], |r| r.get(0))?;
    let checked = integrity::check(c, &CREDENTIALS, id)?;
    let res = c.execute(
        "UPDATE credentials SET owner = ?3, secret_version = ?4, dek_id = ?5, primary_secret = ?6, refresh_secret = ?7, updated_at = ?8 \
         WHERE id = ?1 AND secret_version = ?2",
        params![id, version, new_owner, new_version, dek_id, primary, refresh, now],
    );
    match res {
        Ok(1) => {
            integrity::seal(c, &CREDENTIALS, id, checked)?;
            delete_dek(c, old_dek)
        }
        Ok(_) => Err(StoreError::Conflict),
        Err(e) if super::sql::is_constraint(&e) => Err(StoreError::Conflict),
        Err(e) => Err(e),
    }
}

/// A narrowed token with what its binding needs.
#[derive(Debug, Clone)]
pub struct NarrowedEntry {
    pub credential_id: String,
    pub connection_id: String,
    pub owner: String,
    pub scopes: String,
    pub row: NarrowedRow,
}

/// Every narrowed token (for verification).
pub fn all_narrowed(c: &Conn<'_>) -> Result<Vec<NarrowedEntry>> {
    let rows = c.query_all("SELECT n.credential_id, k.connection_id, k.owner, n.scopes, n.access_token, n.token_type, n.expires_at, d.id, d.key_version, d.binding, d.wrapped \
         FROM narrowed_tokens n JOIN credentials k ON k.id = n.credential_id JOIN deks d ON d.id = n.dek_id", params![], |r| {
        Ok(NarrowedEntry {
            credential_id: r.get(0)?,
            connection_id: r.get(1)?,
            owner: r.get(2)?,
            scopes: r.get(3)?,
            row: NarrowedRow { access_token: r.get(4)?, token_type: r.get(5)?, expires_at: r.get(6)?, dek: dek_row(r, 7)? },
        })
    })?;
    Ok(rows)
}

/// Deletes a credential and its data key; returns whether it existed.
pub fn delete_credential(c: &Conn<'_>, connection_id: &str, owner: &str) -> Result<bool> {
    let Some(id) =
        c.query_opt("SELECT id FROM credentials WHERE connection_id = ?1 AND owner = ?2", params![connection_id, owner], |r| {
            r.get::<String>(0)
        })?
    else {
        return Ok(false);
    };
    delete_narrowed(c, &id)?;
    let checked = integrity::before_delete(c, &CREDENTIALS, &id)?;
    let dek: Option<i64> = c.query_opt("DELETE FROM credentials WHERE id = ?1 RETURNING dek_id", params![id], |r| r.get(0))?;
    match dek {
        Some(dek) => {
            integrity::deleted(c, &CREDENTIALS, checked)?;
            delete_dek(c, dek).map(|_| true)
        }
        None => Ok(false),
    }
}

/// Deletes every credential of a connection and their data keys; returns how many.
pub fn delete_credentials_of(c: &Conn<'_>, connection_id: &str) -> Result<u64> {
    let ids: Vec<String> = c.query_all("SELECT id FROM credentials WHERE connection_id = ?1", params![connection_id], |r| r.get(0))?;
    for id in &ids {
        delete_narrowed(c, id)?;
        let checked = integrity::before_delete(c, &CREDENTIALS, id)?;
        integrity::deleted(c, &CREDENTIALS, checked)?;
    }
    let ids: Vec<i64> =
        c.query_all("DELETE FROM credentials WHERE connection_id = ?1 RETURNING dek_id", params![connection_id], |r| r.get(0))?;
    for id in &ids {
        delete_dek(c, *id)?;
    }
    Ok(ids.len() as u64)
}

pub fn count_all_credentials(c: &Conn<'_>) -> Result<u64> {
    Ok(c.query_one("SELECT count(*) FROM credentials", params![], |r| r.get::<i64>(0))? as u64)
}

// ---------------------------------------------------------------- narrowed tokens

/// A narrower access token minted for a subset of a credential's scopes.
#[derive(Debug, Clone)]
pub struct NarrowedRow {
    pub dek: DekRow,
    pub access_token: Vec<u8>,
    pub token_type: String,
    pub expires_at: Option<i64>,
}

/// The narrowed token of `credential_id` for exactly `scopes` (space-separated, sorted).
pub fn get_narrowed(c: &Conn<'_>, credential_id: &str, scopes: &str) -> Result<Option<NarrowedRow>> {
    c.query_opt(
        "SELECT n.access_token, n.token_type, n.expires_at, d.id, d.key_version, d.binding, d.wrapped \
             FROM narrowed_tokens n JOIN deks d ON d.id = n.dek_id WHERE n.credential_id = ?1 AND n.scopes = ?2",
        params![credential_id, scopes],
        |r| Ok(NarrowedRow { access_token: r.get(0)?, token_type: r.get(1)?, expires_at: r.get(2)?, dek: dek_row(r, 3)? }),
    )
}

/// Stores (or replaces) a narrowed token; deletes a replaced one's data key.
#[allow(clippy::too_many_arguments)]
pub fn put_narrowed(
    c: &Conn<'_>,
    credential_id: &str,
    scopes: &str,
    dek_id: i64,
    access_token: &[u8],
    token_type: &str,
    expires_at: Option<i64>,
    now: i64,
) -> Result<()> {
    let old: Option<i64> =
        c.query_opt("SELECT dek_id FROM narrowed_tokens WHERE credential_id = ?1 AND scopes = ?2", params![credential_id, scopes], |r| {
            r.get(0)
        })?;
    c.execute(
        "INSERT INTO narrowed_tokens (credential_id, scopes, dek_id, access_token, token_type, expires_at, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (credential_id, scopes) DO UPDATE SET dek_id = excluded.dek_id, \
         access_token = excluded.access_token, token_type = excluded.token_type, expires_at = excluded.expires_at, created_at = excluded.created_at",
        params![credential_id, scopes, dek_id, access_token, token_type, expires_at, now])?;
    if let Some(d) = old {
        delete_dek(c, d)?;
    }
    Ok(())
}

/// Deletes every narrowed token of a credential with its data key.
pub fn delete_narrowed(c: &Conn<'_>, credential_id: &str) -> Result<u64> {
    let ids: Vec<i64> =
        c.query_all("DELETE FROM narrowed_tokens WHERE credential_id = ?1 RETURNING dek_id", params![credential_id], |r| r.get(0))?;
    for id in &ids {
        delete_dek(c, *id)?;
    }
    Ok(ids.len() as u64)
}

/// Narrowed tokens stored (each owns a data key).
pub fn count_narrowed(c: &Conn<'_>) -> Result<u64> {
    Ok(c.query_one("SELECT count(*) FROM narrowed_tokens", params![], |r| r.get::<i64>(0))? as u64)
}

// ---------------------------------------------------------------- vault keys

/// A long-lived random key for `purpose`, sealed under a data key.
pub fn get_vault_key(c: &Conn<'_>, purpose: &str) -> Result<Option<SealedSecret>> {
    c.query_opt(
        "SELECT v.sealed, d.id, d.key_version, d.binding, d.wrapped FROM vault_keys v JOIN deks d ON d.id = v.dek_id WHERE v.purpose = ?1",
        params![purpose],
        |r| Ok(SealedSecret { ciphertext: r.get(0)?, dek: dek_row(r, 1)? }),
    )
}

pub fn insert_vault_key(c: &Conn<'_>, purpose: &str, dek_id: i64, sealed: &[u8], now: i64) -> Result<()> {
    c.execute(
        "INSERT INTO vault_keys (purpose, dek_id, sealed, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![purpose, dek_id, sealed, now],
    )?;
    Ok(())
}

/// Every vault key's purpose.
pub fn vault_key_purposes(c: &Conn<'_>) -> Result<Vec<String>> {
    let rows = c.query_all("SELECT purpose FROM vault_keys ORDER BY purpose", params![], |r| r.get(0))?;
    Ok(rows)
}

// ---------------------------------------------------------------- admin tokens

#[derive(Debug, Clone)]
pub struct AdminTokenRow {
    pub id: String,
    pub secret_hash: Vec<u8>,
    pub label: Option<String>,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
}

fn admin_select() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT a.id, a.secret_hash, a.label, a.created_at, a.created_by, a.revoked_at, {} FROM admin_tokens a",
            ADMIN_TOKENS.columns()
        )
    });
    &SQL
}

fn admin_row(c: &Conn<'_>, r: &Row<'_>) -> Result<AdminTokenRow> {
    integrity::verify(c, &ADMIN_TOKENS, r, 6)?;
    Ok(AdminTokenRow {
        id: r.get(0)?,
        secret_hash: r.get(1)?,
        label: r.get(2)?,
        created_at: r.get(3)?,
        created_by: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}

pub fn insert_admin_token(c: &Conn<'_>, row: &AdminTokenRow) -> Result<()> {
    c.execute(
        "INSERT INTO admin_tokens (id, secret_hash, label, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![row.id, row.secret_hash, row.label, row.created_at, row.created_by],
    )?;
    integrity::seal(c, &ADMIN_TOKENS, &row.id, Checked::new_row())
}

pub fn get_admin_token(c: &Conn<'_>, id: &str) -> Result<Option<AdminTokenRow>> {
    c.query_opt(&format!("{} WHERE a.id = ?1", admin_select()), params![id], |r| admin_row(c, r))
}

pub fn list_admin_tokens(c: &Conn<'_>) -> Result<Vec<AdminTokenRow>> {
    let rows = c.query_all(&format!("{} ORDER BY a.created_at, a.id", admin_select()), params![], |r| admin_row(c, r))?;
    Ok(rows)
}

/// Revokes a token; the row stays as a sealed tombstone (its id can never be reused).
pub fn revoke_admin_token(c: &Conn<'_>, id: &str, now: i64) -> Result<bool> {
    let checked = integrity::check(c, &ADMIN_TOKENS, id)?;
    let n = c.execute("UPDATE admin_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL", params![id, now])?;
    if n == 1 {
        integrity::seal(c, &ADMIN_TOKENS, id, checked)?;
    }
    Ok(n == 1)
}

// ---------------------------------------------------------------- refresh scheduling

/// Takes the refresh lease of a credential if nobody holds a live one.
pub fn acquire_refresh_lease(c: &Conn<'_>, id: &str, holder: &str, now_ms: i64, until_ms: i64, version: Option<i64>) -> Result<bool> {
    // Only at the version the caller read (`None`: any): a refresh that read the tokens
    // before another replica rotated them must not spend the old refresh token. A lease
    // the holder already has (a claim of the background refresher) counts.
    let n = c.execute(
        "UPDATE credentials SET refresh_lease_until = ?3, refresh_lease_holder = ?2 \
             WHERE id = ?1 AND status = 'active' AND (CAST(?5 AS BIGINT) IS NULL OR secret_version = ?5) \
             AND (refresh_lease_until IS NULL OR refresh_lease_until < ?4 OR refresh_lease_holder = ?2)",
        params![id, holder, until_ms, now_ms, version],
    )?;
    Ok(n == 1)
}

/// Claims up to `limit` credentials due for a refresh at `now` that nobody holds a lease
/// on, by taking their lease until `until_ms`: the background refreshers of several
/// replicas share the due work without doing any of it twice. (PostgreSQL skips rows
/// another transaction has locked rather than waiting for them.)
pub fn claim_due_refreshes(
    c: &Conn<'_>,
    now: i64,
    now_ms: i64,
    holder: &str,
    until_ms: i64,
    limit: usize,
) -> Result<Vec<(String, String, String)>> {
    let sql = if c.is_postgres() {
        "UPDATE credentials SET refresh_lease_until = ?4, refresh_lease_holder = ?3 WHERE id IN \
         (SELECT id FROM credentials WHERE refresh_due_at IS NOT NULL AND refresh_due_at <= ?1 AND status = 'active' \
          AND (refresh_lease_until IS NULL OR refresh_lease_until < ?2) ORDER BY refresh_due_at LIMIT ?5 FOR UPDATE SKIP LOCKED) \
         RETURNING id, connection_id, owner"
    } else {
        "UPDATE credentials SET refresh_lease_until = ?4, refresh_lease_holder = ?3 WHERE id IN \
         (SELECT id FROM credentials WHERE refresh_due_at IS NOT NULL AND refresh_due_at <= ?1 AND status = 'active' \
          AND (refresh_lease_until IS NULL OR refresh_lease_until < ?2) ORDER BY refresh_due_at LIMIT ?5) \
         RETURNING id, connection_id, owner"
    };
    c.query_all(sql, params![now, now_ms, holder, until_ms, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
}

/// Records that a release's refresh of a still-valid token was answered by the provider
/// at `now` (the on-demand cooldown starts).
pub fn mark_on_demand_refresh(c: &Conn<'_>, id: &str, now: i64) -> Result<()> {
    c.execute("UPDATE credentials SET on_demand_refresh_at = ?2 WHERE id = ?1", params![id, now])?;
    Ok(())
}

/// Gives up a lease without changing anything else.
pub fn release_refresh_lease(c: &Conn<'_>, id: &str, holder: &str) -> Result<()> {
    c.execute(
        "UPDATE credentials SET refresh_lease_until = NULL, refresh_lease_holder = NULL WHERE id = ?1 AND refresh_lease_holder = ?2",
        params![id, holder],
    )?;
    Ok(())
}

/// The live lease of a credential, if any (unix ms).
pub fn refresh_lease(c: &Conn<'_>, id: &str) -> Result<Option<i64>> {
    Ok(c.query_opt("SELECT refresh_lease_until FROM credentials WHERE id = ?1", params![id], |r| r.get(0))?.flatten())
}

/// Records a transient failure: keeps the tokens, schedules the next attempt.
pub fn refresh_failed(c: &Conn<'_>, id: &str, holder: &str, error: &str, retry_at: i64) -> Result<()> {
    c.execute(
        "UPDATE credentials SET refresh_failures = refresh_failures + 1, last_error = ?3, refresh_due_at = ?4, \
         refresh_lease_until = NULL, refresh_lease_holder = NULL WHERE id = ?1 AND (refresh_lease_holder = ?2 OR refresh_lease_holder IS NULL)",
    params![id, holder, error, retry_at])?;
    Ok(())
}

/// The provider refused the grant: no more refreshes until the owner reconnects.
pub fn mark_needs_reauth(c: &Conn<'_>, id: &str, error: &str, now: i64) -> Result<()> {
    let checked = integrity::check(c, &CREDENTIALS, id)?;
    c.execute(
        "UPDATE credentials SET status = 'needs_reauth', last_error = ?2, refresh_due_at = NULL, refresh_lease_until = NULL, \
         refresh_lease_holder = NULL, updated_at = ?3 WHERE id = ?1",
        params![id, error, now],
    )?;
    integrity::seal(c, &CREDENTIALS, id, checked)
}

/// The earliest scheduled refresh (uses the partial index).
pub fn next_refresh_due(c: &Conn<'_>) -> Result<Option<i64>> {
    c.query_one("SELECT min(refresh_due_at) FROM credentials WHERE refresh_due_at IS NOT NULL", params![], |r| r.get(0))
}

/// Credentials per status, for metrics.
pub fn credentials_by_status(c: &Conn<'_>) -> Result<Vec<(CredentialStatus, u64)>> {
    let rows = c.query_all("SELECT status, count(*) FROM credentials GROUP BY status", params![], |r| {
        Ok((parsed(r, 0)?, r.get::<i64>(1)? as u64))
    })?;
    Ok(rows)
}

// ---------------------------------------------------------------- replicas

/// A server's last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    pub id: String,
    pub host: String,
    pub started_at: i64,
    /// Unix milliseconds.
    pub seen_at: i64,
    pub key_versions: Vec<u32>,
    pub missing_keys: Vec<u32>,
}

fn versions(list: &[u32]) -> String {
    list.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn parse_versions(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .filter(|v| !v.is_empty())
        .map(|v| v.parse().map_err(|_| StoreError::Corrupt(format!("key version list '{text}'"))))
        .collect()
}

pub fn upsert_replica(c: &Conn<'_>, r: &ReplicaRow) -> Result<()> {
    c.execute(
        "INSERT INTO replicas (id, host, started_at, seen_at, key_versions, missing_keys) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at, key_versions = excluded.key_versions, missing_keys = excluded.missing_keys",
        params![r.id, r.host, r.started_at, r.seen_at, versions(&r.key_versions), versions(&r.missing_keys)],
    )?;
    Ok(())
}

/// Replicas seen at or after `since_ms`.
pub fn live_replicas(c: &Conn<'_>, since_ms: i64) -> Result<Vec<ReplicaRow>> {
    c.query_all(
        "SELECT id, host, started_at, seen_at, key_versions, missing_keys FROM replicas WHERE seen_at >= ?1 ORDER BY id",
        params![since_ms],
        |r| {
            Ok(ReplicaRow {
                id: r.get(0)?,
                host: r.get(1)?,
                started_at: r.get(2)?,
                seen_at: r.get(3)?,
                key_versions: parse_versions(&r.get::<String>(4)?)?,
                missing_keys: parse_versions(&r.get::<String>(5)?)?,
            })
        },
    )
}

/// Forgets a replica (it stopped), and any not seen since `before_ms`.
pub fn delete_replica(c: &Conn<'_>, id: &str, before_ms: i64) -> Result<()> {
    c.execute("DELETE FROM replicas WHERE id = ?1 OR seen_at < ?2", params![id, before_ms])?;
    Ok(())
}
