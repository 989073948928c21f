//! The refresh state of OAuth credentials: what a refresh needs, the single-flight lease,
//! failures and back-off, `needs_reauth`, and storing the tokens a provider returned.

use serde_json::json;

use super::connections::parse_stored;
use super::{Actor, Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::model::oauth::TokenSet;
use crate::model::{ConnectionId, ConnectionKind, ConnectionSpec, CredentialSecret, CredentialStatus, HeldScopes, Owner, Scope};
use crate::secret::Secret;
use crate::store::rows;

/// Everything a refresh needs, read in one go.
#[derive(Debug)]
pub struct RefreshMaterial {
    pub credential_id: String,
    pub version: i64,
    pub status: CredentialStatus,
    pub spec: ConnectionSpec,
    pub client_secret: Option<Secret>,
    pub refresh_token: Option<Secret>,
    pub expires_at: Option<i64>,
    pub scopes: HeldScopes,
    pub refresh_due_at: Option<i64>,
    pub refresh_failures: i64,
}

impl Vault {
    /// Stores tokens from a code exchange (`refresh_of: None`) or a refresh (the version
    /// the refresh started from). A refresh keeps the old refresh token and scopes when
    /// the provider returns none.
    pub fn store_tokens(
        &self,
        connection: &ConnectionId,
        owner: &Owner,
        tokens: TokenSet,
        refresh_of: Option<(i64, Option<Secret>, HeldScopes)>,
    ) -> Result<()> {
        let now = self.clock.now();
        let (refresh_of_version, old_refresh, old_scopes) = match refresh_of {
            Some((v, r, s)) => (Some(v), r, s),
            None => (None, None, HeldScopes::Unknown),
        };
        let scopes = match &tokens.scope {
            // Some providers separate scopes with commas.
            Some(s) => match Scope::parse_list(&s.replace(',', " ")) {
                Ok(list) => HeldScopes::Known(list),
                Err(_) => {
                    // On a refresh the provider has already rotated the refresh token, so the
                    // tokens must be stored; the scopes become unknown, which scope
                    // enforcement treats as "holds more than allowed".
                    tracing::warn!(connection = %connection, "the provider's scope string could not be parsed; the credential's scopes are now unknown");
                    HeldScopes::Unknown
                }
            },
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
        let spec = parse_stored(&conn)?;
        let client_secret = self.open_client_secret(&conn)?;
        let (id, version, status) = (cred.meta.id.clone(), cred.meta.secret_version, cred.meta.status);
        let (refresh_due_at, refresh_failures) = (cred.meta.refresh_due_at, cred.meta.refresh_failures);
        let opened = self.open_credential_row(cred)?;
        let (refresh_token, expires_at, scopes) = match opened.secret {
            CredentialSecret::OAuth2 { refresh_token, expires_at, scopes, .. } => (refresh_token, expires_at, scopes),
            CredentialSecret::ApiKey(_) => (None, None, HeldScopes::Unknown),
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

    pub fn credentials_by_status(&self) -> Result<Vec<(CredentialStatus, u64)>> {
        Ok(self.store.read(rows::credentials_by_status)?)
    }
}
