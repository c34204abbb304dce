//! Checks of `systemd/profilo-gateway.service` with `systemd-analyze`:
//!
//! - `systemd-analyze security --offline=true` rates the overall exposure at
//!   2.0 or lower;
//! - `systemd-analyze verify` prints nothing about the unit. The shipped unit
//!   starts `/usr/bin/profilo-gateway`, which does not exist on a build
//!   machine, and verify reports that ("Command ... is not executable"). So
//!   verify runs on a copy, in a temporary directory, whose `ExecStart=` points
//!   at the binary cargo built for this test run; everything else is the
//!   shipped unit byte for byte. The shipped unit itself is verified too, and
//!   the only complaint allowed is that missing binary.
//!
//! Needs `systemd-analyze` (Debian: `apt-get install systemd`, version 250 or
//! later for `--offline`); without it these tests FAIL, they do not skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

#[allow(dead_code)] // its main() is the example's; tests/gen_docs.rs checks the rest
#[path = "../examples/gen_docs.rs"]
mod gen_docs;

const UNIT_NAME: &str = "profilo-gateway.service";
const SHIPPED_EXEC: &str = "/usr/bin/profilo-gateway";
const MAX_EXPOSURE: f64 = 2.0;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(UNIT_NAME)
}

/// A MANPATH with the generated man page where the .deb puts it (man1/): `verify` runs
/// `man profilo-gateway(1)` for the unit's `Documentation=man:` line and complains without it.
fn man_path() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        gen_docs::generate(&dir.path().join("man1")).expect("generate the man page");
        dir
    })
    .path()
}

fn systemd_analyze(args: &[&str]) -> Output {
    match Command::new("systemd-analyze")
        .args(args)
        .env("MANPATH", man_path())
        // No pager, no colours, no attempt to talk to a running manager's bus.
        .env("SYSTEMD_PAGER", "cat")
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run `systemd-analyze {}`: {e}\n\
             These tests need systemd-analyze (systemd >= 250): install systemd, \
             e.g. `apt-get install systemd`.",
            args.join(" ")
        ),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The number in "Overall exposure level for X.service: 1.6 OK".
fn overall_exposure(report: &str) -> Option<f64> {
    report
        .lines()
        .find(|l| l.contains("Overall exposure level for"))
        .and_then(|l| l.rsplit_once(':'))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[test]
fn exposure_is_at_most_2_0() {
    let unit = unit_path();
    let out = systemd_analyze(&[
        "security",
        "--offline=true",
        "--no-pager",
        &unit.to_string_lossy(),
    ]);
    let report = text(&out);
    let exposure = overall_exposure(&report).unwrap_or_else(|| {
        panic!(
            "no \"Overall exposure level\" line in the output of \
             `systemd-analyze security --offline=true {}` (systemd >= 250 needed; \
             exit status {}):\n{report}",
            unit.display(),
            out.status
        )
    });
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} > {MAX_EXPOSURE}; the unit lost some hardening:\n{report}"
    );
    println!("systemd-analyze security: overall exposure {exposure}");
}

/// Lines of `verify` output that are about our unit.
fn complaints(output: &str, dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    output
        .lines()
        .filter(|l| l.contains("profilo-gateway") || l.contains(dir.as_ref()))
        .map(str::to_owned)
        .collect()
}

#[test]
fn verify_is_clean_with_a_built_binary() {
    let shipped = std::fs::read_to_string(unit_path()).expect("read the shipped unit");
    let exec_line = format!("ExecStart={SHIPPED_EXEC} ");
    assert!(
        shipped.contains(&exec_line),
        "the shipped unit must start {SHIPPED_EXEC} (the .deb installs it there)"
    );
    let binary = env!("CARGO_BIN_EXE_profilo-gateway");
    let copy = shipped.replace(&exec_line, &format!("ExecStart={binary} "));

    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join(UNIT_NAME);
    std::fs::write(&path, copy).expect("write the unit copy");

    let out = systemd_analyze(&["verify", "--no-pager", &path.to_string_lossy()]);
    let all = text(&out);
    let ours = complaints(&all, dir.path());
    assert!(
        ours.is_empty() && out.status.success(),
        "`systemd-analyze verify` is not clean (exit status {}):\n{all}",
        out.status
    );
}

#[test]
fn verify_of_the_shipped_unit_complains_at_most_of_the_missing_binary() {
    let unit = unit_path();
    let out = systemd_analyze(&["verify", "--no-pager", &unit.to_string_lossy()]);
    let all = text(&out);
    let unit_dir = unit.parent().map(Path::to_path_buf).unwrap_or_default();
    let unexpected: Vec<_> = complaints(&all, &unit_dir)
        .into_iter()
        .filter(|l| !(l.contains(SHIPPED_EXEC) && l.contains("is not executable")))
        .collect();
    assert!(
        unexpected.is_empty(),
        "`systemd-analyze verify {}` complains:\n{all}",
        unit.display()
    );
}

/// The unit's lines, trimmed, without its comments.
fn settings(unit: &str) -> Vec<&str> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect()
}

/// The settings the daemon and the package rely on; a refactor of the unit
/// must not drop them silently.
#[test]
fn unit_keeps_the_contract() {
    let unit = std::fs::read_to_string(unit_path()).expect("read the shipped unit");
    let lines = settings(&unit);
    for expected in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/bin/profilo-gateway --config /etc/profilo-gateway/config.toml run",
        // `systemctl reload` re-reads the log level and the password sources.
        // dash's kill builtin: /bin/kill (procps) is not on every system.
        "ExecReload=/bin/sh -c 'kill -HUP \"$MAINPID\"'",
        "Restart=on-failure",
        // A year unattended: a failing start is retried for ever, never left `failed`.
        "StartLimitIntervalSec=0",
        "TimeoutStopSec=10",
        "StateDirectory=profilo-gateway",
        "ConfigurationDirectory=profilo-gateway",
        "LoadCredential=api-password:/etc/profilo-gateway/password",
        "User=profilo-gateway",
        "Group=profilo-gateway",
        "SupplementaryGroups=i2c gpio",
        "DevicePolicy=closed",
        "DeviceAllow=char-i2c rw",
        "DeviceAllow=char-gpiochip rw",
        "DeviceAllow=/dev/gpiomem rw",
        "WantedBy=multi-user.target",
    ] {
        assert!(lines.contains(&expected), "{UNIT_NAME} lost `{expected}`");
    }
    let watchdog = lines
        .iter()
        .find_map(|l| l.strip_prefix("WatchdogSec="))
        .expect("WatchdogSec= is set");
    assert!(
        !watchdog.is_empty() && watchdog != "0",
        "WatchdogSec={watchdog}"
    );
    // Network to the server, journald/notify over AF_UNIX, nothing else.
    assert!(lines.contains(&"RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"));
}

/// Resource limits and a client's sockets (issue 13): no core holding the tokens, a
/// memory ceiling, no listening socket.
#[test]
fn unit_limits_memory_cores_and_binding() {
    let unit = std::fs::read_to_string(unit_path()).expect("read the shipped unit");
    let lines = settings(&unit);
    for expected in ["LimitCORE=0", "SocketBindDeny=any"] {
        assert!(lines.contains(&expected), "{UNIT_NAME} lacks `{expected}`");
    }
    let memory_max = lines
        .iter()
        .find_map(|l| l.strip_prefix("MemoryMax="))
        .expect("MemoryMax= is set");
    let mib = memory_max
        .strip_suffix('M')
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("MemoryMax={memory_max}: want a size in M"));
    // Above the measured peak (16 MB draining with the largest upload settings), and
    // low enough to stop a leak long before a 512 MB Pi swaps.
    assert!((32..=256).contains(&mib), "MemoryMax={memory_max}");
}

#[test]
fn exposure_parser_reads_the_summary_line() {
    let sample =
        "✓ UMask= ...\n\n→ Overall exposure level for profilo-gateway.service: 1.6 OK 🙂\n";
    assert_eq!(overall_exposure(sample), Some(1.6));
    assert_eq!(
        overall_exposure("→ Overall exposure level for x.service: 9.6 UNSAFE 😨"),
        Some(9.6)
    );
    assert_eq!(overall_exposure("nothing"), None);
}
