//! The OAuth lifecycle: connect flow, on-demand and background refresh with single
//! flight, failure classification, revocation, and refresh metrics.
//!
//! Single flight has two layers: an in-process async mutex per credential (concurrent
//! releases and the background refresher of this process queue behind one refresh and
//! then see its result), and a lease column in the credential row (so another process —
//! a CLI, a later replica — never refreshes the same credential at the same time). A
//! refresh's new tokens are committed before anyone is handed the new access token.

pub mod client;
pub mod metrics;
pub mod providers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use crate::model::{ConnectionId, ConnectionSpec, Owner};
use crate::vault::oauth::{FinishedSession, OpenedSession};
use crate::vault::{Vault, VaultError};
use client::{Endpoints, OAuthError};
use providers::ResponseShape;

/// Refresh this long before expiry (or at half the lifetime, if shorter).
pub const REFRESH_MARGIN: i64 = 300;
/// Longer than one provider call ([`client::TIMEOUT`]) plus the commit; a crashed holder
/// blocks refreshes of its credential for at most this long.
const LEASE_MS: i64 = 15_000;
/// Refreshes (on demand and background) past their single-flight lock at once.
const MAX_CONCURRENT_REFRESHES: usize = 256;
/// Background refreshes the refresher keeps going.
const MAX_BACKGROUND: usize = 128;
/// Concurrent token requests to one provider host: its slot is held only for the HTTP
/// request, not for our reads and commits around it.
const MAX_PER_PROVIDER: usize = 8;
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

/// When to refresh a token expiring at `expires_at`, written at `now`:
/// `min(REFRESH_MARGIN, lifetime / 2)` before expiry, minus up to 10 % jitter.
pub fn refresh_due_at(now: i64, expires_at: i64) -> i64 {
    let lead = REFRESH_MARGIN.min((expires_at - now).max(0) / 2);
    let mut b = [0u8; 2];
    let _ = crate::crypto::random_bytes(&mut b);
    let jitter = if lead >= 10 { i64::from(u16::from_le_bytes(b)) % (lead / 10 + 1) } else { 0 };
    expires_at - lead - jitter
}

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
}

#[derive(Debug, Clone, Copy)]
enum Need {
    /// On demand: at least this many seconds of validity.
    MinTtl(i64),
    /// Background: only if still due.
    Due,
}

#[derive(Default)]
struct InFlight {
    lock: tokio::sync::Mutex<()>,
    done: std::sync::atomic::AtomicU64,
}

pub struct OAuthService {
    vault: Arc<Vault>,
    http: reqwest::Client,
    public_url: String,
    holder: String,
    /// Per credential: the single-flight lock and a count of refreshes completed under it.
    inflight: Mutex<HashMap<String, Arc<InFlight>>>,
    discovery: Mutex<HashMap<String, (Endpoints, Instant)>>,
    per_provider: Mutex<HashMap<String, Arc<Semaphore>>>,
    global: Arc<Semaphore>,
    wake: Notify,
    pub metrics: metrics::Metrics,
}

/// The task id of a finished background refresh (also if it panicked).
fn finished(done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) -> tokio::task::Id {
    match done {
        Ok((id, ())) => id,
        Err(e) => e.id(),
    }
}

fn blocking_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl OAuthService {
    pub fn new(vault: Arc<Vault>, public_url: String) -> Self {
        let holder = crate::vault::new_id("lk-").unwrap_or_else(|_| "lk-unknown".into());
        OAuthService {
            vault,
            http: client::http_client(),
            public_url,
            holder,
            inflight: Mutex::new(HashMap::new()),
            discovery: Mutex::new(HashMap::new()),
            per_provider: Mutex::new(HashMap::new()),
            global: Arc::new(Semaphore::new(MAX_CONCURRENT_REFRESHES)),
            wake: Notify::new(),
            metrics: metrics::Metrics::default(),
        }
    }

    pub fn redirect_uri(&self) -> String {
        format!("{}/v1/connect/callback", self.public_url)
    }

    /// The endpoints of a connection: explicit fields first, then discovery, then the
    /// catalog entry.
    pub async fn endpoints(&self, spec: &ConnectionSpec) -> Result<Endpoints, String> {
        let o = spec.oauth2.as_ref().ok_or("not an oauth2 connection")?;
        let provider = spec.provider.as_deref().and_then(providers::find);
        let tenant = o.tenant.clone().unwrap_or_else(|| "common".into());
        let fill = |u: &str| u.replace("{tenant}", &tenant);
        let mut ep = Endpoints {
            issuer: o.issuer.clone(),
            authorization: o.authorization_endpoint.clone().or(provider.map(|p| fill(p.authorization_endpoint))).unwrap_or_default(),
            token: o.token_endpoint.clone().or(provider.map(|p| fill(p.token_endpoint))).unwrap_or_default(),
            revocation: o.revocation_endpoint.clone().or(provider.and_then(|p| p.revocation_endpoint.map(fill))),
            auth_method: o.token_endpoint_auth_method,
            shape: provider.map(|p| p.response_shape).unwrap_or(ResponseShape::Standard),
            scope_separator: provider.map(|p| p.scope_separator).unwrap_or(" "),
        };
        if let Some(url) = &o.discovery_url {
            let cached = self
                .discovery
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(url)
                .filter(|(_, at)| at.elapsed() < DISCOVERY_TTL)
                .map(|(e, _)| e.clone());
            let found = match cached {
                Some(e) => e,
                None => {
                    let (issuer, authz, token, revoke) = client::discover(&self.http, url).await?;
                    let e = Endpoints { issuer: Some(issuer), authorization: authz, token, revocation: revoke, ..ep.clone() };
                    self.discovery.lock().unwrap_or_else(|p| p.into_inner()).insert(url.clone(), (e.clone(), Instant::now()));
                    e
                }
            };
            // Explicit fields win over discovered ones.
            ep.issuer = ep.issuer.or(found.issuer);
            if o.authorization_endpoint.is_none() {
                ep.authorization = found.authorization;
            }
            if o.token_endpoint.is_none() {
                ep.token = found.token;
            }
            if o.revocation_endpoint.is_none() {
                ep.revocation = found.revocation;
            }
        }
        if ep.authorization.is_empty() || ep.token.is_empty() {
            return Err(format!("connection '{}' has no usable endpoints; unknown provider?", spec.id));
        }
        Ok(ep)
    }

    /// The provider URL a just-opened connect link redirects to.
    pub async fn authorize_url(&self, s: &OpenedSession) -> Result<String, String> {
        let ep = self.endpoints(&s.spec).await?;
        let o = s.spec.oauth2.as_ref().ok_or("not an oauth2 connection")?;
        let provider = s.spec.provider.as_deref().and_then(providers::find);
        let mut url = url::Url::parse(&ep.authorization).map_err(|_| "invalid authorization endpoint".to_owned())?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &o.client_id)
                .append_pair("redirect_uri", &self.redirect_uri())
                .append_pair("state", s.state.expose());
            if !o.scopes.is_empty() {
                q.append_pair("scope", &o.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(ep.scope_separator));
            }
            if o.pkce {
                q.append_pair("code_challenge", &s.challenge).append_pair("code_challenge_method", "S256");
            }
            for (k, v) in provider.map(|p| p.extra_authorize_params).unwrap_or_default() {
                if !o.extra_authorize_params.contains_key(*k) {
                    q.append_pair(k, v);
                }
            }
            for (k, v) in &o.extra_authorize_params {
                q.append_pair(k, v);
            }
        }
        Ok(url.into())
    }

    /// Exchanges the code of a finished connect session and stores the credential.
    pub async fn complete_connect(&self, s: &FinishedSession, code: &str, iss: Option<&str>) -> Result<(), String> {
        let ep = self.endpoints(&s.spec).await?;
        // RFC 9207: when we know the issuer and the provider names one, they must match.
        if let (Some(expected), Some(got)) = (&ep.issuer, iss) {
            if expected.trim_end_matches('/') != got.trim_end_matches('/') {
                return Err("the authorization response came from a different issuer (iss mismatch)".into());
            }
        }
        let o = s.spec.oauth2.as_ref().ok_or("not an oauth2 connection")?;
        let secret = {
            let (vault, id) = (self.vault.clone(), s.connection.clone());
            tokio::task::spawn_blocking(move || vault.client_secret(&id)).await.map_err(blocking_err)?.map_err(blocking_err)?
        };
        let verifier = o.pkce.then_some(&s.verifier);
        let tokens = client::exchange_code(&self.http, &ep, &o.client_id, secret.as_ref(), code, verifier, &self.redirect_uri())
            .await
            .map_err(|e| e.to_string())?;
        let (vault, conn, owner) = (self.vault.clone(), s.connection.clone(), s.owner.clone());
        tokio::task::spawn_blocking(move || vault.store_tokens(&conn, &owner, tokens, None))
            .await
            .map_err(blocking_err)?
            .map_err(blocking_err)?;
        self.wake.notify_one();
        Ok(())
    }

    /// On-demand refresh so that the token has at least `min_ttl` seconds left.
    pub async fn refresh_for_release(&self, connection: &ConnectionId, owner: &Owner, min_ttl: i64) -> Refreshed {
        self.refresh(connection, owner, Need::MinTtl(min_ttl)).await
    }

    async fn run_blocking<T: Send + 'static>(&self, f: impl FnOnce(&Vault) -> Result<T, VaultError> + Send + 'static) -> Result<T, String> {
        let vault = self.vault.clone();
        tokio::task::spawn_blocking(move || f(&vault)).await.map_err(blocking_err)?.map_err(blocking_err)
    }

    async fn refresh(&self, connection: &ConnectionId, owner: &Owner, need: Need) -> Refreshed {
        use std::sync::atomic::Ordering;
        let key = format!("{connection}/{owner}");
        let entry = self.inflight.lock().unwrap_or_else(|p| p.into_inner()).entry(key.clone()).or_default().clone();
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
        // Forget the entry once nobody else holds it.
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&key).is_some_and(|e| Arc::strong_count(e) <= 2) {
            map.remove(&key);
        }
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
            if m.status != "active" {
                return Refreshed::Rejected;
            }
            let now = self.vault.clock().now();
            let still_needed = match need {
                Need::MinTtl(t) => m.expires_at.is_some_and(|e| e - now < t.max(1)),
                Need::Due => m.refresh_due_at.is_some_and(|d| d <= now),
            };
            if !still_needed {
                return Refreshed::NotNeeded;
            }
            let Some(refresh_token) = m.refresh_token.clone() else { return Refreshed::Impossible };
            // Cross-process single flight: the lease in the row.
            let (id, holder) = (m.credential_id.clone(), self.holder.clone());
            match self.run_blocking(move |v| v.acquire_refresh_lease(&id, &holder, LEASE_MS)).await {
                Ok(true) => return self.refresh_leased(connection, owner, m, refresh_token).await,
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
        m: crate::vault::oauth::RefreshMaterial,
        refresh_token: crate::secret::Secret,
    ) -> Refreshed {
        let ep = match self.endpoints(&m.spec).await {
            Ok(ep) => ep,
            Err(e) => return self.transient(connection, &m, &OAuthError::Transient { reason: e, retry_after: None }).await,
        };
        let provider_key = url::Url::parse(&ep.token).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
        let per = self
            .per_provider
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(provider_key)
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_PER_PROVIDER)))
            .clone();
        let _slot = self.global.clone().acquire_owned().await;
        let client_id = m.spec.oauth2.as_ref().map(|o| o.client_id.clone()).unwrap_or_default();
        let provider_slot = per.acquire_owned().await;
        let started = Instant::now();
        let result = client::refresh(&self.http, &ep, &client_id, m.client_secret.as_ref(), &refresh_token).await;
        self.metrics.refresh_latency(started.elapsed());
        drop(provider_slot);
        match result {
            Ok(tokens) => {
                let (c, o, version, scopes) = (connection.clone(), owner.clone(), m.version, m.scopes.clone());
                match self.run_blocking(move |v| v.store_tokens(&c, &o, tokens, Some((version, Some(refresh_token), scopes)))).await {
                    Ok(()) => {
                        self.metrics.refresh(connection.as_str(), "ok");
                        self.wake.notify_one();
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
            Err(OAuthError::Rejected { code }) => {
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

    async fn transient(&self, connection: &ConnectionId, m: &crate::vault::oauth::RefreshMaterial, e: &OAuthError) -> Refreshed {
        self.metrics.refresh(connection.as_str(), "transient");
        let wait = match e {
            OAuthError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        };
        // Exponential backoff with jitter: 5 s, 10 s, 20 s … capped at 15 min.
        let exp = 5i64.saturating_mul(1 << m.refresh_failures.clamp(0, 8)).min(900);
        let mut b = [0u8; 1];
        let _ = crate::crypto::random_bytes(&mut b);
        let backoff = exp + exp * i64::from(b[0]) / 1024;
        let delay = backoff.max(wait.unwrap_or(0) as i64);
        let retry_at = self.vault.clock().now() + delay;
        tracing::warn!(connection = %connection, reason = %e, retry_in_s = delay, "refresh failed; keeping the stored tokens");
        let (id, holder, msg) = (m.credential_id.clone(), self.holder.clone(), e.to_string());
        if let Err(err) = self.run_blocking(move |v| v.record_refresh_failure(&id, &holder, &msg, retry_at)).await {
            tracing::error!(error = %err, "could not record refresh failure");
        }
        Refreshed::Failed { retry_after: delay as u64 }
    }

    /// Another process holds the lease: wait until it is released or expires (bounded
    /// by the lease length). `false` if the store could not be read.
    async fn wait_for_other(&self, credential_id: &str) -> bool {
        let deadline = Instant::now() + Duration::from_millis(LEASE_MS as u64 + 1000);
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

    /// Revokes a refresh token at the provider (RFC 7009) if it has an endpoint.
    pub async fn revoke(&self, spec: &ConnectionSpec, token: &crate::secret::Secret) -> Result<(), String> {
        let ep = self.endpoints(spec).await?;
        let o = spec.oauth2.as_ref().ok_or("not an oauth2 connection")?;
        let (vault, id) = (self.vault.clone(), spec.id.clone());
        let secret = tokio::task::spawn_blocking(move || vault.client_secret(&id)).await.map_err(blocking_err)?.map_err(blocking_err)?;
        client::revoke(&self.http, &ep, &o.client_id, secret.as_ref(), token).await
    }

    /// The background refresher: sleeps until the earliest due credential (at most 30 s,
    /// or until woken by a new credential), refreshes what is due with bounded
    /// concurrency, and purges stale connect sessions.
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
                let want = room + in_flight.len();
                let due = self.run_blocking(move |v| v.due_refreshes(want)).await.unwrap_or_default();
                full = due.len() == want;
                for (id, conn, owner) in due {
                    let (Ok(conn), Ok(owner)) = (ConnectionId::parse(&conn), Owner::parse(&owner)) else { continue };
                    if running.len() >= MAX_BACKGROUND || in_flight.values().any(|v| *v == id) {
                        continue;
                    }
                    let this = self.clone();
                    let task = running.spawn(async move {
                        this.refresh(&conn, &owner, Need::Due).await;
                    });
                    in_flight.insert(task.id(), id);
                }
            }
            if last_purge.elapsed() > Duration::from_secs(60) {
                last_purge = Instant::now();
                let _ = self.run_blocking(|v| v.purge_connect_sessions()).await;
            }
            let wait = if full || running.len() >= MAX_BACKGROUND {
                // More is due: look again as soon as one finishes.
                Duration::from_secs(30)
            } else {
                let now = self.vault.clock().now();
                let next = self.run_blocking(|v| v.next_refresh_due()).await.ok().flatten();
                Duration::from_secs(next.map(|n| (n - now).clamp(1, 30)).unwrap_or(30) as u64)
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
