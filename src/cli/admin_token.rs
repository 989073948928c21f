//! `latchkey admin-token create|list|revoke`.

use std::path::PathBuf;

use clap::Subcommand;

use super::{deliver_token, open_vault, print_json, CliError, CliResult};
use crate::config::Settings;
use crate::vault::Actor;

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

pub fn exec(settings: &Settings, cmd: AdminTokenCmd) -> CliResult {
    let vault = open_vault(settings)?;
    match cmd {
        AdminTokenCmd::Create { label, file } => {
            if let Some(f) = &file {
                if f.exists() {
                    return Err(CliError::usage(format!("{} already exists; choose a new file", f.display())));
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
