//! Connect links: who may create one, opening one, and the provider's callback.

use super::Services;
use crate::model::{ConnectionId, Owner, OwnerKind};
use crate::policy::{self, ReleaseRequest};
use crate::vault::VaultError;

/// Admin tokens look like this; anything else is treated as an agent token.
const ADMIN_TOKEN_PREFIX: &str = "lka_";

/// `POST /v1/connect/sessions`, parsed.
#[derive(Debug, Clone)]
pub struct NewConnectSession {
    pub connection: ConnectionId,
    pub owner: Owner,
    pub return_to: Option<String>,
}

/// A link to hand to the end user.
#[derive(Debug, Clone)]
pub struct CreatedSession {
    pub connect_url: String,
    pub expires_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("a valid admin or agent token is required")]
    Unauthorized,
    #[error("the agent's policy does not cover this connection for this owner")]
    Forbidden,
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// Why a link could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    /// Unknown, used or expired.
    Invalid,
    /// The provider's configuration could not be loaded.
    ProviderUnreachable,
}

/// The provider's redirect back, as received.
#[derive(Debug, Default)]
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub iss: Option<String>,
    pub error: Option<String>,
}

/// How a callback ended.
#[derive(Debug, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// No state: not a response to any link of ours.
    MissingState,
    /// The state matches no open session (forged, replayed or expired).
    UnknownState,
    /// The session is consumed; `Err` holds a short code for `return_to?error=`.
    Finished { return_to: Option<String>, result: Result<(), &'static str> },
}

impl Services {
    /// Creates a single-use connect link, if `bearer` may.
    pub async fn create_connect_session(&self, bearer: &str, req: NewConnectSession) -> Result<CreatedSession, ConnectError> {
        let requester = self.connect_requester(bearer, &req).await?;
        let NewConnectSession { connection, owner, return_to } = req;
        let (id, expires_at) = self.blocking(move |v| v.create_connect_session(&requester, &connection, &owner, return_to)).await?;
        Ok(CreatedSession { connect_url: format!("{}/v1/connect/s/{id}", self.tokens.public_url()), expires_at })
    }

    /// Who is asking, for the audit trail: an admin token, or an agent whose policy covers
    /// the connection for that owner.
    async fn connect_requester(&self, bearer: &str, req: &NewConnectSession) -> Result<String, ConnectError> {
        if bearer.starts_with(ADMIN_TOKEN_PREFIX) {
            let token = bearer.to_owned();
            return match self.blocking(move |v| v.authenticate_admin(&token)).await {
                Ok(admin) => Ok(admin.actor().name()),
                Err(VaultError::Unauthorized) => Err(ConnectError::Unauthorized),
                Err(e) => Err(e.into()),
            };
        }
        let claims = self.tokens.verify(bearer, self.vault.clock().now()).map_err(|_| ConnectError::Unauthorized)?;
        let principal = claims.principal();
        let agent_id = principal.agent_id.clone();
        let agent = self.blocking(move |v| v.active_agent(&agent_id)).await?.ok_or(ConnectError::Unauthorized)?;
        let request = match req.owner.kind() {
            OwnerKind::User => ReleaseRequest { user_id: Some(req.owner.id().to_owned()), ..Default::default() },
            OwnerKind::Tenant => ReleaseRequest { tenant_id: Some(req.owner.id().to_owned()), ..Default::default() },
        };
        match policy::authorize(&agent.policy, &req.connection, &principal, &request) {
            Ok((_, owner)) if owner == req.owner => Ok(format!("agent:{}", agent.id)),
            _ => Err(ConnectError::Forbidden),
        }
    }

    /// Opens a link once: the provider URL to redirect to (state and PKCE S256).
    pub async fn open_connect_link(&self, id: &str) -> Result<String, LinkError> {
        if id.len() > 80 || !id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
            return Err(LinkError::Invalid);
        }
        let id = id.to_owned();
        let opened = self.blocking(move |v| v.open_connect_session(&id)).await.map_err(|_| LinkError::Invalid)?;
        self.oauth.authorize_url(&opened).await.map_err(|e| {
            tracing::error!(error = %e, connection = %opened.connection, "cannot build the authorization URL");
            LinkError::ProviderUnreachable
        })
    }

    /// Checks state (single use), `iss` where sent, then exchanges the code and stores the
    /// credential. Every way the flow ends without storing is audited.
    pub async fn connect_callback(&self, cb: Callback) -> CallbackOutcome {
        let Some(state) = cb.state.filter(|s| !s.is_empty() && s.len() <= 256) else {
            return CallbackOutcome::MissingState;
        };
        let Ok(session) = self.blocking(move |v| v.finish_connect_session(&state)).await else {
            return CallbackOutcome::UnknownState;
        };
        let target = format!("{}/{}", session.connection, session.owner);
        let result = if let Some(err) = cb.error {
            Err(if err == "access_denied" { "access_denied" } else { "provider_error" })
        } else if let Some(code) = cb.code.filter(|c| !c.is_empty() && c.len() <= 4096) {
            match self.oauth.complete_connect(&session, &code, cb.iss.as_deref()).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::warn!(connection = %session.connection, reason = %e, "connect flow failed");
                    self.audit_connect_failure(&target, &e.to_string()).await;
                    return CallbackOutcome::Finished { return_to: session.return_to, result: Err("connect_failed") };
                }
            }
        } else {
            Err("invalid_request")
        };
        if let Err(code) = result {
            self.audit_connect_failure(&target, code).await;
        }
        CallbackOutcome::Finished { return_to: session.return_to, result }
    }

    /// Best effort: the user already gets the answer, and a failure to audit is logged.
    async fn audit_connect_failure(&self, target: &str, reason: &str) {
        let (t, r) = (target.to_owned(), reason.to_owned());
        let _ = self
            .blocking(move |v| {
                v.audit_connect_failure(&t, &r);
                Ok(())
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tokens::{Act, AgentClaims};
    use crate::model::NewConnection;
    use crate::service::testing::fixture;
    use crate::vault::Actor;

    fn session(owner: &str) -> NewConnectSession {
        NewConnectSession { connection: ConnectionId::parse("crm").unwrap(), owner: Owner::parse(owner).unwrap(), return_to: None }
    }

    #[tokio::test]
    async fn only_admins_and_covering_agents_create_links() {
        let f = fixture();
        let s = &f.services;
        let spec = serde_json::json!({"id": "crm", "kind": "oauth2", "oauth2": {"client_id": "c",
            "authorization_endpoint": "https://crm.example/authorize", "token_endpoint": "https://crm.example/token"}});
        s.vault.create_connection(&Actor::System, NewConnection::from_json(spec).unwrap()).unwrap();
        let agent = serde_json::json!({"id": "cal", "name": "cal", "policy": {"grants": [{"connection": "crm", "owners": "self"}]}});
        s.vault.create_agent(&Actor::System, serde_json::from_value(agent).unwrap()).unwrap();
        let now = f.clock.now();
        let token_for = |user: &str| {
            let claims = AgentClaims {
                iss: "http://vault.test".into(),
                aud: "http://vault.test".into(),
                sub: user.into(),
                client_id: "cal".into(),
                iat: now,
                nbf: now,
                exp: now + 60,
                jti: "j".into(),
                act: Some(Act { sub: "cal".into() }),
                tenant: None,
                roles: vec![],
            };
            s.tokens.sign(&claims).unwrap()
        };

        let created = s.create_connect_session(&f.admin_token, session("user:bob")).await.unwrap();
        assert!(created.connect_url.starts_with("http://vault.test/v1/connect/s/cs_"));
        let alice = token_for("alice");
        assert!(s.create_connect_session(&alice, session("user:alice")).await.is_ok(), "a self grant for its own user");
        assert!(matches!(s.create_connect_session(&alice, session("user:bob")).await, Err(ConnectError::Forbidden)));
        assert!(matches!(s.create_connect_session("lka_0000000000000000.x", session("user:bob")).await, Err(ConnectError::Unauthorized)));
        assert!(matches!(s.create_connect_session("garbage", session("user:bob")).await, Err(ConnectError::Unauthorized)));
        s.vault.set_agent_disabled(&Actor::System, &crate::model::AgentId::parse("cal").unwrap(), true).unwrap();
        assert!(matches!(s.create_connect_session(&alice, session("user:alice")).await, Err(ConnectError::Unauthorized)));
    }

    #[tokio::test]
    async fn callbacks_without_a_matching_session_store_nothing() {
        let f = fixture();
        let s = &f.services;
        assert_eq!(s.connect_callback(Callback::default()).await, CallbackOutcome::MissingState);
        let forged = Callback { state: Some("made-up".into()), code: Some("c".into()), ..Default::default() };
        assert_eq!(s.connect_callback(forged).await, CallbackOutcome::UnknownState);
        assert_eq!(s.open_connect_link("../etc").await, Err(LinkError::Invalid));
        assert_eq!(s.open_connect_link("cs_unknown").await, Err(LinkError::Invalid));
    }
}
