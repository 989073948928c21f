//! Crash safety of `latchkey keys rotate` with the real binary: a server runs and
//! writes throughout while rotations are SIGKILLed at random moments.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey::model::{ConnectionId, CredentialInput, NewConnection, Owner};
use latchkey::secret::Secret;
use latchkey::time::Clock;
use latchkey::vault::{Actor, Vault};
use serde_json::{json, Value};

use crate::helpers::{stderr, stdout, Dirs, Rng, ServerProcess};

const CREDENTIALS: usize = 3_000;
const KILLS: usize = 20;
const BATCH: &str = "200";

fn seed(dirs: &Dirs) -> String {
    let init = Vault::init_at(&dirs.location(), &dirs.keys(), None, Clock::system(), &Actor::Cli("seed".into())).unwrap();
    let v = init.vault;
    let actor = Actor::Cli("seed".into());
    v.create_connection(
        &actor,
        NewConnection::from_json(json!({"id": "svc", "kind": "api_key", "api_key": {"header": "X-API-Key"}})).unwrap(),
    )
    .unwrap();
    v.create_connection(
        &actor,
        NewConnection::from_json(json!({"id": "crm", "kind": "oauth2", "oauth2": {"authorization_endpoint": "https://crm.example/a",
            "token_endpoint": "https://crm.example/t", "client_id": "c", "client_secret": "cs"}}))
        .unwrap(),
    )
    .unwrap();
    let svc = ConnectionId::parse("svc").unwrap();
    let items: Vec<_> = (0..CREDENTIALS)
        .map(|i| {
            let input = CredentialInput::api_key(Secret::new(format!("key-{i}")));
            (Owner::parse(&format!("user:u{i}")).unwrap(), input)
        })
        .collect();
    assert_eq!(v.import_credentials(&actor, &svc, items).unwrap(), CREDENTIALS as u64);
    init.admin_token.expose().to_owned()
}

fn status(dirs: &Dirs) -> Value {
    let out = dirs.run(&["keys", "status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn verify_passes(dirs: &Dirs, when: &str) {
    let out = dirs.run(&["keys", "verify"]);
    assert!(out.status.success(), "keys verify failed {when}:\n{}{}", stdout(&out), stderr(&out));
}

#[test]
fn sigkilled_rotations_never_lose_a_key_and_finish_on_rerun() {
    let dirs = Dirs::new();
    let token = seed(&dirs);
    let server = ServerProcess::start(&dirs, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));

    // The server keeps writing (fresh data keys under whatever version is active) and
    // answering while rotations are killed around it.
    let writer = {
        let (stop, ok, failed, addr, token) = (stop.clone(), ok.clone(), failed.clone(), server.addr.clone(), token.clone());
        rt.spawn(async move {
            let http = reqwest::Client::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let owner = format!("user:w{}", i % 40);
                let put = http
                    .put(format!("{addr}/v1/admin/connections/svc/credentials/{owner}"))
                    .bearer_auth(&token)
                    .json(&json!({"api_key": format!("written-{i}")}))
                    .send()
                    .await;
                let ready = http.get(format!("{addr}/readyz")).send().await;
                match (put, ready) {
                    (Ok(p), Ok(r)) if p.status() == 200 && r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    (p, r) => {
                        eprintln!("server error during rotation: {:?} / {:?}", p.map(|x| x.status()), r.map(|x| x.status()));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };

    // One uninterrupted rotation gives the time scale for the kills.
    let started = Instant::now();
    let out = dirs.run(&["keys", "rotate", "--batch-size", BATCH]);
    assert!(out.status.success(), "{}", stderr(&out));
    let full = started.elapsed();
    eprintln!("uninterrupted rotation of {CREDENTIALS} data keys: {full:?}");
    verify_passes(&dirs, "after a full rotation");

    let mut rng = Rng::from_env_or_time();
    // The first rotation may have run while other tests loaded the machine: a kill that comes
    // after its rotation finished narrows the window for the next rounds.
    let mut window_ms = (full.as_millis() as u64).max(20);
    let mut killed_mid_rotation = 0;
    for round in 0..KILLS {
        let mut child = dirs.cmd(&["keys", "rotate", "--batch-size", BATCH]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(window_ms)));
        let mid = child.try_wait().unwrap().is_none();
        killed_mid_rotation += usize::from(mid);
        eprintln!("round {round}: kill {} rotation finished", if mid { "before" } else { "after" });
        if !mid {
            window_ms = (window_ms * 3 / 4).max(20);
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        verify_passes(&dirs, &format!("after kill {round}"));
    }
    assert!(killed_mid_rotation >= KILLS / 4, "only {killed_mid_rotation} of {KILLS} kills landed mid-rotation; the window is wrong");

    // A final run completes: every data key is under the active version.
    let out = dirs.run(&["keys", "rotate", "--batch-size", BATCH]);
    assert!(out.status.success(), "{}", stderr(&out));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(writer).unwrap();
    let s = status(&dirs);
    let active = s["active_version"].as_u64().unwrap();
    assert!(s["rotation"].is_null(), "{s}");
    for v in s["versions"].as_array().unwrap() {
        if v["version"].as_u64() != Some(active) {
            assert_eq!(v["deks"], 0, "data keys left on an old version: {s}");
            assert!(matches!(v["state"].as_str(), Some("decrypt_only")), "{s}");
        } else {
            assert_eq!(v["state"], "active");
            assert!(v["deks"].as_u64().unwrap() >= CREDENTIALS as u64);
        }
    }
    verify_passes(&dirs, "at the end");

    // The running server picked up the new version without a restart.
    let meta: Value = rt.block_on(async {
        let http = reqwest::Client::new();
        let r = http
            .put(format!("{}/v1/admin/connections/svc/credentials/user:after", server.addr))
            .bearer_auth(&token)
            .json(&json!({"api_key": "after"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    });
    assert_eq!(meta["master_key_version"].as_u64(), Some(active));
    assert_eq!(failed.load(Ordering::Relaxed), 0, "the server must keep serving during rotation");
    assert!(ok.load(Ordering::Relaxed) > 0);
}
