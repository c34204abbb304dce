//! Typed settings: loaded from a TOML file, overridden by `PROFILO_GATEWAY__SECTION__KEY`
//! environment variables, validated. Every key is optional with a default that runs on a laptop.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sensors::{simulated::SimulatedConfig, SensorConfig};

mod parse_error;
mod validate;

use parse_error::parse_error;
use validate::is_loopback;

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
    /// Never quotes the offending line: it may hold a password typed in the wrong place.
    #[error("config file {path}{}: {message}", position(.line, .column, .key.as_deref()))]
    Parse {
        path: String,
        message: String,
        key: Option<String>,
        line: Option<usize>,
        column: Option<usize>,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config {origin}: `{key}` {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

/// ` line 3, column 1, key `api.password``, or nothing when the error has no position.
fn position(line: &Option<usize>, column: &Option<usize>, key: Option<&str>) -> String {
    let mut out = String::new();
    if let (Some(line), Some(column)) = (line, column) {
        out.push_str(&format!(" line {line}, column {column}"));
    }
    if let Some(key) = key {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&format!(" key `{key}`"));
    }
    out
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
    /// Allow plain `http://` to a host other than this machine. The password and the
    /// tokens then cross the network in clear; only for a trusted link (a VPN).
    pub insecure_http: bool,
    // ---- TLS and proxy (issue 15) ----
    /// PEM certificates trusted besides the system store: a private CA, or the server's own
    /// self-signed certificate (then accepted as it is, still checked for name and dates).
    pub ca_file: Option<PathBuf>,
    /// Whether the system's CA store is trusted too; false (with `ca_file`) skips loading it.
    pub system_roots: bool,
    /// PEM certificate (and chain) for servers that require client certificates.
    pub client_cert: Option<PathBuf>,
    /// Its PEM private key, mode 0600 like the password file.
    pub client_key: Option<PathBuf>,
    /// `http://host:port` or `https://host:port`, used for every request; unset, the
    /// `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` environment variables apply.
    pub proxy: Option<String>,
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
            insecure_http: false,
            ca_file: None,
            system_roots: true,
            client_cert: None,
            client_key: None,
            proxy: None,
        }
    }
}

impl ApiConfig {
    /// The TLS settings, for `tls::check` and the HTTP client.
    pub fn tls_files(&self) -> crate::tls::TlsFiles<'_> {
        crate::tls::TlsFiles {
            ca_file: self.ca_file.as_deref(),
            system_roots: self.system_roots,
            client_cert: self.client_cert.as_deref(),
            client_key: self.client_key.as_deref(),
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
    /// Requests in flight at once: `"auto"` (found by the uploader, between 1 and
    /// `max_concurrency`, from the server's answers and round trips) or a number that pins it.
    pub concurrency: UploadConcurrency,
    /// The most requests in flight that `"auto"` may reach.
    pub max_concurrency: usize,
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
            concurrency: UploadConcurrency::Auto,
            max_concurrency: 32,
            batch_size: 64,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// `upload.concurrency`: `"auto"` or a number (also as a string, as environment
/// variables give it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadConcurrency {
    Auto,
    Fixed(usize),
}

impl Serialize for UploadConcurrency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            UploadConcurrency::Auto => s.serialize_str("auto"),
            UploadConcurrency::Fixed(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for UploadConcurrency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        let bad = || serde::de::Error::custom("must be \"auto\" or a number of requests");
        match Raw::deserialize(d)? {
            Raw::N(n) => usize::try_from(n)
                .map(UploadConcurrency::Fixed)
                .map_err(|_| bad()),
            Raw::S(s) if s.trim().eq_ignore_ascii_case("auto") => Ok(UploadConcurrency::Auto),
            Raw::S(s) => s
                .trim()
                .parse()
                .map(UploadConcurrency::Fixed)
                .map_err(|_| bad()),
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
    ///
    /// `env` is the raw environment (`std::env::vars_os()`): a variable that is not valid
    /// UTF-8 is ignored unless it is one of ours, which is then an error naming it.
    pub fn load(
        source: &ConfigSource,
        env: impl IntoIterator<Item = (OsString, OsString)>,
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
                toml::from_str::<Config>(&text).map_err(|e| {
                    match crate::sensors::entry_error(&text) {
                        Some(message) => ConfigError::Parse {
                            path: origin.clone(),
                            message,
                            key: None,
                            line: None,
                            column: None,
                        },
                        None => parse_error(&origin, &text, &e),
                    }
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| parse_error(&origin, &text, &e))?
            }
            None => toml::Table::new(),
        };
        let mut overridden = Vec::new();
        for (var, raw) in env {
            let Some((var, raw)) = our_variable(var, raw)? else {
                continue;
            };
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
                    key: None,
                    line: None,
                    column: None,
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

    /// What `run` logs and `config check` prints as warnings: settings that work but
    /// weaken the gateway.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(url) = reqwest::Url::parse(&self.api.base_url) {
            if url.scheme() == "http" && !is_loopback(&url) {
                out.push(format!(
                    "api.base_url {:?} is plain http (api.insecure_http = true): the password \
                     and the tokens cross the network in clear; use https:// unless the link is \
                     trusted",
                    self.api.base_url
                ));
            }
        }
        out
    }

    /// The effective configuration as TOML, for `config check`. Holds no secret: the password
    /// itself is never part of the configuration, only where it comes from.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// `(name, value)` as strings when the variable is ours (`PROFILO_GATEWAY__*`), `None` for
/// any other. `std::env::vars()` would panic on a variable that is not UTF-8, anyone's.
fn our_variable(var: OsString, raw: OsString) -> Result<Option<(String, String)>, ConfigError> {
    use std::os::unix::ffi::OsStrExt;
    if !var.as_bytes().starts_with(ENV_PREFIX.as_bytes()) {
        return Ok(None);
    }
    match (var.into_string(), raw.into_string()) {
        (Ok(var), Ok(raw)) => Ok(Some((var, raw))),
        (Ok(var), Err(_)) => Err(ConfigError::Env {
            var,
            message: "its value is not valid UTF-8; set it to UTF-8 text or unset it".into(),
        }),
        (Err(var), _) => Err(ConfigError::Env {
            var: var.to_string_lossy().into_owned(),
            message: "its name is not valid UTF-8; unset it".into(),
        }),
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
    use super::parse_error::{key_at, line_column};
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
            env.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
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
                ("PROFILO_GATEWAY__API__BASE_URL", "https://b:2"),
                ("PROFILO_GATEWAY__QUEUE__MAX_READINGS", "10"),
                ("PROFILO_GATEWAY__SAMPLING__INTERVAL", "1ms"),
                ("PROFILO_GATEWAY_CONFIG", "/ignored"),
            ],
        );
        let c = match c {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.api.base_url, "https://b:2");
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

    fn load_err(text: &str) -> String {
        load_text(text, &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_misplaced_password_is_never_quoted_in_the_error() {
        for (text, key, line) in [
            ("[api]\npassword = \"hunter2\"\n", "api.password", 2),
            ("[log]\nlevel = \"info\"\n[api]\n\npassword = \"hunter2\n", "api.password", 5),
            ("[api]\nusername = hunter2\n", "api.username", 2),
            ("[api]\nrequest_timeout = 5\n", "api.request_timeout", 2),
            ("[[sensors]]\ntype = \"simulated\"\n[[sensors]]\ntype = \"simulated\"\nseed = \"x\"\n", "sensors", 5),
        ] {
            let err = load_err(text);
            assert!(!err.contains("hunter2"), "the line was quoted: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
            assert!(err.starts_with("config file /"), "{err}");
            assert!(err.contains(key), "no key {key}: {err}");
            if !key.starts_with("sensors") {
                assert!(err.contains(&format!("line {line}, column ")), "{err}");
            }
        }
        // The key of a later [[sensors]] entry is indexed.
        assert_eq!(
            key_at("[[sensors]]\n[[sensors]]\nbus = x\n", 3).as_deref(),
            Some("sensors[1].bus")
        );
        assert_eq!(key_at("a = 1\n", 1).as_deref(), Some("a"));
        assert_eq!(line_column("ab\ncΩd", 6), (2, 3));
    }

    #[test]
    fn credentials_in_base_url_are_refused_without_echo() {
        for url in [
            "https://dev:s3cret@example.com",
            "https://dev@example.com",
            "http://:s3cret@127.0.0.1:8000",
            "https://dev:s3cret@exa mple.com",
        ] {
            let err = load_err(&format!("[api]\nbase_url = \"{url}\"\n"));
            assert!(err.contains("api.base_url"), "{url}: {err}");
            assert!(!err.contains("s3cret") && !err.contains("dev"), "{err}");
        }
    }

    #[test]
    fn plain_http_to_another_host_is_refused_unless_insecure_http() {
        for local in [
            "http://127.0.0.1:8000",
            "http://127.3.2.1",
            "http://localhost:8000",
            "http://[::1]:8000",
            "https://example.com",
        ] {
            let c = load_text(&format!("[api]\nbase_url = \"{local}\"\n"), &[]);
            assert!(
                c.as_ref().is_ok_and(|c| c.warnings().is_empty()),
                "{local}: {:?}",
                c.err()
            );
        }
        for remote in [
            "http://example.com",
            "http://192.168.1.10:8000",
            "http://[fd00::1]",
        ] {
            let err = load_err(&format!("[api]\nbase_url = \"{remote}\"\n"));
            assert!(
                err.contains("api.base_url")
                    && err.contains("use https://, or set api.insecure_http = true"),
                "{remote}: {err}"
            );
            let c = load_text(
                &format!("[api]\nbase_url = \"{remote}\"\ninsecure_http = true\n"),
                &[],
            );
            let warnings = c.map(|c| c.warnings()).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                warnings.len() == 1 && warnings[0].contains("in clear"),
                "{warnings:?}"
            );
        }
    }

    #[test]
    fn every_duration_key_has_an_upper_bound() {
        let config = Config::default();
        for (key, _, _, max) in config.durations() {
            let (section, name) = key.split_once('.').unwrap_or_default();
            let too_long = humantime::format_duration(max.limit + Duration::from_millis(1));
            let err = load_err(&format!("[{section}]\n{name} = \"{too_long}\"\n"));
            assert!(
                err.contains(key) && err.contains("must be at most"),
                "{key}: {err}"
            );
            let ok = humantime::format_duration(max.limit);
            let text = match key {
                // Each maximum must not fall below its base.
                "api.login_backoff_base" => {
                    format!("[api]\n{name} = \"{ok}\"\nlogin_backoff_max = \"{ok}\"\n")
                }
                "upload.backoff_base" => {
                    format!("[upload]\n{name} = \"{ok}\"\nbackoff_max = \"{ok}\"\n")
                }
                _ => format!("[{section}]\n{name} = \"{ok}\"\n"),
            };
            assert!(load_text(&text, &[]).is_ok(), "{key} = {ok} refused");
        }
        let err = load_err("[sampling]\ninterval = \"300000000000y\"\n");
        assert!(err.contains("sampling.interval"), "{err}");
    }

    #[test]
    fn clock_unsynced_is_reserved_like_timestamp() {
        for name in ["timestamp", "clock_unsynced"] {
            let err = load_err(&format!(
                "[[sensors]]\ntype = \"simulated\"\nfields = {{ temperature = \"{name}\" }}\n"
            ));
            assert!(err.contains(&format!("\"{name}\" is reserved")), "{err}");
        }
    }

    #[test]
    fn non_utf8_environment_is_ignored_unless_ours() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(b"caf\xe9".to_vec());
        let file = ConfigSource {
            path: None,
            explicit: false,
        };
        let others = vec![(OsString::from("LANG_JUNK"), bad()), (bad(), bad())];
        assert!(Config::load(&file, others).is_ok());
        let ours = vec![(OsString::from("PROFILO_GATEWAY__API__USERNAME"), bad())];
        let err = Config::load(&file, ours)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("PROFILO_GATEWAY__API__USERNAME") && err.contains("UTF-8"),
            "{err}"
        );
        let mut name = b"PROFILO_GATEWAY__API__USER".to_vec();
        name.push(0xff);
        let err = Config::load(&file, vec![(OsString::from_vec(name), OsString::from("x"))])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("name is not valid UTF-8"), "{err}");
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
    fn tls_and_proxy_keys_are_checked_at_load() {
        let ok = load_text(
            "[api]\nbase_url = \"https://gw.example\"\nproxy = \"http://proxy.lan:3128\"\n",
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(ok.api.system_roots);
        assert_eq!(ok.api.proxy.as_deref(), Some("http://proxy.lan:3128"));
        for (text, key, says) in [
            (
                "[api]\nca_file = \"/nonexistent/ca.pem\"\n",
                "`api.ca_file`",
                "cannot read",
            ),
            (
                "[api]\nsystem_roots = false\n",
                "`api.system_roots`",
                "api.ca_file is not set",
            ),
            (
                "[api]\nclient_key = \"/nonexistent/k\"\n",
                "`api.client_cert`",
                "set both",
            ),
            (
                "[api]\nproxy = \"socks5://p:1080\"\n",
                "`api.proxy`",
                "http://host:port",
            ),
            (
                "[api]\nproxy = \"http://u:secret@p:3128\"\n",
                "`api.proxy`",
                "HTTPS_PROXY",
            ),
        ] {
            let err = load_text(text, &[])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key) && err.contains(says), "{text}: {err}");
            assert!(
                !err.contains("secret"),
                "a proxy password was quoted: {err}"
            );
        }
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
