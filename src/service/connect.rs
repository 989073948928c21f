//! Connect links: who may create one, the confirmation a person sees, owner proof at the
//! owner's trusted issuer, and the provider's callback — each step bound to the browser
//! that continued the link.
//!
//! Rules (see docs/security.md, "Connect links"):
//! - An admin token may always create a link. An agent needs a grant with `connect: true`
//!   covering exactly that owner (`policy::authorize_connect`).
//! - A link made by an agent requires owner proof unless the connection turns it off: the
//!   person signs in at the issuer named by the owner's subject prefix, and the ID token's
//!   subject (for a tenant owner: its tenant, and the grant's `connect_role`) must be the
//!   owner's.
//! - Opening a link (GET) changes nothing; continuing it is a POST that binds the session
//!   to that browser with a cookie the callbacks require.

use super::Services;
use crate::auth::subject::{owner_prefix, IssuerConfig};
use crate::crypto::{hex, sha256};
use crate::model::oauth::random_token;
use crate::model::{ConnectionId, Owner, OwnerKind};
use crate::policy;
use crate::vault::{AccountChange, LinkView, NewLink, ProofPlan, SessionRefusal, VaultError};

/// Admin tokens look like this; anything else is treated as an agent token.
const ADMIN_TOKEN_PREFIX: &str = "lka_";
/// Cookies binding a browser to one session are named with this and a digest of the
/// session id, so that two links open in one browser do not overwrite each other.
const BINDING_COOKIE: &str = "lk_bind_";

/// `POST /v1/connect/sessions`, parsed.
#[derive(Debug, Clone)]
pub struct NewConnectSession {
    pub connection: ConnectionId,
    pub owner: Owner,
    pub return_to: Option<String>,
}

/// A link to hand to the person.
#[derive(Debug, Clone)]
pub struct CreatedSession {
    pub connect_url: String,
    pub expires_at: i64,
    /// Completing the flow will replace the owner's existing credential.
    pub replaces_existing: bool,
    pub owner_proof: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("a valid admin or agent token is required")]
    Unauthorized,
    #[error("the agent's policy does not allow connect links for this connection and owner")]
    Forbidden,
    /// Owner proof is required but cannot happen for this owner (the message says why).
    #[error("{0}")]
    ProofUnavailable(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// Why a link cannot be shown or continued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    /// Unknown, used or expired.
    Invalid,
    /// The provider's (or the issuer's) configuration could not be loaded.
    ProviderUnreachable,
}

/// What the confirmation page shows.
#[derive(Debug, Clone)]
pub struct LinkPage {
    pub service: String,
    /// The owner as a person would recognise it ("alice at Acme SSO").
    pub owner_label: String,
    pub owner: Owner,
    pub requester_label: String,
    /// The issuer the person will sign in at first, by name.
    pub proof_at: Option<String>,
}

/// A continued link: where the browser goes, and the binding cookie it must keep.
#[derive(Debug)]
pub struct Continued {
    pub redirect: String,
    pub cookie_name: String,
    pub cookie_value: String,
}

/// A redirect back (from the provider or, for owner proof, the issuer), as received.
#[derive(Debug, Default)]
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub iss: Option<String>,
    pub error: Option<String>,
    /// The browser's session cookies, by name (without a `__Host-` prefix, which the HTTP
    /// layer requires and strips when the vault is served over https).
    pub cookies: Vec<(String, String)>,
}

/// An authenticated asker of connect links ([`Services::connect_caller`]).
#[derive(Debug)]
pub struct ConnectCaller(Caller);

#[derive(Debug)]
enum Caller {
    /// The admin's actor name.
    Admin(String),
    Agent {
        principal: crate::policy::Principal,
        policy: crate::policy::Policy,
        id: String,
    },
}

/// How a callback ended.
#[derive(Debug, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// No state: not a response to any link of ours.
    MissingState,
    /// The state matches no open session (forged, replayed or expired).
    UnknownState,
    /// A session matches, but this browser did not continue it: nothing is stored.
    WrongBrowser,
    /// Owner proof passed: continue at the provider.
    Continue(String),
    /// Owner proof failed: the person is not the owner; the link is spent.
    NotTheOwner,
    /// The session is consumed; `Err` holds a short code for `return_to?error=`.
    Finished { return_to: Option<String>, result: Result<(), &'static str> },
}

/// The binding cookie's name for a session.
pub fn binding_cookie_name(session_id: &str) -> String {
    format!("{BINDING_COOKIE}{}", &hex(&sha256(session_id.as_bytes()))[..16])
}

fn binding_lookup(cookies: Vec<(String, String)>) -> impl Fn(&str) -> Option<String> {
    move |session_id| {
        let name = binding_cookie_name(session_id);
        cookies.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
    }
}

impl Services {
    /// Authenticates whoever asks for a connect link, before the request body is read:
    /// an admin token, or an agent token that is current (its agent active, its epoch not
    /// passed).
    pub async fn connect_caller(&self, bearer: &str) -> Result<ConnectCaller, ConnectError> {
        if bearer.starts_with(ADMIN_TOKEN_PREFIX) {
            let token = bearer.to_owned();
            return match self.blocking(move |v| v.authenticate_admin(&token)).await {
                Ok(admin) => Ok(ConnectCaller(Caller::Admin(admin.actor().name()))),
                Err(VaultError::Unauthorized) => Err(ConnectError::Unauthorized),
                Err(e) => Err(e.into()),
            };
        }
        let principal = self.agent_principal(bearer).ok_or(ConnectError::Unauthorized)?;
        let agent_id = principal.agent_id.clone();
        let agent = self.blocking(move |v| v.active_agent(&agent_id)).await?.ok_or(ConnectError::Unauthorized)?;
        if principal.epoch < agent.token_epoch {
            return Err(ConnectError::Unauthorized);
        }
        Ok(ConnectCaller(Caller::Agent { principal, policy: agent.policy, id: agent.id }))
    }

    /// Creates a single-use connect link, if `caller` may.
    pub async fn create_connect_session(&self, caller: ConnectCaller, req: NewConnectSession) -> Result<CreatedSession, ConnectError> {
        let (requester, proof) = self.connect_requester(caller, &req).await?;
        let NewConnectSession { connection, owner, return_to } = req;
        let link = NewLink { requester, connection, owner, return_to, proof: proof.clone() };
        let created = self.blocking(move |v| v.create_connect_session(link)).await?;
        Ok(CreatedSession {
            connect_url: format!("{}/v1/connect/s/{}", self.tokens.public_url(), created.id),
            expires_at: created.expires_at,
            replaces_existing: created.replaces_existing,
            owner_proof: proof.is_some(),
        })
    }

    /// Who is asking (for the audit trail and the page) and the owner proof their link
    /// needs: none for an admin token; for an agent, a grant with `connect: true` for exactly
    /// that owner, and proof at the owner's issuer unless the connection turns it off.
    async fn connect_requester(&self, caller: ConnectCaller, req: &NewConnectSession) -> Result<(String, Option<ProofPlan>), ConnectError> {
        let (principal, policy, agent_id) = match caller.0 {
            Caller::Admin(name) => return Ok((name, None)),
            Caller::Agent { principal, policy, id } => (principal, policy, id),
        };
        let grant = policy::authorize_connect(&policy, &req.connection, &principal, &req.owner).map_err(|_| ConnectError::Forbidden)?;
        // The role is asked of whoever proves membership of a tenant owner.
        let role = grant.connect_role.clone().filter(|_| req.owner.kind() == OwnerKind::Tenant);
        let connection = req.connection.clone();
        let spec = self.blocking(move |v| v.connection_spec(&connection)).await?;
        let proof = match spec.oauth2.as_ref() {
            Some(o) if o.owner_proof => Some(self.proof_plan(&req.owner, role).await?),
            _ => None,
        };
        Ok((format!("agent:{agent_id}"), proof))
    }

    /// Where the owner proves who they are: the trusted issuer named by the owner's subject
    /// prefix, which must have latchkey's OIDC client configured.
    async fn proof_plan(&self, owner: &Owner, role: Option<String>) -> Result<ProofPlan, ConnectError> {
        let unavailable = |why: &str| {
            ConnectError::ProofUnavailable(format!(
                "owner proof is required for links made by agents, but {why}; ask an operator for the link (admin token) or turn owner_proof off for this connection"
            ))
        };
        let Some(prefix) = owner_prefix(owner.id()).map(str::to_owned) else {
            return Err(unavailable("the owner names no trusted issuer (owners from an issuer look like user:<prefix>:<sub>)"));
        };
        let issuer =
            self.blocking(move |v| v.issuer_by_prefix(&prefix)).await?.ok_or_else(|| unavailable("no trusted issuer has that prefix"))?;
        if issuer.owner_proof.is_none() {
            return Err(unavailable("the owner's issuer has no owner_proof client configured"));
        }
        Ok(ProofPlan { issuer: issuer.issuer, role })
    }

    /// What the confirmation page of link `id` shows; changes nothing.
    pub async fn link_page(&self, id: &str) -> Result<LinkPage, LinkError> {
        if !valid_link_id(id) {
            return Err(LinkError::Invalid);
        }
        let id = id.to_owned();
        let view: LinkView = self.blocking(move |v| v.connect_link(&id)).await.map_err(|_| LinkError::Invalid)?;
        let issuer = match owner_prefix(view.owner.id()).map(str::to_owned) {
            Some(prefix) => self.blocking(move |v| v.issuer_by_prefix(&prefix)).await.ok().flatten(),
            None => None,
        };
        let requester_label = match view.requester.split_once(':') {
            Some(("agent", id)) => format!("the agent \u{201c}{id}\u{201d}"),
            Some(("admin" | "cli", _)) => "an operator of this vault".to_owned(),
            _ => view.requester.clone(),
        };
        let proof_at = match &view.proof_issuer {
            Some(url) => {
                let url = url.clone();
                let cfg = self.blocking(move |v| v.issuer(&url)).await.ok().flatten();
                Some(cfg.map(|c| issuer_name(&c)).unwrap_or_default())
            }
            None => None,
        };
        Ok(LinkPage {
            service: view.connection_name,
            owner_label: owner_label(&view.owner, issuer.as_ref()),
            owner: view.owner,
            requester_label,
            proof_at,
        })
    }

    /// Continues link `id` (the page's POST): binds it to this browser and sends the person
    /// to the owner's issuer (owner proof) or to the provider.
    pub async fn continue_link(&self, id: &str) -> Result<Continued, LinkError> {
        if !valid_link_id(id) {
            return Err(LinkError::Invalid);
        }
        let binding = random_token().map_err(|_| LinkError::ProviderUnreachable)?;
        let (sid, b) = (id.to_owned(), binding.clone());
        let stage = self.blocking(move |v| v.open_connect_session(&sid, &b)).await.map_err(|_| LinkError::Invalid)?;
        let redirect = match &stage.proof_issuer {
            Some(url) => {
                let url = url.clone();
                let issuer = self.blocking(move |v| v.issuer(&url)).await.ok().flatten().ok_or(LinkError::ProviderUnreachable)?;
                self.oauth.proof_authorize_url(&issuer, &stage).await
            }
            None => self.oauth.authorize_url(&stage).await,
        }
        .map_err(|e| {
            tracing::error!(error = %e, connection = %stage.connection, "cannot build the authorization URL");
            LinkError::ProviderUnreachable
        })?;
        Ok(Continued { redirect, cookie_name: binding_cookie_name(id), cookie_value: binding.expose().to_owned() })
    }

    /// The issuer's redirect back after the person signed in for owner proof.
    pub async fn proof_callback(&self, cb: Callback) -> CallbackOutcome {
        let Some(state) = cb.state.filter(|s| !s.is_empty() && s.len() <= 256) else { return CallbackOutcome::MissingState };
        let lookup = binding_lookup(cb.cookies);
        let p = match self.blocking(move |v| v.proof_session(&state, &lookup)).await {
            Ok(Ok(p)) => p,
            Ok(Err(SessionRefusal::WrongBrowser)) => return CallbackOutcome::WrongBrowser,
            Ok(Err(SessionRefusal::Unknown)) | Err(_) => return CallbackOutcome::UnknownState,
        };
        let target = format!("{}/{}", p.connection, p.owner);
        let url = p.issuer.clone();
        let issuer = match self.blocking(move |v| v.issuer(&url)).await {
            Ok(Some(i)) => i,
            _ => return self.refuse(&p.id, &target, "the owner's trusted issuer is gone").await,
        };
        let verified = match (cb.error, cb.code.filter(|c| !c.is_empty() && c.len() <= 4096)) {
            (None, Some(code)) => self.oauth.complete_proof(&issuer, &p, &code, cb.iss.as_deref()).await,
            _ => return self.refuse(&p.id, &target, "the issuer did not sign the person in").await,
        };
        let subject = match verified {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(connection = %p.connection, reason = %e, "owner proof failed");
                return self.refuse(&p.id, &target, &e.to_string()).await;
            }
        };
        let proven_as = match p.owner.kind() {
            OwnerKind::User => Some(issuer.owner_id(&subject.sub)),
            OwnerKind::Tenant => subject.tenant.as_deref().map(|t| issuer.owner_id(t)),
        };
        if proven_as.as_deref() != Some(p.owner.id()) {
            return self.not_the_owner(&p.id, &target, "the person who signed in is not the link's owner").await;
        }
        if p.role.as_ref().is_some_and(|r| !subject.roles.contains(r)) {
            return self.not_the_owner(&p.id, &target, "the person who signed in lacks the role the grant requires").await;
        }
        let sub = issuer.owner_id(&subject.sub);
        let stage = match self.blocking(move |v| v.proven(&p, &sub)).await {
            Ok(s) => s,
            Err(_) => return CallbackOutcome::UnknownState,
        };
        match self.oauth.authorize_url(&stage).await {
            Ok(url) => CallbackOutcome::Continue(url),
            Err(e) => {
                tracing::error!(error = %e, "cannot build the provider's authorization URL");
                CallbackOutcome::Finished { return_to: None, result: Err("provider_unreachable") }
            }
        }
    }

    async fn refuse(&self, id: &str, target: &str, reason: &str) -> CallbackOutcome {
        let (id, t, r) = (id.to_owned(), target.to_owned(), reason.to_owned());
        if let Err(e) = self.blocking(move |v| v.refuse_connect_session(&id, "connect.proof", &t, &r)).await {
            tracing::error!(error = %e, "could not record a refused owner proof");
        }
        CallbackOutcome::Finished { return_to: None, result: Err("owner_proof_failed") }
    }

    async fn not_the_owner(&self, id: &str, target: &str, reason: &str) -> CallbackOutcome {
        self.refuse(id, target, reason).await;
        CallbackOutcome::NotTheOwner
    }

    /// The provider's redirect back: checks state (single use) in the browser that holds
    /// the session's binding, `iss`, then exchanges the code and stores the credential.
    /// Every way the flow ends without storing is audited.
    pub async fn connect_callback(&self, cb: Callback) -> CallbackOutcome {
        let Some(state) = cb.state.filter(|s| !s.is_empty() && s.len() <= 256) else {
            return CallbackOutcome::MissingState;
        };
        let lookup = binding_lookup(cb.cookies);
        let session = match self.blocking(move |v| v.finish_connect_session(&state, &lookup)).await {
            Ok(Ok(s)) => s,
            Ok(Err(SessionRefusal::WrongBrowser)) => return CallbackOutcome::WrongBrowser,
            Ok(Err(SessionRefusal::Unknown)) | Err(_) => return CallbackOutcome::UnknownState,
        };
        let target = format!("{}/{}", session.connection, session.owner);
        let result = if let Some(err) = cb.error {
            Err(if err == "access_denied" { "access_denied" } else { "provider_error" })
        } else if let Some(code) = cb.code.filter(|c| !c.is_empty() && c.len() <= 4096) {
            match self.oauth.complete_connect(&session, &code, cb.iss.as_deref()).await {
                Ok(change) => {
                    tracing::info!(connection = %session.connection, account = ?change, "connected");
                    Ok(())
                }
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

    /// Best effort: the person already gets the answer, and a failure to audit is logged.
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

fn valid_link_id(id: &str) -> bool {
    id.len() <= 80 && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn issuer_name(i: &IssuerConfig) -> String {
    i.display_name.clone().unwrap_or_else(|| i.issuer.clone())
}

/// "alice at Acme SSO" for an issuer's owner; the owner id otherwise.
fn owner_label(owner: &Owner, issuer: Option<&IssuerConfig>) -> String {
    match issuer.and_then(|i| i.local_id(owner.id()).map(|local| (i, local))) {
        Some((i, local)) => match owner.kind() {
            OwnerKind::User => format!("{local} at {}", issuer_name(i)),
            OwnerKind::Tenant => format!("the organisation {local} at {}", issuer_name(i)),
        },
        None => owner.to_string(),
    }
}

impl AccountChange {
    /// For logs.
    pub fn describe(self) -> &'static str {
        match self {
            AccountChange::New => "new credential",
            AccountChange::Same => "same account reconnected",
            AccountChange::Different => "replaced by another account",
            AccountChange::Unknown => "replaced (account unknown)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tokens::{Act, AgentClaims};
    use crate::model::NewConnection;
    use crate::service::testing::fixture;
    use crate::vault::Actor;

    /// Authenticates `bearer`, then asks for a link.
    async fn create(s: &Services, bearer: &str, req: NewConnectSession) -> Result<CreatedSession, ConnectError> {
        let caller = s.connect_caller(bearer).await?;
        s.create_connect_session(caller, req).await
    }

    fn session(owner: &str) -> NewConnectSession {
        NewConnectSession { connection: ConnectionId::parse("crm").unwrap(), owner: Owner::parse(owner).unwrap(), return_to: None }
    }

    #[tokio::test]
    async fn only_admins_and_connect_grants_create_links() {
        let f = fixture();
        let s = &f.services;
        let spec = serde_json::json!({"id": "crm", "kind": "oauth2", "oauth2": {"client_id": "c", "owner_proof": false,
            "authorization_endpoint": "https://crm.example/authorize", "token_endpoint": "https://crm.example/token"}});
        s.vault.create_connection(&Actor::System, NewConnection::from_json(spec).unwrap()).unwrap();
        let agent = |id: &str, grant: serde_json::Value| {
            let body = serde_json::json!({"id": id, "name": id, "policy": {"grants": [grant]}});
            s.vault.create_agent(&Actor::System, serde_json::from_value(body).unwrap()).unwrap();
        };
        agent("reader", serde_json::json!({"connection": "crm", "owners": "any"}));
        agent("cal", serde_json::json!({"connection": "crm", "owners": "self", "connect": true}));
        let now = f.clock.now();
        let token = |agent: &str, user: Option<&str>| {
            let claims = AgentClaims {
                iss: "http://vault.test".into(),
                aud: "http://vault.test".into(),
                sub: user.unwrap_or(agent).into(),
                client_id: agent.into(),
                iat: now,
                nbf: now,
                exp: now + 60,
                jti: "j".into(),
                act: user.map(|_| Act { sub: agent.into() }),
                tenant: Some("idp:acme".into()),
                roles: vec![],
                // As the token endpoint would issue it now.
                epoch: s.vault.active_agent(agent).unwrap().map_or(0, |a| a.token_epoch),
            };
            s.tokens.sign(&claims).unwrap()
        };

        let created = create(s, &f.admin_token, session("user:bob")).await.unwrap();
        assert!(created.connect_url.starts_with("http://vault.test/v1/connect/s/cs_"));
        assert!(!created.replaces_existing && !created.owner_proof, "admin links need no owner proof");
        // Reading a credential never implies replacing it.
        let reader = token("reader", None);
        assert!(matches!(create(s, &reader, session("user:bob")).await, Err(ConnectError::Forbidden)));
        let alice = token("cal", Some("idp:alice"));
        assert!(create(s, &alice, session("user:idp:alice")).await.is_ok(), "a connect grant for its own user");
        assert!(matches!(create(s, &alice, session("user:idp:bob")).await, Err(ConnectError::Forbidden)));
        assert!(matches!(create(s, &alice, session("tenant:idp:acme")).await, Err(ConnectError::Forbidden)));
        assert!(matches!(create(s, "lka_0000000000000000.x", session("user:bob")).await, Err(ConnectError::Unauthorized)));
        assert!(matches!(create(s, "garbage", session("user:bob")).await, Err(ConnectError::Unauthorized)));
        let cal = crate::model::AgentId::parse("cal").unwrap();
        s.vault.set_agent_disabled(&Actor::System, &cal, true).unwrap();
        assert!(matches!(create(s, &alice, session("user:idp:alice")).await, Err(ConnectError::Unauthorized)));
        // Enabled again, the agent is active but its old token's epoch has passed.
        s.vault.set_agent_disabled(&Actor::System, &cal, false).unwrap();
        assert!(matches!(create(s, &alice, session("user:idp:alice")).await, Err(ConnectError::Unauthorized)));
        let fresh = token("cal", Some("idp:alice"));
        assert!(create(s, &fresh, session("user:idp:alice")).await.is_ok(), "a token issued after enabling works");
    }

    #[tokio::test]
    async fn links_made_by_agents_need_a_way_to_prove_the_owner() {
        let f = fixture();
        let s = &f.services;
        let spec = serde_json::json!({"id": "crm", "kind": "oauth2", "oauth2": {"client_id": "c",
            "authorization_endpoint": "https://crm.example/authorize", "token_endpoint": "https://crm.example/token"}});
        s.vault.create_connection(&Actor::System, NewConnection::from_json(spec).unwrap()).unwrap();
        let body = serde_json::json!({"id": "svc", "name": "svc", "policy": {"grants": [{"connection": "crm", "owners": "any", "connect": true}]}});
        s.vault.create_agent(&Actor::System, serde_json::from_value(body).unwrap()).unwrap();
        let now = f.clock.now();
        let claims = AgentClaims {
            iss: "http://vault.test".into(),
            aud: "http://vault.test".into(),
            sub: "svc".into(),
            client_id: "svc".into(),
            iat: now,
            nbf: now,
            exp: now + 60,
            jti: "j".into(),
            act: None,
            tenant: None,
            roles: vec![],
            epoch: i64::MAX,
        };
        let svc = s.tokens.sign(&claims).unwrap();
        // No issuer prefix, or no issuer with it: proof cannot happen, so no link.
        assert!(matches!(create(s, &svc, session("user:bob")).await, Err(ConnectError::ProofUnavailable(_))));
        assert!(matches!(create(s, &svc, session("user:idp:bob")).await, Err(ConnectError::ProofUnavailable(_))));
    }

    #[tokio::test]
    async fn callbacks_without_a_matching_session_store_nothing() {
        let f = fixture();
        let s = &f.services;
        assert_eq!(s.connect_callback(Callback::default()).await, CallbackOutcome::MissingState);
        let forged = Callback { state: Some("made-up".into()), code: Some("c".into()), ..Default::default() };
        assert_eq!(s.connect_callback(forged).await, CallbackOutcome::UnknownState);
        let forged = Callback { state: Some("made-up".into()), code: Some("c".into()), ..Default::default() };
        assert_eq!(s.proof_callback(forged).await, CallbackOutcome::UnknownState);
        assert_eq!(s.link_page("../etc").await.err(), Some(LinkError::Invalid));
        assert!(s.continue_link("cs_unknown").await.is_err());
    }
}
