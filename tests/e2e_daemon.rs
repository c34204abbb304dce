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
