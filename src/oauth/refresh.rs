//! Refresh with single flight: per credential at most one refresh at any moment, across
//! concurrent releases, the background refresher and other processes (the row lease).
//! Failures are classified: a refused grant marks the credential `needs_reauth`; anything
//! else backs off with jitter and keeps the stored tokens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::client::{self, ProviderError};
use super::{OAuthService, MAX_PER_PROVIDER};
use crate::model::{ConnectionId, CredentialStatus, Owner};
use crate::secret::Secret;
use crate::vault::RefreshMaterial;

/// What a refresh attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// New tokens are committed.
    Done,
    /// Someone else refreshed (or it was not needed after all).
    NotNeeded,
    /// No refresh token, or the credential is gone.
    Impossible,
    /// The provider refused the grant; the credential is now `needs_reauth`.
    Rejected,
    /// A transient failure; tokens kept. Seconds to wait.
    Failed { retry_after: u64 },
    /// Not tried: a release refreshed this still-valid token moments ago. Seconds to wait.
    Cooldown { retry_after: u64 },
}

/// Why a refresh is wanted.
#[derive(Debug, Clone, Copy)]
pub(super) enum Need {
    /// On demand: at least this many seconds of validity.
    MinTtl(i64),
    /// Background: only if still due.
    Due,
    /// An API refused the token stored at this version (proxy mode): only if no refresh has
    /// replaced it since. On demand, so the cooldown applies.
    Rejected { version: i64 },
}

/// The in-process half of single flight for one credential.
#[derive(Default)]
pub(super) struct InFlight {
    pub(super) lock: tokio::sync::Mutex<()>,
    /// Refreshes completed under the lock: a waiter that sees it move takes that result.
    done: AtomicU64,
}

impl OAuthService {
    /// On-demand refresh so that the token has at least `min_ttl` seconds left.
    pub async fn refresh_for_release(&self, connection: &ConnectionId, owner: &Owner, min_ttl: i64) -> Refreshed {
        self.refresh(connection, owner, Need::MinTtl(min_ttl)).await
    }

    /// Refresh after an upstream API answered 401 to the token at `version` (proxy mode),
    /// unless it was replaced meanwhile (`NotNeeded`: retry with the new one). The upstream's
    /// answer changes nothing else: only the provider's token endpoint can mark the
    /// credential `needs_reauth`, so an agent cannot knock credentials out through an API.
    pub async fn refresh_after_rejection(&self, connection: &ConnectionId, owner: &Owner, version: i64) -> Refreshed {
        self.refresh(connection, owner, Need::Rejected { version }).await
    }

    /// The single-flight entry of a credential (shared by refreshes and narrowing mints:
    /// there is one refresh token).
    pub(super) fn flight(&self, key: &str) -> Arc<InFlight> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).entry(key.to_owned()).or_default().clone()
    }

    /// Forgets a single-flight entry once nobody else holds it.
    pub(super) fn forget_flight(&self, key: &str) {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(key).is_some_and(|e| Arc::strong_count(e) <= 2) {
            map.remove(key);
        }
    }

    /// A slot for one token request to the provider at `token_url` (bounded per provider
    /// host and overall), held until dropped.
    pub(super) async fn provider_slot(
        &self,
        token_url: &str,
    ) -> (Option<tokio::sync::OwnedSemaphorePermit>, Option<tokio::sync::OwnedSemaphorePermit>) {
        let provider_key = url::Url::parse(token_url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
        let per = self
            .per_provider
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(provider_key)
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_PER_PROVIDER)))
            .clone();
        let global = self.global.clone().acquire_owned().await.ok();
        (global, per.acquire_owned().await.ok())
    }

    pub(super) async fn refresh(&self, connection: &ConnectionId, owner: &Owner, need: Need) -> Refreshed {
        let key = format!("{connection}/{owner}");
        let entry = self.flight(&key);
        let seen = entry.done.load(Ordering::SeqCst);
        let guard = entry.lock.lock().await;
        let outcome = if entry.done.load(Ordering::SeqCst) != seen {
            // A refresh completed while we waited: its tokens are the answer.
            Refreshed::NotNeeded
        } else {
            let o = self.refresh_locked(connection, owner, need).await;
            if o == Refreshed::Done {
                entry.done.fetch_add(1, Ordering::SeqCst);
            }
            o
        };
        drop(guard);
        self.forget_flight(&key);
        outcome
    }

    async fn refresh_locked(&self, connection: &ConnectionId, owner: &Owner, need: Need) -> Refreshed {
        // Two rounds: if another process holds the lease, wait for it, then look again
        // (it may have refreshed, or died — then its lease expires and we take over).
        for _ in 0..2 {
            let (c, o) = (connection.clone(), owner.clone());
            let m = match self.run_blocking(move |v| v.refresh_material(&c, &o)).await {
                Ok(Some(m)) => m,
                Ok(None) => return Refreshed::Impossible,
                Err(e) => {
                    tracing::error!(error = %e, "reading credential for refresh failed");
                    return Refreshed::Failed { retry_after: 5 };
                }
            };
            if m.status != CredentialStatus::Active {
                return Refreshed::Rejected;
            }
            let now = self.vault.clock().now();
            let still_needed = match need {
                Need::MinTtl(t) => m.expires_at.is_some_and(|e| e - now < t.max(1)),
                Need::Due => m.refresh_due_at.is_some_and(|d| d <= now),
                Need::Rejected { version } => m.version == version,
            };
            if !still_needed {
                return Refreshed::NotNeeded;
            }
            let Some(refresh_token) = m.refresh_token.clone() else { return Refreshed::Impossible };
            // A release may not refresh a still-valid token more often than the cooldown:
            // otherwise every request with a demanding min_ttl rotates the grant.
            let on_demand = matches!(need, Need::MinTtl(_) | Need::Rejected { .. }) && m.expires_at.is_none_or(|e| e > now);
            // Cross-process single flight: the lease in the row, taken only at the version
            // read. (Before the cooldown check: another replica's refresh in flight has
            // marked the cooldown but not yet stored its tokens; wait for them instead.)
            let (id, holder, ttl, version) = (m.credential_id.clone(), self.holder.clone(), self.lease_ms, m.version);
            match self.run_blocking(move |v| v.acquire_refresh_lease(&id, &holder, ttl, Some(version))).await {
                Ok(true) => {
                    if on_demand {
                        // Never longer than half a token's life, so short-lived tokens stay usable.
                        let cooldown = m.issued_lifetime.map_or(self.on_demand_cooldown, |l| self.on_demand_cooldown.min(l / 2));
                        if let Some(wait) = m.on_demand_refresh_at.map(|t| t + cooldown - now).filter(|w| *w > 0) {
                            let (id, holder) = (m.credential_id.clone(), self.holder.clone());
                            if let Err(e) = self.run_blocking(move |v| v.release_refresh_lease(&id, &holder)).await {
                                tracing::warn!(error = %e, "cannot release a refresh lease; it expires by itself");
                            }
                            return Refreshed::Cooldown { retry_after: wait.unsigned_abs() };
                        }
                    }
                    return self.refresh_leased(connection, owner, m, refresh_token, on_demand).await;
                }
                Ok(false) => {
                    if !self.wait_for_other(&m.credential_id).await {
                        return Refreshed::Failed { retry_after: 5 };
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "refresh lease failed");
                    return Refreshed::Failed { retry_after: 5 };
                }
            }
        }
        Refreshed::Failed { retry_after: 5 }
    }

    /// The provider call and its bookkeeping, under our lease.
    async fn refresh_leased(
        &self,
        connection: &ConnectionId,
        owner: &Owner,
        m: RefreshMaterial,
        refresh_token: Secret,
        on_demand: bool,
    ) -> Refreshed {
        let ep = match self.endpoints(&m.spec).await {
            Ok(ep) => ep,
            Err(e) => return self.transient(connection, &m, &ProviderError::Transient { reason: e.to_string(), retry_after: None }).await,
        };
        let Some(client_id) = m.spec.oauth2.as_ref().map(|o| o.client_id.clone()) else { return Refreshed::Impossible };
        let provider_slot = self.provider_slot(&ep.token).await;
        let started = Instant::now();
        let result = client::refresh(&self.http, &ep, &client_id, m.client_secret.as_ref(), &refresh_token, None).await;
        self.metrics.refresh_latency(started.elapsed());
        drop(provider_slot);
        if on_demand {
            let id = m.credential_id.clone();
            if let Err(e) = self.run_blocking(move |v| v.mark_on_demand_refresh(&id)).await {
                tracing::warn!(error = %e, "could not record the on-demand refresh");
            }
        }
        match result {
            Ok(tokens) => {
                let (c, o, version, scopes) = (connection.clone(), owner.clone(), m.version, m.scopes.clone());
                match self.run_blocking(move |v| v.store_refreshed(&c, &o, tokens, version, Some(refresh_token), scopes)).await {
                    Ok(()) => {
                        self.metrics.refresh(connection.as_str(), "ok");
                        self.wake_refresher();
                        Refreshed::Done
                    }
                    Err(e) => {
                        // The provider has rotated the token but we could not store it:
                        // the one failure that loses a connection. Make it loud.
                        tracing::error!(error = %e, connection = %connection, "could not store refreshed tokens");
                        self.metrics.refresh(connection.as_str(), "store_failed");
                        Refreshed::Failed { retry_after: 5 }
                    }
                }
            }
            Err(ProviderError::Rejected { code }) => {
                self.metrics.refresh(connection.as_str(), "rejected");
                let (c, o, id) = (connection.clone(), owner.clone(), m.credential_id.clone());
                if let Err(e) = self.run_blocking(move |v| v.mark_needs_reauth(&c, &o, &id, &code)).await {
                    tracing::error!(error = %e, "could not mark credential needs_reauth");
                }
                Refreshed::Rejected
            }
            Err(e) => self.transient(connection, &m, &e).await,
        }
    }

    async fn transient(&self, connection: &ConnectionId, m: &RefreshMaterial, e: &ProviderError) -> Refreshed {
        self.metrics.refresh(connection.as_str(), "transient");
        let wait = match e {
            ProviderError::Transient { retry_after, .. } => *retry_after,
            ProviderError::Rejected { .. } | ProviderError::ScopeRefused => None,
        };
        // Exponential backoff with jitter: 5 s, 10 s, 20 s … capped at 15 min.
        let exp = 5i64.saturating_mul(1 << m.refresh_failures.clamp(0, 8)).min(900);
        let mut b = [0u8; 1];
        let jitter = match crate::crypto::random_bytes(&mut b) {
            Ok(()) => exp * i64::from(b[0]) / 1024,
            Err(_) => 0,
        };
        let delay = (exp + jitter).max(wait.map_or(0, |w| w as i64));
        let retry_at = self.vault.clock().now() + delay;
        tracing::warn!(connection = %connection, reason = %e, retry_in_s = delay, "refresh failed; keeping the stored tokens");
        let (id, holder, msg) = (m.credential_id.clone(), self.holder.clone(), e.to_string());
        if let Err(err) = self.run_blocking(move |v| v.record_refresh_failure(&id, &holder, &msg, retry_at)).await {
            tracing::error!(error = %err, "could not record refresh failure");
        }
        Refreshed::Failed { retry_after: delay.max(1) as u64 }
    }

    /// Another process holds the lease: wait until it is released or expires (bounded
    /// by the lease length). `false` if the store could not be read.
    async fn wait_for_other(&self, credential_id: &str) -> bool {
        let deadline = Instant::now() + Duration::from_millis(self.lease_ms.max(0) as u64 + 1000);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let id = credential_id.to_owned();
            match self.run_blocking(move |v| v.refresh_in_flight(&id)).await {
                Ok(false) => return true,
                Ok(true) => continue,
                Err(_) => return false,
            }
        }
        true
    }
}
