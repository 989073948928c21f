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
    /// Check the keyed hash chain, then every signed checkpoint in the checkpoint file
    /// (`audit_checkpoint_file`, or `--checkpoints`): exit 1 naming the first problem.
    Verify {
        /// A checkpoint file to check instead (for example one a log shipper collected).
        #[arg(long, value_name = "FILE")]
        checkpoints: Option<std::path::PathBuf>,
    },
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
        AuditCmd::Verify { checkpoints } => {
            match vault.audit_verify()? {
                Ok((n, head)) => println!("ok: {n} audit records, chain intact; head hash {}", crate::crypto::hex(&head)),
                Err(b) => {
                    println!("BROKEN at record {}: {}", b.seq, b.reason);
                    return Err(CliError::failed(format!("the audit chain is broken at record {}", b.seq)));
                }
            }
            let Some(file) = checkpoints.or_else(|| settings.audit_checkpoint_file.clone()) else {
                println!("no checkpoint file configured: cut-off records cannot be detected (set audit_checkpoint_file)");
                return Ok(());
            };
            if !file.exists() {
                println!("no checkpoints yet in {}", file.display());
                return Ok(());
            }
            let r = vault.verify_checkpoints(&file)?;
            if r.problems.is_empty() {
                let last = r.last.as_ref().map(|c| format!("; the last covers record {}", c.audit_seq)).unwrap_or_default();
                println!("ok: {} checkpoints in {} verified against the trail{last}", r.lines, file.display());
                Ok(())
            } else {
                for p in &r.problems {
                    println!("FAILED {p}");
                }
                Err(CliError::failed(format!(
                    "{} checkpoint problem(s): the trail was cut short, replaced or restored from an older backup",
                    r.problems.len()
                )))
            }
        }
    }
}
