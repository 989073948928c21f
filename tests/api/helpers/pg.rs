//! PostgreSQL for the integration tests: one server per test process, and a fresh,
//! uniquely named database per test that is dropped again when the test is done.
//!
//! The server is found once per process ([`server`]):
//!
//! 1. `LATCHKEY_TEST_DATABASE_URL` if set (it must be reachable: a URL someone set on
//!    purpose is never silently replaced by another server);
//! 2. otherwise `postgres://postgres@127.0.0.1:5432/postgres`, if it is reachable;
//! 3. otherwise a throwaway cluster made with `initdb` / `pg_ctl` (on `PATH` or under
//!    `/usr/lib/postgresql/*/bin`) in a temporary directory on a free loopback port. A
//!    detached watchdog shell stops it and deletes its directory once this process has
//!    exited (statics are never dropped, so no `Drop` could do it);
//! 4. otherwise every test that asks for a database panics, saying how to provide one.
//!    Nothing is ever skipped silently.
//!
//! The admin connection needs to be allowed to `CREATE DATABASE`; the server must be
//! PostgreSQL 13 or later (`DROP DATABASE ... WITH (FORCE)`).
//!
//! URLs may carry a password, so nothing here prints one: messages name `host:port` and
//! database names only.
//!
//! The `postgres` client is synchronous and runs its own Tokio runtime, so it panics when
//! used on a thread that is inside a runtime (`#[tokio::test]`). [`fresh_database`] and
//! dropping a [`PgDb`] are safe there (they do their work on a helper thread); a
//! [`PgDb::client`] must be used from a plain thread (e.g. `std::thread::spawn` or
//! `tokio::task::spawn_blocking`).

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use postgres::config::Host;
use postgres::{Client, Config, NoTls};

/// Names the server to use instead of the default local one.
pub const DATABASE_URL_ENV: &str = "LATCHKEY_TEST_DATABASE_URL";
/// `LATCHKEY_TEST_BACKEND=postgres` runs backend-parameterised tests against PostgreSQL.
pub const BACKEND_ENV: &str = "LATCHKEY_TEST_BACKEND";
/// Tried when [`DATABASE_URL_ENV`] is unset.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long probing a server may take before it counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Connect timeout of the per-test connections (the server is known to be up).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a throwaway cluster may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// True when `LATCHKEY_TEST_BACKEND=postgres`: backend-parameterised tests then run
/// against PostgreSQL instead of SQLite.
#[allow(dead_code)] // for backend-parameterised tests
pub fn backend_is_postgres() -> bool {
    std::env::var(BACKEND_ENV).is_ok_and(|v| v == "postgres")
}

/// The PostgreSQL server of this test process.
pub struct PgServer {
    /// Connection URL of a role that may create and drop databases. May contain a
    /// password: never print it.
    pub admin_url: String,
    /// The throwaway cluster this process started, if any (kept for its description;
    /// its watchdog, not a `Drop`, stops it).
    _cluster: Option<Cluster>,
}

/// The server, found (or started) on first use; panics with instructions when there is
/// none.
pub fn server() -> &'static PgServer {
    static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
    match SERVER.get_or_init(|| off_runtime(find_server)) {
        Ok(server) => server,
        Err(why) => panic!("{why}"),
    }
}

/// A database of its own for one test; dropped (with any connections still open to it)
/// when this value is dropped.
pub struct PgDb {
    /// Connection URL of the database: the admin URL's server and credentials, this
    /// database, `sslmode=disable` unless the admin URL chose a mode. Never print it.
    pub url: String,
    /// The database name, `lk_t_<pid>_<counter>_<random>`.
    pub name: String,
}

/// Creates a new, empty, uniquely named database on [`server`] (from `template0`, so
/// that objects someone added to `template1` of a shared server do not leak in).
pub fn fresh_database() -> PgDb {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let server = server();
    let mut random = [0u8; 4];
    getrandom::getrandom(&mut random).expect("getrandom");
    let name = format!("lk_t_{}_{}_{:08x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), u32::from_be_bytes(random));
    let url = database_url(&server.admin_url, &name);
    off_runtime(|| {
        let mut admin =
            connect(&server.admin_url, CONNECT_TIMEOUT).unwrap_or_else(|e| panic!("connecting to the test PostgreSQL server: {e}"));
        admin
            .batch_execute(&format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(&name)))
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
    });
    PgDb { url, name }
}

impl PgDb {
    /// A copy of this database as it is now (a backup to restore later); nobody may be
    /// connected to it meanwhile.
    pub fn copy(&self) -> PgDb {
        let name = format!("{}_copy", self.name);
        let server = server();
        let url = database_url(&server.admin_url, &name);
        off_runtime(|| {
            let mut admin =
                connect(&server.admin_url, CONNECT_TIMEOUT).unwrap_or_else(|e| panic!("connecting to the test PostgreSQL server: {e}"));
            admin
                .batch_execute(&format!("CREATE DATABASE {} TEMPLATE {}", quote_ident(&name), quote_ident(&self.name)))
                .unwrap_or_else(|e| panic!("copying test database {}: {e}", self.name));
        });
        PgDb { url, name }
    }

    /// A new connection to this database (for tests that inspect or tamper with rows).
    /// Use it from a thread that is not inside a Tokio runtime.
    pub fn client(&self) -> Client {
        connect(&self.url, CONNECT_TIMEOUT).unwrap_or_else(|e| panic!("connecting to test database {}: {e}", self.name))
    }
}

impl Drop for PgDb {
    /// Drops the database, closing any connections still open to it; errors are ignored
    /// (a failing test must still report its own failure, not this one).
    fn drop(&mut self) {
        let name = &self.name;
        let admin_url = &server().admin_url;
        let _ = std::panic::catch_unwind(|| {
            off_runtime(|| {
                if let Ok(mut admin) = connect(admin_url, CONNECT_TIMEOUT) {
                    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
                    let _ = admin.batch_execute(&sql);
                }
            })
        });
    }
}

/// `url` with its database replaced by `dbname`, and `sslmode=disable` added unless it
/// names a mode. Handles `postgres://` / `postgresql://` URLs and `key=value` strings.
fn database_url(url: &str, dbname: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut parsed = url::Url::parse(url).expect("the test database URL does not parse");
        parsed.set_path(&format!("/{dbname}"));
        if !parsed.query_pairs().any(|(k, _)| k == "sslmode") {
            parsed.query_pairs_mut().append_pair("sslmode", "disable");
        }
        parsed.into()
    } else {
        // Later keys win in libpq-style strings.
        let mut out = format!("{url} dbname={dbname}");
        if !url.split_whitespace().any(|kv| kv.starts_with("sslmode=")) {
            out.push_str(" sslmode=disable");
        }
        out
    }
}

/// A double-quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Connects without TLS, giving up on each host after `timeout`.
fn connect(url: &str, timeout: Duration) -> Result<Client, postgres::Error> {
    let mut config: Config = url.parse()?;
    config.connect_timeout(timeout);
    config.connect(NoTls)
}

/// `host:port` of a URL, for messages (never the URL itself: it may hold a password).
fn describe(url: &str) -> String {
    let Ok(config) = url.parse::<Config>() else { return "<unparsable URL>".into() };
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    format!("{host}:{}", config.get_ports().first().copied().unwrap_or(5432))
}

/// Connects and checks the version; `Err` says why the server is not usable.
fn probe(url: &str) -> Result<(), String> {
    let mut client = connect(url, PROBE_TIMEOUT).map_err(|e| format!("{}: {e}", describe(url)))?;
    let row = client.query_one("SELECT current_setting('server_version_num')::int", &[]).map_err(|e| format!("{}: {e}", describe(url)))?;
    let version: i32 = row.get(0);
    if version < 130000 {
        return Err(format!("{}: PostgreSQL {version} is too old (13 or later needed)", describe(url)));
    }
    Ok(())
}

/// Steps 1-4 of the module documentation.
fn find_server() -> Result<PgServer, String> {
    const HOW: &str = "set LATCHKEY_TEST_DATABASE_URL to a server where that role may CREATE DATABASE \
         (PostgreSQL 13+), or install PostgreSQL so that initdb and pg_ctl are on PATH or under \
         /usr/lib/postgresql/<version>/bin";
    if let Ok(url) = std::env::var(DATABASE_URL_ENV) {
        return match probe(&url) {
            Ok(()) => Ok(PgServer { admin_url: url, _cluster: None }),
            Err(why) => Err(format!("{DATABASE_URL_ENV} names an unusable PostgreSQL server ({why})")),
        };
    }
    let default_failure = match probe(DEFAULT_ADMIN_URL) {
        Ok(()) => return Ok(PgServer { admin_url: DEFAULT_ADMIN_URL.into(), _cluster: None }),
        Err(why) => why,
    };
    let Some(bin) = find_pg_bin() else {
        return Err(format!(
            "no PostgreSQL server for the tests: {DATABASE_URL_ENV} is unset, the default \
             server is unusable ({default_failure}), and initdb/pg_ctl were not found; {HOW}"
        ));
    };
    match Cluster::start(&bin, std::process::id()) {
        Ok(cluster) => {
            eprintln!("PostgreSQL tests: started a throwaway cluster at 127.0.0.1:{}", cluster.port);
            Ok(PgServer { admin_url: cluster.admin_url(), _cluster: Some(cluster) })
        }
        Err(why) => Err(format!(
            "no PostgreSQL server for the tests: the default server is unusable \
             ({default_failure}) and starting a throwaway cluster failed: {why}; {HOW}"
        )),
    }
}

/// The directory holding `initdb` and `pg_ctl`: `PATH` first, then the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn find_pg_bin() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = std::env::split_paths(&path).find(|d| has_both(d)) {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A throwaway cluster: `<base>/data` (trust auth, superuser `postgres`), its Unix socket
/// in `<base>`, its log in `<base>/server.log`.
struct Cluster {
    base: PathBuf,
    port: u16,
    bin: PathBuf,
    /// `runuser -u postgres --` when running as root (initdb and postgres refuse root).
    run_as: Vec<String>,
}

impl Cluster {
    /// Makes and starts a cluster, and a detached watchdog that stops it and deletes
    /// `base` once process `watch_pid` has gone.
    fn start(bin: &Path, watch_pid: u32) -> Result<Cluster, String> {
        let mut random = [0u8; 4];
        getrandom::getrandom(&mut random).map_err(|e| e.to_string())?;
        let base = std::env::temp_dir().join(format!("latchkey-pg-{}-{:08x}", std::process::id(), u32::from_be_bytes(random)));
        if base.to_string_lossy().contains(char::is_whitespace) {
            return Err(format!("temporary directory {} contains whitespace", base.display()));
        }
        fs::create_dir(&base).map_err(|e| format!("creating {}: {e}", base.display()))?;
        let mut cluster = Cluster { base, port: 0, bin: bin.to_path_buf(), run_as: Vec::new() };
        if let Err(why) = cluster.prepare_for_root().and_then(|()| cluster.spawn_watchdog(watch_pid)) {
            let _ = fs::remove_dir_all(&cluster.base);
            return Err(why);
        }
        // From here on the watchdog owns the cleanup, also when starting fails.
        cluster.initdb()?;
        let mut last_failure = String::new();
        for _ in 0..3 {
            // The port may be taken between probing and binding; then try another.
            cluster.port = free_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                Err(why) => last_failure = why,
            }
        }
        Err(last_failure)
    }

    fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Root may not run initdb/postgres: hand the directory to the `postgres` user and
    /// run the tools through `runuser`. (The owner of a directory this process just made
    /// tells its effective uid without `unsafe`.)
    fn prepare_for_root(&mut self) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(&self.base).map_err(|e| e.to_string())?;
        if meta.uid() != 0 {
            return Ok(());
        }
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id").args([flag, "postgres"]).stderr(Stdio::null()).output().ok()?;
            String::from_utf8(out.stdout).ok()?.trim().parse().ok()
        };
        let (Some(uid), Some(gid)) = (id("-u"), id("-g")) else {
            return Err("running as root, and there is no `postgres` user to run initdb as".into());
        };
        std::os::unix::fs::chown(&self.base, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", self.base.display()))?;
        self.run_as = vec!["runuser".into(), "-u".into(), "postgres".into(), "--".into()];
        Ok(())
    }

    /// `tool` (from `bin`), as the cluster user.
    fn tool(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        let mut cmd = match self.run_as.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(path);
                c
            }
            None => Command::new(path),
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `cmd` with its output in `<base>/<log>` (a file, not a pipe, so that a
    /// server it leaves running cannot hold the pipe open); `Err` carries the log tail.
    fn run_logged(&self, mut cmd: Command, log: &str) -> Result<(), String> {
        let log_path = self.base.join(log);
        let file = File::create(&log_path).map_err(|e| e.to_string())?;
        let status =
            cmd.stdout(file.try_clone().map_err(|e| e.to_string())?).stderr(file).status().map_err(|e| format!("running {log}: {e}"))?;
        if status.success() {
            return Ok(());
        }
        Err(format!("{log} failed ({status}): {}", self.log_tail(&log_path)))
    }

    fn log_tail(&self, path: &Path) -> String {
        let text = fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join(" | ")
    }

    fn initdb(&self) -> Result<(), String> {
        let mut cmd = self.tool("initdb");
        cmd.arg("-D").arg(self.base.join("data")).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"]);
        self.run_logged(cmd, "initdb.log")
    }

    /// `pg_ctl start -w`, then waits until a client can connect.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("-D")
            .arg(self.base.join("data"))
            .arg("-l")
            .arg(self.base.join("server.log"))
            .args(["-w", "-t", &START_TIMEOUT.as_secs().to_string(), "-o"])
            .arg(format!("-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=off", self.base.display(), self.port))
            .arg("start");
        // Its own process group: a Ctrl-C meant for the tests does not hit the server.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        self.run_logged(cmd, "pg_ctl.log").map_err(|why| format!("{why}; server log: {}", self.log_tail(&self.base.join("server.log"))))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match probe(&self.admin_url()) {
                Ok(()) => return Ok(()),
                Err(why) if Instant::now() > deadline => return Err(why),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A shell, in its own process group and with no pipes to this process, that polls
    /// `watch_pid` every second and, once it is gone, stops the server (`-m immediate`)
    /// and deletes `base`.
    fn spawn_watchdog(&self, watch_pid: u32) -> Result<(), String> {
        const SCRIPT: &str = r#"pid=$1; base=$2; shift 2
while kill -0 "$pid" 2>/dev/null; do sleep 1; done
"$@" -D "$base/data" stop -m immediate >/dev/null 2>&1
rm -rf "$base""#;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", SCRIPT, "latchkey-pg-watchdog"]).arg(watch_pid.to_string()).arg(&self.base).args(&self.run_as);
        cmd.arg(self.bin.join("pg_ctl")).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn().map(drop).map_err(|e| format!("starting the cleanup watchdog: {e}"))
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Runs `f` on a helper thread: the sync `postgres` client panics inside a Tokio
/// runtime, and tests may be `#[tokio::test]`. Panics are passed on unchanged.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Whether `name` is listed in `pg_database`.
fn database_exists(name: &str) -> bool {
    let mut admin = connect(&server().admin_url, CONNECT_TIMEOUT).expect("admin connection");
    admin.query_one("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", &[&name]).expect("querying pg_database").get(0)
}

#[test]
fn fresh_databases_are_isolated_and_dropped() {
    off_runtime(|| {
        let a = fresh_database();
        let b = fresh_database();
        assert_ne!(a.name, b.name);
        assert!(a.name.starts_with(&format!("lk_t_{}_", std::process::id())), "{}", a.name);
        assert!(database_exists(&a.name) && database_exists(&b.name));

        let mut ca = a.client();
        let mut cb = b.client();
        let current = |c: &mut Client| -> String { c.query_one("SELECT current_database()", &[]).unwrap().get(0) };
        assert_eq!(current(&mut ca), a.name);
        assert_eq!(current(&mut cb), b.name);

        ca.batch_execute("CREATE TABLE canary (x int); INSERT INTO canary VALUES (1)").unwrap();
        let visible = |c: &mut Client| -> bool { c.query_one("SELECT to_regclass('public.canary') IS NOT NULL", &[]).unwrap().get(0) };
        assert!(visible(&mut ca));
        assert!(!visible(&mut cb), "a table made in one test database shows in another");

        // Dropping works with a connection still open (WITH (FORCE)) and spares the other.
        let (a_name, b_name) = (a.name.clone(), b.name.clone());
        drop(a);
        assert!(!database_exists(&a_name), "dropped database {a_name} is still listed");
        assert!(database_exists(&b_name));
        assert!(ca.query_one("SELECT 1", &[]).is_err(), "connection to a dropped database still works");
        drop(ca);

        drop(cb);
        drop(b);
        assert!(!database_exists(&b_name), "dropped database {b_name} is still listed");
    });
}

#[tokio::test]
async fn fresh_database_works_inside_a_tokio_test() {
    let db = fresh_database();
    let name = db.name.clone();
    let current: String =
        tokio::task::spawn_blocking(move || db.client().query_one("SELECT current_database()", &[]).unwrap().get(0)).await.unwrap();
    assert_eq!(current, name);
    // `db` was dropped on the blocking thread; the database must be gone.
    assert!(!off_runtime(|| database_exists(&name)));
}

#[test]
fn database_urls_keep_server_and_credentials() {
    assert_eq!(
        database_url("postgres://postgres@127.0.0.1:5432/postgres", "lk_t_1_0_ab"),
        "postgres://postgres@127.0.0.1:5432/lk_t_1_0_ab?sslmode=disable"
    );
    assert_eq!(
        database_url("postgresql://u:p%40ss@db.example:6543/admin?sslmode=require&application_name=x", "d"),
        "postgresql://u:p%40ss@db.example:6543/d?sslmode=require&application_name=x"
    );
    assert_eq!(
        database_url("host=/run/postgresql user=root dbname=postgres", "d"),
        "host=/run/postgresql user=root dbname=postgres dbname=d sslmode=disable"
    );
    let parsed: Config = database_url("host=h user=u dbname=postgres", "d").parse().unwrap();
    assert_eq!(parsed.get_dbname(), Some("d"));
    assert_eq!(describe("postgres://u:secret@db.example:6543/x"), "db.example:6543");
}

/// Starts a throwaway cluster watched by a `sleep` child, and checks that the watchdog
/// stops it and deletes its directory once that child is gone. Ignored by default: it
/// costs an initdb (a few seconds); run with `cargo test --test api pg:: -- --ignored`.
#[test]
#[ignore = "starts a PostgreSQL cluster with initdb; run with --ignored"]
fn throwaway_cluster_starts_and_is_cleaned_up() {
    let bin = find_pg_bin().expect("initdb and pg_ctl not found");
    let mut watched = Command::new("sleep").arg("600").spawn().unwrap();
    let cluster = Cluster::start(&bin, watched.id()).unwrap_or_else(|e| panic!("{e}"));
    assert!(cluster.base.join("data/PG_VERSION").is_file());
    off_runtime(|| {
        let mut c = connect(&cluster.admin_url(), PROBE_TIMEOUT).expect("connecting to the cluster");
        c.batch_execute("CREATE DATABASE lk_cluster_check").unwrap();
    });

    watched.kill().unwrap();
    watched.wait().unwrap(); // a zombie would still answer `kill -0`
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.base.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!cluster.base.exists(), "watchdog left {}", cluster.base.display());
    assert!(off_runtime(|| connect(&cluster.admin_url(), PROBE_TIMEOUT).is_err()), "server still up");
}
