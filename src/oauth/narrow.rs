//! Minting narrower access tokens for `downscope` connections: the refresh grant with a
//! `scope` subset (RFC 6749 §6), under the credential's single flight (there is one refresh
//! token, and providers that rotate it revoke the grant when one is spent twice).
//!
//! A mint counts as narrowed only when the provider's answer names scopes within the
//! request, or the catalog marks the provider as honouring narrower refreshes. Nothing a
//! mint meets — `invalid_scope`, `invalid_grant` or anything else — marks the credential
//! `needs_reauth`: only the ordinary refresh decides that.

use std::time::{Duration, Instant};

use super::client::{self, ProviderError};
use super::OAuthService;
use crate::model::providers;
use crate::model::{ConnectionId, CredentialStatus, Owner, Scope};

/// How long a provider's refusal to narrow a scope set is remembered.
const REMEMBER_REFUSAL: Duration = Duration::from_secs(600);
/// At most this many refusals are remembered.
const MAX_REMEMBERED: usize = 10_000;

/// What a narrowing attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Narrowed {
    /// A narrower token is stored.
    Done,
    /// The provider did not (or cannot) confirm a narrower token: decide as `strict`.
    Unavailable,
    /// A transient failure; seconds to wait.
    Failed { retry_after: u64 },
}

impl OAuthService {
    /// Makes sure a narrower token for exactly `scopes`, valid for `min_ttl` more seconds,
    /// is stored for the credential.
    pub async fn narrow(&self, connection: &ConnectionId, owner: &Owner, scopes: &[Scope], min_ttl: i64) -> Narrowed {
        let refused_key = format!("{connection}/{owner}/{}", scopes.iter().map(Scope::as_str).collect::<Vec<_>>().join(" "));
        if self.unnarrowable.lock().unwrap_or_else(|p| p.into_inner()).get(&refused_key).is_some_and(|until| Instant::now() < *until) {
            return Narrowed::Unavailable;
        }
        let outcome = self.narrow_flight(connection, owner, scopes, min_ttl).await;
        if outcome == Narrowed::Unavailable {
            let mut refused = self.unnarrowable.lock().unwrap_or_else(|p| p.into_inner());
            if refused.len() >= MAX_REMEMBERED {
                refused.retain(|_, until| Instant::now() < *until);
            }
            if refused.len() < MAX_REMEMBERED {
                refused.insert(refused_key, Instant::now() + REMEMBER_REFUSAL);
            }
        }
        outcome
    }

    async fn narrow_flight(&self, connection: &ConnectionId, owner: &Owner, scopes: &[Scope], min_ttl: i64) -> Narrowed {
        let key = format!("{connection}/{owner}");
        let entry = self.flight(&key);
        let guard = entry.lock.lock().await;
        let outcome = self.narrow_locked(connection, owner, scopes, min_ttl).await;
        drop(guard);
        self.forget_flight(&key);
        outcome
    }

    async fn narrow_locked(&self, connection: &ConnectionId, owner: &Owner, scopes: &[Scope], min_ttl: i64) -> Narrowed {
        let (c, o, s) = (connection.clone(), owner.clone(), scopes.to_vec());
        // Someone may have minted this scope set while we waited.
        if let Ok(true) = self.run_blocking(move |v| v.has_narrowed(&c, &o, &s, min_ttl)).await {
            return Narrowed::Done;
        }
        let (c, o) = (connection.clone(), owner.clone());
        let m = match self.run_blocking(move |v| v.refresh_material(&c, &o)).await {
            Ok(Some(m)) if m.status == CredentialStatus::Active => m,
            Ok(_) => return Narrowed::Unavailable,
            Err(e) => {
                tracing::error!(error = %e, "reading credential for a narrowing refresh failed");
                return Narrowed::Failed { retry_after: 5 };
            }
        };
        let (Some(refresh_token), Some(client_id)) = (m.refresh_token.clone(), m.spec.oauth2.as_ref().map(|o| o.client_id.clone())) else {
            return Narrowed::Unavailable;
        };
        let ep = match self.endpoints(&m.spec).await {
            Ok(ep) => ep,
            Err(e) => {
                tracing::warn!(error = %e, "provider endpoints unavailable for a narrowing refresh");
                return Narrowed::Failed { retry_after: 5 };
            }
        };
        let (id, holder, ttl, version) = (m.credential_id.clone(), self.holder.clone(), self.lease_ms, m.version);
        match self.run_blocking(move |v| v.acquire_refresh_lease(&id, &holder, ttl, Some(version))).await {
            Ok(true) => {}
            // Another process is refreshing this credential right now.
            Ok(false) => return Narrowed::Failed { retry_after: 2 },
            Err(_) => return Narrowed::Failed { retry_after: 5 },
        }
        let asked = scopes.iter().map(Scope::as_str).collect::<Vec<_>>().join(ep.scope_separator);
        let slot = self.provider_slot(&ep.token).await;
        let result = client::refresh(&self.http, &ep, &client_id, m.client_secret.as_ref(), &refresh_token, Some(&asked)).await;
        drop(slot);
        let outcome = match result {
            Ok(tokens) => {
                let honours = m.spec.provider.as_deref().and_then(providers::find).is_some_and(|p| p.honours_narrow_refresh);
                let confirmed = match tokens.scope.as_deref() {
                    Some(got) => {
                        Scope::parse_list(&got.replace(',', " ")).is_ok_and(|got| !got.is_empty() && got.iter().all(|g| scopes.contains(g)))
                    }
                    None => honours,
                };
                let (c, o, version, s) = (connection.clone(), owner.clone(), m.version, scopes.to_vec());
                match self.run_blocking(move |v| v.store_narrowed(&c, &o, version, tokens, &s, confirmed)).await {
                    Ok(()) if confirmed => {
                        self.metrics.refresh(connection.as_str(), "narrowed");
                        Narrowed::Done
                    }
                    Ok(()) => {
                        self.metrics.refresh(connection.as_str(), "narrow_unconfirmed");
                        tracing::info!(connection = %connection, "the provider did not confirm a narrower token; enforcing strictly");
                        Narrowed::Unavailable
                    }
                    Err(e) => {
                        // As with a refresh: a rotated refresh token we could not store loses
                        // the connection. Make it loud.
                        tracing::error!(error = %e, connection = %connection, "could not store the result of a narrowing refresh");
                        self.metrics.refresh(connection.as_str(), "store_failed");
                        Narrowed::Failed { retry_after: 5 }
                    }
                }
            }
            Err(e @ (ProviderError::Rejected { .. } | ProviderError::ScopeRefused)) => {
                tracing::info!(connection = %connection, reason = %e, "the provider refused a narrowing refresh; enforcing strictly");
                self.metrics.refresh(connection.as_str(), "narrow_refused");
                Narrowed::Unavailable
            }
            Err(ProviderError::Transient { retry_after, reason }) => {
                tracing::warn!(connection = %connection, reason = %reason, "a narrowing refresh failed");
                self.metrics.refresh(connection.as_str(), "transient");
                Narrowed::Failed { retry_after: retry_after.unwrap_or(5).max(1) }
            }
        };
        let (id, holder) = (m.credential_id.clone(), self.holder.clone());
        if let Err(e) = self.run_blocking(move |v| v.release_refresh_lease(&id, &holder)).await {
            tracing::warn!(error = %e, "could not release a refresh lease (it expires by itself)");
        }
        outcome
    }
}
