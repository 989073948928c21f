//! A database writer's attacks (issue: hardening II), each refused or detected and
//! reported: rows that grant access or say where secrets go are sealed with a MAC, a
//! digest per table catches rows put back or deleted, and the configuration generation
//! never goes back. Run on both backends (see `pg_suite`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{stderr, stdout, Dirs, TestApp, TestSql};
use latchkey::vault::Actor;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256_hex(s: &str) -> String {
    hex(&latchkey::crypto::sha256(s.as_bytes()))
}

/// A byte column as hex, on either backend.
fn hex_col(db: &TestSql, col: &str, rest: &str) -> String {
    match db {
        TestSql::Lite(_) => db.text(&format!("SELECT lower(hex({col})) {rest}")),
        TestSql::Pg(_) => db.text(&format!("SELECT encode({col}, 'hex') {rest}")),
    }
}

/// A hex literal for a byte column, on either backend.
fn bytes_lit(db: &TestSql, hex: &str) -> String {
    match db {
        TestSql::Lite(_) => format!("X'{hex}'"),
        TestSql::Pg(_) => format!("decode('{hex}', 'hex')"),
    }
}

async fn status_and_body(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The answer to an integrity violation: a plain internal error that says nothing more.
fn assert_internal_error((status, body): &(u16, Value)) {
    assert_eq!(*status, 500, "{body}");
    assert_eq!(body["error"], "internal_error", "{body}");
}

/// `integrity.violation` records in the audit trail (after the vault records what it found).
/// The `integrity.violation` records, once there is one: the server's heartbeat thread may
/// have taken the pending violations first and be writing them (bounded wait).
fn violations_audited(app: &TestApp) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        app.vault.record_violations();
        let found: Vec<Value> =
            app.vault.audit_tail(1000).unwrap().iter().map(|r| r.to_json()).filter(|r| r["action"] == "integrity.violation").collect();
        if !found.is_empty() || std::time::Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// An API-key connection `mail` with a credential for alice, and a token of agent `svc`
/// allowed to release it.
async fn mail_setup(app: &TestApp) -> String {
    app.api_key_connection("mail").await;
    let r = app.put_json("/v1/admin/connections/mail/credentials/user:alice", json!({"api_key": "mail-key-1"})).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let token = app.service_agent_token("mail").await;
    assert_eq!(release(app, &token).await.0, 200);
    token
}

async fn release(app: &TestApp, token: &str) -> (u16, Value) {
    status_and_body(app.http.get(app.url("/v1/connections/mail/token?user_id=alice")).bearer_auth(token).send().await.unwrap()).await
}

#[tokio::test]
async fn a_forged_admin_token_row_grants_nothing_and_is_reported() {
    let app = TestApp::spawn().await;
    let db = app.sql();
    // The attack: a row holding the hash of a secret the attacker knows.
    let (id, secret) = ("00112233445566ff", "forged-secret");
    db.exec(&format!(
        "INSERT INTO admin_tokens (id, secret_hash, label, created_at, created_by) VALUES ('{id}', {}, 'x', 0, 'attacker')",
        bytes_lit(&db, &sha256_hex(secret))
    ));
    let forged = format!("lka_{id}.{secret}");
    let r = app.http.get(app.url("/v1/admin/agents")).bearer_auth(&forged).send().await.unwrap();
    let answer = status_and_body(r).await;
    assert_internal_error(&answer);
    assert!(!answer.1.to_string().contains(id), "the answer names nothing: {}", answer.1);
    // Fail closed: no admin token is trusted from a tampered table.
    assert_internal_error(&status_and_body(app.get("/v1/admin/agents").await).await);

    let audited = violations_audited(&app);
    assert!(!audited.is_empty(), "an integrity.violation record is written");
    assert!(audited[0]["detail"]["violation"].as_str().unwrap().contains("admin_tokens"), "{}", audited[0]);
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("latchkey_integrity_violations_total "))
        .and_then(|v| v.parse().ok())
        .expect("the violation metric");
    assert!(count >= 1, "{metrics}");

    // `keys verify` finds the row too, and says so.
    let out = app._dirs.run(&["keys", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("FAILED integrity: admin_tokens row '00112233445566ff' does not match its MAC"), "{}", stdout(&out));
}

#[tokio::test]
async fn rewritten_endpoints_and_instance_urls_are_never_used() {
    let app = TestApp::spawn().await;
    let body = json!({"id": "crm", "kind": "oauth2", "oauth2": {
        "authorization_endpoint": "https://crm.example/authorize", "token_endpoint": "https://crm.example/token",
        "client_id": "client-1", "client_secret": "cs-secret", "scopes": ["crm:read"]}});
    assert_eq!(app.post_json("/v1/admin/connections", body).await.status(), 201);
    let token = mail_setup(&app).await;
    let db = app.sql();

    // The refresher would send refresh tokens and the client secret to the attacker.
    db.exec("UPDATE connections SET spec = replace(spec, 'https://crm.example/token', 'https://attacker.example/token') WHERE id = 'crm'");
    assert_internal_error(&status_and_body(app.get("/v1/admin/connections/crm").await).await);
    let e = app.vault.get_connection(&latchkey::model::ConnectionId::parse("crm").unwrap()).unwrap_err();
    assert!(e.to_string().contains("integrity violation"), "{e}");

    // An API-key connection whose header is redirected: releases stop.
    db.exec("UPDATE connections SET spec = replace(spec, 'X-API-Key', 'X-Leak') WHERE id = 'mail'");
    assert_internal_error(&release(&app, &token).await);
    let audited = violations_audited(&app);
    assert!(audited.iter().any(|r| r["detail"]["violation"].as_str().unwrap().contains("connections")), "{audited:?}");
}

#[tokio::test]
async fn a_rewritten_credential_sends_no_token_anywhere() {
    let app = TestApp::spawn().await;
    let token = mail_setup(&app).await;
    let db = app.sql();
    db.exec("UPDATE credentials SET instance_url = 'https://attacker.example' WHERE owner = 'user:alice'");
    let answer = release(&app, &token).await;
    assert_internal_error(&answer);
    assert!(!answer.1.to_string().contains("mail-key-1"));
    // Put back exactly as it was, it is accepted again (the MAC covers the values).
    db.exec("UPDATE credentials SET instance_url = NULL WHERE owner = 'user:alice'");
    assert_eq!(release(&app, &token).await.0, 200);
}

#[tokio::test]
async fn flipping_a_flag_does_not_undo_a_disable() {
    let app = TestApp::spawn().await;
    let token = mail_setup(&app).await;
    assert_eq!(app.admin(Method::POST, "/v1/admin/agents/svc/disable").send().await.unwrap().status(), 200);
    assert_eq!(release(&app, &token).await.0, 401, "disabled");
    let db = app.sql();
    db.exec("UPDATE agents SET disabled = 0 WHERE id = 'svc'");
    assert_internal_error(&release(&app, &token).await);
    // Neither can the agent get a new token.
    let r = app.http.post(app.url("/oauth2/token")).basic_auth("svc", Some("whatever")).form(&[("grant_type", "client_credentials")]);
    assert_internal_error(&status_and_body(r.send().await.unwrap()).await);
}

#[tokio::test]
async fn a_revoked_admin_token_put_back_is_refused_and_fails_the_full_check() {
    let app = TestApp::spawn().await;
    let (id, secret) = app.vault.create_admin_token(&Actor::Cli("test".into()), Some("second")).unwrap();
    let second = secret.expose().to_owned();
    let r = app.http.get(app.url("/v1/admin/agents")).bearer_auth(&second).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let db = app.sql();
    // The attacker keeps the valid, sealed row as it was before the revocation...
    let rest = format!("FROM admin_tokens WHERE id = '{id}'");
    let (version, mac) = (db.int(&format!("SELECT row_version {rest}")).unwrap(), hex_col(&db, "mac", &rest));
    app.vault.revoke_admin_token(&Actor::Cli("test".into()), &id).unwrap();
    assert_eq!(app.http.get(app.url("/v1/admin/agents")).bearer_auth(&second).send().await.unwrap().status(), 401);
    // ... and puts it back. Each column matches the old MAC; the set does not.
    db.exec(&format!(
        "UPDATE admin_tokens SET revoked_at = NULL, row_version = {version}, mac = {} WHERE id = '{id}'",
        bytes_lit(&db, &mac)
    ));
    let r = app.http.get(app.url("/v1/admin/agents")).bearer_auth(&second).send().await.unwrap();
    assert_internal_error(&status_and_body(r).await);

    // The full check (at start, every minute, `keys verify`) says what happened and fails
    // the vault closed: not ready, no releases.
    let e = app.vault.check_integrity().unwrap_err().to_string();
    assert!(e.contains("admin_tokens rows are not the set latchkey last wrote"), "{e}");
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["database"], "integrity violation (see the audit trail)");
    assert!(violations_audited(&app).iter().any(|r| r["detail"]["violation"].as_str().unwrap().contains("re-inserted")));
}

#[tokio::test]
async fn a_lowered_configuration_generation_is_a_violation() {
    let app = TestApp::spawn().await;
    let token = mail_setup(&app).await;
    let db = app.sql();
    db.exec("UPDATE config_generation SET value = value - 1 WHERE id = 1");
    assert_internal_error(&release(&app, &token).await);
    let e = app.vault.check_integrity().unwrap_err().to_string();
    assert!(e.contains("the configuration generation went back"), "{e}");
}

#[test]
fn a_database_from_before_row_integrity_is_sealed_once_on_first_open() {
    let dirs = Dirs::new();
    assert!(dirs.run(&["init", "--no-passphrase"]).status.success());
    assert!(dirs.run(&["admin-token", "create"]).status.success());
    let db = dirs.sql();
    // What an older version left: no MACs, no state, no row or audit keys, no checkpoint,
    // and an audit trail chained with the plain hash.
    db.exec("DELETE FROM integrity_state");
    db.exec("DELETE FROM audit_checkpoints");
    for purpose in ["row_mac", "audit_chain", "audit_signing"] {
        let dek = db.int(&format!("SELECT dek_id FROM vault_keys WHERE purpose = '{purpose}'")).unwrap();
        db.exec(&format!("DELETE FROM vault_keys WHERE purpose = '{purpose}'"));
        db.exec(&format!("DELETE FROM deks WHERE id = {dek}"));
    }
    for t in ["admin_tokens", "agents", "issuers", "connections", "credentials", "signing_keys", "connect_sessions"] {
        db.exec(&format!("UPDATE {t} SET mac = NULL, row_version = 0"));
    }
    let mut prev = [0u8; 32].to_vec();
    assert_eq!(db.int("SELECT count(*) FROM audit"), Some(3), "init, its token and the second token");
    for seq in 1..=3 {
        let ts = db.int(&format!("SELECT ts_ms FROM audit WHERE seq = {seq}")).unwrap();
        let s = |k: &str| db.text(&format!("SELECT {k} FROM audit WHERE seq = {seq}"));
        let h = latchkey::audit::legacy_chain_hash(seq, ts, &s("actor"), &s("action"), &s("target"), &s("outcome"), &s("detail"), &prev);
        db.exec(&format!(
            "UPDATE audit SET prev_hash = {}, hash = {} WHERE seq = {seq}",
            bytes_lit(&db, &hex(&prev)),
            bytes_lit(&db, &hex(&h))
        ));
        prev = h.to_vec();
    }
    let out = dirs.run(&["keys", "verify"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("2 sealed rows and their digest intact"), "{}", stdout(&out));
    assert_eq!(db.int("SELECT count(*) FROM admin_tokens WHERE mac IS NULL"), Some(0));
    let out = dirs.run(&["audit", "verify"]);
    assert!(out.status.success(), "the trail is chained again with the key: {}", stdout(&out));
    assert!(stdout(&out).contains("ok: 5 audit records"), "plus integrity.sealed and keys.verify: {}", stdout(&out));
    // Half of the setup removed is refused, not repaired.
    db.exec("DELETE FROM integrity_state");
    let out = dirs.run(&["admin-token", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("integrity state is missing"), "{}", stderr(&out));
}

/// The test vault's checkpoint file (outside its data directory).
fn checkpoint_file(dirs: &Dirs) -> PathBuf {
    dirs.root.path().join("checkpoints.jsonl")
}

fn with_sink(dirs: &Dirs, args: &[&str]) -> Command {
    let mut c = dirs.cmd(args);
    c.env("LATCHKEY_AUDIT_CHECKPOINT_FILE", checkpoint_file(dirs));
    c
}

fn ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{} {}", stdout(&out), stderr(&out));
    stdout(&out)
}

/// Runs `serve`, which must refuse to start: returns its stderr.
fn serve_refuses(mut c: Command) -> String {
    let mut child = c.env("LATCHKEY_BIND", "127.0.0.1:0").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            assert_eq!(status.code(), Some(1), "{err}");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started on a database behind its checkpoints");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cutting_the_newest_audit_records_off_is_detected() {
    let dirs = Dirs::new();
    ok(with_sink(&dirs, &["init", "--no-passphrase"]));
    for _ in 0..3 {
        ok(with_sink(&dirs, &["admin-token", "create"]));
    }
    let out = ok(with_sink(&dirs, &["audit", "verify"]));
    assert!(out.contains("3 checkpoints in") && out.contains("verified against the trail"), "{out}");
    let db = dirs.sql();
    let head = db.int("SELECT max(seq) FROM audit").unwrap();
    // The attack: the newest records go. The keyed chain that is left is intact...
    db.exec(&format!("DELETE FROM audit WHERE seq >= {}", head - 1));
    let out = with_sink(&dirs, &["audit", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains(&format!("ok: {} audit records, chain intact", head - 2)), "{}", stdout(&out));
    // ... but the checkpoints outside the database cover them.
    assert!(stdout(&out).contains(&format!("the audit trail ends at record {} but checkpoint", head - 2)), "{}", stdout(&out));
    let err = serve_refuses(with_sink(&dirs, &["serve"]));
    assert!(err.contains("refusing to start: behind the audit checkpoints"), "{err}");
    // Without the file, nothing can tell: say so rather than pass silently.
    let out = ok(dirs.cmd(&["audit", "verify"]));
    assert!(out.contains("no checkpoint file configured"), "{out}");
}

#[test]
fn a_restored_old_database_is_refused() {
    let dirs = Dirs::new();
    ok(with_sink(&dirs, &["init", "--no-passphrase"]));
    ok(with_sink(&dirs, &["admin-token", "create"]));
    // A backup, taken while nothing runs.
    let files = ["latchkey.db", "latchkey.db-wal", "latchkey.db-shm"];
    let saved = dirs.root.path().join("backup");
    let pg_backup = dirs.pg.as_ref().map(|pg| pg.copy());
    if pg_backup.is_none() {
        std::fs::create_dir(&saved).unwrap();
        for f in files.iter().filter(|f| dirs.data().join(f).exists()) {
            std::fs::copy(dirs.data().join(f), saved.join(f)).unwrap();
        }
    }
    // Life goes on: a token is revoked, another created.
    let list: Value = serde_json::from_str(&ok(with_sink(&dirs, &["admin-token", "list"]))).unwrap();
    ok(with_sink(&dirs, &["admin-token", "revoke", list[1]["id"].as_str().unwrap()]));
    ok(with_sink(&dirs, &["admin-token", "create"]));
    // The restore.
    let mut serve = with_sink(&dirs, &["serve"]);
    let mut verify = with_sink(&dirs, &["audit", "verify"]);
    match &pg_backup {
        Some(old) => {
            serve.env("LATCHKEY_DATABASE_URL", &old.url);
            verify.env("LATCHKEY_DATABASE_URL", &old.url);
        }
        None => {
            for f in files {
                let _ = std::fs::remove_file(dirs.data().join(f));
                if saved.join(f).exists() {
                    std::fs::copy(saved.join(f), dirs.data().join(f)).unwrap();
                }
            }
        }
    }
    let err = serve_refuses(serve);
    assert!(err.contains("refusing to start: behind the audit checkpoints"), "{err}");
    let out = verify.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
}

/// Sends the in-process app's checkpoints to a file (outside its data directory); returns its path.
fn configure_checkpoint_file(app: &TestApp) -> PathBuf {
    let file = app._dirs.root.path().join("checkpoints.jsonl");
    let sink = latchkey::store::checkpoint::Sink::new(Some(file.clone()), false, latchkey::store::checkpoint::Durability::Os);
    app.vault.configure_checkpoints(sink).unwrap();
    file
}

/// The published checkpoint key: its public half and id.
async fn audit_key(app: &TestApp) -> ([u8; 32], String) {
    let jwk: Value = app.get("/.well-known/latchkey-audit-key").await.json().await.unwrap();
    let public = latchkey::crypto::b64url_decode(jwk["x"].as_str().unwrap()).unwrap().try_into().unwrap();
    (public, jwk["kid"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_running_server_checkpoints_every_batch_and_fails_closed_when_cut_short() {
    let app = TestApp::spawn().await;
    let file = configure_checkpoint_file(&app);
    let token = mail_setup(&app).await;
    let db = app.sql();
    // Every release returned after its record's checkpoint was written.
    let last = std::fs::read_to_string(&file).unwrap().lines().last().unwrap().to_owned();
    let head = db.int("SELECT max(seq) FROM audit").unwrap();
    // Signed with the published key, and covering the newest record.
    let (public, kid) = audit_key(&app).await;
    let cp = latchkey::store::checkpoint::parse_line(&last, &public, &kid).unwrap();
    assert_eq!(cp.audit_seq, head);
    let other = [7u8; 32];
    assert!(latchkey::store::checkpoint::parse_line(&last, &other, &kid).is_err());
    let forged = last.replace(&format!("\"audit_seq\":{head}"), &format!("\"audit_seq\":{}", head + 1));
    assert_ne!(forged, last);
    assert!(latchkey::store::checkpoint::parse_line(&forged, &public, &kid).is_err(), "edits break the signature");

    db.exec(&format!("DELETE FROM audit WHERE seq = {head}"));
    let e = app.vault.check_integrity().unwrap_err().to_string();
    assert!(e.contains("behind the audit checkpoints"), "{e}");
    assert_eq!(app.http.get(app.url("/readyz")).send().await.unwrap().status(), 503);
    assert_internal_error(&release(&app, &token).await);
}

/// Under concurrent releases and configuration changes, every checkpoint covers what its
/// transaction committed: once all is quiet, the last one names the trail's last record, the
/// current configuration generation and the integrity state's last write, and along the sink
/// nothing ever goes back. (A release's commit reuses the state its append read; a change
/// in the same transaction must make the commit read it again.)
#[tokio::test]
async fn checkpoints_cover_what_concurrent_releases_and_changes_committed() {
    let app = TestApp::spawn().await;
    let file = configure_checkpoint_file(&app);
    let token = mail_setup(&app).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut releases = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (http, url, token, stop) = (app.http.clone(), app.url("/v1/connections/mail/token?user_id=alice"), token.clone(), stop.clone());
        releases.spawn(async move {
            let mut ok = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
                let status = r.status();
                if status != 200 {
                    return Err(r.text().await.unwrap());
                }
                ok += 1;
            }
            Ok(ok)
        });
    }
    // Each new connection bumps the configuration generation and seals a row.
    for i in 0..40 {
        let r =
            app.post_json("/v1/admin/connections", json!({"id": format!("c{i}"), "kind": "api_key", "api_key": {"header": "X-Key"}})).await;
        assert_eq!(r.status(), 201);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut released = 0;
    while let Some(n) = releases.join_next().await {
        match n.unwrap() {
            Ok(n) => released += n,
            Err(body) => panic!("a release failed: {body}"),
        }
    }
    assert!(released > 40, "releases ran alongside the changes: {released}");
    // A last release alone: its commit is an append and nothing else.
    assert_eq!(release(&app, &token).await.0, 200);

    let (public, kid) = audit_key(&app).await;
    let lines = std::fs::read_to_string(&file).unwrap();
    let cps: Vec<_> = lines.lines().map(|l| latchkey::store::checkpoint::parse_line(l, &public, &kid).unwrap()).collect();
    assert!(cps.len() > 10, "{} checkpoints", cps.len());
    for w in cps.windows(2) {
        // The sink may skip a checkpoint that a newer one covers (grouped flushes).
        assert!(w[1].n > w[0].n, "one chain, in order");
        assert!(w[1].audit_seq > w[0].audit_seq, "{:?} then {:?}", w[0], w[1]);
        assert!(w[1].config_generation >= w[0].config_generation && w[1].integrity_seq >= w[0].integrity_seq, "{:?} then {:?}", w[0], w[1]);
    }
    let db = app.sql();
    let last = cps.last().unwrap();
    assert_eq!(last.audit_seq, db.int("SELECT max(seq) FROM audit").unwrap());
    assert_eq!(last.config_generation, db.int("SELECT value FROM config_generation WHERE id = 1").unwrap());
    assert_eq!(last.integrity_seq, db.int("SELECT seq FROM integrity_state WHERE id = 1").unwrap());
    let first_generation = cps.first().unwrap().config_generation;
    assert!(
        last.config_generation >= first_generation + 40,
        "the 40 changes are covered: {first_generation} -> {}",
        last.config_generation
    );
}

/// Releases under load, the server SIGKILLed mid-stream: every release a client received
/// has its record in the audit trail afterwards, in both durability modes, and the server
/// starts again (the database is not behind its checkpoints).
#[tokio::test]
async fn sigkill_under_load_loses_no_audit_record_of_a_release_in_either_durability_mode() {
    use crate::helpers::ServerProcess;
    for mode in ["os", "fsync"] {
        let dirs = Dirs::new();
        let tok = dirs.root.path().join("admin");
        ok(with_sink(&dirs, &["init", "--no-passphrase", "--admin-token-file", tok.to_str().unwrap()]));
        let admin = std::fs::read_to_string(&tok).unwrap().trim().to_owned();
        let file = checkpoint_file(&dirs);
        let env = [("LATCHKEY_AUDIT_DURABILITY", mode), ("LATCHKEY_AUDIT_CHECKPOINT_FILE", file.to_str().unwrap())];
        let mut server = ServerProcess::start(&dirs, &env);
        let (base, http) = (server.addr.clone(), reqwest::Client::new());
        let conn = json!({"id": "mail", "kind": "api_key", "api_key": {"header": "X-API-Key"}});
        assert_eq!(http.post(format!("{base}/v1/admin/connections")).bearer_auth(&admin).json(&conn).send().await.unwrap().status(), 201);
        let cred = http.put(format!("{base}/v1/admin/connections/mail/credentials/user:alice")).bearer_auth(&admin);
        assert_eq!(cred.json(&json!({"api_key": "k-1"})).send().await.unwrap().status(), 200);
        let grants = json!([{"connection": "mail", "owners": "any"}]);
        let token = crate::helpers::register_agent(&http, &base, &admin, "svc", grants).await;

        // Eight clients release as fast as they can; each keeps the request ids of the
        // releases it received (a 200 with the key).
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (http, url, token, stop) =
                (http.clone(), format!("{base}/v1/connections/mail/token?user_id=alice"), token.clone(), stop.clone());
            clients.spawn(async move {
                let mut received = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(r) = http.get(&url).bearer_auth(&token).send().await else { break };
                    let id = r.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    if r.status() == 200 && r.text().await.is_ok_and(|b| b.contains("k-1")) {
                        received.extend(id);
                    }
                }
                received
            });
        }
        // Load until a few hundred releases went out, then SIGKILL mid-stream.
        let deadline = Instant::now() + Duration::from_secs(30);
        while dirs.sql().int("SELECT count(*) FROM audit WHERE action = 'token.release'").unwrap_or(0) < 300 {
            assert!(Instant::now() < deadline, "{mode}: releases did not flow");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.child.kill().unwrap();
        let _ = server.child.wait();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut received = Vec::new();
        while let Some(r) = clients.join_next().await {
            received.extend(r.unwrap());
        }
        // 300 audited when the kill came; at most one per client was still on its way back.
        assert!(received.len() >= 300 - 8, "{mode}: {} releases received", received.len());

        let trail = ok(with_sink(&dirs, &["audit", "tail", "-n", "1000000", "--json"]));
        let audited: std::collections::HashSet<String> = trail
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["action"] == "token.release" && r["outcome"] == "ok")
            .filter_map(|r| r["detail"]["request_id"].as_str().map(str::to_owned))
            .collect();
        let missing: Vec<_> = received.iter().filter(|id| !audited.contains(*id)).collect();
        assert!(missing.is_empty(), "{mode}: {} of {} received releases have no audit record", missing.len(), received.len());
        let out = ok(with_sink(&dirs, &["audit", "verify"]));
        assert!(out.contains("verified against the trail"), "{mode}: {out}");
        let mut again = ServerProcess::start(&dirs, &env);
        assert!(again.terminate().success(), "{mode}: the server starts again after the kill");
    }
}
