//! End-to-end tests of the token manager (issue 3), against the real Django + SimpleJWT
//! test server (rotation + blacklist-after-rotation on, short access lifetimes so that
//! refreshes happen every second or two):
//!
//! (a) 3 s access tokens for 60 s of uploads: one login, every refresh succeeds, no 401;
//! (b) every refresh token blacklisted mid-run: one refused refresh, one new login,
//!     nothing lost;
//! (c) wrong password for 30 s then fixed in the file: a handful of failed logins, one
//!     warning, recovery without restart, nothing lost;
//! (d) device clock +1 year / (e) -1 year: no refresh storm, no 401 storm;
//! (f) a backlog drained (sampling slowed) with 16 uploads in flight across token
//!     expiries: one refresh per expiry, no 401 storm; the server's count of refresh requests equals the gateway's
//!     refresh counter, and no refresh token was sent twice (the server DB's blacklist);
//! (f2) the same with the refresh margin disabled, so that the uploads in flight are
//!     refused (401) together at expiry: still one refresh per expiry, and only those
//!     uploads refused;
//! (g) the daemon at trace level through login failure, login, refreshes, revocation and
//!     uploads: no token and no password anywhere in its output.
//!
//! How often the gateway renews: with access lifetime L (an integer number of seconds
//! here, so that `exp - iat = L`) and the default margin m = clamp(L/4, 1 s, 60 s), it
//! renews L - m - 0.5 s after each token arrives (the clock offset is estimated from
//! `iat`, which has one-second resolution, centred with +0.5 s). For L = 3 s that is
//! every 1.5 s plus a round trip; a token always has at least m - 0.5 s = 0.5 s left
//! when it is replaced. The refresh-count bounds below are derived from that.
//!
//! Each test has its own server and gateway (ports, DBs, temporary directories): they
//! run in parallel. Run `scripts/setup-test-env.sh` first (scripts/test.sh does).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Access token lifetime of the test servers (the issue asks for 2-3 s).
const LIFETIME: Duration = Duration::from_secs(3);
/// Shortest possible time between two proactive refreshes with [`LIFETIME`] and the
/// default margin (1.5 s, see the module comment), with slack for a loaded machine.
const MIN_REFRESH_INTERVAL_S: f64 = 1.0;
/// SIGTERM must end the daemon within this (plus slack for a loaded machine).
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// One year, the skew of the clock tests, in seconds.
const YEAR_S: i64 = 365 * 86_400;

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

fn start_server() -> TestServer {
    TestServer::with_device(LIFETIME)
}

/// Gateway options: 100 ms sampling, prompt upload retries, `extra` appended (it must
/// start with a table header other than `[api]`; see [`set_api_keys`]).
fn options(extra: &str) -> GatewayOptions {
    GatewayOptions {
        extra_toml: format!("[upload]\nbackoff_max = \"1s\"\n{extra}"),
        ..Default::default()
    }
}

/// Adds keys to the generated `[api]` table (TOML forbids a second `[api]` header, so
/// they cannot go into `extra_toml`).
fn set_api_keys(gw: &Gateway, keys: &str) {
    let text = gw.default_config();
    assert!(
        text.contains("[api]\n"),
        "generated config has no [api] table"
    );
    gw.set_config(&text.replacen("[api]\n", &format!("[api]\n{keys}"), 1));
}

/// Replaces the password file atomically (write a 0600 file beside it, rename over it),
/// as an operator's editor or `install -m 600` would: the daemon, which re-reads the
/// file at every login attempt, never sees a missing or half-written file.
fn write_password_atomic(gw: &Gateway, password: &str) {
    let tmp = gw.dir().join("password.new");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .expect("cannot create the new password file");
    f.write_all(password.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all())
        .expect("cannot write the new password file");
    fs::rename(&tmp, gw.password_path()).expect("cannot replace the password file");
}

/// Server stats and gateway log tail, for assertion messages.
fn context(server: &TestServer, gw: &Gateway) -> String {
    format!(
        "server stats: {:?}\n--- gateway log (last 40 lines) ---\n{}\n--- end of gateway log ---",
        server.stats(),
        tail(&gw.log_text(), 40)
    )
}

/// `assert!` whose message carries the server stats and the gateway log tail.
macro_rules! check {
    ($cond:expr, $server:expr, $gw:expr, $($msg:tt)+) => {
        if !$cond {
            panic!("{}\n{}", format!($($msg)+), context($server, $gw));
        }
    };
}

/// Polls `cond` (given the gateway) until it holds; fails fast when the daemon exits,
/// and with the server stats and the log tail after `timeout`.
fn wait_for(
    server: &TestServer,
    gw: &mut Gateway,
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut(&Gateway) -> bool,
) {
    let ok = gw.poll_while_running(timeout, || cond(gw));
    check!(
        ok,
        server,
        gw,
        "timed out after {timeout:?}: waiting for {what}"
    );
}

/// Lets the daemon run for `d`, failing at once (with its log) if it exits.
fn run_for(gw: &mut Gateway, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        gw.assert_running();
        thread::sleep(POLL_INTERVAL.min(end.saturating_duration_since(Instant::now())));
    }
}

fn stop(server: &TestServer, gw: &mut Gateway, what: &str) {
    let exit = gw.sigterm(STOP_LIMIT);
    check!(
        exit.status.success(),
        server,
        gw,
        "{what}: gateway exited with {} after SIGTERM (want 0)",
        exit.status
    );
}

/// Stops the daemon (see [`stop`]) and returns the sampling run begun at `start_us`.
fn stop_run(server: &TestServer, gw: &mut Gateway, what: &str, start_us: i64) -> Run {
    stop(server, gw, what);
    Run {
        start_us,
        end_us: now_us(),
        sampling: true,
    }
}

/// A gateway sampling every 5 ms (to queue a backlog fast), `extra` as for [`options`].
fn fast_sampling_gateway(server: &TestServer, extra: &str) -> Gateway {
    Gateway::new(
        &server.base_url(),
        GatewayOptions {
            interval: Duration::from_millis(5),
            ..options(extra)
        },
    )
}

/// Runs the daemon (the server is down) until `backlog` readings are queued, then
/// stops it. Returns the run.
fn backlog_run(server: &TestServer, gw: &mut Gateway, backlog: u64) -> Run {
    let start_us = now_us();
    gw.spawn();
    wait_for(
        server,
        gw,
        &format!("a backlog of {backlog} readings (server down)"),
        Duration::from_secs(90),
        |gw| gw.queue_counts().pending >= backlog,
    );
    stop_run(server, gw, "backlog run", start_us)
}

/// Starts the daemon and waits up to `timeout` for its first login; returns when it
/// was seen.
fn spawn_until_login(server: &TestServer, gw: &mut Gateway, timeout: Duration) -> Instant {
    gw.spawn();
    gw.wait_until("the first login", timeout, || server.stats().login_ok >= 1);
    Instant::now()
}

/// Changes the sampling interval of the config from `from` to `to` (for the next
/// start); returns the new config.
fn resample(gw: &Gateway, from: &str, to: &str) -> String {
    let config = gw.config_text().replace(
        &format!("interval = \"{from}\""),
        &format!("interval = \"{to}\""),
    );
    gw.set_config(&config);
    config
}

/// Lets the daemon run until `end`, failing at once if it exits, calling `check` every
/// 500 ms (to fail fast on a storm).
fn watch_until(gw: &mut Gateway, end: Instant, mut check: impl FnMut(&Gateway)) {
    while Instant::now() < end {
        gw.assert_running();
        check(gw);
        thread::sleep(
            Duration::from_millis(500).min(end.saturating_duration_since(Instant::now())),
        );
    }
}

/// One login for the whole run, and no refresh refused (`why` says why not).
fn check_one_login_no_refused_refresh(server: &TestServer, gw: &Gateway, s: &Stats, why: &str) {
    check!(s.login_ok == 1, server, gw, "want exactly one login");
    check!(s.refresh_failed == 0, server, gw, "{why}");
}

/// What identifies a reading: its capture time (wire string) and values. Two readings
/// may share a millisecond when sampling every few ms; their simulated values (a random
/// walk) still differ.
type Key = (String, Option<u64>, Option<u64>, Option<u64>);

fn server_keys(server: &TestServer) -> Vec<Key> {
    server
        .readings()
        .into_iter()
        .map(|r| {
            (
                r.timestamp,
                r.temperature.map(f64::to_bits),
                r.humidite.map(f64::to_bits),
                r.accelerometre.map(f64::to_bits),
            )
        })
        .collect()
}

fn queued_keys(gw: &Gateway) -> Vec<Key> {
    gw.queued_readings()
        .iter()
        .map(|r| {
            let f = |k: &str| r.get(k).and_then(Value::as_f64).map(f64::to_bits);
            (
                r["timestamp"]
                    .as_str()
                    .expect("timestamp string")
                    .to_owned(),
                f("temperature"),
                f("humidite"),
                f("accelerometre"),
            )
        })
        .collect()
}

/// Runs the daemon once more with a one-hour sampling interval until every reading
/// still queued has reached the server, then stops it. Returns the drain run, if one
/// was needed.
fn drain(server: &TestServer, gw: &mut Gateway) -> Option<Run> {
    let queued = queued_keys(gw);
    if queued.is_empty() {
        return None;
    }
    let before = server.stats().data_ok;
    let config = gw.config_text();
    let drain_config: String = config
        .lines()
        .map(|l| {
            if l.starts_with("interval = ") {
                "interval = \"1h\"".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(drain_config, config, "no sampling interval in the config");
    gw.set_config(&drain_config);
    let start_us = now_us();
    gw.spawn();
    gw.wait_until(
        &format!("the {} queued readings to drain", queued.len()),
        Duration::from_secs(120),
        || {
            server.stats().data_ok >= before + queued.len() as u64 && {
                let on_server: HashSet<Key> = server_keys(server).into_iter().collect();
                queued.iter().all(|k| on_server.contains(k))
            }
        },
    );
    stop(server, gw, "drain run");
    gw.set_config(&config);
    Some(Run {
        start_us,
        end_us: now_us(),
        sampling: false,
    })
}

/// Nothing lost, nothing twice: every reading the (stopped) gateway produced is on the
/// server exactly once or still pending, nothing dead or dropped, and the capture times
/// of each sampling run leave no hole. Returns the number of readings on the server.
fn check_delivery(server: &TestServer, gw: &Gateway, runs: &[Run]) -> usize {
    let counts = gw.queue_counts();
    let readings = server_keys(server);
    let queued = queued_keys(gw);
    check!(
        counts.dead == 0 && counts.dropped_total == 0,
        server,
        gw,
        "readings dead-lettered or dropped: {counts:?}"
    );
    check!(
        readings.len() as u64 == counts.uploaded_total,
        server,
        gw,
        "the server stored {} readings but the gateway counts {} uploaded",
        readings.len(),
        counts.uploaded_total
    );
    let mut seen = HashSet::new();
    let dups: Vec<&str> = readings
        .iter()
        .filter(|k| !seen.insert(*k))
        .map(|k| k.0.as_str())
        .collect();
    check!(
        dups.is_empty(),
        server,
        gw,
        "{} readings stored twice (e.g. {:?})",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
    for k in &queued {
        check!(
            !seen.contains(k),
            server,
            gw,
            "reading {k:?} is on the server and still pending"
        );
    }
    let mut all: Vec<i64> = readings
        .iter()
        .chain(queued.iter())
        .map(|k| parse_us(&k.0))
        .collect();
    all.sort_unstable();
    let problem = capture_time_problem(&all, runs, Edges::Checked);
    check!(
        problem.is_none(),
        server,
        gw,
        "{}",
        problem.unwrap_or_default()
    );
    readings.len()
}

/// Proactive refreshes over `elapsed` of a logged-in gateway: about one every 1.5 s
/// (see the module comment). A storm would be hundreds; a gateway that misjudges expiry
/// by a year would refresh never (tokens look eternal) or continuously (tokens look
/// dead). Asserts `elapsed / 3 s - 2 <= refresh_ok <= elapsed / 1 s + 2`.
fn check_refresh_cadence(server: &TestServer, gw: &Gateway, elapsed: Duration) {
    let s = server.stats();
    let secs = elapsed.as_secs_f64();
    let lower = (secs / LIFETIME.as_secs_f64() - 2.0).max(1.0);
    let upper = secs / MIN_REFRESH_INTERVAL_S + 2.0;
    check!(
        (s.refresh_ok as f64) >= lower && (s.refresh_ok as f64) <= upper,
        server,
        gw,
        "{} refreshes in {secs:.1} s of a logged-in gateway with {LIFETIME:?} access \
         tokens: want {lower:.0}..={upper:.0} (about one per 1.5 s)",
        s.refresh_ok
    );
}

/// The seconds (gunicorn's `%(t)s`, one-second resolution) at which the server
/// answered `POST /api/token/refresh/`, with how many refreshes it answered in each.
fn refreshes_per_second(server: &TestServer) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for line in server.log_text().lines() {
        if !line.contains("\"POST /api/token/refresh/ ") {
            continue;
        }
        if let (Some(a), Some(b)) = (line.find('['), line.find(']')) {
            *out.entry(line[a + 1..b].to_owned()).or_insert(0) += 1;
        }
    }
    out
}

/// `offset_secs=N` of the gateway's "device clock differs from the server's" line.
fn logged_offsets(log: &str) -> Vec<i64> {
    log.lines()
        .filter(|l| l.contains("device clock differs"))
        .filter_map(|l| {
            let rest = &l[l.find("offset_secs=")? + "offset_secs=".len()..];
            let n: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '-')
                .collect();
            n.parse().ok()
        })
        .collect()
}

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// Every JWT-shaped substring of `text`: `eyJ` + base64url + `.` + base64url + `.`
/// (the header of any JSON JWT starts with `eyJ`, base64 of `{"`).
fn jwt_like(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = text[from..].find("eyJ") {
        let start = from + pos;
        let mut i = start;
        let mut dots = 0;
        let mut seg_len = 0;
        while i < b.len() && dots < 2 {
            if is_b64url(b[i]) {
                seg_len += 1;
            } else if b[i] == b'.' && seg_len > 0 {
                dots += 1;
                seg_len = 0;
            } else {
                break;
            }
            i += 1;
        }
        if dots == 2 {
            while i < b.len() && is_b64url(b[i]) {
                i += 1;
            }
            out.push(text[start..i].to_owned());
        }
        from = start + 3;
    }
    out
}

/// The server's DB, read-only, waiting for the server's writes.
fn server_db(server: &TestServer) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open_with_flags(
        server.db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("cannot open the server DB");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy_timeout");
    conn
}

/// Every refresh token the server issued (SimpleJWT's outstanding-token table keeps the
/// full token). Access tokens are not stored; the JWT-shape scan covers them.
fn issued_refresh_tokens(server: &TestServer) -> Vec<String> {
    let conn = server_db(server);
    let mut stmt = conn
        .prepare("SELECT token FROM token_blacklist_outstandingtoken")
        .expect("no outstanding-token table in the server DB");
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .expect("query outstanding tokens");
    rows.map(|r| r.expect("token row")).collect()
}

/// The gateway's own count of successful refreshes: the `refreshes=N` of its last
/// "access token refreshed" line (the token manager's counter, logged at debug level
/// with every refresh), or 0.
fn gateway_refreshes(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("access token refreshed"))
        .filter_map(|l| {
            let rest = &l[l.find("refreshes=")? + "refreshes=".len()..];
            let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
            n.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// (refresh tokens issued, refresh tokens blacklisted) in the server's DB. With rotation
/// and blacklist-after-rotation, every successful refresh blacklists the token it was
/// sent with (`get_or_create`: a token sent twice leaves ONE row) and issues one.
fn refresh_token_rows(server: &TestServer) -> (u64, u64) {
    let conn = server_db(server);
    let count = |table: &str| -> u64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap_or_else(|e| panic!("cannot count {table}: {e}")) as u64
    };
    (
        count("token_blacklist_outstandingtoken"),
        count("token_blacklist_blacklistedtoken"),
    )
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

#[test]
fn a_short_access_tokens_for_a_minute_no_401_one_login() {
    let server = start_server();
    let mut gw = Gateway::new(&server.base_url(), options(""));
    let logged_in = spawn_until_login(&server, &mut gw, Duration::from_secs(20));
    let run = Duration::from_secs(60);
    // Fail fast on the first 401 rather than after a minute.
    watch_until(&mut gw, logged_in + run, |gw| {
        let s = server.stats();
        check!(
            s.data_401 == 0 && s.refresh_failed == 0 && s.login_ok == 1,
            &server,
            gw,
            "after {:.1} s: a 401 on /api/send/data/, a failed refresh or a second login",
            logged_in.elapsed().as_secs_f64()
        );
    });
    let elapsed = logged_in.elapsed();
    stop(&server, &mut gw, "a minute of uploads");

    let s = server.stats();
    eprintln!("a: {elapsed:?} of uploads with {LIFETIME:?} access tokens: {s:?}");
    check_one_login_no_refused_refresh(&server, &gw, &s, "want every refresh to succeed");
    check!(s.login_failed == 0, &server, &gw, "want no failed login");
    check!(
        s.data_401 == 0,
        &server,
        &gw,
        "want no 401 on /api/send/data/: the token must be renewed before it expires"
    );
    check_refresh_cadence(&server, &gw, elapsed);
    // Uploads flowed all along: ~10 readings a second.
    let min_ok = (elapsed.as_secs_f64() * 10.0 * 0.7) as u64;
    check!(
        s.data_ok >= min_ok,
        &server,
        &gw,
        "only {} readings uploaded in {elapsed:?} (want >= {min_ok})",
        s.data_ok
    );
    let readings = server_keys(&server);
    let unique: HashSet<&Key> = readings.iter().collect();
    check!(
        unique.len() == readings.len(),
        &server,
        &gw,
        "{} readings stored twice",
        readings.len() - unique.len()
    );
}

#[test]
fn b_all_refresh_tokens_blacklisted_mid_run_logs_in_again_nothing_lost() {
    let server = start_server();
    let mut gw = Gateway::new(&server.base_url(), options(""));
    let start_us = now_us();
    gw.spawn();
    gw.wait_until(
        "2 refreshes and 20 uploads",
        Duration::from_secs(30),
        || {
            let s = server.stats();
            s.refresh_ok >= 2 && s.data_ok >= 20
        },
    );
    let revoked = server.blacklist_all();
    check!(
        revoked >= 1,
        &server,
        &gw,
        "blacklist_all found no outstanding refresh token"
    );
    let at_revocation = server.stats();
    gw.wait_until("a second login", Duration::from_secs(20), || {
        server.stats().login_ok >= 2
    });
    // Uploads and refreshes go on with the new session.
    let relogin = server.stats();
    gw.wait_until(
        "2 refreshes and 20 uploads after the new login",
        Duration::from_secs(30),
        || {
            let s = server.stats();
            s.refresh_ok >= relogin.refresh_ok + 2 && s.data_ok >= relogin.data_ok + 20
        },
    );
    let run = stop_run(&server, &mut gw, "run with a revocation", start_us);

    let s = server.stats();
    eprintln!(
        "b: revoked {revoked} refresh tokens; at revocation {at_revocation:?}; at the end {s:?}"
    );
    check!(
        s.login_ok == 2,
        &server,
        &gw,
        "want exactly one new login after the revocation"
    );
    check!(
        s.refresh_failed == 1,
        &server,
        &gw,
        "want exactly one refused refresh (the revoked token, sent once, then a login)"
    );
    check!(s.login_failed == 0, &server, &gw, "want no failed login");
    check!(
        s.data_401 == 0,
        &server,
        &gw,
        "want no 401 on /api/send/data/ (revoking refresh tokens leaves the access token valid)"
    );
    let drain_run = drain(&server, &mut gw);
    let pending = gw.queue_counts().pending;
    check!(
        pending == 0,
        &server,
        &gw,
        "{pending} readings still pending after the drain"
    );
    let runs: Vec<Run> = std::iter::once(run).chain(drain_run).collect();
    let n = check_delivery(&server, &gw, &runs);
    eprintln!("b: {n} readings delivered exactly once");
}

#[test]
fn c_wrong_password_for_30s_then_fixed_recovers_without_restart() {
    let server = start_server();
    let mut gw = Gateway::new(
        &server.base_url(),
        GatewayOptions {
            password: "not-the-password-7Qx".to_owned(),
            ..options("")
        },
    );
    // Default login_backoff_base (5 s), cap 10 s, equal jitter: the waits are 2.5-5 s,
    // then 5-10 s, so at most 6 attempts fit in 30 s (7 only if every jittered wait were
    // within ~0.3 s of its minimum).
    set_api_keys(&gw, "login_backoff_max = \"10s\"\n");
    let start_us = now_us();
    let started = Instant::now();
    gw.spawn();
    gw.wait_until("the first refused login", Duration::from_secs(20), || {
        server.stats().login_failed >= 1
    });
    let wrong_for = Duration::from_secs(30);
    run_for(&mut gw, wrong_for.saturating_sub(started.elapsed()));
    let during = server.stats();
    let pending_during = gw.queue_counts().pending;
    write_password_atomic(&gw, DEFAULT_PASSWORD);
    let fixed_at = Instant::now();
    gw.wait_until(
        "a login with the corrected password (no restart)",
        Duration::from_secs(20),
        || server.stats().login_ok >= 1,
    );
    let recovery = fixed_at.elapsed();
    // The readings of the 30 s (sampling went on) are uploaded, then new ones.
    gw.wait_until(
        "the backlog of the wrong-password period to be uploaded",
        Duration::from_secs(30),
        || server.stats().data_ok >= pending_during + 20,
    );
    let run = stop_run(&server, &mut gw, "run with a wrong password", start_us);

    let s = server.stats();
    eprintln!(
        "c: during the {wrong_for:?} of wrong password: {during:?}, {pending_during} readings \
         queued; recovered {recovery:?} after the fix; at the end {s:?}"
    );
    check!(
        during.login_failed >= 2 && during.login_failed <= 6,
        &server,
        &gw,
        "{} failed logins in {wrong_for:?} with login_backoff_max = 10s: want 2..=6 (backing \
         off, but still retrying)",
        during.login_failed
    );
    check!(
        during.login_ok == 0 && during.data_ok == 0,
        &server,
        &gw,
        "nothing may succeed with the wrong password"
    );
    check!(
        pending_during >= 200,
        &server,
        &gw,
        "only {pending_during} readings queued during {wrong_for:?}: sampling must go on"
    );
    check!(
        s.login_failed == during.login_failed || s.login_failed == during.login_failed + 1,
        &server,
        &gw,
        "failed logins after the fix: {} -> {} (at most one attempt may have raced the fix)",
        during.login_failed,
        s.login_failed
    );
    check!(
        s.login_ok == 1,
        &server,
        &gw,
        "want exactly one successful login"
    );
    check!(
        s.data_401 == 0 && s.refresh_failed == 0,
        &server,
        &gw,
        "no 401 and no failed refresh after recovery"
    );
    // Told once, not at every attempt (later attempts log at debug level only).
    let log = gw.log_text();
    let told: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("login refused") && !l.contains("DEBUG") && !l.contains("TRACE"))
        .collect();
    check!(
        told.len() == 1,
        &server,
        &gw,
        "the refused login must be logged once above debug level, not at every attempt \
         ({} failed logins): found {} lines:\n{}",
        during.login_failed,
        told.len(),
        told.join("\n")
    );
    check!(
        told[0].contains("WARN") && told[0].contains(DEFAULT_USERNAME),
        &server,
        &gw,
        "the refused login should be a warning naming the user: {}",
        told[0]
    );
    check!(
        log.contains("logged in: recovered"),
        &server,
        &gw,
        "the recovery should be logged"
    );
    let drain_run = drain(&server, &mut gw);
    let runs: Vec<Run> = std::iter::once(run).chain(drain_run).collect();
    let n = check_delivery(&server, &gw, &runs);
    eprintln!("c: {n} readings delivered exactly once");
}

/// A gateway whose clock is `skew_s` seconds off for `run` of uploads.
fn clock_skew_run(skew_env: &str, skew_s: i64, run: Duration) {
    let server = start_server();
    let mut gw = Gateway::new(
        &server.base_url(),
        GatewayOptions {
            env: vec![("PROFILO_GATEWAY_CLOCK_SKEW".to_owned(), skew_env.to_owned())],
            ..options("")
        },
    );
    let logged_in = spawn_until_login(&server, &mut gw, Duration::from_secs(20));
    watch_until(&mut gw, logged_in + run, |gw| {
        let s = server.stats();
        check!(
            s.data_401 <= 2 && s.refresh_ok <= 100,
            &server,
            gw,
            "a 401 or refresh storm with the clock {skew_env} off"
        );
    });
    let elapsed = logged_in.elapsed();
    stop(&server, &mut gw, "skewed clock");
    let s = server.stats();
    eprintln!("clock {skew_env}: {elapsed:?} logged in: {s:?}");
    check_one_login_no_refused_refresh(&server, &gw, &s, "want every refresh to succeed");
    check!(
        s.data_401 == 0,
        &server,
        &gw,
        "want no 401: expiry must be judged in server time"
    );
    check_refresh_cadence(&server, &gw, elapsed);
    check!(s.data_ok >= 50, &server, &gw, "uploads must flow");
    // The measured offset (server minus device) is the opposite of the skew.
    let offsets = logged_offsets(&gw.log_text());
    check!(
        offsets.iter().any(|o| (o + skew_s).abs() <= 5),
        &server,
        &gw,
        "want a logged clock offset of about {} s, found {offsets:?}",
        -skew_s
    );
}

#[test]
fn d_device_clock_one_year_ahead_no_refresh_or_401_storm() {
    clock_skew_run("+365d", YEAR_S, Duration::from_secs(20));
}

#[test]
fn e_device_clock_one_year_behind_no_refresh_or_401_storm() {
    // A clock a year behind is before this build's date: the daemon holds the readings
    // it captures until the clock is set (their timestamps are wrong). To still upload
    // with the clock a year behind, the first run (clock right, server down) queues a
    // backlog, and the second run (clock a year behind) drains it.
    let mut server = start_server();
    server.stop();
    // One upload at a time: the drain lasts several token lifetimes.
    let mut gw = fast_sampling_gateway(&server, "concurrency = 1\nbatch_size = 16\n");
    backlog_run(&server, &mut gw, 1500);
    let backlog = queued_keys(&gw);
    server.restart();

    // Same gateway (queue, password), sampling back to 100 ms, clock a year behind.
    resample(&gw, "5ms", "100ms");
    gw.set_env(vec![(
        "PROFILO_GATEWAY_CLOCK_SKEW".to_owned(),
        "-365d".to_owned(),
    )]);
    let logged_in = spawn_until_login(&server, &mut gw, Duration::from_secs(20));
    wait_for(
        &server,
        &mut gw,
        "the backlog to be uploaded with the clock a year behind",
        Duration::from_secs(180),
        |gw| {
            let s = server.stats();
            // A storm is many refreshes a second; a slow drain on a loaded machine is
            // one per token lifetime for as long as it lasts: bound by the time taken.
            let lifetimes = logged_in.elapsed().as_secs_f64() / LIFETIME.as_secs_f64();
            check!(
                s.data_401 <= 2 && (s.refresh_ok as f64) <= 2.0 * lifetimes + 10.0,
                &server,
                gw,
                "a 401 or refresh storm with the clock a year behind"
            );
            s.data_ok >= backlog.len() as u64
        },
    );
    let drained_in = logged_in.elapsed();
    check!(
        drained_in > LIFETIME * 2,
        &server,
        &gw,
        "the backlog drained in {drained_in:?}, within two token lifetimes: the test \
         proves little; make it bigger"
    );
    run_for(&mut gw, Duration::from_secs(15).saturating_sub(drained_in));
    let elapsed = logged_in.elapsed();
    stop(&server, &mut gw, "clock a year behind");
    let s = server.stats();
    eprintln!(
        "e: clock -365d: {} backlog readings drained in {drained_in:?}; {elapsed:?} logged in: {s:?}",
        backlog.len()
    );
    check_one_login_no_refused_refresh(&server, &gw, &s, "want every refresh to succeed");
    // A gateway that took expired tokens for valid ones would be refused at every
    // expiry (one every 3 s, 5 or more in the 15 s run). One or two are a loaded
    // machine's latency: an upload sent with a second of token life left that reaches
    // the server after the expiry (zero would be a timed assertion).
    check!(
        s.data_401 <= 2,
        &server,
        &gw,
        "{} uploads refused with 401: a clock a year behind must not make expired tokens \
         look valid",
        s.data_401
    );
    check_refresh_cadence(&server, &gw, elapsed);
    let on_server = server_keys(&server);
    let unique: HashSet<&Key> = on_server.iter().collect();
    check!(
        unique.len() == on_server.len(),
        &server,
        &gw,
        "readings stored twice"
    );
    let missing = backlog.iter().filter(|t| !unique.contains(t)).count();
    check!(
        missing == 0,
        &server,
        &gw,
        "{missing} of the {} backlog readings did not arrive",
        backlog.len()
    );
    let offsets = logged_offsets(&gw.log_text());
    check!(
        offsets.iter().any(|o| (o - YEAR_S).abs() <= 5),
        &server,
        &gw,
        "want a logged clock offset of about +{YEAR_S} s, found {offsets:?}"
    );
}

#[test]
fn f_sixteen_concurrent_uploads_across_expiries_one_refresh_each() {
    // 6 s tokens, not 3 s: renewed 4 s after arrival, each leaves 2 s of slack, so the
    // second-long answers of a loaded machine neither outlive a token nor put two
    // refreshes into one second of the server's log.
    let lifetime = Duration::from_secs(6);
    let mut server = TestServer::start(ServerOptions {
        access_lifetime: lifetime,
        ..Default::default()
    });
    server.create_user(DEFAULT_USERNAME, DEFAULT_PASSWORD);
    server.stop();
    let mut gw = fast_sampling_gateway(&server, "concurrency = 16\n");
    set_api_keys(
        &gw,
        "login_backoff_base = \"500ms\"\nlogin_backoff_max = \"1s\"\n",
    );
    let backlog = 3000;
    backlog_run(&server, &mut gw, backlog);
    // The drain runs with sampling slowed to a reading a second: sampling 100/s while
    // draining raced a one-worker test server on a loaded 2-core machine, and the
    // backlog hardly shrank.
    let config = resample(&gw, "5ms", "1s");
    assert!(config.contains("interval = \"1s\""), "no sampling interval");
    server.restart();
    let restarted = Instant::now();
    let logged_in = spawn_until_login(&server, &mut gw, Duration::from_secs(30));
    wait_for(
        &server,
        &mut gw,
        "the backlog to drain",
        Duration::from_secs(300),
        |gw| gw.queue_counts().pending <= 20,
    );
    let drained_in = logged_in.elapsed();
    // Every refresh request the server logged is one the gateway counted as a success:
    // none sent twice, none lost. Compared while the daemon runs, at a moment when no
    // refresh is in flight (they are 4 s apart and take milliseconds), so that a
    // refresh cut by SIGTERM cannot make the counts differ.
    let mut counts = (0, 0);
    let equal = poll_until(Duration::from_secs(60), || {
        gw.assert_running();
        let on_server: u64 = refreshes_per_second(&server)
            .values()
            .map(|&n| u64::from(n))
            .sum();
        counts = (on_server, gateway_refreshes(&gw.log_text()));
        counts.0 > 0 && counts.0 == counts.1
    });
    check!(
        equal,
        &server,
        &gw,
        "the server logged {} refresh requests, the gateway counted {} refreshes: want the \
         same non-zero number",
        counts.0,
        counts.1
    );
    let elapsed = logged_in.elapsed();
    stop(&server, &mut gw, "drain with 16 uploads in flight");
    let s = server.stats();
    let per_second = refreshes_per_second(&server);
    eprintln!(
        "f: login {:?} after the restart; {} readings drained in {drained_in:?} \
         ({elapsed:?} logged in); {s:?}; refreshes per second: {per_second:?}",
        logged_in - restarted,
        s.data_ok
    );
    check!(
        drained_in > lifetime,
        &server,
        &gw,
        "the drain took {drained_in:?}, less than one token lifetime: the test proves nothing; \
         make the backlog bigger"
    );
    check_one_login_no_refused_refresh(
        &server,
        &gw,
        &s,
        "want no refused refresh: a refresh token sent twice (racing refreshes) is refused",
    );
    // Proactive renewal replaces a token with about a second of life left; on a loaded
    // machine an upload sent in that second can reach the one-worker server after the
    // expiry and be refused. Zero 401s would be a timed assertion, so a few are allowed,
    // not a storm: under one upload in 20 (renewing only on 401 loses every upload in
    // flight at every expiry), and none caused a refresh of its own (one refresh per
    // expiry, below).
    check!(
        s.data_401 * 20 <= s.data_ok,
        &server,
        &gw,
        "{} uploads refused with 401 for {} accepted while uploads cross token expiries: \
         the token is not renewed before it expires",
        s.data_401,
        s.data_ok
    );
    // One refresh per expiry: the gateway renews at most once per 4 s, so the server
    // never answers two refreshes in the same second, and the count matches the
    // number of tokens the drain outlived.
    let doubled: Vec<_> = per_second.iter().filter(|(_, &n)| n > 1).collect();
    check!(
        doubled.is_empty(),
        &server,
        &gw,
        "several refreshes within one second (racing refreshes): {doubled:?}"
    );
    // About one refresh per 4 s (6 s - margin 1.5 s - 0.5 s) plus a round trip.
    let secs = elapsed.as_secs_f64();
    let (lower, upper) = ((secs / 6.0 - 2.0).max(1.0), secs / 2.0 + 2.0);
    check!(
        (lower..=upper).contains(&(s.refresh_ok as f64)),
        &server,
        &gw,
        "{} refreshes in {secs:.1} s with {lifetime:?} access tokens: want \
         {lower:.0}..={upper:.0} (about one per 4 s)",
        s.refresh_ok
    );
    check!(
        s.data_ok >= backlog,
        &server,
        &gw,
        "only {} of the {backlog} readings uploaded",
        s.data_ok
    );
    // No two refreshes used the same refresh token: each blacklisted a distinct one, and
    // every token issued (one per login and per refresh) was spent but the last.
    let (issued, blacklisted) = refresh_token_rows(&server);
    check!(
        blacklisted == s.refresh_ok
            && issued == s.login_ok + s.refresh_ok
            && issued == blacklisted + 1,
        &server,
        &gw,
        "{issued} refresh tokens issued and {blacklisted} blacklisted for {} logins and {} \
         refreshes: a refresh token was sent twice (or one was lost)",
        s.login_ok,
        s.refresh_ok
    );
}

#[test]
fn f2_sixteen_uploads_refused_at_expiry_one_refresh_each() {
    // The reactive path: with `refresh_margin = "1ms"` the gateway renews only when the
    // token has expired by its estimate of the server clock (which may be up to 0.5 s
    // late), so uploads in flight at expiry are answered 401 together. Each must cause
    // no refresh of its own: one refresh per expiry, one retry per refused upload, and
    // only the uploads already in flight with the dead token may be refused.
    let concurrency = 16;
    let mut server = start_server();
    server.stop();
    // Run 1, server down: a backlog, sampled every 5 ms. Large batches: a batch
    // outlives its token, and a send that followed the batch's token rather than the
    // current one would be refused.
    let mut gw = fast_sampling_gateway(
        &server,
        &format!("concurrency = {concurrency}\nbatch_size = 256\n"),
    );
    set_api_keys(
        &gw,
        "refresh_margin = \"1ms\"\nlogin_backoff_base = \"500ms\"\nlogin_backoff_max = \"1s\"\n",
    );
    let backlog = 1500;
    let run1 = backlog_run(&server, &mut gw, backlog);
    // Run 2, server up, sampling every 100 ms: the backlog drains across expiries.
    resample(&gw, "5ms", "100ms");
    server.restart();
    let start_us = now_us();
    let logged_in = spawn_until_login(&server, &mut gw, Duration::from_secs(30));
    // Half the expiries are judged late (by up to 0.5 s) and refuse uploads: go on until
    // one did, so the test always exercises the path.
    wait_for(
        &server,
        &mut gw,
        "the backlog to drain and an upload to be refused at an expiry",
        Duration::from_secs(180),
        |gw| server.stats().data_401 >= 1 && gw.queue_counts().pending <= 20,
    );
    let elapsed = logged_in.elapsed();
    let run = stop_run(
        &server,
        &mut gw,
        "drain with uploads refused at expiry",
        start_us,
    );
    let s = server.stats();
    let per_second = refreshes_per_second(&server);
    eprintln!("f2: {elapsed:?} logged in; {s:?}; refreshes per second: {per_second:?}");
    check_one_login_no_refused_refresh(
        &server,
        &gw,
        &s,
        "want no refused refresh: a refresh token sent twice (racing refreshes) is refused",
    );
    let doubled: Vec<_> = per_second.iter().filter(|(_, &n)| n > 1).collect();
    check!(
        doubled.is_empty(),
        &server,
        &gw,
        "several refreshes within one second (one per refused upload?): {doubled:?}"
    );
    // Renewal every L - 0.5 s = 2.5 s or so.
    let upper = (elapsed.as_secs_f64() / 2.0 + 2.0) as u64;
    check!(
        s.refresh_ok <= upper,
        &server,
        &gw,
        "{} refreshes in {elapsed:?}: want at most {upper} (one per expiry)",
        s.refresh_ok
    );
    // Every token that dies in use is replaced by one refresh, and the uploads refused
    // with it are at most those in flight (their slots wait for the renewal).
    let max_401 = concurrency * s.refresh_ok;
    check!(
        s.data_401 <= max_401,
        &server,
        &gw,
        "{} uploads refused with 401 over {} expiries: want at most {max_401} (only the \
         {concurrency} in flight when a token dies; later ones must use the new token)",
        s.data_401,
        s.refresh_ok
    );
    check_delivery(&server, &gw, &[run1, run]);
}

#[test]
fn g_trace_level_output_holds_no_token_and_no_password() {
    let server = start_server();
    let wrong = "wrong-Pa55word-for-trace";
    let mut gw = Gateway::new(
        &server.base_url(),
        GatewayOptions {
            password: wrong.to_owned(),
            rust_log: "trace".to_owned(),
            ..options("")
        },
    );
    set_api_keys(
        &gw,
        "login_backoff_base = \"500ms\"\nlogin_backoff_max = \"1s\"\n",
    );
    gw.spawn();
    // Through a refused login, ...
    gw.wait_until("a refused login", Duration::from_secs(20), || {
        server.stats().login_failed >= 1
    });
    write_password_atomic(&gw, DEFAULT_PASSWORD);
    // ... a login, refreshes and uploads, ...
    gw.wait_until(
        "a login, 2 refreshes and 20 uploads",
        Duration::from_secs(30),
        || {
            let s = server.stats();
            s.login_ok >= 1 && s.refresh_ok >= 2 && s.data_ok >= 20
        },
    );
    // ... a revocation (refused refresh, new login) and more refreshes.
    server.blacklist_all();
    let before = server.stats();
    gw.wait_until(
        "a new login and 2 refreshes after it",
        Duration::from_secs(30),
        || {
            let s = server.stats();
            s.login_ok >= 2 && s.refresh_ok >= before.refresh_ok + 2
        },
    );
    // The CLI too: `login` prints the profile and expiry times, not the tokens.
    let (status, cli_out, cli_err) = gw.cli(&["login"]);
    check!(
        status.success(),
        &server,
        &gw,
        "`login` failed: {status}\n{cli_out}\n{cli_err}"
    );
    let (status, json_out, json_err) = gw.cli(&["login", "--json"]);
    check!(
        status.success(),
        &server,
        &gw,
        "`login --json` failed: {status}\n{json_out}\n{json_err}"
    );
    // What `login` promises: the server's profile of the user, both expiry times and the
    // measured clock offset (this run has no injected skew: a few seconds at most).
    let login: Value = serde_json::from_str(json_out.trim()).unwrap_or(Value::Null);
    let session = &login["session"];
    let is_time = |v: &Value| {
        v.as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() >= 20)
    };
    check!(
        login["profile"]["username"].as_str().is_some()
            && is_time(&session["access_expires_at"])
            && is_time(&session["refresh_expires_at"])
            && session["clock_offset_secs"]
                .as_f64()
                .is_some_and(|o| o.abs() < 5.0),
        &server,
        &gw,
        "`login --json` lacks the profile, an expiry or the clock offset: {json_out}"
    );
    check!(
        [
            "profile:",
            "access token expires:",
            "refresh token expires:",
            "clock offset"
        ]
        .iter()
        .all(|line| cli_out.contains(line)),
        &server,
        &gw,
        "`login` output lacks a line: {cli_out}"
    );
    stop(&server, &mut gw, "trace run");

    let log = gw.log_text();
    let output = format!("{log}\n{cli_out}\n{cli_err}\n{json_out}\n{json_err}");
    let s = server.stats();
    let tokens = issued_refresh_tokens(&server);
    eprintln!(
        "g: {} bytes of trace output ({} lines), {} TRACE lines; {} refresh tokens issued; {s:?}",
        output.len(),
        output.lines().count(),
        log.lines().filter(|l| l.contains("TRACE")).count(),
        tokens.len()
    );
    check!(
        log.lines().any(|l| l.contains("DEBUG")),
        &server,
        &gw,
        "RUST_LOG=trace did not take effect (no DEBUG line)"
    );
    // The dependencies' `log` records are checked too (the tracing-log bridge): reqwest
    // logs every new connection. Without the bridge they never reach the output, and
    // the checks below would miss whatever the HTTP stack says.
    check!(
        log.lines()
            .any(|l| l.contains("reqwest::connect") && l.contains("starting new connection")),
        &server,
        &gw,
        "no `log` record of reqwest in the trace output: the log bridge is missing"
    );
    check!(
        tokens.len() >= 4,
        &server,
        &gw,
        "the server issued only {} refresh tokens",
        tokens.len()
    );
    let leaked_jwts = jwt_like(&output);
    check!(
        leaked_jwts.is_empty(),
        &server,
        &gw,
        "{} JWT-shaped strings in the output, e.g. {}...",
        leaked_jwts.len(),
        &leaked_jwts[0][..leaked_jwts[0].len().min(24)]
    );
    for t in &tokens {
        // Any piece of it: the whole token, or its payload or signature alone.
        for (i, part) in t.split('.').enumerate().skip(1) {
            check!(
                !output.contains(part),
                &server,
                &gw,
                "part {i} of an issued refresh token appears in the output"
            );
        }
    }
    for (what, secret) in [("password", DEFAULT_PASSWORD), ("wrong password", wrong)] {
        check!(
            !output.contains(secret),
            &server,
            &gw,
            "the {what} appears in the output"
        );
    }
    // Escaped forms of the password (JSON \u escape, or bytes debug-printed).
    check!(
        !output.contains("device-secret"),
        &server,
        &gw,
        "the password (or a prefix of it) appears in the output"
    );
    check!(
        !output.contains("Bearer "),
        &server,
        &gw,
        "an Authorization header appears in the output"
    );
}
