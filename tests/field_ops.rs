//! `doctor` against the real test server (healthy, wrong password, server down, an
//! unreadable I2C device, a full disk) and `metrics` read by the official Prometheus
//! parser, its values checked against `queue stats --json`, also from the daemon's
//! `[metrics] listen`.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

fn gateway(server: &TestServer) -> Gateway {
    Gateway::new(&server.base_url(), GatewayOptions::default())
}

/// A gateway whose daemon serves `/metrics` and `/health` on a free loopback port.
fn gateway_with_listener(server: &TestServer) -> Gateway {
    Gateway::new(
        &server.base_url(),
        GatewayOptions {
            extra_toml: "[metrics]\nlisten = \"127.0.0.1:0\"\n".into(),
            ..GatewayOptions::default()
        },
    )
}

#[test]
fn doctor_passes_on_a_healthy_gateway_and_names_the_password_source() {
    let server = TestServer::with_device(Duration::from_secs(300));
    let gw = gateway(&server);
    let (code, report) = doctor(&gw);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["ok"], true);
    for name in [
        "configuration",
        "password",
        "dns",
        "tcp",
        "login",
        "sensor simulated",
        "clock",
        "disk",
        "queue",
        "service",
    ] {
        let level = doctor_level(&report, name);
        assert!(
            level == "ok" || level == "warn",
            "{name}: {level} in {report:#}"
        );
    }
    for name in ["configuration", "password", "dns", "tcp", "login", "disk"] {
        assert_eq!(doctor_level(&report, name), "ok", "{name} in {report:#}");
    }
    let password = doctor_check(&report, "password");
    assert!(
        password["detail"]
            .as_str()
            .unwrap()
            .contains("password file"),
        "{password}"
    );
    assert!(
        !report.to_string().contains(DEFAULT_PASSWORD),
        "doctor printed the password"
    );
    assert!(doctor_check(&report, "login")["detail"]
        .as_str()
        .unwrap()
        .contains("clock offset"));
    // No queue yet: said, not failed.
    assert_eq!(doctor_level(&report, "queue"), "warn");
}

#[test]
fn doctor_fails_the_login_on_a_wrong_password_and_says_what_to_do() {
    let server = TestServer::with_device(Duration::from_secs(300));
    let gw = gateway(&server);
    gw.write_password("not-the-password");
    let (code, report) = doctor(&gw);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["ok"], false);
    let login = doctor_check(&report, "login");
    assert_eq!(login["level"], "fail", "{login}");
    assert!(
        login["detail"].as_str().unwrap().contains("login refused"),
        "{login}"
    );
    assert!(
        login["fix"].as_str().unwrap().contains("password"),
        "{login}"
    );
    // The rest still reports: the server is reachable, the password was found.
    assert_eq!(doctor_level(&report, "tcp"), "ok");
    assert_eq!(doctor_level(&report, "password"), "ok");
    assert!(!report.to_string().contains("not-the-password"));
}

#[test]
fn doctor_fails_tcp_when_the_server_is_down() {
    let mut server = TestServer::with_device(Duration::from_secs(300));
    let gw = gateway(&server);
    server.stop();
    let (code, report) = doctor(&gw);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(doctor_level(&report, "dns"), "ok");
    let tcp = doctor_check(&report, "tcp");
    assert_eq!(tcp["level"], "fail", "{tcp}");
    assert!(tcp["fix"].as_str().unwrap().contains("server up"), "{tcp}");
    assert_eq!(
        doctor_level(&report, "login"),
        "warn",
        "not tried: {report:#}"
    );
    // A person reads the same verdicts as text, each failure with its fix.
    let (status, text, _) = gw.cli(&["doctor"]);
    assert_eq!(status.code(), Some(1));
    assert!(text.contains("FAIL  tcp"), "{text}");
    assert!(text.contains("fix: is the server up"), "{text}");
}

#[test]
fn doctor_fails_a_sensor_on_a_path_that_is_not_an_i2c_device() {
    let server = TestServer::with_device(Duration::from_secs(300));
    let gw = gateway(&server);
    let not_a_bus = gw.dir().join("i2c-7");
    std::fs::write(&not_a_bus, b"").unwrap();
    let config = gw.default_config().replace(
        "type = \"simulated\"",
        &format!(
            "type = \"bme280\"\ndevice = {:?}",
            not_a_bus.display().to_string()
        ),
    );
    gw.set_config(&config);
    let (code, report) = doctor(&gw);
    assert_eq!(code, 1, "{report:#}");
    let bus = doctor_check(&report, "i2c ");
    assert_eq!(bus["level"], "fail", "{bus}");
    assert!(
        bus["detail"].as_str().unwrap().contains("not an I2C bus"),
        "{bus}"
    );
    assert!(bus["fix"].as_str().unwrap().contains("/dev/i2c-"), "{bus}");
    assert_eq!(doctor_level(&report, "sensor bme280"), "fail", "{report:#}");
    // The server side is still healthy.
    assert_eq!(doctor_level(&report, "login"), "ok", "{report:#}");
}

#[test]
fn doctor_fails_the_disk_check_when_the_queue_filesystem_is_full() {
    let server = TestServer::with_device(Duration::from_secs(300));
    let gw = gateway(&server);
    let fs = queue_on_tmpfs(&gw, "2m");
    let free = fs.free_bytes();
    std::fs::write(fs.dir().join("filler"), vec![0u8; free as usize]).ok();
    let (code, report) = doctor(&gw);
    assert_eq!(code, 1, "{report:#}");
    let disk = doctor_check(&report, "disk");
    assert_eq!(disk["level"], "fail", "{disk}");
    assert!(
        disk["fix"].as_str().unwrap().contains("queue.path"),
        "{disk}"
    );
}

#[test]
fn doctor_reports_a_configuration_that_does_not_load() {
    let server = TestServer::with_device(Duration::from_secs(300));
    let gw = gateway(&server);
    gw.set_config_key("upload", "concurrency", "0");
    let (code, report) = doctor(&gw);
    assert_eq!(code, 1, "{report:#}");
    let config = doctor_check(&report, "configuration");
    assert_eq!(config["level"], "fail");
    assert!(
        config["detail"]
            .as_str()
            .unwrap()
            .contains("upload.concurrency"),
        "{config}"
    );
}

/// Every sample of the contract, checked against `queue stats --json`.
fn assert_metrics_match_stats(families: &[serde_json::Value], stats: &serde_json::Value) {
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(families, name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {families:#?}"))
    };
    let n = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert_eq!(
        value("profilo_gateway_queue_pending", &[]),
        n(&stats["pending"])
    );
    assert_eq!(value("profilo_gateway_queue_dead", &[]), n(&stats["dead"]));
    assert_eq!(
        value("profilo_gateway_uploaded_total", &[]),
        n(&stats["uploaded_total"])
    );
    assert_eq!(
        value("profilo_gateway_dropped_total", &[]),
        n(&stats["dropped_total"])
    );
    assert_eq!(
        value("profilo_gateway_logins_total", &[]),
        n(&stats["auth"]["logins"])
    );
    assert_eq!(
        value("profilo_gateway_refreshes_total", &[("result", "ok")]),
        n(&stats["auth"]["refreshes"])
    );
    assert_eq!(
        value("profilo_gateway_refreshes_total", &[("result", "failed")]),
        n(&stats["auth"]["refresh_failures"])
    );
    assert_eq!(
        value(
            "profilo_gateway_upload_failures_total",
            &[("kind", "rejected")]
        ),
        n(&stats["uploads"]["rejected"])
    );
    assert_eq!(
        value(
            "profilo_gateway_upload_failures_total",
            &[("kind", "transient")]
        ),
        n(&stats["uploads"]["transient_failures"])
    );
    let sensor = stats["sensors"][0]["name"]
        .as_str()
        .expect("a sensor in the stats");
    assert_eq!(
        value("profilo_gateway_sensor_up", &[("sensor", sensor)]),
        1.0
    );
    assert!(value("profilo_gateway_oldest_pending_age_seconds", &[]) >= 0.0);
    assert_eq!(value("profilo_gateway_clock_synchronized", &[]), 1.0);
}

#[test]
fn metrics_parse_as_prometheus_text_and_agree_with_queue_stats() {
    let server = TestServer::with_device(Duration::from_secs(300));
    let mut gw = gateway_with_listener(&server);
    gw.spawn();
    gw.wait_until(
        "readings uploaded and a status written",
        Duration::from_secs(60),
        || {
            let s = gw.queue_stats();
            s["uploaded_total"].as_u64().unwrap_or(0) >= 5
                && s["auth"]["logins"].as_u64().unwrap_or(0) >= 1
                && s["sensors"].is_array()
        },
    );
    // Stop, so the figures hold still while both commands read them.
    assert!(gw.sigterm(Duration::from_secs(20)).status.success());
    let families = parse_prometheus(&gw.cli_ok(&["metrics"]));
    for f in &families {
        assert!(
            !f["documentation"].as_str().unwrap_or_default().is_empty(),
            "no HELP: {f}"
        );
    }
    let kind = |name: &str| {
        families
            .iter()
            .find(|f| f["name"] == name)
            .map(|f| f["type"].clone())
    };
    assert_eq!(kind("profilo_gateway_uploaded"), Some("counter".into()));
    assert_eq!(kind("profilo_gateway_queue_pending"), Some("gauge".into()));
    assert_metrics_match_stats(&families, &gw.queue_stats());
    // The unsynchronised clock shows.
    gw.set_env(vec![(
        "PROFILO_GATEWAY_CLOCK_SYNC".into(),
        "unsynced".into(),
    )]);
    let families = parse_prometheus(&gw.cli_ok(&["metrics"]));
    assert_eq!(
        sample(&families, "profilo_gateway_clock_synchronized", &[]),
        Some(0.0)
    );
}

/// One HTTP/1.1 GET on loopback: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("an answer");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn the_daemon_serves_metrics_and_health_when_listen_is_set() {
    let server = TestServer::with_device(Duration::from_secs(300));
    let mut gw = gateway_with_listener(&server);
    gw.spawn();
    let mut addr = String::new();
    gw.wait_until(
        "the metrics listener's address in the log",
        Duration::from_secs(60),
        || {
            let log = gw.log_text();
            match log.split("serving /metrics and /health on http://").nth(1) {
                Some(rest) => {
                    addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    true
                }
                None => false,
            }
        },
    );
    // The daemon writes its login counters with its status, every 10 s.
    gw.wait_until(
        "readings uploaded and a login counted",
        Duration::from_secs(60),
        || {
            let s = gw.queue_stats();
            s["uploaded_total"].as_u64().unwrap_or(0) >= 3
                && s["auth"]["logins"].as_u64().unwrap_or(0) >= 1
        },
    );
    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    let families = parse_prometheus(&body);
    assert!(
        sample(&families, "profilo_gateway_uploaded_total", &[]).unwrap_or(0.0) >= 3.0,
        "{body}"
    );
    assert!(
        sample(&families, "profilo_gateway_logins_total", &[]).unwrap_or(0.0) >= 1.0,
        "{body}"
    );
    let (status, body) = http_get(&addr, "/health");
    assert_eq!(
        (status, body.as_str()),
        (200, "ok: sampling and uploading make progress\n")
    );
    assert_eq!(http_get(&addr, "/nothing").0, 404);
    assert!(gw.sigterm(Duration::from_secs(20)).status.success());
}

#[test]
fn a_terminal_sees_why_uploads_are_off_and_the_queue_redrawn_with_its_rate() {
    let server = TestServer::with_device(Duration::from_secs(300));
    let mut gw = gateway(&server);
    let without_user: String = gw
        .default_config()
        .lines()
        .filter(|l| !l.starts_with("username"))
        .map(|l| format!("{l}\n"))
        .collect();
    gw.set_config(&without_user);
    gw.spawn();
    gw.wait_until("the start-up warning", Duration::from_secs(60), || {
        gw.log_text()
            .contains("uploads are off: api.username is not set")
    });
    assert!(
        gw.log_text().contains("set-password"),
        "no way to fix it said"
    );
    // `queue stats --watch` redraws until stopped; two frames at least, each with its rate.
    let mut watch = gw
        .command()
        .args(["queue", "stats", "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("queue stats --watch");
    let mut out = watch.stdout.take().expect("stdout");
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let t0 = std::time::Instant::now();
    while text.matches("progress:").count() < 2 && t0.elapsed() < Duration::from_secs(30) {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        text.matches("\x1b[H\x1b[2J").count() >= 2,
        "not redrawn: {text:?}"
    );
    // Uploads are off: nothing leaves; the queue grows (or, between two commits, holds).
    assert!(
        text.contains("progress:       upload 0.0/s, queue growing by")
            || text.contains("progress:       upload 0.0/s, queue not shrinking"),
        "{text:?}"
    );
    assert!(text.contains("pending:"), "{text:?}");
    assert!(gw.sigterm(Duration::from_secs(20)).status.success());
}
