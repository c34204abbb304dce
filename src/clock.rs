//! The device's wall clock, with an optional skew for tests: `PROFILO_GATEWAY_CLOCK_SKEW`
//! (e.g. `+365d`, `-8760h`) shifts what the whole process believes the time is, which is
//! how the tests reproduce a Pi that booted without a real-time clock, without touching
//! the machine's clock.
//!
//! It also holds every other clock fact the daemon needs: the boot id, CLOCK_BOOTTIME
//! and this build's date as the floor below which the wall clock cannot be right.
//!
//! It also says whether the wall clock can be trusted for capture times
//! ([`Clock::trusted`]): not before this build's date, and not while the machine's NTP
//! client has not synchronised it since boot. The second case is a Pi that booted
//! offline: systemd-timesyncd (or fake-hwclock) restored the time of the last shutdown,
//! which is past the build date but hours or days too early until NTP steps it.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const SKEW_ENV: &str = "PROFILO_GATEWAY_CLOCK_SKEW";
/// Test hook, like the skew: `unsynced` or `synced` stands for the NTP client's answer
/// (`PROFILO_GATEWAY_CLOCK_SYNC=unsynced`: not synchronised since boot).
pub const SYNC_ENV: &str = "PROFILO_GATEWAY_CLOCK_SYNC";

/// systemd-timesyncd (Raspberry Pi OS's NTP client) runs with this directory and touches
/// `synchronized` in it at its first synchronisation after boot (/run is emptied at boot).
/// Plain files, so the hardened unit can read them (`ProtectClock=` denies `adjtimex`).
const TIMESYNCD_DIR: &str = "/run/systemd/timesync";
const TIMESYNCD_SYNCED: &str = "/run/systemd/timesync/synchronized";
/// Where other NTP clients leave a mark; with them the kernel's flag (`adjtimex`) tells.
/// Without any client the kernel says "unsynchronised" for ever (containers, some
/// laptops), and trusting that flag there would hold every reading.
const OTHER_NTP_CLIENT_MARKS: [&str; 5] = [
    "/run/chrony",
    "/var/lib/chrony",
    "/run/ntpd.pid",
    "/var/lib/ntp",
    "/var/lib/ntpsec",
];

/// The server's clock (a fresh token's `iat`) within this much of ours vouches for ours:
/// `iat` has a one-second resolution and the answer takes a moment to arrive.
pub const SERVER_AGREEMENT_MS: i64 = 2_000;
/// A token whose request was out longer than this tells too little of the server's clock.
const MAX_VOUCHING_ROUND_TRIP_MS: i64 = 10_000;

/// The NTP client's answer, asked at most once a second (the sampler may ask 1000 times).
static NTP_ASKED_AT_MS: AtomicI64 = AtomicI64::new(i64::MIN);
static NTP_UNSYNCED: AtomicBool = AtomicBool::new(false);

/// Where the clock's synchronisation since boot is learned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum SyncSource {
    /// Only the build-date floor counts (tests, and the library's default).
    #[default]
    FloorOnly,
    /// The machine's NTP client, looked at each time (it may start after the daemon).
    Ntp,
    /// `PROFILO_GATEWAY_CLOCK_SYNC`: as if an NTP client ran and the kernel answered so.
    Forced { unsynced: bool },
}

/// Whether the server's clock, at the last fresh token, agreed with ours: learned by the
/// token manager, read wherever a capture time is judged. Clones share one answer; each
/// [`Clock`] made anew starts with its own (not vouched for), so in-process tests never
/// share it.
#[derive(Debug, Clone, Default)]
pub struct ClockTrust {
    server_agrees: Arc<AtomicBool>,
}

impl ClockTrust {
    /// The token manager's reading of each fresh token: the server issued it at `iat_s`
    /// (whole seconds of its clock) while the request was out, from `sent_ms` to
    /// `received_ms` of ours. A round trip too long to tell leaves the last verdict.
    pub fn note_server_clock(&self, iat_s: i64, sent_ms: i64, received_ms: i64) {
        if let Some(agrees) = server_agrees(iat_s, sent_ms, received_ms) {
            self.server_agrees.store(agrees, Ordering::Relaxed);
        }
    }

    /// Whether the server's clock vouched for ours at the last fresh token.
    pub fn server_agrees(&self) -> bool {
        self.server_agrees.load(Ordering::Relaxed)
    }
}

/// The wall clock as the daemon sees it. Cheap to clone; clones share the [`ClockTrust`],
/// so the daemon makes one and hands clones to the token manager, the sampler and the
/// queue thread.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Milliseconds added to the real clock.
    skew_ms: i64,
    sync: SyncSource,
    trust: ClockTrust,
}

impl Clock {
    pub fn system() -> Self {
        Clock::default()
    }

    pub fn with_skew_ms(skew_ms: i64) -> Self {
        Clock {
            skew_ms,
            ..Clock::default()
        }
    }

    /// A clock whose NTP client has not synchronised it since boot (a Pi booted offline):
    /// trusted only once the server vouches for it.
    #[cfg(test)]
    pub(crate) fn unsynchronised() -> Self {
        Clock {
            sync: SyncSource::Forced { unsynced: true },
            ..Clock::default()
        }
    }

    /// The clock the daemon uses: the system clock, skewed when `PROFILO_GATEWAY_CLOCK_SKEW`
    /// is set, asking the machine's NTP client whether it synchronised the clock since boot.
    pub fn from_env() -> Result<Self, String> {
        let skew_ms = match std::env::var(SKEW_ENV) {
            Ok(v) if !v.trim().is_empty() => parse_skew(&v).ok_or_else(|| {
                format!("{SKEW_ENV}={v:?}: expected a signed duration like +365d or -2h")
            })?,
            _ => 0,
        };
        let sync = match std::env::var(SYNC_ENV).as_deref().map(str::trim) {
            Ok("unsynced") => SyncSource::Forced { unsynced: true },
            Ok("synced") => SyncSource::Forced { unsynced: false },
            Ok("") | Err(_) => SyncSource::Ntp,
            Ok(other) => {
                return Err(format!(
                    "{SYNC_ENV}={other:?}: expected `synced` or `unsynced`"
                ))
            }
        };
        Ok(Clock {
            skew_ms,
            sync,
            trust: ClockTrust::default(),
        })
    }

    /// Whether a capture at `at_ms` (this clock's time, taken now) can be trusted: past the
    /// build date, and the clock synchronised or vouched for by the server.
    pub fn trusted(&self, at_ms: i64) -> bool {
        let unsynced = match self.sync {
            SyncSource::FloorOnly => false,
            SyncSource::Forced { unsynced } => unsynced,
            SyncSource::Ntp => ntp_unsynced(self.now_ms()),
        };
        trust(
            at_ms,
            clock_floor_ms(),
            unsynced,
            self.trust.server_agrees(),
        )
    }

    /// What the server's clock says of this one; shared by every clone.
    pub fn trust(&self) -> &ClockTrust {
        &self.trust
    }

    pub fn now(&self) -> SystemTime {
        let real = SystemTime::now();
        let shift = Duration::from_millis(self.skew_ms.unsigned_abs());
        if self.skew_ms >= 0 {
            real + shift
        } else {
            real.checked_sub(shift).unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }

    pub fn now_ms(&self) -> i64 {
        crate::reading::unix_ms(self.now())
    }

    /// Whether the machine's NTP client synchronised the clock since boot; `None` when no
    /// NTP client is known (and for the library's default clock). Said with certificate
    /// date errors: an unsynchronised clock is the likelier culprit.
    pub fn synchronised(&self) -> Option<bool> {
        match self.sync {
            SyncSource::FloorOnly => None,
            SyncSource::Forced { unsynced } => Some(!unsynced),
            SyncSource::Ntp => {
                let exists = |p: &str| std::path::Path::new(p).exists();
                let client =
                    exists(TIMESYNCD_DIR) || OTHER_NTP_CLIENT_MARKS.iter().any(|p| exists(p));
                client.then(|| !ntp_unsynced(self.now_ms()))
            }
        }
    }
}

impl crate::tls::TimeSource for Clock {
    fn now(&self) -> SystemTime {
        Clock::now(self)
    }
    fn synchronised(&self) -> Option<bool> {
        Clock::synchronised(self)
    }
}

/// Below this wall-clock time the clock cannot be right: the binary was built after it.
/// A Pi without a real-time clock boots at its last saved time, or at 1970.
/// Parsed once: `Clock::trusted` asks for it at every reading.
pub fn clock_floor_ms() -> i64 {
    static FLOOR_MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *FLOOR_MS.get_or_init(|| {
        let built: i64 = option_env!("PROFILO_GATEWAY_BUILD_UNIX")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (built - 86_400) * 1000
    })
}

/// Milliseconds of CLOCK_BOOTTIME: monotonic, counts suspend, restarts at boot.
pub fn boottime_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    // time_t and c_long are 32 bits on armv7: widen portably.
    #[allow(clippy::useless_conversion)]
    let (secs, nanos) = (i64::from(ts.tv_sec), i64::from(ts.tv_nsec));
    secs * 1000 + nanos / 1_000_000
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Whether the server's clock agrees with ours: the second it issued the token in
/// (`iat_s`) is, within `SERVER_AGREEMENT_MS`, inside the time the request was out.
/// Judged against the whole round trip, so that a slow answer (a loaded server or link)
/// is not taken for a wrong clock; `None` when the round trip is too long (or negative:
/// the clock stepped meanwhile) to tell.
fn server_agrees(iat_s: i64, sent_ms: i64, received_ms: i64) -> Option<bool> {
    let round_trip = received_ms.checked_sub(sent_ms)?;
    if !(0..=MAX_VOUCHING_ROUND_TRIP_MS).contains(&round_trip) {
        return None;
    }
    let issued_from = iat_s.saturating_mul(1000);
    let issued_to = issued_from.saturating_add(1000);
    Some(
        issued_to > sent_ms.saturating_sub(SERVER_AGREEMENT_MS)
            && issued_from <= received_ms.saturating_add(SERVER_AGREEMENT_MS),
    )
}

/// The trust rule, apart from where its inputs come from.
fn trust(at_ms: i64, floor_ms: i64, kernel_unsynced: bool, server_agrees: bool) -> bool {
    at_ms >= floor_ms && (!kernel_unsynced || server_agrees)
}

/// Whether the machine's NTP client has not synchronised the clock since boot, asked at
/// most once a second: timesyncd's files, else the kernel's flag where another client
/// runs, else no (no client: the build-date floor alone judges).
fn ntp_unsynced(now_ms: i64) -> bool {
    let asked = NTP_ASKED_AT_MS.load(Ordering::Relaxed);
    if now_ms.saturating_sub(asked) < 1_000 && asked <= now_ms {
        return NTP_UNSYNCED.load(Ordering::Relaxed);
    }
    let exists = |p: &str| std::path::Path::new(p).exists();
    let unsynced = if exists(TIMESYNCD_DIR) {
        !exists(TIMESYNCD_SYNCED)
    } else if OTHER_NTP_CLIENT_MARKS.iter().any(|p| exists(p)) {
        kernel_unsynced()
    } else {
        false
    };
    NTP_UNSYNCED.store(unsynced, Ordering::Relaxed);
    NTP_ASKED_AT_MS.store(now_ms, Ordering::Relaxed);
    unsynced
}

/// The kernel's flag: `adjtimex` answers TIME_ERROR while the clock is unsynchronised.
/// Denied under the shipped unit (`ProtectClock=`: EPERM, -1), which reads as "not known
/// to be unsynchronised": the floor alone judges then.
fn kernel_unsynced() -> bool {
    // SAFETY: with `modes` zeroed adjtimex only reads the kernel's state into the struct,
    // which this function owns.
    unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        libc::adjtimex(&mut tx) == libc::TIME_ERROR
    }
}

fn parse_skew(v: &str) -> Option<i64> {
    let v = v.trim();
    let (sign, rest) = match v.as_bytes().first()? {
        b'-' => (-1, &v[1..]),
        b'+' => (1, &v[1..]),
        _ => (1, v),
    };
    let d = humantime::parse_duration(rest.trim()).ok()?;
    Some(sign * i64::try_from(d.as_millis()).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signed_skews() {
        assert_eq!(parse_skew("+365d"), Some(365 * 86_400_000));
        assert_eq!(parse_skew("-1h"), Some(-3_600_000));
        assert_eq!(parse_skew("90s"), Some(90_000));
        assert_eq!(parse_skew("later"), None);
    }

    #[test]
    fn trust_needs_the_floor_and_a_synchronised_or_vouched_for_clock() {
        let floor = 1_000;
        assert!(!trust(999, floor, false, true), "before the build: never");
        assert!(
            trust(1_000, floor, false, false),
            "no NTP client: the floor alone"
        );
        assert!(
            !trust(5_000, floor, true, false),
            "restored at boot, not synchronised yet"
        );
        assert!(trust(5_000, floor, true, true), "the server vouches for it");
    }

    #[test]
    fn the_library_default_trusts_the_floor_alone() {
        // Tests and tools get the floor rule whatever this machine's kernel says.
        let clock = Clock::system();
        assert!(clock.trusted(clock.now_ms()));
        assert!(!clock.trusted(0));
    }

    #[test]
    fn server_trust_is_shared_by_clones_and_by_nothing_else() {
        let clock = Clock::system();
        let clone = clock.clone();
        let other = Clock::system();
        assert!(!clone.trust().server_agrees(), "not vouched for at start");
        clock.trust().note_server_clock(100, 100_200, 100_300);
        assert!(
            clone.trust().server_agrees(),
            "a clone sees the token manager's answer"
        );
        assert!(!other.trust().server_agrees(), "another clock does not");
        clock.trust().note_server_clock(100, 200_000, 200_300);
        assert!(
            !clone.trust().server_agrees(),
            "a later disagreement withdraws it"
        );
        clock.trust().note_server_clock(100, 100_000, 160_000);
        assert!(
            !clone.trust().server_agrees(),
            "a minute-long round trip tells nothing: the last verdict stands"
        );
    }

    #[test]
    fn the_server_agrees_when_its_issue_second_falls_in_the_round_trip() {
        let s = SERVER_AGREEMENT_MS;
        // iat 100 s: issued in [100 000, 101 000) ms of the server's clock.
        assert_eq!(server_agrees(100, 100_400, 100_450), Some(true), "prompt");
        // A loaded server answers 4 s after it issued the token: still our clock.
        assert_eq!(
            server_agrees(100, 100_900, 105_000),
            Some(true),
            "slow answer"
        );
        assert_eq!(
            server_agrees(100, 101_000 + s, 101_100 + s),
            Some(false),
            "issued more than {s} ms before the request left: the server is behind"
        );
        assert_eq!(
            server_agrees(100, 97_000 - s, 97_900 - s),
            Some(false),
            "issued more than {s} ms after the answer came: the server is ahead"
        );
        assert_eq!(
            server_agrees(100, 100_000 - 7_200_000, 100_050 - 7_200_000),
            Some(false),
            "restored two hours early"
        );
        assert_eq!(server_agrees(100, 100_000, 100_000 + 60_000), None);
        assert_eq!(server_agrees(100, 100_500, 100_400), None, "stepped back");
        assert_eq!(server_agrees(i64::MAX, i64::MIN, 0), None, "any claim");
        assert_eq!(server_agrees(i64::MIN, 0, 10), Some(false), "any claim");
    }

    #[test]
    fn ntp_answer_is_read_and_cached() {
        // Whatever this machine's answer, asking twice in a second gives the same one.
        let now = Clock::system().now_ms();
        assert_eq!(ntp_unsynced(now), ntp_unsynced(now + 10));
    }

    #[test]
    fn skew_shifts_now() {
        let real = Clock::system().now_ms();
        let ahead = Clock::with_skew_ms(86_400_000).now_ms();
        assert!((ahead - real - 86_400_000).abs() < 1000);
    }
}
