//! `latchkey admin-token|connections|credentials|audit …`: the operator commands,
//! working on the same database as a running server. Secrets are read from files or
//! standard input, never from arguments (which other local users can see).

use std::path::PathBuf;

use clap::Subcommand;

use super::{deliver_token, open_vault, read_input, CliError, CliResult};
use crate::config::Settings;
use crate::model::{AgentId, ConnectionId, CredentialInput, NewConnection, Owner};
use crate::secret::Secret;
use crate::time::rfc3339_millis;
use crate::vault::{Actor, NewAgent};

#[derive(Debug, Subcommand)]
pub enum AdminTokenCmd {
    /// Create an admin token (printed once, or written to FILE with mode 0600).
    Create {
        #[arg(long)]
        label: Option<String>,
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// List admin tokens (ids and metadata only).
    List,
    /// Revoke an admin token by id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ConnectionsCmd {
    /// Add a connection from a JSON body (same as POST /v1/admin/connections).
    Add {
        /// JSON file, or - for standard input.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
    /// List connections.
    List,
    /// Show one connection.
    Show { id: String },
    /// Delete a connection.
    Rm {
        id: String,
        /// Also delete its credentials.
        #[arg(long)]
        cascade: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CredentialsCmd {
    /// Store a credential: a JSON body (same as the PUT API) or an API key from a file.
    Put {
        connection: String,
        /// user:<id> or tenant:<id>
        owner: String,
        /// JSON body file, or - for standard input.
        #[arg(long, value_name = "FILE", conflicts_with = "api_key_file")]
        from: Option<PathBuf>,
        /// File holding just the API key (or - for standard input).
        #[arg(long, value_name = "FILE")]
        api_key_file: Option<PathBuf>,
    },
    /// List credential metadata of a connection.
    List { connection: String },
    /// Delete a credential.
    Rm { connection: String, owner: String },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCmd {
    /// Register an agent from a JSON body `{id, name, policy}`; prints the client secret once.
    Add {
        /// JSON file, or - for standard input.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
    /// List agents.
    List,
    /// Show one agent.
    Show { id: String },
    /// Replace an agent's policy with `{"grants": [...]}` from FILE (or -).
    Policy {
        id: String,
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
    /// Issue a new client secret (printed once); the old one stops working.
    RotateSecret { id: String },
    /// Disable an agent: its tokens stop working at once.
    Disable { id: String },
    /// Re-enable a disabled agent.
    Enable { id: String },
    /// Delete an agent.
    Rm { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Print the most recent audit records.
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain; exit 1 naming the first broken record.
    Verify,
}

fn print_json(v: &impl serde::Serialize) -> CliResult {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn admin_token(settings: &Settings, cmd: AdminTokenCmd) -> CliResult {
    let vault = open_vault(settings)?;
    match cmd {
        AdminTokenCmd::Create { label, file } => {
            if let Some(f) = &file {
                if f.exists() {
                    return Err(CliError::from(format!("{} already exists; choose a new file", f.display())));
                }
            }
            let (id, token) = vault.create_admin_token(&Actor::cli(), label.as_deref())?;
            eprintln!("created admin token {id}");
            deliver_token(&token, file.as_deref())
        }
        AdminTokenCmd::List => print_json(&vault.list_admin_tokens()?),
        AdminTokenCmd::Revoke { id } => {
            vault.revoke_admin_token(&Actor::cli(), &id)?;
            println!("admin token {id} revoked");
            Ok(())
        }
    }
}

pub fn connections(settings: &Settings, cmd: ConnectionsCmd) -> CliResult {
    let vault = open_vault(settings)?;
    match cmd {
        ConnectionsCmd::Add { from } => {
            let text = read_input(&from)?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| CliError::from(format!("invalid JSON: {}", crate::model::clean_serde_error(&e.to_string()))))?;
            let view = vault.create_connection(&Actor::cli(), NewConnection::from_json(value)?)?;
            print_json(&view)
        }
        ConnectionsCmd::List => print_json(&vault.list_connections()?),
        ConnectionsCmd::Show { id } => print_json(&vault.get_connection(&ConnectionId::parse(&id)?)?),
        ConnectionsCmd::Rm { id, cascade } => {
            let n = vault.delete_connection(&Actor::cli(), &ConnectionId::parse(&id)?, cascade)?;
            println!("connection {id} deleted ({n} credentials deleted)");
            Ok(())
        }
    }
}

pub fn credentials(settings: &Settings, cmd: CredentialsCmd) -> CliResult {
    let vault = open_vault(settings)?;
    match cmd {
        CredentialsCmd::Put { connection, owner, from, api_key_file } => {
            let (id, owner) = (ConnectionId::parse(&connection)?, Owner::parse(&owner)?);
            let input: CredentialInput = match (from, api_key_file) {
                (Some(f), None) => {
                    let text = read_input(&f)?;
                    serde_json::from_str(&text).map_err(|e| {
                        CliError::from(format!("invalid credential JSON: {}", crate::model::clean_serde_error(&e.to_string())))
                    })?
                }
                (None, Some(f)) => {
                    let text = read_input(&f)?;
                    let key = text.strip_suffix('\n').unwrap_or(&text);
                    CredentialInput::api_key(Secret::new(key.to_owned()))
                }
                _ => return Err(CliError::usage("give --from FILE (JSON body) or --api-key-file FILE; use - for standard input")),
            };
            print_json(&vault.put_credential(&Actor::cli(), &id, &owner, input)?)
        }
        CredentialsCmd::List { connection } => print_json(&vault.list_credentials(&ConnectionId::parse(&connection)?, None, 1000)?),
        CredentialsCmd::Rm { connection, owner } => {
            vault.delete_credential(
                &Actor::cli(),
                &ConnectionId::parse(&connection)?,
                &Owner::parse(&owner)?,
                Some("not attempted (CLI; use the admin API to revoke at the provider)"),
            )?;
            println!("credential of {owner} for {connection} deleted");
            Ok(())
        }
    }
}

fn read_json(path: &std::path::Path) -> Result<serde_json::Value, CliError> {
    let text = read_input(path)?;
    serde_json::from_str(&text).map_err(|e| CliError::from(format!("invalid JSON: {}", crate::model::clean_serde_error(&e.to_string()))))
}

pub fn agents(settings: &Settings, cmd: AgentsCmd) -> CliResult {
    let vault = open_vault(settings)?;
    let actor = Actor::cli();
    match cmd {
        AgentsCmd::Add { from } => {
            let new: NewAgent = serde_json::from_value(read_json(&from)?)
                .map_err(|e| CliError::from(format!("invalid agent: {}", crate::model::clean_serde_error(&e.to_string()))))?;
            let (agent, secret) = vault.create_agent(&actor, new)?;
            eprintln!("agent {} created; client secret (shown once):", agent.id);
            println!("{}", secret.expose());
            Ok(())
        }
        AgentsCmd::List => print_json(&vault.list_agents()?),
        AgentsCmd::Show { id } => print_json(&vault.get_agent(&AgentId::parse(&id)?)?),
        AgentsCmd::Policy { id, from } => print_json(&vault.set_agent_policy(&actor, &AgentId::parse(&id)?, read_json(&from)?)?),
        AgentsCmd::RotateSecret { id } => {
            let secret = vault.rotate_agent_secret(&actor, &AgentId::parse(&id)?)?;
            eprintln!("new client secret for {id} (shown once; the old one no longer works):");
            println!("{}", secret.expose());
            Ok(())
        }
        AgentsCmd::Disable { id } => print_json(&vault.set_agent_disabled(&actor, &AgentId::parse(&id)?, true)?),
        AgentsCmd::Enable { id } => print_json(&vault.set_agent_disabled(&actor, &AgentId::parse(&id)?, false)?),
        AgentsCmd::Rm { id } => {
            vault.delete_agent(&actor, &AgentId::parse(&id)?)?;
            println!("agent {id} deleted");
            Ok(())
        }
    }
}

pub fn audit(settings: &Settings, cmd: AuditCmd) -> CliResult {
    let vault = open_vault(settings)?;
    match cmd {
        AuditCmd::Tail { lines, json } => {
            for r in vault.audit_tail(lines)? {
                if json {
                    let v = serde_json::json!({"seq": r.seq, "ts": rfc3339_millis(r.ts_ms), "actor": r.actor, "action": r.action, "target": r.target,
                        "outcome": r.outcome, "detail": serde_json::from_str::<serde_json::Value>(&r.detail).unwrap_or_default()});
                    println!("{v}");
                } else {
                    println!(
                        "{:>6}  {}  {:<22}  {:<16}  {:<7}  {}  {}",
                        r.seq,
                        rfc3339_millis(r.ts_ms),
                        r.action,
                        r.actor,
                        r.outcome,
                        r.target,
                        r.detail
                    );
                }
            }
            Ok(())
        }
        AuditCmd::Verify => match vault.audit_verify()? {
            Ok((n, head)) => {
                println!("ok: {n} audit records, chain intact; head hash {}", crate::vault::hex(&head));
                Ok(())
            }
            Err(b) => {
                println!("BROKEN at record {}: {}", b.seq, b.reason);
                Err(CliError::from(format!("the audit chain is broken at record {}", b.seq)))
            }
        },
    }
}
