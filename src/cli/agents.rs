//! `latchkey agents add|list|show|policy|rotate-secret|disable|enable|rm`.

use std::path::PathBuf;

use clap::Subcommand;

use super::{open_vault, print_json, read_input, CliError, CliResult};
use crate::config::Settings;
use crate::model::AgentId;
use crate::policy::Policy;
use crate::vault::{Actor, NewAgent};

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

pub fn exec(settings: &Settings, cmd: AgentsCmd) -> CliResult {
    let actor = Actor::cli();
    match cmd {
        AgentsCmd::Add { from } => {
            let text = read_input(&from)?;
            let new: NewAgent = serde_json::from_str(&text)
                .and_then(crate::model::from_value_strict)
                .map_err(|e| CliError::usage(format!("invalid agent: {}", crate::model::clean_serde_error(&e.to_string()))))?;
            let (agent, secret) = open_vault(settings)?.create_agent(&actor, new)?;
            eprintln!("agent {} created; client secret (shown once):", agent.id);
            println!("{}", secret.expose());
            Ok(())
        }
        AgentsCmd::List => print_json(&open_vault(settings)?.list_agents()?),
        AgentsCmd::Show { id } => {
            let id = AgentId::parse(&id)?;
            print_json(&open_vault(settings)?.get_agent(&id)?)
        }
        AgentsCmd::Policy { id, from } => {
            let id = AgentId::parse(&id)?;
            let policy = Policy::parse_json(&read_input(&from)?)?;
            print_json(&open_vault(settings)?.set_agent_policy(&actor, &id, policy)?)
        }
        AgentsCmd::RotateSecret { id } => {
            let secret = open_vault(settings)?.rotate_agent_secret(&actor, &AgentId::parse(&id)?)?;
            eprintln!("new client secret for {id} (shown once; the old one no longer works):");
            println!("{}", secret.expose());
            Ok(())
        }
        AgentsCmd::Disable { id } => print_json(&open_vault(settings)?.set_agent_disabled(&actor, &AgentId::parse(&id)?, true)?),
        AgentsCmd::Enable { id } => print_json(&open_vault(settings)?.set_agent_disabled(&actor, &AgentId::parse(&id)?, false)?),
        AgentsCmd::Rm { id } => {
            open_vault(settings)?.delete_agent(&actor, &AgentId::parse(&id)?)?;
            println!("agent {id} deleted");
            Ok(())
        }
    }
}
