//! What the binary does with a configuration, an environment or a stored row that could
//! leak a secret or crash it (issue 13): a configuration error names the key, the file,
//! the line and the column but never quotes the line; credentials in `api.base_url` and
//! plain http to another machine are refused (exit 78); a variable that is not UTF-8
//! does not kill every command; durations have upper bounds; a capture time past year
//! 9999 in the queue does not abort `queue stats|list|export`.
//!
//! None of these needs the test server: nothing here sends a request off this machine
//! (the "remote" host is 0.0.0.0, which Linux connects to locally, on a closed port).

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitStatus;
use std::time::Duration;

use common::*;

/// sysexits EX_CONFIG: an invalid configuration.
const EXIT_CONFIG: i32 = 78;

/// A gateway whose server nobody listens on.
fn gateway() -> Gateway {
    Gateway::new(&refused_url(), GatewayOptions::default())
}

/// `config check` with the config file replaced by `text`.
fn check_with(gw: &Gateway, text: &str) -> (ExitStatus, String, String) {
    gw.set_config(text);
    gw.cli(&["config", "check"])
}

#[test]
fn a_password_typed_under_api_is_refused_without_quoting_it() {
    let gw = gateway();
    let secret = "hunter2-Zq9";
    for (text, key) in [
        // An unknown key: toml's own message quotes the whole line.
        (
            format!("[api]\nbase_url = \"http://127.0.0.1:1\"\npassword = \"{secret}\"\n"),
            "api.password",
        ),
        // A syntax error on the secret's line.
        (format!("[api]\npassword = \"{secret}\n"), "api.password"),
        (format!("[api]\nusername = {secret}\n"), "api.username"),
    ] {
        let (status, stdout, stderr) = check_with(&gw, &text);
        assert_eq!(status.code(), Some(EXIT_CONFIG), "{stdout}{stderr}");
        assert!(!stderr.contains("hunter2"), "the line was quoted: {stderr}");
        assert!(!stdout.contains("hunter2"), "{stdout}");
        for part in ["config file", "line ", "column ", key] {
            assert!(stderr.contains(part), "no `{part}` in: {stderr}");
        }
    }
}

#[test]
fn credentials_in_base_url_are_refused_without_echo() {
    let gw = gateway();
    for url in [
        "https://device:s3cr3t-pw@profilometre.example.com",
        "https://device@profilometre.example.com",
        "http://:s3cr3t-pw@127.0.0.1:8000",
    ] {
        let (status, stdout, stderr) = check_with(&gw, &format!("[api]\nbase_url = \"{url}\"\n"));
        assert_eq!(status.code(), Some(EXIT_CONFIG), "{url}: {stdout}{stderr}");
        assert!(stderr.contains("api.base_url"), "{stderr}");
        for leaked in ["s3cr3t", "device"] {
            assert!(!stderr.contains(leaked), "{url}: echoed: {stderr}");
            assert!(!stdout.contains(leaked), "{url}: echoed: {stdout}");
        }
    }
}

#[test]
fn plain_http_to_another_host_is_refused_unless_insecure_http_then_warned() {
    let mut gw = gateway();
    let remote = "http://0.0.0.0:9";
    let text = gw
        .config_text()
        .replace(&refused_url_line(&gw), &format!("base_url = \"{remote}\""));
    assert!(
        text.contains(remote),
        "no base_url line in the generated config"
    );
    gw.set_config(&text);
    let advice = "use https://, or set api.insecure_http = true";
    let (status, stdout, stderr) = gw.cli(&["config", "check"]);
    assert_eq!(status.code(), Some(EXIT_CONFIG), "{stdout}{stderr}");
    assert!(stderr.contains(advice), "{stderr}");
    let (status, output) = run_to_exit(&gw, Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(EXIT_CONFIG), "{output}");
    assert!(output.contains(advice), "{output}");

    // Allowed, with a warning in `config check` and in the daemon's log.
    gw.set_config(&text.replacen("[api]\n", "[api]\ninsecure_http = true\n", 1));
    let stdout = gw.cli_ok(&["config", "check"]);
    assert!(
        stdout.contains("WARNING") && stdout.contains("in clear"),
        "{stdout}"
    );
    assert!(stdout.contains("insecure_http = true"), "{stdout}");
    gw.spawn();
    gw.wait_until("the insecure-http warning", Duration::from_secs(30), || {
        gw.log_text()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("in clear"))
    });
    let exit = gw.sigterm(Duration::from_secs(10));
    assert!(exit.status.success(), "{:?}", exit.status);
}

/// `run` until it exits (killed after `timeout`): its status, if it exited, and output.
fn run_to_exit(gw: &Gateway, timeout: Duration) -> (Option<ExitStatus>, String) {
    let path = gw.dir().join("run-to-exit.log");
    let log = std::fs::File::create(&path).expect("create the run log");
    let mut child = gw
        .command()
        .arg("run")
        .stdout(log.try_clone().expect("clone the run log"))
        .stderr(log)
        .spawn()
        .expect("run the gateway");
    let mut status = None;
    poll_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let output = std::fs::read_to_string(&path).unwrap_or_default();
    (status, output)
}

/// The generated `base_url = "..."` line.
fn refused_url_line(gw: &Gateway) -> String {
    gw.config_text()
        .lines()
        .find(|l| l.starts_with("base_url = "))
        .map(str::to_owned)
        .unwrap_or_default()
}

#[test]
fn a_non_utf8_environment_variable_is_ignored_unless_it_is_ours() {
    let gw = gateway();
    let bad = OsStr::from_bytes(b"caf\xe9");
    let out = gw
        .command()
        .env("SOME_OTHER_TOOL_SETTING", bad)
        .args(["config", "check"])
        .output()
        .expect("run config check");
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gw
        .command()
        .env("PROFILO_GATEWAY__API__USERNAME", bad)
        .args(["config", "check"])
        .output()
        .expect("run config check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(
        stderr.contains("PROFILO_GATEWAY__API__USERNAME") && stderr.contains("UTF-8"),
        "{stderr}"
    );
}

#[test]
fn duration_keys_have_upper_bounds_named_in_the_error() {
    let gw = gateway();
    for (section, key, value) in [
        ("sampling", "interval", "300000000000y"),
        ("api", "request_timeout", "100y"),
        ("upload", "backoff_max", "10y"),
        ("api", "login_backoff_max", "10y"),
    ] {
        let before = gw.config_text();
        gw.set_config_key(section, key, &format!("\"{value}\""));
        let (status, stdout, stderr) = gw.cli(&["config", "check"]);
        assert_eq!(
            status.code(),
            Some(EXIT_CONFIG),
            "{section}.{key} = {value}: {stdout}{stderr}"
        );
        assert!(stderr.contains(&format!("{section}.{key}")), "{stderr}");
        assert!(stderr.contains("must be at most"), "{stderr}");
        gw.set_config(&before);
    }
}

#[test]
fn a_capture_time_past_9999_is_listed_and_exported_without_panicking() {
    let mut gw = gateway();
    gw.spawn();
    gw.wait_until("3 readings queued", Duration::from_secs(30), || {
        gw.queue_counts().pending >= 3
    });
    let exit = gw.sigterm(Duration::from_secs(10));
    assert!(exit.status.success(), "{:?}", exit.status);
    // A bit flipped on the SD card: the oldest row's capture time lands in year 10000.
    let conn = rusqlite::Connection::open(gw.queue_path()).expect("open the queue");
    let changed = conn
        .execute(
            "UPDATE readings SET captured_at_ms = 253402300800000 \
             WHERE id = (SELECT min(id) FROM readings)",
            [],
        )
        .expect("update a row");
    assert_eq!(changed, 1);
    drop(conn);
    let stats = gw.queue_stats();
    assert!(stats["pending"].as_u64().unwrap_or(0) >= 3, "{stats}");
    gw.cli_ok(&["queue", "stats"]);
    let list = gw.cli_ok(&["queue", "list", "--json"]);
    assert!(list.contains("+10000-01-01T00:00:00.000Z"), "{list}");
    gw.cli_ok(&["queue", "list"]);
    for format in ["jsonl", "csv"] {
        let out = gw.cli_ok(&["queue", "export", "--format", format]);
        assert!(out.contains("+10000-"), "{format}: {out}");
    }
}
