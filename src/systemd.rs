//! systemd integration: readiness and status notification, and a watchdog that
//! is fed only while the daemon's tasks make progress.
//!
//! - [`Notifier`] speaks the `sd_notify(3)` protocol (`READY=1`, `STATUS=...`,
//!   `STOPPING=1`, `WATCHDOG=1`) over `$NOTIFY_SOCKET`. Outside systemd (no
//!   `NOTIFY_SOCKET`) every call is a no-op, so the daemon never needs to know
//!   how it was started. The unit has `Type=notify` and `NotifyAccess=main`.
//! - [`Heartbeat`] is a cheap clone handed to each long-running task (sampler,
//!   uploader); the task calls [`Heartbeat::beat`] at every turn of its loop,
//!   **including idle waits and backoff sleeps** (wake at least every
//!   `stall_after / 2` to beat), so "no beat for `stall_after`" really means
//!   "stuck".
//! - [`watchdog_loop`] pings systemd at half of `WatchdogSec=` while every
//!   heartbeat is fresh. When one goes stale it logs which task stalled (once
//!   per stall) and stops pinging; systemd then kills the service after
//!   `WatchdogSec=` (SIGABRT) and `Restart=on-failure` starts it again.
//!
//! Choosing `stall_after`: longer than the longest legitimate gap between two
//! beats of any task, e.g. `2 * max(sampling.interval, backoff cap + request
//! timeout)`, and independent of `WatchdogSec=` (the time to a restart is
//! roughly `stall_after + WatchdogSec`).

use std::collections::HashSet;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sd_notify::NotifyState;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// A notification could not be delivered to systemd.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot send {message} to the systemd notify socket {socket}: {source} (the service manager may be gone; with NotifyAccess=main only the main process may notify)"
)]
pub struct NotifyError {
    /// The first line of the message, e.g. `READY=1`.
    pub message: String,
    /// `$NOTIFY_SOCKET` as given.
    pub socket: String,
    #[source]
    pub source: io::Error,
}

/// Where `$NOTIFY_SOCKET` points: a path, or (leading `@`) an abstract name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NotifySocket {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl NotifySocket {
    fn parse(value: &std::ffi::OsStr) -> Option<Self> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = value.as_bytes();
        match bytes.first() {
            None => None,
            Some(b'@') => Some(Self::Abstract(bytes[1..].to_vec())),
            Some(b'/') => Some(Self::Path(PathBuf::from(value))),
            // vsock: and relative paths are not for us; behave as outside systemd.
            Some(_) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Path(p) => p.display().to_string(),
            Self::Abstract(name) => format!("@{}", String::from_utf8_lossy(name)),
        }
    }

    fn send(&self, payload: &[u8]) -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        match self {
            Self::Path(p) => sock.connect(p)?,
            Self::Abstract(name) => connect_abstract(&sock, name)?,
        }
        let sent = sock.send(payload)?;
        if sent == payload.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "incomplete datagram",
            ))
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn connect_abstract(sock: &UnixDatagram, name: &[u8]) -> io::Result<()> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.connect_addr(&addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn connect_abstract(_sock: &UnixDatagram, _name: &[u8]) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract unix sockets exist only on Linux",
    ))
}

/// Sends `sd_notify(3)` messages; a no-op outside systemd. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<NotifySocket>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` once.
    ///
    /// The variables are left in place (no child process of ours needs them
    /// removed, and removing them is not thread-safe).
    pub fn from_env() -> Self {
        Self::from_vars(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    }

    /// [`from_env`](Self::from_env) with the values passed in (for tests).
    ///
    /// As `sd_watchdog_enabled(3)`: the watchdog is on when `watchdog_usec`
    /// is a positive integer and `watchdog_pid`, if present, is `my_pid`.
    pub fn from_vars(
        notify_socket: Option<&std::ffi::OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        my_pid: u32,
    ) -> Self {
        let socket = notify_socket.and_then(NotifySocket::parse);
        let pid_ok = match watchdog_pid {
            None => true,
            Some(p) => p.trim().parse::<u32>().ok() == Some(my_pid),
        };
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && pid_ok && socket.is_some())
            .map(Duration::from_micros);
        Self { socket, watchdog }
    }

    /// A notifier that sends to the socket at `path` (tests, or a custom setup).
    pub fn with_socket(path: impl Into<PathBuf>, watchdog: Option<Duration>) -> Self {
        Self {
            socket: Some(NotifySocket::Path(path.into())),
            watchdog,
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// True when running under systemd with a notify socket.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// `WatchdogSec=` of the unit, when the watchdog is on for this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// `READY=1`: the queue is open and sampling runs.
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.send(&[NotifyState::Ready])
    }

    /// `STATUS=...`, shown by `systemctl status`. Newlines become spaces.
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        let one_line = status.replace(['\n', '\r'], " ");
        self.send(&[NotifyState::Status(&one_line)])
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send(&[NotifyState::Stopping])
    }

    /// `WATCHDOG=1`: the keep-alive. Prefer [`watchdog_loop`], which sends it
    /// only while the tasks make progress.
    pub fn ping_watchdog(&self) -> Result<(), NotifyError> {
        self.send(&[NotifyState::Watchdog])
    }

    fn send(&self, states: &[NotifyState<'_>]) -> Result<(), NotifyError> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let mut payload = String::new();
        for state in states {
            payload.push_str(&state.to_string());
            payload.push('\n');
        }
        socket
            .send(payload.as_bytes())
            .map_err(|source| NotifyError {
                message: payload.lines().next().unwrap_or_default().to_owned(),
                socket: socket.describe(),
                source,
            })
    }
}

/// The `STATUS=` text: pending count, dead letters and the last upload.
pub fn status_line(pending: u64, dead: u64, last_upload: Option<SystemTime>) -> String {
    let last = match last_upload {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => "never".to_owned(),
    };
    format!("pending {pending}, dead {dead}, last upload {last}")
}

/// Progress marker of one task: when it last beat. Cheap to clone; clones
/// share the same marker.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    start: Instant,
    /// Milliseconds from `start` (monotonic, tokio's clock) to the last beat.
    last_ms: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    /// A heartbeat whose first beat is now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records progress now.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    /// Records progress at `now` (for tests that inject the time).
    pub fn beat_at(&self, now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.start).as_millis())
            .unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When the task last beat.
    pub fn last_beat(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Time since the last beat, as seen at `now`.
    pub fn since_last_beat(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_beat())
    }
}

/// The tasks whose last beat is older than `stall_after` at `now`, with their
/// silence.
pub fn stalled_tasks(
    heartbeats: &[(&'static str, Heartbeat)],
    stall_after: Duration,
    now: Instant,
) -> Vec<(&'static str, Duration)> {
    heartbeats
        .iter()
        .map(|(name, hb)| (*name, hb.since_last_beat(now)))
        .filter(|(_, silence)| *silence > stall_after)
        .collect()
}

/// What changed since the previous check; pure state, no I/O.
#[derive(Debug, Default)]
pub struct StallTracker {
    reported: HashSet<&'static str>,
}

/// Result of one [`StallTracker::check`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Every task stalled now; empty means healthy (ping the watchdog).
    pub stalled: Vec<(&'static str, Duration)>,
    /// Tasks stalled now that were not at the previous check (log these).
    pub newly_stalled: Vec<(&'static str, Duration)>,
    /// Tasks that were stalled and beat again (log these).
    pub recovered: Vec<&'static str>,
}

impl Verdict {
    /// True when every task made progress within `stall_after`.
    pub fn healthy(&self) -> bool {
        self.stalled.is_empty()
    }
}

impl StallTracker {
    /// Compares the heartbeats with `now`.
    pub fn check(
        &mut self,
        heartbeats: &[(&'static str, Heartbeat)],
        stall_after: Duration,
        now: Instant,
    ) -> Verdict {
        let stalled = stalled_tasks(heartbeats, stall_after, now);
        let newly_stalled: Vec<_> = stalled
            .iter()
            .filter(|(name, _)| !self.reported.contains(name))
            .copied()
            .collect();
        let recovered: Vec<_> = self
            .reported
            .iter()
            .filter(|name| !stalled.iter().any(|(s, _)| s == *name))
            .copied()
            .collect();
        for name in &recovered {
            self.reported.remove(name);
        }
        for (name, _) in &newly_stalled {
            self.reported.insert(name);
        }
        Verdict {
            stalled,
            newly_stalled,
            recovered,
        }
    }
}

/// Feeds the systemd watchdog while every heartbeat is fresh; returns when
/// `cancel` fires.
///
/// Checks (and pings) at half the watchdog interval; without a watchdog it
/// still checks every `stall_after / 2` so that a stall shows in the log.
pub async fn watchdog_loop(
    notifier: Notifier,
    heartbeats: Vec<(&'static str, Heartbeat)>,
    stall_after: Duration,
    cancel: CancellationToken,
) {
    let watchdog = notifier.watchdog_interval();
    let period = watchdog
        .map(|w| w / 2)
        .unwrap_or(stall_after / 2)
        .max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tracker = StallTracker::default();
    let mut ping_failed = false;

    tracing::debug!(
        ?watchdog,
        ?period,
        ?stall_after,
        tasks = ?heartbeats.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "watchdog loop started"
    );
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let verdict = tracker.check(&heartbeats, stall_after, Instant::now());
        for (task, silence) in &verdict.newly_stalled {
            tracing::error!(
                task = *task,
                silent_ms = u64::try_from(silence.as_millis()).unwrap_or(u64::MAX),
                stall_after_ms = u64::try_from(stall_after.as_millis()).unwrap_or(u64::MAX),
                "task {task} made no progress for {}; no longer feeding the systemd watchdog, which will restart the service",
                humantime::format_duration(truncate_ms(*silence)),
            );
        }
        for task in &verdict.recovered {
            tracing::warn!(task = *task, "task {task} is making progress again");
        }
        if verdict.healthy() && watchdog.is_some() {
            match notifier.ping_watchdog() {
                Ok(()) => ping_failed = false,
                Err(e) if !ping_failed => {
                    ping_failed = true;
                    tracing::warn!(error = %e, "watchdog keep-alive failed");
                }
                Err(e) => tracing::debug!(error = %e, "watchdog keep-alive failed again"),
            }
        }
    }
    tracing::debug!("watchdog loop stopped");
}

fn truncate_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn outside_systemd_everything_is_a_no_op() {
        let n = Notifier::from_vars(None, Some("30000000"), None, 42);
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.ready().unwrap();
        n.status("pending 3").unwrap();
        n.ping_watchdog().unwrap();
        n.stopping().unwrap();
        Notifier::disabled().ready().unwrap();
    }

    #[test]
    fn watchdog_interval_follows_sd_watchdog_enabled() {
        let sock = Some(OsStr::new("/run/systemd/notify"));
        let n = Notifier::from_vars(sock, Some("30000000"), Some("42"), 42);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(30)));
        // WATCHDOG_PID absent: the watchdog is meant for us.
        let n = Notifier::from_vars(sock, Some("500000"), None, 42);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_millis(500)));
        // Meant for another process (we are a child that inherited the env).
        let n = Notifier::from_vars(sock, Some("30000000"), Some("41"), 42);
        assert_eq!(n.watchdog_interval(), None);
        assert!(n.is_enabled());
        for bad in ["0", "", "x", "-5"] {
            let n = Notifier::from_vars(sock, Some(bad), Some("42"), 42);
            assert_eq!(n.watchdog_interval(), None, "WATCHDOG_USEC={bad:?}");
        }
        let n = Notifier::from_vars(sock, None, Some("42"), 42);
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn notify_socket_forms() {
        assert_eq!(NotifySocket::parse(OsStr::new("")), None);
        assert_eq!(NotifySocket::parse(OsStr::new("relative")), None);
        assert_eq!(
            NotifySocket::parse(OsStr::new("/run/systemd/notify")),
            Some(NotifySocket::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            NotifySocket::parse(OsStr::new("@/org/freedesktop/systemd1/notify")),
            Some(NotifySocket::Abstract(
                b"/org/freedesktop/systemd1/notify".to_vec()
            ))
        );
    }

    struct FakeSystemd {
        _dir: tempfile::TempDir,
        path: PathBuf,
        sock: UnixDatagram,
    }

    impl FakeSystemd {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify");
            let sock = UnixDatagram::bind(&path).unwrap();
            sock.set_nonblocking(true).unwrap();
            Self {
                _dir: dir,
                path,
                sock,
            }
        }

        fn messages(&self) -> Vec<String> {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = self.sock.recv(&mut buf) {
                out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            out
        }

        fn pings(&self) -> usize {
            self.messages()
                .iter()
                .filter(|m| m.as_str() == "WATCHDOG=1\n")
                .count()
        }
    }

    #[test]
    fn messages_follow_the_protocol() {
        let systemd = FakeSystemd::new();
        let n = Notifier::with_socket(&systemd.path, None);
        n.ready().unwrap();
        n.status("pending 3,\nlast upload never").unwrap();
        n.ping_watchdog().unwrap();
        n.stopping().unwrap();
        assert_eq!(
            systemd.messages(),
            [
                "READY=1\n",
                "STATUS=pending 3, last upload never\n",
                "WATCHDOG=1\n",
                "STOPPING=1\n"
            ]
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_socket_is_reached() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("profilo-gateway-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let value = format!("@{name}");
        let n = Notifier::from_vars(Some(OsStr::new(&value)), None, None, 1);
        n.ready().unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\n");
    }

    #[test]
    fn an_absent_socket_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::with_socket(dir.path().join("gone"), None);
        let e = n.ready().unwrap_err();
        let text = e.to_string();
        assert!(text.contains("READY=1"), "{text}");
        assert!(text.contains("gone"), "{text}");
    }

    #[test]
    fn status_line_reads_well() {
        assert_eq!(
            status_line(12, 0, None),
            "pending 12, dead 0, last upload never"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            status_line(0, 2, Some(t)),
            "pending 0, dead 2, last upload 2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn heartbeat_clones_share_progress() {
        let hb = Heartbeat::new();
        let t0 = hb.last_beat();
        let clone = hb.clone();
        clone.beat_at(t0 + Duration::from_secs(5));
        assert_eq!(
            hb.since_last_beat(t0 + Duration::from_secs(6)),
            Duration::from_secs(1)
        );
        // An older beat never moves the marker backwards.
        hb.beat_at(t0 + Duration::from_secs(2));
        assert!(hb.last_beat() >= t0 + Duration::from_secs(5));
    }

    #[test]
    fn tracker_reports_each_stall_once_and_recovery() {
        let t0 = Instant::now();
        let sampler = Heartbeat::new();
        let uploader = Heartbeat::new();
        let hbs = vec![("sampler", sampler.clone()), ("uploader", uploader.clone())];
        let stall = Duration::from_secs(10);
        let mut tracker = StallTracker::default();
        let at = |s: u64| t0 + Duration::from_secs(s);

        let v = tracker.check(&hbs, stall, at(5));
        assert!(v.healthy());
        assert_eq!(v, Verdict::default());

        // The sampler keeps beating, the uploader hangs.
        sampler.beat_at(at(9));
        let v = tracker.check(&hbs, stall, at(12));
        assert!(!v.healthy());
        assert_eq!(v.stalled.len(), 1);
        assert_eq!(v.stalled[0].0, "uploader");
        assert_eq!(v.newly_stalled.len(), 1);
        assert!(v.recovered.is_empty());

        sampler.beat_at(at(14));
        let v = tracker.check(&hbs, stall, at(15));
        assert!(!v.healthy());
        assert!(v.newly_stalled.is_empty(), "reported once: {v:?}");

        // Both stalled; only the sampler is new.
        let v = tracker.check(&hbs, stall, at(30));
        assert_eq!(v.stalled.len(), 2);
        assert_eq!(
            v.newly_stalled.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["sampler"]
        );

        // Both beat again.
        sampler.beat_at(at(31));
        uploader.beat_at(at(31));
        let v = tracker.check(&hbs, stall, at(32));
        assert!(v.healthy());
        let mut rec = v.recovered.clone();
        rec.sort_unstable();
        assert_eq!(rec, ["sampler", "uploader"]);

        // A later stall is reported again.
        let v = tracker.check(&hbs, stall, at(50));
        assert_eq!(v.newly_stalled.len(), 2);
    }

    #[test]
    fn exactly_stall_after_is_not_a_stall() {
        let t0 = Instant::now();
        let hb = Heartbeat::new();
        hb.beat_at(t0);
        let hbs = [("t", hb)];
        assert!(
            stalled_tasks(&hbs, Duration::from_secs(1), t0 + Duration::from_secs(1)).is_empty()
        );
        assert_eq!(
            stalled_tasks(
                &hbs,
                Duration::from_secs(1),
                t0 + Duration::from_millis(1001)
            )
            .len(),
            1
        );
        assert!(stalled_tasks(&[], Duration::ZERO, t0 + Duration::from_secs(9)).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn pings_only_while_every_task_progresses() {
        let systemd = FakeSystemd::new();
        let notifier = Notifier::with_socket(&systemd.path, Some(Duration::from_secs(2)));
        let sampler = Heartbeat::new();
        let uploader = Heartbeat::new();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(watchdog_loop(
            notifier,
            vec![("sampler", sampler.clone()), ("uploader", uploader.clone())],
            Duration::from_secs(3),
            cancel.clone(),
        ));

        // Both tasks progress for 10 s: a ping every second (half of 2 s).
        for _ in 0..20 {
            sampler.beat();
            uploader.beat();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let pings = systemd.pings();
        assert!((9..=11).contains(&pings), "pings while healthy: {pings}");

        // The uploader stalls; the sampler goes on. Pings stop once the
        // uploader has been silent for more than 3 s.
        for _ in 0..8 {
            sampler.beat();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let pings = systemd.pings();
        assert!((2..=4).contains(&pings), "pings until the stall: {pings}");
        for _ in 0..10 {
            sampler.beat();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(systemd.pings(), 0, "no ping while the uploader is stalled");

        // It recovers: pings resume.
        for _ in 0..6 {
            sampler.beat();
            uploader.beat();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(systemd.pings() >= 2);

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the loop stops on cancel")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_watchdog_nothing_is_sent() {
        let systemd = FakeSystemd::new();
        let notifier = Notifier::with_socket(&systemd.path, None);
        let cancel = CancellationToken::new();
        let hb = Heartbeat::new();
        let task = tokio::spawn(watchdog_loop(
            notifier,
            vec![("sampler", hb)],
            Duration::from_secs(1),
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(systemd.messages().is_empty());
        cancel.cancel();
        task.await.unwrap();
    }
}
