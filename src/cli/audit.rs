//! `latchkey audit tail|verify`.

use clap::Subcommand;

use super::{open_vault, CliError, CliResult};
use crate::config::Settings;
use crate::time::rfc3339_millis;

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

pub fn exec(settings: &Settings, cmd: AuditCmd) -> CliResult {
    let vault = open_vault(settings)?;
    match cmd {
        AuditCmd::Tail { lines, json } => {
            for r in vault.audit_tail(lines)? {
                if json {
                    println!("{}", r.to_json());
                } else {
                    let ts = rfc3339_millis(r.ts_ms);
                    println!("{:>6}  {ts}  {:<22}  {:<16}  {:<7}  {}  {}", r.seq, r.action, r.actor, r.outcome, r.target, r.detail);
                }
            }
            Ok(())
        }
        AuditCmd::Verify => match vault.audit_verify()? {
            Ok((n, head)) => {
                println!("ok: {n} audit records, chain intact; head hash {}", crate::crypto::hex(&head));
                Ok(())
            }
            Err(b) => {
                println!("BROKEN at record {}: {}", b.seq, b.reason);
                Err(CliError::failed(format!("the audit chain is broken at record {}", b.seq)))
            }
        },
    }
}
