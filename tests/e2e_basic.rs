//! End-to-end tests of the gateway's basic contract, against the real Django +
//! SimpleJWT test server (rotation + blacklist on, access tokens living 2 s so that
//! refreshes happen during every test):
//!
//! (a) readings arrive with their capture times, none lost, none duplicated, and
//!     SIGTERM stops the daemon with status 0 within 5 s;
//! (b) access tokens are refreshed with rotation, on one login;
//! (c) a 10 s server outage loses and duplicates nothing, and the readings captured
//!     during it keep their capture times;
//! (d) a gateway stopped while the server is down delivers its queue on its next run.
//!
//! Each test has its own server (port, DB) and gateway (config, queue): they run in
//! parallel. Run `scripts/setup-test-env.sh` first (scripts/test.sh does).

mod common;

use std::collections::{BTreeSet, HashSet};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Access token lifetime of the test servers: several refreshes per test.
const ACCESS_LIFETIME: Duration = Duration::from_secs(2);
/// Sampling interval of the gateways.
const INTERVAL: Duration = Duration::from_millis(100);
/// SIGTERM must end the daemon within this (systemd's TimeoutStopSec is larger).
const STOP_LIMIT: Duration = Duration::from_secs(5);
fn start_server() -> TestServer {
    TestServer::with_device(ACCESS_LIFETIME)
}

fn gateway_options() -> GatewayOptions {
    GatewayOptions {
        interval: INTERVAL,
        // Keep retries after an outage prompt, so that the tests stay short.
        extra_toml: "[upload]\nbackoff_max = \"2s\"\n".to_owned(),
        ..Default::default()
    }
}

fn assert_clean_exit(exit: Exit, gw: &Gateway, context: &str) {
    eprintln!(
        "{context}: gateway exited with {} {:?} after SIGTERM",
        exit.status, exit.elapsed
    );
    assert!(
        exit.status.success(),
        "{context}: gateway exited with {} after SIGTERM (want 0)\n--- gateway log ---\n{}",
        exit.status,
        tail(&gw.log_text(), 40)
    );
    assert!(
        exit.elapsed < STOP_LIMIT,
        "{context}: gateway took {:?} to stop after SIGTERM (limit {STOP_LIMIT:?})",
        exit.elapsed
    );
}

/// `2026-11-23T22:48:49.123Z`: RFC 3339, UTC, millisecond (or finer) precision.
fn assert_wire_timestamp(ts: &str) {
    let b = ts.as_bytes();
    let shape_ok = b.len() >= 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && ts.ends_with('Z')
        && (3..=9).contains(&(b.len() - 21))
        && b[20..b.len() - 1].iter().all(u8::is_ascii_digit);
    assert!(
        shape_ok,
        "timestamp {ts:?} is not RFC 3339 UTC with millisecond precision \
         (like 2026-11-23T22:48:49.123Z)"
    );
}

/// What a stopped gateway and its server must agree on: every reading produced is
/// either on the server exactly once or still pending in the queue, with its capture
/// time, and the capture times of each run leave no hole. Returns the server readings.
fn check_delivery(server: &TestServer, gw: &Gateway, runs: &[Run]) -> Vec<Reading> {
    let counts = gw.queue_counts();
    let readings = server.readings();
    let queued = gw.queued_timestamps();
    eprintln!(
        "delivery check: {} readings on the server, {} pending; gateway {counts:?}; \
         server {:?}",
        readings.len(),
        queued.len(),
        server.stats()
    );

    counts.assert_none_dead_or_dropped();
    assert_eq!(
        readings.len() as u64,
        counts.uploaded_total,
        "the server stored {} readings but the gateway counts {} uploaded",
        readings.len(),
        counts.uploaded_total
    );
    assert_eq!(
        queued.len() as u64,
        counts.pending,
        "`queue list` shows {} readings but `queue stats` {} pending",
        queued.len(),
        counts.pending
    );

    // None duplicated on the server, none both delivered and pending.
    let mut seen = HashSet::new();
    let dups: Vec<&str> = readings
        .iter()
        .filter(|r| !seen.insert(r.timestamp.as_str()))
        .map(|r| r.timestamp.as_str())
        .collect();
    assert!(
        dups.is_empty(),
        "{} readings stored twice (timestamps {:?})",
        dups.len(),
        &dups[..dups.len().min(10)]
    );
    for ts in &queued {
        assert!(
            !seen.contains(ts.as_str()),
            "reading {ts} is on the server and still pending in the queue"
        );
    }

    for r in &readings {
        assert_wire_timestamp(&r.timestamp);
        assert_eq!(r.username, DEFAULT_USERNAME);
        assert!(
            r.temperature.is_some() && r.humidite.is_some() && r.accelerometre.is_some(),
            "reading without values: {r:?}"
        );
        assert!(
            r.timestamp_us <= r.received_at_us + CLOCK_SLACK_US / 10,
            "reading {} was received at {} µs, before its capture time: a send-time or \
             future timestamp",
            r.timestamp,
            r.received_at_us
        );
    }
    for ts in &queued {
        assert_wire_timestamp(ts);
    }

    // Every capture time lies in a run; within a run, no hole.
    let all: BTreeSet<i64> = readings
        .iter()
        .map(|r| r.timestamp_us)
        .chain(queued.iter().map(|t| parse_us(t)))
        .collect();
    assert_eq!(
        all.len(),
        readings.len() + queued.len(),
        "two readings share a capture time"
    );
    let all: Vec<i64> = all.into_iter().collect();
    if let Some(problem) = capture_time_problem(&all, runs, Edges::Unchecked) {
        panic!("{problem}");
    }
    readings
}

#[test]
fn a_readings_arrive_once_with_capture_times() {
    let server = start_server();
    let mut gw = Gateway::new(&server.base_url(), gateway_options());
    let start_us = now_us();
    gw.spawn();
    gw.wait_until("50 readings on the server", Duration::from_secs(30), || {
        server.stats().data_ok >= 50
    });
    let exit = gw.sigterm(STOP_LIMIT + Duration::from_secs(5));
    let end_us = now_us();
    assert_clean_exit(exit, &gw, "run with the server up");

    let readings = check_delivery(&server, &gw, &[Run::sampling(start_us, end_us)]);
    assert!(readings.len() >= 50);

    // Capture times, sorted, are one per tick: strictly increasing, about one
    // interval apart, and arrive soon after capture while the server is up.
    let mut ts: Vec<i64> = readings.iter().map(|r| r.timestamp_us).collect();
    ts.sort_unstable();
    let gaps: Vec<i64> = ts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|&g| g > 0),
        "capture times not strictly increasing"
    );
    let mut sorted_gaps = gaps.clone();
    sorted_gaps.sort_unstable();
    let median_gap = sorted_gaps[sorted_gaps.len() / 2];
    assert!(
        (50_000..=250_000).contains(&median_gap),
        "median time between captures is {median_gap} µs, want about {INTERVAL:?}"
    );
    let mut lags: Vec<i64> = readings
        .iter()
        .map(|r| r.received_at_us - r.timestamp_us)
        .collect();
    lags.sort_unstable();
    let median_lag = lags[lags.len() / 2];
    // A liveness bound, not a speed test: readings are sent as they come, not held
    // until the backlog logic or the stop sends them.
    assert!(
        median_lag < 10_000_000,
        "readings reach the server {median_lag} µs after capture (median): held back, \
         with the server up"
    );
}

#[test]
fn b_tokens_are_refreshed_with_rotation_on_one_login() {
    let server = start_server();
    let mut gw = Gateway::new(&server.base_url(), gateway_options());
    let start_us = now_us();
    gw.spawn();
    // Run through at least three access lifetimes, so that uploads would fail without
    // refreshes, and until three refreshes (each rotating the refresh token) happened.
    let started = Instant::now();
    let min_run = ACCESS_LIFETIME * 3 + Duration::from_secs(1);
    gw.wait_until(
        "3 token refreshes over 3 access lifetimes",
        Duration::from_secs(30),
        || started.elapsed() >= min_run && server.stats().refresh_ok >= 3,
    );
    // Uploads still work after the last rotation.
    let after = server.stats().data_ok;
    gw.wait_until(
        "uploads after the third refresh",
        Duration::from_secs(30),
        || server.stats().data_ok >= after + 10,
    );
    let exit = gw.sigterm(STOP_LIMIT + Duration::from_secs(5));
    let end_us = now_us();
    assert_clean_exit(exit, &gw, "refresh run");

    let stats = server.stats();
    assert!(stats.refresh_ok >= 3, "{stats:?}");
    assert_eq!(
        stats.login_ok, 1,
        "the gateway must refresh (keeping the rotated refresh token), not log in again: {stats:?}"
    );
    assert_eq!(
        stats.refresh_failed, 0,
        "a refresh failed: an old (blacklisted) refresh token was reused, or refreshes raced: {stats:?}"
    );
    assert_eq!(stats.login_failed, 0, "{stats:?}");
    if stats.data_401 > 0 {
        eprintln!(
            "note: {} uploads were answered 401 (refresh after expiry rather than before)",
            stats.data_401
        );
    }
    check_delivery(&server, &gw, &[Run::sampling(start_us, end_us)]);
}

#[test]
fn c_server_outage_of_10s_loses_and_duplicates_nothing() {
    let mut server = start_server();
    let mut gw = Gateway::new(&server.base_url(), gateway_options());
    let start_us = now_us();
    gw.spawn();
    gw.wait_until("20 readings on the server", Duration::from_secs(30), || {
        server.stats().data_ok >= 20
    });

    server.stop();
    let down_us = now_us();
    let outage = Duration::from_secs(10);
    let down_at = Instant::now();
    // The outage itself: the gateway must keep running and keep sampling.
    while down_at.elapsed() < outage {
        gw.assert_running();
        thread::sleep(Duration::from_millis(200));
    }
    let pending = gw.queue_counts().pending;
    assert!(
        pending >= 50,
        "after {outage:?} of outage at {INTERVAL:?} sampling only {pending} readings are pending"
    );
    server.restart();
    let up_us = now_us();

    // Everything captured during the outage arrives, then the gateway keeps up.
    gw.wait_until(
        "the backlog of the outage to drain",
        Duration::from_secs(90),
        || {
            let readings = server.readings();
            let outage_rows = readings
                .iter()
                .filter(|r| r.timestamp_us > down_us && r.timestamp_us < up_us)
                .count();
            let fresh = readings.iter().any(|r| r.timestamp_us > up_us + 1_000_000);
            fresh && outage_rows as u64 + 10 >= pending
        },
    );
    let exit = gw.sigterm(STOP_LIMIT + Duration::from_secs(5));
    let end_us = now_us();
    assert_clean_exit(exit, &gw, "run across the outage");

    let readings = check_delivery(&server, &gw, &[Run::sampling(start_us, end_us)]);
    // Readings captured during the outage carry their capture time, not the time
    // they were finally sent.
    let during: Vec<&Reading> = readings
        .iter()
        .filter(|r| r.timestamp_us > down_us + 500_000 && r.timestamp_us < up_us - 500_000)
        .collect();
    assert!(
        during.len() >= 50,
        "only {} readings captured during the 10 s outage reached the server",
        during.len()
    );
    for r in &during {
        assert!(
            r.received_at_us >= up_us - CLOCK_SLACK_US / 10,
            "reading {} captured during the outage was received before the restart?",
            r.timestamp
        );
    }
}

#[test]
fn d_stopped_while_server_down_delivers_queue_on_next_run() {
    let mut server = start_server();
    let mut gw = Gateway::new(&server.base_url(), gateway_options());
    let start_us = now_us();
    gw.spawn();
    gw.wait_until("10 readings on the server", Duration::from_secs(30), || {
        server.stats().data_ok >= 10
    });

    server.stop();
    gw.wait_until(
        "10 readings pending while the server is down",
        Duration::from_secs(30),
        || gw.queue_counts().pending >= 10,
    );
    let exit = gw.sigterm(STOP_LIMIT + Duration::from_secs(5));
    let run1_end_us = now_us();
    assert_clean_exit(exit, &gw, "stop while the server is down");

    let queued = gw.queued_timestamps();
    let counts = gw.queue_counts();
    assert!(
        counts.pending >= 10,
        "the stopped gateway kept only {} pending readings: {counts:?}",
        counts.pending
    );
    assert_eq!(queued.len() as u64, counts.pending);
    let uploaded_before = counts.uploaded_total;

    server.restart();
    let run2_start_us = now_us();
    gw.spawn();
    gw.wait_until(
        "the readings queued by the first run to reach the server",
        Duration::from_secs(30),
        || {
            let on_server: HashSet<String> =
                server.readings().into_iter().map(|r| r.timestamp).collect();
            queued.iter().all(|t| on_server.contains(t))
        },
    );
    let exit = gw.sigterm(STOP_LIMIT + Duration::from_secs(5));
    let end_us = now_us();
    assert_clean_exit(exit, &gw, "second run");

    let counts = gw.queue_counts();
    assert!(
        counts.uploaded_total >= uploaded_before + queued.len() as u64,
        "uploaded_total did not grow by the drained backlog: before {uploaded_before}, \
         backlog {}, now {counts:?}",
        queued.len()
    );
    check_delivery(
        &server,
        &gw,
        &[
            Run::sampling(start_us, run1_end_us),
            Run::sampling(run2_start_us, end_us),
        ],
    );
}
