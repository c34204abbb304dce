//! Harness shared by the integration tests: a real Django + SimpleJWT test server
//! ([`TestServer`]) and the gateway binary run as a child process ([`Gateway`]).
//!
//! Use it from a test file with `mod common;` and `use common::*;`.
//!
//! ```ignore
//! let server = TestServer::start(ServerOptions {
//!     access_lifetime: Duration::from_secs(2),
//!     ..Default::default()
//! });
//! server.create_user("iot_device@example.com", "device-secret");
//! let mut gw = Gateway::new(&server.base_url(), GatewayOptions::default());
//! gw.spawn();
//! gw.wait_until("10 readings on the server", Duration::from_secs(20), || {
//!     server.readings().len() >= 10
//! });
//! let exit = gw.sigterm(Duration::from_secs(5));
//! assert!(exit.status.success());
//! ```
//!
//! Prerequisite: `scripts/setup-test-env.sh` (run by `scripts/test.sh`), which builds
//! `tests/server/.venv` and the template DB. Every test gets its own port and
//! temporary directory, so tests run in parallel. Nothing outlives a test: the
//! server and the gateway are killed when their handle is dropped, and when the test
//! panics their log tails are printed (cargo shows them with the failure).
//!
//! Environment variables:
//! - `PROFILO_TEST_PYTHON`: the Python that has the server's requirements
//!   (default `tests/server/.venv/bin/python`).
//! - `PROFILO_TEST_TEMPLATE_DB`: the migrated template DB
//!   (default `tests/server/template.sqlite3`).
//! - `PROFILO_TEST_KEEP=1`: keep the temporary directories (their paths are printed).
//! - `PROFILO_TEST_TMPDIR`: where the temporary directories go (default `target/tmp`).

// Each test crate uses only part of the harness.
#![allow(dead_code, unused_imports)]

pub mod delivery;
pub mod gateway;
pub mod ops;
pub mod queue_tools;
pub mod server;
pub mod tls;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use delivery::{capture_time_problem, parse_us, Edges, Run, CLOCK_SLACK_US, MAX_GAP_US};
pub use gateway::{Exit, Gateway, GatewayOptions, QueueCounts};
pub use ops::{doctor, doctor_check, doctor_level, parse_prometheus, queue_on_tmpfs, sample};
pub use queue_tools::{integrity_check, refused_url, BlackHole, Tmpfs};
pub use server::{Faults, Misbehave, Reading, ServerOptions, Stats, TestServer};
pub use tls::{Ca, Issued, ServerTls};

/// The user that [`GatewayOptions::default`] logs in as.
pub const DEFAULT_USERNAME: &str = "iot_device@example.com";
/// The password that [`GatewayOptions::default`] uses.
pub const DEFAULT_PASSWORD: &str = "device-secret-Ω";

/// How often the polling helpers re-check their condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `cond` every [`POLL_INTERVAL`] until it returns true; panics after `timeout`
/// with "timed out after ...: waiting for {what}". Use this instead of sleeping.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    if !poll_until(timeout, &mut cond) {
        panic!("timed out after {timeout:?}: waiting for {what}");
    }
}

/// Polls `cond` every [`POLL_INTERVAL`] until it returns true (then returns true) or
/// `timeout` passes (then returns false). The condition is always checked at least
/// once, and once more after the deadline.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return cond();
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Microseconds since the Unix epoch, now (the unit of [`Reading::timestamp_us`]).
pub fn now_us() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970");
    i64::try_from(d.as_micros()).expect("time overflow")
}

/// The root of the crate (`CARGO_MANIFEST_DIR`).
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The last `max_lines` lines of `text` (for log excerpts in panic messages).
pub fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    lines[start..].join("\n")
}

/// Makes the child get SIGKILL when the thread that spawned it dies, so that an
/// aborted test run (Ctrl-C, timeout) leaves no server or daemon behind. Linux
/// ties this to the spawning *thread*: keep a [`TestServer`] or [`Gateway`] in the
/// test thread that created it (the normal case).
fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A temporary directory for one server or gateway; kept when `PROFILO_TEST_KEEP=1`.
///
/// They live under `PROFILO_TEST_TMPDIR`, else cargo's `target/tmp`
/// (`CARGO_TARGET_TMPDIR`), not `/tmp`: a clean-up of `/tmp` by someone else on a
/// shared machine must not delete a running test's DB and logs.
fn temp_dir(prefix: &str) -> tempfile::TempDir {
    let root = std::env::var_os("PROFILO_TEST_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&root)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
    let mut dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&root)
        .unwrap_or_else(|e| {
            panic!(
                "cannot create a temporary directory in {}: {e}",
                root.display()
            )
        });
    if std::env::var_os("PROFILO_TEST_KEEP").is_some_and(|v| v == "1") {
        eprintln!("PROFILO_TEST_KEEP=1: keeping {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    dir
}
