//! The queue commands (issue 4) while the daemon runs against the real test server:
//! `queue stats|list|dead|retry-dead|purge|export`, text and `--json`; `purge` refuses
//! without `--yes` (non-zero exit, a message) and deletes nothing then.

mod common;

use std::collections::HashSet;
use std::fs;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn json(gw: &Gateway, args: &[&str]) -> Value {
    let out = gw.cli_ok(args);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("`{}` printed no JSON ({e}): {out}", args.join(" ")))
}

fn dead_count(gw: &Gateway) -> u64 {
    gw.queue_counts().dead
}

#[test]
fn queue_commands_work_while_the_daemon_runs() {
    let server = TestServer::start(ServerOptions {
        access_lifetime: Duration::from_secs(30),
        ..Default::default()
    });
    server.create_user(DEFAULT_USERNAME, DEFAULT_PASSWORD);
    // Every reading is refused (400): dead letters pile up.
    server.set_faults(&Faults {
        reject_temperature_above: Some(-1000.0),
        ..Default::default()
    });
    let mut gw = Gateway::new(
        &server.base_url(),
        GatewayOptions {
            interval: Duration::from_millis(50),
            extra_toml: "[upload]\nbackoff_base = \"100ms\"\nbackoff_max = \"1s\"\n".into(),
            ..Default::default()
        },
    );
    gw.spawn();
    gw.wait_for("5 dead letters", Duration::from_secs(30), |gw| {
        gw.queue_counts().dead >= 5
    });

    // stats: every documented key, JSON and text.
    let stats = gw.queue_stats();
    for key in [
        "pending",
        "dead",
        "in_flight",
        "dropped_total",
        "uploaded_total",
        "last_upload_at",
        "last_error",
        "uploader_state",
        "sensors",
        "db_bytes",
    ] {
        assert!(
            stats.get(key).is_some(),
            "`queue stats --json` lacks {key}: {stats}"
        );
    }
    assert!(stats["db_bytes"].as_u64().unwrap_or(0) > 0, "{stats}");
    let text = gw.cli_ok(&["queue", "stats"]);
    for label in [
        "pending:",
        "dead letters:",
        "dropped total:",
        "uploaded total:",
    ] {
        assert!(
            text.contains(label),
            "`queue stats` lacks {label:?}:\n{text}"
        );
    }

    // dead: status 400 and the server's answer.
    let dead = gw.queue_dead();
    assert!(dead.len() >= 5, "{} dead letters listed", dead.len());
    for d in &dead {
        assert_eq!(d["status"], 400, "{d}");
        assert!(
            d["response"]
                .as_str()
                .is_some_and(|r| r.contains("less than or equal to")),
            "dead letter without the server's answer: {d}"
        );
        assert!(d["captured_at"].as_str().is_some(), "{d}");
    }
    let text = gw.cli_ok(&["queue", "dead"]);
    assert!(text.contains("status 400"), "`queue dead`:\n{text}");

    // Now the server answers 503 to everything: readings stay pending.
    server.set_faults(&Faults {
        fail_ratio: 1.0,
        retry_after: Some(1),
        reject_temperature_above: None,
    });
    gw.wait_for("20 pending readings", Duration::from_secs(30), |gw| {
        gw.queue_counts().pending >= 20
    });

    // list: oldest first, --limit honoured.
    let list = json(&gw, &["queue", "list", "--json", "--limit", "5"]);
    let items = list.as_array().expect("`queue list --json` is an array");
    assert_eq!(items.len(), 5, "--limit 5 listed {}: {list}", items.len());
    let ids: Vec<i64> = items
        .iter()
        .map(|i| i["id"].as_i64().unwrap_or(0))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "not oldest first: {ids:?}"
    );
    for i in items {
        assert!(i["reading"]["timestamp"].as_str().is_some(), "{i}");
    }
    let text = gw.cli_ok(&["queue", "list", "--limit", "3"]);
    assert_eq!(text.lines().count(), 3, "`queue list --limit 3`:\n{text}");

    // export jsonl (stdout) and csv (file), pending readings.
    let before = gw.queue_counts().pending;
    let jsonl = gw.cli_ok(&["queue", "export", "--format", "jsonl"]);
    let after = gw.queue_counts().pending;
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l}")))
        .collect();
    // Only the daemon's sampling changes the queue now (every upload gets a 503).
    assert!(
        (before..=after).contains(&(lines.len() as u64)),
        "export wrote {} lines while {before}..{after} readings were pending",
        lines.len()
    );
    for l in &lines {
        assert!(
            l["id"].as_i64().is_some()
                && l["timestamp"].as_str().is_some()
                && l["temperature"].as_f64().is_some(),
            "bad export line {l}"
        );
    }
    let csv_path = gw.dir().join("export.csv");
    let csv_arg = csv_path.to_string_lossy().into_owned();
    let (status, _, stderr) = gw.cli(&["queue", "export", "--format", "csv", "--output", &csv_arg]);
    assert!(status.success(), "csv export failed: {stderr}");
    let csv = fs::read_to_string(&csv_path).expect("csv export file");
    let mut rows = csv.lines();
    assert_eq!(
        rows.next(),
        Some("id,timestamp,field,value"),
        "csv header:\n{csv}"
    );
    let csv_ids: HashSet<&str> = rows
        .map(|r| {
            let cols: Vec<&str> = r.split(',').collect();
            assert_eq!(cols.len(), 4, "csv row {r:?}");
            cols[0]
        })
        .collect();
    assert!(
        csv_ids.len() >= lines.len(),
        "csv export has {} readings, jsonl had {}",
        csv_ids.len(),
        lines.len()
    );
    assert!(
        stderr.contains("written to"),
        "no summary on stderr: {stderr}"
    );

    // export --dead: the dead letters, as JSON lines.
    let dead_now = dead_count(&gw);
    let dead_export = gw.cli_ok(&["queue", "export", "--dead"]);
    assert_eq!(
        dead_export.lines().count() as u64,
        dead_now,
        "export --dead:\n{dead_export}"
    );

    // retry-dead --id N: one dead letter back to pending.
    let first_dead = gw.queue_dead()[0]["id"].as_i64().expect("dead letter id");
    let id_arg = first_dead.to_string();
    let r = json(&gw, &["queue", "retry-dead", "--id", &id_arg, "--json"]);
    assert_eq!(r["requeued"], 1, "{r}");
    assert_eq!(dead_count(&gw), dead_now - 1);
    let (status, _, stderr) = gw.cli(&["queue", "retry-dead", "--id", &id_arg]);
    assert!(
        !status.success() && stderr.contains("no dead letter"),
        "retrying a dead letter twice must fail: {status} {stderr}"
    );

    // purge refuses without --yes, deleting nothing.
    for args in [
        &["queue", "purge", "--dead"][..],
        &["queue", "purge", "--all"][..],
    ] {
        let (status, stdout, stderr) = gw.cli(args);
        assert!(
            !status.success() && stderr.contains("--yes"),
            "`{}` must refuse without --yes: {status}\nstdout: {stdout}\nstderr: {stderr}",
            args.join(" ")
        );
    }
    assert_eq!(
        dead_count(&gw),
        dead_now - 1,
        "a refused purge deleted dead letters"
    );
    assert!(
        gw.queue_counts().pending >= before,
        "a refused purge deleted readings"
    );

    // retry-dead (all), then purge --dead --yes, then purge --all --yes.
    let r = json(&gw, &["queue", "retry-dead", "--json"]);
    assert_eq!(r["requeued"].as_u64(), Some(dead_now - 1), "{r}");
    assert_eq!(dead_count(&gw), 0);
    server.clear_faults();
    server.set_faults(&Faults {
        reject_temperature_above: Some(-1000.0),
        ..Default::default()
    });
    gw.wait_for("dead letters again", Duration::from_secs(30), |gw| {
        gw.queue_counts().dead >= 3
    });
    let dead_ids = |gw: &Gateway| -> HashSet<i64> {
        gw.queue_dead()
            .iter()
            .filter_map(|d| d["id"].as_i64())
            .collect()
    };
    let dead_then = dead_ids(&gw);
    let r = json(&gw, &["queue", "purge", "--dead", "--yes", "--json"]);
    assert!(
        r["deleted"].as_u64().unwrap_or(0) >= dead_then.len() as u64,
        "{r}"
    );
    // The daemon may dead-letter more meanwhile (the rest of the backlog, fast): those
    // are new ones; none of the purged ones may be left.
    let left: Vec<i64> = dead_ids(&gw).intersection(&dead_then).copied().collect();
    assert!(left.is_empty(), "purge --dead left {left:?}");

    server.set_faults(&Faults {
        fail_ratio: 1.0,
        retry_after: Some(1),
        reject_temperature_above: None,
    });
    let refused = server.stats().data_503;
    gw.wait_for(
        "10 pending readings, uploads refused",
        Duration::from_secs(30),
        |gw| server.stats().data_503 >= refused + 2 && gw.queue_counts().pending >= 10,
    );
    // Settlements of uploads answered before the faults may still be committed (acks and
    // dead letters wait for the next commit, issue 14) and take rows out at any moment,
    // so the purge is judged by which rows survive it, not by counts read around it.
    let counted = gw.queue_counts();
    let listed = gw.queue_items();
    let ts = |item: &Value| {
        item["reading"]["timestamp"]
            .as_str()
            .unwrap_or_else(|| panic!("no reading.timestamp in `queue list --json` item {item}"))
            .to_owned()
    };
    // RFC 3339 with milliseconds, one width: ordered as text.
    let newest = listed.iter().map(ts).max().expect("readings listed");
    let r = json(&gw, &["queue", "purge", "--all", "--yes", "--json"]);
    let deleted = r["deleted"].as_u64().unwrap_or(0);
    let left = gw.queue_counts();
    // Every listed reading was deleted (and counted) unless an ack took it out first.
    let acked_meanwhile = left.uploaded_total - counted.uploaded_total;
    assert!(
        deleted + acked_meanwhile >= listed.len() as u64,
        "purge --all deleted {deleted} with {acked_meanwhile} acked meanwhile; {} were listed: {r}",
        listed.len()
    );
    // Readings committed after the purge remain; none listed before it (older than the
    // newest listed: the queue commits in capture order) may.
    let survivors: Vec<String> = gw
        .queue_items()
        .iter()
        .map(ts)
        .filter(|t| *t < newest)
        .collect();
    assert!(
        survivors.is_empty() && left.dead == 0,
        "purge --all left {left:?}, readings older than the newest listed ({newest}): {survivors:?}"
    );

    // The daemon went on through all this.
    gw.assert_running();
    let exit = gw.sigterm(Duration::from_secs(10));
    assert!(exit.status.success(), "daemon exit {}", exit.status);
}
