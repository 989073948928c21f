//! `latchkey connections add|list|show|rm`.

use std::path::PathBuf;

use clap::Subcommand;

use super::{open_vault, print_json, read_json, with_services, CliResult};
use crate::config::Settings;
use crate::model::{ConnectionId, NewConnection};
use crate::vault::Actor;

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
        /// Also disconnect its credentials (each revoked at the provider where possible).
        #[arg(long)]
        cascade: bool,
    },
}

pub fn exec(settings: &Settings, cmd: ConnectionsCmd) -> CliResult {
    match cmd {
        ConnectionsCmd::Add { from } => {
            let new = NewConnection::from_json(read_json(&from)?)?;
            print_json(&open_vault(settings)?.create_connection(&Actor::cli(), new)?)
        }
        ConnectionsCmd::List => print_json(&open_vault(settings)?.list_connections()?),
        ConnectionsCmd::Show { id } => {
            let id = ConnectionId::parse(&id)?;
            print_json(&open_vault(settings)?.get_connection(&id)?)
        }
        ConnectionsCmd::Rm { id, cascade } => {
            let id = ConnectionId::parse(&id)?;
            let c = id.clone();
            let n = with_services(settings, async move |s| Ok(s.delete_connection(Actor::cli(), c, cascade).await?))?;
            println!("connection {id} deleted ({n} credentials deleted)");
            Ok(())
        }
    }
}
