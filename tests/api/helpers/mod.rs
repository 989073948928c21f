//! Shared test harness: an in-process server on port 0 with a clock the test moves, the
//! real binary, and the fixtures several test modules use (the OAuth provider and a
//! browser, a faulty token endpoint, a trusted issuer).

pub mod faults;
pub mod issuer;
pub mod pg;
pub mod provider;
pub mod upstream;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey::oauth::ClientOptions;
use latchkey::service::Services;
use latchkey::startup::ServerOptions;
use latchkey::time::Clock;
use latchkey::vault::{Actor, Vault};
use serde_json::Value;

/// Provider calls of the in-process app give up after this long (production: 10 s), so
/// that fault tests are quick.
pub const TEST_PROVIDER_TIMEOUT: Duration = Duration::from_secs(2);

pub const BIN: &str = env!("CARGO_BIN_EXE_latchkey");

/// A temporary data + keys directory, and a fresh PostgreSQL database when the suite
/// runs against PostgreSQL (`LATCHKEY_TEST_BACKEND=postgres`).
pub struct Dirs {
    pub root: tempfile::TempDir,
    pub pg: Option<pg::PgDb>,
}

impl Dirs {
    pub fn new() -> Self {
        let pg = pg::backend_is_postgres().then(pg::fresh_database);
        Dirs { root: tempfile::tempdir().expect("tempdir"), pg }
    }

    /// A directory on PostgreSQL whatever the suite's backend.
    pub fn postgres() -> Self {
        Dirs { root: tempfile::tempdir().expect("tempdir"), pg: Some(pg::fresh_database()) }
    }

    /// Where this directory's vault keeps its data.
    pub fn location(&self) -> latchkey::store::Location {
        match &self.pg {
            Some(db) => {
                latchkey::store::Location::Postgres(Box::new(latchkey::store::PgConfig::parse(&db.url).expect("test database URL")))
            }
            None => latchkey::store::Location::Embedded(self.data()),
        }
    }

    /// Direct SQL on the vault's database, as an attacker with database access has it.
    pub fn sql(&self) -> TestSql {
        match &self.pg {
            Some(db) => TestSql::Pg(db.url.clone()),
            None => TestSql::Lite(rusqlite::Connection::open(self.db()).expect("open the database")),
        }
    }
    pub fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }
    pub fn keys(&self) -> PathBuf {
        self.root.path().join("keys")
    }
    pub fn db(&self) -> PathBuf {
        self.data().join("latchkey.db")
    }

    /// The binary with this directory's settings and no inherited config.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.root.path())
            .env_remove("LATCHKEY_CONFIG")
            .env_remove("LATCHKEY_PASSPHRASE_FILE")
            .env("LATCHKEY_DATA_DIR", self.data())
            .env("LATCHKEY_KEYS_DIR", self.keys())
            .env_remove("LATCHKEY_DATABASE_URL")
            .env_remove("LATCHKEY_DATABASE_URL_FILE")
            .stdin(Stdio::null());
        if let Some(db) = &self.pg {
            c.env("LATCHKEY_DATABASE_URL", &db.url);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run latchkey")
    }
}

/// SQL on a test vault's database, written to run on both backends (or given per
/// backend with [`TestSql::exec_either`]).
pub enum TestSql {
    Lite(rusqlite::Connection),
    /// A connection per call, on a thread of its own (the driver may not block an async
    /// test's runtime).
    Pg(String),
}

impl TestSql {
    fn pg<T: Send>(url: &str, f: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut c = postgres::Client::connect(url, postgres::NoTls).expect("connect to the test database");
                f(&mut c)
            })
            .join()
            .expect("SQL thread")
        })
    }

    pub fn exec(&self, sql: &str) {
        match self {
            TestSql::Lite(c) => c.execute_batch(sql).expect(sql),
            TestSql::Pg(url) => Self::pg(url, |c| c.batch_execute(sql).expect(sql)),
        }
    }

    /// Runs the statement written for this backend.
    pub fn exec_either(&self, sqlite: &str, postgres: &str) {
        match self {
            TestSql::Lite(_) => self.exec(sqlite),
            TestSql::Pg(_) => self.exec(postgres),
        }
    }

    /// The first column of the first row, as an integer (NULL: `None`).
    pub fn int(&self, sql: &str) -> Option<i64> {
        match self {
            TestSql::Lite(c) => c.query_row(sql, [], |r| r.get(0)).expect(sql),
            TestSql::Pg(url) => Self::pg(url, |c| c.query_one(sql, &[]).expect(sql).get(0)),
        }
    }

    /// The first column of the first row, as text.
    pub fn text(&self, sql: &str) -> String {
        match self {
            TestSql::Lite(c) => c.query_row(sql, [], |r| r.get(0)).expect(sql),
            TestSql::Pg(url) => Self::pg(url, |c| c.query_one(sql, &[]).expect(sql).get(0)),
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An in-process server with a fresh vault (no passphrase) and an admin token. Its clock
/// stands still unless the test moves it ([`TestApp::advance`]).
pub struct TestApp {
    /// Kept alive for the lifetime of the app (dropping it deletes the directories).
    pub _dirs: Dirs,
    pub addr: String,
    pub token: String,
    pub vault: Arc<Vault>,
    pub services: Arc<Services>,
    pub clock: Clock,
    pub http: reqwest::Client,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(None).await
    }

    /// An app whose public URL is `public_url` (default: its own address).
    pub async fn spawn_with(public_url: Option<&str>) -> TestApp {
        Self::spawn_configured(public_url, |_| {}).await
    }

    /// An app whose server options `configure` adjusts.
    pub async fn spawn_configured(public_url: Option<&str>, configure: impl FnOnce(&mut ServerOptions)) -> TestApp {
        // LATCHKEY_TEST_LOG=debug shows the in-process server's log with a test's output.
        if let Ok(filter) = std::env::var("LATCHKEY_TEST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_test_writer().try_init();
        }
        let dirs = Dirs::new();
        let clock = Clock::fixed(Clock::system().now());
        let init = Vault::init_at(&dirs.location(), &dirs.keys(), None, clock.clone(), &Actor::Cli("test".into())).expect("init");
        let token = init.admin_token.expose().to_owned();
        let vault = Arc::new(init.vault);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        let mut opts = latchkey::startup::ServerOptions::new(public_url.unwrap_or(&addr).to_owned(), 64 * 1024);
        opts.workers = Some(1);
        opts.client = ClientOptions { timeout: TEST_PROVIDER_TIMEOUT, ..Default::default() };
        configure(&mut opts);
        let app = latchkey::startup::Application::build(vault.clone(), listener, opts).expect("server");
        let services = app.services();
        tokio::spawn(app.run());
        TestApp { _dirs: dirs, addr, token, vault, services, clock, http: reqwest::Client::new() }
    }

    /// Moves the app's clock forward and lets the background refresher look at it.
    pub fn advance(&self, secs: i64) {
        self.clock.advance(secs);
        self.services.oauth.wake_refresher();
    }

    /// Waits (polling, bounded) until `done` holds: for background work to finish, never
    /// to let time pass.
    pub async fn eventually(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(&self.token)
    }

    pub async fn post_json(&self, path: &str, body: Value) -> reqwest::Response {
        self.admin(reqwest::Method::POST, path).json(&body).send().await.expect("request")
    }

    pub async fn put_json(&self, path: &str, body: Value) -> reqwest::Response {
        self.admin(reqwest::Method::PUT, path).json(&body).send().await.expect("request")
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.admin(reqwest::Method::DELETE, path).send().await.expect("request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.admin(reqwest::Method::GET, path).send().await.expect("request")
    }

    pub async fn api_key_connection(&self, id: &str) {
        let r = self
            .post_json("/v1/admin/connections", serde_json::json!({"id": id, "kind": "api_key", "api_key": {"header": "X-API-Key"}}))
            .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    }

    /// Registers agent `svc` allowed `connection` for any owner; returns a
    /// client-credentials agent token.
    pub async fn service_agent_token(&self, connection: &str) -> String {
        self.agent_token("svc", serde_json::json!([{"connection": connection, "owners": "any"}])).await
    }

    /// Registers agent `id` with `grants`; returns a client-credentials agent token.
    pub async fn agent_token(&self, id: &str, grants: Value) -> String {
        register_agent(&self.http, &self.addr, &self.token, id, grants).await
    }

    /// Direct SQL on this app's database.
    pub fn sql(&self) -> TestSql {
        self._dirs.sql()
    }

    pub fn audit_count(&self) -> usize {
        self.vault.audit_tail(1_000_000).expect("audit").len()
    }
}

/// Registers agent `id` with `grants` through the admin API at `base`; returns a
/// client-credentials agent token.
pub async fn register_agent(http: &reqwest::Client, base: &str, admin: &str, id: &str, grants: Value) -> String {
    let body = serde_json::json!({"id": id, "name": id, "policy": {"grants": grants}});
    let r = http.post(format!("{base}/v1/admin/agents")).bearer_auth(admin).json(&body).send().await.expect("agent request");
    assert_eq!(r.status(), 201, "agent {id}");
    let secret = r.json::<Value>().await.expect("agent")["client_secret"].as_str().expect("secret").to_owned();
    client_credentials(http, base, id, &secret).await
}

/// A client-credentials agent token from the server at `base`.
pub async fn client_credentials(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> String {
    let t: Value = http
        .post(format!("{base}/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token");
    t["access_token"].as_str().expect("access_token").to_owned()
}

/// The real binary serving on an ephemeral port; killed on drop.
pub struct ServerProcess {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl ServerProcess {
    pub fn start(dirs: &Dirs, extra_env: &[(&str, &str)]) -> ServerProcess {
        Self::start_args(dirs, &["serve"], extra_env)
    }

    pub fn start_args(dirs: &Dirs, args: &[&str], extra_env: &[(&str, &str)]) -> ServerProcess {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dirs.root.path().join(format!("server-{n}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let mut cmd = dirs.cmd(args);
        cmd.env("LATCHKEY_BIND", "127.0.0.1:0").env("LATCHKEY_LOG_FORMAT", "json").stdout(Stdio::null()).stderr(out);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn server");
        let addr = wait_for_listen(&log, Duration::from_secs(20));
        ServerProcess { child, addr, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "server did not stop after SIGTERM; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_listen(log: &Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                if v["message"] == "latchkey listening" {
                    return format!("http://{}", v["addr"].as_str().expect("addr"));
                }
            }
        }
        assert!(Instant::now() < deadline, "server did not start; log:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deterministic, seedable pseudo-random numbers for fault timing (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn from_env_or_time() -> Rng {
        let seed = std::env::var("LATCHKEY_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1
        });
        eprintln!("fault-timing seed: LATCHKEY_TEST_SEED={seed}");
        Rng(seed)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Asserts the status of a response and returns its JSON body (or `null`).
pub async fn expect(r: reqwest::Response, status: u16) -> Value {
    let got = r.status().as_u16();
    let text = r.text().await.expect("body");
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Whether `needle` occurs anywhere in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
