//! [`Gateway`]: the `profilo-gateway` binary of this crate, run as a child process with
//! a config, password file, queue and log in its own temporary directory.

use std::cell::RefCell;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::server::read_lossy;
use super::{poll_until, tail, temp_dir, DEFAULT_PASSWORD, DEFAULT_USERNAME};

/// The gateway binary under test.
pub const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_profilo-gateway");

/// How long a CLI call ([`Gateway::cli`]) may take before it is killed.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(20);

/// What goes into the gateway's config file and environment.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// `api.username` (default [`DEFAULT_USERNAME`]).
    pub username: String,
    /// Written to the `api.password_file` (mode 0600; default [`DEFAULT_PASSWORD`]).
    pub password: String,
    /// `sampling.interval` (default 100 ms).
    pub interval: Duration,
    /// `api.request_timeout` (default 5 s).
    pub request_timeout: Duration,
    /// `RUST_LOG` of the daemon (default `info,profilo_gateway=debug`).
    pub rust_log: String,
    /// TOML appended verbatim after the generated config (which ends with the
    /// `[[sensors]]` table): start it with a table header such as `[uploader]`.
    /// To change a generated key, use [`Gateway::set_config`] instead.
    pub extra_toml: String,
    /// Extra environment for every run of the binary (daemon and CLI).
    pub env: Vec<(String, String)>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            username: DEFAULT_USERNAME.to_owned(),
            password: DEFAULT_PASSWORD.to_owned(),
            interval: Duration::from_millis(100),
            request_timeout: Duration::from_secs(5),
            rust_log: "info,profilo_gateway=debug".to_owned(),
            extra_toml: String::new(),
            env: Vec::new(),
        }
    }
}

/// How a daemon run ended ([`Gateway::sigterm`]).
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// The exit status.
    pub status: ExitStatus,
    /// From the signal to the exit.
    pub elapsed: Duration,
}

/// The integer counters of `queue stats --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Readings waiting for upload.
    pub pending: u64,
    /// Readings given up on (dead letters).
    pub dead: u64,
    /// Readings the server acknowledged, ever.
    pub uploaded_total: u64,
    /// Readings dropped, ever (queue full).
    pub dropped_total: u64,
}

impl QueueCounts {
    /// Panics unless nothing was dead-lettered or dropped.
    pub fn assert_none_dead_or_dropped(&self) {
        assert_eq!(self.dead, 0, "no reading may be dead-lettered: {self:?}");
        assert_eq!(self.dropped_total, 0, "no reading may be dropped: {self:?}");
    }
}

/// The gateway: a config in a temporary directory, and at most one daemon process
/// (`run`) at a time. The daemon is SIGKILLed when this is dropped; when the test is
/// panicking, the tail of its log is printed.
pub struct Gateway {
    dir: tempfile::TempDir,
    options: GatewayOptions,
    base_url: String,
    // RefCell: the waiting helpers take `&self`, so that a condition may call `&self`
    // methods (`gw.wait_until(.., || gw.queue_counts().pending > 0)`).
    child: RefCell<Option<Child>>,
    runs: u32,
}

impl Gateway {
    /// Writes the config (API at `base_url`, queue/log/password in a new temporary
    /// directory, one simulated sensor) and the password file. Starts nothing.
    pub fn new(base_url: &str, options: GatewayOptions) -> Gateway {
        let dir = temp_dir("profilo-gateway-");
        let gw = Gateway {
            dir,
            options,
            base_url: base_url.to_owned(),
            child: RefCell::new(None),
            runs: 0,
        };
        gw.write_password(&gw.options.password.clone());
        let toml = gw.default_config();
        gw.set_config(&toml);
        gw
    }

    /// The generated config text (what [`new`](Self::new) wrote, before any
    /// [`set_config`](Self::set_config)).
    pub fn default_config(&self) -> String {
        let o = &self.options;
        format!(
            "# written by tests/common/gateway.rs\n\
             [api]\n\
             base_url = {base_url}\n\
             username = {username}\n\
             password_file = {password_file}\n\
             request_timeout = {timeout}\n\
             \n\
             [queue]\n\
             path = {queue}\n\
             \n\
             [sampling]\n\
             interval = {interval}\n\
             \n\
             [[sensors]]\n\
             type = \"simulated\"\n\
             \n\
             {extra}\n",
            base_url = toml_str(&self.base_url),
            username = toml_str(&o.username),
            password_file = toml_str(&self.password_path().to_string_lossy()),
            timeout = toml_str(&humantime::format_duration(o.request_timeout).to_string()),
            queue = toml_str(&self.queue_path().to_string_lossy()),
            interval = toml_str(&humantime::format_duration(o.interval).to_string()),
            extra = o.extra_toml,
        )
    }

    /// Replaces the config file's content (takes effect at the next spawn or CLI call).
    pub fn set_config(&self, toml: &str) {
        fs::write(self.config_path(), toml).expect("cannot write gateway config");
    }

    /// The config file's current content.
    pub fn config_text(&self) -> String {
        read_lossy(&self.config_path())
    }

    /// Rewrites the password file (mode 0600).
    pub fn write_password(&self, password: &str) {
        let path = self.password_path();
        let _ = fs::remove_file(&path);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("cannot create password file");
        f.write_all(password.as_bytes())
            .and_then(|_| f.write_all(b"\n"))
            .expect("cannot write password file");
    }

    /// The temporary directory holding config, password, queue and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("gateway.toml")
    }
    /// The password file.
    pub fn password_path(&self) -> PathBuf {
        self.dir().join("password")
    }
    /// The SQLite queue (`queue.path`).
    pub fn queue_path(&self) -> PathBuf {
        self.dir().join("queue.db")
    }
    /// The daemon's log (stdout + stderr of every run, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("gateway.log")
    }
    /// Everything the daemon logged so far, all runs.
    pub fn log_text(&self) -> String {
        read_lossy(&self.log_path())
    }
    /// How many times [`spawn`](Self::spawn) was called.
    pub fn runs(&self) -> u32 {
        self.runs
    }

    /// Replaces the extra environment of later runs of the binary (daemon and CLI), e.g.
    /// to restart the same gateway (same queue) with `PROFILO_GATEWAY_CLOCK_SKEW`.
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.options.env = env;
    }

    /// A command for the binary with `--config FILE` and the test environment (no
    /// inherited `PROFILO_GATEWAY*`, `NOTIFY_SOCKET` or proxy variables).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(GATEWAY_BIN);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("PROFILO_GATEWAY")
                || k == "NOTIFY_SOCKET"
                || k == "WATCHDOG_USEC"
                || k.to_ascii_lowercase().ends_with("_proxy")
            {
                cmd.env_remove(&key);
            }
        }
        cmd.env("NO_PROXY", "127.0.0.1,localhost")
            .env("RUST_LOG", &self.options.rust_log)
            .env("RUST_BACKTRACE", "1")
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null());
        super::die_with_parent(&mut cmd);
        cmd
    }

    /// Starts `profilo-gateway --config FILE run`, output appended to the log.
    /// Panics when a daemon of this gateway is already running.
    pub fn spawn(&mut self) {
        assert!(!self.is_running(), "gateway already running");
        self.runs += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("cannot open gateway log");
        writeln!(log, "===== test harness: run {} =====", self.runs).ok();
        let log2 = log.try_clone().expect("cannot clone log handle");
        let child = self
            .command()
            .arg("run")
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {GATEWAY_BIN}: {e}"));
        *self.child.borrow_mut() = Some(child);
    }

    /// Whether the daemon is running now.
    pub fn is_running(&self) -> bool {
        match self.child.borrow_mut().as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The daemon's pid, when started.
    pub fn pid(&self) -> Option<u32> {
        self.child.borrow().as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit. Panics (after SIGKILL, with
    /// the log tail) when the daemon is not running or did not exit in time.
    pub fn sigterm(&mut self, timeout: Duration) -> Exit {
        self.signal_and_wait(libc::SIGTERM, timeout)
    }

    /// Like [`sigterm`](Self::sigterm) with SIGINT (Ctrl-C).
    pub fn sigint(&mut self, timeout: Duration) -> Exit {
        self.signal_and_wait(libc::SIGINT, timeout)
    }

    fn signal_and_wait(&mut self, signal: libc::c_int, timeout: Duration) -> Exit {
        let mut child = self
            .child
            .borrow_mut()
            .take()
            .expect("signal sent to a gateway that was never spawned");
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "gateway had already exited ({status}) before the signal\n--- gateway log ---\n{}",
                tail(&self.log_text(), 60)
            );
        }
        let start = Instant::now();
        // SAFETY: plain syscall on our own child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
        let mut status = None;
        poll_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        let elapsed = start.elapsed();
        match status {
            Some(status) => Exit { status, elapsed },
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "gateway did not exit within {timeout:?} of signal {signal}\n--- gateway log ---\n{}",
                    tail(&self.log_text(), 60)
                );
            }
        }
    }

    /// Waits up to `timeout` for the daemon to exit on its own; its status, or `None` when
    /// it is still running (it is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        poll_until(timeout, || {
            status = match self.child.borrow_mut().as_mut() {
                Some(c) => c.try_wait().ok().flatten(),
                None => panic!("gateway not spawned"),
            };
            status.is_some()
        });
        if status.is_some() {
            self.child.borrow_mut().take();
        }
        status
    }

    /// SIGKILLs the daemon (a crash or power cut) and reaps it. No-op when not running.
    pub fn kill9(&mut self) {
        let child = self.child.try_borrow_mut().ok().and_then(|mut c| c.take());
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Panics with the log tail when the daemon has exited (use inside polls).
    pub fn assert_running(&self) {
        let exited = match self.child.borrow_mut().as_mut() {
            Some(c) => c.try_wait().ok().flatten(),
            None => panic!("gateway not spawned"),
        };
        if let Some(status) = exited {
            panic!(
                "gateway exited unexpectedly ({status})\n--- gateway log ---\n{}",
                tail(&self.log_text(), 60)
            );
        }
    }

    /// [`poll_until`] that fails fast, with the log tail, when the daemon exits while
    /// polling.
    pub fn poll_while_running(&self, timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
        poll_until(timeout, || {
            self.assert_running();
            cond()
        })
    }

    /// [`wait_until`](super::wait_until) that also fails fast, with the log tail, when
    /// the daemon exits while waiting.
    pub fn wait_until(&self, what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
        if !self.poll_while_running(timeout, cond) {
            panic!(
                "timed out after {timeout:?}: waiting for {what}\n--- gateway log ---\n{}",
                tail(&self.log_text(), 40)
            );
        }
    }

    /// Runs `profilo-gateway --config FILE ARGS...` to completion (killed after
    /// [`CLI_TIMEOUT`]) and returns (status, stdout, stderr). Works while the daemon runs.
    pub fn cli(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let out_path = self.dir().join(format!("cli-{}.out", fastrand::u64(..)));
        let err_path = out_path.with_extension("err");
        let out = File::create(&out_path).expect("cli stdout file");
        let err = File::create(&err_path).expect("cli stderr file");
        let mut child = self
            .command()
            .args(args)
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {GATEWAY_BIN}: {e}"));
        let mut status = None;
        poll_until(CLI_TIMEOUT, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        let stdout = read_lossy(&out_path);
        let stderr = read_lossy(&err_path);
        let _ = fs::remove_file(&out_path);
        let _ = fs::remove_file(&err_path);
        match status {
            Some(s) => (s, stdout, stderr),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`profilo-gateway {}` hung for {CLI_TIMEOUT:?}\nstdout: {stdout}\nstderr: {stderr}", args.join(" "));
            }
        }
    }

    /// Like [`cli`](Self::cli), panicking unless the exit status is 0; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let (status, stdout, stderr) = self.cli(args);
        if !status.success() {
            panic!(
                "`profilo-gateway {}` failed ({status})\nstdout: {stdout}\nstderr: {stderr}",
                args.join(" ")
            );
        }
        stdout
    }

    /// `queue stats --json`, parsed.
    pub fn queue_stats(&self) -> Value {
        let out = self.cli_ok(&["queue", "stats", "--json"]);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`queue stats --json` printed no JSON ({e}): {out}"))
    }

    /// The integer counters of [`queue_stats`](Self::queue_stats); panics naming any
    /// missing key.
    pub fn queue_counts(&self) -> QueueCounts {
        let v = self.queue_stats();
        let get = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .unwrap_or_else(|| panic!("`queue stats --json` has no integer `{k}`: {v}"))
        };
        QueueCounts {
            pending: get("pending"),
            dead: get("dead"),
            uploaded_total: get("uploaded_total"),
            dropped_total: get("dropped_total"),
        }
    }

    /// `queue list --json [--limit N]`, parsed.
    pub fn queue_list(&self, limit: Option<u64>) -> Value {
        let limit_s = limit.map(|n| n.to_string());
        let mut args = vec!["queue", "list", "--json"];
        if let Some(l) = limit_s.as_deref() {
            args.extend(["--limit", l]);
        }
        let out = self.cli_ok(&args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`queue list --json` printed no JSON ({e}): {out}"))
    }

    /// The reading objects of `queue list --json`, whatever the exact listing shape: an
    /// array of items (or an object holding one), each a reading (with a capture-time
    /// key, see [`TIMESTAMP_KEYS`]) or holding one under `reading` / `payload` / `body`.
    pub fn queued_readings(&self) -> Vec<Value> {
        let v = self.queue_list(Some(1_000_000));
        let items = match &v {
            Value::Array(a) => a.clone(),
            Value::Object(o) => o
                .values()
                .find_map(|x| x.as_array().cloned())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        items
            .iter()
            .map(|item| {
                reading_object(item)
                    .unwrap_or_else(|| panic!("no reading in `queue list --json` item {item}"))
            })
            .collect()
    }

    /// The capture timestamps (wire strings) of [`queued_readings`](Self::queued_readings).
    pub fn queued_timestamps(&self) -> Vec<String> {
        self.queued_readings()
            .iter()
            .map(|r| {
                TIMESTAMP_KEYS
                    .iter()
                    .find_map(|k| r.get(*k).and_then(Value::as_str))
                    .unwrap_or_else(|| panic!("no timestamp string in queued reading {r}"))
                    .to_owned()
            })
            .collect()
    }
}

/// The keys a queued reading's capture time may go by.
const TIMESTAMP_KEYS: [&str; 3] = ["timestamp", "captured_at", "capture_time"];

/// The reading object inside one `queue list --json` item (a JSON string is parsed).
fn reading_object(item: &Value) -> Option<Value> {
    if TIMESTAMP_KEYS.iter().any(|k| item.get(*k).is_some()) {
        return Some(item.clone());
    }
    ["reading", "payload", "body"]
        .iter()
        .find_map(|k| match item.get(*k)? {
            Value::String(s) => reading_object(&serde_json::from_str(s).ok()?),
            inner => reading_object(inner),
        })
}

/// A TOML basic string (quoted, escaped).
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- gateway log ({}) ---\n{}\n--- end of gateway log ---",
                self.log_path().display(),
                tail(&self.log_text(), 60)
            );
        }
    }
}
