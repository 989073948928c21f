//! Vault benchmarks: `cargo bench --bench vault [-- --sizes 100000,1000000]`.
//!
//! Measures, on a real SQLite file seeded through the library:
//! - decrypt with DEK unwrap (pure crypto) and a full `open_credential` (row read +
//!   unwrap + decrypt), µs per credential;
//! - `keys rotate` wall time (the same code the CLI runs) per size.

use std::time::{Duration, Instant};

use latchkey::crypto::{Binding, Dek, MasterKey};
use latchkey::model::{ConnectionId, CredentialInput, NewConnection, Owner};
use latchkey::secret::Secret;
use latchkey::time::Clock;
use latchkey::vault::{Actor, Vault, DEFAULT_ROTATE_BATCH};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "seed") {
        return seed(&args);
    }
    if args.iter().any(|a| a == "provider") {
        return provider(&args);
    }
    if args.iter().any(|a| a == "upstream") {
        return upstream(&args);
    }
    if args.iter().any(|a| a == "load") {
        return load(&args);
    }
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![100_000, 1_000_000]);

    crypto_only();
    println!("\n| credentials | seed (s) | open_credential (µs, p50) | full integrity check (s) | keys rotate (s) | re-wrapped/s | DB size (MiB) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        rotate_at(n);
    }
}

fn crypto_only() {
    let mk = MasterKey::generate(1).expect("key");
    let b = Binding::new("credential", "crm", "user:alice", "cred_0123456789abcdef", 1);
    let dek = Dek::generate().expect("dek");
    let wrapped = mk.wrap(&dek, &b).expect("wrap");
    let sealed = dek.seal(&[b'x'; 64], &b, "api_key").expect("seal");
    let iters = 200_000u32;
    let t = Instant::now();
    for _ in 0..iters {
        let d = mk.unwrap(std::hint::black_box(&wrapped), &b).expect("unwrap");
        std::hint::black_box(d.open(&sealed, &b, "api_key").expect("open"));
    }
    let per = t.elapsed() / iters;
    let t = Instant::now();
    for _ in 0..iters {
        let d = Dek::generate().expect("dek");
        std::hint::black_box(mk.wrap(&d, &b).expect("wrap"));
        std::hint::black_box(d.seal(&[b'x'; 64], &b, "api_key").expect("seal"));
    }
    let per_seal = t.elapsed() / iters;
    println!("| operation | µs |\n|---|---:|");
    println!("| unwrap DEK + decrypt 64-byte secret | {:.2} |", per.as_secs_f64() * 1e6);
    println!("| new DEK + wrap + encrypt 64-byte secret | {:.2} |", per_seal.as_secs_f64() * 1e6);
}

fn rotate_at(n: usize) {
    let dir = tempfile::tempdir_in(std::env::var("LATCHKEY_BENCH_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string()))
        .expect("tempdir");
    let actor = Actor::Cli("bench".into());
    let vault = Vault::init(&dir.path().join("data"), &dir.path().join("keys"), None, Clock::system(), &actor).expect("init").vault;
    let conn = ConnectionId::parse("svc").expect("id");
    vault
        .create_connection(
            &actor,
            NewConnection::from_json(serde_json::json!({"id": "svc", "kind": "api_key", "api_key": {"header": "X-API-Key"}}))
                .expect("spec"),
        )
        .expect("connection");
    let t = Instant::now();
    let chunk = 20_000;
    let mut i = 0;
    while i < n {
        let items = (i..(i + chunk).min(n))
            .map(|k| {
                let input = CredentialInput::api_key(Secret::new(format!("sk-live-{k:012}-abcdefghijklmnop")));
                (Owner::parse(&format!("user:u{k}")).expect("owner"), input)
            })
            .collect();
        vault.import_credentials(&actor, &conn, items).expect("import");
        i += chunk;
    }
    let seed = t.elapsed();

    // open_credential on random owners (xorshift; no extra dependency).
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut samples: Vec<Duration> = (0..20_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let owner = Owner::parse(&format!("user:u{}", x % n as u64)).expect("owner");
            let t = Instant::now();
            std::hint::black_box(vault.open_credential(&conn, &owner).expect("open").expect("present"));
            t.elapsed()
        })
        .collect();
    samples.sort();
    let p50 = samples[samples.len() / 2];

    // What a server does at start and every minute: every sealed row and the digests.
    let t = Instant::now();
    let report = vault.verify_integrity().expect("integrity check");
    let check = t.elapsed();
    assert!(report.failures.is_empty() && report.rows as usize > n, "{:?}", report.failures);

    let t = Instant::now();
    let report = vault.rotate_keys(&actor, DEFAULT_ROTATE_BATCH, &mut |_| {}).expect("rotate");
    let rotate = t.elapsed();
    // Every credential, plus the vault keys (row and audit keys).
    assert!(report.rewrapped as usize >= n, "{} re-wrapped", report.rewrapped);
    let size = std::fs::metadata(dir.path().join("data/latchkey.db")).map(|m| m.len()).unwrap_or(0) as f64 / (1024.0 * 1024.0);
    println!(
        "| {n} | {:.1} | {:.1} | {:.2} | {:.2} | {:.0} | {size:.0} |",
        seed.as_secs_f64(),
        p50.as_secs_f64() * 1e6,
        check.as_secs_f64(),
        rotate.as_secs_f64(),
        n as f64 / rotate.as_secs_f64()
    );
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

/// `seed --dir D --n N --tokens M --public-url URL`: a vault for the load harness (bench/run.py):
/// N/2 API-key credentials (`tenant:t<i>` on `svc`), N/2 OAuth credentials (`user:u<i>` on `crm`,
/// valid 30 days), an agent `bench` allowed both for any owner, and M distinct pre-signed agent
/// tokens (one per line in D/tokens.txt) for first-use measurements; the admin token in
/// D/admin.txt.
fn seed(args: &[String]) {
    let dir = std::path::PathBuf::from(arg(args, "--dir").expect("--dir"));
    let n: usize = arg(args, "--n").and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let tokens: usize = arg(args, "--tokens").and_then(|v| v.parse().ok()).unwrap_or(1);
    let public_url = arg(args, "--public-url").expect("--public-url").to_owned();
    let actor = Actor::Cli("bench".into());
    // LATCHKEY_DATABASE_URL, as the CLI reads it: seed a PostgreSQL database instead of D/data.
    let location = match std::env::var("LATCHKEY_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => latchkey::store::Location::Postgres(Box::new(
            latchkey::store::PgConfig::parse(&url).unwrap_or_else(|e| panic!("LATCHKEY_DATABASE_URL: {e}")),
        )),
        _ => latchkey::store::Location::Embedded(dir.join("data")),
    };
    let init = Vault::init_at(&location, &dir.join("keys"), None, Clock::system(), &actor).expect("init");
    std::fs::write(dir.join("admin.txt"), init.admin_token.expose()).expect("admin token");
    let vault = init.vault;
    let json = |v: serde_json::Value| NewConnection::from_json(v).expect("spec");
    vault
        .create_connection(&actor, json(serde_json::json!({"id": "svc", "kind": "api_key", "api_key": {"header": "X-API-Key"}})))
        .expect("svc");
    vault
        .create_connection(
            &actor,
            json(serde_json::json!({"id": "crm", "kind": "oauth2", "oauth2": {"authorization_endpoint": "http://127.0.0.1:9/a",
                "token_endpoint": "http://127.0.0.1:9/t", "client_id": "c", "client_secret": "s"}})),
        )
        .expect("crm");
    let t = Instant::now();
    let half = n / 2;
    for (conn, kind) in [("svc", 0), ("crm", 1)] {
        let id = ConnectionId::parse(conn).expect("id");
        let mut i = 0;
        while i < half {
            let items = (i..(i + 20_000).min(half))
                .map(|k| {
                    if kind == 0 {
                        (Owner::parse(&format!("tenant:t{k}")).expect("owner"), CredentialInput::api_key(Secret::new(format!("sk-live-{k:012}-abcdefghijklmnop"))))
                    } else {
                        let body = serde_json::json!({"access_token": format!("at-{k:012}-abcdefghijklmnopqrstuvwxyz"), "refresh_token": format!("rt-{k:012}"),
                            "expires_in": 30 * 86_400, "scope": "crm:read crm:write"});
                        (Owner::parse(&format!("user:u{k}")).expect("owner"), serde_json::from_value(body).expect("body"))
                    }
                })
                .collect();
            vault.import_credentials(&actor, &id, items).expect("import");
            i += 20_000;
        }
    }
    eprintln!("seeded {n} credentials in {:.1} s", t.elapsed().as_secs_f64());
    // OAuth credentials all due for refresh within a second, at a local provider.
    let due: usize = arg(args, "--due").and_then(|v| v.parse().ok()).unwrap_or(0);
    if due > 0 {
        let token_url = arg(args, "--provider").expect("--provider");
        let spec = serde_json::json!({"id": "due", "kind": "oauth2", "oauth2": {"authorization_endpoint": format!("{token_url}/authorize"),
            "token_endpoint": token_url, "client_id": "c", "client_secret": "s"}});
        vault.create_connection(&actor, json(spec)).expect("due");
        let id = ConnectionId::parse("due").expect("id");
        let items = (0..due)
            .map(|k| {
                let body = serde_json::json!({"access_token": format!("at-due-{k:08}"), "refresh_token": format!("rt-due-{k:08}"), "expires_in": 1});
                (Owner::parse(&format!("user:d{k}")).expect("owner"), serde_json::from_value(body).expect("body"))
            })
            .collect();
        vault.import_credentials(&actor, &id, items).expect("import due");
    }
    // Proxy mode: `api`, an API-key connection proxied to a local upstream, keys on the same
    // owners as `svc`.
    let mut grants =
        vec![serde_json::json!({"connection": "svc", "owners": "any"}), serde_json::json!({"connection": "crm", "owners": "any"})];
    if let Some(upstream) = arg(args, "--upstream") {
        let spec = serde_json::json!({"id": "api", "kind": "api_key", "api_key": {"header": "X-API-Key"},
            "proxy": {"base_url": format!("{upstream}/api"), "allow_private": true}});
        vault.create_connection(&actor, json(spec)).expect("api");
        let items = (0..half.max(1))
            .map(|k| {
                (
                    Owner::parse(&format!("tenant:t{k}")).expect("owner"),
                    CredentialInput::api_key(Secret::new(format!("sk-live-{k:012}-abcdefghijklmnop"))),
                )
            })
            .collect();
        vault.import_credentials(&actor, &ConnectionId::parse("api").expect("id"), items).expect("import api");
        grants.push(serde_json::json!({"connection": "api", "owners": "any", "modes": ["proxy"]}));
    }
    let agent: latchkey::vault::NewAgent =
        serde_json::from_value(serde_json::json!({"id": "bench", "name": "bench", "policy": {"grants": grants}})).expect("agent body");
    vault.create_agent(&actor, agent).expect("agent");
    let epoch = vault.active_agent("bench").expect("agent").expect("enabled").token_epoch;
    let signer = latchkey::auth::TokenService::new(public_url.clone(), vault.signing_keys().expect("signing keys"));
    let now = Clock::system().now();
    let mut out = String::with_capacity(tokens * 300);
    for i in 0..tokens {
        let claims = latchkey::auth::AgentClaims {
            iss: public_url.clone(),
            aud: public_url.clone(),
            sub: "bench".into(),
            client_id: "bench".into(),
            iat: now,
            nbf: now,
            exp: now + 3600,
            jti: format!("bench-{i}"),
            act: None,
            tenant: None,
            roles: vec![],
            epoch,
        };
        out.push_str(&signer.sign(&claims).expect("sign"));
        out.push('\n');
    }
    std::fs::write(dir.join("tokens.txt"), out).expect("tokens");
    println!("{{\"n\": {n}, \"half\": {half}, \"tokens\": {tokens}}}");
}

/// The upstream API of the proxy scenario: `GET /api/...` answers a small JSON document when
/// `X-API-Key` carries a seeded key, 401 otherwise, after `--latency-ms` (default 0; real APIs
/// take tens of ms). `upstream --port P [--workers W] [--latency-ms L]`.
fn upstream(args: &[String]) {
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    use std::sync::atomic::{AtomicU64, Ordering};
    let port: u16 = arg(args, "--port").and_then(|v| v.parse().ok()).expect("--port");
    let workers: usize = arg(args, "--workers").and_then(|v| v.parse().ok()).unwrap_or(1);
    static LATENCY_MS: AtomicU64 = AtomicU64::new(0);
    LATENCY_MS.store(arg(args, "--latency-ms").and_then(|v| v.parse().ok()).unwrap_or(0), Ordering::Relaxed);
    async fn item(req: HttpRequest) -> HttpResponse {
        let key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or("");
        if !key.starts_with("sk-live-") {
            return HttpResponse::Unauthorized().finish();
        }
        let latency = LATENCY_MS.load(Ordering::Relaxed);
        if latency > 0 {
            actix_web::rt::time::sleep(Duration::from_millis(latency)).await;
        }
        HttpResponse::Ok()
            .content_type("application/json")
            .body(r#"{"id":"evt_0001","summary":"Weekly sync","start":"2026-12-02T10:00:00Z","end":"2026-12-02T10:30:00Z"}"#)
    }
    actix_web::rt::System::new().block_on(async move {
        let server =
            HttpServer::new(|| App::new().default_service(web::to(item))).workers(workers).bind(("127.0.0.1", port)).expect("bind");
        println!("LISTENING http://127.0.0.1:{port}");
        server.run().await.expect("upstream");
    });
}

/// A minimal OAuth token endpoint for the refresh-throughput scenario: answers every POST
/// with a fresh access token and a rotated refresh token, after `--latency-ms` (default 0;
/// real token endpoints take tens to hundreds of ms). `provider --port P [--latency-ms L]`.
/// `GET /stats` counts the seeded refresh tokens (`rt-due-*`) presented, in all and distinct
/// (a difference means a credential was refreshed twice); `POST /stats/reset` clears them.
fn provider(args: &[String]) {
    use actix_web::{web, App, HttpResponse, HttpServer};
    use std::sync::atomic::{AtomicU64, Ordering};
    let port: u16 = arg(args, "--port").and_then(|v| v.parse().ok()).expect("--port");
    let workers: usize = arg(args, "--workers").and_then(|v| v.parse().ok()).unwrap_or(1);
    static LATENCY_MS: AtomicU64 = AtomicU64::new(0);
    static ISSUED: AtomicU64 = AtomicU64::new(0);
    LATENCY_MS.store(arg(args, "--latency-ms").and_then(|v| v.parse().ok()).unwrap_or(0), Ordering::Relaxed);
    static PRESENTED: std::sync::Mutex<Option<(u64, std::collections::HashSet<String>)>> = std::sync::Mutex::new(None);
    async fn token(form: web::Bytes) -> HttpResponse {
        let presented = form.split(|b| *b == b'&').find_map(|kv| kv.strip_prefix(b"refresh_token=".as_slice()));
        if let Some(rt) = presented.filter(|rt| rt.starts_with(b"rt-due-")) {
            let mut g = PRESENTED.lock().unwrap_or_else(|p| p.into_inner());
            let (all, distinct) = g.get_or_insert_with(Default::default);
            *all += 1;
            distinct.insert(String::from_utf8_lossy(rt).into_owned());
        }
        let latency = LATENCY_MS.load(Ordering::Relaxed);
        if latency > 0 {
            actix_web::rt::time::sleep(Duration::from_millis(latency)).await;
        }
        let n = ISSUED.fetch_add(1, Ordering::Relaxed);
        HttpResponse::Ok().content_type("application/json").body(format!(
            "{{\"access_token\":\"at-{n:012}-refreshed\",\"token_type\":\"Bearer\",\"expires_in\":3600,\"refresh_token\":\"rt-{n:012}-rotated\"}}"
        ))
    }
    async fn stats() -> HttpResponse {
        let g = PRESENTED.lock().unwrap_or_else(|p| p.into_inner());
        let (all, distinct) = g.as_ref().map(|(a, d)| (*a, d.len())).unwrap_or((0, 0));
        HttpResponse::Ok()
            .content_type("application/json")
            .body(format!("{{\"issued\":{},\"due_presented\":{all},\"due_distinct\":{distinct}}}", ISSUED.load(Ordering::Relaxed)))
    }
    async fn reset() -> HttpResponse {
        *PRESENTED.lock().unwrap_or_else(|p| p.into_inner()) = None;
        HttpResponse::NoContent().finish()
    }
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(|| {
            App::new()
                .route("/token", web::post().to(token))
                .route("/stats", web::get().to(stats))
                .route("/stats/reset", web::post().to(reset))
        })
        .workers(workers)
        .bind(("127.0.0.1", port))
        .expect("bind");
        println!("LISTENING http://127.0.0.1:{port}/token");
        server.run().await.expect("provider");
    });
}

/// An open-loop load generator: `load --rate R --duration S [--conns C] --requests FILE`.
/// Request `i` is due at `i / R` seconds whatever the answers' pace; its latency runs from
/// that due time (so a stalled server is charged for the requests it delayed, the
/// coordinated-omission correction), through waiting for one of C connections, to the end
/// of the answer's body. FILE holds one request per line, used in turn:
/// `METHOD<TAB>URL[<TAB>Name: value]...`. Prints one JSON object: achieved rate, p50, p99,
/// p99.9 and max (ms), and the requests that failed or did not answer 2xx.
fn load(args: &[String]) {
    let rate: f64 = arg(args, "--rate").and_then(|v| v.parse().ok()).expect("--rate");
    let secs: f64 = arg(args, "--duration").and_then(|v| v.parse().ok()).expect("--duration");
    let conns: usize = arg(args, "--conns").and_then(|v| v.parse().ok()).unwrap_or(64);
    let file = arg(args, "--requests").expect("--requests");
    let requests: Vec<(reqwest::Method, String, reqwest::header::HeaderMap)> = std::fs::read_to_string(file)
        .expect("requests file")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut parts = l.split('\t');
            let method = parts.next().and_then(|m| m.parse().ok()).expect("method");
            let url = parts.next().expect("url").to_string();
            let mut headers = reqwest::header::HeaderMap::new();
            for h in parts {
                let (name, value) = h.split_once(": ").expect("header");
                headers.append(reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("name"), value.parse().expect("value"));
            }
            (method, url, headers)
        })
        .collect();
    assert!(!requests.is_empty(), "no requests in {file}");
    let requests = std::sync::Arc::new(requests);
    let total = (rate * secs) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    // One runtime thread sends and receives; this thread schedules. Requests are handed over
    // when due by a sleeping thread (timer precision of tens of µs), not by the runtime's
    // timer, whose 1 ms ticks would add up to 1 ms to every latency.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let client = rt.block_on(async { reqwest::Client::builder().pool_max_idle_per_host(conns).no_proxy().build().expect("client") });
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(conns));
    let results = std::sync::Arc::new(std::sync::Mutex::new((Vec::with_capacity(total as usize), 0u64)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let mut i = 0u64;
    while i < total {
        let due = start + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let now = Instant::now();
        while i < total && start + interval.mul_f64(i as f64) <= now {
            let due = start + interval.mul_f64(i as f64);
            let (client, slots, results, requests) = (client.clone(), slots.clone(), results.clone(), requests.clone());
            tasks.push(rt.spawn(async move {
                let _slot = slots.acquire().await.expect("semaphore");
                let (method, url, headers) = &requests[(i as usize) % requests.len()];
                let ok = match client.request(method.clone(), url).headers(headers.clone()).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                let took = due.elapsed();
                let mut g = results.lock().unwrap_or_else(|p| p.into_inner());
                g.0.push(took.as_micros() as u64);
                if !ok {
                    g.1 += 1;
                }
            }));
            i += 1;
        }
    }
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = start.elapsed();
    let (latencies, failed) = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    let mut l = latencies;
    l.sort_unstable();
    let pct = |q: f64| l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or(0) as f64 / 1000.0;
    println!(
        "{{\"requests\": {}, \"rps\": {:.1}, \"p50\": {:.3}, \"p99\": {:.3}, \"p999\": {:.3}, \"max\": {:.3}, \"errors\": {failed}}}",
        l.len(),
        l.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(0.999),
        l.last().copied().unwrap_or(0) as f64 / 1000.0
    );
}
