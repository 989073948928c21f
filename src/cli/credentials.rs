//! `latchkey credentials put|list|rm`. Secrets are read from files or standard input,
//! never from arguments (which other local users can see).

use std::path::PathBuf;

use clap::Subcommand;

use super::{open_vault, print_json, read_input, with_services, CliError, CliResult};
use crate::config::Settings;
use crate::model::{ConnectionId, CredentialInput, Owner};
use crate::secret::Secret;
use crate::vault::Actor;

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
    /// Disconnect a credential: revoke it at the provider where possible, then delete it.
    Rm { connection: String, owner: String },
    /// Move every credential whose owner names no issuer (user:alice) into a trusted
    /// issuer's namespace (user:<prefix>:alice), where token exchange looks for it.
    Namespace {
        /// The issuer's subject_prefix.
        #[arg(long)]
        prefix: String,
        /// Only list the moves.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn exec(settings: &Settings, cmd: CredentialsCmd) -> CliResult {
    match cmd {
        CredentialsCmd::Put { connection, owner, from, api_key_file } => {
            let (id, owner) = (ConnectionId::parse(&connection)?, Owner::parse(&owner)?);
            let input: CredentialInput = match (from, api_key_file) {
                (Some(f), None) => {
                    let text = read_input(&f)?;
                    serde_json::from_str(&text).and_then(crate::model::from_value_strict).map_err(|e| {
                        CliError::usage(format!("invalid credential JSON: {}", crate::model::clean_serde_error(&e.to_string())))
                    })?
                }
                (None, Some(f)) => {
                    let text = read_input(&f)?;
                    let key = text.strip_suffix('\n').unwrap_or(&text);
                    CredentialInput::api_key(Secret::new(key.to_owned()))
                }
                _ => return Err(CliError::usage("give --from FILE (JSON body) or --api-key-file FILE; use - for standard input")),
            };
            print_json(&open_vault(settings)?.put_credential(&Actor::cli(), &id, &owner, input)?)
        }
        CredentialsCmd::List { connection } => {
            let id = ConnectionId::parse(&connection)?;
            print_json(&open_vault(settings)?.list_credentials(&id, None, 1000)?)
        }
        CredentialsCmd::Rm { connection, owner } => {
            let (id, owner) = (ConnectionId::parse(&connection)?, Owner::parse(&owner)?);
            let o = owner.clone();
            with_services(settings, async move |s| Ok(s.disconnect(Actor::cli(), id, o).await?))?;
            println!("credential of {owner} for {connection} revoked where possible and deleted (see `latchkey audit tail`)");
            Ok(())
        }
        CredentialsCmd::Namespace { prefix, dry_run } => {
            let moves = open_vault(settings)?.namespace_owners(&Actor::cli(), &prefix, dry_run)?;
            for (from, to) in &moves {
                println!("{from} -> {to}");
            }
            let verb = if dry_run { "would move" } else { "moved" };
            eprintln!("{verb} {} credential(s)", moves.len());
            Ok(())
        }
    }
}
