//! Statements for the identities latchkey trusts: agents, trusted issuers and latchkey's
//! own token-signing keys.

use super::integrity::{self, Checked, AGENTS, ISSUERS, SIGNING_KEYS};
use super::sql::{params, parsed, Conn, Row};

use super::StoreError;
use crate::model::SigningKeyState;

type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone)]
pub struct AgentRow {
    pub id: String,
    pub name: String,
    pub secret_hash: String,
    pub policy: String,
    pub disabled: bool,
    /// Tokens issued with a lower epoch are no longer accepted.
    pub token_epoch: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

fn agent_row(c: &Conn<'_>, r: &Row<'_>) -> Result<AgentRow> {
    integrity::verify(c, &AGENTS, r, 8)?;
    Ok(AgentRow {
        id: r.get(0)?,
        name: r.get(1)?,
        secret_hash: r.get(2)?,
        policy: r.get(3)?,
        disabled: r.get(4)?,
        token_epoch: r.get(5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

const AGENT_COLS: &str = "id, name, secret_hash, policy, disabled, token_epoch, created_at, updated_at";

fn agent_select() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT a.id, a.name, a.secret_hash, a.policy, a.disabled, a.token_epoch, a.created_at, a.updated_at, {} FROM agents a",
            AGENTS.columns()
        )
    });
    &SQL
}

/// The next agent token epoch: a counter shared by all agents that never goes back, so
/// that an agent deleted and created again starts above every token issued before.
pub fn next_agent_epoch(c: &Conn<'_>) -> Result<i64> {
    c.query_one("UPDATE counters SET value = value + 1 WHERE name = 'agent_epoch' RETURNING value", params![], |r| r.get(0))
}

pub fn insert_agent(c: &Conn<'_>, a: &AgentRow) -> Result<()> {
    let res = c.execute(
        &format!("INSERT INTO agents ({AGENT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![a.id, a.name, a.secret_hash, a.policy, a.disabled, a.token_epoch, a.created_at, a.updated_at],
    );
    match res {
        Err(e) if super::sql::is_constraint(&e) => Err(StoreError::Conflict),
        Err(e) => Err(e),
        Ok(_) => integrity::seal(c, &AGENTS, &a.id, Checked::new_row()),
    }
}

pub fn get_agent(c: &Conn<'_>, id: &str) -> Result<Option<AgentRow>> {
    c.query_opt(&format!("{} WHERE a.id = ?1", agent_select()), params![id], |r| agent_row(c, r))
}

/// What the release path needs of an agent.
#[derive(Debug, Clone)]
pub struct AgentPolicyRow {
    pub policy: String,
    pub disabled: bool,
    pub token_epoch: i64,
}

/// An agent's [`AgentPolicyRow`] with the configuration generation it was read at (one
/// statement, one snapshot).
pub fn agent_policy_at_generation(c: &Conn<'_>, id: &str) -> Result<(i64, Option<AgentPolicyRow>)> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT g.value, a.policy, a.disabled, a.token_epoch, {} FROM config_generation g LEFT JOIN agents a ON a.id = ?1 WHERE g.id = 1",
            AGENTS.columns()
        )
    });
    c.query_one(&SQL, params![id], |r| {
        integrity::verify_present(c, &AGENTS, r, 4)?;
        let policy: Option<String> = r.get(1)?;
        let disabled: Option<bool> = r.get(2)?;
        let epoch: Option<i64> = r.get(3)?;
        let row = policy.zip(disabled).zip(epoch).map(|((policy, disabled), token_epoch)| AgentPolicyRow { policy, disabled, token_epoch });
        Ok((r.get(0)?, row))
    })
}

pub fn list_agents(c: &Conn<'_>) -> Result<Vec<AgentRow>> {
    let rows = c.query_all(&format!("{} ORDER BY a.id", agent_select()), params![], |r| agent_row(c, r))?;
    Ok(rows)
}

/// Runs an UPDATE of agent `id` between verifying and re-sealing the row; returns whether
/// it changed a row.
fn update_agent(c: &Conn<'_>, id: &str, sql: &str, params: &[super::sql::P<'_>]) -> Result<bool> {
    let checked = integrity::check(c, &AGENTS, id)?;
    let changed = c.execute(sql, params)? == 1;
    if changed {
        integrity::seal(c, &AGENTS, id, checked)?;
    }
    Ok(changed)
}

/// Updates one column set of an agent; returns whether it exists.
pub fn update_agent_policy(c: &Conn<'_>, id: &str, policy: &str, now: i64) -> Result<bool> {
    update_agent(c, id, "UPDATE agents SET policy = ?2, updated_at = ?3 WHERE id = ?1", params![id, policy, now])
}

/// A new secret, and a new epoch that ends every token issued with the old one.
pub fn update_agent_secret(c: &Conn<'_>, id: &str, hash: &str, epoch: i64, now: i64) -> Result<bool> {
    update_agent(
        c,
        id,
        "UPDATE agents SET secret_hash = ?2, token_epoch = ?3, updated_at = ?4 WHERE id = ?1",
        params![id, hash, epoch, now],
    )
}

/// Replaces a legacy hash of the same secret (the epoch stays: tokens stay valid).
pub fn upgrade_agent_hash(c: &Conn<'_>, id: &str, old: &str, new: &str) -> Result<bool> {
    update_agent(c, id, "UPDATE agents SET secret_hash = ?3 WHERE id = ?1 AND secret_hash = ?2", params![id, old, new])
}

/// Disables (with a new epoch that ends every token issued so far) or enables an agent.
pub fn set_agent_disabled(c: &Conn<'_>, id: &str, disabled: bool, epoch: Option<i64>, now: i64) -> Result<bool> {
    update_agent(
        c,
        id,
        "UPDATE agents SET disabled = ?2, token_epoch = coalesce(?3, token_epoch), updated_at = ?4 WHERE id = ?1",
        params![id, disabled, epoch, now],
    )
}

pub fn delete_agent(c: &Conn<'_>, id: &str) -> Result<bool> {
    integrity::delete(c, &AGENTS, id)
}

#[derive(Debug, Clone)]
pub struct IssuerRow {
    pub issuer: String,
    pub subject_prefix: String,
    pub display_name: Option<String>,
    pub jwks_uri: Option<String>,
    pub jwks: Option<String>,
    pub audience: String,
    pub tenant_claim: Option<String>,
    pub roles_claim: Option<String>,
    pub proof_client_id: Option<String>,
    /// The owner-proof client secret, sealed.
    pub proof_secret: Option<super::rows::SealedSecret>,
    pub created_at: i64,
}

fn issuer_row(c: &Conn<'_>, r: &Row<'_>) -> Result<IssuerRow> {
    integrity::verify(c, &ISSUERS, r, 15)?;
    let sealed: Option<Vec<u8>> = r.get(9)?;
    let dek_id: Option<i64> = r.get(11)?;
    let proof_secret = match (sealed, dek_id) {
        (Some(ciphertext), Some(_)) => Some(super::rows::SealedSecret { dek: super::rows::dek_row(r, 11)?, ciphertext }),
        _ => None,
    };
    Ok(IssuerRow {
        issuer: r.get(0)?,
        subject_prefix: r.get(1)?,
        display_name: r.get(2)?,
        jwks_uri: r.get(3)?,
        jwks: r.get(4)?,
        audience: r.get(5)?,
        tenant_claim: r.get(6)?,
        roles_claim: r.get(7)?,
        proof_client_id: r.get(8)?,
        proof_secret,
        created_at: r.get(10)?,
    })
}

fn issuer_select() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT i.issuer, i.subject_prefix, i.display_name, i.jwks_uri, i.jwks, i.audience, i.tenant_claim, i.roles_claim, \
    i.proof_client_id, i.proof_client_secret, i.created_at, d.id, d.key_version, d.binding, d.wrapped, {} \
    FROM issuers i LEFT JOIN deks d ON d.id = i.proof_dek_id",
            ISSUERS.columns()
        )
    });
    &SQL
}

/// Inserts or replaces an issuer (keyed by its URL); `Conflict` if another issuer already
/// uses its subject prefix. Returns the data key of a replaced proof secret, to delete.
pub fn put_issuer(c: &Conn<'_>, i: &IssuerRow, proof_secret: Option<(i64, &[u8])>) -> Result<Option<i64>> {
    let taken: Option<String> =
        c.query_opt("SELECT issuer FROM issuers WHERE subject_prefix = ?1 AND issuer != ?2", params![i.subject_prefix, i.issuer], |r| {
            r.get(0)
        })?;
    if taken.is_some() {
        return Err(StoreError::Conflict);
    }
    let old_dek: Option<Option<i64>> =
        c.query_opt("SELECT proof_dek_id FROM issuers WHERE issuer = ?1", params![&i.issuer], |r| r.get(0))?;
    let checked = integrity::check(c, &ISSUERS, &i.issuer)?;
    c.execute(
        "INSERT INTO issuers (issuer, subject_prefix, display_name, jwks_uri, jwks, audience, tenant_claim, roles_claim, \
         proof_client_id, proof_dek_id, proof_client_secret, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
         ON CONFLICT (issuer) DO UPDATE SET subject_prefix = excluded.subject_prefix, display_name = excluded.display_name, \
         jwks_uri = excluded.jwks_uri, jwks = excluded.jwks, audience = excluded.audience, tenant_claim = excluded.tenant_claim, \
         roles_claim = excluded.roles_claim, proof_client_id = excluded.proof_client_id, proof_dek_id = excluded.proof_dek_id, \
         proof_client_secret = excluded.proof_client_secret, created_at = excluded.created_at",
        params![
            i.issuer,
            i.subject_prefix,
            i.display_name,
            i.jwks_uri,
            i.jwks,
            i.audience,
            i.tenant_claim,
            i.roles_claim,
            i.proof_client_id,
            proof_secret.map(|s| s.0),
            proof_secret.map(|s| s.1),
            i.created_at
        ],
    )?;
    integrity::seal(c, &ISSUERS, &i.issuer, checked)?;
    Ok(old_dek.flatten())
}

pub fn get_issuer(c: &Conn<'_>, issuer: &str) -> Result<Option<IssuerRow>> {
    c.query_opt(&format!("{} WHERE i.issuer = ?1", issuer_select()), params![issuer], |r| issuer_row(c, r))
}

pub fn issuer_by_prefix(c: &Conn<'_>, prefix: &str) -> Result<Option<IssuerRow>> {
    c.query_opt(&format!("{} WHERE i.subject_prefix = ?1", issuer_select()), params![prefix], |r| issuer_row(c, r))
}

pub fn list_issuers(c: &Conn<'_>) -> Result<Vec<IssuerRow>> {
    let rows = c.query_all(&format!("{} ORDER BY i.issuer", issuer_select()), params![], |r| issuer_row(c, r))?;
    Ok(rows)
}

/// Deletes an issuer; returns whether it existed and the data key of its proof secret.
pub fn delete_issuer(c: &Conn<'_>, issuer: &str) -> Result<Option<Option<i64>>> {
    let checked = integrity::before_delete(c, &ISSUERS, issuer)?;
    let deleted = c.query_opt("DELETE FROM issuers WHERE issuer = ?1 RETURNING proof_dek_id", params![issuer], |r| r.get(0))?;
    if deleted.is_some() {
        integrity::deleted(c, &ISSUERS, checked)?;
    }
    Ok(deleted)
}

#[derive(Debug, Clone)]
pub struct SigningKeyRow {
    pub kid: String,
    pub public_key: Vec<u8>,
    pub dek: super::rows::DekRow,
    pub private_key: Vec<u8>,
    pub state: SigningKeyState,
}

pub fn signing_keys(c: &Conn<'_>) -> Result<Vec<SigningKeyRow>> {
    let sql = format!(
        "SELECT s.kid, s.public_key, s.private_key, s.state, d.id, d.key_version, d.binding, d.wrapped, {} \
         FROM signing_keys s JOIN deks d ON d.id = s.dek_id WHERE s.state != 'retired' ORDER BY s.state = 'active' DESC, s.created_at DESC",
        SIGNING_KEYS.columns()
    );
    let rows = c.query_all(&sql, params![], |r| {
        integrity::verify(c, &SIGNING_KEYS, r, 8)?;
        Ok(SigningKeyRow {
            kid: r.get(0)?,
            public_key: r.get(1)?,
            private_key: r.get(2)?,
            state: parsed(r, 3)?,
            dek: super::rows::DekRow { id: r.get(4)?, key_version: r.get(5)?, binding: r.get(6)?, wrapped: r.get(7)? },
        })
    })?;
    Ok(rows)
}

pub fn insert_signing_key(c: &Conn<'_>, kid: &str, public_key: &[u8], dek_id: i64, private_key: &[u8], now: i64) -> Result<()> {
    c.execute(
        "INSERT INTO signing_keys (kid, alg, public_key, dek_id, private_key, state, created_at) VALUES (?1, 'EdDSA', ?2, ?3, ?4, 'active', ?5)",
        params![kid, public_key, dek_id, private_key, now])?;
    integrity::seal(c, &SIGNING_KEYS, kid, Checked::new_row())
}
