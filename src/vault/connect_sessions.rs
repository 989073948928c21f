//! Connect sessions: single-use links for an end user to connect an account. The OAuth
//! `state` is stored only as a hash and the PKCE verifier is sealed like any secret.

use serde_json::json;

use super::connections::parse_stored;
use super::{new_id, Actor, Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::crypto::{sha256, Binding};
use crate::model::oauth::{random_token, Pkce};
use crate::model::{ConnectionId, ConnectionSpec, Owner, ValidationError};
use crate::secret::Secret;
use crate::store::rows;

/// Connect links live this long.
pub const SESSION_TTL: i64 = 600;
const VERIFIER: &str = "pkce_verifier";

fn session_binding(connection: &str, owner: &str, id: &str) -> Binding {
    Binding::new("connect_session", connection, owner, id, 1)
}

/// A link just opened: what the redirect to the provider needs.
#[derive(Debug)]
pub struct OpenedSession {
    pub connection: ConnectionId,
    pub spec: ConnectionSpec,
    pub state: Secret,
    pub challenge: String,
}

/// A callback matched to its session (consumed).
#[derive(Debug)]
pub struct FinishedSession {
    pub connection: ConnectionId,
    pub owner: Owner,
    pub spec: ConnectionSpec,
    pub return_to: Option<String>,
    pub verifier: Secret,
}

impl Vault {
    /// Creates a single-use connect link for `owner` (10 minutes).
    pub fn create_connect_session(
        &self,
        actor: &str,
        connection: &ConnectionId,
        owner: &Owner,
        return_to: Option<String>,
    ) -> Result<(String, i64)> {
        let now = self.clock.now();
        self.store.write(|tx| {
            let row =
                rows::get_connection(tx, connection.as_str())?.ok_or_else(|| VaultError::NotFound(format!("connection '{connection}'")))?;
            let spec = parse_stored(&row)?;
            let Some(o) = spec.oauth2.as_ref() else {
                return Err(ValidationError(format!("connection '{connection}' is not an oauth2 connection")).into());
            };
            if let Some(r) = &return_to {
                if !o.return_to_allowlist.iter().any(|allowed| {
                    r == allowed || r.starts_with(&format!("{}/", allowed.trim_end_matches('/'))) || r.starts_with(&format!("{allowed}?"))
                }) {
                    return Err(ValidationError("return_to is not in the connection's return_to_allowlist".into()).into());
                }
            }
            let id = new_id("cs_")? + &new_id("")?;
            rows::insert_session(tx, &id, connection.as_str(), &owner.to_string(), return_to.as_deref(), actor, now, now + SESSION_TTL)?;
            self.audit(
                tx,
                Event::new(
                    actor,
                    "connect.session",
                    format!("{connection}/{owner}"),
                    Outcome::Ok,
                    json!({"expires_at": now + SESSION_TTL}),
                ),
            )?;
            Ok((id, now + SESSION_TTL))
        })
    }

    /// Opens a connect link (single use): creates state and PKCE verifier.
    pub fn open_connect_session(&self, id: &str) -> Result<OpenedSession> {
        let now = self.clock.now();
        let gone = || VaultError::NotFound("connect link (it is invalid, used or expired)".into());
        let state = random_token()?;
        let Pkce { verifier, challenge } = Pkce::generate()?;
        self.store.write(|tx| {
            let s = rows::get_session(tx, id)?.ok_or_else(gone)?;
            let row = rows::get_connection(tx, &s.connection_id)?.ok_or_else(gone)?;
            let b = session_binding(&s.connection_id, &s.owner, &s.id);
            let (dek, dek_id) = self.new_dek(tx, &b)?;
            let sealed = dek.seal(verifier.expose().as_bytes(), &b, VERIFIER)?;
            if !rows::open_session(tx, id, now, &sha256(state.expose().as_bytes()), dek_id, &sealed)? {
                return Err(gone());
            }
            Ok(OpenedSession {
                connection: ConnectionId::parse(&s.connection_id)?,
                spec: parse_stored(&row)?,
                state: state.clone(),
                challenge: challenge.clone(),
            })
        })
    }

    /// Matches a callback's `state` to its session and consumes it.
    pub fn finish_connect_session(&self, state: &str) -> Result<FinishedSession> {
        let now = self.clock.now();
        let s = self
            .store
            .write(|tx| rows::finish_session(tx, &sha256(state.as_bytes()), now))?
            .ok_or_else(|| VaultError::NotFound("connect session for this state (forged, replayed or expired)".into()))?;
        let sealed = s.sealed.as_ref().ok_or_else(|| VaultError::Integrity("session without verifier".into()))?;
        let b = session_binding(&s.connection_id, &s.owner, &s.id);
        let verifier = self
            .open_dek(&sealed.dek, &b)?
            .open(&sealed.ciphertext, &b, VERIFIER)
            .map_err(|_| VaultError::Integrity("PKCE verifier failed to decrypt".into()))?;
        let verifier = Secret::new(String::from_utf8(verifier.to_vec()).map_err(|_| VaultError::Integrity("bad verifier".into()))?);
        let row =
            self.store.read(|c| rows::get_connection(c, &s.connection_id))?.ok_or_else(|| VaultError::NotFound("connection".into()))?;
        Ok(FinishedSession {
            connection: ConnectionId::parse(&s.connection_id)?,
            owner: Owner::parse(&s.owner)?,
            spec: parse_stored(&row)?,
            return_to: s.return_to,
            verifier,
        })
    }

    /// Audits the end of a connect flow that stored nothing.
    pub fn audit_connect_failure(&self, target: &str, reason: &str) {
        let ev = Event::new(&Actor::System.name(), "connect.callback", target, Outcome::Failed, json!({"reason": reason}));
        if let Err(e) = self.store.write(|tx| self.audit(tx, ev)) {
            tracing::error!(error = %e, "audit write failed");
        }
    }

    /// Removes finished and expired connect sessions.
    pub fn purge_connect_sessions(&self) -> Result<u64> {
        let now = self.clock.now();
        Ok(self.store.write(|tx| rows::purge_sessions(tx, now))?)
    }
}
