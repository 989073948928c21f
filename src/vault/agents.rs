//! Agents: registered callers with an argon2id-hashed client secret and a policy.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Actor, Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::auth::secrets;
use crate::model::{AgentId, ValidationError};
use crate::policy::Policy;
use crate::secret::Secret;
use crate::store::agents::{self as rows, AgentRow};
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

/// `POST /v1/admin/agents` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub policy: serde_json::Value,
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
        let id = AgentId::parse(&new.id)?;
        if new.name.is_empty() || new.name.chars().count() > 200 || new.name.chars().any(char::is_control) {
            return Err(ValidationError("name must be 1-200 characters without control characters".into()).into());
        }
        let policy = if new.policy.is_null() { Policy::default() } else { Policy::from_json(new.policy)? };
        let (secret, hash) = secrets::generate()?;
        let now = self.clock.now();
        let row = AgentRow {
            id: id.as_str().to_owned(),
            name: new.name,
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

    pub fn set_agent_policy(&self, actor: &Actor, id: &AgentId, policy: serde_json::Value) -> Result<AgentView> {
        let policy = Policy::from_json(policy)?;
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
