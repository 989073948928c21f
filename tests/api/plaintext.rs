//! No plaintext at rest: canary secrets never appear in the database, its WAL/SHM,
//! the server's log, error bodies, CLI output or the audit table. Also checks graceful
//! shutdown on SIGTERM.

use std::fs;

use latchkey::model::{ConnectionId, CredentialSecret, Owner};
use latchkey::time::Clock;
use latchkey::vault::Vault;
use serde_json::{json, Value};

use crate::helpers::{contains, stderr, stdout, Dirs, ServerProcess};

const CANARIES: [&str; 8] = [
    "CANARY-client-secret-9f1c",
    "CANARY-client-secret-2-77aa",
    "CANARY-api-key-4b2e",
    "CANARY-access-token-c0de",
    "CANARY-refresh-token-beef",
    "CANARY-rejected-body-1234",
    "CANARY-bad-type-5678",
    "CANARY-cli-api-key-0042",
];

#[test]
fn canary_secrets_never_reach_disk_logs_or_audit() {
    let dirs = Dirs::new();
    let tok = dirs.root.path().join("tok");
    let out = dirs.run(&["init", "--no-passphrase", "--admin-token-file", tok.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("WITHOUT passphrase"), "init --no-passphrase must warn loudly");
    let token = fs::read_to_string(&tok).unwrap().trim().to_owned();
    let mut server = ServerProcess::start(&dirs, &[("LATCHKEY_LOG", "debug")]);
    let mut outputs = String::new();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let url = |p: &str| format!("{}{p}", server.addr);
        let send = |m: reqwest::Method, p: &str, body: Value| http.request(m, url(p)).bearer_auth(&token).json(&body).send();
        use reqwest::Method as M;
        let conn = json!({"id": "crm", "kind": "oauth2", "oauth2": {"authorization_endpoint": "https://crm.example/a", "token_endpoint": "https://crm.example/t",
            "client_id": "cid", "client_secret": CANARIES[0]}});
        let checks = [
            (M::POST, "/v1/admin/connections", conn, 201),
            (M::PATCH, "/v1/admin/connections/crm", json!({"oauth2": {"client_secret": CANARIES[1]}}), 200),
            (M::POST, "/v1/admin/connections", json!({"id": "svc", "kind": "api_key", "api_key": {"header": "Authorization", "format": "Bearer {key}"}}), 201),
            (M::PUT, "/v1/admin/connections/svc/credentials/user:alice", json!({"api_key": CANARIES[2]}), 200),
            (M::PUT, "/v1/admin/connections/crm/credentials/user:bob", json!({"access_token": CANARIES[3], "refresh_token": CANARIES[4], "expires_in": 3600}), 200),
            (M::PUT, "/v1/admin/connections/svc/credentials/user:eve", json!({"api_key": CANARIES[5], "unknown": true}), 400),
            (M::PUT, "/v1/admin/connections/crm/credentials/user:eve", json!({"access_token": "x", "expires_in": CANARIES[6]}), 400),
            (M::PUT, "/v1/admin/connections/svc/credentials/user:eve", json!({"access_token": CANARIES[5]}), 400),
        ];
        for (m, p, body, status) in checks {
            let r = send(m.clone(), p, body).await.unwrap();
            assert_eq!(r.status().as_u16(), status, "{m} {p}");
            outputs.push_str(&r.text().await.unwrap());
        }
    });

    let key_file = dirs.root.path().join("cli-key");
    fs::write(&key_file, CANARIES[7]).unwrap();
    for args in [
        vec!["credentials", "put", "svc", "user:carol", "--api-key-file", key_file.to_str().unwrap()],
        vec!["credentials", "list", "svc"],
        vec!["connections", "show", "crm"],
        vec!["keys", "rotate"],
        vec!["keys", "verify"],
        vec!["audit", "tail", "-n", "100"],
    ] {
        let out = dirs.run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        outputs.push_str(&stdout(&out));
        outputs.push_str(&stderr(&out));
    }

    // Graceful shutdown on SIGTERM.
    let status = server.terminate();
    assert!(status.success(), "server exited with {status:?}");
    let log = server.log_text();
    assert!(log.contains("latchkey stopped"), "{log}");
    assert!(log.contains("/v1/admin/connections"), "requests are logged");

    let mut scanned = vec![("server log".to_owned(), log.into_bytes()), ("responses and CLI output".to_owned(), outputs.into_bytes())];
    match &dirs.pg {
        None => {
            for entry in fs::read_dir(dirs.data()).unwrap() {
                let p = entry.unwrap().path();
                scanned.push((p.display().to_string(), fs::read(&p).unwrap()));
            }
            assert!(scanned.iter().any(|(n, _)| n.ends_with("latchkey.db")));
        }
        // Everything PostgreSQL holds, as a backup would: a plain-text dump.
        Some(db) => {
            let dump = std::process::Command::new("pg_dump").arg("--dbname").arg(&db.url).output().expect("pg_dump");
            assert!(dump.status.success(), "pg_dump: {}", String::from_utf8_lossy(&dump.stderr));
            assert!(contains(&dump.stdout, b"COPY public.credentials"), "the dump holds the credentials table");
            scanned.push(("pg_dump".to_owned(), dump.stdout));
        }
    }
    let audit = dirs.sql().text("SELECT string_agg(actor || action || target || outcome || detail, '|') FROM audit");
    scanned.push(("audit table".to_owned(), audit.into_bytes()));
    for (name, bytes) in &scanned {
        for canary in CANARIES {
            assert!(!contains(bytes, canary.as_bytes()), "{canary} found in {name}");
        }
    }

    // The canaries really were stored (so their absence above means something).
    let v = Vault::open_at(&dirs.location(), &dirs.keys(), latchkey::keys::PassphraseSource::None, Clock::system()).unwrap();
    assert_eq!(v.client_secret(&ConnectionId::parse("crm").unwrap()).unwrap().unwrap().expose(), CANARIES[1]);
    for (conn, owner, want) in [("svc", "user:alice", CANARIES[2]), ("crm", "user:bob", CANARIES[3]), ("svc", "user:carol", CANARIES[7])] {
        let opened = v.open_credential(&ConnectionId::parse(conn).unwrap(), &Owner::parse(owner).unwrap()).unwrap().unwrap();
        let got = match &opened.secret {
            CredentialSecret::ApiKey(k) => k.expose().to_owned(),
            CredentialSecret::OAuth2 { access_token, refresh_token, .. } => {
                assert_eq!(refresh_token.as_ref().unwrap().expose(), CANARIES[4]);
                access_token.expose().to_owned()
            }
        };
        assert_eq!(got, want);
        assert!(!format!("{opened:?}").contains(want), "Debug must redact secrets");
    }
}
