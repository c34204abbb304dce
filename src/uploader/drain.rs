//! The drain as a pure state machine (in the manner of rumqttc's `MqttState`): which
//! reading to send next, what an answer settles, when to pause. No HTTP, no SQLite, no
//! clock: the event loop (`mod.rs`) hands in every event with the time it happened and does
//! what the drain says.
//!
//! - A reading leaves the queue only once acknowledged (or refused for good) and that
//!   settlement is committed; no send starts while `batch_size` readings are sent but not
//!   committed: the most a crash can make the server receive twice.
//! - A failure of one request is not an outage: that reading goes back, to be sent again
//!   no sooner than its `Retry-After` (capped at `backoff_max`) or a short jittered delay,
//!   while the others go on. Back-pressure cuts the concurrency instead.
//! - Below a concurrency of one (a fleet queueing at one server), one request is in flight
//!   and the next waits out the pause the controller sets after each answer; the wake
//!   time says when. An outage's probes keep their own timing.
//! - Only when nothing gets through (a run of failures with no success between them, or
//!   failures for a while with none) does uploading pause as a whole, then probe with one
//!   request at a time, with an exponential backoff that grows with the outage but never
//!   past an eighth of its length so far (a fleet back after a 30 s outage is back within
//!   4 s, not after half the outage). When every failure of that run came with a
//!   `Retry-After`, the pause is that long and the backoff does not grow. One success
//!   ends it.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::concurrency::{Concurrency, Mode};
use crate::backoff::Backoff;

/// Consecutive failures (no success between them) that make an outage, or two windows'
/// worth at the limit if more: with 16 in flight, 8 failures in a row come by chance once
/// in about 20 000 answers against a proxy refusing 30 % at random (0.3^8), where every
/// request of an outage fails within a round trip.
const STREAK_FAILURES: u32 = 8;
/// Or: at least two failures and no success for this long (timeouts are slow to count).
const STREAK_SILENCE: Duration = Duration::from_secs(10);
/// The longest "short" delay before a failed reading is sent again (without `Retry-After`).
const RETRY_DELAY_MAX: Duration = Duration::from_secs(1);
/// An outage's pause is at most its length so far divided by this. The next probe after
/// the server is back comes within that pause: at a quarter, a fleet's last gateway came
/// back 6-7 s after a 30 s outage, as long as the server needed for the whole backlog.
const OUTAGE_SHARE: u32 = 8;

#[derive(Debug, Clone)]
pub struct Settings {
    pub batch_size: usize,
    pub concurrency: Mode,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// What an answer was, as far as the drain is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Stored by the server.
    Accepted,
    /// Refused for good (400, 413, 415, 422): a dead letter.
    Refused { status: u16, body: String },
    /// This request failed; the others may not.
    Failed {
        retry_after: Option<Duration>,
        /// 429, 503, a timeout: the server wants less.
        back_pressure: bool,
    },
    /// Nothing can get through whatever is sent (the endpoint or the account is wrong, a
    /// fresh token refused): uploading pauses with an escalating backoff.
    Blocked,
    /// Not sent: no session until `until` (a login backing off). Sends pause till then.
    NotYet { until: Instant },
}

/// Acks and dead letters to commit to the queue.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Settle {
    pub acked: Vec<i64>,
    pub dead: Vec<(i64, u16, String)>,
}

impl Settle {
    fn len(&self) -> usize {
        self.acked.len() + self.dead.len()
    }
}

/// What the drain is doing, for `queue stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    Uploading,
    /// No session yet.
    WaitingForLogin,
    /// Nothing gets through: probing with one request after each backoff.
    BackingOff,
}

/// Uploading pauses as a whole for `wait`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pause {
    pub wait: Duration,
    /// The wait is the server's `Retry-After`, not a grown backoff.
    pub retry_after: bool,
    /// An outage begins (not a probe that failed in one).
    pub starts: bool,
}

#[derive(Debug)]
struct InFlight {
    started: Instant,
    /// Nothing else of ours was in flight when it left.
    alone: bool,
}

#[derive(Debug)]
struct Retry<T> {
    due: Instant,
    id: i64,
    item: T,
}

#[derive(Debug, Default)]
struct Streak {
    failures: u32,
    since: Option<Instant>,
    /// Every failure of the run came with a `Retry-After`: the longest.
    retry_after: Option<Duration>,
    all_retry_after: bool,
}

#[derive(Debug)]
struct Outage {
    since: Instant,
    next_probe: Instant,
    probe: Option<i64>,
}

#[derive(Debug)]
pub struct Drain<T> {
    settings: Settings,
    ready: VecDeque<(i64, T)>,
    retry: Vec<Retry<T>>,
    in_flight: HashMap<i64, InFlight>,
    answered: Settle,
    /// Answers handed over for commit, not yet on disk (`Some(0)`: an empty commit that
    /// checks whether earlier acks reached the disk).
    committing: Option<usize>,
    /// Acks whose commit failed: the queue keeps retrying them; they still count as sent
    /// and not settled.
    unsaved: usize,
    after_id: i64,
    fetching: bool,
    exhausted: bool,
    streak: Streak,
    outage: Option<Outage>,
    not_before: Option<Instant>,
    backoff: Backoff,
    concurrency: Concurrency,
    stopping: bool,
}

impl<T> Drain<T> {
    pub fn new(settings: Settings, now: Instant) -> Drain<T> {
        Drain {
            backoff: Backoff::new(settings.backoff_base, settings.backoff_max),
            concurrency: Concurrency::new(settings.concurrency, now),
            settings,
            ready: VecDeque::new(),
            retry: Vec::new(),
            in_flight: HashMap::new(),
            answered: Settle::default(),
            committing: None,
            unsaved: 0,
            after_id: 0,
            fetching: false,
            exhausted: false,
            streak: Streak::default(),
            outage: None,
            not_before: None,
            stopping: false,
        }
    }

    /// Requests that may be in flight now (`queue stats`: `upload_concurrency`).
    pub fn concurrency(&self) -> usize {
        self.concurrency.limit()
    }

    /// The running mean round trip, when measured.
    pub fn mean_rtt(&self) -> Option<Duration> {
        self.concurrency.mean_rtt()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn state(&self, now: Instant) -> State {
        if self.outage.is_some() {
            State::BackingOff
        } else if self.not_before.is_some_and(|t| t > now) {
            State::WaitingForLogin
        } else if self.holds_nothing() {
            State::Idle
        } else {
            State::Uploading
        }
    }

    fn holds_nothing(&self) -> bool {
        self.ready.is_empty()
            && self.retry.is_empty()
            && self.in_flight.is_empty()
            && self.answered.len() == 0
            && self.committing.is_none()
    }

    /// Sent and not yet committed: what a crash now could make the server receive twice.
    fn unsettled(&self) -> usize {
        self.in_flight.len() + self.answered.len() + self.committing.unwrap_or(0) + self.unsaved
    }

    /// The queue may hold more (readings were committed, or a while passed).
    pub fn more_queued(&mut self) {
        self.exhausted = false;
    }

    /// Readings to ask the queue for, oldest first, with ids above the first number; the
    /// answer goes to [`fetched`](Self::fetched) or [`fetch_failed`](Self::fetch_failed).
    pub fn wants_fetch(&mut self, now: Instant) -> Option<(i64, usize)> {
        if self.stopping || self.fetching || self.exhausted {
            return None;
        }
        // Paused: nothing is read before the next probe (a queue that cannot be read is
        // asked again then, not in a loop).
        if self.outage.as_ref().is_some_and(|o| now < o.next_probe) {
            return None;
        }
        // Enough in hand to fill every request slot: no more in memory than that.
        if !self.ready.is_empty() && self.ready.len() >= self.concurrency.limit() {
            return None;
        }
        if self.holds_nothing() {
            // Start again from the oldest: readings may have come back below the cursor
            // (dead letters retried, earlier acks that did not reach the disk).
            self.after_id = 0;
        }
        self.fetching = true;
        Some((self.after_id, self.settings.batch_size))
    }

    pub fn fetched(&mut self, batch: Vec<(i64, T)>, asked: usize) {
        self.fetching = false;
        self.exhausted = batch.len() < asked;
        if let Some((last, _)) = batch.last() {
            self.after_id = self.after_id.max(*last);
        }
        self.ready.extend(batch);
    }

    /// The queue could not be read: nothing can be sent; pause and try again.
    pub fn fetch_failed(&mut self, now: Instant) -> Pause {
        self.fetching = false;
        self.block(now)
    }

    /// The next reading to send now, if any may go.
    pub fn next_send(&mut self, now: Instant) -> Option<(i64, T)> {
        if self.stopping || self.not_before.is_some_and(|t| t > now) {
            return None;
        }
        if self.unsettled() >= self.settings.batch_size {
            return None;
        }
        let in_flight = self.in_flight.len();
        if let Some(outage) = &self.outage {
            // One probe at a time, when due; a probe of the disk first when acks are not
            // on disk (see `take_settlement`).
            if outage.probe.is_some()
                || now < outage.next_probe
                || in_flight > 0
                || self.unsaved > 0
            {
                return None;
            }
        } else if in_flight >= self.concurrency.limit()
            || self.concurrency.paced_until().is_some_and(|t| now < t)
        {
            return None;
        }
        let (id, item) = self.pick(now)?;
        if let Some(outage) = self.outage.as_mut() {
            outage.probe = Some(id);
        }
        self.in_flight.insert(
            id,
            InFlight {
                started: now,
                alone: in_flight == 0,
            },
        );
        self.concurrency.on_send(in_flight + 1);
        Some((id, item))
    }

    /// A reading due again (oldest first), else the next one from the queue.
    fn pick(&mut self, now: Instant) -> Option<(i64, T)> {
        let due = self
            .retry
            .iter()
            .enumerate()
            .filter(|(_, r)| r.due <= now)
            .min_by_key(|(_, r)| r.id)
            .map(|(i, _)| i);
        if let Some(i) = due {
            let r = self.retry.swap_remove(i);
            return Some((r.id, r.item));
        }
        self.ready.pop_front()
    }

    /// The answer to a send. `Some` when uploading now pauses as a whole.
    pub fn answered(&mut self, id: i64, item: T, answer: Answer, now: Instant) -> Option<Pause> {
        let flight = self.in_flight.remove(&id)?;
        let rtt = now.saturating_duration_since(flight.started);
        let was_probe = self.outage.as_ref().is_some_and(|o| o.probe == Some(id));
        if was_probe {
            if let Some(o) = self.outage.as_mut() {
                o.probe = None;
            }
        }
        match answer {
            Answer::Accepted | Answer::Refused { .. } => {
                self.concurrency
                    .on_answer(rtt, false, true, flight.alone, now);
                match answer {
                    Answer::Refused { status, body } => self.answered.dead.push((id, status, body)),
                    _ => self.answered.acked.push(id),
                }
                self.got_through();
                None
            }
            Answer::Failed {
                retry_after,
                back_pressure,
            } => {
                // A failure without back-pressure (a refused connection, a portal's page)
                // is no round trip of the server's.
                self.concurrency
                    .on_answer(rtt, back_pressure, false, flight.alone, now);
                let delay = match retry_after {
                    Some(ra) => ra.min(self.settings.backoff_max),
                    None => {
                        let most = self.settings.backoff_base.min(RETRY_DELAY_MAX);
                        most / 2 + (most / 2).mul_f64(fastrand::f64())
                    }
                };
                self.retry.push(Retry {
                    due: now + delay,
                    id,
                    item,
                });
                let streak_failures = STREAK_FAILURES.max(2 * self.concurrency.limit() as u32);
                let streak = &mut self.streak;
                let since = *streak.since.get_or_insert(now);
                streak.all_retry_after =
                    retry_after.is_some() && (streak.failures == 0 || streak.all_retry_after);
                streak.retry_after = streak.retry_after.max(retry_after);
                streak.failures += 1;
                if was_probe {
                    return Some(self.pause(now));
                }
                let outage = streak.failures >= streak_failures
                    || (streak.failures >= 2
                        && now.saturating_duration_since(since) >= STREAK_SILENCE);
                (outage && self.outage.is_none()).then(|| self.pause(now))
            }
            Answer::Blocked => {
                self.retry.push(Retry { due: now, id, item });
                self.streak.since.get_or_insert(now);
                self.streak.all_retry_after = false;
                self.streak.failures += 1;
                // Said once per outage, not per request still out when it began.
                (was_probe || self.outage.is_none()).then(|| self.pause(now))
            }
            Answer::NotYet { until } => {
                self.retry.push(Retry {
                    due: until,
                    id,
                    item,
                });
                self.not_before = Some(self.not_before.map_or(until, |t| t.max(until)));
                None
            }
        }
    }

    /// Something that cannot be helped by sending (the queue unreadable, acks not
    /// written): pause as a whole, growing the backoff.
    fn block(&mut self, now: Instant) -> Pause {
        self.streak.since.get_or_insert(now);
        self.streak.all_retry_after = false;
        self.pause(now)
    }

    /// Enters (or stays in) an outage: the wait before the next probe.
    fn pause(&mut self, now: Instant) -> Pause {
        let since = match &self.outage {
            Some(o) => o.since,
            None => self.streak.since.unwrap_or(now),
        };
        let (wait, retry_after) = match self
            .streak
            .retry_after
            .filter(|_| self.streak.all_retry_after)
        {
            // The server said how long: that long, capped, and the backoff does not grow.
            Some(ra) => (ra.min(self.settings.backoff_max), true),
            None => {
                let elapsed = now.saturating_duration_since(since);
                let cap = (elapsed / OUTAGE_SHARE).max(self.settings.backoff_base);
                (self.backoff.next_wait_within(cap), false)
            }
        };
        let starts = self.outage.is_none();
        self.outage = Some(Outage {
            since,
            next_probe: now + wait,
            probe: None,
        });
        // The next probe's failure starts its own account of Retry-After.
        self.streak.retry_after = None;
        self.streak.all_retry_after = false;
        self.streak.failures = 0;
        self.concurrency.restart(now);
        Pause {
            wait,
            retry_after,
            starts,
        }
    }

    fn got_through(&mut self) {
        self.streak = Streak::default();
        if self.outage.take().is_some() {
            self.backoff.reset();
        }
    }

    /// Acks and dead letters to commit now, if it is time: one commit at a time, once
    /// half the room left by the requests in flight is used (sends go on meanwhile), or
    /// when nothing is in flight. In an outage caused by acks that did not reach the
    /// disk, an empty commit at each probe time checks whether they have now.
    pub fn take_settlement(&mut self, now: Instant) -> Option<Settle> {
        if self.committing.is_some() {
            return None;
        }
        let n = self.answered.len();
        if n == 0 {
            let probe_disk = self.unsaved > 0
                && self.in_flight.is_empty()
                && self.outage.as_ref().is_some_and(|o| now >= o.next_probe);
            if probe_disk {
                self.committing = Some(0);
                return Some(Settle::default());
            }
            return None;
        }
        let room = self
            .settings
            .batch_size
            .saturating_sub(self.concurrency.limit())
            / 2;
        if n >= room.max(1) || self.in_flight.is_empty() || self.stopping {
            self.committing = Some(n);
            return Some(std::mem::take(&mut self.answered));
        }
        None
    }

    /// The commit handed out by `take_settlement` is done. A failure pauses uploading:
    /// the queue keeps the acks and writes them with its next write; until then they
    /// count as sent and not settled.
    pub fn committed(&mut self, ok: bool, now: Instant) -> Option<Pause> {
        let n = self.committing.take().unwrap_or(0);
        if ok {
            // The queue writes earlier failed acks with every write: on disk now too.
            self.unsaved = 0;
            if n == 0 {
                self.got_through();
            }
            None
        } else {
            self.unsaved += n;
            Some(self.block(now))
        }
    }

    /// When something may next become possible that no answer or commit will signal (a
    /// retry due, a probe, a session); the loop sleeps until then at the latest. Only
    /// future times: what is possible now but waits for a free slot is woken by answers.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        let future = |t: &Instant| *t > now;
        if let Some(o) = &self.outage {
            return Some(o.next_probe).filter(future);
        }
        // No send before a session: the retries due earlier wait for it too.
        if let Some(t) = self.not_before.filter(future) {
            return Some(t);
        }
        let paced = self.concurrency.paced_until().filter(future);
        self.retry
            .iter()
            .map(|r| r.due)
            .filter(future)
            .chain(paced)
            .min()
    }

    /// The wait for a session is over early (new passwords after a failed login): the
    /// readings held by [`Answer::NotYet`] are due now.
    pub fn session_back(&mut self, now: Instant) {
        if let Some(until) = self.not_before.take() {
            for r in self
                .retry
                .iter_mut()
                .filter(|r| r.due > now && r.due <= until)
            {
                r.due = now;
            }
        }
    }

    /// Shutdown: no more sends or fetches; what is answered is committed at once.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// The readings this drain held but never settled (in flight, waiting, put back):
    /// they stay in the queue, pending, and are sent after the restart.
    pub fn abandon(&mut self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .in_flight
            .drain()
            .map(|(id, _)| id)
            .chain(self.ready.drain(..).map(|(id, _)| id))
            .chain(self.retry.drain(..).map(|r| r.id))
            .collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn settings(batch_size: usize, concurrency: Mode) -> Settings {
        Settings {
            batch_size,
            concurrency,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }

    /// A server simulated in virtual time: `slots` requests served at once in
    /// `service` each (more wait in its queue), answering with `answer(n)` for the n-th
    /// request it gets.
    struct Sim {
        t: Instant,
        start: Instant,
        drain: Drain<()>,
        queue: BTreeSet<i64>,
        /// Answers on their way: (due, id) -> answer.
        out: BTreeMap<(Instant, i64), Answer>,
        slots: usize,
        service: Duration,
        answer: Box<dyn FnMut(u64, Instant) -> Answer>,
        requests: u64,
        sent: BTreeMap<i64, u32>,
        stored: BTreeSet<i64>,
        /// Largest number of readings sent and not committed, seen at any send.
        max_unsettled: usize,
        limits: Vec<usize>,
        pauses: Vec<(Duration, Pause)>,
        send_times: Vec<Instant>,
    }

    impl Sim {
        fn new(readings: i64, s: Settings, slots: usize, service: Duration) -> Sim {
            let t = Instant::now();
            Sim {
                t,
                start: t,
                drain: Drain::new(s, t),
                queue: (1..=readings).collect(),
                out: BTreeMap::new(),
                slots,
                service,
                answer: Box::new(|_, _| Answer::Accepted),
                requests: 0,
                sent: BTreeMap::new(),
                stored: BTreeSet::new(),
                max_unsettled: 0,
                limits: Vec::new(),
                pauses: Vec::new(),
                send_times: Vec::new(),
            }
        }

        fn elapsed(&self) -> Duration {
            self.t - self.start
        }

        /// One step: fetch, send what may go, commit, then advance to the next event.
        /// False when nothing is left to happen.
        fn step(&mut self) -> bool {
            if let Some((after, limit)) = self.drain.wants_fetch(self.t) {
                let batch: Vec<(i64, ())> = self
                    .queue
                    .range(after + 1..)
                    .take(limit)
                    .map(|id| (*id, ()))
                    .collect();
                self.drain.fetched(batch, limit);
            }
            while let Some((id, ())) = self.drain.next_send(self.t) {
                *self.sent.entry(id).or_default() += 1;
                self.max_unsettled = self.max_unsettled.max(self.drain.unsettled());
                self.send_times.push(self.t);
                self.requests += 1;
                let answer = (self.answer)(self.requests, self.t);
                let queued = self.out.len() + 1;
                let rtt = self
                    .service
                    .mul_f64((queued as f64 / self.slots as f64).max(1.0));
                if answer == Answer::Accepted {
                    self.stored.insert(id);
                }
                self.out.insert((self.t + rtt, id), answer);
            }
            if let Some(settle) = self.drain.take_settlement(self.t) {
                for id in &settle.acked {
                    self.queue.remove(id);
                }
                for (id, _, _) in &settle.dead {
                    self.queue.remove(id);
                }
                self.drain.committed(true, self.t);
                return true;
            }
            self.limits.push(self.drain.concurrency());
            let next_answer = self.out.keys().next().map(|(t, _)| *t);
            let wake = self.drain.next_wake(self.t);
            let next = match (next_answer, wake) {
                (Some(a), Some(w)) => a.min(w),
                (a, w) => match a.or(w) {
                    Some(t) => t,
                    None => return false,
                },
            };
            self.t = next.max(self.t);
            while let Some(entry) = self.out.first_entry() {
                if entry.key().0 > self.t {
                    break;
                }
                let ((_, id), answer) = entry.remove_entry();
                if let Some(p) = self.drain.answered(id, (), answer, self.t) {
                    self.pauses.push((self.elapsed(), p));
                }
            }
            true
        }

        fn run_until(&mut self, mut done: impl FnMut(&Sim) -> bool, max: Duration) {
            while !done(self) && self.elapsed() < max {
                if !self.step() {
                    break;
                }
            }
        }
    }

    #[test]
    fn converges_to_the_servers_limit_and_delivers_everything_once() {
        // 8 slots of 5 ms: 1600 readings/s at most.
        let mut sim = Sim::new(
            20_000,
            settings(64, Mode::Auto { max: 32 }),
            8,
            Duration::from_millis(5),
        );
        sim.run_until(|s| s.queue.is_empty(), Duration::from_secs(120));
        assert!(sim.queue.is_empty());
        assert_eq!(sim.stored.len(), 20_000);
        assert!(sim.sent.values().all(|&n| n == 1), "no reading sent twice");
        let tail = &sim.limits[sim.limits.len() / 2..];
        let mean = tail.iter().sum::<usize>() as f64 / tail.len() as f64;
        assert!(
            mean >= 8.0,
            "the limit found covers the server's 8 slots: {mean}"
        );
        // 20 000 at 1600/s is 12.5 s; within 10 % of it.
        assert!(
            sim.elapsed() < Duration::from_millis(13_750),
            "{:?}",
            sim.elapsed()
        );
    }

    #[test]
    fn a_503_cuts_the_concurrency() {
        let mut sim = Sim::new(
            100_000,
            settings(64, Mode::Auto { max: 32 }),
            1000,
            Duration::from_millis(5),
        );
        sim.run_until(|s| s.drain.concurrency() >= 32, Duration::from_secs(60));
        assert_eq!(sim.drain.concurrency(), 32);
        // From now on six requests in ten are answered 503 (a full server; a minority at
        // random is a flaky proxy: see the next test).
        sim.answer = Box::new(|n, _| {
            if n % 10 < 6 {
                Answer::Failed {
                    retry_after: None,
                    back_pressure: true,
                }
            } else {
                Answer::Accepted
            }
        });
        let at = sim.elapsed();
        sim.run_until(
            |s| s.elapsed() >= at + Duration::from_millis(200),
            Duration::from_secs(60),
        );
        assert!(sim.drain.concurrency() < 16, "{}", sim.drain.concurrency());
        assert!(
            sim.pauses.is_empty(),
            "a partial failure is not an outage: {:?}",
            sim.pauses
        );
    }

    #[test]
    fn a_third_of_requests_failing_with_retry_after_does_not_stall_the_drain() {
        // As the bench does: the time to store 5000 of a larger backlog, so that the
        // last readings' run of Retry-After waits (0.3^k of them fail k times) does not
        // count, only the rate.
        let sim = |flaky: bool, stored: usize| {
            let mut sim = Sim::new(
                stored as i64 + 20_000,
                settings(64, Mode::Auto { max: 32 }),
                8,
                Duration::from_millis(5),
            );
            let mut rng = fastrand::Rng::with_seed(7);
            if flaky {
                sim.answer = Box::new(move |_, _| {
                    if rng.f64() < 0.3 {
                        Answer::Failed {
                            retry_after: Some(Duration::from_secs(1)),
                            back_pressure: true,
                        }
                    } else {
                        Answer::Accepted
                    }
                });
            }
            sim.run_until(|s| s.stored.len() >= stored, Duration::from_secs(600));
            assert!(sim.stored.len() >= stored);
            assert!(sim.sent.values().all(|&n| n <= 20));
            sim
        };
        let healthy = sim(false, 5_000).elapsed();
        let flaky = sim(true, 5_000);
        // The 503s take the server as long as an answer here: 0.7 of the healthy rate at
        // best. Cut on any 503, the limit sat near 4 and the drain at a third of it.
        assert!(
            flaky.elapsed() < healthy.mul_f64(1.0 / 0.6),
            "{:?} against {healthy:?} healthy",
            flaky.elapsed()
        );
        assert!(flaky.pauses.is_empty(), "{:?}", flaky.pauses);
        // Nor does a run of 8 failures in a row, which comes by chance in a long drain:
        // the limit is near 10, and an outage is two windows of failures.
        let long = sim(true, 60_000);
        assert!(long.pauses.is_empty(), "{:?}", long.pauses);
    }

    #[test]
    fn an_outage_pauses_with_a_growing_backoff_and_one_success_ends_it() {
        let mut sim = Sim::new(
            1_000,
            settings(64, Mode::Auto { max: 32 }),
            8,
            Duration::from_millis(5),
        );
        // Down for the first 30 s: connection refused.
        let down_until = sim.start + Duration::from_secs(30);
        sim.answer = Box::new(move |_, t| {
            if t < down_until {
                Answer::Failed {
                    retry_after: None,
                    back_pressure: false,
                }
            } else {
                Answer::Accepted
            }
        });
        sim.run_until(|s| s.queue.is_empty(), Duration::from_secs(600));
        assert!(sim.queue.is_empty());
        // One outage: its pauses grow, never past an eighth of the outage so far
        // (and the base), and are all probes of one request.
        assert!(sim.pauses.len() >= 5, "{:?}", sim.pauses);
        for (at, p) in &sim.pauses {
            assert!(!p.retry_after);
            assert!(
                p.wait <= (*at / OUTAGE_SHARE).max(Duration::from_secs(1)),
                "{at:?}: {p:?}"
            );
        }
        let during: usize = sim.send_times.iter().filter(|t| **t < down_until).count();
        assert!(
            during < 40,
            "probes one at a time, not the backlog: {during}"
        );
        // Back within an eighth of the outage after it ended, not half of it.
        let first_after = sim
            .send_times
            .iter()
            .find(|t| **t >= down_until)
            .copied()
            .unwrap_or(sim.t);
        assert!(
            first_after - down_until <= Duration::from_millis(3_750),
            "{:?}",
            first_after - down_until
        );
        // The streak is over: the backlog drained at full speed after it.
        assert!(
            sim.elapsed() < Duration::from_secs(40),
            "{:?}",
            sim.elapsed()
        );
        assert!(sim.drain.state(sim.t) == State::Idle || sim.queue.is_empty());
    }

    #[test]
    fn when_every_failure_has_retry_after_sends_pause_that_long_without_growth() {
        let mut sim = Sim::new(
            500,
            settings(64, Mode::Fixed(4)),
            8,
            Duration::from_millis(5),
        );
        let maintenance_until = sim.start + Duration::from_secs(20);
        sim.answer = Box::new(move |_, t| {
            if t < maintenance_until {
                Answer::Failed {
                    retry_after: Some(Duration::from_secs(3)),
                    back_pressure: true,
                }
            } else {
                Answer::Accepted
            }
        });
        sim.run_until(|s| s.queue.is_empty(), Duration::from_secs(300));
        assert!(sim.queue.is_empty());
        assert!(!sim.pauses.is_empty());
        for (_, p) in &sim.pauses {
            assert_eq!(p.wait, Duration::from_secs(3));
            assert!(p.retry_after);
        }
        // Between two pauses no request went out.
        let during = sim
            .send_times
            .iter()
            .filter(|t| **t < maintenance_until)
            .count();
        assert!(during <= 8 + 8, "{during}");
    }

    #[test]
    fn no_send_starts_while_batch_size_readings_are_unsettled() {
        let mut sim = Sim::new(
            2_000,
            settings(16, Mode::Fixed(64)),
            1000,
            Duration::from_millis(5),
        );
        sim.run_until(|s| s.queue.is_empty(), Duration::from_secs(60));
        assert!(sim.queue.is_empty());
        assert!(sim.max_unsettled <= 16, "{}", sim.max_unsettled);

        // Commits that never finish: sends stop at the bound.
        let t = Instant::now();
        let mut d: Drain<()> = Drain::new(settings(10, Mode::Fixed(4)), t);
        let _ = d.wants_fetch(t);
        d.fetched((1..=100).map(|i| (i, ())).collect(), 10);
        let mut sent = 0;
        for round in 0..10 {
            let now = t + Duration::from_millis(round);
            while let Some((id, ())) = d.next_send(now) {
                sent += 1;
                d.answered(id, (), Answer::Accepted, now);
            }
            if let Some(s) = d.take_settlement(now) {
                assert!(!s.acked.is_empty());
                // Never committed.
            }
            let _ = d.wants_fetch(t).map(|_| d.fetched(Vec::new(), 10));
        }
        assert_eq!(sent, 10, "the 11th send waits for a commit");
        // A failed commit keeps them counted as unsettled.
        assert!(d.committed(false, t).is_some());
        assert_eq!(d.next_send(t + Duration::from_secs(1000)), None);
    }

    #[test]
    fn an_endpoint_refusal_pauses_everything_and_keeps_the_readings() {
        let t = Instant::now();
        let mut d: Drain<()> = Drain::new(settings(64, Mode::Fixed(4)), t);
        let _ = d.wants_fetch(t);
        d.fetched((1..=10).map(|i| (i, ())).collect(), 64);
        let out: Vec<i64> = std::iter::from_fn(|| d.next_send(t))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(out, vec![1, 2, 3, 4]);
        let p = d.answered(1, (), Answer::Blocked, t);
        assert!(p.is_some_and(|p| p.wait >= Duration::from_millis(500)));
        // The others still out come back; no second pause for them.
        for id in 2..=4 {
            assert_eq!(d.answered(id, (), Answer::Blocked, t), None);
        }
        assert_eq!(d.state(t), State::BackingOff);
        assert_eq!(d.next_send(t), None);
        assert_eq!(d.take_settlement(t), None, "nothing settled, nothing dead");
        // The probe goes out at its time: the oldest reading, alone.
        let later = t + Duration::from_secs(2);
        assert_eq!(d.next_send(later).map(|(id, _)| id), Some(1));
        assert_eq!(d.next_send(later), None);
        d.answered(1, (), Answer::Accepted, later);
        assert_eq!(d.state(later), State::Uploading);
        assert!(d.next_send(later).is_some(), "one success ends it");
    }

    #[test]
    fn readings_in_memory_stay_within_what_the_slots_need() {
        let t = Instant::now();
        let mut d: Drain<()> = Drain::new(settings(64, Mode::Fixed(64)), t);
        assert_eq!(d.wants_fetch(t), Some((0, 64)));
        d.fetched((1..=64).map(|i| (i, ())).collect(), 64);
        assert_eq!(d.wants_fetch(t), None, "64 in hand for 64 slots");
        for _ in 0..10 {
            let _ = d.next_send(t);
        }
        assert_eq!(d.wants_fetch(t), Some((64, 64)));
    }

    #[test]
    fn a_success_ends_a_streak_of_failures() {
        let t = Instant::now();
        let mut d: Drain<()> = Drain::new(settings(64, Mode::Fixed(1)), t);
        let _ = d.wants_fetch(t);
        d.fetched((1..=100).map(|i| (i, ())).collect(), 64);
        let fail = Answer::Failed {
            retry_after: None,
            back_pressure: false,
        };
        let mut now = t;
        // 7 failures, a success, 7 failures: never an outage.
        for i in 0..15 {
            now += Duration::from_millis(10);
            let (id, ()) = d.next_send(now).unwrap_or_else(|| panic!("send {i}"));
            let answer = if i == 7 {
                Answer::Accepted
            } else {
                fail.clone()
            };
            assert_eq!(d.answered(id, (), answer, now), None, "{i}");
        }
        now += Duration::from_millis(10);
        let (id, ()) = d.next_send(now).unwrap_or_else(|| panic!("send"));
        assert!(d.answered(id, (), fail, now).is_some(), "8 in a row");
    }

    #[test]
    fn shutdown_keeps_what_is_unsettled_queued() {
        let t = Instant::now();
        let mut d: Drain<()> = Drain::new(settings(64, Mode::Fixed(4)), t);
        let _ = d.wants_fetch(t);
        d.fetched((1..=6).map(|i| (i, ())).collect(), 64);
        let out: Vec<i64> = std::iter::from_fn(|| d.next_send(t))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(out, vec![1, 2, 3, 4]);
        d.answered(2, (), Answer::Accepted, t);
        d.answered(
            3,
            (),
            Answer::Failed {
                retry_after: None,
                back_pressure: false,
            },
            t,
        );
        d.stop();
        assert_eq!(d.next_send(t + Duration::from_secs(10)), None);
        assert_eq!(d.wants_fetch(t), None);
        // What was answered is committed at once, in flight or not.
        let s = d.take_settlement(t);
        assert_eq!(s.map(|s| s.acked), Some(vec![2]));
        d.committed(true, t);
        // In flight (1, 4), put back (3), never sent (5, 6): all stay in the queue.
        assert_eq!(d.abandon(), vec![1, 3, 4, 5, 6]);
    }

    #[test]
    fn no_session_pauses_sends_until_then_without_an_outage() {
        let t = Instant::now();
        let mut d: Drain<()> = Drain::new(settings(64, Mode::Fixed(2)), t);
        let _ = d.wants_fetch(t);
        d.fetched((1..=3).map(|i| (i, ())).collect(), 64);
        let until = t + Duration::from_secs(5);
        let (id, ()) = d.next_send(t).unwrap_or_else(|| panic!("send"));
        assert_eq!(d.answered(id, (), Answer::NotYet { until }, t), None);
        assert_eq!(d.state(t), State::WaitingForLogin);
        assert!(d.next_send(t + Duration::from_secs(1)).is_none());
        assert_eq!(d.next_wake(t), Some(until));
        assert_eq!(d.next_send(until).map(|(id, _)| id), Some(1));
    }

    #[test]
    fn a_session_back_early_ends_the_wait_for_login() {
        let t = Instant::now();
        let mut d: Drain<()> = Drain::new(settings(64, Mode::Fixed(2)), t);
        let _ = d.wants_fetch(t);
        d.fetched((1..=3).map(|i| (i, ())).collect(), 64);
        let until = t + Duration::from_secs(600);
        let (id, ()) = d.next_send(t).unwrap_or_else(|| panic!("send"));
        assert_eq!(d.answered(id, (), Answer::NotYet { until }, t), None);
        let later = t + Duration::from_secs(2);
        assert!(d.next_send(later).is_none());
        d.session_back(later);
        assert_ne!(d.state(later), State::WaitingForLogin);
        assert_eq!(d.next_send(later).map(|(id, _)| id), Some(1));
    }

    #[test]
    fn a_limit_below_one_paces_sends_and_an_outage_still_ends_on_the_first_success() {
        let mut t = Instant::now();
        let mut d: Drain<()> = Drain::new(settings(64, Mode::Auto { max: 32 }), t);
        let _ = d.wants_fetch(t);
        d.fetched((1..=100).map(|i| (i, ())).collect(), 64);
        // Alone, 20 ms each: the base. Then 400 ms (a fleet's queue): past 2 x 20 + 20 ms.
        for rtt in [20, 20, 20, 400, 400, 400, 400] {
            let (id, ()) = d.next_send(t).unwrap_or_else(|| panic!("send"));
            t += Duration::from_millis(rtt);
            assert_eq!(d.answered(id, (), Answer::Accepted, t), None);
            if let Some(w) = d.next_wake(t) {
                t = w;
            }
        }
        assert!(
            d.concurrency.fractional() < 0.5,
            "{}",
            d.concurrency.fractional()
        );
        assert_eq!(
            d.concurrency(),
            1,
            "upload_concurrency stays a whole number"
        );
        // One in flight, then a pause after its answer: the wake says when.
        let (id, ()) = d.next_send(t).unwrap_or_else(|| panic!("send"));
        assert!(d.next_send(t).is_none());
        t += Duration::from_millis(400);
        d.answered(id, (), Answer::Accepted, t);
        let wake = d.next_wake(t).unwrap_or_else(|| panic!("a paced wake"));
        assert!(wake >= t + Duration::from_millis(400), "{:?}", wake - t);
        assert!(d.next_send(wake - Duration::from_millis(1)).is_none());
        t = wake;
        let (id, ()) = d.next_send(t).unwrap_or_else(|| panic!("send when due"));
        // An outage: its probes are timed by the backoff, not by the pacing, and the first
        // success ends it.
        let refused = Answer::Failed {
            retry_after: None,
            back_pressure: false,
        };
        assert_eq!(d.answered(id, (), refused.clone(), t), None);
        let mut pause = None;
        while pause.is_none() {
            t = d.next_wake(t).unwrap_or(t + Duration::from_millis(10));
            if let Some((id, ())) = d.next_send(t) {
                pause = d.answered(id, (), refused.clone(), t);
            }
        }
        assert_eq!(d.state(t), State::BackingOff);
        let probe_at = d.next_wake(t).unwrap_or_else(|| panic!("a probe"));
        let (id, ()) = d.next_send(probe_at).unwrap_or_else(|| panic!("the probe"));
        t = probe_at + Duration::from_millis(20);
        d.answered(id, (), Answer::Accepted, t);
        assert_eq!(d.state(t), State::Uploading, "one success ends it");
        assert!(
            d.concurrency.base() == Some(Duration::from_millis(20)),
            "refused connections do not make the base: {:?}",
            d.concurrency.base()
        );
    }
}
