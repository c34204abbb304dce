//! End-to-end tests of a daemon left running for a year (issue 13), with the real binary
//! and the real Django + SimpleJWT test server:
//!
//! - one daemon per queue: a second `run` on the same queue is refused at once, naming the
//!   first one's pid, while the queue commands keep working;
//! - SIGHUP never kills it: it re-reads the log level and the password sources;
//! - the queue file deleted or corrupted under a running daemon ends it with a non-zero
//!   exit, and the next start recovers;
//! - stored capture times out of any range neither abort the daemon nor the queue
//!   commands: the rows become dead letters with the reason.

mod common;

use std::fs;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use common::*;

/// A generous bound for what should take a second: the machine may be loaded.
const PROMPTLY: Duration = Duration::from_secs(20);
const STOP_WAIT: Duration = Duration::from_secs(10);

fn gateway(base_url: &str) -> Gateway {
    Gateway::new(
        base_url,
        GatewayOptions {
            extra_toml: "[upload]\nbackoff_base = \"100ms\"\nbackoff_max = \"1s\"\n".into(),
            ..Default::default()
        },
    )
}

/// Runs `profilo-gateway run` a second time on `gw`'s config; its status and output once
/// it exits, or a panic (after killing it) when it is still running after `PROMPTLY`.
fn second_run(gw: &Gateway) -> (ExitStatus, String) {
    let out_path = gw.dir().join("second-run.log");
    let out = fs::File::create(&out_path).expect("second run log");
    let err = out.try_clone().expect("second run log");
    let mut child = gw
        .command()
        .arg("run")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("second run");
    let mut status = None;
    poll_until(PROMPTLY, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let text = fs::read_to_string(&out_path).unwrap_or_default();
    match status {
        Some(status) => (status, text),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second `run` on the same queue still runs after {PROMPTLY:?}\n{text}");
        }
    }
}

#[test]
fn a_second_run_on_the_same_queue_is_refused_and_the_queue_commands_still_work() {
    let server = TestServer::with_device(Duration::from_secs(30));
    let mut gw = gateway(&server.base_url());
    gw.spawn();
    gw.wait_for("readings uploaded", Duration::from_secs(30), |_| {
        server.stats().data_ok >= 5
    });
    let pid = gw.pid().expect("pid");

    let (status, output) = second_run(&gw);
    assert!(!status.success(), "the second run exited 0\n{output}");
    assert_ne!(
        status.code(),
        Some(78),
        "not a configuration error\n{output}"
    );
    let want = format!(
        "another profilo-gateway (pid {pid}) is running on {}",
        gw.queue_path().display()
    );
    assert!(output.contains(&want), "no {want:?} in\n{output}");
    gw.assert_running();

    // The queue commands do not need the daemon's lock.
    assert!(gw.queue_counts().uploaded_total >= 5);
    gw.queue_list(Some(5));
    gw.cli_ok(&["queue", "export", "--format", "csv"]);
    gw.cli_ok(&["queue", "dead"]);
    gw.cli_ok(&["queue", "retry-dead"]);
    gw.cli_ok(&["queue", "purge", "--dead", "--yes"]);

    let exit = gw.sigterm(STOP_WAIT);
    assert!(exit.status.success(), "{}", exit.status);
    // Once the first one is gone, the lock is free again.
    gw.spawn();
    gw.wait_for("a second daemon samples", Duration::from_secs(30), |gw| {
        gw.queue_stats()["daemon_updated_at"].is_string()
    });
    let exit = gw.sigterm(STOP_WAIT);
    assert!(exit.status.success(), "{}", exit.status);
}

/// Waits for the daemon to end on its own after its queue broke; panics unless it exits
/// non-zero within a generous bound.
fn exits_with_failure(gw: &mut Gateway, what: &str) {
    // The file is checked every 10 s; failing writes are given up after 30 s.
    let status = gw.wait_exit(Duration::from_secs(90)).unwrap_or_else(|| {
        panic!(
            "the daemon still runs 90 s after {what}\n{}",
            tail(&gw.log_text(), 30)
        )
    });
    assert!(
        !status.success(),
        "exit 0 after {what}: systemd would not restart it"
    );
    let log = gw.log_text();
    assert!(
        log.contains("the queue cannot be used any more"),
        "no log line saying why after {what}\n{}",
        tail(&log, 30)
    );
}

/// Restarts the daemon and waits for more readings on the server.
fn recovers(gw: &mut Gateway, server: &TestServer, what: &str) {
    let before = server.stats().data_ok;
    gw.spawn();
    gw.wait_for(what, Duration::from_secs(30), |_| {
        server.stats().data_ok >= before + 5
    });
}

#[test]
fn a_queue_deleted_or_corrupted_under_the_daemon_ends_it_non_zero_and_a_restart_recovers() {
    let server = TestServer::with_device(Duration::from_secs(30));
    let mut gw = gateway(&server.base_url());
    let queue = gw.queue_path();

    // A backlog (the server out of reach) that a stop checkpoints into the file: the
    // oldest rows then sit in pages no later write touches, as on a card that has run
    // for a while, and damage there is real damage (a young queue lives in its WAL).
    gw.set_base_url(&refused_url());
    gw.set_interval("10ms");
    gw.spawn();
    gw.wait_for("a backlog of 300 readings", Duration::from_secs(60), |gw| {
        gw.queue_counts().pending >= 300
    });
    let exit = gw.sigterm(STOP_WAIT);
    assert!(exit.status.success(), "{}", exit.status);
    gw.spawn();
    gw.wait_for("the daemon back up", Duration::from_secs(30), |gw| {
        gw.log_text()
            .matches("INFO profilo_gateway::daemon: ready")
            .count()
            >= 2
    });
    let len = fs::metadata(&queue).expect("queue file").len() as usize;
    fs::OpenOptions::new()
        .write(true)
        .open(&queue)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &vec![0x5a; len]))
        .expect("overwrite the queue");
    exits_with_failure(&mut gw, "the queue file was overwritten");
    gw.set_base_url(&server.base_url());
    gw.set_interval("100ms");
    recovers(
        &mut gw,
        &server,
        "uploads from a fresh queue after the corrupt one",
    );
    assert!(
        fs::read_dir(gw.dir())
            .expect("dir")
            .filter_map(Result::ok)
            .any(|e| e
                .file_name()
                .to_string_lossy()
                .starts_with("queue.db.corrupt-")),
        "the corrupt queue was not moved aside"
    );

    // Deleted (an operator's `rm`, a clean-up script).
    fs::remove_file(&queue).expect("delete the queue");
    exits_with_failure(&mut gw, "the queue file was deleted");
    recovers(
        &mut gw,
        &server,
        "uploads from a fresh queue after the deleted one",
    );
    assert_eq!(integrity_check(&queue), "ok");
    let exit = gw.sigterm(STOP_WAIT);
    assert!(exit.status.success(), "{}", exit.status);
}

#[test]
fn capture_times_out_of_range_abort_neither_the_commands_nor_the_daemon_and_become_dead_letters() {
    let server = TestServer::with_device(Duration::from_secs(30));
    let mut gw = gateway(&refused_url());
    gw.spawn();
    gw.wait_for("10 readings queued", Duration::from_secs(30), |gw| {
        gw.queue_counts().pending >= 10
    });
    let exit = gw.sigterm(STOP_WAIT);
    assert!(exit.status.success(), "{}", exit.status);
    // Bits flipped on the SD card: one capture time past year 9999, one before 1970.
    let conn = rusqlite::Connection::open(gw.queue_path()).expect("open the queue");
    let ids: Vec<i64> = conn
        .prepare("SELECT id FROM readings ORDER BY id LIMIT 2")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("two ids");
    conn.execute(
        "UPDATE readings SET captured_at_ms = ?1 WHERE id = ?2",
        [i64::MAX, ids[0]],
    )
    .expect("damage one row");
    conn.execute(
        "UPDATE readings SET captured_at_ms = ?1 WHERE id = ?2",
        [-86_400_000, ids[1]],
    )
    .expect("damage another");
    drop(conn);
    let pending = gw.queue_counts().pending;

    for args in [
        &["queue", "stats"][..],
        &["queue", "stats", "--json"],
        &["queue", "list"],
        &["queue", "list", "--json"],
        &["queue", "export"],
        &["queue", "export", "--format", "csv"],
    ] {
        let (status, stdout, stderr) = gw.cli(args);
        assert!(
            status.success(),
            "`{}` failed ({status})\nstdout: {stdout}\nstderr: {stderr}",
            args.join(" ")
        );
    }
    assert_eq!(gw.queued_readings().len() as u64, pending - 2);

    gw.set_base_url(&server.base_url());
    gw.spawn();
    gw.wait_for(
        "the sound readings uploaded",
        Duration::from_secs(30),
        |gw| gw.queue_counts().uploaded_total >= pending - 2,
    );
    let dead = gw.queue_dead();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for d in &dead {
        assert_eq!(d["status"], 0, "{d}");
        let why = d["response"].as_str().unwrap_or_default();
        assert!(why.contains("out of range"), "{d}");
    }
    for args in [
        &["queue", "dead"][..],
        &["queue", "export", "--dead"],
        &["queue", "export", "--dead", "--format", "csv"],
    ] {
        gw.cli_ok(args);
    }
    gw.assert_running();
    let exit = gw.sigterm(STOP_WAIT);
    assert!(exit.status.success(), "{}", exit.status);
}

fn sighup(gw: &Gateway) {
    let pid = gw.pid().expect("pid") as libc::pid_t;
    // SAFETY: a plain syscall on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

#[test]
fn sighup_never_kills_the_daemon_and_applies_a_new_log_level_and_a_corrected_password() {
    let server = TestServer::with_device(Duration::from_secs(30));
    let mut gw = Gateway::new(
        &server.base_url(),
        GatewayOptions {
            password: "a-wrong-password".into(),
            // No RUST_LOG: log.level rules.
            rust_log: String::new(),
            ..Default::default()
        },
    );
    // Without a reload the next login would be ten minutes away.
    gw.set_config_key("api", "login_backoff_base", "\"10m\"");
    gw.set_config_key("api", "login_backoff_max", "\"10m\"");
    gw.set_config_key("log", "level", "\"warn\"");
    gw.spawn();
    gw.wait_for("the login refused", Duration::from_secs(30), |gw| {
        gw.log_text().contains("login refused")
    });
    assert!(
        !gw.log_text().contains(" DEBUG "),
        "warn level logs no debug"
    );

    gw.write_password(DEFAULT_PASSWORD);
    gw.set_config_key("log", "level", "\"debug\"");
    sighup(&gw);
    gw.wait_for(
        "readings uploaded with the corrected password",
        Duration::from_secs(60),
        |_| server.stats().data_ok >= 5,
    );
    gw.wait_for("debug lines", Duration::from_secs(30), |gw| {
        gw.log_text().contains(" DEBUG ")
    });
    let log = gw.log_text();
    for said in [
        "reload: log level set",
        "the password comes from the password file",
        "reload done",
    ] {
        assert!(log.contains(said), "no {said:?} in\n{}", tail(&log, 30));
    }
    assert!(
        !log.contains(DEFAULT_PASSWORD),
        "the password is never logged"
    );

    // A configuration that does not load is refused; the daemon goes on as it was.
    let good = gw.config_text();
    gw.set_config("this is not toml [");
    sighup(&gw);
    gw.wait_for("the refused reload said", Duration::from_secs(30), |gw| {
        gw.log_text().contains("cannot reload")
    });
    gw.set_config(&good);
    let before = server.stats().data_ok;
    gw.wait_for("uploads going on", Duration::from_secs(30), |_| {
        server.stats().data_ok >= before + 5
    });
    let exit = gw.sigterm(STOP_WAIT);
    assert!(exit.status.success(), "{}", exit.status);
}
