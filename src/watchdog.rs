//! The watchdog: fed only while the daemon's tasks make progress.
//!
//! - [`Heartbeat`] is a cheap clone handed to each long-running task (sampler,
//!   uploader); the task calls [`Heartbeat::beat`] at every turn of its loop,
//!   **including idle waits and backoff sleeps** (wake at least every
//!   `stall_after / 2` to beat), so "no beat for `stall_after`" really means
//!   "stuck". [`Stop::sleep_until`] is that wait for a thread.
//!   The queue thread has one too (`queue::writer`), fed only while its writes work.
//! - [`StallTracker`] is the pure verdict: which tasks stalled, which recovered.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::systemd::Notifier;

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

/// A waiting task beats at least this often, so a long wait never looks like a stall.
const BEAT_WHILE_WAITING: Duration = Duration::from_secs(1);

/// A stop request for a thread (the sampler, a sensor's reader), and the one wait that
/// honours it. Cheap to clone; clones share one request, which is never withdrawn.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    requested: Arc<(Mutex<bool>, Condvar)>,
}

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every holder to stop; wakes those waiting in [`Stop::sleep_until`].
    pub fn stop(&self) {
        let (flag, woken) = &*self.requested;
        *flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
        woken.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        *self
            .requested
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleeps until `until`, beating `heartbeat` (when given) at least every second so a
    /// long wait never looks like a stall; true when a stop was asked for, at once if it
    /// already was.
    pub fn sleep_until(&self, until: std::time::Instant, heartbeat: Option<&Heartbeat>) -> bool {
        let (flag, woken) = &*self.requested;
        let mut stopped = flag.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if *stopped {
                return true;
            }
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            if let Some(heartbeat) = heartbeat {
                heartbeat.beat();
            }
            stopped = woken
                .wait_timeout(stopped, left.min(BEAT_WHILE_WAITING))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systemd::fake::FakeSystemd;

    #[test]
    fn stop_wakes_a_sleeper_and_a_long_sleep_keeps_beating() {
        let stop = Stop::new();
        let hb = Heartbeat::new();
        let t0 = std::time::Instant::now();
        // Nothing asked: the sleep runs to its end, beating on the way.
        assert!(!stop.sleep_until(t0 + Duration::from_millis(30), Some(&hb)));
        assert!(t0.elapsed() >= Duration::from_millis(30));
        let sleeper = {
            let stop = stop.clone();
            let hb = hb.clone();
            std::thread::spawn(move || {
                stop.sleep_until(
                    std::time::Instant::now() + Duration::from_secs(60),
                    Some(&hb),
                )
            })
        };
        // Beats a second apart: well under 3 s of silence, even on a loaded machine.
        std::thread::sleep(Duration::from_secs(3));
        let silence = hb.since_last_beat(Instant::now());
        stop.stop();
        assert!(
            sleeper.join().unwrap(),
            "woken by the stop, not by the hour"
        );
        assert!(
            silence < Duration::from_millis(1_400),
            "silent for {silence:?}"
        );
        assert!(stop.is_stopped());
        // Once asked, even a sleep already due says so.
        assert!(stop.sleep_until(t0, None));
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
