//! `doctor [--json]`: is this gateway healthy? Each check says ok, warn or fail, and
//! when not ok the fix in one line. The checks call what the other commands use
//! (`login`'s login, `sensors read`'s reading, the queue's stats, the clock's sync
//! rule); the verdicts are small pure functions, tested below.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use serde::Serialize;

use self::local::{
    clock_check, disk_check, i2c_checks, queue_check, sensor_checks, service_check,
    systemctl_is_active,
};
use self::network::{login_check, network_checks, password_check, tls_check};
use crate::config::Config;

mod local;
mod network;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print one JSON object {"ok", "checks": [{"name", "level", "detail", "fix"}]}
    /// instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The system user the packaged service runs as (debian/postinst creates it).
const SERVICE_USER: &str = "profilo-gateway";
const SERVICE_UNIT: &str = "profilo-gateway.service";
/// Below this much free space next to the queue, writes are about to fail.
const FREE_FAIL: u64 = 1024 * 1024;
/// Below this much, a backlog during an outage will fill the disk soon.
const FREE_WARN: u64 = 64 * 1024 * 1024;
/// A pending reading older than this means uploads are behind.
const BACKLOG_WARN: Duration = Duration::from_secs(3600);
/// A certificate expiring sooner than this is a warning.
const CERT_WARN: Duration = Duration::from_secs(14 * 86_400);
/// Linux's character-device major number of i2c-dev nodes (`/dev/i2c-N`).
const I2C_DEV_MAJOR: u32 = 89;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check's verdict; `fix` is one line, set unless the check is ok.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub level: Level,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            level: Level::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            level: Level::Warn,
            fix: Some(fix.into()),
            ..Check::ok(name, detail)
        }
    }
    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            level: Level::Fail,
            ..Check::warn(name, detail, fix)
        }
    }
}

pub(super) fn doctor(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let checks = run_checks(config);
    report(&checks, json)
}

/// `doctor` when the configuration does not load: that is its first (and only) verdict.
pub(super) fn config_failure(error: &str, json: bool) -> ExitCode {
    let checks = [Check::fail(
        "configuration",
        error,
        "fix the key named above (`profilo-gateway config check` re-checks it), then run doctor again",
    )];
    report(&checks, json).unwrap_or(ExitCode::FAILURE)
}

fn report(checks: &[Check], json: bool) -> anyhow::Result<ExitCode> {
    let ok = !checks.iter().any(|c| c.level == Level::Fail);
    let value = serde_json::json!({"ok": ok, "checks": checks});
    super::print_json_or(json, &value, || text(checks))?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn text(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        let level = match c.level {
            Level::Ok => "ok",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        out.push_str(&format!("{level:<5} {:<width$}  {}\n", c.name, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("      {:<width$}  fix: {fix}\n", ""));
        }
    }
    let count = |l: Level| checks.iter().filter(|c| c.level == l).count();
    out.push_str(&format!(
        "{} failed, {} warning(s), {} ok\n",
        count(Level::Fail),
        count(Level::Warn),
        count(Level::Ok)
    ));
    out
}

/// Every check, in the order a technician would go through them.
pub fn run_checks(config: &Config) -> Vec<Check> {
    let mut checks = vec![Check::ok(
        "configuration",
        format!(
            "valid: server {}, {} sensor(s), queue {}",
            config.api.base_url,
            config.sensors.len(),
            config.queue.path.display()
        ),
    )];
    let password = password_check(config);
    let password_found = password.level == Level::Ok;
    checks.push(password);
    let reachable = network_checks(config, &mut checks);
    // The login's handshake shows the certificate: its check comes first, as a person
    // would read them (DNS, TCP, TLS, login).
    let (login, certificate) = login_check(config, reachable && password_found);
    if reachable && config.api.base_url.starts_with("https:") {
        checks.push(tls_check(
            certificate.as_ref(),
            login.level != Level::Fail,
            SystemTime::now(),
        ));
    }
    checks.push(login);
    checks.extend(sensor_checks(config));
    checks.extend(i2c_checks(config));
    checks.push(clock_check());
    checks.push(disk_check(config));
    checks.push(queue_check(config));
    checks.push(service_check(systemctl_is_active()));
    checks
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::local::*;
    use super::network::*;
    use super::*;
    use crate::queue::Stats;
    use crate::tls::CertSummary;

    #[test]
    fn permissions_follow_owner_group_other() {
        // crw-rw---- root:i2c, as udev makes /dev/i2c-N on Raspberry Pi OS.
        let (mode, owner, group) = (0o20660, 0, 998);
        assert!(may_read_write(mode, owner, group, 999, &[999, 998]));
        assert!(!may_read_write(mode, owner, group, 999, &[999]));
        assert!(may_read_write(mode, owner, group, 0, &[]));
        assert!(may_read_write(0o20666, owner, group, 999, &[]));
        assert!(
            !may_read_write(0o20640, owner, group, 999, &[998]),
            "read only"
        );
    }

    #[test]
    fn a_path_that_is_not_an_i2c_device_fails_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("i2c-7");
        std::fs::write(&file, b"").unwrap();
        let c = bus_check(&file, std::fs::metadata(&file), None);
        assert_eq!(c.level, Level::Fail, "{c:?}");
        assert!(c.detail.contains("not an I2C bus"), "{c:?}");
        let missing = dir.path().join("i2c-9");
        let c = bus_check(&missing, std::fs::metadata(&missing), None);
        assert!(c.fix.unwrap().contains("raspi-config"));
        let null = Path::new("/dev/null");
        assert_eq!(
            bus_check(null, std::fs::metadata(null), None).level,
            Level::Fail
        );
    }

    #[test]
    fn disk_thresholds() {
        let d = Path::new("/var/lib/profilo-gateway");
        assert_eq!(disk_verdict(d, 100_000, 1 << 30, 0, 0).level, Level::Fail);
        assert_eq!(disk_verdict(d, 10 << 20, 1 << 30, 0, 0).level, Level::Warn);
        assert_eq!(disk_verdict(d, 500 << 20, 1 << 30, 0, 0).level, Level::Ok);
        let c = disk_verdict(d, 500 << 20, 1 << 30, 1 << 30, 1 << 20);
        assert_eq!(
            c.level,
            Level::Warn,
            "the queue may outgrow the disk: {c:?}"
        );
    }

    #[test]
    fn queue_health_warns_on_dead_drops_and_an_old_backlog() {
        let now = 1_800_000_000_000 + 7_200_000;
        let healthy = Stats {
            pending: 2,
            oldest_captured_at: Some("2027-01-15T09:59:00.000Z".into()),
            ..Stats::default()
        };
        let c = queue_verdict(&healthy, now);
        assert_eq!(c.level, Level::Ok, "{c:?}");
        assert!(c.detail.starts_with("2 pending (oldest 1m old)"), "{c:?}");
        let old = Stats {
            oldest_captured_at: Some("2027-01-15T08:00:00.000Z".into()),
            ..healthy.clone()
        };
        assert_eq!(queue_verdict(&old, now).level, Level::Warn);
        let dead = Stats {
            dead: 1,
            ..healthy.clone()
        };
        assert!(queue_verdict(&dead, now)
            .fix
            .unwrap()
            .contains("queue dead"));
        let dropped = Stats {
            dropped_total: 5,
            ..healthy
        };
        assert_eq!(queue_verdict(&dropped, now).level, Level::Warn);
    }

    #[test]
    fn certificate_verdicts() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let cert = |days: i64| {
            let not_after_time = if days >= 0 {
                now + Duration::from_secs(days as u64 * 86_400)
            } else {
                now - Duration::from_secs((-days) as u64 * 86_400)
            };
            CertSummary {
                subject: "CN=profilometre.example.com".into(),
                issuer: "CN=Example CA".into(),
                not_before: "2026-01-01T00:00:00Z".into(),
                not_after: humantime::format_rfc3339_seconds(not_after_time).to_string(),
                not_before_time: SystemTime::UNIX_EPOCH,
                not_after_time,
            }
        };
        assert_eq!(tls_check(Some(&cert(90)), true, now).level, Level::Ok);
        assert_eq!(tls_check(Some(&cert(3)), true, now).level, Level::Warn);
        assert_eq!(tls_check(Some(&cert(-1)), false, now).level, Level::Fail);
        assert_eq!(tls_check(None, true, now).level, Level::Ok);
        assert_eq!(tls_check(None, false, now).level, Level::Fail);
    }

    #[test]
    fn clock_offset_service_and_clock_verdicts() {
        assert_eq!(offset_check("dev", Some(0.4)).level, Level::Ok);
        assert_eq!(offset_check("dev", Some(-30.0)).level, Level::Warn);
        assert_eq!(service_check(None).level, Level::Ok);
        assert_eq!(service_check(Some("active".into())).level, Level::Ok);
        assert_eq!(service_check(Some("inactive".into())).level, Level::Warn);
        assert_eq!(service_check(Some("failed".into())).level, Level::Fail);
        assert_eq!(clock_verdict(false, false).level, Level::Fail);
        assert_eq!(clock_verdict(true, false).level, Level::Warn);
        assert_eq!(clock_verdict(true, true).level, Level::Ok);
    }

    #[test]
    fn text_shows_the_fix_under_its_check_and_a_count() {
        let checks = [
            Check::ok("dns", "localhost is 127.0.0.1"),
            Check::fail("tcp", "refused", "start the server"),
        ];
        let t = text(&checks);
        assert_eq!(
            t,
            "ok    dns  localhost is 127.0.0.1\nFAIL  tcp  refused\n           fix: start the server\n1 failed, 0 warning(s), 1 ok\n"
        );
    }
}
