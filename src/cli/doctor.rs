//! `doctor [--json]`: is this gateway healthy? Each check says ok, warn or fail, and
//! when not ok the fix in one line. The checks call what the other commands use
//! (`login`'s login, `sensors read`'s reading, the queue's stats, the clock's sync
//! rule); the verdicts are small pure functions, tested below.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use serde::Serialize;

use crate::auth::password::PasswordSources;
use crate::clock::{clock_floor_ms, Clock};
use crate::config::Config;
use crate::queue::Stats;
use crate::sensors::i2c::BusLocation;
use crate::tls::CertSummary;

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

fn password_check(config: &Config) -> Check {
    let Some(user) = config.api.username.as_deref() else {
        return Check::warn(
            "password",
            "api.username is not set: readings are queued but never uploaded",
            "set `username = \"...\"` under [api] in the config, then store the password (set-password, api.password_file or a systemd credential)",
        );
    };
    match PasswordSources::new(user, config.api.password_file.clone()).read() {
        Ok((_, source)) => Check::ok("password", format!("for {user:?}, from the {source}")),
        Err(e) => Check::fail(
            "password",
            e.to_string(),
            "store it: a systemd credential (README), api.password_file (mode 0600), or `sudo -u profilo-gateway profilo-gateway set-password`",
        ),
    }
}

/// DNS and TCP; true when the server accepts connections.
fn network_checks(config: &Config, checks: &mut Vec<Check>) -> bool {
    let timeout = config.api.request_timeout;
    let Ok(url) = reqwest::Url::parse(&config.api.base_url) else {
        // Validated with the configuration; unreachable in practice.
        checks.push(Check::fail(
            "dns",
            "api.base_url is not a URL",
            "fix api.base_url",
        ));
        return false;
    };
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = match (host.as_str(), port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            checks.push(Check::fail(
                "dns",
                format!("cannot resolve {host}: {e}"),
                "check api.base_url's host name and /etc/resolv.conf (`getent hosts HOST`)",
            ));
            return false;
        }
    };
    let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    checks.push(Check::ok("dns", format!("{host} is {}", list.join(", "))));
    let mut last_error = String::from("no address");
    let mut connected = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(_) => {
                connected = Some(*addr);
                break;
            }
            Err(e) => last_error = format!("{addr}: {e}"),
        }
    }
    let Some(addr) = connected else {
        checks.push(Check::fail(
            "tcp",
            format!("cannot connect to {host} port {port} ({last_error})"),
            "is the server up, and is this port open from here (firewall, VPN, api.base_url's port)?",
        ));
        return false;
    };
    checks.push(Check::ok("tcp", format!("{addr} accepts connections")));
    true
}

/// The TLS verdict from the certificate the login's handshake saw (src/tls), and whether
/// the login got through (a refused certificate fails the login, which says why).
fn tls_check(cert: Option<&CertSummary>, login_ok: bool, now: SystemTime) -> Check {
    let fix = "renew the server's certificate, or check that api.base_url names the host it was issued for (api.ca_file for a private CA)";
    let Some(c) = cert else {
        return if login_ok {
            Check::ok(
                "tls",
                "handshake verified by the login (no certificate details seen)",
            )
        } else {
            Check::fail(
                "tls",
                "no verified handshake: see the login check's error",
                fix,
            )
        };
    };
    let left = c.not_after_time.duration_since(now);
    match left {
        Err(_) => Check::fail(
            "tls",
            format!("{}: expired at {}", c.subject, c.not_after),
            fix,
        ),
        Ok(left) if left < CERT_WARN => Check::warn(
            "tls",
            format!(
                "{}: expires at {}, in {} day(s)",
                c.subject,
                c.not_after,
                left.as_secs() / 86_400
            ),
            fix,
        ),
        Ok(left) => Check::ok(
            "tls",
            format!(
                "{} (issued by {}): valid until {} ({} days)",
                c.subject,
                c.issuer,
                c.not_after,
                left.as_secs() / 86_400
            ),
        ),
    }
}

/// The login's verdict, and the certificate its handshake saw (https).
fn login_check(config: &Config, can_try: bool) -> (Check, Option<CertSummary>) {
    if !can_try {
        let check = Check::warn(
            "login",
            "not tried: no password, or the server cannot be reached (see above)",
            "fix the checks above first",
        );
        return (check, None);
    }
    match super::login::login_once(config) {
        Ok(outcome) => {
            let offset = outcome.session.map(|s| s.clock_offset_secs);
            (
                offset_check(&outcome.user, offset),
                outcome.server_certificate,
            )
        }
        Err(e) => {
            let check = Check::fail(
                "login",
                super::error_report(&e),
                "check api.username and the password (a wrong one is refused as above); `profilo-gateway login` tries again",
            );
            (check, None)
        }
    }
}

/// A login's verdict from the clock offset it measured.
fn offset_check(user: &str, offset_secs: Option<f64>) -> Check {
    let limit = crate::clock::SERVER_AGREEMENT_MS as f64 / 1000.0;
    match offset_secs {
        Some(o) if o.abs() > limit => Check::warn(
            "login",
            format!("as {user:?}; the server's clock is {o:+.1} s from this one"),
            "synchronise this clock (`timedatectl set-ntp true`; `timedatectl timesync-status`)",
        ),
        Some(o) => Check::ok("login", format!("as {user:?}; clock offset {o:+.1} s")),
        None => Check::ok("login", format!("as {user:?}")),
    }
}

fn sensor_checks(config: &Config) -> Vec<Check> {
    let results = match super::sensors::read_each(&config.sensors) {
        Ok(r) => r,
        Err(e) => {
            return vec![Check::fail(
                "sensors",
                super::error_report(&e),
                "fix the [[sensors]] entry named above (`profilo-gateway sensors list` shows the settings)",
            )]
        }
    };
    if results.is_empty() {
        return vec![Check::warn(
            "sensors",
            "no [[sensors]] configured",
            "add a [[sensors]] entry (`profilo-gateway sensors list`)",
        )];
    }
    results
        .into_iter()
        .map(|r| {
            let name = format!("sensor {}", r.sensor);
            match r.error {
                None => {
                    let values: Vec<String> =
                        r.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    Check::ok(name, values.join(" "))
                }
                Some(e) => Check::fail(
                    name,
                    e,
                    "check the wiring and this [[sensors]] entry; `profilo-gateway sensors scan` lists the I2C devices that answer",
                ),
            }
        })
        .collect()
}

/// The service user's identity, for judging a device's permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    name: String,
    uid: u32,
    groups: Vec<u32>,
}

fn i2c_checks(config: &Config) -> Vec<Check> {
    let mut buses: Vec<BusLocation> = Vec::new();
    for c in &config.sensors {
        if let Some(b) = c.kind().i2c_bus() {
            if !buses.contains(&b) {
                buses.push(b);
            }
        }
    }
    let who = service_identity();
    buses
        .iter()
        .map(|b| {
            let path = b.path();
            bus_check(&path, std::fs::metadata(&path), who.as_ref())
        })
        .collect()
}

/// An I2C bus's verdict from its metadata and who must open it (`None`: this process,
/// asked with access(2)).
fn bus_check(
    path: &Path,
    meta: std::io::Result<std::fs::Metadata>,
    who: Option<&Identity>,
) -> Check {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let name = format!("i2c {}", path.display());
    let meta = match meta {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check::fail(
                name,
                "no such device",
                "enable I2C (`sudo raspi-config nonint do_i2c 0`, or dtparam=i2c_arm=on in /boot/firmware/config.txt) and reboot; `ls /dev/i2c-*` lists the buses",
            )
        }
        Err(e) => return Check::fail(name, e.to_string(), "check the path's permissions"),
    };
    let major = libc::major(meta.rdev());
    if !meta.file_type().is_char_device() || major != I2C_DEV_MAJOR {
        return Check::fail(
            name,
            "not an I2C bus (not an i2c-dev character device)",
            "set `bus = N` (or `device = \"/dev/i2c-N\"`) in the [[sensors]] entry; `ls /dev/i2c-*` lists the buses",
        );
    }
    let (allowed, whom) = match who {
        Some(id) => (
            may_read_write(meta.mode(), meta.uid(), meta.gid(), id.uid, &id.groups),
            format!("user {}", id.name),
        ),
        None => (accessible(path), "this user".to_owned()),
    };
    if allowed {
        Check::ok(name, format!("present, readable and writable by {whom}"))
    } else {
        Check::fail(
            name,
            format!("present, but {whom} may not open it (mode {:o})", meta.mode() & 0o777),
            format!("add {whom} to the device's group: `sudo adduser {SERVICE_USER} i2c`, then restart the service"),
        )
    }
}

/// The Unix permission rule (root passes; else owner, group or other bits): rw needed.
fn may_read_write(mode: u32, owner: u32, group: u32, uid: u32, groups: &[u32]) -> bool {
    if uid == 0 {
        return true;
    }
    let bits = if uid == owner {
        mode >> 6
    } else if groups.contains(&group) {
        mode >> 3
    } else {
        mode
    };
    bits & 0o6 == 0o6
}

fn accessible(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) == 0 }
}

/// The packaged service's user and its groups, when it exists on this machine.
fn service_identity() -> Option<Identity> {
    let name = std::ffi::CString::new(SERVICE_USER).ok()?;
    // SAFETY: getpwnam returns a pointer to static storage or null; it is read at once.
    let (uid, gid) = unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            return None;
        }
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    let mut groups = vec![0 as libc::gid_t; 64];
    let mut n = groups.len() as libc::c_int;
    // SAFETY: `groups` holds `n` entries; getgrouplist writes at most `n` and sets `n`.
    let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
    groups.truncate(if rc < 0 { 0 } else { n.max(0) as usize });
    if !groups.contains(&gid) {
        groups.push(gid);
    }
    Some(Identity {
        name: SERVICE_USER.to_owned(),
        uid,
        groups,
    })
}

fn clock_check() -> Check {
    let clock = match Clock::from_env() {
        Ok(c) => c,
        Err(e) => return Check::fail("clock", e, "fix or unset the variable"),
    };
    let now = clock.now_ms();
    clock_verdict(now >= clock_floor_ms(), clock.trusted(now))
}

/// The clock's verdict: past this build's date, and synchronised (the daemon's rule).
fn clock_verdict(past_build: bool, trusted: bool) -> Check {
    let fix = "enable NTP (`sudo timedatectl set-ntp true`) and check `timedatectl timesync-status`; readings are held with their boot time until then";
    if !past_build {
        Check::fail("clock", "the wall clock is before this build's date", fix)
    } else if !trusted {
        Check::warn(
            "clock",
            "not synchronised by NTP since boot (the server's clock may still vouch for it at login)",
            fix,
        )
    } else {
        Check::ok(
            "clock",
            "synchronised (or no NTP client to ask) and past this build's date",
        )
    }
}

fn disk_check(config: &Config) -> Check {
    let dir = existing_ancestor(&config.queue.path);
    let Some((free, total)) = free_space(&dir) else {
        return Check::warn(
            "disk",
            format!("cannot read the free space of {}", dir.display()),
            "check that the queue's directory exists and is readable",
        );
    };
    let db = std::fs::metadata(&config.queue.path)
        .map(|m| m.len())
        .unwrap_or(0);
    disk_verdict(&dir, free, total, config.queue.max_bytes, db)
}

/// Free space's verdict: fail when writes are about to fail, warn when little is left or
/// the queue may grow (to `queue.max_bytes`) beyond what is free.
fn disk_verdict(dir: &Path, free: u64, total: u64, max_bytes: u64, db: u64) -> Check {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1_048_576.0);
    let detail = format!("{} free of {} at {}", mib(free), mib(total), dir.display());
    let fix = "free space there, or move queue.path to a larger filesystem; readings are dropped when the queue cannot be written";
    if free < FREE_FAIL {
        Check::fail("disk", detail, fix)
    } else if free < FREE_WARN {
        Check::warn("disk", format!("{detail}: little left"), fix)
    } else if max_bytes > 0 && free < max_bytes.saturating_sub(db) {
        Check::warn(
            "disk",
            format!(
                "{detail}: less than queue.max_bytes ({}) allows the queue to grow",
                mib(max_bytes)
            ),
            "lower queue.max_bytes below the free space, or free space",
        )
    } else {
        Check::ok("disk", detail)
    }
}

fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent.to_path_buf(),
            None => break,
        }
    }
    if p.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        p
    }
}

/// Free bytes (for an unprivileged user) and total bytes of the filesystem holding `dir`.
fn free_space(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we own; `c` is a valid C string.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return None;
        }
        #[allow(clippy::useless_conversion)]
        let frsize = u64::from(s.f_frsize);
        #[allow(clippy::useless_conversion)]
        Some((
            u64::from(s.f_bavail) * frsize,
            u64::from(s.f_blocks) * frsize,
        ))
    }
}

fn queue_check(config: &Config) -> Check {
    let path = &config.queue.path;
    if !path.exists() {
        return Check::warn(
            "queue",
            format!("no queue at {} yet", path.display()),
            "it is created when the gateway first runs: `sudo systemctl start profilo-gateway`",
        );
    }
    match super::queue::current_stats(path) {
        Ok(stats) => queue_verdict(&stats, crate::reading::unix_ms(SystemTime::now())),
        Err(e) => Check::fail(
            "queue",
            super::error_report(&e),
            "the service user must own the queue and its directory (StateDirectory=)",
        ),
    }
}

/// The queue's verdict: dead letters, drops and a stale backlog are warnings.
fn queue_verdict(s: &Stats, now_ms: i64) -> Check {
    let oldest = crate::metrics::parse_ms(s.oldest_captured_at.as_deref())
        .filter(|_| s.pending > 0)
        .map(|ms| Duration::from_millis(u64::try_from(now_ms - ms).unwrap_or(0)));
    let age = oldest
        .map(|d| {
            format!(
                " (oldest {} old)",
                humantime::format_duration(Duration::from_secs(d.as_secs()))
            )
        })
        .unwrap_or_default();
    let mut detail = format!(
        "{} pending{age}, {} dead, {} dropped ever, {} uploaded ever",
        s.pending, s.dead, s.dropped_total, s.uploaded_total
    );
    if let Some(e) = &s.last_error {
        detail.push_str(&format!("; last error: {e}"));
    }
    if s.dead > 0 {
        Check::warn(
            "queue",
            detail,
            "the server refused some readings for good: `queue dead` shows why; `queue retry-dead` once fixed",
        )
    } else if s.dropped_total > 0 {
        Check::warn(
            "queue",
            detail,
            "readings were dropped (queue full or not writable): raise queue.max_readings / max_bytes, free disk space, or fix uploads",
        )
    } else if oldest.is_some_and(|d| d > BACKLOG_WARN) {
        Check::warn(
            "queue",
            detail,
            "uploads are behind: see the login check, then `queue stats --watch`",
        )
    } else {
        Check::ok("queue", detail)
    }
}

/// `systemctl is-active`'s answer for the unit, when systemd runs this machine.
fn systemctl_is_active() -> Option<String> {
    if !Path::new("/run/systemd/system").exists() {
        return None;
    }
    let out = std::process::Command::new("systemctl")
        .args(["is-active", SERVICE_UNIT])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn service_check(is_active: Option<String>) -> Check {
    let name = "service";
    match is_active.as_deref() {
        None => Check::ok(name, "systemd does not run this machine: not checked"),
        Some("active") => Check::ok(name, format!("{SERVICE_UNIT} is active")),
        Some("failed") => Check::fail(
            name,
            format!("{SERVICE_UNIT} failed"),
            "`journalctl -u profilo-gateway -e` shows why; then `sudo systemctl restart profilo-gateway`",
        ),
        Some(state) => Check::warn(
            name,
            format!("{SERVICE_UNIT} is {state}"),
            "start it: `sudo systemctl enable --now profilo-gateway`",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
