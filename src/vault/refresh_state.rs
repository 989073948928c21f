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
    /// When a release last refreshed this credential's still-valid token.
    pub on_demand_refresh_at: Option<i64>,
    /// The lifetime the provider gave the stored token, when known.
    pub issued_lifetime: Option<i64>,
}

/// Whether a completed connect flow changed the provider account behind a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountChange {
    /// There was no credential before.
    New,
    Same,
    Different,
    /// The previous or the new account is not known: nothing is revoked.
    Unknown,
}

/// What storing a connected credential replaced.
#[derive(Debug)]
pub struct Replacement {
    pub change: AccountChange,
    /// The replaced credential's refresh token, when it should be revoked (the account differs).
    pub previous_refresh: Option<Secret>,
}

/// A provider's scope string as scopes; `None` when absent. One that cannot be parsed makes
/// the scopes unknown: the tokens must be stored (a refresh has already rotated the refresh
/// token), and scope enforcement treats unknown scopes as "holds more than allowed".
fn parse_scopes(connection: &ConnectionId, raw: Option<&str>) -> Option<HeldScopes> {
    // Some providers separate scopes with commas.
    match Scope::parse_list(&raw?.replace(',', " ")) {
        Ok(list) => Some(HeldScopes::Known(list)),
        Err(_) => {
            tracing::warn!(connection = %connection, "the provider's scope string could not be parsed; the credential's scopes are now unknown");
            Some(HeldScopes::Unknown)
        }
    }
}

impl Vault {
    /// Stores the tokens of a refresh that started from `version`: fails with a conflict if
    /// the credential changed meanwhile. Keeps the old refresh token and scopes when the
    /// provider returns none.
    pub fn store_refreshed(
        &self,
        connection: &ConnectionId,
        owner: &Owner,
        tokens: TokenSet,
        version: i64,
        old_refresh: Option<Secret>,
        old_scopes: HeldScopes,
    ) -> Result<()> {
        let now = self.clock.now();
        let scopes = parse_scopes(connection, tokens.scope.as_deref()).unwrap_or(old_scopes);
        let lifetime = Some(tokens.expires_in);
        let secret = CredentialSecret::OAuth2 {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token.or(old_refresh),
            expires_at: tokens.expires_in.map(|s| now + s),
            scopes,
            token_type: tokens.token_type,
            instance_url: tokens.instance_url,
        };
        self.store.write(|tx| {
            let (id, version, _) =
                self.write_credential(tx, connection, owner, ConnectionKind::Oauth2, &secret, now, Some(version), None, lifetime)?;
            let detail = json!({"credential_id": id, "version": version});
            self.audit(tx, Event::new(&Actor::System.name(), "credential.refresh", format!("{connection}/{owner}"), Outcome::Ok, detail))?;
            Ok(())
        })
    }

    /// Stores the tokens of a completed connect flow for `owner`, replacing any credential
    /// the owner had. `account` is the provider account of the new tokens, when known;
    /// `requested` the scopes asked for (RFC 6749 §5.1: a response without `scope` granted
    /// exactly those). The replaced credential's refresh token is returned so that the
    /// caller can revoke it once this is committed — only if the account differs.
    pub fn store_connected(
        &self,
        requester: &str,
        connection: &ConnectionId,
        owner: &Owner,
        tokens: TokenSet,
        account: Option<(&str, &str)>,
        requested: &[Scope],
    ) -> Result<Replacement> {
        let now = self.clock.now();
        let scopes = match parse_scopes(connection, tokens.scope.as_deref()) {
            Some(s) => s,
            None if !requested.is_empty() => HeldScopes::Known(requested.to_vec()),
            None => HeldScopes::Unknown,
        };
        let lifetime = Some(tokens.expires_in);
        let secret = CredentialSecret::OAuth2 {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            expires_at: tokens.expires_in.map(|s| now + s),
            scopes,
            token_type: tokens.token_type,
            instance_url: tokens.instance_url,
        };
        let target = format!("{connection}/{owner}");
        self.store.write(|tx| {
            let previous = match rows::get_credential(tx, connection.as_str(), &owner.to_string())? {
                Some(row) => {
                    let old_account = row.meta.account.clone();
                    let opened = self.open_credential_row(row)?;
                    let refresh = match opened.secret {
                        CredentialSecret::OAuth2 { refresh_token, .. } => refresh_token,
                        CredentialSecret::ApiKey(_) => None,
                    };
                    Some((old_account, refresh))
                }
                None => None,
            };
            let (id, version, _) =
                self.write_credential(tx, connection, owner, ConnectionKind::Oauth2, &secret, now, None, account, lifetime)?;
            let Some((old_account, previous_refresh)) = previous else {
                let detail = json!({"credential_id": id, "version": version, "requested_by": requester,
                    "account": account.map(|(iss, sub)| json!({"iss": iss, "sub": sub}))});
                self.audit(tx, Event::new(&Actor::System.name(), "credential.connect", target.as_str(), Outcome::Ok, detail))?;
                return Ok(Replacement { change: AccountChange::New, previous_refresh: None });
            };
            let change = match (&old_account, account) {
                (Some((oi, os)), Some((ni, ns))) if oi == ni && os == ns => AccountChange::Same,
                (Some(_), Some(_)) => AccountChange::Different,
                _ => AccountChange::Unknown,
            };
            let revocation = match (change, &previous_refresh) {
                (AccountChange::Different, Some(_)) => "pending: the account differs",
                (AccountChange::Different, None) => "not needed: the previous credential had no refresh token",
                (AccountChange::Same, _) => "not attempted: same provider account (revoking would end the new grant too)",
                _ => "not attempted: the provider account of the previous or the new tokens is unknown",
            };
            let detail = json!({"credential_id": id, "version": version, "requested_by": requester,
                "previous_account": old_account.as_ref().map(|(iss, sub)| json!({"iss": iss, "sub": sub})),
                "account": account.map(|(iss, sub)| json!({"iss": iss, "sub": sub})), "revocation": revocation});
            self.audit(tx, Event::new(&Actor::System.name(), "credential.replaced", target.as_str(), Outcome::Ok, detail))?;
            let previous_refresh = if change == AccountChange::Different { previous_refresh } else { None };
            Ok(Replacement { change, previous_refresh })
        })
    }

    /// Audits what revoking a replaced credential's refresh token came to.
    pub fn audit_previous_revocation(&self, connection: &ConnectionId, owner: &Owner, outcome: &str) -> Result<()> {
        let event = Event::new(
            &Actor::System.name(),
            "credential.revoke_previous",
            format!("{connection}/{owner}"),
            if outcome == "revoked" { Outcome::Ok } else { Outcome::Failed },
            json!({"revocation": outcome}),
        );
        self.store.write(|tx| self.audit(tx, event))?;
        Ok(())
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
        let (on_demand_refresh_at, issued_lifetime) = (cred.meta.on_demand_refresh_at, cred.meta.issued_lifetime);
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
            on_demand_refresh_at,
            issued_lifetime,
        }))
    }

    /// Takes the refresh lease (cross-process single flight) if the credential is still at
    /// `version` (`None`: whatever its version).
    pub fn acquire_refresh_lease(&self, credential_id: &str, holder: &str, ttl_ms: i64, version: Option<i64>) -> Result<bool> {
        let now = self.clock.now_millis();
        Ok(self.store.write(|tx| rows::acquire_refresh_lease(tx, credential_id, holder, now, now + ttl_ms, version))?)
    }

    /// Claims credentials due for a refresh (their lease, for `ttl_ms`) that no other
    /// replica has claimed: (id, connection, owner).
    pub fn claim_due_refreshes(&self, holder: &str, ttl_ms: i64, limit: usize) -> Result<Vec<(String, String, String)>> {
        let (now, now_ms) = (self.clock.now(), self.clock.now_millis());
        Ok(self.store.write(|tx| rows::claim_due_refreshes(tx, now, now_ms, holder, now_ms + ttl_ms, limit))?)
    }

    /// The provider answered a release's refresh of a still-valid token: the credential's
    /// on-demand cooldown starts now. (A refresh that never got an answer, because its
    /// process died, starts none.)
    pub fn mark_on_demand_refresh(&self, credential_id: &str) -> Result<()> {
        let now = self.clock.now();
        Ok(self.store.write(|tx| rows::mark_on_demand_refresh(tx, credential_id, now))?)
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

    pub fn next_refresh_due(&self) -> Result<Option<i64>> {
        Ok(self.store.read(rows::next_refresh_due)?)
    }

    pub fn credentials_by_status(&self) -> Result<Vec<(CredentialStatus, u64)>> {
        Ok(self.store.read(rows::credentials_by_status)?)
    }
}
