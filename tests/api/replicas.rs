//! Several `latchkey serve` processes on one PostgreSQL database, as behind a load
//! balancer: links, refreshes, configuration, the audit chain and master keys span
//! replicas; the database dropping its connections or being unreachable fails safe.
//! These run on PostgreSQL whatever the suite's backend (real binaries, the real
//! oidc-provider, real time).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::provider::{Browser, Provider, CLIENT_ID, CLIENT_SECRET};
use crate::helpers::{stderr, stdout, Dirs, ServerProcess, BIN};

/// The name every replica is reached by (the load balancer's); tests address each
/// replica by its own port and rewrite links accordingly.
const PUBLIC: &str = "http://latchkey.invalid";

struct Cluster {
    dirs: Dirs,
    admin: String,
    servers: Vec<ServerProcess>,
    http: reqwest::Client,
}

impl Cluster {
    /// `n` replicas of a fresh vault on a fresh PostgreSQL database.
    fn start(n: usize) -> Cluster {
        let dirs = Dirs::postgres();
        let tok = dirs.root.path().join("admin");
        let out = dirs.run(&["init", "--no-passphrase", "--admin-token-file", tok.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let admin = std::fs::read_to_string(&tok).unwrap().trim().to_owned();
        let servers = (0..n).map(|_| ServerProcess::start(&dirs, &[("LATCHKEY_PUBLIC_URL", PUBLIC)])).collect();
        Cluster { dirs, admin, servers, http: reqwest::Client::new() }
    }

    fn base(&self, i: usize) -> &str {
        &self.servers[i].addr
    }

    async fn admin(&self, i: usize, method: reqwest::Method, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut r = self.http.request(method, format!("{}{path}", self.base(i))).bearer_auth(&self.admin);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap()
    }

    /// Registers agent `svc` with `grants`; returns its client secret.
    async fn agent(&self, grants: Value) -> String {
        let body = json!({"id": "svc", "name": "svc", "policy": {"grants": grants}});
        let r = self.admin(0, reqwest::Method::POST, "/v1/admin/agents", Some(body)).await;
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["client_secret"].as_str().unwrap().to_owned()
    }

    async fn agent_token(&self, i: usize, secret: &str) -> String {
        crate::helpers::client_credentials(&self.http, self.base(i), "svc", secret).await
    }

    async fn release(&self, i: usize, token: &str, query: &str) -> reqwest::Response {
        self.http.get(format!("{}/v1/connections/{query}", self.base(i))).bearer_auth(token).send().await.unwrap()
    }

    /// An API-key connection `k` with key `sk-a` stored for user alice, and agent `svc`
    /// allowed to release it for any owner (through replica 0); returns the agent's secret.
    async fn api_key_for_alice(&self) -> String {
        let conn = json!({"id": "k", "kind": "api_key", "api_key": {"header": "X-Key"}});
        assert_eq!(self.admin(0, reqwest::Method::POST, "/v1/admin/connections", Some(conn)).await.status(), 201);
        let r =
            self.admin(0, reqwest::Method::PUT, "/v1/admin/connections/k/credentials/user:alice", Some(json!({"api_key": "sk-a"}))).await;
        assert_eq!(r.status(), 200);
        self.agent(json!([{"connection": "k", "owners": "any"}])).await
    }

    /// An OAuth connection `crm` to `provider` (through replica 0).
    async fn oauth_connection(&self, provider: &Provider) {
        let conn = json!({"id": "crm", "kind": "oauth2", "oauth2": {
            "discovery_url": format!("{}/.well-known/openid-configuration", provider.url),
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scopes": ["openid", "crm:read"]}});
        assert_eq!(self.admin(0, reqwest::Method::POST, "/v1/admin/connections", Some(conn)).await.status(), 201);
    }

    /// A connect link made on replica `made`, opened on `opened`, whose provider callback
    /// lands on `callback`.
    async fn connect(&self, owner: &str, account: &str, made: usize, opened: usize, callback: usize) {
        let body = json!({"connection_id": "crm", "owner": owner});
        let r = self.admin(made, reqwest::Method::POST, "/v1/connect/sessions", Some(body)).await;
        assert_eq!(r.status(), 201);
        let link = r.json::<Value>().await.unwrap()["connect_url"].as_str().unwrap().replace(PUBLIC, self.base(opened));
        let mut b = Browser::new();
        let cb = b.login(&link, &format!("{PUBLIC}/v1/connect/callback"), account).await;
        let cb = cb.replace(PUBLIC, self.base(callback));
        b.same_site(self.base(opened), self.base(callback));
        let r = b.get(&cb).await;
        assert_eq!(r.status(), 200, "connected through replica {callback}");
        assert!(r.text().await.unwrap().contains("Connected"));
        // Single use across replicas: the same callback replayed on every replica is refused.
        for other in 0..self.servers.len() {
            let replay = cb.replace(self.base(callback), self.base(other));
            b.same_site(self.base(opened), self.base(other));
            assert_eq!(b.get(&replay).await.status(), 400, "callback replayed on replica {other}");
        }
    }

    fn audit_verify(&self) {
        let out = self.dirs.run(&["audit", "verify"]);
        assert!(out.status.success(), "audit verify: {}{}", stdout(&out), stderr(&out));
    }
}

#[tokio::test]
async fn links_single_flight_refreshes_and_one_audit_chain_span_three_replicas() {
    let c = Cluster::start(3);
    let provider = Provider::start(&format!("{PUBLIC}/v1/connect/callback"), 30);
    c.oauth_connection(&provider).await;
    let secret = c.agent(json!([{"connection": "crm", "owners": "any"}])).await;
    // Made on one replica, opened on the next, the callback on the third.
    c.connect("user:alice", "alice", 0, 1, 2).await;
    let _ = reqwest::Client::new().post(format!("{}/_test/reset", provider.url)).send().await.unwrap();
    let (old_access, _) = {
        let t = c.agent_token(0, &secret).await;
        let v: Value = c.release(0, &t, "crm/token?user_id=alice").await.json().await.unwrap();
        (v["access_token"].as_str().unwrap().to_owned(), v)
    };

    // The token ages past what the releases ask for; 30 releases on all three replicas at
    // once each need a refresh: one provider call, one new token for everyone.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut tokens = Vec::new();
    for i in 0..3 {
        tokens.push(c.agent_token(i, &secret).await);
    }
    let handles: Vec<_> = (0..30)
        .map(|n| {
            let url = format!("{}/v1/connections/crm/token?user_id=alice&min_ttl=29", c.base(n % 3));
            let (http, token) = (c.http.clone(), tokens[n % 3].clone());
            tokio::spawn(async move {
                let r = http.get(url).bearer_auth(token).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for h in handles {
        answers.push(h.await.unwrap());
    }
    let mut seen = std::collections::BTreeSet::new();
    for (status, v) in &answers {
        assert_eq!(*status, 200, "{v}");
        seen.insert(v["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen.len(), 1, "every replica released the one refreshed token");
    assert!(!seen.contains(&old_access));
    let stats = provider.stats().await;
    assert_eq!(stats["refresh"], 1, "one refresh at the provider for 30 releases on 3 replicas: {stats}");
    assert_eq!(stats["refresh_failed"], 0, "no refresh token spent twice: {stats}");
    assert_eq!(provider.introspect(seen.first().unwrap()).await["active"], true);

    // One linear chain holds every replica's records.
    c.audit_verify();
    let out = c.dirs.run(&["audit", "tail", "-n", "200"]);
    let releases = stdout(&out).lines().filter(|l| l.contains("token.release")).count();
    assert!(releases >= 31, "{releases} release records");
}

#[tokio::test]
async fn configuration_changes_on_one_replica_are_enforced_by_all_at_once() {
    let c = Cluster::start(3);
    let conn = json!({"id": "k", "kind": "api_key", "api_key": {"header": "X-Key"}});
    assert_eq!(c.admin(0, reqwest::Method::POST, "/v1/admin/connections", Some(conn)).await.status(), 201);
    let r = c.admin(1, reqwest::Method::PUT, "/v1/admin/connections/k/credentials/user:alice", Some(json!({"api_key": "sk-a"}))).await;
    assert_eq!(r.status(), 200);
    let secret = c.agent(json!([{"connection": "k", "owners": "any"}])).await;
    let token = c.agent_token(2, &secret).await;
    for i in 0..3 {
        assert_eq!(c.release(i, &token, "k/token?user_id=alice").await.status(), 200, "replica {i} warms its caches");
    }
    // Disabled on replica 0: the very next release anywhere is refused.
    assert_eq!(c.admin(0, reqwest::Method::POST, "/v1/admin/agents/svc/disable", None).await.status(), 200);
    for i in 0..3 {
        assert_eq!(c.release(i, &token, "k/token?user_id=alice").await.status(), 401, "replica {i} after disable");
    }
    assert_eq!(c.admin(1, reqwest::Method::POST, "/v1/admin/agents/svc/enable", None).await.status(), 200);
    let token = c.agent_token(1, &secret).await;
    for i in 0..3 {
        assert_eq!(c.release(i, &token, "k/token?user_id=alice").await.status(), 200, "replica {i} after enable");
    }
    // A narrower policy set on replica 2 binds replicas 0 and 1 immediately.
    let policy = json!({"grants": [{"connection": "k", "owners": "self"}]});
    let r = c.admin(2, reqwest::Method::PUT, "/v1/admin/agents/svc/policy", Some(policy)).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for i in 0..3 {
        assert_eq!(c.release(i, &token, "k/token?user_id=alice").await.status(), 403, "replica {i} after the policy change");
    }
    // A connection edited on one replica: the header changes everywhere.
    let r = c.admin(0, reqwest::Method::PATCH, "/v1/admin/connections/k", Some(json!({"api_key": {"header": "X-Other"}}))).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let policy = json!({"grants": [{"connection": "k", "owners": "any"}]});
    assert_eq!(c.admin(0, reqwest::Method::PUT, "/v1/admin/agents/svc/policy", Some(policy)).await.status(), 200);
    for i in 0..3 {
        let v: Value = c.release(i, &token, "k/token?user_id=alice").await.json().await.unwrap();
        assert_eq!(v["header"]["name"], "X-Other", "replica {i}: {v}");
    }
    c.audit_verify();
}

#[tokio::test]
async fn background_refreshers_of_all_replicas_refresh_each_due_credential_once() {
    let c = Cluster::start(3);
    // 8-second tokens fall due about every 6 seconds.
    let provider = Provider::start(&format!("{PUBLIC}/v1/connect/callback"), 8);
    c.oauth_connection(&provider).await;
    let owners = ["u1", "u2", "u3", "u4"];
    for (n, o) in owners.iter().enumerate() {
        c.connect(&format!("user:{o}"), o, n % 3, n % 3, (n + 1) % 3).await;
    }
    let _ = reqwest::Client::new().post(format!("{}/_test/reset", provider.url)).send().await.unwrap();
    // About two rounds of background refreshes, with no release at all.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = provider.stats().await;
        if stats["refresh"].as_u64().unwrap() >= 2 * owners.len() as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "background refreshes did not happen: {stats}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stats = provider.stats().await;
    assert_eq!(stats["refresh_failed"], 0, "a refresh token spent twice would fail: {stats}");
    // Every provider refresh is one audited refresh, by whichever replica claimed it. (A
    // refresh the provider has answered may still be committing: wait until they agree.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Audit first: a refresh audited by then has reached the provider by the next line.
        let out = c.dirs.run(&["audit", "tail", "-n", "500"]);
        let audited = stdout(&out).lines().filter(|l| l.contains("credential.refresh") && l.contains(" ok")).count() as u64;
        let at_provider = provider.stats().await["refresh"].as_u64().unwrap();
        assert!(audited <= at_provider, "{audited} audited refreshes, {at_provider} at the provider");
        if audited == at_provider {
            break;
        }
        assert!(Instant::now() < deadline, "{audited} audited refreshes, {at_provider} at the provider");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let list = c.admin(0, reqwest::Method::GET, "/v1/admin/connections/crm/credentials", None).await.json::<Value>().await.unwrap();
    for cred in list["credentials"].as_array().unwrap() {
        assert_eq!(cred["status"], "active", "{cred}");
        assert_eq!(cred["refresh_failures"], 0, "{cred}");
    }
    c.audit_verify();
}

#[tokio::test]
async fn dropped_database_connections_answer_503_then_recover_without_a_restart() {
    let c = Cluster::start(2);
    let secret = c.api_key_for_alice().await;
    let tokens = [c.agent_token(0, &secret).await, c.agent_token(1, &secret).await];
    let db = c.dirs.pg.as_ref().unwrap();
    let admin_sql = |sql: String| {
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut a = postgres::Client::connect(&crate::helpers::pg::server().admin_url, postgres::NoTls).unwrap();
                a.batch_execute(&sql).unwrap();
            })
            .join()
            .unwrap()
        })
    };
    // A failover: every connection dropped, and none accepted for a while.
    admin_sql(format!(
        "ALTER DATABASE {0} ALLOW_CONNECTIONS false; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}'",
        db.name
    ));
    for (i, token) in tokens.iter().enumerate() {
        let r = c.release(i, token, "k/token?user_id=alice").await;
        assert_eq!(r.status(), 503, "replica {i} during the outage");
        assert!(r.headers().contains_key("retry-after"), "replica {i}: 503 says when to retry");
        let body = r.text().await.unwrap();
        assert!(!body.contains("sk-a"));
        let r = c.admin(i, reqwest::Method::GET, "/v1/admin/agents", None).await;
        assert_eq!(r.status(), 503, "admin calls too");
        let ready = c.http.get(format!("{}/readyz", c.base(i))).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        assert_eq!(ready.json::<Value>().await.unwrap()["database"], "unavailable");
        assert_eq!(c.http.get(format!("{}/healthz", c.base(i))).send().await.unwrap().status(), 200, "alive, not ready");
    }
    // The database is back: both replicas recover by themselves, within seconds.
    admin_sql(format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", db.name));
    for (i, token) in tokens.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = c.release(i, token, "k/token?user_id=alice").await;
            if r.status() == 200 {
                break;
            }
            assert_eq!(r.status(), 503, "replica {i} while recovering");
            assert!(Instant::now() < deadline, "replica {i} did not recover");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    c.audit_verify();
}

/// Releases read their credential on the HTTP worker's own asynchronous connection once the
/// configuration is cached, and that read trusts nothing the database says by itself: a
/// row rewritten there is refused, and a credential deleted through another replica is gone
/// for the next release at once (no cache of credentials anywhere).
#[tokio::test]
async fn releases_read_on_the_worker_connection_trust_no_rewritten_row_and_see_deletes_at_once() {
    let c = Cluster::start(2);
    let secret = c.api_key_for_alice().await;
    let token = c.agent_token(0, &secret).await;
    for _ in 0..20 {
        let r = c.release(0, &token, "k/token?user_id=alice").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["api_key"], "sk-a");
    }
    let reads = |text: &str, path: &str| -> u64 {
        let line = format!("latchkey_release_reads_total{{path=\"{path}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(line.as_str())).map_or(0, |n| n.parse().unwrap())
    };
    let metrics = c.http.get(format!("{}/metrics", c.base(0))).send().await.unwrap().text().await.unwrap();
    assert!(reads(&metrics, "worker") >= 19, "the configuration is cached after the first release:\n{metrics}");

    // The database's writer points the credential elsewhere: the MAC no longer matches.
    let db = c.dirs.pg.as_ref().unwrap();
    let url = db.url.clone();
    let sql = move |q: &'static str| {
        let url = url.clone();
        std::thread::spawn(move || postgres::Client::connect(&url, postgres::NoTls).unwrap().batch_execute(q).unwrap()).join().unwrap()
    };
    sql("UPDATE credentials SET instance_url = 'https://attacker.example' WHERE owner = 'user:alice'");
    let r = c.release(0, &token, "k/token?user_id=alice").await;
    assert_eq!(r.status(), 500);
    assert!(!r.text().await.unwrap().contains("sk-a"));
    sql("UPDATE credentials SET instance_url = NULL WHERE owner = 'user:alice'");
    assert_eq!(c.release(0, &token, "k/token?user_id=alice").await.status(), 200, "put back as it was, it is accepted");

    // Deleted through replica 1: replica 0's very next release finds nothing.
    let r = c.admin(1, reqwest::Method::DELETE, "/v1/admin/connections/k/credentials/user:alice", None).await;
    assert!(r.status().is_success(), "{}", r.status());
    let r = c.release(0, &token, "k/token?user_id=alice").await;
    assert_eq!(r.status(), 404, "{}", r.text().await.unwrap());
    let metrics = c.http.get(format!("{}/metrics", c.base(0))).send().await.unwrap().text().await.unwrap();
    assert!(reads(&metrics, "worker") >= 22, "{metrics}");
    c.audit_verify();
}

/// Concurrent releases on a replica are read in batches (the reads that wait for the one in
/// flight go together in one statement): each request still gets its own owner's key, never
/// a neighbour's; an owner with none gets 404 from the same statement; a row rewritten in the
/// database fails its own request only.
#[tokio::test]
async fn concurrent_releases_read_in_batches_each_get_their_own_owners_row() {
    let c = Cluster::start(1);
    let secret = c.api_key_for_alice().await;
    const OWNERS: usize = 30;
    for i in 0..OWNERS {
        let path = format!("/v1/admin/connections/k/credentials/user:u{i}");
        let r = c.admin(0, reqwest::Method::PUT, &path, Some(json!({"api_key": format!("sk-{i}")}))).await;
        assert_eq!(r.status(), 200);
    }
    let token = c.agent_token(0, &secret).await;
    let db = c.dirs.pg.as_ref().unwrap();
    let url = db.url.clone();
    std::thread::spawn(move || {
        let mut sql = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        sql.batch_execute("UPDATE credentials SET instance_url = 'https://attacker.example' WHERE owner = 'user:u7'").unwrap();
    })
    .join()
    .unwrap();

    let metric = |text: &str, name: &str| -> u64 {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).map_or(0, |n| n.parse().unwrap())
    };
    let metrics = || async { c.http.get(format!("{}/metrics", c.base(0))).send().await.unwrap().text().await.unwrap() };
    const POOL: &str = "latchkey_release_reads_total{path=\"pool\"}";
    assert_eq!(c.release(0, &token, "k/token?user_id=u0").await.status(), 200, "caches the policy and the connection");
    // Owners u30..u39 have no credential. In the first round each worker opens its connection
    // (the requests meanwhile read through the pool); after it, every read is a worker's.
    let mut pool_after_first_round = 0;
    for round in 0..3 {
        if round == 1 {
            pool_after_first_round = metric(&metrics().await, POOL);
        }
        let mut all = tokio::task::JoinSet::new();
        for n in 0..120 {
            let who = (n * 7 + round) % (OWNERS + 10);
            let r = c.http.get(format!("{}/v1/connections/k/token?user_id=u{who}", c.base(0))).bearer_auth(&token).send();
            all.spawn(async move {
                let r = r.await.unwrap();
                (who, r.status().as_u16(), r.text().await.unwrap())
            });
        }
        while let Some(done) = all.join_next().await {
            let (who, status, body) = done.unwrap();
            match who {
                7 => {
                    assert_eq!(status, 500, "the rewritten row: {body}");
                    assert!(!body.contains("sk-"), "{body}");
                }
                w if w < OWNERS => {
                    assert_eq!(status, 200, "u{w}: {body}");
                    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["api_key"], format!("sk-{w}"), "u{w} got another's key");
                }
                w => assert_eq!(status, 404, "u{w} has no credential: {body}"),
            }
        }
    }
    let text = metrics().await;
    let reads = metric(&text, "latchkey_release_reads_total{path=\"worker\"}");
    let statements = metric(&text, "latchkey_release_read_statements_total");
    assert_eq!(metric(&text, POOL), pool_after_first_round, "no read of the last two rounds was left to the pool:\n{text}");
    assert!(reads >= 240 && statements > 0, "{text}");
    assert!(statements < reads, "some reads were batched: {reads} reads in {statements} statements");
    c.audit_verify();
}

/// A write that fails while taking the write lock (here: cancelled as it waits behind another
/// session's lock, as a lock timeout would) must not leave the writer's transaction aborted:
/// the next write, right after, succeeds. (It used to fail until the connection had been idle
/// for ten seconds, which under steady load is never.)
#[tokio::test]
async fn a_write_that_fails_taking_the_write_lock_leaves_the_writer_usable() {
    let c = Cluster::start(1);
    let secret = c.api_key_for_alice().await;
    let token = c.agent_token(0, &secret).await;
    assert_eq!(c.release(0, &token, "k/token?user_id=alice").await.status(), 200);
    let db = c.dirs.pg.as_ref().unwrap();

    // Another session holds the write lock until told to let go.
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let url = db.url.clone();
    let holder = std::thread::spawn(move || {
        let mut holder = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut t = holder.transaction().unwrap();
        t.batch_execute("SELECT id FROM write_lock WHERE id = 1 FOR UPDATE").unwrap();
        held_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        t.commit().unwrap();
    });
    held_rx.recv().unwrap();
    // A release now waits for the lock (its audit record cannot commit), and every wait for
    // the lock is cancelled, as a lock timeout would end it, until the release has answered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Stops the canceller however this test ends, so that it cannot cancel anything else.
    struct Stop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let _stop_on_exit = Stop(stop.clone());
    let canceller = std::thread::spawn({
        let (admin_url, name, stop) = (crate::helpers::pg::server().admin_url.clone(), db.name.clone(), stop.clone());
        move || {
            let mut a = postgres::Client::connect(&admin_url, postgres::NoTls).unwrap();
            let mut cancelled = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let sql = "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'";
                cancelled += a.query_one(sql, &[&name]).unwrap().get::<_, i64>(0);
                std::thread::sleep(Duration::from_millis(20));
            }
            cancelled
        }
    });
    let r = tokio::time::timeout(Duration::from_secs(15), c.release(0, &token, "k/token?user_id=alice")).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let cancelled = canceller.join().unwrap();
    let r = r.expect("the release waiting for the lock answered");
    assert!(cancelled > 0, "a write waited for the lock and was cancelled");
    assert_eq!(r.status(), 503, "a release whose audit record cannot commit is refused");
    assert!(!r.text().await.unwrap().contains("sk-a"));
    go_tx.send(()).unwrap();
    holder.join().unwrap();
    // The writer is usable at once: no aborted transaction left behind.
    for _ in 0..3 {
        let r = c.release(0, &token, "k/token?user_id=alice").await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    c.audit_verify();
}

#[test]
fn an_unreachable_database_at_start_is_a_clear_error() {
    let dirs = Dirs::new();
    assert!(dirs.run(&["init", "--no-passphrase"]).status.success());
    let out = std::process::Command::new(BIN)
        .args(["serve"])
        .current_dir(dirs.root.path())
        .env("LATCHKEY_DATABASE_URL", "postgres://latchkey:hunter2-secret@127.0.0.1:1/latchkey")
        .env("LATCHKEY_KEYS_DIR", dirs.keys())
        .env("LATCHKEY_BIND", "127.0.0.1:0")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot connect to postgres://latchkey@127.0.0.1:1/latchkey"), "{err}");
    assert!(!err.contains("hunter2"), "the password never appears: {err}");
}

#[test]
fn a_new_master_key_is_activated_only_once_every_live_replica_can_load_it() {
    let c = Cluster::start(1);
    // A second replica with its own copy of the key files (as another host's mount).
    let other_keys = c.dirs.root.path().join("keys-b");
    std::fs::create_dir(&other_keys).unwrap();
    std::fs::set_permissions(&other_keys, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    for e in std::fs::read_dir(c.dirs.keys()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, other_keys.join(p.file_name().unwrap())).unwrap();
    }
    let b = ServerProcess::start(&c.dirs, &[("LATCHKEY_KEYS_DIR", other_keys.to_str().unwrap())]);
    let out = c.dirs.run(&["keys", "rotate", "--wait", "3"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot load it yet") && err.contains("master-v2.key"), "names what is missing: {err}");
    let status: Value = serde_json::from_str(&stdout(&c.dirs.run(&["keys", "status", "--json"]))).unwrap();
    assert_eq!(status["active_version"], 1, "not activated: {status}");
    // The file arrives on the second host: its heartbeat reports it, and the rotation finishes.
    std::fs::copy(c.dirs.keys().join("master-v2.key"), other_keys.join("master-v2.key")).unwrap();
    let out = c.dirs.run(&["keys", "rotate", "--wait", "30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status: Value = serde_json::from_str(&stdout(&c.dirs.run(&["keys", "status", "--json"]))).unwrap();
    assert_eq!(status["active_version"], 2, "{status}");
    // Both replicas write under the new version without a restart.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = json!({"id": "k", "kind": "api_key", "api_key": {"header": "X-Key"}});
        assert_eq!(c.admin(0, reqwest::Method::POST, "/v1/admin/connections", Some(conn)).await.status(), 201);
        for (i, base) in [c.base(0).to_owned(), b.addr.clone()].into_iter().enumerate() {
            let r = c
                .http
                .put(format!("{base}/v1/admin/connections/k/credentials/user:r{i}"))
                .bearer_auth(&c.admin)
                .json(&json!({"api_key": "x"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.json::<Value>().await.unwrap()["master_key_version"], 2, "replica {i}");
        }
    });
    // A replica that lacks a version holding data fails closed: it does not start, and says
    // which file it needs.
    let lacking = c.dirs.root.path().join("keys-c");
    std::fs::create_dir(&lacking).unwrap();
    std::fs::set_permissions(&lacking, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::copy(c.dirs.keys().join("master-v1.key"), lacking.join("master-v1.key")).unwrap();
    let out = c.dirs.cmd(&["serve"]).env("LATCHKEY_KEYS_DIR", &lacking).env("LATCHKEY_BIND", "127.0.0.1:0").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("master-v2.key"), "{}", stderr(&out));
}

/// A replica SIGKILLed while its refresh waits to reach the provider: the provider never
/// saw it, the lease it left expires, and another replica takes the credential over.
#[tokio::test]
async fn a_replica_killed_mid_refresh_is_taken_over_by_another() {
    use crate::helpers::provider::holding_proxy;
    let mut c = Cluster::start(2);
    let provider = Provider::start(&format!("{PUBLIC}/v1/connect/callback"), 30);
    let proxy = holding_proxy(&provider.url, Duration::from_millis(1500));
    let conn = json!({"id": "crm", "kind": "oauth2", "oauth2": {"authorization_endpoint": format!("{}/auth", provider.url),
        "token_endpoint": format!("{proxy}/token"), "revocation_endpoint": format!("{}/token/revocation", provider.url),
        "issuer": provider.url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scopes": ["openid", "crm:read"]}});
    assert_eq!(c.admin(0, reqwest::Method::POST, "/v1/admin/connections", Some(conn)).await.status(), 201);
    let secret = c.agent(json!([{"connection": "crm", "owners": "any"}])).await;
    c.connect("user:alice", "alice", 0, 0, 1).await;
    let _ = reqwest::Client::new().post(format!("{}/_test/reset", provider.url)).send().await.unwrap();
    let (t0, t1) = (c.agent_token(0, &secret).await, c.agent_token(1, &secret).await);
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Replica 0 starts the refresh a release needs; it dies while the request is held.
    let pending = {
        let (http, url) = (c.http.clone(), format!("{}/v1/connections/crm/token?user_id=alice&min_ttl=29", c.base(0)));
        tokio::spawn(async move { http.get(url).bearer_auth(t0).send().await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.servers[0].child.kill().unwrap();
    c.servers[0].child.wait().unwrap();
    assert!(pending.await.unwrap().is_err(), "the release died with its replica");

    // Replica 1 waits out the dead replica's lease, then refreshes: the grant survives.
    let started = Instant::now();
    let r = c.release(1, &t1, "crm/token?user_id=alice&min_ttl=29").await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    eprintln!("taken over after {:?}", started.elapsed());
    assert_eq!(provider.introspect(v["access_token"].as_str().unwrap()).await["active"], true);
    let stats = provider.stats().await;
    assert_eq!(stats["refresh_failed"], 0, "no refresh token lost or spent twice: {stats}");
    assert_eq!(stats["refresh"], 1, "{stats}");
    let cred = c.admin(1, reqwest::Method::GET, "/v1/admin/connections/crm/credentials/user:alice", None).await;
    assert_eq!(cred.json::<Value>().await.unwrap()["status"], "active");
    c.audit_verify();
}

/// One clock: a process on PostgreSQL takes "now" from the database server, so a host whose
/// own clock is off (here by an hour) still agrees with the other replicas on leases, due
/// times and liveness.
#[test]
fn a_process_on_postgresql_follows_the_database_clock() {
    use latchkey::time::Clock;
    let dirs = Dirs::postgres();
    assert!(dirs.run(&["init", "--no-passphrase"]).status.success());
    let skewed = Clock::system();
    skewed.set_reference_millis(Clock::system().now_millis() + 3_600_000);
    assert!(skewed.offset_millis() > 3_500_000, "the host's clock is an hour ahead");
    let vault =
        latchkey::vault::Vault::open_at(&dirs.location(), &dirs.keys(), latchkey::keys::PassphraseSource::None, skewed.clone()).unwrap();
    assert!(skewed.offset_millis().abs() < 2_000, "corrected to the database's clock: {} ms off", skewed.offset_millis());
    // And a heartbeat keeps it so.
    skewed.set_reference_millis(Clock::system().now_millis() - 3_600_000);
    let row = vault.heartbeat("r1", "host", 0).unwrap();
    assert!(skewed.offset_millis().abs() < 2_000, "{} ms off", skewed.offset_millis());
    assert!((row.seen_at - Clock::system().now_millis()).abs() < 2_000, "the heartbeat is stamped on the database's clock");
}

/// A replica that was not live when a new key was activated (paused past the live window
/// here, as a partition would) fails closed when it comes back: `/readyz` says which key it
/// lacks, and it is ready again once the file arrives, without a restart.
#[test]
fn a_running_replica_that_lacks_the_active_key_is_not_ready_until_it_has_it() {
    let c = Cluster::start(1);
    let other_keys = c.dirs.root.path().join("keys-b");
    std::fs::create_dir(&other_keys).unwrap();
    std::fs::set_permissions(&other_keys, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::copy(c.dirs.keys().join("master-v1.key"), other_keys.join("master-v1.key")).unwrap();
    let b = ServerProcess::start(&c.dirs, &[("LATCHKEY_KEYS_DIR", other_keys.to_str().unwrap())]);
    let signal = |sig: &str| assert!(std::process::Command::new("kill").args([sig, &b.child.id().to_string()]).status().unwrap().success());
    signal("-STOP");
    std::thread::sleep(Duration::from_millis(latchkey::vault::LIVE_WINDOW_MS as u64 + 1_000));
    let out = c.dirs.run(&["keys", "rotate"]);
    assert!(out.status.success(), "only live replicas count: {}", stderr(&out));
    signal("-CONT");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ready = |base: &str| {
        let url = format!("{base}/readyz");
        rt.block_on(async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    let (status, body) = ready(&b.addr);
    assert_eq!(status, 503, "{body}");
    let bind = b.addr.trim_start_matches("http://").to_owned();
    let out = c.dirs.cmd(&["healthcheck", "--ready"]).env("LATCHKEY_BIND", &bind).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "healthcheck --ready fails while not ready");
    let out = c.dirs.cmd(&["healthcheck"]).env("LATCHKEY_BIND", &bind).output().unwrap();
    assert!(out.status.success(), "alive all the same");
    assert_eq!(body["keys"], "cannot load master key v2", "{body}");
    assert_eq!(body["database"], "ok");
    assert_eq!(ready(c.base(0)).0, 200, "the replica that has the key is ready");
    std::fs::copy(c.dirs.keys().join("master-v2.key"), other_keys.join("master-v2.key")).unwrap();
    let (status, body) = ready(&b.addr);
    assert_eq!(status, 200, "ready again once the file is there: {body}");
}
