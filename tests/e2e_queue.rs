//! End-to-end tests of the store-and-forward queue (issue 4), against the real Django +
//! SimpleJWT test server:
//!
//! - kill -9 at random moments during a backlog drain, 50 times: nothing lost, at most
//!   `upload.batch_size` duplicates per kill (the readings the server accepted whose ack
//!   was not committed yet);
//! - connections refused, then the server: the outage's backlog drains;
//! - a black hole (accepts, never answers) with a 1 s request timeout: the daemon keeps
//!   sampling, stops on SIGTERM, and drains once the path forwards again;
//! - 30 % proxy 503s with `Retry-After` and HTML bodies plus 400s for some readings:
//!   nothing lost, the refused ones are dead letters with status and answer;
//! - a tmpfs filling up while the server is down: no crash, no corruption, drops
//!   counted, recovery when space returns, then the queue drains;
//! - a tmpfs full while the server is up: acks cannot be committed, uploads pause and
//!   nothing is sent twice;
//! - a corrupt queue file at start: moved aside, the daemon runs and uploads;
//! - a clock years behind: readings are uploaded with corrected capture times.
//!
//! Every test has its own server and gateway; they run in parallel.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// SIGTERM must end the daemon within this.
const STOP_LIMIT: Duration = Duration::from_secs(5);
const STOP_WAIT: Duration = Duration::from_secs(10);

fn start_server() -> TestServer {
    TestServer::with_device(Duration::from_secs(30))
}

/// A gateway with prompt retries (short backoff cap) and `extra` upload settings.
fn gateway(base_url: &str, interval: Duration, upload: &str) -> Gateway {
    Gateway::new(
        base_url,
        GatewayOptions {
            interval,
            extra_toml: format!(
                "[upload]\nbackoff_base = \"100ms\"\nbackoff_max = \"1s\"\n{upload}\n"
            ),
            ..Default::default()
        },
    )
}

fn stop(gw: &mut Gateway, context: &str) {
    let exit = gw.sigterm(STOP_WAIT);
    assert!(
        exit.status.success() && exit.elapsed < STOP_LIMIT,
        "{context}: SIGTERM gave {} after {:?} (want 0 within {STOP_LIMIT:?})\n--- log ---\n{}",
        exit.status,
        exit.elapsed,
        tail(&gw.log_text(), 40)
    );
}

/// Polls `cond` until true, failing fast (with the log) when the daemon exits.
fn wait_alive(gw: &mut Gateway, what: &str, timeout: Duration, cond: impl FnMut(&Gateway) -> bool) {
    gw.wait_for(what, timeout, cond);
}

/// Runs the daemon with sampling all but off (1 h) until its queue is empty (`what`,
/// within `timeout`), then stops it (`context`). Returns the time from start to empty.
fn drain_dry(gw: &mut Gateway, what: &str, timeout: Duration, context: &str) -> Duration {
    gw.set_interval("1h");
    let start = Instant::now();
    gw.spawn();
    wait_alive(gw, what, timeout, |gw| gw.queue_counts().pending == 0);
    let drained = start.elapsed();
    stop(gw, context);
    drained
}

/// Waits until the server has handled every request it received (its counter stays put
/// for 200 ms): requests a killed daemon wrote before dying are still processed, and must
/// be counted for the run that sent them.
fn wait_server_quiet(server: &TestServer) {
    let mut last = u64::MAX;
    let mut stable_since = Instant::now();
    wait_until("the server to go quiet", Duration::from_secs(60), || {
        let n = server.stats().requests_total;
        if n != last {
            last = n;
            stable_since = Instant::now();
        }
        stable_since.elapsed() >= Duration::from_millis(200)
    });
}

fn item_ts(item: &Value) -> String {
    item["reading"]["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("no reading.timestamp in `queue list --json` item {item}"))
        .to_owned()
}

fn item_temperature(item: &Value) -> f64 {
    item["reading"]["temperature"]
        .as_f64()
        .unwrap_or_else(|| panic!("no reading.temperature in `queue list --json` item {item}"))
}

/// What identifies a reading: its capture time AND its values. The capture time alone
/// does not: a late sampler tick followed by an on-time one can share a millisecond.
fn key(ts: &str, t: Option<f64>, h: Option<f64>, a: Option<f64>) -> String {
    format!("{ts}|{t:?}|{h:?}|{a:?}")
}

fn item_key(item: &Value) -> String {
    let r = &item["reading"];
    key(
        &item_ts(item),
        r["temperature"].as_f64(),
        r["humidite"].as_f64(),
        r["accelerometre"].as_f64(),
    )
}

fn reading_key(r: &Reading) -> String {
    key(&r.timestamp, r.temperature, r.humidite, r.accelerometre)
}

/// Copies of each reading (by [`key`]) on the server.
fn server_copies(server: &TestServer) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in server.readings() {
        *m.entry(reading_key(&r)).or_insert(0) += 1;
    }
    m
}

fn missing<'a>(want: impl IntoIterator<Item = &'a String>, have: &HashSet<String>) -> Vec<String> {
    let mut v: Vec<String> = want
        .into_iter()
        .filter(|t| !have.contains(*t))
        .cloned()
        .collect();
    v.sort();
    v
}

/// Every reading of `backlog` reached the server exactly once (no crash happened, so no
/// duplicate is excused). Returns the server's copies per reading.
fn assert_all_arrived_once(
    server: &TestServer,
    backlog: &[String],
    what: &str,
) -> HashMap<String, usize> {
    let copies = server_copies(server);
    let on_server: HashSet<String> = copies.keys().cloned().collect();
    let lost = missing(backlog, &on_server);
    assert!(
        lost.is_empty(),
        "{} of the {} readings {what} never arrived: {:?}",
        lost.len(),
        backlog.len(),
        &lost[..lost.len().min(10)]
    );
    let dups: Vec<_> = copies.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        dups.is_empty(),
        "readings {what} stored twice without any crash: {dups:?}"
    );
    copies
}

/// Runs the gateway with its server unreachable (connections refused) and fast sampling
/// until at least `target` readings are pending, then stops it cleanly. Returns the
/// pending capture times.
fn build_backlog(gw: &mut Gateway, interval: &str, target: u64, timeout: Duration) -> Vec<Value> {
    gw.set_base_url(&refused_url());
    gw.set_interval(interval);
    gw.spawn();
    wait_alive(
        gw,
        &format!("{target} readings pending (server unreachable)"),
        timeout,
        |gw| gw.queue_counts().pending >= target,
    );
    stop(gw, "end of backlog run");
    gw.queue_items()
}

// ---------------------------------------------------------------------------------------
// kill -9 during a backlog drain
// ---------------------------------------------------------------------------------------

const KILLS: usize = 50;
const KILL_BATCH: u64 = 32;
/// Below this many pending readings after a kill, the backlog is topped up again.
const REFILL_BELOW: usize = 300;
const REFILL_TO: u64 = 1500;

#[test]
fn kill9_during_backlog_drain_loses_nothing_and_duplicates_at_most_a_batch_per_kill() {
    let started = Instant::now();
    let server = start_server();
    let mut gw = gateway(
        &server.base_url(),
        Duration::from_millis(20),
        &format!("batch_size = {KILL_BATCH}\nconcurrency = 4\n"),
    );
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    eprintln!("kill -9 test: random seed {seed}");

    // Every capture time ever seen durable in the queue (after a clean stop or a kill):
    // each must reach the server.
    let mut durable: HashSet<String> = HashSet::new();
    let mut refills = 0;
    let mut kills_during_upload = 0;
    // Start of each drain run (harness clock, µs): run k+1 re-sends what kill k left.
    let mut run_starts: Vec<i64> = Vec::new();
    let mut pending_after_kill: Vec<usize> = Vec::new();
    let first_start_us = now_us();

    let refill = |gw: &mut Gateway, durable: &mut HashSet<String>| {
        let items = build_backlog(gw, "2ms", REFILL_TO, Duration::from_secs(60));
        durable.extend(items.iter().map(item_key));
        gw.set_base_url(&server.base_url());
        gw.set_interval("20ms");
    };
    refill(&mut gw, &mut durable);

    for _ in 0..KILLS {
        let before = server.stats().data_ok;
        run_starts.push(now_us());
        gw.spawn();
        // The random moment of the crash: sleeping is the point here.
        thread::sleep(Duration::from_millis(rng.u64(50..=400)));
        gw.assert_running();
        gw.kill9();
        wait_server_quiet(&server);
        if server.stats().data_ok > before {
            kills_during_upload += 1;
        }
        let items = gw.queue_items();
        durable.extend(items.iter().map(item_key));
        pending_after_kill.push(items.len());
        if items.len() < REFILL_BELOW {
            refill(&mut gw, &mut durable);
            refills += 1;
        }
    }

    // Final clean drain: no new readings but the one at start.
    run_starts.push(now_us());
    let drain_time = drain_dry(
        &mut gw,
        "the queue to drain after the kills",
        Duration::from_secs(90),
        "final drain",
    );
    let end_us = now_us();

    let counts = gw.queue_counts();
    assert_eq!(
        counts.pending, 0,
        "readings left after the drain: {counts:?}"
    );
    counts.assert_none_dead_or_dropped();

    let readings = server.readings();
    let distinct: HashSet<String> = readings.iter().map(reading_key).collect();
    let lost = missing(&durable, &distinct);
    assert!(
        lost.is_empty(),
        "{} of {} durable readings never reached the server after {KILLS} kills (first: {:?})",
        lost.len(),
        durable.len(),
        &lost[..lost.len().min(10)]
    );
    let start_us = first_start_us - 1_000_000;
    for r in &readings {
        assert!(
            r.timestamp_us >= start_us && r.timestamp_us <= end_us,
            "reading {} lies outside the test's time window",
            r.timestamp
        );
    }

    // Duplicates, attributed to the kill before the run that re-sent them.
    let mut first_seen: HashSet<String> = HashSet::new();
    let mut by_arrival: Vec<&Reading> = readings.iter().collect();
    by_arrival.sort_by_key(|r| r.id);
    let mut per_kill = vec![0u64; KILLS];
    let mut total_dups = 0u64;
    for r in by_arrival {
        if !first_seen.insert(reading_key(r)) {
            total_dups += 1;
            let run = run_starts
                .iter()
                .rposition(|&s| s <= r.received_at_us)
                .unwrap_or(0);
            // Run k (0-based) follows kill k-1.
            per_kill[run.saturating_sub(1).min(KILLS - 1)] += 1;
        }
    }
    let worst = per_kill.iter().copied().max().unwrap_or(0);
    eprintln!(
        "kill -9 test: {KILLS} kills ({kills_during_upload} while uploads were being \
         accepted), {refills} backlog refills, {} distinct readings durable, {} on the \
         server ({} stored in all), duplicates {total_dups} (bound {}), worst kill {worst} \
         (bound {KILL_BATCH}), duplicates per kill {per_kill:?}, pending after each kill \
         {pending_after_kill:?}, final drain {drain_time:?}, wall time {:?}",
        durable.len(),
        distinct.len(),
        readings.len(),
        KILLS as u64 * KILL_BATCH,
        started.elapsed()
    );
    assert!(
        total_dups <= KILLS as u64 * KILL_BATCH,
        "{total_dups} duplicates after {KILLS} kills: more than {KILLS} x batch_size {KILL_BATCH}"
    );
    assert!(
        worst <= KILL_BATCH,
        "one kill caused {worst} duplicates, more than batch_size {KILL_BATCH}: {per_kill:?}"
    );
    assert!(
        kills_during_upload >= KILLS / 2,
        "only {kills_during_upload} of {KILLS} kills happened while the server was accepting \
         uploads: the test did not exercise the drain"
    );
    assert_eq!(
        counts.uploaded_total,
        distinct.len() as u64,
        "the gateway counts {} readings acknowledged, the server holds {} distinct ones",
        counts.uploaded_total,
        distinct.len()
    );
}

// ---------------------------------------------------------------------------------------
// outage, black hole, flaky server
// ---------------------------------------------------------------------------------------

#[test]
fn connections_refused_then_server_drains_the_outage_backlog() {
    let server = start_server();
    let mut gw = gateway(&refused_url(), Duration::from_millis(50), "");
    gw.spawn();
    wait_alive(
        &mut gw,
        "40 readings pending while connections are refused",
        Duration::from_secs(30),
        |gw| gw.queue_counts().pending >= 40,
    );
    let stats = gw.queue_stats();
    assert!(
        stats["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "connections refused but `queue stats` shows no last_error: {stats}"
    );
    stop(&mut gw, "stop during the outage");
    let backlog: Vec<String> = gw.queue_items().iter().map(item_key).collect();

    // "Restart with a new config": the server is back.
    gw.set_base_url(&server.base_url());
    drain_dry(
        &mut gw,
        "the outage backlog to drain",
        Duration::from_secs(60),
        "after the drain",
    );

    let copies = assert_all_arrived_once(&server, &backlog, "queued during the outage");
    let counts = gw.queue_counts();
    assert_eq!((counts.pending, counts.dead), (0, 0), "{counts:?}");
    assert_eq!(
        counts.uploaded_total,
        copies.len() as u64,
        "uploaded_total vs the server's readings: {counts:?}"
    );
}

#[test]
fn black_hole_does_not_hang_the_gateway_and_the_queue_drains_afterwards() {
    let server = start_server();
    let hole = BlackHole::start(server.port());
    hole.set_forward(true);
    let mut gw = Gateway::new(
        &hole.url(),
        GatewayOptions {
            interval: Duration::from_millis(50),
            request_timeout: Duration::from_secs(1),
            extra_toml: "[upload]\nbackoff_base = \"100ms\"\nbackoff_max = \"1s\"\n".into(),
            ..Default::default()
        },
    );
    gw.set_config_key("api", "login_backoff_base", "\"200ms\"");
    gw.set_config_key("api", "login_backoff_max", "\"1s\"");
    gw.spawn();
    wait_alive(
        &mut gw,
        "10 readings through the proxy",
        Duration::from_secs(30),
        |_| server.stats().data_ok >= 10,
    );

    // Black hole: connections are accepted, requests swallowed, nothing answered.
    hole.set_forward(false);
    let accepted0 = hole.accepted();
    let pending0 = gw.queue_counts().pending;
    let hole_start = Instant::now();
    wait_alive(
        &mut gw,
        "sampling to go on and the uploader to retry on new connections in the black hole",
        Duration::from_secs(30),
        |gw| gw.queue_counts().pending >= pending0 + 60 && hole.accepted() >= accepted0 + 2,
    );
    eprintln!(
        "black hole: {} new connections and {} more pending readings in {:?}",
        hole.accepted() - accepted0,
        gw.queue_counts().pending - pending0,
        hole_start.elapsed()
    );
    // SIGTERM while requests hang in the black hole.
    stop(&mut gw, "SIGTERM during the black hole");
    let mut durable: HashSet<String> = gw.queue_items().iter().map(item_key).collect();

    // A start in the black hole: the login itself hangs; the daemon samples anyway.
    let accepted1 = hole.accepted();
    gw.spawn();
    wait_alive(
        &mut gw,
        "logins retried in the black hole while sampling goes on",
        Duration::from_secs(30),
        |gw| hole.accepted() >= accepted1 + 2 && gw.queue_counts().pending > durable.len() as u64,
    );
    durable.extend(gw.queue_items().iter().map(item_key));

    // Path restored: everything drains.
    hole.set_forward(true);
    wait_alive(
        &mut gw,
        "the black-hole backlog to drain",
        Duration::from_secs(60),
        |gw| gw.queue_counts().pending <= 3,
    );
    stop(&mut gw, "after the drain");

    let copies = server_copies(&server);
    let on_server: HashSet<String> = copies.keys().cloned().collect();
    let pending: HashSet<String> = gw.queue_items().iter().map(item_key).collect();
    let lost: Vec<String> = missing(&durable, &on_server)
        .into_iter()
        .filter(|t| !pending.contains(t))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} readings queued around the black hole were lost: {:?}",
        lost.len(),
        durable.len(),
        &lost[..lost.len().min(10)]
    );
    let dups: usize = copies.values().map(|&n| n - 1).sum();
    eprintln!(
        "black hole: {} readings on the server, {dups} duplicates, {} still pending",
        on_server.len(),
        pending.len()
    );
    assert!(
        dups <= 64,
        "{dups} duplicates: more than one batch although no request was answered late"
    );
    assert_eq!(gw.queue_counts().dead, 0);
}

/// Splits the temperatures in two non-empty halves: readings above it are refused.
fn split_threshold(temps: &[f64]) -> f64 {
    let mut t = temps.to_vec();
    t.sort_by(f64::total_cmp);
    t.dedup();
    assert!(
        t.len() >= 2,
        "all {} backlog readings have the same temperature {t:?}",
        temps.len()
    );
    let mid = t.len() / 2;
    (t[mid - 1] + t[mid]) / 2.0
}

#[test]
fn flaky_503_with_retry_after_and_400s_lose_nothing_and_refused_ones_are_dead_letters() {
    let server = start_server();
    let mut gw = gateway(&server.base_url(), Duration::from_millis(50), "");
    let items = build_backlog(&mut gw, "50ms", 30, Duration::from_secs(30));
    let threshold = split_threshold(&items.iter().map(item_temperature).collect::<Vec<_>>());
    let (above, below): (Vec<&Value>, Vec<&Value>) =
        items.iter().partition(|i| item_temperature(i) > threshold);
    server.set_faults(&Faults {
        fail_ratio: 0.3,
        retry_after: Some(1),
        reject_temperature_above: Some(threshold),
    });

    gw.set_base_url(&server.base_url());
    let drain = drain_dry(
        &mut gw,
        "the queue to drain through 30 % 503s",
        Duration::from_secs(90),
        "after the drain",
    );

    let stats = server.stats();
    let copies = server_copies(&server);
    let dead = gw.queue_dead();
    let dead_ts: HashSet<String> = dead
        .iter()
        .map(|d| {
            let f = &d["fields"];
            key(
                d["captured_at"].as_str().unwrap_or_default(),
                f["temperature"].as_f64(),
                f["humidite"].as_f64(),
                f["accelerometre"].as_f64(),
            )
        })
        .collect();
    eprintln!(
        "flaky server: {} readings ({} refused) drained in {drain:?}; server saw {} 503s, \
         {} 400s, {} stored",
        items.len(),
        above.len(),
        stats.data_503,
        stats.data_400,
        stats.data_ok
    );
    assert!(stats.data_503 > 0, "no 503 was served: {stats:?}");
    for d in &dead {
        assert_eq!(d["status"], 400, "dead letter without status 400: {d}");
        let answer = d["response"].as_str().unwrap_or_default();
        assert!(
            answer.contains("less than or equal to"),
            "dead letter does not keep the server's answer: {d}"
        );
        let t = d["fields"]["temperature"].as_f64().unwrap_or(f64::NAN);
        assert!(
            t > threshold,
            "reading at {t} °C (<= {threshold}) dead-lettered: {d}"
        );
    }
    for i in &above {
        let ts = item_key(i);
        assert!(
            dead_ts.contains(&ts),
            "refused reading {ts} is not a dead letter (dead: {dead_ts:?})"
        );
        assert!(
            !copies.contains_key(&ts),
            "refused reading {ts} is on the server"
        );
    }
    for i in &below {
        let ts = item_key(i);
        assert_eq!(
            copies.get(&ts).copied(),
            Some(1),
            "accepted reading {ts} is not on the server exactly once"
        );
    }
    // A 503 never stored anything: no duplicate.
    assert!(
        copies.values().all(|&n| n == 1),
        "duplicates on the server: {copies:?}"
    );
    // A run of 503s between successes is one line when it starts (the Retry-After
    // floor of each put-back reading is checked in uploader::drain's unit tests).
    let started_503 = gw
        .log_text()
        .lines()
        .filter(|l| l.contains("upload failed") && l.contains("503"))
        .count();
    assert!(
        (1..=2).contains(&started_503),
        "{started_503} lines for one run of 503s"
    );
}

// ---------------------------------------------------------------------------------------
// full disk, corrupt file
// ---------------------------------------------------------------------------------------

/// The `error`-level lines of the daemon's log that mention `needle`.
fn log_lines_with(gw: &Gateway, needle: &str) -> Vec<String> {
    gw.log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Moves the gateway's queue onto a fresh 2 MiB tmpfs (this test needs root). Returns
/// the mount (unmounted when dropped) and the queue's path.
fn queue_on_small_fs(gw: &Gateway) -> (Tmpfs, PathBuf) {
    let fs_dir = gw.dir().join("small-fs");
    let fs = Tmpfs::mount(&fs_dir, "2m")
        .unwrap_or_else(|e| panic!("cannot mount a 2 MiB tmpfs (this test needs root): {e}"));
    let queue = fs.dir().join("queue.db");
    gw.set_config_key(
        "queue",
        "path",
        &format!("{:?}", queue.display().to_string()),
    );
    (fs, queue)
}

/// Fills `fs` but for about `leave` bytes; returns the filler file (remove it to free
/// the space).
fn fill_but(fs: &Tmpfs, leave: u64) -> PathBuf {
    let filler = fs.dir().join("filler");
    let free = fs.free_bytes();
    fs::write(&filler, vec![0u8; free.saturating_sub(leave) as usize])
        .expect("cannot write the filler file");
    filler
}

const MAX_READINGS: u64 = 2000;

#[test]
fn full_filesystem_neither_crashes_nor_corrupts_counts_drops_and_recovers() {
    let server = start_server();
    let mut gw = gateway(&refused_url(), Duration::from_millis(1), "");
    // Drops as configured: the readings held in memory while the disk was full go to a
    // queue bounded at MAX_READINGS, drop_oldest.
    gw.set_config_key("queue", "max_readings", &MAX_READINGS.to_string());
    gw.set_config_key("queue", "overflow", "\"drop_oldest\"");
    let (fs, queue) = queue_on_small_fs(&gw);

    // Leave about 160 KiB: the WAL reaches the end of the filesystem within seconds, with
    // fewer than MAX_READINGS pending. (400 KiB until rows kept their field names once per
    // layout, schema version 3: a row at 1 kHz is about half the WAL bytes it was, and
    // 400 KiB then held more than MAX_READINGS readings.)
    let filler = fill_but(&fs, 160 * 1024);

    let start = Instant::now();
    gw.spawn();
    wait_alive(
        &mut gw,
        "the daemon to report the full disk",
        Duration::from_secs(60),
        |gw| !log_lines_with(gw, "cannot write to the queue").is_empty(),
    );
    let full_after = start.elapsed();
    let errors = log_lines_with(&gw, "cannot write to the queue");
    assert!(
        errors[0].contains("disk full"),
        "the write failure is not reported as a full disk: {}",
        errors[0]
    );
    // The queue stays readable while full, and sound.
    let during = gw.queue_counts();
    assert_eq!(
        integrity_check(&queue),
        "ok",
        "queue damaged while the disk is full"
    );
    // Full for a while: the daemon keeps sampling into memory, retrying every second,
    // without logging every failure.
    let hold = Instant::now();
    wait_alive(&mut gw, "3 s of full disk", Duration::from_secs(30), |_| {
        hold.elapsed() >= Duration::from_secs(3)
    });
    let failure_logs = log_lines_with(&gw, "cannot write to the queue").len();
    assert!(
        failure_logs <= 2,
        "{failure_logs} failure lines in {:?}: the log is not rate-limited",
        start.elapsed()
    );

    // Space returns.
    fs::remove_file(&filler).expect("cannot remove the filler");
    let freed = Instant::now();
    wait_alive(
        &mut gw,
        "queue writes to resume and the drops to be counted",
        Duration::from_secs(30),
        |gw| {
            gw.log_text().contains("queue writes work again") && gw.queue_counts().dropped_total > 0
        },
    );
    let resumed_in = freed.elapsed();
    // At max_readings every commit (20 a second at 1 ms sampling) drops the oldest: the
    // drops are summed and logged at most once a minute, not once per commit.
    let hold = Instant::now();
    wait_alive(
        &mut gw,
        "2 s of drops at the bound",
        Duration::from_secs(30),
        |_| hold.elapsed() >= Duration::from_secs(2),
    );
    let after = gw.queue_counts();
    let drop_logs = log_lines_with(&gw, "queue full: dropped");
    assert!(
        !drop_logs.is_empty() && drop_logs.len() <= 2,
        "{} drop warnings in {:?} (want 1 or 2, rate-limited):\n{}",
        drop_logs.len(),
        start.elapsed(),
        drop_logs.join("\n")
    );
    stop(&mut gw, "after the disk recovered");
    let check = integrity_check(&queue);
    assert_eq!(check, "ok", "queue damaged after the full disk");
    let stopped = gw.queue_counts();
    eprintln!(
        "full disk: full after {full_after:?} ({} pending then), recovered {resumed_in:?} after \
         space returned, then {after:?}, at stop {stopped:?}, {failure_logs} failure log line(s)",
        during.pending
    );
    assert!(
        stopped.pending > during.pending && stopped.pending <= MAX_READINGS,
        "after space returned the queue must hold more than the {} readings of the full \
         disk and at most max_readings {MAX_READINGS}: {stopped:?}",
        during.pending
    );

    // The server comes back: the queue drains.
    gw.set_base_url(&server.base_url());
    drain_dry(
        &mut gw,
        "the queue to drain after the full disk",
        Duration::from_secs(120),
        "after the drain",
    );
    let counts = gw.queue_counts();
    let copies = server_copies(&server);
    assert_eq!(counts.dead, 0, "{counts:?}");
    assert!(
        counts.dropped_total >= stopped.dropped_total && counts.dropped_total > 0,
        "{counts:?}"
    );
    // The reading taken at the start of the drain run pushes the oldest one out of the full
    // queue; when that one was already on its way, the server stores it while the queue
    // counts it dropped, not uploaded: at most that one reading apart.
    let uploaded = counts.uploaded_total;
    assert!(
        uploaded <= copies.len() as u64 && copies.len() as u64 <= uploaded + 1,
        "uploaded_total {uploaded} vs the server's {} distinct readings: {counts:?}",
        copies.len()
    );
    // The reading taken at the start of the drain run may push out the oldest one
    // (the queue is at max_readings): every other one arrives.
    assert!(
        copies.len() as u64 >= stopped.pending,
        "the server has {} readings, the queue held {} pending",
        copies.len(),
        stopped.pending
    );
    assert_eq!(integrity_check(&queue), "ok");
}

/// The disk fills while the server answers: the acknowledgements cannot be committed.
/// Uploads must pause until they are (a failed ack commit is a transient failure), never
/// go on and send the queue again from its start: nothing reaches the server twice.
#[test]
fn full_disk_while_the_server_is_up_pauses_uploads_and_sends_nothing_twice() {
    let server = start_server();
    let mut gw = gateway(&refused_url(), Duration::from_millis(2), "");
    let (fs, queue) = queue_on_small_fs(&gw);
    let backlog: Vec<String> = build_backlog(&mut gw, "2ms", 1500, Duration::from_secs(60))
        .iter()
        .map(item_key)
        .collect();

    // Leave 128 KiB: the shared-memory file and a few commits of acks, then full.
    let filler = fill_but(&fs, 128 * 1024);
    gw.set_base_url(&server.base_url());
    gw.set_interval("1h");
    gw.spawn();
    wait_alive(
        &mut gw,
        "an ack commit to fail on the full disk",
        Duration::from_secs(60),
        |gw| !log_lines_with(gw, "cannot record uploaded readings").is_empty(),
    );
    let hold = Instant::now();
    wait_alive(&mut gw, "3 s of full disk", Duration::from_secs(30), |_| {
        hold.elapsed() >= Duration::from_secs(3)
    });
    wait_server_quiet(&server);
    let dups: Vec<_> = server_copies(&server)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(
        dups.is_empty(),
        "readings sent again while their acks could not be committed: {} of them, e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );

    fs::remove_file(&filler).expect("cannot remove the filler");
    // A liveness bound, not a speed: 1,500 readings at a loaded machine's 15/s take 100 s.
    wait_alive(
        &mut gw,
        "the queue to drain once space returned",
        Duration::from_secs(300),
        |gw| gw.queue_counts().pending == 0,
    );
    stop(&mut gw, "after the drain");
    assert_eq!(integrity_check(&queue), "ok");
    let copies = assert_all_arrived_once(&server, &backlog, "queued while the disk was full");
    let counts = gw.queue_counts();
    assert_eq!(
        counts.uploaded_total,
        copies.len() as u64,
        "uploaded_total counts only what was recorded: {counts:?}"
    );
}

fn corrupt_files(dir: &std::path::Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".corrupt-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn corrupt_queue_at_start_is_moved_aside_and_the_daemon_uploads() {
    let server = start_server();
    let mut gw = gateway(&server.base_url(), Duration::from_millis(50), "");
    // A real queue, damaged in its b-tree pages (as a bad SD card would).
    build_backlog(&mut gw, "2ms", 500, Duration::from_secs(30));
    let queue = gw.queue_path();
    let len = fs::metadata(&queue).expect("queue file").len();
    assert!(
        len >= 4 * 4096,
        "queue only {len} bytes: too small to damage"
    );
    let mut bytes = fs::read(&queue).expect("read queue");
    for b in &mut bytes[4096..4 * 4096] {
        *b = 0xA5;
    }
    fs::write(&queue, &bytes).expect("write damaged queue");

    gw.set_base_url(&server.base_url());
    gw.set_interval("50ms");
    gw.spawn();
    wait_alive(
        &mut gw,
        "readings uploaded from a fresh queue",
        Duration::from_secs(30),
        |_| server.stats().data_ok >= 5,
    );
    let aside = corrupt_files(gw.dir());
    assert!(
        aside.iter().any(|n| n.starts_with("queue.db.corrupt-")),
        "no queue.db.corrupt-* next to the queue: {aside:?}"
    );
    let log = gw.log_text();
    assert!(
        log.contains("corrupt") && log.contains("moved"),
        "no clear log line about the corrupt queue\n{}",
        tail(&log, 20)
    );
    stop(&mut gw, "after the corrupt start");
    assert_eq!(integrity_check(&queue), "ok");
    assert_eq!(gw.runs(), 2, "the daemon must not need restarts");

    // Not a database at all: also moved aside, also no crash loop.
    fs::write(&queue, vec![0x5a; 8192]).expect("write garbage");
    for ext in ["-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{ext}", queue.display()));
    }
    let before = server.stats().data_ok;
    // A second file moved aside in the same second must not overwrite the first.
    gw.spawn();
    wait_alive(
        &mut gw,
        "readings uploaded after a garbage queue file",
        Duration::from_secs(30),
        |_| server.stats().data_ok >= before + 5,
    );
    stop(&mut gw, "after the garbage start");
    let aside = corrupt_files(gw.dir());
    assert!(
        aside
            .iter()
            .filter(|n| !n.ends_with("-wal") && !n.ends_with("-shm"))
            .count()
            >= 2,
        "both corrupt queues must be kept aside: {aside:?}"
    );
}

// ---------------------------------------------------------------------------------------
// clock
// ---------------------------------------------------------------------------------------

#[test]
fn readings_taken_while_the_clock_was_years_behind_are_uploaded_with_corrected_times() {
    let server = start_server();
    // A Pi that booted offline without an RTC: its clock is three years behind.
    let (mut gw, held, t0, t1) = hold_with_a_wrong_clock(
        &server,
        vec![("PROFILO_GATEWAY_CLOCK_SKEW".into(), "-3y".into())],
        "the clock years behind",
    );

    // NTP has synced: the same boot, a sane clock.
    let fixed = Vec::new();
    upload_held(
        &server,
        &mut gw,
        fixed,
        "after the clock fix",
        (held.len(), t0, t1),
    );
}

#[test]
fn readings_taken_before_ntp_stepped_a_restored_clock_are_held_then_dated() {
    // A Pi that booted offline: timesyncd restored the last shutdown time, two hours
    // early (past the build date, so only the kernel's flag tells), and NTP has not
    // stepped it yet. The server's clock disagrees with ours: nothing may be sent.
    let server = start_server();
    let (mut gw, held, t0, t1) = hold_with_a_wrong_clock(
        &server,
        vec![
            ("PROFILO_GATEWAY_CLOCK_SKEW".into(), "-2h".into()),
            ("PROFILO_GATEWAY_CLOCK_SYNC".into(), "unsynced".into()),
        ],
        "a restored, unsynchronised clock",
    );
    assert!(
        server.stats().login_ok >= 1,
        "the gateway should have logged in (and measured the server's clock)"
    );

    // Still no NTP, but the clock is right now (set by hand, an RTC, a late step): the
    // kernel still says unsynchronised, the server's clock vouches for ours.
    let vouched = vec![("PROFILO_GATEWAY_CLOCK_SYNC".into(), "unsynced".into())];
    upload_held(
        &server,
        &mut gw,
        vouched,
        "after the server vouched for the clock",
        (held.len(), t0, t1),
    );
}

/// Runs the gateway again with `env` (a clock now trusted) and sampling all but off,
/// until the `held` readings (count, real time µs at start and stop of the wrong-clock
/// run) are uploaded; stops it and checks they were dated in real time.
fn upload_held(
    server: &TestServer,
    gw: &mut Gateway,
    env: Vec<(String, String)>,
    context: &str,
    (held, t0, t1): (usize, i64, i64),
) {
    gw.set_env(env);
    let what = "the held readings to be uploaded";
    drain_dry(gw, what, Duration::from_secs(30), context);
    assert_dated_in_real_time(server, held, t0, t1);
}

/// Runs the gateway with `env` (a wrong clock) until 20 readings are queued, checks that
/// none reached the server, and stops it. Returns the gateway, the held readings and the
/// real time (µs) at start and stop.
fn hold_with_a_wrong_clock(
    server: &TestServer,
    env: Vec<(String, String)>,
    what: &str,
) -> (Gateway, Vec<Value>, i64, i64) {
    let mut gw = gateway(&server.base_url(), Duration::from_millis(100), "");
    gw.set_env(env);
    let t0 = now_us();
    gw.spawn();
    wait_alive(
        &mut gw,
        &format!("20 readings queued with {what}"),
        Duration::from_secs(30),
        |gw| gw.queue_counts().pending >= 20,
    );
    let held = gw.queue_items();
    assert_eq!(
        server.stats().data_ok,
        0,
        "readings stamped with {what} were uploaded before the clock was fixed"
    );
    stop(&mut gw, &format!("with {what}"));
    (gw, held, t0, now_us())
}

/// The `held` readings taken between `t0` and `t1` (µs, real time) while the clock was
/// wrong reached the server dated in real time, 100 ms apart as they were taken.
fn assert_dated_in_real_time(server: &TestServer, held: usize, t0: i64, t1: i64) {
    let readings = server.readings();
    assert!(
        readings.len() > held,
        "{} readings on the server, {held} were held",
        readings.len(),
    );
    let slack = 2_000_000;
    let mut times: Vec<i64> = readings.iter().map(|r| r.timestamp_us).collect();
    times.sort_unstable();
    for r in &readings {
        assert!(
            r.timestamp_us >= t0 - slack && r.timestamp_us <= now_us() + slack,
            "reading {} was not corrected: the clock-behind run lasted {t0}..{t1} µs",
            r.timestamp
        );
    }
    let in_first_run = times.iter().filter(|&&t| t <= t1 + slack).count();
    assert!(
        in_first_run >= held,
        "only {in_first_run} corrected readings fall in the clock-behind run, {held} were held"
    );
    let gaps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let median = {
        let mut g: Vec<i64> = gaps.iter().copied().filter(|&g| g < 1_000_000).collect();
        g.sort_unstable();
        g.get(g.len() / 2).copied().unwrap_or(0)
    };
    assert!(
        (50_000..=250_000).contains(&median),
        "corrected capture times are {median} µs apart (median), want about 100 ms"
    );
}
