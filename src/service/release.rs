//! A release: decide (policy, credential, scopes), audit, hand out. When the stored token
//! has less than `min_ttl` left, refresh it first (single flight with any concurrent
//! release or the background refresher), then decide again; only the second decision is
//! audited.

use super::Services;
use crate::oauth::{Narrowed, Refreshed};
use crate::vault::{Narrowing, ReleaseError, ReleaseInput, Released, VaultError};

/// Seconds a caller is told to wait when a refresh it needed did not happen.
const RETRY_AFTER_UNKNOWN: u64 = 30;

impl Services {
    /// Releases a credential as `input` asks, or says why not. Every decision is audited
    /// before it is returned; a decision whose audit record cannot be written is refused.
    pub async fn release(&self, mut input: ReleaseInput) -> Result<Released, VaultError> {
        let mut key_loaded = false;
        let outcome = loop {
            // On SQLite, decided on the worker, not the blocking pool: with the policy and
            // spec cached it is one point read from the page cache and an AES-GCM open,
            // cheaper than a hop to a pool thread and back. On PostgreSQL the read is a
            // network round trip, which must not hold an async worker: it is made ahead on
            // this worker's asynchronous connection, and the decision then runs here; when
            // that cannot be done (configuration not cached, no connection), the whole
            // decision runs on the blocking pool. Waiting for the audit commit holds no thread.
            let decision = if self.vault.store().is_remote() {
                let on_worker = match self.vault.prefetch_release(&input).await {
                    Some(prefetched) => self.vault.decide_release_on_worker(&input, prefetched),
                    None => None,
                };
                match on_worker {
                    Some(decision) => {
                        self.metrics.release_read("worker");
                        decision
                    }
                    None => {
                        self.metrics.release_read("pool");
                        let owned = input.clone();
                        self.blocking(move |v| Ok(v.decide_release(&owned))).await?
                    }
                }
            } else {
                self.vault.decide_release(&input)
            };
            match self.vault.commit_release(decision).await {
                Err(VaultError::Release(ReleaseError::RefreshNeeded { owner, min_ttl })) if input.refresh_attempted.is_none() => {
                    let retry = match self.oauth.refresh_for_release(&input.connection, &owner, min_ttl).await {
                        Refreshed::Failed { retry_after } | Refreshed::Cooldown { retry_after } => retry_after,
                        _ => RETRY_AFTER_UNKNOWN,
                    };
                    input.refresh_attempted = Some(retry);
                }
                Err(VaultError::Release(ReleaseError::NarrowNeeded { owner, scopes, min_ttl }))
                    if input.narrowing == Narrowing::Allowed =>
                {
                    input.narrowing = match self.oauth.narrow(&input.connection, &owner, &scopes, min_ttl).await {
                        // Minted: the next decision finds it (and mints no more this request).
                        Narrowed::Done => Narrowing::Failed { retry_after: RETRY_AFTER_UNKNOWN },
                        Narrowed::Unavailable => Narrowing::Unavailable,
                        Narrowed::Failed { retry_after } => Narrowing::Failed { retry_after },
                    };
                }
                Err(VaultError::Release(ReleaseError::KeyNeeded { version })) if !key_loaded => {
                    // A version activated since (a rotation by another process): derived
                    // once, on the blocking pool, shared by everyone waiting for it.
                    self.blocking(move |v| v.load_key(version)).await?;
                    key_loaded = true;
                }
                other => break other,
            }
        };
        self.metrics.release(if outcome.is_ok() { "allow" } else { "deny" });
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ConnectionId, CredentialInput, NewConnection, Owner, Scope};
    use crate::policy::{Principal, ReleaseRequest};
    use crate::secret::Secret;
    use crate::service::testing::fixture;
    use crate::vault::{Actor, ReleasedSecret};

    fn input(user: &str, connection: &str) -> ReleaseInput {
        ReleaseInput {
            principal: Principal { agent_id: "svc".into(), user: None, tenant: None, roles: vec![], epoch: i64::MAX },
            connection: ConnectionId::parse(connection).unwrap(),
            request: ReleaseRequest { scopes: Vec::<Scope>::new(), user_id: Some(user.into()), tenant_id: None, ..Default::default() },
            min_ttl: crate::vault::MinTtl::Default,
            request_id: "req-1".into(),
            refresh_attempted: None,
            narrowing: Narrowing::Allowed,
            proxy: None,
        }
    }

    #[tokio::test]
    async fn releases_are_decided_audited_and_counted() {
        let f = fixture();
        let s = &f.services;
        let actor = Actor::System;
        let spec = serde_json::json!({"id": "k", "kind": "api_key", "api_key": {"header": "X-Key", "format": "Bearer {key}"}});
        s.vault.create_connection(&actor, NewConnection::from_json(spec).unwrap()).unwrap();
        let owner = Owner::parse("user:alice").unwrap();
        let k = ConnectionId::parse("k").unwrap();
        s.vault.put_credential(&actor, &k, &owner, CredentialInput::api_key(Secret::new("sk-1".into()))).unwrap();
        let agent = serde_json::json!({"id": "svc", "name": "svc", "policy": {"grants": [{"connection": "k", "owners": "any"}]}});
        s.vault.create_agent(&actor, serde_json::from_value(agent).unwrap()).unwrap();

        let released = s.release(input("alice", "k")).await.unwrap();
        match released.secret {
            ReleasedSecret::ApiKey { api_key, header_value, .. } => {
                assert_eq!(api_key.expose(), "sk-1");
                assert_eq!(header_value.expose(), "Bearer sk-1");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(s.release(input("bob", "k")).await, Err(VaultError::Release(ReleaseError::NotConnected))));
        assert!(matches!(s.release(input("alice", "other")).await, Err(VaultError::Release(ReleaseError::AccessDenied))));
        let text = s.metrics_text().await.unwrap();
        assert!(text.contains("latchkey_releases_total{decision=\"allow\"} 1"), "{text}");
        assert!(text.contains("latchkey_releases_total{decision=\"deny\"} 2"), "{text}");
        let audit = s.vault.audit_tail(3).unwrap();
        assert!(audit.iter().all(|r| r.action == "token.release"));
        assert_eq!(audit.iter().filter(|r| r.outcome == "ok").count(), 1);
    }
}
