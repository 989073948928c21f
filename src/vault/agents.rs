//! Agents: registered callers with a client secret (stored as a keyed hash, see
//! `auth::secrets`), a policy, and a token epoch: tokens issued before the agent's secret
//! was rotated, or before it was disabled, carry a lower epoch and are refused.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::vault_keys::AGENT_SECRETS;
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
    /// Tokens must carry at least this epoch.
    pub token_epoch: i64,
}

fn state(r: AgentRow) -> Result<AgentState> {
    let policy =
        serde_json::from_str(&r.policy).map_err(|e| VaultError::Integrity(format!("agent '{}' has an unreadable policy: {e}", r.id)))?;
    Ok(AgentState { id: r.id, policy, token_epoch: r.token_epoch })
}

fn not_found(id: &AgentId) -> VaultError {
    VaultError::NotFound(format!("agent '{id}'"))
}

impl Vault {
    /// Registers an agent; the client secret is returned once.
    pub fn create_agent(&self, actor: &Actor, new: NewAgent) -> Result<(AgentView, Secret)> {
        let NewAgent { id, name, policy } = new;
        let (secret, hash) = secrets::generate(&self.vault_key(AGENT_SECRETS)?[..])?;
        let now = self.clock.now();
        let mut row = AgentRow {
            id: id.as_str().to_owned(),
            name,
            secret_hash: hash,
            policy: serde_json::to_string(&policy).map_err(|e| VaultError::Integrity(e.to_string()))?,
            disabled: false,
            token_epoch: 0,
            created_at: now,
            updated_at: now,
        };
        let view = self.store.write(|tx| {
            // Above every token issued so far, including those of a deleted agent of this id.
            row.token_epoch = rows::next_agent_epoch(tx)?;
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

    /// Replaces the client secret: the old one, and every token issued with it, stop
    /// working at once.
    pub fn rotate_agent_secret(&self, actor: &Actor, id: &AgentId) -> Result<Secret> {
        let (secret, hash) = secrets::generate(&self.vault_key(AGENT_SECRETS)?[..])?;
        self.store.write(|tx| {
            let epoch = rows::next_agent_epoch(tx)?;
            if !rows::update_agent_secret(tx, id.as_str(), &hash, epoch, self.clock.now())? {
                return Err(not_found(id));
            }
            self.audit(tx, Event::new(&actor.name(), "agent.rotate_secret", id.as_str(), Outcome::Ok, json!({})))?;
            Ok(())
        })?;
        Ok(secret)
    }

    /// Disables an agent (ending every token issued so far, also after a later enable) or
    /// enables it again.
    pub fn set_agent_disabled(&self, actor: &Actor, id: &AgentId, disabled: bool) -> Result<AgentView> {
        self.store.write(|tx| {
            let epoch = if disabled { Some(rows::next_agent_epoch(tx)?) } else { None };
            if !rows::set_agent_disabled(tx, id.as_str(), disabled, epoch, self.clock.now())? {
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
    /// clients are indistinguishable, and cost the same keyed hash. A secret that matches a
    /// legacy (argon2) hash gets a keyed hash in its place.
    pub fn authenticate_agent(&self, client_id: &str, secret: &str) -> Result<AgentState> {
        let key = self.vault_key(AGENT_SECRETS)?;
        let row = match AgentId::parse(client_id) {
            // The agents table against its digest first (see `authenticate_admin`).
            Ok(id) => self.store.snapshot(|c| {
                crate::store::integrity::verify_table(c, &crate::store::integrity::AGENTS)?;
                rows::get_agent(c, id.as_str())
            })?,
            Err(_) => None,
        };
        let verified = secrets::verify(&key[..], secret, row.as_ref().map(|r| r.secret_hash.as_str()));
        match row {
            Some(r) if verified != secrets::Verified::No && !r.disabled => {
                if verified == secrets::Verified::YesLegacy {
                    let keyed = secrets::hash(&key[..], secret);
                    self.store.write(|tx| rows::upgrade_agent_hash(tx, &r.id, &r.secret_hash, &keyed))?;
                }
                state(r)
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
            Some(r) if !r.disabled => Ok(Some(state(r)?)),
            _ => Ok(None),
        }
    }
}
