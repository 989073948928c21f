//! `latchkey keys status|rotate|verify|retire|destroy`.

use clap::Subcommand;

use super::{open_vault, CliError, CliResult, Progress};
use crate::config::Settings;
use crate::vault::Actor;

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Show master-key versions, their states, data-key counts and rotation progress.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Create and activate a new master key and re-wrap every data key (online, resumable).
    Rotate {
        /// Data keys re-wrapped per transaction (smaller: shorter write locks).
        #[arg(long, default_value_t = crate::vault::DEFAULT_ROTATE_BATCH)]
        batch_size: usize,
        /// After each batch, pause FACTOR times as long as the batch took, so a running server
        /// keeps most of the CPU and the write lock (0: full speed, e.g. with no traffic).
        #[arg(long, value_name = "FACTOR", default_value_t = 3.0)]
        throttle: f64,
        /// When live replicas cannot load the new key yet, wait up to SECONDS for them
        /// (saying which) instead of stopping; the key is activated only once all can.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "600")]
        wait: Option<u64>,
    },
    /// Unwrap every data key and authenticate every secret.
    Verify,
    /// Retire a decrypt-only version that no data key references.
    Retire {
        #[arg(value_name = "N")]
        key_version: u32,
    },
    /// Destroy a retired version and delete its key file (irreversible).
    Destroy {
        #[arg(value_name = "N")]
        key_version: u32,
        /// Confirm the irreversible deletion.
        #[arg(long)]
        yes: bool,
    },
}

pub fn exec(settings: &Settings, cmd: KeysCmd) -> CliResult {
    let vault = open_vault(settings)?;
    let actor = Actor::cli();
    match cmd {
        KeysCmd::Status { json } => {
            let s = vault.key_status()?;
            if json {
                return super::print_json(&s);
            }
            println!("active version: {}", s.active_version.map(|v| v.to_string()).unwrap_or_else(|| "none".into()));
            println!("{:>7}  {:<12}  {:>10}  {:>10}  {:<20}  file", "version", "state", "deks", "wraps", "created");
            for v in &s.versions {
                println!("{:>7}  {:<12}  {:>10}  {:>10}  {:<20}  {}", v.version, v.state, v.deks, v.wraps, v.created_at, v.file);
                if let Some(w) = &v.warning {
                    println!("         warning: {w}");
                }
            }
            match &s.rotation {
                Some(r) => println!(
                    "rotation to v{} in progress: {}/{} data keys (run `latchkey keys rotate` to finish)",
                    r.target_version, r.done, r.total
                ),
                None => println!("no rotation in progress"),
            }
            Ok(())
        }
        KeysCmd::Rotate { batch_size, throttle, wait } => {
            if batch_size == 0 {
                return Err(CliError::usage("--batch-size must be at least 1"));
            }
            if !(0.0..=100.0).contains(&throttle) {
                return Err(CliError::usage("--throttle must be between 0 and 100"));
            }
            let mut p = Progress::new();
            let mut batch_started = std::time::Instant::now();
            let mut said = String::new();
            let mut waiting = |version: u32, missing: &[crate::store::rows::ReplicaRow]| {
                let names: Vec<String> = missing.iter().map(|r| format!("{} on {}", r.id, r.host)).collect();
                let line = format!("waiting for {} to load master-v{version}.key: {}", missing.len(), names.join(", "));
                if line != said {
                    eprintln!("{line}");
                    said = line;
                }
            };
            let wait = wait.map_or(crate::vault::ROTATE_GRACE, std::time::Duration::from_secs);
            let r = vault.rotate_keys_waiting(&actor, batch_size, wait, &mut waiting, &mut |pr| {
                p.show(&format!("re-wrapping under v{}", pr.target_version), pr.done, pr.total);
                if pr.done < pr.total {
                    std::thread::sleep(batch_started.elapsed().mul_f64(throttle));
                }
                batch_started = std::time::Instant::now();
            })?;
            let verb = if r.resumed { "finished the interrupted rotation to" } else { "rotated to" };
            println!(
                "{verb} master key v{}: {} data keys re-wrapped ({} changed concurrently and were already current)",
                r.to_version, r.rewrapped, r.skipped_concurrent
            );
            if !r.from_versions.is_empty() {
                let list: Vec<String> = r.from_versions.iter().map(|v| v.to_string()).collect();
                println!("previous version(s) {} are now decrypt-only; retire them with `latchkey keys retire N`", list.join(", "));
            }
            Ok(())
        }
        KeysCmd::Verify => {
            let mut p = Progress::new();
            let r = vault.verify_keys(&actor, &mut |d, t| p.show("verifying", d, t))?;
            if r.failures.is_empty() {
                println!(
                    "ok: {} credentials and {} connection secrets authenticated; {} data keys; {} sealed rows and their digest intact",
                    r.credentials, r.connection_secrets, r.deks, r.sealed_rows
                );
                Ok(())
            } else {
                for f in &r.failures {
                    println!("FAILED {f}");
                }
                Err(CliError::failed(format!(
                    "{} record(s) failed verification; restore them from backup or re-enter the credentials",
                    r.failures.len()
                )))
            }
        }
        KeysCmd::Retire { key_version: version } => {
            vault.retire_key(&actor, version)?;
            println!("master key v{version} retired; `latchkey keys destroy {version} --yes` deletes its file");
            Ok(())
        }
        KeysCmd::Destroy { key_version: version, yes } => {
            if !yes {
                return Err(CliError::usage(format!("destroying master key v{version} deletes its file for good; pass --yes to confirm")));
            }
            vault.destroy_key(&actor, version)?;
            println!("master key v{version} destroyed and its file removed");
            Ok(())
        }
    }
}
