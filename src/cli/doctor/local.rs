//! The checks of the gateway itself: its sensors and I2C buses, its clock, the queue's
//! disk and backlog, and the systemd service.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Check, BACKLOG_WARN, FREE_FAIL, FREE_WARN, I2C_DEV_MAJOR, SERVICE_UNIT, SERVICE_USER};
use crate::clock::{clock_floor_ms, Clock};
use crate::config::Config;
use crate::queue::health::free_space;
use crate::queue::Stats;
use crate::sensors::i2c::BusLocation;

pub(super) fn sensor_checks(config: &Config) -> Vec<Check> {
    let results = match super::super::sensors::read_each(&config.sensors) {
        Ok(r) => r,
        Err(e) => {
            return vec![Check::fail(
                "sensors",
                super::super::error_report(&e),
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
pub(super) struct Identity {
    name: String,
    uid: u32,
    groups: Vec<u32>,
}

pub(super) fn i2c_checks(config: &Config) -> Vec<Check> {
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
pub(super) fn bus_check(
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
pub(super) fn may_read_write(mode: u32, owner: u32, group: u32, uid: u32, groups: &[u32]) -> bool {
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

pub(super) fn accessible(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) == 0 }
}

/// The packaged service's user and its groups, when it exists on this machine.
pub(super) fn service_identity() -> Option<Identity> {
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

pub(super) fn clock_check() -> Check {
    let clock = match Clock::from_env() {
        Ok(c) => c,
        Err(e) => return Check::fail("clock", e, "fix or unset the variable"),
    };
    let now = clock.now_ms();
    clock_verdict(now >= clock_floor_ms(), clock.trusted(now))
}

/// The clock's verdict: past this build's date, and synchronised (the daemon's rule).
pub(super) fn clock_verdict(past_build: bool, trusted: bool) -> Check {
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

pub(super) fn disk_check(config: &Config) -> Check {
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
pub(super) fn disk_verdict(dir: &Path, free: u64, total: u64, max_bytes: u64, db: u64) -> Check {
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

pub(super) fn existing_ancestor(path: &Path) -> PathBuf {
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

pub(super) fn queue_check(config: &Config) -> Check {
    let path = &config.queue.path;
    if !path.exists() {
        return Check::warn(
            "queue",
            format!("no queue at {} yet", path.display()),
            "it is created when the gateway first runs: `sudo systemctl start profilo-gateway`",
        );
    }
    match super::super::queue::current_stats(path) {
        Ok(stats) => queue_verdict(&stats, crate::reading::unix_ms(SystemTime::now())),
        Err(e) => Check::fail(
            "queue",
            super::super::error_report(&e),
            "the service user must own the queue and its directory (StateDirectory=)",
        ),
    }
}

/// The queue's verdict: dead letters, drops and a stale backlog are warnings.
pub(super) fn queue_verdict(s: &Stats, now_ms: i64) -> Check {
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
pub(super) fn systemctl_is_active() -> Option<String> {
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

pub(super) fn service_check(is_active: Option<String>) -> Check {
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
