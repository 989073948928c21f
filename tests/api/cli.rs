//! The CLI: exit codes, operator commands on the same database, audit verification,
//! schema downgrade refusal, and `serve --dev`.

use std::io::Write;
use std::process::Stdio;

use serde_json::Value;

use crate::helpers::{stderr, stdout, Dirs, ServerProcess};

fn init(dirs: &Dirs) {
    let out = dirs.run(&["init", "--no-passphrase"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).trim().starts_with("lka_"), "the admin token is printed once on stdout");
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let dirs = Dirs::new();
    assert_eq!(dirs.run(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(dirs.run(&["keys"]).status.code(), Some(2));
    let out = dirs.run(&["keys", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("latchkey init"), "{}", stderr(&out));
    init(&dirs);
    assert_eq!(dirs.run(&["keys", "destroy", "1"]).status.code(), Some(2), "destroy needs --yes");
    for (bad, flag) in [("--throttle=-1", "--throttle"), ("--throttle=nan", "--throttle"), ("--batch-size=0", "--batch-size")] {
        let out = dirs.run(&["keys", "rotate", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(stderr(&out).contains(flag), "{bad}: {}", stderr(&out));
    }
    let out = dirs.run(&["keys", "retire", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("active"), "{}", stderr(&out));
    let cfg = dirs.root.path().join("bad.toml");
    std::fs::write(&cfg, "bind = \"127.0.0.1:1\"\nsurprise = 1\n").unwrap();
    let out = dirs.run(&["--config", cfg.to_str().unwrap(), "keys", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("surprise"), "{}", stderr(&out));
}

#[test]
fn operator_commands_manage_connections_credentials_and_tokens() {
    let dirs = Dirs::new();
    init(&dirs);
    let mut child = dirs
        .cmd(&["connections", "add", "--from", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(br#"{"id": "reporting", "kind": "api_key", "api_key": {"header": "X-API-Key"}}"#).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let key = dirs.root.path().join("k");
    std::fs::write(&key, "rk-secret-value\n").unwrap();
    let out = dirs.run(&["credentials", "put", "reporting", "tenant:acme", "--api-key-file", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("rk-secret-value"));
    let out = dirs.run(&["credentials", "list", "reporting"]);
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list[0]["owner"], "tenant:acme");
    let out = dirs.run(&["credentials", "put", "reporting", "tenant:acme"]);
    assert_eq!(out.status.code(), Some(2));
    let out = dirs.run(&["connections", "rm", "reporting"]);
    assert_eq!(out.status.code(), Some(1), "refused while credentials exist");
    let out = dirs.run(&["credentials", "rm", "reporting", "tenant:acme"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dirs.run(&["connections", "rm", "reporting"]).status.success());

    let tok_file = dirs.root.path().join("second-token");
    let out = dirs.run(&["admin-token", "create", "--label", "ci", "--file", tok_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = dirs.run(&["admin-token", "list"]);
    let tokens: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(tokens.as_array().unwrap().len(), 2);
    assert!(!stdout(&out).contains(std::fs::read_to_string(&tok_file).unwrap().trim()), "list shows no secrets");
    let id = tokens[1]["id"].as_str().unwrap();
    assert!(dirs.run(&["admin-token", "revoke", id]).status.success());
    assert_eq!(dirs.run(&["admin-token", "revoke", id]).status.code(), Some(1));
}

#[test]
fn audit_verify_finds_the_first_broken_record() {
    let dirs = Dirs::new();
    init(&dirs);
    for _ in 0..3 {
        assert!(dirs.run(&["admin-token", "create"]).status.success());
    }
    let out = dirs.run(&["audit", "verify"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("5 audit records"), "{}", stdout(&out));
    let out = dirs.run(&["audit", "tail", "--json"]);
    assert_eq!(stdout(&out).lines().count(), 5);

    let c = dirs.sql();
    c.exec("UPDATE audit SET actor = 'cli:someone-else' WHERE seq = 3");
    let out = dirs.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("BROKEN at record 3"), "{}", stdout(&out));
    c.exec("UPDATE audit SET actor = (SELECT actor FROM audit WHERE seq = 2) WHERE seq = 3");
    assert!(dirs.run(&["audit", "verify"]).status.success(), "restoring the record restores the chain");
    c.exec("DELETE FROM audit WHERE seq = 4");
    let out = dirs.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("BROKEN at record 5"), "{}", stdout(&out));
}

/// Rolling upgrades: a schema newer than this binary is fine (expand/contract) until
/// the database records a minimum binary version above this one.
#[test]
fn a_newer_schema_is_accepted_until_it_needs_a_newer_binary() {
    let dirs = Dirs::new();
    init(&dirs);
    let out = dirs.run(&["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let db = dirs.sql();
    db.exec_either("PRAGMA user_version = 99", "INSERT INTO latchkey_migrations (version, applied_at) VALUES (99, 0)");
    let out = dirs.run(&["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("version 99"), "{}", stdout(&out));
    db.exec("UPDATE schema_meta SET value = '99.0.0' WHERE key = 'min_binary_version'");
    let out = dirs.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("needs latchkey 99.0.0 or newer"), "{}", stderr(&out));
}

#[test]
fn serve_dev_initialises_once_and_serves() {
    let dirs = Dirs::new();
    let mut first = ServerProcess::start_args(&dirs, &["serve", "--dev"], &[]);
    assert!(first.log_text().contains("development vault initialised"), "{}", first.log_text());
    let status = first.terminate();
    assert!(status.success());
    drop(first);
    // `serve` alone (no --dev) fails on an empty directory with a helpful message.
    let empty = Dirs::new();
    let out = empty.cmd(&["serve"]).env("LATCHKEY_BIND", "127.0.0.1:0").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("serve --dev"), "{}", stderr(&out));
    // Second --dev start reuses the initialised directory.
    let mut second = ServerProcess::start_args(&dirs, &["serve", "--dev"], &[]);
    assert!(!second.log_text().contains("initialised"), "{}", second.log_text());
    let bind = second.addr.trim_start_matches("http://").to_owned();
    let out = dirs.cmd(&["healthcheck"]).env("LATCHKEY_BIND", &bind).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(second.terminate().success());
    let out = dirs.cmd(&["healthcheck"]).env("LATCHKEY_BIND", &bind).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "healthcheck fails once the server is gone");
}

#[test]
fn agents_are_managed_from_the_cli() {
    let dirs = Dirs::new();
    init(&dirs);
    let body = dirs.root.path().join("agent.json");
    std::fs::write(&body, r#"{"id": "cal", "name": "Calendar tool", "policy": {"grants": [{"connection": "gcal", "owners": "self"}]}}"#)
        .unwrap();
    let out = dirs.run(&["agents", "add", "--from", body.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let secret = stdout(&out).trim().to_owned();
    assert!(secret.starts_with("lks_"), "{secret}");
    let out = dirs.run(&["agents", "show", "cal"]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["policy"]["grants"][0]["connection"], "gcal");
    assert!(!stdout(&out).contains(&secret));
    let policy = dirs.root.path().join("policy.json");
    std::fs::write(&policy, r#"{"grants": [{"connection": "gcal", "owners": "any", "max_ttl": 60}]}"#).unwrap();
    assert!(dirs.run(&["agents", "policy", "cal", "--from", policy.to_str().unwrap()]).status.success());
    std::fs::write(&policy, r#"{"grants": [{"connection": "gcal", "owners": "nobody"}]}"#).unwrap();
    assert_eq!(
        dirs.run(&["agents", "policy", "cal", "--from", policy.to_str().unwrap()]).status.code(),
        Some(2),
        "an invalid policy is bad input"
    );
    let out = dirs.run(&["agents", "rotate-secret", "cal"]);
    assert!(out.status.success());
    assert_ne!(stdout(&out).trim(), secret);
    let out = dirs.run(&["agents", "disable", "cal"]);
    assert_eq!(serde_json::from_str::<Value>(&stdout(&out)).unwrap()["disabled"], true);
    let out = dirs.run(&["agents", "list"]);
    assert_eq!(serde_json::from_str::<Value>(&stdout(&out)).unwrap().as_array().unwrap().len(), 1);
    assert!(dirs.run(&["agents", "rm", "cal"]).status.success());
    assert_eq!(dirs.run(&["agents", "show", "cal"]).status.code(), Some(1));
}

/// The upgrade path for credentials stored before subject prefixes: they move into an
/// issuer's namespace, re-sealed, and `keys verify` still passes.
#[test]
fn credentials_move_into_an_issuers_namespace() {
    let dirs = Dirs::new();
    init(&dirs);
    let conn = dirs.root.path().join("c.json");
    std::fs::write(&conn, r#"{"id": "reporting", "kind": "api_key", "api_key": {"header": "X-API-Key"}}"#).unwrap();
    assert!(dirs.run(&["connections", "add", "--from", conn.to_str().unwrap()]).status.success());
    let key = dirs.root.path().join("k");
    for (owner, secret) in [("user:alice", "k-alice"), ("tenant:acme", "k-acme"), ("user:idp:bob", "k-bob")] {
        std::fs::write(&key, secret).unwrap();
        let out = dirs.run(&["credentials", "put", "reporting", owner, "--api-key-file", key.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = dirs.run(&["credentials", "namespace", "--prefix", "idp", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut moves: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    moves.sort();
    assert_eq!(moves, ["reporting/tenant:acme -> reporting/tenant:idp:acme", "reporting/user:alice -> reporting/user:idp:alice"]);
    assert_eq!(dirs.run(&["credentials", "namespace", "--prefix", "Not A Prefix"]).status.code(), Some(2));
    assert!(dirs.run(&["credentials", "namespace", "--prefix", "idp"]).status.success());
    let list: Value = serde_json::from_str(&stdout(&dirs.run(&["credentials", "list", "reporting"]))).unwrap();
    let owners: Vec<&str> = list.as_array().unwrap().iter().map(|c| c["owner"].as_str().unwrap()).collect();
    assert_eq!(owners, ["tenant:idp:acme", "user:idp:alice", "user:idp:bob"]);
    let out = dirs.run(&["keys", "verify"]);
    assert!(out.status.success(), "the moved credentials are re-sealed under their new owner: {}", stdout(&out));
    // A move onto an owner that already has a credential is refused, nothing changes.
    std::fs::write(&key, "k-alice-2").unwrap();
    assert!(dirs.run(&["credentials", "put", "reporting", "user:alice", "--api-key-file", key.to_str().unwrap()]).status.success());
    let out = dirs.run(&["credentials", "namespace", "--prefix", "idp"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already has a credential"), "{}", stderr(&out));
}
