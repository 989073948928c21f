//! Agents: registered callers with an argon2id-hashed client secret and a policy.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Actor, Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::auth::secrets;
use crate::model::{AgentId, ValidationError};
use crate::policy::Policy;
use crate::secret::Secret;
use crate::store::identity::{self as rows, AgentRow};
use crate::time::rfc3339;

#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    pub id: String,
    pub client_id: String,
    pub name: String,
    pub policy: Policy,
    pub disabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /v1/admin/agents` body, validated as it is deserialised.
#[derive(Debug, Deserialize)]
#[serde(try_from = "NewAgentBody")]
pub struct NewAgent {
    pub id: AgentId,
    pub name: String,
    pub policy: Policy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAgentBody {
    id: AgentId,
    name: String,
    #[serde(default)]
    policy: Policy,
}

impl TryFrom<NewAgentBody> for NewAgent {
    type Error = ValidationError;
    fn try_from(b: NewAgentBody) -> std::result::Result<Self, ValidationError> {
        if b.name.is_empty() || b.name.chars().count() > 200 || b.name.chars().any(char::is_control) {
            return Err(ValidationError("name must be 1-200 characters without control characters".into()));
        }
        Ok(NewAgent { id: b.id, name: b.name, policy: b.policy })
    }
}

fn view(r: &AgentRow) -> Result<AgentView> {
    let policy: Policy =
        serde_json::from_str(&r.policy).map_err(|e| VaultError::Integrity(format!("agent '{}' has an unreadable policy: {e}", r.id)))?;
    Ok(AgentView {
        id: r.id.clone(),
        client_id: r.id.clone(),
        name: r.name.clone(),
        policy,
        disabled: r.disabled,
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
    })
}

/// A decision of the token endpoint, for the audit trail (ids and reasons, never a secret).
#[derive(Debug, Default, Serialize)]
pub struct TokenDecision {
    pub grant_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An agent as the release path needs it.
#[derive(Debug, Clone)]
pub struct AgentState {
    pub id: String,
    pub policy: Policy,
}

fn not_found(id: &AgentId) -> VaultError {
    VaultError::NotFound(format!("agent '{id}'"))
}

impl Vault {
    /// Registers an agent; the client secret is returned once.
    pub fn create_agent(&self, actor: &Actor, new: NewAgent) -> Result<(AgentView, Secret)> {
        let NewAgent { id, name, policy } = new;
        let (secret, hash) = secrets::generate()?;
        let now = self.clock.now();
        let row = AgentRow {
            id: id.as_str().to_owned(),
            name,
            secret_hash: hash,
            policy: serde_json::to_string(&policy).map_err(|e| VaultError::Integrity(e.to_string()))?,
            disabled: false,
            generation: 1,
            created_at: now,
            updated_at: now,
        };
        let view = self.store.write(|tx| {
            rows::insert_agent(tx, &row).map_err(|e| match e {
                crate::store::StoreError::Conflict => VaultError::Conflict(format!("agent '{id}' already exists")),
                other => other.into(),
            })?;
            self.audit(tx, Event::new(&actor.name(), "agent.create", id.as_str(), Outcome::Ok, json!({"grants": policy.grants.len()})))?;
            view(&row)
        })?;
        Ok((view, secret))
    }

    pub fn list_agents(&self) -> Result<Vec<AgentView>> {
        self.store.read(rows::list_agents)?.iter().map(view).collect()
    }

    pub fn get_agent(&self, id: &AgentId) -> Result<AgentView> {
        view(&self.store.read(|c| rows::get_agent(c, id.as_str()))?.ok_or_else(|| not_found(id))?)
    }

    pub fn set_agent_policy(&self, actor: &Actor, id: &AgentId, policy: Policy) -> Result<AgentView> {
        let json = serde_json::to_string(&policy).map_err(|e| VaultError::Integrity(e.to_string()))?;
        self.store.write(|tx| {
            if !rows::update_agent_policy(tx, id.as_str(), &json, self.clock.now())? {
                return Err(not_found(id));
            }
            self.audit(tx, Event::new(&actor.name(), "agent.policy", id.as_str(), Outcome::Ok, json!({"policy": policy})))?;
            view(&rows::get_agent(tx, id.as_str())?.ok_or_else(|| not_found(id))?)
        })
    }

    /// Replaces the client secret (the old one stops working at once).
    pub fn rotate_agent_secret(&self, actor: &Actor, id: &AgentId) -> Result<Secret> {
        let (secret, hash) = secrets::generate()?;
        self.store.write(|tx| {
            if !rows::update_agent_secret(tx, id.as_str(), &hash, self.clock.now())? {
                return Err(not_found(id));
            }
            self.audit(tx, Event::new(&actor.name(), "agent.rotate_secret", id.as_str(), Outcome::Ok, json!({})))?;
            Ok(())
        })?;
        Ok(secret)
    }

    pub fn set_agent_disabled(&self, actor: &Actor, id: &AgentId, disabled: bool) -> Result<AgentView> {
        self.store.write(|tx| {
            if !rows::set_agent_disabled(tx, id.as_str(), disabled, self.clock.now())? {
                return Err(not_found(id));
            }
            let action = if disabled { "agent.disable" } else { "agent.enable" };
            self.audit(tx, Event::new(&actor.name(), action, id.as_str(), Outcome::Ok, json!({})))?;
            view(&rows::get_agent(tx, id.as_str())?.ok_or_else(|| not_found(id))?)
        })
    }

    pub fn delete_agent(&self, actor: &Actor, id: &AgentId) -> Result<()> {
        self.store.write(|tx| {
            if !rows::delete_agent(tx, id.as_str())? {
                return Err(not_found(id));
            }
            self.audit(tx, Event::new(&actor.name(), "agent.delete", id.as_str(), Outcome::Ok, json!({})))?;
            Ok(())
        })
    }

    /// Client authentication for `/oauth2/token`. Unknown, disabled and wrong-secret
    /// clients are indistinguishable (and cost the same argon2 work).
    pub fn authenticate_agent(&self, client_id: &str, secret: &str) -> Result<AgentState> {
        const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$Yc5pXfbbrSDFrwThMO1PnSRSYF3S+/NTP3zGAo2t7hU";
        let row = match AgentId::parse(client_id) {
            Ok(id) => self.store.read(|c| rows::get_agent(c, id.as_str()))?,
            Err(_) => None,
        };
        let ok = secrets::verify(secret, row.as_ref().map(|r| r.secret_hash.as_str()).unwrap_or(DUMMY));
        match row {
            Some(r) if ok && !r.disabled => {
                Ok(AgentState { policy: serde_json::from_str(&r.policy).map_err(|e| VaultError::Integrity(e.to_string()))?, id: r.id })
            }
            _ => Err(VaultError::Unauthorized),
        }
    }

    /// Audits a token-endpoint decision (issue or refusal). A refusal to audit refuses the
    /// token: audit fails closed here as on releases.
    pub fn audit_token_decision(&self, agent: &str, action: &'static str, outcome: Outcome, decision: &TokenDecision) -> Result<()> {
        let event = Event::serialized(format!("agent:{agent}"), action, agent.to_owned(), outcome, decision);
        self.store.write(|c| self.audit(c, event)).map(|_| ()).map_err(|e| {
            tracing::error!(error = %e, "audit write failed");
            VaultError::Release(super::ReleaseError::AuditUnavailable)
        })
    }

    /// The current state of an agent named by a token: `None` if deleted or disabled.
    pub fn active_agent(&self, id: &str) -> Result<Option<AgentState>> {
        let row = self.store.read(|c| rows::get_agent(c, id))?;
        match row {
            Some(r) if !r.disabled => Ok(Some(AgentState {
                policy: serde_json::from_str(&r.policy).map_err(|e| VaultError::Integrity(e.to_string()))?,
                id: r.id,
            })),
            _ => Ok(None),
        }
    }
}
