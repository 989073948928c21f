//! Connect sessions: single-use links and their stages. A session is created by an admin
//! or an agent; opened once (a POST from the browser that then holds its binding cookie);
//! optionally proven (the person signed in at the owner's issuer); and finished once (the
//! provider's callback). Secrets are stored as hashes (state, nonce, binding) or sealed (the
//! PKCE verifier of the current stage).

use super::integrity::{self, Checked, CONNECT_SESSIONS};
use super::sql::{params, Conn, Row};

use super::rows::{dek_row, delete_dek, SealedSecret};
use super::StoreError;

type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: String,
    pub connection_id: String,
    pub owner: String,
    pub return_to: Option<String>,
    pub created_by: String,
    pub expires_at: i64,
    pub opened_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The issuer at which the person must prove they are the owner (`None`: no proof).
    pub proof_issuer: Option<String>,
    pub proof_role: Option<String>,
    pub proven_at: Option<i64>,
    pub binding_hash: Option<Vec<u8>>,
    pub nonce_hash: Option<Vec<u8>>,
    /// The PKCE verifier of the current stage, sealed.
    pub sealed: Option<SealedSecret>,
}

const COLS: &str = "s.id, s.connection_id, s.owner, s.return_to, s.created_by, s.expires_at, s.opened_at, s.finished_at, \
    s.proof_issuer, s.proof_role, s.proven_at, s.binding_hash, s.nonce_hash, s.verifier, d.id, d.key_version, d.binding, d.wrapped";

fn session_row(c: &Conn<'_>, r: &Row<'_>) -> Result<SessionRow> {
    integrity::verify(c, &CONNECT_SESSIONS, r, 18)?;
    let verifier: Option<Vec<u8>> = r.get(13)?;
    let dek_id: Option<i64> = r.get(14)?;
    let sealed = match (verifier, dek_id) {
        (Some(ciphertext), Some(_)) => Some(SealedSecret { dek: dek_row(r, 14)?, ciphertext }),
        _ => None,
    };
    Ok(SessionRow {
        id: r.get(0)?,
        connection_id: r.get(1)?,
        owner: r.get(2)?,
        return_to: r.get(3)?,
        created_by: r.get(4)?,
        expires_at: r.get(5)?,
        opened_at: r.get(6)?,
        finished_at: r.get(7)?,
        proof_issuer: r.get(8)?,
        proof_role: r.get(9)?,
        proven_at: r.get(10)?,
        binding_hash: r.get(11)?,
        nonce_hash: r.get(12)?,
        sealed,
    })
}

fn session_where(c: &Conn<'_>, cond: &str, key: &dyn super::sql::ToP, now: i64) -> Result<Option<SessionRow>> {
    let sql = format!(
        "SELECT {COLS}, {} FROM connect_sessions s LEFT JOIN deks d ON d.id = s.dek_id \
         WHERE {cond} AND s.finished_at IS NULL AND s.expires_at > ?2",
        CONNECT_SESSIONS.columns()
    );
    c.query_opt(&sql, params![key, now], |r| session_row(c, r))
}

/// What a new session stores.
#[derive(Debug)]
pub struct NewSession<'a> {
    pub id: &'a str,
    pub connection_id: &'a str,
    pub owner: &'a str,
    pub return_to: Option<&'a str>,
    pub created_by: &'a str,
    pub proof_issuer: Option<&'a str>,
    pub proof_role: Option<&'a str>,
    pub now: i64,
    pub expires_at: i64,
}

pub fn insert_session(c: &Conn<'_>, s: &NewSession<'_>) -> Result<()> {
    c.execute(
        "INSERT INTO connect_sessions (id, connection_id, owner, return_to, created_by, created_at, expires_at, proof_issuer, proof_role) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![s.id, s.connection_id, s.owner, s.return_to, s.created_by, s.now, s.expires_at, s.proof_issuer, s.proof_role],
    )?;
    integrity::seal(c, &CONNECT_SESSIONS, s.id, Checked::new_row())
}

/// A link not yet opened, finished or expired.
pub fn unopened_session(c: &Conn<'_>, id: &str, now: i64) -> Result<Option<SessionRow>> {
    session_where(c, "s.id = ?1 AND s.opened_at IS NULL", &id, now)
}

/// The secrets of one stage: where the browser is sent next.
#[derive(Debug)]
pub struct Stage<'a> {
    /// Hash of the `state` of the redirect (the issuer's for proof, the provider's otherwise).
    pub state_hash: &'a [u8],
    pub nonce_hash: &'a [u8],
    /// The stage's PKCE verifier, sealed under data key `dek_id`.
    pub dek_id: i64,
    pub verifier: &'a [u8],
    /// Proof stage (the issuer) or provider stage.
    pub proof: bool,
}

/// Opens a link (single use): records the browser binding and the first stage. `false`
/// if it was opened already, finished or expired.
pub fn open_session(c: &Conn<'_>, id: &str, now: i64, binding_hash: &[u8], stage: &Stage<'_>) -> Result<bool> {
    let state_col = if stage.proof { "proof_state_hash" } else { "state_hash" };
    let checked = integrity::check(c, &CONNECT_SESSIONS, id)?;
    let n = c.execute(
        &format!(
            "UPDATE connect_sessions SET opened_at = ?2, binding_hash = ?3, {state_col} = ?4, nonce_hash = ?5, dek_id = ?6, verifier = ?7 \
             WHERE id = ?1 AND opened_at IS NULL AND finished_at IS NULL AND expires_at > ?2"
        ),
        params![id, now, binding_hash, stage.state_hash, stage.nonce_hash, stage.dek_id, stage.verifier],
    )?;
    if n == 1 {
        integrity::seal(c, &CONNECT_SESSIONS, id, checked)?;
    }
    Ok(n == 1)
}

/// The session waiting for owner proof with this (issuer) state.
pub fn session_by_proof_state(c: &Conn<'_>, proof_state_hash: &[u8], now: i64) -> Result<Option<SessionRow>> {
    session_where(c, "s.proof_state_hash = ?1 AND s.opened_at IS NOT NULL AND s.proven_at IS NULL", &proof_state_hash, now)
}

/// Owner proof passed: the proof stage is spent and the provider stage begins. `false` if
/// the proof stage was already spent (a replayed proof callback).
pub fn prove_session(c: &Conn<'_>, id: &str, proof_state_hash: &[u8], now: i64, next: &Stage<'_>) -> Result<bool> {
    let old_dek: Option<Option<i64>> =
        c.query_opt("SELECT dek_id FROM connect_sessions WHERE id = ?1 AND proof_state_hash = ?2", params![id, proof_state_hash], |r| {
            r.get(0)
        })?;
    let Some(old_dek) = old_dek else { return Ok(false) };
    let checked = integrity::check(c, &CONNECT_SESSIONS, id)?;
    let n = c.execute(
        "UPDATE connect_sessions SET proof_state_hash = NULL, proven_at = ?3, state_hash = ?4, nonce_hash = ?5, dek_id = ?6, verifier = ?7 \
         WHERE id = ?1 AND proof_state_hash = ?2 AND proven_at IS NULL AND finished_at IS NULL",
        params![id, proof_state_hash, now, next.state_hash, next.nonce_hash, next.dek_id, next.verifier])?;
    if n != 1 {
        return Ok(false);
    }
    integrity::seal(c, &CONNECT_SESSIONS, id, checked)?;
    if let Some(d) = old_dek {
        delete_dek(c, d)?;
    }
    Ok(true)
}

/// The session a provider callback's state belongs to: opened, proven where proof is
/// required, not finished, not expired.
pub fn session_by_state(c: &Conn<'_>, state_hash: &[u8], now: i64) -> Result<Option<SessionRow>> {
    session_where(
        c,
        "s.state_hash = ?1 AND s.opened_at IS NOT NULL AND (s.proof_issuer IS NULL OR s.proven_at IS NOT NULL)",
        &state_hash,
        now,
    )
}

/// Ends a session (consumed, or refused for good); `false` if it had ended already.
pub fn finish_session(c: &Conn<'_>, id: &str, now: i64) -> Result<bool> {
    let checked = integrity::check(c, &CONNECT_SESSIONS, id)?;
    let n = c.execute("UPDATE connect_sessions SET finished_at = ?2 WHERE id = ?1 AND finished_at IS NULL", params![id, now])?;
    if n == 1 {
        integrity::seal(c, &CONNECT_SESSIONS, id, checked)?;
    }
    Ok(n == 1)
}

/// Deletes the sessions `cond` selects (`?1` bound to `arg`) with their data keys.
fn delete_sessions_where(c: &Conn<'_>, cond: &str, arg: &dyn super::sql::ToP) -> Result<u64> {
    let ids: Vec<String> = c.query_all(&format!("SELECT id FROM connect_sessions WHERE {cond}"), params![arg], |r| r.get(0))?;
    for id in &ids {
        let dek: Option<i64> =
            c.query_opt("SELECT dek_id FROM connect_sessions WHERE id = ?1", params![id], |r| r.get::<Option<i64>>(0))?.flatten();
        integrity::delete(c, &CONNECT_SESSIONS, id)?;
        if let Some(d) = dek {
            delete_dek(c, d)?;
        }
    }
    Ok(ids.len() as u64)
}

/// Deletes sessions that are finished or expired, with their data keys.
pub fn purge_sessions(c: &Conn<'_>, now: i64) -> Result<u64> {
    delete_sessions_where(c, "finished_at IS NOT NULL OR expires_at <= ?1", &now)
}

/// Deletes every session of a connection with its data key (before the connection goes:
/// the foreign key would otherwise take the sessions and leave their keys behind).
pub fn delete_sessions_of(c: &Conn<'_>, connection_id: &str) -> Result<u64> {
    delete_sessions_where(c, "connection_id = ?1", &connection_id)
}

/// Connect sessions holding a sealed verifier (each owns a data key).
pub fn count_session_deks(c: &Conn<'_>) -> Result<u64> {
    Ok(c.query_one("SELECT count(*) FROM connect_sessions WHERE dek_id IS NOT NULL", params![], |r| r.get::<i64>(0))? as u64)
}
