//! [`TestServer`]: the real Django + DRF + SimpleJWT server of `tests/server/`, run by
//! gunicorn on a free 127.0.0.1 port with a private copy of the template DB.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{manifest_dir, poll_until, tail, temp_dir, DEFAULT_PASSWORD, DEFAULT_USERNAME};

/// How the server is configured (the `SIMPLE_JWT` lifetimes and extra environment).
/// Rotation and blacklist-after-rotation are always on, as in production.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `ACCESS_TOKEN_LIFETIME` (production: 15 min; default here 3 s). Sub-second
    /// precision is kept.
    pub access_lifetime: Duration,
    /// `REFRESH_TOKEN_LIFETIME` (production: 30 days; default here 1 h).
    pub refresh_lifetime: Duration,
    /// gunicorn threads of the single worker (default 4).
    pub threads: u32,
    /// Extra environment for the server process.
    pub env: Vec<(String, String)>,
    /// Serve https with these certificates (default: plain http).
    pub tls: Option<super::tls::ServerTls>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            access_lifetime: Duration::from_secs(3),
            refresh_lifetime: Duration::from_secs(3600),
            threads: 4,
            env: Vec::new(),
            tls: None,
        }
    }
}

/// The request counters of `GET /test-control/stats/`, counted by the server per
/// path and status since the DB was created (they survive [`TestServer::restart`]).
/// Requests to `/test-control/` are not counted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Every counted request.
    pub requests_total: u64,
    /// `POST /api/token/` answered 2xx / otherwise.
    pub login_ok: u64,
    pub login_failed: u64,
    /// `POST /api/token/refresh/` answered 2xx / otherwise.
    pub refresh_ok: u64,
    pub refresh_failed: u64,
    /// `POST /api/token/verify/` answered 2xx / otherwise.
    pub verify_ok: u64,
    pub verify_failed: u64,
    /// `GET /api/auth/profile/` answered 2xx / otherwise.
    pub profile_ok: u64,
    pub profile_failed: u64,
    /// `POST /api/send/data/` answered 2xx, 400, 401, 503 (injected), anything else.
    pub data_ok: u64,
    pub data_400: u64,
    pub data_401: u64,
    pub data_503: u64,
    pub data_other: u64,
    /// Requests to any other path.
    pub other: u64,
    /// Requests answered by the stand-in proxy of [`Misbehave`] (never by the app).
    pub misbehaved: u64,
}

/// One reading stored by the server, as `GET /test-control/readings/` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct Reading {
    /// Row id: the order in which the server stored the readings.
    pub id: i64,
    pub temperature: Option<f64>,
    pub humidite: Option<f64>,
    pub accelerometre: Option<f64>,
    /// The `timestamp` exactly as the client sent it.
    pub timestamp: String,
    /// The same, parsed by the server, in Python's ISO format (`+00:00`).
    pub timestamp_parsed: String,
    /// The parsed capture time, microseconds since the Unix epoch.
    pub timestamp_us: i64,
    /// When the server stored it, microseconds since the Unix epoch.
    pub received_at_us: i64,
    /// The user whose access token posted it.
    pub username: String,
}

/// Fault injection for `POST /api/send/data/` (`POST /test-control/faults/`).
/// `Faults::default()` clears every fault.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Faults {
    /// Fraction (0..=1) of data requests answered, at random, with a proxy-style
    /// HTML 503 (before authentication, nothing stored).
    pub fail_ratio: f64,
    /// `Retry-After` seconds sent with those 503s (none when `None`).
    pub retry_after: Option<u64>,
    /// Readings whose temperature is above this get a 400 (never stored).
    pub reject_temperature_above: Option<f64>,
}

/// What a stand-in proxy in front of the app answers to the POSTs of `mode_scope`
/// (`POST /test-control/misbehave/`, independent of [`Faults`]); `Misbehave::default()`
/// answers nothing in the app's place.
#[derive(Debug, Clone, Serialize)]
pub struct Misbehave {
    /// `""`, `"redirect_302"` (to `/maintenance/`, a 200 HTML page), `"redirect_307"` (to
    /// `/moved<path>`), `"html_200"` (a captive portal's login page), `"not_found"` (an
    /// nginx 404 page), `"forbidden"` (DRF's 403), `"huge_200"` / `"huge_502"` (a 256 MiB
    /// HTML page, streamed).
    pub mode: String,
    /// `"data"` (`/api/send/data/`), `"token"` (`/api/token/` and its refresh) or `"all"`.
    pub mode_scope: String,
    /// Extra latency of every data request, ms (holds a server thread, like slow work).
    pub delay_ms: u64,
}

impl Default for Misbehave {
    fn default() -> Self {
        Misbehave {
            mode: String::new(),
            mode_scope: "data".into(),
            delay_ms: 0,
        }
    }
}

impl Misbehave {
    /// `mode` for the data endpoint.
    pub fn data(mode: &str) -> Misbehave {
        Misbehave {
            mode: mode.into(),
            ..Default::default()
        }
    }
}

/// A running test server. Killed (process group SIGKILL) when dropped; when the test
/// is panicking, the tail of its log is printed.
pub struct TestServer {
    dir: tempfile::TempDir,
    port: u16,
    options: ServerOptions,
    child: Option<Child>,
    client: reqwest::blocking::Client,
}

/// Where the server's Python lives, or a panic that says how to get it.
pub(super) fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PROFILO_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let p = manifest_dir().join("tests/server/.venv/bin/python");
    if !p.exists() {
        panic!(
            "no test server Python at {}: run scripts/setup-test-env.sh first \
             (or set PROFILO_TEST_PYTHON)",
            p.display()
        );
    }
    p
}

fn template_db() -> PathBuf {
    let p = std::env::var_os("PROFILO_TEST_TEMPLATE_DB")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("tests/server/template.sqlite3"));
    if !p.exists() {
        panic!(
            "no template DB at {}: run scripts/setup-test-env.sh first",
            p.display()
        );
    }
    p
}

/// A port that is free now, chosen below the kernel's ephemeral range (32768+) so that
/// no outgoing connection takes it while the server is stopped for a restart.
fn free_port() -> u16 {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(SEQ.fetch_add(1, Ordering::Relaxed).wrapping_mul(7919))
        .wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        );
    let mut rng = fastrand::Rng::with_seed(u64::from(seed));
    for _ in 0..200 {
        let port = rng.u16(20_000..32_000);
        if TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port found in 20000..32000 on 127.0.0.1");
}

fn secs_arg(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

impl TestServer {
    /// Starts a server with a fresh copy of the template DB on a free port, and returns
    /// once it answers HTTP (typically well under 1 s; panics after 30 s).
    pub fn start(options: ServerOptions) -> TestServer {
        let dir = temp_dir("profilo-server-");
        fs::copy(template_db(), dir.path().join("db.sqlite3")).expect("cannot copy template DB");
        let mut client = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30));
        if let Some(tls) = &options.tls {
            // The harness's own calls trust any certificate: the tests vary the server's.
            client = client.danger_accept_invalid_certs(true);
            if let Some(pem) = &tls.control_identity {
                client = client.identity(
                    reqwest::Identity::from_pem(pem.as_bytes()).expect("control identity"),
                );
            }
        }
        let client = client.build().expect("reqwest client");
        let mut server = TestServer {
            dir,
            port: 0,
            options,
            child: None,
            client,
        };
        // The port is free when chosen but may be taken before gunicorn binds it: retry.
        for attempt in 1..=5 {
            server.port = free_port();
            match server.launch() {
                Ok(()) => return server,
                Err(e) if attempt < 5 => {
                    eprintln!("test server start attempt {attempt} failed ({e}); retrying")
                }
                Err(e) => panic!(
                    "test server did not start: {e}\n--- server log ---\n{}",
                    tail(&server.log_text(), 60)
                ),
            }
        }
        unreachable!()
    }

    /// [`start`](Self::start) with access tokens living `access_lifetime`, and the
    /// device user ([`DEFAULT_USERNAME`], [`DEFAULT_PASSWORD`]) created.
    pub fn with_device(access_lifetime: Duration) -> TestServer {
        let server = TestServer::start(ServerOptions {
            access_lifetime,
            ..Default::default()
        });
        server.create_user(DEFAULT_USERNAME, DEFAULT_PASSWORD);
        server
    }

    /// `http://127.0.0.1:PORT` (no trailing slash); `https://` with [`ServerOptions::tls`].
    pub fn base_url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `base_url() + path`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url(), path)
    }

    /// The TCP port (stays the same across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The options it was started with.
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// A blocking reqwest client without proxy, 30 s timeout, for raw API calls.
    pub fn client(&self) -> &reqwest::blocking::Client {
        &self.client
    }

    /// The server's SQLite DB file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("db.sqlite3")
    }

    /// The server's log file (gunicorn access + error log, Django errors).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Everything the server logged so far.
    pub fn log_text(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn launch(&mut self) -> Result<(), String> {
        let server_dir = manifest_dir().join("tests/server");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("cannot open server log");
        let log2 = log.try_clone().expect("cannot clone log handle");
        let mut cmd = Command::new(python());
        cmd.current_dir(&server_dir)
            .args(["-m", "gunicorn", "profilo_server.wsgi:application"])
            .arg("--bind")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["--workers", "1", "--worker-class", "gthread"])
            .arg("--threads")
            .arg(self.options.threads.to_string())
            .args(["--graceful-timeout", "1", "--timeout", "60"])
            .args(["--no-control-socket", "--access-logfile", "-"])
            .args(["--access-logformat", "%(t)s \"%(r)s\" %(s)s %(b)s %(L)ss"])
            .args(["--error-logfile", "-"])
            .args(tls_args(self.options.tls.as_ref()))
            .env("PROFILO_DB_PATH", self.db_path())
            .env("PROFILO_TEST_CONTROL", "1")
            .env(
                "PROFILO_ACCESS_LIFETIME_SECS",
                secs_arg(self.options.access_lifetime),
            )
            .env(
                "PROFILO_REFRESH_LIFETIME_SECS",
                secs_arg(self.options.refresh_lifetime),
            )
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // Own process group: stop/drop kill gunicorn's master and worker together.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        super::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", python().display()))?;
        self.child = Some(child);
        let started = Instant::now();
        let mut exited = None;
        let ready = poll_until(Duration::from_secs(30), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    exited = Some(status);
                    return true;
                }
            }
            // Any HTTP answer means Django is loaded and the socket is served.
            self.client
                .get(self.url("/test-control/stats/"))
                .timeout(Duration::from_secs(2))
                .send()
                .is_ok()
        });
        if let Some(status) = exited {
            self.child = None;
            return Err(format!("gunicorn exited with {status} while starting"));
        }
        if !ready {
            self.kill_group();
            return Err(format!(
                "no HTTP answer on port {} after {:?}",
                self.port,
                started.elapsed()
            ));
        }
        Ok(())
    }

    fn kill_group(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as libc::pid_t;
            // SAFETY: plain syscall on a process group we created.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    /// Stops the server gracefully (gunicorn SIGTERM: in-flight requests finish and get
    /// their answers, then the port is closed); SIGKILLs it after 5 s. No-op when
    /// stopped. Use this for outages: no answer is lost in flight.
    pub fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain syscall on our child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let done = poll_until(Duration::from_secs(5), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !done {
            eprintln!("test server did not stop within 5 s of SIGTERM: killing it");
        }
        self.kill_group();
    }

    /// Kills the server at once (SIGKILL to its process group), like a crash or a power
    /// cut. A request in flight may have been stored without its answer reaching the
    /// client: a retry then duplicates it, which no client can prevent.
    pub fn kill(&mut self) {
        self.kill_group();
    }

    /// Starts the server again, same port and same DB (users, tokens, blacklist,
    /// readings, counters and faults all kept), after stopping it if it runs.
    pub fn restart(&mut self) {
        self.stop();
        let mut last = String::new();
        // The port may be held a moment longer (or, rarely, taken): retry a while.
        let ok = poll_until(Duration::from_secs(10), || match self.launch() {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        });
        if !ok {
            panic!(
                "test server did not restart on port {}: {last}\n--- server log ---\n{}",
                self.port,
                tail(&self.log_text(), 60)
            );
        }
    }

    fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = self.url(path);
        let mut req = self.client.request(method.clone(), &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .unwrap_or_else(|e| panic!("{method} {url}: {e} (is the server running?)"));
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        if !status.is_success() {
            let hint = if self.db_path().exists() {
                String::new()
            } else {
                format!(
                    "\n(the server's DB {} is gone: was the test's temporary directory deleted?)",
                    self.db_path().display()
                )
            };
            panic!("{method} {url}: HTTP {status}: {text}{hint}");
        }
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {url}: answer is not JSON ({e}): {text}"))
    }

    /// Creates the user (or updates its password and activates it). Returns its id.
    pub fn create_user(&self, username: &str, password: &str) -> i64 {
        let v = self.control(
            reqwest::Method::POST,
            "/test-control/users/",
            Some(json!({"username": username, "password": password, "active": true})),
        );
        v["id"].as_i64().expect("user id")
    }

    /// Activates or deactivates an existing user (a deactivated user can neither log in
    /// nor refresh: 401).
    pub fn set_user_active(&self, username: &str, active: bool) {
        self.control(
            reqwest::Method::POST,
            "/test-control/users/",
            Some(json!({"username": username, "active": active})),
        );
    }

    /// The request counters.
    pub fn stats(&self) -> Stats {
        let v = self.stats_json();
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("bad stats {v}: {e}"))
    }

    /// The request counters as raw JSON (every counter, including any added later).
    pub fn stats_json(&self) -> Value {
        self.control(reqwest::Method::GET, "/test-control/stats/", None)
    }

    /// Every stored reading, in storage order.
    pub fn readings(&self) -> Vec<Reading> {
        let v = self.control(reqwest::Method::GET, "/test-control/readings/", None);
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("bad readings ({e}): {v}"))
    }

    /// Blacklists every outstanding refresh token (like an admin revoking all sessions).
    /// Returns how many were blacklisted now.
    pub fn blacklist_all(&self) -> u64 {
        let v = self.control(reqwest::Method::POST, "/test-control/blacklist-all/", None);
        v["blacklisted"].as_u64().expect("blacklisted count")
    }

    /// Sets the fault injection of `POST /api/send/data/`; `Faults::default()` clears it.
    pub fn set_faults(&self, faults: &Faults) {
        self.control(
            reqwest::Method::POST,
            "/test-control/faults/",
            Some(serde_json::to_value(faults).expect("faults to JSON")),
        );
    }

    /// Sets what the stand-in proxy answers; `Misbehave::default()` stops it.
    pub fn set_misbehave(&self, m: &Misbehave) {
        self.control(
            reqwest::Method::POST,
            "/test-control/misbehave/",
            Some(serde_json::to_value(m).expect("misbehave to JSON")),
        );
    }

    /// Clears every injected fault.
    pub fn clear_faults(&self) {
        self.set_faults(&Faults::default());
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill_group();
        if std::thread::panicking() {
            eprintln!(
                "--- test server log (port {}, {}) ---\n{}\n--- end of server log ---",
                self.port,
                self.log_path().display(),
                tail(&self.log_text(), 40)
            );
        }
    }
}

/// gunicorn's TLS options: `--certfile`/`--keyfile`, and `--ca-certs`/`--cert-reqs 2`
/// (CERT_REQUIRED) to demand client certificates.
fn tls_args(tls: Option<&super::tls::ServerTls>) -> Vec<std::ffi::OsString> {
    let Some(tls) = tls else {
        return Vec::new();
    };
    let mut args: Vec<std::ffi::OsString> = vec![
        "--certfile".into(),
        tls.cert.clone().into(),
        "--keyfile".into(),
        tls.key.clone().into(),
    ];
    if let Some(ca) = &tls.client_ca {
        args.extend([
            "--ca-certs".into(),
            ca.clone().into(),
            "--cert-reqs".into(),
            "2".into(),
        ]);
    }
    args
}

/// Reads a file as text; empty when it does not exist yet.
pub(crate) fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == ErrorKind::NotFound => String::new(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
