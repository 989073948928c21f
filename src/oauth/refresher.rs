//! The background refresher: sleeps until the earliest due credential (at most 30 s, or
//! until woken), keeps up to [`MAX_BACKGROUND`] refreshes going while anything is due, and
//! purges stale connect sessions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::refresh::Need;
use super::OAuthService;
use crate::model::{ConnectionId, Owner};

/// Background refreshes the refresher keeps going.
const MAX_BACKGROUND: usize = 128;
/// Longest sleep between looks at the due queue.
const MAX_IDLE: Duration = Duration::from_secs(30);

/// The task id of a finished background refresh (also if it panicked).
fn finished(done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) -> tokio::task::Id {
    match done {
        Ok((id, ())) => id,
        Err(e) => e.id(),
    }
}

impl OAuthService {
    /// Runs until the runtime stops.
    pub async fn run_refresher(self: Arc<Self>) {
        let mut last_purge = Instant::now();
        // The refreshes this loop runs, and the credential each is for.
        let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut running = tokio::task::JoinSet::new();
        loop {
            // Keep up to MAX_BACKGROUND refreshes going: a due backlog drains as fast as
            // the providers answer, not one batch per wake-up.
            let room = MAX_BACKGROUND.saturating_sub(running.len());
            let mut full = false;
            if room > 0 {
                // Claimed: their lease is ours, so other replicas' refreshers skip them.
                let (holder, ttl) = (self.holder.clone(), self.lease_ms);
                let want = room;
                let due = match self.run_blocking(move |v| v.claim_due_refreshes(&holder, ttl, want)).await {
                    Ok(due) => due,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the refresh queue");
                        Vec::new()
                    }
                };
                full = due.len() == want;
                for (id, conn, owner) in due {
                    let (Ok(conn), Ok(owner)) = (ConnectionId::parse(&conn), Owner::parse(&owner)) else { continue };
                    if running.len() >= MAX_BACKGROUND || in_flight.values().any(|v| *v == id) {
                        continue;
                    }
                    let this = self.clone();
                    let claimed = id.clone();
                    let task = running.spawn(async move {
                        this.refresh(&conn, &owner, Need::Due).await;
                        // Whatever happened, the claim ends (a stored refresh has already
                        // cleared it; a refresh found unnecessary has not).
                        let holder = this.holder.clone();
                        if let Err(e) = this.run_blocking(move |v| v.release_refresh_lease(&claimed, &holder)).await {
                            tracing::warn!(error = %e, "cannot release a refresh claim; it expires by itself");
                        }
                    });
                    in_flight.insert(task.id(), id);
                }
            }
            if last_purge.elapsed() > Duration::from_secs(60) {
                last_purge = Instant::now();
                if let Err(e) = self.run_blocking(|v| v.purge_connect_sessions()).await {
                    tracing::warn!(error = %e, "cannot purge stale connect sessions");
                }
            }
            let wait = if full || running.len() >= MAX_BACKGROUND {
                // More is due: look again as soon as one finishes.
                MAX_IDLE
            } else {
                let now = self.vault.clock().now();
                let next = self.run_blocking(|v| v.next_refresh_due()).await.ok().flatten();
                Duration::from_secs(next.map(|n| (n - now).clamp(1, MAX_IDLE.as_secs() as i64)).unwrap_or(30) as u64)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    in_flight.remove(&finished(done));
                }
            }
            // Collect whatever else has finished meanwhile.
            while let Some(done) = running.try_join_next_with_id() {
                in_flight.remove(&finished(done));
            }
        }
    }
}
