//! The release of a short-lived copy of a credential to an agent.
//!
//! Order matters: the grant and owner are decided from the policy alone, before the
//! connection or credential is read, so a refusal looks the same whether or not they
//! exist. Every decision (release or refusal) is audited; a release whose audit record
//! cannot be committed is refused (`AuditUnavailable`): audit fails closed.

use std::sync::Arc;

use serde::Serialize;

use super::config_cache::AgentPolicy;
use super::{new_id, Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::model::{ConnectionId, ConnectionSpec, CredentialSecret, CredentialStatus, Owner, ProxySpec, Scope, ScopeEnforcement};
use crate::policy::{self, Policy, Principal, Refusal, ReleaseRequest, ScopePlan, ScopeRefusal};
use crate::secret::Secret;
use crate::store::{identity, rows};

/// Why a release was refused; mapped to the contract's error codes by the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("the agent token is invalid or the agent is disabled")]
    InvalidToken,
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the agent's policy does not permit this release")]
    AccessDenied,
    #[error("scopes not permitted: {}", .0.join(" "))]
    InsufficientScope(Vec<String>),
    /// The credential holds more than the caller may have and no narrower token is to be
    /// had (`unknown`: the credential's scopes are not known).
    #[error(
        "the stored credential holds scopes this caller may not have; connect it with fewer scopes, or ask for a grant that covers them"
    )]
    ExcessScope { excess: Vec<String>, unknown: bool },
    #[error("no credential is connected for this owner")]
    NotConnected,
    #[error("the provider refused the stored grant; the owner must reconnect: create a link with POST /v1/connect/sessions")]
    ReauthRequired,
    #[error("no token valid for the requested time is available; retry later")]
    ProviderUnavailable { retry_after: u64 },
    /// The caller's `min_ttl` exceeds the lifetime of the tokens the provider issues: no
    /// refresh can meet it, so none is tried.
    #[error("min_ttl exceeds the lifetime of the tokens this provider issues ({lifetime} s); ask for at most that")]
    MinTtlUnsatisfiable { lifetime: i64 },
    #[error("the audit trail cannot be written; nothing is released")]
    AuditUnavailable,
    /// Proxy mode: the connection names no upstream (`proxy.base_url`).
    #[error("this connection is not set up for proxy mode (it has no proxy.base_url)")]
    ProxyNotConfigured,
    /// Proxy mode: the path could escape the base URL (dot-segments, encoded separators,
    /// double encoding).
    #[error("the path is refused: {0}")]
    InvalidPath(String),
    /// Proxy mode: the method is not among the connection's `proxy.allowed_methods`.
    #[error("the connection's proxy settings do not allow this method")]
    MethodNotAllowed,
    /// Proxy mode: the path is refused (it could escape the base URL, or is not among the
    /// connection's `proxy.allowed_paths`).
    #[error("{0}")]
    PathNotAllowed(String),
    /// Proxy mode: the upstream is not a public address and the connection does not allow
    /// private ones.
    #[error("the upstream address is not public, and the connection does not allow private addresses")]
    EgressDenied,
    /// The store or a stored secret failed (details are logged, never returned).
    #[error("internal error")]
    Internal,
    /// Internal: the token must be refreshed first (never audited, never answered).
    #[error("refresh needed")]
    RefreshNeeded { owner: Owner, min_ttl: i64 },
    /// Internal: a narrower token must be minted first (never audited, never answered).
    #[error("narrower token needed")]
    NarrowNeeded { owner: Owner, scopes: Vec<Scope>, min_ttl: i64 },
    /// Internal: a master key must be loaded (off the async workers) first.
    #[error("master key needed")]
    KeyNeeded { version: u32 },
}

/// Validity a token must have left when the caller names no `min_ttl`, at most.
pub const DEFAULT_MIN_TTL: i64 = 60;

/// The validity a released token must have left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinTtl {
    /// None named: [`DEFAULT_MIN_TTL`], or a quarter of the provider's issued lifetime if
    /// that is less, so that a release without `min_ttl` always works (the background
    /// refresher renews a token by half its lifetime).
    Default,
    /// Named by the caller (seconds).
    Explicit(i64),
}

impl MinTtl {
    /// The seconds required of a credential whose provider issues tokens for `lifetime`
    /// seconds (when known); `Err(lifetime)` if no token of the provider's can meet it.
    pub fn resolve(self, lifetime: Option<i64>) -> std::result::Result<i64, i64> {
        match (self, lifetime) {
            (MinTtl::Default, Some(l)) => Ok(DEFAULT_MIN_TTL.min(l / 4).max(1)),
            (MinTtl::Default, None) => Ok(DEFAULT_MIN_TTL),
            (MinTtl::Explicit(t), Some(l)) if t > l => Err(l),
            (MinTtl::Explicit(t), _) => Ok(t.max(1)),
        }
    }
}

/// Whether a release may ask for a narrower token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Narrowing {
    #[default]
    Allowed,
    /// The provider did not confirm a narrower token: decide as `strict`.
    Unavailable,
    /// Minting failed transiently: use a cached one or answer `provider_unavailable`.
    Failed { retry_after: u64 },
}

impl Narrowing {
    fn is_allowed(self) -> bool {
        self != Narrowing::Unavailable
    }
}

/// The secret part of a release.
#[derive(Debug)]
pub enum ReleasedSecret {
    ApiKey {
        api_key: Secret,
        header_name: String,
        header_value: Secret,
    },
    OAuth2 {
        access_token: Secret,
        token_type: String,
        scope: Vec<Scope>,
        expires_at: Option<i64>,
        expires_in: Option<i64>,
        instance_url: Option<String>,
        /// Whether the token itself carries nothing beyond what the caller may have.
        scope_enforced: bool,
    },
}

#[derive(Debug)]
pub struct Released {
    pub connection_id: ConnectionId,
    pub owner: Owner,
    pub secret: ReleasedSecret,
    pub lease_id: String,
    pub lease_expires_in: i64,
    /// Whether the secret stops working when the lease ends.
    pub lease_enforced: bool,
    /// The stored secret's version (what a refresh after an upstream 401 must still find).
    pub secret_version: i64,
    /// Whether the token is a narrower one minted for this caller (not the stored token).
    pub narrowed: bool,
    /// Proxy mode: where the call goes and within what limits.
    pub proxy: Option<ProxyTarget>,
}

/// A proxied call the policy allowed: the upstream base and the connection's limits.
#[derive(Debug, Clone)]
pub struct ProxyTarget {
    pub base: url::Url,
    pub timeout: std::time::Duration,
    pub max_body: u64,
    pub allow_private: bool,
    pub pass_cookies: bool,
    /// API keys: the query parameter that carries the key instead of the header.
    pub query_param: Option<String>,
    /// The checked path below `base`.
    pub path: crate::egress::RelPath,
}

/// A call to proxy, as far as the decision needs it (never its query, headers or body).
#[derive(Debug, Clone)]
pub struct ProxyCall {
    pub method: String,
    /// The path below the connection's base URL, as sent (percent-encoded, no query).
    pub path: String,
}

/// A credential read ahead of its release decision ([`Vault::prefetch_release`]).
pub struct Prefetched {
    connection: String,
    owner: String,
    /// The highest configuration generation observed before the read was sent.
    seen: i64,
    read: std::result::Result<(i64, Option<rows::CredentialRow>), crate::store::StoreError>,
}

/// The inputs of one release, as audited.
#[derive(Debug, Clone)]
pub struct ReleaseInput {
    pub principal: Principal,
    pub connection: ConnectionId,
    pub request: ReleaseRequest,
    pub min_ttl: MinTtl,
    pub request_id: String,
    /// Set on the second pass, after a refresh was attempted: no further refresh signal.
    pub refresh_attempted: Option<u64>,
    /// Whether (still) to ask for a narrower token, for `downscope` connections.
    pub narrowing: Narrowing,
    /// Proxy mode: the call (the request's mode is [`policy::Mode::Proxy`]).
    pub proxy: Option<ProxyCall>,
}

#[derive(Serialize, Default)]
struct Record<'a> {
    agent: &'a str,
    user: Option<&'a str>,
    connection: &'a str,
    owner: Option<String>,
    scopes_requested: Vec<&'a str>,
    scopes_granted: Vec<String>,
    scopes_refused: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    scopes_excess: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope_enforcement: Option<&'static str>,
    scope_enforced: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    narrowed: bool,
    decision: &'static str,
    reason: &'static str,
    lease_id: Option<String>,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

/// A decision whose audit record is not yet committed (see [`Vault::commit_release`]).
#[derive(Debug)]
pub struct Decision {
    outcome: std::result::Result<Released, ReleaseError>,
    /// `None` only for `RefreshNeeded`, which is not a decision.
    event: Option<Event>,
    request_id: String,
}

/// Why an attempt did not decide: a refusal, or configuration read at a generation that has
/// since moved (the attempt is repeated with fresh reads).
enum Refuse {
    Release(ReleaseError),
    Stale,
}

impl From<ReleaseError> for Refuse {
    fn from(e: ReleaseError) -> Self {
        Refuse::Release(e)
    }
}

/// Attempts before a decision is made on whatever the last reads returned. Each retry
/// needs a configuration change between two reads of one request.
const MAX_ATTEMPTS: usize = 3;

impl Vault {
    /// Decides a release (no I/O beyond one SQLite statement when the agent's policy and
    /// the connection's spec are cached). Nothing is released until
    /// [`commit_release`](Self::commit_release) has made the audit record durable.
    pub fn decide_release(&self, input: &ReleaseInput) -> Decision {
        self.decide_release_with(input, None)
    }

    /// The owner whose credential a release of `input` reads, when the decision up to that
    /// read can be made from the cached configuration alone (`None` otherwise: the agent,
    /// its policy or the connection not cached, or a refusal on the way).
    pub fn release_owner(&self, input: &ReleaseInput) -> Option<String> {
        let (_, agent) = self.config.policy(&input.principal.agent_id)?;
        if input.principal.epoch < agent.token_epoch {
            return None;
        }
        self.config.spec(input.connection.as_str())?;
        let (_, owner) = policy::authorize(&agent.policy, &input.connection, &input.principal, &input.request).ok()?;
        Some(owner.to_string())
    }

    /// On PostgreSQL, reads the credential a release of `input` will need on this async
    /// worker (see [`Store::credential_for_release`]), for [`Vault::decide_release_with`];
    /// `None` when it cannot be read here.
    pub async fn prefetch_release(&self, input: &ReleaseInput) -> Option<Prefetched> {
        let owner = self.release_owner(input)?;
        let seen = self.config.highest();
        let read = self.store.credential_for_release(input.connection.as_str(), &owner).await.transpose()?;
        Some(Prefetched { connection: input.connection.as_str().to_owned(), owner, seen, read })
    }

    /// [`Vault::decide_release_with`] on an async worker: `None` when the decision needed
    /// the database beyond the prefetched read (a configuration change meanwhile, a narrowed
    /// token, a refusal to confirm), and must be made again on the blocking pool. A blocking
    /// call here would stall the worker and every read waiting on its connection.
    pub fn decide_release_on_worker(&self, input: &ReleaseInput, prefetched: Prefetched) -> Option<Decision> {
        let (decision, refused) = crate::store::without_pool(|| self.decide_release_with(input, Some(prefetched)));
        (!refused).then_some(decision)
    }

    /// [`Vault::decide_release`], with the credential read ahead when it is the one the
    /// decision asks for (any other read goes to the store as usual).
    pub fn decide_release_with(&self, input: &ReleaseInput, mut prefetched: Option<Prefetched>) -> Decision {
        let p = &input.principal;
        let mut attempt = 0;
        let (outcome, rec) = loop {
            attempt += 1;
            let mut rec = Record {
                agent: &p.agent_id,
                user: p.user.as_deref(),
                connection: input.connection.as_str(),
                scopes_requested: input.request.scopes.iter().map(|s| s.as_str()).collect(),
                request_id: &input.request_id,
                method: input.proxy.as_ref().map(|c| c.method.as_str()),
                ..Record::default()
            };
            // Decided on an async worker: a master key not loaded yet is loaded by the
            // caller on the blocking pool (KeyNeeded), never derived here.
            match crate::keys::without_loading(|| self.decide(input, &mut rec, attempt == MAX_ATTEMPTS, &mut prefetched)) {
                Ok(r) => break (Ok(r), rec),
                Err(Refuse::Release(e)) => break (Err(e), rec),
                Err(Refuse::Stale) => {
                    // Read before the configuration moved on: not for the next attempt.
                    prefetched = None;
                    continue;
                }
            }
        };
        let request_id = input.request_id.clone();
        if let Err(ReleaseError::RefreshNeeded { .. } | ReleaseError::NarrowNeeded { .. } | ReleaseError::KeyNeeded { .. }) = &outcome {
            // The caller refreshes and asks again; that second decision is audited.
            return Decision { outcome, event: None, request_id };
        }
        let action = if input.proxy.is_some() { "proxy.request" } else { "token.release" };
        let event = release_event(rec, &outcome, action);
        Decision { outcome, event: Some(event), request_id }
    }

    /// Commits the decision's audit record and then returns the decision; a release whose
    /// record cannot be committed is refused. Waiting holds no thread.
    pub fn commit_release(&self, d: Decision) -> impl std::future::Future<Output = Result<Released>> + 'static {
        let committed = d.event.map(|event| self.audit_sink().append(event, self.clock.now_millis()));
        async move {
            if let Some(committed) = committed {
                if let Err(e) = committed.await {
                    tracing::error!(error = %e, request_id = %d.request_id, "audit write failed; refusing release");
                    return Err(ReleaseError::AuditUnavailable.into());
                }
            }
            d.outcome.map_err(VaultError::Release)
        }
    }

    /// The agent's policy and token epoch (`None`: disabled or deleted) and the generation
    /// they are valid for.
    fn release_policy(&self, agent: &str) -> Result<(i64, Option<Arc<AgentPolicy>>)> {
        if let Some((g, p)) = self.config.policy(agent) {
            return Ok((g, Some(p)));
        }
        // A cache miss (once per configuration change): the agents table against its digest too.
        let seen = self.config.highest();
        let (generation, row) = self.store.snapshot(|c| {
            crate::store::integrity::verify_table(c, &crate::store::integrity::AGENTS)?;
            identity::agent_policy_at_generation(c, agent)
        })?;
        match row {
            Some(identity::AgentPolicyRow { policy, disabled: false, token_epoch }) => {
                let policy: Policy = serde_json::from_str(&policy).map_err(|e| VaultError::Integrity(e.to_string()))?;
                let agent_policy = Arc::new(AgentPolicy { policy, token_epoch });
                self.config.put_policy(generation, agent, agent_policy.clone());
                Ok((generation, Some(agent_policy)))
            }
            _ => {
                self.observe_generation(generation, seen)?;
                Ok((generation, None))
            }
        }
    }

    /// The connection's spec (`None`: no such connection) and the generation it is valid for.
    fn release_spec(&self, connection: &str) -> Result<(i64, Option<Arc<ConnectionSpec>>)> {
        if let Some((g, s)) = self.config.spec(connection) {
            return Ok((g, Some(s)));
        }
        let seen = self.config.highest();
        let (generation, spec) = self.store.snapshot(|c| {
            crate::store::integrity::verify_table(c, &crate::store::integrity::CONNECTIONS)?;
            rows::connection_spec_at_generation(c, connection)
        })?;
        let Some(spec) = spec else {
            self.observe_generation(generation, seen)?;
            return Ok((generation, None));
        };
        let spec: Arc<ConnectionSpec> = Arc::new(serde_json::from_str(&spec).map_err(|e| VaultError::Integrity(e.to_string()))?);
        self.config.put_spec(generation, connection, spec.clone());
        Ok((generation, Some(spec)))
    }

    /// `Stale` unless the configuration is still at `generation` (checked before a refusal
    /// that was decided from cached configuration alone). `last` accepts what was read.
    fn still_current(&self, generation: i64, last: bool) -> std::result::Result<(), Refuse> {
        let seen = self.config.highest();
        let now = self.store.read(rows::config_generation).map_err(|e| internal(e.into()))?;
        self.observe_generation(now, seen).map_err(internal)?;
        if now == generation || last {
            Ok(())
        } else {
            Err(Refuse::Stale)
        }
    }

    fn decide(
        &self,
        input: &ReleaseInput,
        rec: &mut Record<'_>,
        last: bool,
        prefetched: &mut Option<Prefetched>,
    ) -> std::result::Result<Released, Refuse> {
        if self.integrity_failed() {
            return Err(internal(VaultError::Integrity("the vault failed an integrity check; refusing releases".into())).into());
        }
        let (generation, policy) = self.release_policy(&input.principal.agent_id).map_err(internal)?;
        let Some(agent) = policy else {
            self.still_current(generation, last)?;
            rec.reason = "agent disabled or deleted";
            return Err(ReleaseError::InvalidToken.into());
        };
        if input.principal.epoch < agent.token_epoch {
            self.still_current(generation, last)?;
            rec.reason = "token issued before the agent's secret was rotated or the agent was disabled";
            return Err(ReleaseError::InvalidToken.into());
        }
        let policy = &agent.policy;
        // Until the policy decides, audit the owner the caller named (or speaks for).
        let req = &input.request;
        rec.owner = match (&req.user_id, &req.tenant_id, &input.principal.user) {
            (Some(u), _, _) => Some(format!("user:{u}")),
            (None, Some(t), _) => Some(format!("tenant:{t}")),
            (None, None, Some(u)) => Some(format!("user:{u}")),
            _ => None,
        }
        .filter(|o| Owner::parse(o).is_ok());
        let (grant, owner) = match policy::authorize(policy, &input.connection, &input.principal, &input.request) {
            Ok(x) => x,
            Err(Refusal::AccessDenied(why)) => {
                self.still_current(generation, last)?;
                rec.reason = why;
                return Err(ReleaseError::AccessDenied.into());
            }
            Err(Refusal::InvalidRequest(msg)) => {
                self.still_current(generation, last)?;
                rec.reason = "invalid request";
                return Err(ReleaseError::InvalidRequest(msg).into());
            }
        };
        let owner_name = rec.owner.insert(owner.to_string()).as_str();
        let (spec_generation, spec) = self.release_spec(input.connection.as_str()).map_err(internal)?;
        let (read, seen) = match prefetched.take() {
            Some(p) if p.connection == input.connection.as_str() && p.owner == owner_name => {
                // Read ahead, so possibly older than a generation another request has seen
                // since: that is a stale read, not the generation going back (which a read at
                // least as new as what was seen before it was sent would show).
                if let Ok((g, _)) = &p.read {
                    if *g >= p.seen && *g < self.config.highest() {
                        return Err(Refuse::Stale);
                    }
                }
                (p.read, p.seen)
            }
            _ => {
                let seen = self.config.highest();
                (self.store.read(|c| rows::credential_at_generation(c, input.connection.as_str(), owner_name)), seen)
            }
        };
        let (now_generation, cred) = read.map_err(|e| internal(e.into()))?;
        self.observe_generation(now_generation, seen).map_err(internal)?;
        if (generation != now_generation || spec_generation != now_generation) && !last {
            return Err(Refuse::Stale);
        }
        let Some(spec) = spec else {
            // A grant naming a connection that does not exist: same answer as no grant.
            rec.reason = "no grant for this connection";
            return Err(ReleaseError::AccessDenied.into());
        };
        let proxy_checked = match &input.proxy {
            Some(call) => Some(proxy_rules(&spec, call, rec)?),
            None => None,
        };
        let Some(cred) = cred else {
            rec.reason = "not connected";
            return Err(ReleaseError::NotConnected.into());
        };
        match cred.meta.status {
            CredentialStatus::Active => {}
            CredentialStatus::NeedsReauth => {
                rec.reason = "needs reauthorization";
                return Err(ReleaseError::ReauthRequired.into());
            }
            CredentialStatus::Revoked => {
                rec.reason = "credential revoked";
                return Err(ReleaseError::NotConnected.into());
            }
        }
        let credential_id = cred.meta.id.clone();
        let secret_version = cred.meta.secret_version;
        let min_ttl = match input.min_ttl.resolve(cred.meta.issued_lifetime) {
            Ok(t) => t,
            Err(lifetime) => {
                rec.reason = "min_ttl exceeds the provider's token lifetime";
                return Err(ReleaseError::MinTtlUnsatisfiable { lifetime }.into());
            }
        };
        let opened = self.open_credential_row(cred).map_err(internal)?;
        let now = self.clock.now();
        let roles = &input.principal.roles;
        let lease_id = new_id("lease_").map_err(internal)?;
        let mut narrowed = false;
        let (secret, remaining) = match opened.secret {
            CredentialSecret::ApiKey(k) => {
                // An API key cannot be narrowed or expired: the scope field is a label and the
                // lease a promise the key does not keep (`lease.enforced: false`).
                let scopes =
                    policy::release_scopes(grant, &input.request.scopes, None, &spec.scope_roles, roles).map_err(|r| refused(rec, r))?;
                rec.scopes_granted = names(&scopes);
                let api = spec
                    .api_key
                    .as_ref()
                    .ok_or_else(|| internal(VaultError::Integrity("api_key connection without presentation".into())))?;
                let value = Secret::new(api.format.replace("{key}", k.expose()));
                (ReleasedSecret::ApiKey { api_key: k, header_name: api.header.clone(), header_value: value }, None)
            }
            CredentialSecret::OAuth2 { access_token, refresh_token, token_type, expires_at, instance_url, scopes: held } => {
                let mode = spec.oauth2.as_ref().map(|o| o.scope_enforcement()).unwrap_or(ScopeEnforcement::Strict);
                rec.scope_enforcement = Some(mode.as_str());
                let narrowing = input.narrowing.is_allowed();
                let plan = policy::plan_scopes(mode, narrowing, grant, &input.request.scopes, &held, &spec.scope_roles, roles);
                let token = match plan {
                    Err(ScopeRefusal::Refused(r)) => return Err(refused(rec, r).into()),
                    Err(ScopeRefusal::Excess(excess)) => {
                        rec.reason = "the credential holds scopes the caller may not have";
                        rec.scopes_excess = names(&excess);
                        let unknown = held.known().is_none();
                        return Err(ReleaseError::ExcessScope { excess: rec.scopes_excess.clone(), unknown }.into());
                    }
                    Ok(ScopePlan::AsIs { scopes, enforced }) => {
                        let remaining = expires_at.map(|e| e - now);
                        if remaining.is_some_and(|r| r < min_ttl) {
                            if refresh_token.is_some() && input.refresh_attempted.is_none() {
                                return Err(ReleaseError::RefreshNeeded { owner, min_ttl }.into());
                            }
                            rec.reason = "no token valid for min_ttl (refresh failed or impossible)";
                            return Err(
                                ReleaseError::ProviderUnavailable { retry_after: input.refresh_attempted.unwrap_or(30).max(1) }.into()
                            );
                        }
                        rec.scope_enforced = enforced;
                        ReleasedToken { access_token, token_type, scopes, expires_at, scope_enforced: enforced }
                    }
                    Ok(ScopePlan::Narrow { scopes }) => {
                        let cached = self.open_narrowed(&input.connection, &owner, &credential_id, &scopes).map_err(internal)?;
                        match cached.filter(|t| t.expires_at.is_none_or(|e| e - now >= min_ttl)) {
                            Some(t) => {
                                rec.scope_enforced = true;
                                rec.narrowed = true;
                                narrowed = true;
                                ReleasedToken {
                                    access_token: t.access_token,
                                    token_type: t.token_type,
                                    scopes,
                                    expires_at: t.expires_at,
                                    scope_enforced: true,
                                }
                            }
                            None => match input.narrowing {
                                Narrowing::Allowed => return Err(ReleaseError::NarrowNeeded { owner, scopes, min_ttl }.into()),
                                Narrowing::Failed { retry_after } => {
                                    rec.reason = "no narrower token could be minted (provider unavailable)";
                                    return Err(ReleaseError::ProviderUnavailable { retry_after: retry_after.max(1) }.into());
                                }
                                // A plan never narrows once narrowing is unavailable.
                                Narrowing::Unavailable => {
                                    return Err(internal(VaultError::Internal("narrowing after it was refused")).into())
                                }
                            },
                        }
                    }
                };
                rec.scopes_granted = names(&token.scopes);
                let remaining = token.expires_at.map(|e| e - now);
                let released = ReleasedSecret::OAuth2 {
                    access_token: token.access_token,
                    token_type: token.token_type,
                    scope: token.scopes,
                    expires_at: token.expires_at,
                    expires_in: remaining,
                    instance_url,
                    scope_enforced: token.scope_enforced,
                };
                (released, remaining)
            }
        };
        let proxy = match proxy_checked {
            Some((p, rel)) => Some(proxy_target(&p, rel, &secret, &spec, rec)?),
            None => None,
        };
        let lease_expires_in = policy::lease_ttl(grant, remaining);
        // A lease is enforced when the token dies with it: never for an API key; for a token,
        // when the lease runs to the token's expiry.
        let lease_enforced = remaining.is_some_and(|r| lease_expires_in >= r);
        rec.reason = "granted";
        rec.lease_id = Some(lease_id.clone());
        Ok(Released {
            connection_id: input.connection.clone(),
            owner,
            secret,
            lease_id,
            lease_expires_in,
            lease_enforced,
            secret_version,
            narrowed,
            proxy,
        })
    }
}

/// Proxy mode, before the credential is read: the connection's proxy settings, and whether
/// they allow this method and path.
fn proxy_rules<'s>(
    spec: &'s ConnectionSpec,
    call: &ProxyCall,
    rec: &mut Record<'_>,
) -> std::result::Result<(std::borrow::Cow<'s, ProxySpec>, crate::egress::RelPath), ReleaseError> {
    let rel = match crate::egress::RelPath::parse(&call.path) {
        Ok(rel) => rel,
        Err(e) => {
            rec.reason = "path refused: it could escape the base URL";
            rec.path = Some(call.path.chars().take(256).collect());
            return Err(ReleaseError::InvalidPath(e.to_string()));
        }
    };
    let Some(p) = ProxySpec::of(spec) else {
        rec.reason = "the connection has no proxy configuration";
        return Err(ReleaseError::ProxyNotConfigured);
    };
    if !p.allows_method(&call.method) {
        rec.reason = "method not allowed by the connection's proxy settings";
        return Err(ReleaseError::MethodNotAllowed);
    }
    if p.allowed_paths.as_ref().is_some_and(|paths| !rel.matches_any(paths)) {
        rec.reason = "path not allowed by the connection's proxy settings";
        rec.path = Some(call.path.chars().take(256).collect());
        return Err(ReleaseError::PathNotAllowed("the connection's proxy settings do not allow this path".into()));
    }
    Ok((p, rel))
}

/// Proxy mode, once the credential is open: the upstream base (a credential's
/// `instance_url` filled in), refused when it is a literal address that is not public.
fn proxy_target(
    p: &ProxySpec,
    rel: crate::egress::RelPath,
    secret: &ReleasedSecret,
    spec: &ConnectionSpec,
    rec: &mut Record<'_>,
) -> std::result::Result<ProxyTarget, ReleaseError> {
    let instance = match secret {
        ReleasedSecret::OAuth2 { instance_url, .. } => instance_url.as_deref(),
        ReleasedSecret::ApiKey { .. } => None,
    };
    let base = p.base_for(instance).map_err(|e| {
        rec.reason = "no valid upstream URL for this credential";
        ReleaseError::PathNotAllowed(e.0)
    })?;
    rec.host = base.host_str().map(str::to_owned);
    rec.path = Some(format!("{}/{}", base.path().trim_end_matches('/'), rel.as_str()));
    // Joined and checked now, so that a path the URL parser would rewrite is refused (and
    // audited) before anything is sent; the query string is added when the call is made.
    if let Err(e) = crate::egress::join(&base, &rel, None) {
        rec.reason = "path refused: it could escape the base URL";
        return Err(ReleaseError::InvalidPath(e.to_string()));
    }
    if crate::egress::check_literal(&base, p.allow_private).is_err() {
        rec.reason = "the upstream address is not public";
        return Err(ReleaseError::EgressDenied);
    }
    Ok(ProxyTarget {
        base,
        timeout: std::time::Duration::from_secs(p.timeout_secs()),
        max_body: p.max_body_bytes(),
        allow_private: p.allow_private,
        pass_cookies: p.pass_cookies,
        query_param: spec.api_key.as_ref().and_then(|a| a.query_param.clone()),
        path: rel,
    })
}

/// The token a release hands out (the stored one, or a narrower one).
struct ReleasedToken {
    access_token: Secret,
    token_type: String,
    scopes: Vec<Scope>,
    expires_at: Option<i64>,
    scope_enforced: bool,
}

fn names(scopes: &[Scope]) -> Vec<String> {
    scopes.iter().map(|s| s.as_str().to_owned()).collect()
}

fn refused(rec: &mut Record<'_>, refused: Vec<Scope>) -> ReleaseError {
    rec.reason = "scope not permitted";
    rec.scopes_refused = names(&refused);
    ReleaseError::InsufficientScope(rec.scopes_refused.clone())
}

/// Logs an internal failure of the release path; the caller sees only `internal_error`.
fn internal(e: VaultError) -> ReleaseError {
    if let VaultError::Keys(crate::keys::KeyError::NotLoaded(version)) = e {
        return ReleaseError::KeyNeeded { version };
    }
    if let VaultError::Store(crate::store::StoreError::RefusedHere) = e {
        // Decided on an async worker, which made no database call: decided again on the pool.
        return ReleaseError::Internal;
    }
    tracing::error!(error = %e, "release failed");
    ReleaseError::Internal
}

/// The audit event of a decision.
fn release_event(mut rec: Record<'_>, outcome: &std::result::Result<Released, ReleaseError>, action: &'static str) -> Event {
    let decision = match outcome {
        Ok(_) => Outcome::Ok,
        Err(ReleaseError::ProviderUnavailable { .. } | ReleaseError::Internal) => Outcome::Failed,
        Err(_) => Outcome::Denied,
    };
    rec.decision = if decision == Outcome::Ok { "allow" } else { "deny" };
    if let Err(ReleaseError::Internal) = outcome {
        rec.reason = "internal error (see the server log for this request id)";
    }
    let target = match &rec.owner {
        Some(o) => format!("{}/{o}", rec.connection),
        None => rec.connection.to_owned(),
    };
    Event::serialized(format!("agent:{}", rec.agent), action, target, decision, &rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ttl_adapts_to_the_provider_lifetime() {
        // Unknown lifetime: the default, or what the caller names.
        assert_eq!(MinTtl::Default.resolve(None), Ok(DEFAULT_MIN_TTL));
        assert_eq!(MinTtl::Explicit(86_400).resolve(None), Ok(86_400));
        // Long-lived tokens: the default stands.
        assert_eq!(MinTtl::Default.resolve(Some(3600)), Ok(60));
        // Short-lived ones: a quarter of the lifetime, at least a second.
        assert_eq!(MinTtl::Default.resolve(Some(30)), Ok(7));
        assert_eq!(MinTtl::Default.resolve(Some(2)), Ok(1));
        // An explicit min_ttl no token can meet is refused with the lifetime.
        assert_eq!(MinTtl::Explicit(3601).resolve(Some(3600)), Err(3600));
        assert_eq!(MinTtl::Explicit(3600).resolve(Some(3600)), Ok(3600));
        assert_eq!(MinTtl::Explicit(0).resolve(Some(3600)), Ok(1));
    }
}
