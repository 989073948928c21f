//! A database writer's attacks (issue: hardening II), each refused or detected and
//! reported: rows that grant access or say where secrets go are sealed with a MAC, a
//! digest per table catches rows put back or deleted, and the configuration generation
//! never goes back. Run on both backends (see `pg_suite`).

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{stdout, TestApp, TestSql};
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
fn violations_audited(app: &TestApp) -> Vec<Value> {
    app.vault.record_violations();
    app.vault.audit_tail(1000).unwrap().iter().map(|r| r.to_json()).filter(|r| r["action"] == "integrity.violation").collect()
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
    let dirs = crate::helpers::Dirs::new();
    assert!(dirs.run(&["init", "--no-passphrase"]).status.success());
    assert!(dirs.run(&["admin-token", "create"]).status.success());
    let db = dirs.sql();
    // What an older version left: no MACs, no state, no row key.
    db.exec("DELETE FROM integrity_state");
    let dek = db.int("SELECT dek_id FROM vault_keys WHERE purpose = 'row_mac'").unwrap();
    db.exec("DELETE FROM vault_keys WHERE purpose = 'row_mac'");
    db.exec(&format!("DELETE FROM deks WHERE id = {dek}"));
    for t in ["admin_tokens", "agents", "issuers", "connections", "credentials", "signing_keys", "connect_sessions"] {
        db.exec(&format!("UPDATE {t} SET mac = NULL, row_version = 0"));
    }
    let out = dirs.run(&["keys", "verify"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("2 sealed rows and their digest intact"), "{}", stdout(&out));
    assert_eq!(db.int("SELECT count(*) FROM admin_tokens WHERE mac IS NULL"), Some(0));
    // Half of the setup removed is refused, not repaired.
    db.exec("DELETE FROM integrity_state");
    let out = dirs.run(&["admin-token", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(crate::helpers::stderr(&out).contains("integrity state is missing"), "{}", crate::helpers::stderr(&out));
}
