//! OAuth bookkeeping in the vault: connect sessions (single-use links, sealed PKCE
//! verifiers, hashed state) and the refresh state of credentials (lease, failures,
//! needs-reauth). The HTTP side lives in `crate::oauth`.

use serde_json::json;

use super::{new_id, Actor, Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::crypto::{sha256, Binding};
use crate::model::{ConnectionId, ConnectionKind, ConnectionSpec, CredentialSecret, Owner, Scope, ValidationError};
use crate::oauth::client::Tokens;
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

/// Everything a refresh needs, read in one go.
#[derive(Debug)]
pub struct RefreshMaterial {
    pub credential_id: String,
    pub version: i64,
    pub status: String,
    pub spec: ConnectionSpec,
    pub client_secret: Option<Secret>,
    pub refresh_token: Option<Secret>,
    pub expires_at: Option<i64>,
    pub scopes: Vec<Scope>,
    pub refresh_due_at: Option<i64>,
    pub refresh_failures: i64,
}

fn spec_of(row: &rows::ConnectionRow) -> Result<ConnectionSpec> {
    serde_json::from_str(&row.spec).map_err(|e| VaultError::Integrity(e.to_string()))
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
            let spec = spec_of(&row)?;
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
        let (state, _) = crate::oauth::client::pkce()?;
        let (verifier, challenge) = crate::oauth::client::pkce()?;
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
                spec: spec_of(&row)?,
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
            spec: spec_of(&row)?,
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

    /// Stores tokens from a code exchange (`refresh_of: None`) or a refresh (the version
    /// the refresh started from). A refresh keeps the old refresh token and scopes when
    /// the provider returns none.
    pub fn store_tokens(
        &self,
        connection: &ConnectionId,
        owner: &Owner,
        tokens: Tokens,
        refresh_of: Option<(i64, Option<Secret>, Vec<Scope>)>,
    ) -> Result<()> {
        let now = self.clock.now();
        let (refresh_of_version, old_refresh, old_scopes) = match refresh_of {
            Some((v, r, s)) => (Some(v), r, s),
            None => (None, None, Vec::new()),
        };
        let scopes = match &tokens.scope {
            Some(s) => Scope::parse_list(&s.replace(',', " ")).unwrap_or_default(),
            None => old_scopes,
        };
        let secret = CredentialSecret::OAuth2 {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token.or(old_refresh),
            expires_at: tokens.expires_in.map(|s| now + s),
            scopes,
            token_type: tokens.token_type,
            instance_url: tokens.instance_url,
        };
        let action = if refresh_of_version.is_some() { "credential.refresh" } else { "credential.connect" };
        self.store.write(|tx| {
            let (id, version, _) =
                self.write_credential(tx, connection, owner, ConnectionKind::Oauth2, &secret, now, refresh_of_version)?;
            self.audit(
                tx,
                Event::new(
                    &Actor::System.name(),
                    action,
                    format!("{connection}/{owner}"),
                    Outcome::Ok,
                    json!({"credential_id": id, "version": version}),
                ),
            )?;
            Ok(())
        })
    }

    /// Reads what a refresh of (connection, owner) needs. `None` if there is no credential.
    pub fn refresh_material(&self, connection: &ConnectionId, owner: &Owner) -> Result<Option<RefreshMaterial>> {
        let (conn, cred) = self.store.read(|c| {
            Ok::<_, VaultError>((
                rows::get_connection(c, connection.as_str())?,
                rows::get_credential(c, connection.as_str(), &owner.to_string())?,
            ))
        })?;
        let (Some(conn), Some(cred)) = (conn, cred) else { return Ok(None) };
        let spec = spec_of(&conn)?;
        let client_secret = self.open_client_secret(&conn)?;
        let (id, version, status) = (cred.meta.id.clone(), cred.meta.secret_version, cred.meta.status.clone());
        let (refresh_due_at, refresh_failures) = (cred.meta.refresh_due_at, cred.meta.refresh_failures);
        let opened = self.open_credential_row(cred)?;
        let (refresh_token, expires_at, scopes) = match opened.secret {
            CredentialSecret::OAuth2 { refresh_token, expires_at, scopes, .. } => (refresh_token, expires_at, scopes),
            CredentialSecret::ApiKey(_) => (None, None, Vec::new()),
        };
        Ok(Some(RefreshMaterial {
            credential_id: id,
            version,
            status,
            spec,
            client_secret,
            refresh_token,
            expires_at,
            scopes,
            refresh_due_at,
            refresh_failures,
        }))
    }

    pub fn acquire_refresh_lease(&self, credential_id: &str, holder: &str, ttl_ms: i64) -> Result<bool> {
        let now = self.clock.now_millis();
        Ok(self.store.write(|tx| rows::acquire_refresh_lease(tx, credential_id, holder, now, now + ttl_ms))?)
    }

    pub fn release_refresh_lease(&self, credential_id: &str, holder: &str) -> Result<()> {
        Ok(self.store.write(|tx| rows::release_refresh_lease(tx, credential_id, holder))?)
    }

    /// Whether another holder's lease is still live.
    pub fn refresh_in_flight(&self, credential_id: &str) -> Result<bool> {
        let now = self.clock.now_millis();
        Ok(self.store.read(|c| rows::refresh_lease(c, credential_id))?.is_some_and(|until| until > now))
    }

    /// A transient refresh failure: tokens kept, next attempt at `retry_at`.
    pub fn record_refresh_failure(&self, credential_id: &str, holder: &str, error: &str, retry_at: i64) -> Result<()> {
        Ok(self.store.write(|tx| rows::refresh_failed(tx, credential_id, holder, error, retry_at))?)
    }

    /// The provider refused the grant: the credential needs the owner to reconnect.
    pub fn mark_needs_reauth(&self, connection: &ConnectionId, owner: &Owner, credential_id: &str, code: &str) -> Result<()> {
        let now = self.clock.now();
        self.store.write(|tx| {
            rows::mark_needs_reauth(tx, credential_id, &format!("provider refused the refresh token ({code})"), now)?;
            self.audit(
                tx,
                Event::new(
                    &Actor::System.name(),
                    "credential.needs_reauth",
                    format!("{connection}/{owner}"),
                    Outcome::Failed,
                    json!({"error": code}),
                ),
            )?;
            Ok(())
        })
    }

    /// Credentials due for refresh now, earliest first: (id, connection, owner).
    pub fn due_refreshes(&self, limit: usize) -> Result<Vec<(String, String, String)>> {
        let now = self.clock.now();
        Ok(self.store.read(|c| rows::due_refreshes(c, now, limit))?)
    }

    pub fn next_refresh_due(&self) -> Result<Option<i64>> {
        Ok(self.store.read(rows::next_refresh_due)?)
    }

    pub fn credentials_by_status(&self) -> Result<Vec<(String, u64)>> {
        Ok(self.store.read(rows::credentials_by_status)?)
    }

    /// Removes finished and expired connect sessions.
    pub fn purge_connect_sessions(&self) -> Result<u64> {
        let now = self.clock.now();
        Ok(self.store.write(|tx| rows::purge_sessions(tx, now))?)
    }
}
