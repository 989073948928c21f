//! Settings: defaults, then `latchkey.toml` (unknown keys rejected), then `LATCHKEY_*`
//! environment variables. Resolved once, before any command runs.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    keys_dir: Option<PathBuf>,
    bind: Option<String>,
    public_url: Option<String>,
    passphrase_file: Option<PathBuf>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    max_body_bytes: Option<usize>,
    trusted_proxies: Option<Vec<String>>,
    max_connections: Option<usize>,
    request_timeout_ms: Option<u64>,
    metrics_token_file: Option<PathBuf>,
    metrics_bind: Option<String>,
    database_url: Option<String>,
    database_url_file: Option<PathBuf>,
    keys_mounted: Option<bool>,
    audit_checkpoint_file: Option<PathBuf>,
    audit_checkpoint_stdout: Option<bool>,
    audit_durability: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// A `postgres://` URL: the data lives in PostgreSQL instead of
    /// `<data_dir>/latchkey.db`. A secret (it may hold a password).
    pub database_url: Option<crate::secret::Secret>,
    /// The keys directory is a platform-provided read-only mount (Kubernetes or compose
    /// secrets): different file checks, passphrase required, never written.
    pub keys_mounted: bool,
    pub keys_dir: PathBuf,
    pub bind: String,
    pub public_url: String,
    pub passphrase_file: Option<PathBuf>,
    pub log: String,
    pub log_format: LogFormat,
    pub max_body_bytes: usize,
    /// Load balancers whose `X-Forwarded-For` is believed (the client address is the last
    /// one not among them). Empty: the peer address is the client.
    pub trusted_proxies: Vec<Cidr>,
    pub limits: HttpLimits,
    /// A bearer token `/metrics` requires (read from a file); `None`: open.
    pub metrics_token: Option<crate::secret::Secret>,
    /// Serve `/metrics` on this address only (not on the main listener).
    pub metrics_bind: Option<String>,
    /// The append-only file audit checkpoints go to (outside the data directory).
    pub audit_checkpoint_file: Option<PathBuf>,
    /// Checkpoints also go to standard output (for a log shipper).
    pub audit_checkpoint_stdout: bool,
    /// When an audit record (and its checkpoint) is durable before a secret leaves.
    pub audit_durability: crate::audit::Durability,
}

/// Limits of the HTTP server against slow or numerous clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Concurrent connections per worker.
    pub max_connections: usize,
    /// Time a client has to send a request's head, and then its body.
    pub request_timeout: std::time::Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { max_connections: 10_000, request_timeout: std::time::Duration::from_secs(10) }
    }
}

/// An IP network, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        // IPv4 addresses sit in the top 32 bits, so one mask serves both families.
        let bits = |ip: std::net::IpAddr| match ip.to_canonical() {
            std::net::IpAddr::V4(v) => (u128::from(u32::from(v)) << 96, true),
            std::net::IpAddr::V6(v) => (u128::from(v), false),
        };
        let ((net, net_v4), (other, other_v4)) = (bits(self.addr), bits(ip));
        if net_v4 != other_v4 {
            return false;
        }
        let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
        net & mask == other & mask
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path} is invalid: {reason}")]
    Parse { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

const DEFAULT_CONFIG: &str = "latchkey.toml";

impl Settings {
    /// Loads settings from `config` (or `./latchkey.toml` if present) and the
    /// environment given by `env` (the process environment in production).
    pub fn load(config: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file = match config {
            Some(p) => Some(p.to_owned()),
            None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
        };
        let fc = match &file {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| ConfigError::Read { path: p.display().to_string(), reason: e.to_string() })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError::Parse { path: p.display().to_string(), reason: e.message().to_owned() })?
            }
            None => FileConfig::default(),
        };
        let path_env = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let bind = env("LATCHKEY_BIND").or(fc.bind).unwrap_or_else(|| "127.0.0.1:8200".into());
        if bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid(format!("LATCHKEY_BIND / bind: '{bind}' is not an address such as 127.0.0.1:8200")));
        }
        let public_url = env("LATCHKEY_PUBLIC_URL").or(fc.public_url).unwrap_or_else(|| format!("http://{bind}"));
        let public_url = public_url.trim_end_matches('/').to_owned();
        match url::Url::parse(&public_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.query().is_none() => {}
            _ => return Err(ConfigError::Invalid(format!("LATCHKEY_PUBLIC_URL / public_url: '{public_url}' is not an http(s) URL"))),
        }
        let log_format = match env("LATCHKEY_LOG_FORMAT").as_deref() {
            Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => return Err(ConfigError::Invalid(format!("LATCHKEY_LOG_FORMAT: '{other}' is not 'json' or 'pretty'"))),
            None => fc.log_format.unwrap_or(LogFormat::Pretty),
        };
        let max_body_bytes = fc.max_body_bytes.unwrap_or(64 * 1024);
        if !(1024..=16 * 1024 * 1024).contains(&max_body_bytes) {
            return Err(ConfigError::Invalid("max_body_bytes must be between 1 KiB and 16 MiB".into()));
        }
        let proxies: Vec<String> = match env("LATCHKEY_TRUSTED_PROXIES") {
            Some(v) => v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            None => fc.trusted_proxies.unwrap_or_default(),
        };
        let trusted_proxies = proxies
            .iter()
            .map(|p| {
                Cidr::parse(p)
                    .ok_or_else(|| ConfigError::Invalid(format!("trusted_proxies: '{p}' is not an address or network such as 10.0.0.0/8")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut limits = HttpLimits::default();
        let number = |key: &str| -> Result<Option<u64>, ConfigError> {
            env(key).map(|v| v.trim().parse::<u64>().map_err(|_| ConfigError::Invalid(format!("{key} must be a whole number")))).transpose()
        };
        let max_connections = match number("LATCHKEY_MAX_CONNECTIONS")? {
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            None => fc.max_connections,
        };
        let request_timeout_ms = number("LATCHKEY_REQUEST_TIMEOUT_MS")?.or(fc.request_timeout_ms);
        if let Some(n) = max_connections {
            if !(1..=1_000_000).contains(&n) {
                return Err(ConfigError::Invalid("max_connections must be between 1 and 1000000".into()));
            }
            limits.max_connections = n;
        }
        if let Some(ms) = request_timeout_ms {
            if !(100..=600_000).contains(&ms) {
                return Err(ConfigError::Invalid("request_timeout_ms must be between 100 and 600000".into()));
            }
            limits.request_timeout = std::time::Duration::from_millis(ms);
        }
        let metrics_token = match path_env("LATCHKEY_METRICS_TOKEN_FILE").or(fc.metrics_token_file) {
            Some(p) => {
                let token = read_secret_file(&p)?;
                if token.len() < 16 {
                    return Err(ConfigError::Invalid("the metrics token must be at least 16 bytes".into()));
                }
                Some(crate::secret::Secret::new(token))
            }
            None => None,
        };
        let metrics_bind = env("LATCHKEY_METRICS_BIND").or(fc.metrics_bind);
        if let Some(b) = &metrics_bind {
            if b.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::Invalid(format!("metrics_bind: '{b}' is not an address such as 127.0.0.1:9200")));
            }
        }
        let data_dir: PathBuf = path_env("LATCHKEY_DATA_DIR").or(fc.data_dir).unwrap_or_else(|| "./data".into());
        // A URL may hold a password: read from a file where possible, never echoed.
        let database_url = match (env("LATCHKEY_DATABASE_URL"), path_env("LATCHKEY_DATABASE_URL_FILE")) {
            (None, None) => value_or_file(fc.database_url, fc.database_url_file, "database_url or database_url_file")?,
            (url, file) => value_or_file(url, file, "LATCHKEY_DATABASE_URL or LATCHKEY_DATABASE_URL_FILE")?,
        };
        let database_url = database_url.filter(|u| !u.trim().is_empty()).map(crate::secret::Secret::new);
        let keys_mounted = match env("LATCHKEY_KEYS_MOUNTED").as_deref() {
            None => fc.keys_mounted.unwrap_or(false),
            Some("true" | "1") => true,
            Some("false" | "0") => false,
            Some(_) => return Err(ConfigError::Invalid("LATCHKEY_KEYS_MOUNTED must be true or false".into())),
        };
        let flag = |key: &str, file: Option<bool>| match env(key).as_deref() {
            None => Ok(file.unwrap_or(false)),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(_) => Err(ConfigError::Invalid(format!("{key} must be true or false"))),
        };
        let audit_checkpoint_stdout = flag("LATCHKEY_AUDIT_CHECKPOINT_STDOUT", fc.audit_checkpoint_stdout)?;
        let audit_checkpoint_file = path_env("LATCHKEY_AUDIT_CHECKPOINT_FILE").or(fc.audit_checkpoint_file);
        if let Some(f) = &audit_checkpoint_file {
            // A checkpoint is worth something only where a database backup (or whoever can
            // rewrite the data directory) cannot reach it too.
            let inside = |dir: &Path| {
                let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
                abs(f).starts_with(abs(dir))
            };
            if inside(&data_dir) {
                return Err(ConfigError::Invalid(format!(
                    "audit_checkpoint_file {} is inside the data directory: put it where the database's backups and writers do not reach",
                    f.display()
                )));
            }
        }
        let audit_durability = match env("LATCHKEY_AUDIT_DURABILITY").or(fc.audit_durability) {
            Some(v) => v.parse().map_err(ConfigError::Invalid)?,
            None => crate::audit::Durability::default(),
        };
        Ok(Settings {
            audit_checkpoint_file,
            audit_checkpoint_stdout,
            audit_durability,
            data_dir,
            database_url,
            keys_mounted,
            keys_dir: path_env("LATCHKEY_KEYS_DIR").or(fc.keys_dir).unwrap_or_else(|| "./keys".into()),
            bind,
            public_url,
            passphrase_file: path_env("LATCHKEY_PASSPHRASE_FILE").or(fc.passphrase_file),
            log: env("LATCHKEY_LOG").or(fc.log).unwrap_or_else(|| "info".into()),
            log_format,
            max_body_bytes,
            trusted_proxies,
            limits,
            metrics_token,
            metrics_bind,
        })
    }

    /// The process environment.
    pub fn from_env(config: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load(config, &|k| std::env::var(k).ok())
    }
}

/// A value given directly or in a file (a secret is better kept in a file); not both.
fn value_or_file(value: Option<String>, file: Option<PathBuf>, names: &str) -> Result<Option<String>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid(format!("set {names}, not both"))),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(p)) => read_secret_file(&p).map(Some),
        (None, None) => Ok(None),
    }
}

/// A file's contents without surrounding whitespace.
fn read_secret_file(p: &Path) -> Result<String, ConfigError> {
    let raw = std::fs::read_to_string(p).map_err(|e| ConfigError::Read { path: p.display().to_string(), reason: e.to_string() })?;
    Ok(raw.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn env_overrides_file_and_defaults_apply() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "data_dir = \"/d\"\nbind = \"0.0.0.0:9000\"\n").unwrap();
        let s = Settings::load(Some(&p), &env(&[("LATCHKEY_BIND", "127.0.0.1:1")])).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/d"));
        assert_eq!(s.bind, "127.0.0.1:1");
        assert_eq!(s.public_url, "http://127.0.0.1:1");
        assert_eq!(s.keys_dir, PathBuf::from("./keys"));
    }

    #[test]
    fn networks_match_addresses_including_mapped_ipv4() {
        let n = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:10.9.9.9".parse().unwrap()), "an IPv4-mapped address is the IPv4 one");
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let one = Cidr::parse("192.168.1.7").unwrap();
        assert!(one.contains("192.168.1.7".parse().unwrap()) && !one.contains("192.168.1.8".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0/8", "::/129"] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
        let s = Settings::load(None, &env(&[("LATCHKEY_TRUSTED_PROXIES", "10.0.0.0/8, ::1")])).unwrap();
        assert_eq!(s.trusted_proxies.len(), 2);
        assert!(Settings::load(None, &env(&[("LATCHKEY_TRUSTED_PROXIES", "10.0.0.0/99")])).is_err());
    }

    #[test]
    fn http_limits_from_the_environment() {
        let s = Settings::load(None, &env(&[("LATCHKEY_MAX_CONNECTIONS", "500"), ("LATCHKEY_REQUEST_TIMEOUT_MS", "2500")])).unwrap();
        assert_eq!(s.limits, HttpLimits { max_connections: 500, request_timeout: std::time::Duration::from_millis(2500) });
        assert_eq!(Settings::load(None, &env(&[])).unwrap().limits, HttpLimits::default());
        for (k, v) in [("LATCHKEY_MAX_CONNECTIONS", "0"), ("LATCHKEY_REQUEST_TIMEOUT_MS", "5"), ("LATCHKEY_REQUEST_TIMEOUT_MS", "soon")] {
            assert!(Settings::load(None, &env(&[(k, v)])).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "data_dri = \"/d\"\n").unwrap();
        let e = Settings::load(Some(&p), &env(&[])).unwrap_err().to_string();
        assert!(e.contains("data_dri"), "{e}");
        assert!(Settings::load(None, &env(&[("LATCHKEY_BIND", "nope")])).is_err());
        assert!(Settings::load(None, &env(&[("LATCHKEY_LOG_FORMAT", "xml")])).is_err());
    }
}
