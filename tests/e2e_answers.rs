//! End-to-end tests of what counts as an answer (issue 12), against the real Django +
//! SimpleJWT server with a stand-in proxy in front of it (`Misbehave`) misbehaving in one
//! way at a time:
//!
//! - a 302 to a maintenance page, a 307 to another path, a captive portal's HTML 200:
//!   nothing counted uploaded that the server did not store, nothing followed;
//! - a 307 on the token endpoints: the password is never sent anywhere else;
//! - a 404 then a 403 for every POST: no dead letter, uploads pause, `last_error` names the
//!   URL and the fix, one log line per change;
//! - a 256 MiB page streamed at every POST: the gateway's VmHWM stays under 32 MiB;
//! - 30 % HTML 503s with `Retry-After: 1`: every reading delivered once, in a few log lines.
//!
//! After each fault the proxy stops misbehaving, sampling is stopped (restart with a 1 h
//! interval) and the backlog must drain: every reading captured is on the server once.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

const STOP_WAIT: Duration = Duration::from_secs(10);
/// Generous liveness bound for a drain of a few hundred readings.
const DRAIN_WAIT: Duration = Duration::from_secs(90);

fn start_server() -> TestServer {
    let server = TestServer::start(ServerOptions {
        access_lifetime: Duration::from_secs(30),
        ..Default::default()
    });
    server.create_user(DEFAULT_USERNAME, DEFAULT_PASSWORD);
    server
}

fn gateway(server: &TestServer) -> Gateway {
    let gw = Gateway::new(
        &server.base_url(),
        GatewayOptions {
            extra_toml: "[upload]\nbackoff_base = \"200ms\"\nbackoff_max = \"2s\"\n".into(),
            ..Default::default()
        },
    );
    gw.set_config_key("api", "login_backoff_base", "\"200ms\"");
    gw.set_config_key("api", "login_backoff_max", "\"1s\"");
    gw
}

fn stop(gw: &mut Gateway) {
    let exit = gw.sigterm(STOP_WAIT);
    assert!(
        exit.status.success(),
        "daemon exited with {:?}\n{}",
        exit.status,
        tail(&gw.log_text(), 40)
    );
}

/// Runs the daemon until `readings` are queued while the proxy misbehaves.
fn run_until_queued(gw: &mut Gateway, readings: u64) {
    gw.spawn();
    gw.wait_for(
        &format!("{readings} readings queued"),
        Duration::from_secs(60),
        |gw| gw.queue_counts().pending >= readings,
    );
}

/// Nothing the server did not store is counted uploaded or gone from the queue.
fn assert_nothing_counted(server: &TestServer, gw: &Gateway) {
    let q = gw.queue_counts();
    let stored = server.readings().len() as u64;
    assert_eq!(
        stored, 0,
        "the server stored readings through a misbehaving proxy"
    );
    assert_eq!(q.uploaded_total, 0, "counted uploaded, not stored: {q:?}");
    assert_eq!(q.dead, 0, "a reading refused for the proxy's sake: {q:?}");
    assert_eq!(q.dropped_total, 0, "{q:?}");
}

/// The proxy behaves again and sampling stops: the whole backlog reaches the server,
/// each reading once, and the gateway's count agrees with the server's.
fn assert_drains_once(server: &TestServer, gw: &mut Gateway) {
    server.set_misbehave(&Misbehave::default());
    server.clear_faults();
    stop(gw);
    let queued = gw.queue_counts();
    gw.set_interval("1h");
    gw.spawn();
    gw.wait_for("the backlog to drain", DRAIN_WAIT, |gw| {
        gw.queue_counts().pending == 0
    });
    stop(gw);
    let q = gw.queue_counts();
    let readings = server.readings();
    let stamps: HashSet<&str> = readings.iter().map(|r| r.timestamp.as_str()).collect();
    assert_eq!(stamps.len(), readings.len(), "duplicates on the server");
    assert_eq!(q.dead, 0, "{q:?}");
    assert_eq!(q.uploaded_total, readings.len() as u64, "{q:?}");
    assert!(
        readings.len() as u64 >= queued.pending + queued.uploaded_total,
        "{} stored, {queued:?} queued before the drain",
        readings.len()
    );
}

fn log_lines_with(gw: &Gateway, needles: &[&str]) -> usize {
    gw.log_text()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

fn last_error(gw: &Gateway) -> String {
    gw.queue_stats()["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_302_to_a_maintenance_page_is_never_an_acceptance() {
    let server = start_server();
    server.set_misbehave(&Misbehave::data("redirect_302"));
    let mut gw = gateway(&server);
    run_until_queued(&mut gw, 30);
    assert_nothing_counted(&server, &gw);
    assert!(server.stats().misbehaved > 0, "the proxy was not asked");
    assert_eq!(server.stats().other, 0, "the redirect was followed");
    let err = last_error(&gw);
    assert!(
        err.contains("302") && err.contains("/maintenance/"),
        "{err}"
    );
    assert_eq!(
        log_lines_with(&gw, &["upload failed", "/maintenance/"]),
        1,
        "the redirect said once"
    );
    assert_drains_once(&server, &mut gw);
}

#[test]
fn a_307_to_another_path_is_not_followed() {
    let server = start_server();
    server.set_misbehave(&Misbehave::data("redirect_307"));
    let mut gw = gateway(&server);
    run_until_queued(&mut gw, 30);
    assert_nothing_counted(&server, &gw);
    assert!(server.stats().misbehaved > 0);
    assert_eq!(
        server.stats().other,
        0,
        "a reading was re-sent to /moved/..."
    );
    assert!(last_error(&gw).contains("/moved/api/send/data/"));
    assert_drains_once(&server, &mut gw);
}

#[test]
fn a_captive_portals_html_200_is_not_an_acceptance() {
    let server = start_server();
    server.set_misbehave(&Misbehave::data("html_200"));
    let mut gw = gateway(&server);
    run_until_queued(&mut gw, 30);
    assert_nothing_counted(&server, &gw);
    let err = last_error(&gw);
    assert!(
        err.contains("not an answer of the Profilometre API (a captive portal or proxy?)")
            && err.contains("Hotel Wi-Fi - Log in"),
        "{err}"
    );
    // The page said by its title, not quoted whole.
    assert!(!gw.log_text().contains("accept the terms"));
    assert_drains_once(&server, &mut gw);
}

#[test]
fn a_307_on_the_token_endpoints_never_resends_the_password() {
    let server = start_server();
    server.set_misbehave(&Misbehave {
        mode: "redirect_307".into(),
        mode_scope: "token".into(),
        ..Default::default()
    });
    let mut gw = gateway(&server);
    run_until_queued(&mut gw, 20);
    gw.wait_for("a few login attempts", Duration::from_secs(30), |_| {
        server.stats().misbehaved >= 2
    });
    let s = server.stats();
    assert_eq!(
        s.other, 0,
        "a token request was re-sent to /moved/...: {s:?}"
    );
    assert_eq!(s.login_ok + s.login_failed, 0, "{s:?}");
    assert_eq!(
        s.data_ok + s.data_401 + s.data_other,
        0,
        "no session, no send: {s:?}"
    );
    assert!(gw.log_text().contains("/moved/api/token/"));
    assert_nothing_counted(&server, &gw);
    assert_drains_once(&server, &mut gw);
}

#[test]
fn a_404_then_a_403_for_every_post_pause_uploads_and_dead_letter_nothing() {
    let server = start_server();
    server.set_misbehave(&Misbehave::data("not_found"));
    let mut gw = gateway(&server);
    gw.set_config_key("queue", "max_bytes", "200000");
    run_until_queued(&mut gw, 40);
    gw.wait_for("the 404 in last_error", Duration::from_secs(30), |gw| {
        last_error(gw).contains("404")
    });
    let err = last_error(&gw);
    assert!(
        err.contains("/api/send/data/") && err.contains("api.base_url"),
        "{err}"
    );
    assert_nothing_counted(&server, &gw);
    // Uploading paused: probes, not one request per reading.
    let asked = server.stats().misbehaved;
    let pending = gw.queue_counts().pending;
    assert!(asked < pending, "{asked} requests for {pending} readings");

    server.set_misbehave(&Misbehave::data("forbidden"));
    gw.wait_for("the 403 in last_error", Duration::from_secs(30), |gw| {
        last_error(gw).contains("403")
    });
    assert!(
        last_error(&gw).contains("permissions"),
        "{}",
        last_error(&gw)
    );
    assert_nothing_counted(&server, &gw);
    assert_eq!(
        log_lines_with(&gw, &["upload failed", "404 Not Found"]),
        1,
        "the 404 said once"
    );
    assert_eq!(
        log_lines_with(&gw, &["upload failed", "403 Forbidden"]),
        1,
        "the 403 said once"
    );
    assert_drains_once(&server, &mut gw);
}

/// The peak resident memory of a process, from /proc.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

#[test]
fn a_256_mib_page_streamed_at_every_post_keeps_memory_bounded() {
    let server = start_server();
    server.set_misbehave(&Misbehave::data("huge_200"));
    let mut gw = gateway(&server);
    run_until_queued(&mut gw, 30);
    gw.wait_for("a few huge answers", Duration::from_secs(60), |_| {
        server.stats().misbehaved >= 3
    });
    let pid = gw.pid().expect("the daemon runs");
    let hwm = vm_hwm_kib(pid);
    assert!(
        hwm < 32 * 1024,
        "VmHWM {hwm} KiB while 256 MiB pages come in"
    );
    assert_nothing_counted(&server, &gw);
    assert!(last_error(&gw).contains("64 KiB"), "{}", last_error(&gw));
    // Even as an error page: the same bound.
    server.set_misbehave(&Misbehave::data("huge_502"));
    let before = server.stats().misbehaved;
    gw.wait_for("huge 502 pages", Duration::from_secs(60), |_| {
        server.stats().misbehaved >= before + 2
    });
    let hwm = vm_hwm_kib(pid);
    assert!(hwm < 32 * 1024, "VmHWM {hwm} KiB");
    eprintln!("huge answers: VmHWM {hwm} KiB");
    assert_drains_once(&server, &mut gw);
}

#[test]
fn html_503s_with_retry_after_for_a_third_of_the_sends_lose_and_repeat_nothing() {
    let server = start_server();
    let mut gw = gateway(&server);
    gw.spawn();
    gw.wait_for("first uploads", Duration::from_secs(30), |_| {
        !server.readings().is_empty()
    });
    server.set_faults(&Faults {
        fail_ratio: 0.3,
        retry_after: Some(1),
        reject_temperature_above: None,
    });
    gw.wait_for("some 503s", Duration::from_secs(60), |_| {
        server.stats().data_503 >= 20
    });
    // Partial failure is not an outage: readings keep arriving while 503s come.
    let stored = server.readings().len();
    gw.wait_for("uploads through the 503s", Duration::from_secs(60), |_| {
        server.readings().len() >= stored + 20
    });
    let s = server.stats();
    eprintln!("30 % 503s: {s:?}");
    assert!(
        log_lines_with(&gw, &["upload failed", "503"]) <= 2,
        "a run of 503s said in a line or two:\n{}",
        tail(&gw.log_text(), 20)
    );
    assert!(
        !gw.log_text().contains("<center>"),
        "an HTML page quoted whole"
    );
    assert_drains_once(&server, &mut gw);
}
