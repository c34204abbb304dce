//! Typed settings: loaded from a TOML file, overridden by `PROFILO_GATEWAY__SECTION__KEY`
//! environment variables, validated. Every key is optional with a default that runs on a laptop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sensors::{simulated::SimulatedConfig, SensorConfig};

/// The default configuration file of a packaged install.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/profilo-gateway/config.toml";
/// Prefix of the environment variables that override single keys.
pub const ENV_PREFIX: &str = "PROFILO_GATEWAY__";
/// The state directory a packaged install uses (systemd `StateDirectory=profilo-gateway`).
pub const SYSTEM_STATE_DIR: &str = "/var/lib/profilo-gateway";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config {origin}: `{key}` {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub api: ApiConfig,
    pub queue: QueueConfig,
    pub sampling: SamplingConfig,
    pub upload: UploadConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    /// The sensors read at every tick; one simulated sensor when none is configured.
    pub sensors: Vec<SensorConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The server, e.g. `https://profilometre.example.com`.
    pub base_url: String,
    /// The device account; without one the gateway samples and queues but cannot upload.
    pub username: Option<String>,
    /// A file holding the password (mode 0600), re-read at every login attempt.
    pub password_file: Option<PathBuf>,
    /// Longest wait for one HTTP request, connection included.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Refresh the access token this long before it expires (server time). Default: a
    /// fifth of the token's lifetime, at least 1 s and at most 60 s.
    #[serde(with = "humantime_serde")]
    pub refresh_margin: Option<Duration>,
    /// First wait after a failed login; doubles (with jitter) up to `login_backoff_max`.
    #[serde(with = "humantime_serde")]
    pub login_backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub login_backoff_max: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            base_url: "http://127.0.0.1:8000".into(),
            username: None,
            password_file: None,
            request_timeout: Duration::from_secs(10),
            refresh_margin: None,
            login_backoff_base: Duration::from_secs(5),
            login_backoff_max: Duration::from_secs(300),
        }
    }
}

/// What to drop when the queue is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Keep the newest readings: the oldest pending ones are deleted to make room.
    #[default]
    DropOldest,
    /// Keep what is queued: new readings are discarded while the queue is full.
    DropNewest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// The SQLite queue file. Default: `$STATE_DIRECTORY/queue.db` under systemd,
    /// `/var/lib/profilo-gateway/queue.db` when writable, else `~/.local/state/profilo-gateway/queue.db`.
    pub path: PathBuf,
    /// Most pending readings kept; beyond it `overflow` decides what is dropped.
    pub max_readings: u64,
    /// Most bytes the queue's live pages may take (0 = no limit besides `max_readings`).
    pub max_bytes: u64,
    pub overflow: OverflowPolicy,
    /// Readings handed over within this window are committed together (one fsync), which
    /// spares the SD card at high sampling rates. A crash loses at most this window.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Readings captured before the clock was synchronised, in an earlier boot, can no
    /// longer be dated exactly: "flag" sends them with `"clock_unsynced": true`, "hold"
    /// keeps them queued for an operator (`queue list`, `queue export`).
    pub unfixable_time: UnfixableTime,
}

/// What to do with a reading whose capture time cannot be corrected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnfixableTime {
    #[default]
    Flag,
    Hold,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            path: default_queue_path(),
            max_readings: 500_000,
            max_bytes: 0,
            overflow: OverflowPolicy::DropOldest,
            commit_interval: Duration::from_millis(50),
            unfixable_time: UnfixableTime::Flag,
        }
    }
}

/// How a tick with a failing sensor becomes a reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnSensorError {
    /// Send the fields the working sensors gave.
    #[default]
    Partial,
    /// Skip the whole reading when any sensor failed.
    Skip,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Time between two readings (humantime: "5s", "100ms", down to "1ms").
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub on_sensor_error: OnSensorError,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            interval: Duration::from_secs(5),
            on_sensor_error: OnSensorError::Partial,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Requests in flight at once while a backlog drains. The drain rate is about
    /// `concurrency / round-trip time` until the server is the limit, so a slow link
    /// wants more (RTT x the server's rate).
    pub concurrency: usize,
    /// Readings taken from the queue per round; also the bound on duplicates after a crash.
    pub batch_size: usize,
    /// First wait after a transient failure; doubles (full jitter) up to `backoff_max`.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            concurrency: 4,
            batch_size: 64,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter; `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// `[metrics]`: off by default. The `metrics` command works without it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` (Prometheus text) and `/health` on this address, e.g.
    /// `"127.0.0.1:9464"`. The shipped unit denies binding sockets: the drop-in
    /// `systemd/metrics.conf` (installed under /usr/share/doc/profilo-gateway/examples/)
    /// opens this port only.
    pub listen: Option<std::net::SocketAddr>,
}

fn default_queue_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may list several directories separated by ':'; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_owned();
        if !first.is_empty() {
            return Path::new(&first).join("queue.db");
        }
    }
    let system = Path::new(SYSTEM_STATE_DIR);
    if is_writable_dir(system) {
        return system.join("queue.db");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("profilo-gateway").join("queue.db")
}

fn is_writable_dir(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    dir.is_dir() && unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0
}

/// Where the configuration comes from: `--config`/`PROFILO_GATEWAY_CONFIG`, else the default
/// path when it exists, else built-in defaults.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    /// True when the path was asked for explicitly, so a missing file is an error.
    pub explicit: bool,
}

impl ConfigSource {
    pub fn resolve(cli: Option<PathBuf>) -> ConfigSource {
        match cli {
            Some(p) => ConfigSource {
                path: Some(p),
                explicit: true,
            },
            None => {
                let default = PathBuf::from(DEFAULT_CONFIG_PATH);
                ConfigSource {
                    explicit: false,
                    path: default.exists().then_some(default),
                }
            }
        }
    }

    fn origin(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "(built-in defaults)".into(),
        }
    }
}

impl Config {
    /// Loads the file (if any), applies `PROFILO_GATEWAY__*` overrides from `env`, validates.
    pub fn load(
        source: &ConfigSource,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let origin = source.origin();
        let mut table = match &source.path {
            Some(path) => {
                let text = match std::fs::read_to_string(path) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && !source.explicit => {
                        String::new()
                    }
                    Err(source) => {
                        return Err(ConfigError::Read {
                            path: path.clone(),
                            source,
                        })
                    }
                };
                // Deserializing the text itself first gives errors with line and column,
                // except in a [[sensors]] entry (a tagged enum loses the position): name
                // the entry instead.
                toml::from_str::<Config>(&text).map_err(|e| ConfigError::Parse {
                    path: origin.clone(),
                    message: crate::sensors::entry_error(&text).unwrap_or_else(|| e.to_string()),
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Parse {
                    path: origin.clone(),
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        let mut overridden = Vec::new();
        for (var, raw) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let keys: Vec<String> = rest.split("__").map(|k| k.to_ascii_lowercase()).collect();
            if keys.iter().any(|k| k.is_empty()) {
                return Err(ConfigError::Env {
                    var,
                    message: "expected PROFILO_GATEWAY__SECTION__KEY".into(),
                });
            }
            set_path(&mut table, &keys, parse_env_value(&raw)).map_err(|message| {
                ConfigError::Env {
                    var: var.clone(),
                    message,
                }
            })?;
            overridden.push(var);
        }
        let mut config: Config = toml::Value::Table(table).try_into().map_err(|e| {
            let message = e.to_string();
            if overridden.is_empty() {
                ConfigError::Parse {
                    path: origin.clone(),
                    message,
                }
            } else {
                ConfigError::Env {
                    var: overridden.join(", "),
                    message,
                }
            }
        })?;
        if config.sensors.is_empty() {
            config
                .sensors
                .push(SensorConfig::Simulated(SimulatedConfig::default()));
        }
        config.validate(&origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        match reqwest::Url::parse(&self.api.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(_) => {
                return Err(invalid(
                    "api.base_url",
                    format!("{:?} must be an http:// or https:// URL", self.api.base_url),
                ))
            }
            Err(e) => {
                return Err(invalid(
                    "api.base_url",
                    format!("{:?} is not a URL: {e}", self.api.base_url),
                ))
            }
        }
        if self
            .api
            .username
            .as_deref()
            .is_some_and(|u| u.trim().is_empty())
        {
            return Err(invalid("api.username", "is empty".into()));
        }
        let positive = [
            ("api.request_timeout", self.api.request_timeout),
            ("api.login_backoff_base", self.api.login_backoff_base),
            ("sampling.interval", self.sampling.interval),
            ("upload.backoff_base", self.upload.backoff_base),
        ];
        for (key, d) in positive {
            if d < Duration::from_millis(1) {
                return Err(invalid(key, "must be at least 1ms".into()));
            }
        }
        if self.api.login_backoff_max < self.api.login_backoff_base {
            return Err(invalid(
                "api.login_backoff_max",
                "must not be below api.login_backoff_base".into(),
            ));
        }
        if self.upload.backoff_max < self.upload.backoff_base {
            return Err(invalid(
                "upload.backoff_max",
                "must not be below upload.backoff_base".into(),
            ));
        }
        if !(1..=64).contains(&self.upload.concurrency) {
            return Err(invalid(
                "upload.concurrency",
                "must be between 1 and 64".into(),
            ));
        }
        if !(1..=10_000).contains(&self.upload.batch_size) {
            return Err(invalid(
                "upload.batch_size",
                "must be between 1 and 10000".into(),
            ));
        }
        if self.upload.batch_size < self.upload.concurrency {
            return Err(invalid(
                "upload.batch_size",
                "must be at least upload.concurrency".into(),
            ));
        }
        if self.queue.max_readings == 0 {
            return Err(invalid("queue.max_readings", "must be at least 1".into()));
        }
        if self.queue.commit_interval > Duration::from_secs(10) {
            return Err(invalid(
                "queue.commit_interval",
                "must be at most 10s (a crash loses up to this window)".into(),
            ));
        }
        if self.queue.path.as_os_str().is_empty() {
            return Err(invalid("queue.path", "is empty".into()));
        }
        crate::sensors::validate(&self.sensors).map_err(|e| invalid("sensors", e.to_string()))?;
        Ok(())
    }

    /// The effective configuration as TOML, for `config check`. Holds no secret: the password
    /// itself is never part of the configuration, only where it comes from.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Env values are TOML when they parse as such (`10`, `true`, `"x"`, `[1, 2]`), else plain strings,
/// so `PROFILO_GATEWAY__API__BASE_URL=http://...` needs no quotes.
fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = keys.split_last().ok_or("no key")?;
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{key}` is not a section"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().map_err(|source| ConfigError::Read {
            path: PathBuf::new(),
            source,
        })?;
        let _ = f.write_all(text.as_bytes());
        let source = ConfigSource::resolve(Some(f.path().to_path_buf()));
        Config::load(
            &source,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn contract_keys_load() {
        let c = load_text(
            r#"
[api]
base_url = "http://127.0.0.1:8000"
username = "iot_device@example.com"
password_file = "/etc/profilo-gateway/password"
request_timeout = "10s"
[queue]
path = "/var/lib/profilo-gateway/queue.db"
max_readings = 500000
[sampling]
interval = "5s"
[[sensors]]
type = "simulated"
"#,
            &[],
        );
        let c = match c {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.api.username.as_deref(), Some("iot_device@example.com"));
        assert_eq!(c.sampling.interval, Duration::from_secs(5));
        assert_eq!(c.queue.max_readings, 500_000);
        assert_eq!(c.sensors.len(), 1);
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = load_text("[api]\nbase_urll = \"x\"\n", &[])
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("base_urll"), "{err}");
        assert!(err.contains("config file"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn unknown_key_in_a_sensor_entry_names_the_entry() {
        let err = load_text(
            "[[sensors]]\ntype = \"ds18b20\"\n[[sensors]]\ntype = \"bme280\"\nadress = 0x76\n",
            &[],
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.starts_with("config file /"), "{err}");
        assert!(
            err.contains("sensors[1] (type \"bme280\"): unknown key `adress`, expected one of"),
            "{err}"
        );
    }

    #[test]
    fn bad_duration_is_an_error() {
        let err = load_text("[sampling]\ninterval = \"fast\"\n", &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("interval"), "{err}");
    }

    #[test]
    fn env_overrides_any_key() {
        let c = load_text(
            "[api]\nbase_url = \"http://a:1\"\n",
            &[
                ("PROFILO_GATEWAY__API__BASE_URL", "http://b:2"),
                ("PROFILO_GATEWAY__QUEUE__MAX_READINGS", "10"),
                ("PROFILO_GATEWAY__SAMPLING__INTERVAL", "1ms"),
                ("PROFILO_GATEWAY_CONFIG", "/ignored"),
            ],
        );
        let c = match c {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.api.base_url, "http://b:2");
        assert_eq!(c.queue.max_readings, 10);
        assert_eq!(c.sampling.interval, Duration::from_millis(1));
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let err = load_text("", &[("PROFILO_GATEWAY__QUEUE__MAX_READINGS", "lots")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("PROFILO_GATEWAY__QUEUE__MAX_READINGS"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_name_the_key() {
        for (text, key) in [
            ("[api]\nbase_url = \"ftp://x\"\n", "api.base_url"),
            ("[upload]\nconcurrency = 0\n", "upload.concurrency"),
            ("[queue]\nmax_readings = 0\n", "queue.max_readings"),
        ] {
            let err = load_text(text, &[])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn defaults_without_file_run_on_a_laptop() {
        let source = ConfigSource {
            path: None,
            explicit: false,
        };
        let c = match Config::load(&source, Vec::new()) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.api.base_url, "http://127.0.0.1:8000");
        assert!(matches!(c.sensors[0], SensorConfig::Simulated(_)));
        assert!(c.queue.path.ends_with("queue.db"));
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let source = ConfigSource::resolve(Some(PathBuf::from("/nonexistent/x.toml")));
        let err = Config::load(&source, Vec::new())
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("/nonexistent/x.toml"));
    }
}
