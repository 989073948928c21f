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
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub keys_dir: PathBuf,
    pub bind: String,
    pub public_url: String,
    pub passphrase_file: Option<PathBuf>,
    pub log: String,
    pub log_format: LogFormat,
    pub max_body_bytes: usize,
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
        Ok(Settings {
            data_dir: path_env("LATCHKEY_DATA_DIR").or(fc.data_dir).unwrap_or_else(|| "./data".into()),
            keys_dir: path_env("LATCHKEY_KEYS_DIR").or(fc.keys_dir).unwrap_or_else(|| "./keys".into()),
            bind,
            public_url,
            passphrase_file: path_env("LATCHKEY_PASSPHRASE_FILE").or(fc.passphrase_file),
            log: env("LATCHKEY_LOG").or(fc.log).unwrap_or_else(|| "info".into()),
            log_format,
            max_body_bytes,
        })
    }

    /// The process environment.
    pub fn from_env(config: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load(config, &|k| std::env::var(k).ok())
    }
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
