//! How many requests may be in flight: found, not configured. An AIMD controller after
//! Vector's Adaptive Request Concurrency: per window (about one round trip), one more
//! request when the whole limit was in use, little was pushed back and the round trip did
//! not grow; a multiplicative cut when the server pushed back (429, 503, no answer in time) or
//! when the window's round trip is well above the running mean of the past ones (mean +
//! 2.5 standard deviations: a sudden queue) or above twice its base plus 20 ms (a queue
//! that grew slowly, or one that others made).
//!
//! The base is a round trip of requests sent alone over minutes (TCP Vegas' and BBR's
//! minimum RTT), not over the last few: a fleet of gateways sharing one server measures
//! every round trip inside the queue the fleet makes, and a base that followed it would
//! never see that queue. It is kept through an outage, so that a fleet coming back sees
//! its own stampede as queueing; it ages out after a few minutes, so that a link or a
//! server that became slower for good is learnt again. It is the third lowest of those
//! round trips, not the lowest: on a loaded machine one answer comes back in a fraction of
//! the usual time and would make every later window look queued. When no request went
//! out alone for a minute, the limit drops to one for five answers to measure it again
//! (Envoy's adaptive concurrency filter).
//!
//! A long round trip takes the limit below one: a fleet of 50 gateways each keeping one
//! request in flight is 50 against a server that serves 8 at once, and the queue they
//! make is seen only in the round trip; it goes below one only once three windows in a
//! row were past the bound, the last at one request in flight (a queue that is not ours,
//! not a slow answer on a loaded machine; below, every such window cuts). Below one, one
//! request is in flight and the next waits `(1 / limit - 1)` mean round trips after its
//! answer (0.25: three); it grows back by a sixteenth per clean window, so that a fleet
//! all growing at once adds a few requests at a time, not one each. A cut on a long round
//! trip is proportional to how far past its bound it is (down to half at once): the bound
//! is where a fleet settles.
//!
//! Pushed back means by most of a window, not by one answer in it (Vector cuts on any).
//! A flaky proxy refusing 30 % of requests at random refuses about 0.3 n of every window
//! of n, whatever n is: cutting on any one pinned the limit where growth (a clean window,
//! 0.7^n) and the cut (0.1 n the rest of the time) balance, n near 4, and the drain ran
//! at a third to a half of its healthy rate. A full server refuses what exceeds its
//! slots, a share that grows with the limit. So a window cuts when more than half of it
//! was pushed back, or when one push-back came after three times the mean round trip plus
//! 20 ms (a timeout, a balancer that waited before giving up: the server's load, not
//! noise; the default 10 s timeout is late while the mean is under 3.3 s, and past that
//! the served round trips are far above the base and cut on their own). It grows only
//! while at most a quarter of it was: a server refusing the excess holds the limit within
//! a third above its slots; random refusals up to about 30 % leave it to the round trips
//! (at 40 % it sits near 9, at 50 % near 4). Pushed-back answers are no round trips of a
//! served request (Vector's `use_rtt`): they stay out of the means.

use std::time::{Duration, Instant};

/// The cut on back-pressure or a long round trip (Vector's default `decrease_ratio`).
const DECREASE: f64 = 0.9;
/// A window's round trip is "well above" the past ones beyond this many deviations.
const RTT_DEVIATIONS: f64 = 2.5;
/// Weight of the newest window in the running mean and variance (Vector's `ewma_alpha`).
const EWMA_ALPHA: f64 = 0.4;
/// A window's round trip "did not grow" within this factor of the running mean (which,
/// after a step, only approaches the new round trip from below).
const NOT_LONGER: f64 = 1.05;
/// The shortest window, so that a sub-millisecond round trip does not make the limit jump.
const MIN_WINDOW: Duration = Duration::from_millis(10);
/// Past `base * BASE_FACTOR + RTT_SLACK` the server is queueing our requests (or those of
/// a fleet); the slack keeps a loopback server's millisecond base from forbidding any
/// queueing at all. A single gateway still fills the server's slots at this bound (twice
/// its base is twice the requests it serves at once); a fleet settles there.
const BASE_FACTOR: f64 = 2.0;
const RTT_SLACK: Duration = Duration::from_millis(20);
/// A push-back later than `mean * LATE_FACTOR + RTT_SLACK` is late: a timeout, the
/// server's load, where a flaky proxy's refusal comes as fast as an answer.
const LATE_FACTOR: f64 = 3.0;
/// The deepest single cut on a long round trip.
const QUEUED_CUT_MAX: f64 = 0.5;
/// The base is the `BASE_RANK`-th lowest round trip alone of the last one or two spans of
/// `BASE_SPAN` (2.5 to 5 minutes), once there are `BASE_RANK * BASE_PER_RANK` of them;
/// of fewer (a start, which sends alone only briefly), a lower rank: the first answers of
/// a cold server are slow ones, not fast.
const BASE_RANK: usize = 3;
const BASE_PER_RANK: usize = 3;
const BASE_SPAN: Duration = Duration::from_secs(150);
/// The lowest limit (below one: paced sends) and its growth per clean window below one.
const MIN_LIMIT: f64 = 1.0 / 16.0;
const GROW_BELOW_ONE: f64 = 1.0 / 16.0;
/// Windows in a row past the base's bound, the last at a limit of one, that take it below.
const PAST_BOUND_BELOW_ONE: u32 = 3;
/// The longest pause between two paced sends.
const PACE_MAX: Duration = Duration::from_secs(30);
/// The base is measured again when no request went out alone for this long.
const FLOOR_MAX_AGE: Duration = Duration::from_secs(60);
/// Answers that are taken alone when it is measured again.
const FLOOR_SAMPLES: u32 = 5;
/// A window pushed back more than this share of its answers cuts.
const CUT_SHARE: f64 = 0.5;
/// A window grows only when at most this share of its answers was pushed back.
const GROW_SHARE: f64 = 0.25;

/// `upload.concurrency`: adaptive up to a maximum, or pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Auto { max: usize },
    Fixed(usize),
}

#[derive(Debug, Clone)]
pub struct Concurrency {
    mode: Mode,
    limit: f64,
    /// Running mean and variance of the windows' mean round trips, in seconds.
    past: Option<(f64, f64)>,
    /// Round trips of requests sent alone and served; when the last one went alone.
    base: Base,
    alone_at: Option<Instant>,
    /// Below a limit of one: no send before this.
    paced_until: Option<Instant>,
    /// Windows in a row whose round trip was past the base's bound.
    past_bound: u32,
    /// While the base is measured again: the limit to come back to, answers still wanted.
    measuring: Option<(f64, u32)>,
    window: Window,
}

#[derive(Debug, Clone)]
struct Window {
    start: Instant,
    /// Round trips of the answers not pushed back, and how many.
    rtt_sum: Duration,
    served: u32,
    answers: u32,
    pushed_back: u32,
    /// A push-back came far later than the requests served.
    late_push_back: bool,
    /// The limit was reached: all of it was in use at some send of the window.
    full: bool,
}

impl Window {
    fn new(start: Instant) -> Window {
        Window {
            start,
            rtt_sum: Duration::ZERO,
            served: 0,
            answers: 0,
            pushed_back: 0,
            late_push_back: false,
            full: false,
        }
    }
}

impl Concurrency {
    pub fn new(mode: Mode, now: Instant) -> Concurrency {
        let limit = match mode {
            // Start low: a server's limit is found in a few round trips.
            Mode::Auto { .. } => 1.0,
            Mode::Fixed(n) => n.max(1) as f64,
        };
        Concurrency {
            mode,
            limit,
            past: None,
            base: Base::new(now),
            alone_at: None,
            paced_until: None,
            past_bound: 0,
            measuring: None,
            window: Window::new(now),
        }
    }

    /// Requests that may be in flight now (one when the limit is below one: paced).
    pub fn limit(&self) -> usize {
        if self.measuring.is_some() {
            return 1;
        }
        (self.limit as usize).max(1)
    }

    /// The limit as it is, below one when sends are paced.
    pub fn fractional(&self) -> f64 {
        self.limit
    }

    /// Below a limit of one: no send before this.
    pub fn paced_until(&self) -> Option<Instant> {
        self.paced_until
    }

    /// The round trip of a request sent alone over the last minutes, when known.
    pub fn base(&self) -> Option<Duration> {
        self.base.value()
    }

    /// The running mean round trip, when known.
    pub fn mean_rtt(&self) -> Option<Duration> {
        self.past
            .map(|(mean, _)| Duration::from_secs_f64(mean.max(0.0)))
    }

    fn max(&self) -> f64 {
        match self.mode {
            Mode::Auto { max } => max.max(1) as f64,
            Mode::Fixed(n) => n.max(1) as f64,
        }
    }

    /// A request went out; `in_flight` counts it.
    pub fn on_send(&mut self, in_flight: usize) {
        if in_flight >= self.limit() {
            self.window.full = true;
        }
    }

    /// An answer (or a failure) came after `rtt`. `served`: the server answered for the
    /// reading (not a refused connection, whose round trip says nothing of the server's).
    /// `alone`: no other request of ours was in flight when it left.
    pub fn on_answer(
        &mut self,
        rtt: Duration,
        back_pressure: bool,
        served: bool,
        alone: bool,
        now: Instant,
    ) {
        if let Mode::Fixed(_) = self.mode {
            return;
        }
        if alone {
            self.sample_base(rtt, back_pressure || !served, now);
        }
        if back_pressure {
            self.window.pushed_back += 1;
            self.window.late_push_back |= self.late(rtt);
        } else if served {
            self.window.rtt_sum += rtt;
            self.window.served += 1;
        }
        self.window.answers += 1;
        let length = self.mean_rtt().unwrap_or(rtt).max(MIN_WINDOW);
        if now.saturating_duration_since(self.window.start) >= length {
            self.end_window(now);
        }
        let stale = self
            .alone_at
            .is_some_and(|at| now.saturating_duration_since(at) >= FLOOR_MAX_AGE);
        if stale && self.measuring.is_none() && self.limit >= 1.0 {
            self.measuring = Some((self.limit, FLOOR_SAMPLES));
        }
        self.paced_until = (self.limit < 1.0).then(|| {
            let rtt = self.mean_rtt().unwrap_or(rtt);
            now + rtt.mul_f64(1.0 / self.limit - 1.0).min(PACE_MAX)
        });
    }

    /// A pushed-back answer says nothing of the base, but counts towards the end of a
    /// measurement, which must end even against a server answering nothing but 503.
    fn sample_base(&mut self, rtt: Duration, back_pressure: bool, now: Instant) {
        self.alone_at = Some(now);
        if !back_pressure {
            self.base.sample(rtt, now);
        }
        if let Some((back_to, left)) = self.measuring.as_mut() {
            *left -= 1;
            if *left == 0 {
                self.limit = *back_to;
                self.measuring = None;
            }
        }
    }

    /// Everything failed for a while (an outage): start again from one request (or the
    /// paced rate it had, if lower), so that a fleet coming back does not come back at
    /// full load. The base is kept: the queue the fleet makes on its return must look
    /// like one. The outage's probes are timed by the drain, not paced.
    pub fn restart(&mut self, now: Instant) {
        if let Mode::Auto { .. } = self.mode {
            self.limit = self.limit.min(1.0);
            self.past = None;
            self.measuring = None;
            self.paced_until = None;
            self.window = Window::new(now);
        }
    }

    /// Far slower than the requests served (a timeout, a balancer that waited before it
    /// gave up), where a flaky proxy's refusal comes about as fast as an answer.
    fn late(&self, rtt: Duration) -> bool {
        self.mean_rtt()
            .is_some_and(|mean| rtt > mean.mul_f64(LATE_FACTOR) + RTT_SLACK)
    }

    /// The cut a window's round trip calls for, if it says the server queues: past its
    /// base's bound, as far below as the bound is below the round trip; a sudden jump
    /// above the past windows, the usual cut.
    fn queued(&mut self, window_rtt: Duration, mean: f64, var: f64) -> Option<f64> {
        let bound = self
            .base()
            .map(|b| b.mul_f64(BASE_FACTOR) + RTT_SLACK)
            .filter(|bound| window_rtt > *bound);
        self.past_bound = if bound.is_some() {
            self.past_bound.saturating_add(1)
        } else {
            0
        };
        if let Some(bound) = bound {
            let cut = bound.as_secs_f64() / window_rtt.as_secs_f64();
            return Some(cut.clamp(QUEUED_CUT_MAX, DECREASE));
        }
        let rtt = window_rtt.as_secs_f64();
        (rtt > mean + RTT_DEVIATIONS * var.sqrt()).then_some(DECREASE)
    }

    fn end_window(&mut self, now: Instant) {
        let w = std::mem::replace(&mut self.window, Window::new(now));
        if w.answers == 0 || self.measuring.is_some() {
            return;
        }
        if w.served == 0 {
            // No round trip measured: push-backs cut; refused connections and pages that
            // are no answer say nothing of the server's load (the drain's outage logic
            // deals with those).
            if w.pushed_back > 0 {
                self.cut();
            }
            return;
        }
        let pushed_back = f64::from(w.pushed_back) / f64::from(w.answers);
        let window_rtt = w.rtt_sum / w.served;
        let rtt = window_rtt.as_secs_f64();
        let (mean, var) = self.past.unwrap_or((rtt, 0.0));
        if pushed_back > CUT_SHARE || w.late_push_back {
            self.cut();
        } else if let Some(cut) = self.queued(window_rtt, mean, var) {
            // Below one only on a queue that lasts at one request in flight: it is not
            // ours then (a fleet's); one slow window on a loaded machine is not that.
            // Once below, every window past the bound cuts: a fleet comes down at once.
            let below =
                self.limit < 1.0 || (self.limit <= 1.0 && self.past_bound >= PAST_BOUND_BELOW_ONE);
            let lowest = if below { MIN_LIMIT } else { 1.0 };
            self.limit = (self.limit * cut).max(lowest.min(self.limit));
        } else if w.full && pushed_back <= GROW_SHARE && rtt <= mean * NOT_LONGER {
            let step = if self.limit < 1.0 {
                GROW_BELOW_ONE
            } else {
                1.0
            };
            // Below one, growth stops at one before it doubles the requests in flight.
            let ceiling = if self.limit < 1.0 { 1.0 } else { self.max() };
            self.limit = (self.limit + step).min(ceiling);
        }
        let diff = rtt - mean;
        self.past = Some((
            mean + EWMA_ALPHA * diff,
            (1.0 - EWMA_ALPHA) * (var + EWMA_ALPHA * diff * diff),
        ));
    }

    /// The cut on push-backs. Kept fractional: rounded down at every cut, a limit of 2
    /// would halve at once. Push-backs alone never take it below one (only a queue seen
    /// in the round trips paces), nor lift a paced limit back to one.
    fn cut(&mut self) {
        self.limit = (self.limit * DECREASE).max(self.limit.min(1.0));
    }
}

/// The lowest round trips of the current span and the one before it, and how many each
/// saw.
#[derive(Debug, Clone)]
struct Base {
    since: Instant,
    current: Vec<Duration>,
    previous: Vec<Duration>,
    seen: (usize, usize),
}

impl Base {
    fn new(now: Instant) -> Base {
        Base {
            since: now,
            current: Vec::new(),
            previous: Vec::new(),
            seen: (0, 0),
        }
    }

    fn sample(&mut self, rtt: Duration, now: Instant) {
        if now.saturating_duration_since(self.since) >= BASE_SPAN {
            self.previous = std::mem::take(&mut self.current);
            self.seen = (0, self.seen.0);
            self.since = now;
        }
        lowest_kept(&mut self.current, rtt);
        self.seen.0 += 1;
    }

    /// Of both spans: the `BASE_RANK`-th lowest, or a lower rank while they saw few (the
    /// highest kept when both hold fewer). Asked at every window's end: the two sorted
    /// lists are walked together, not merged into a new one.
    fn value(&self) -> Option<Duration> {
        let rank = ((self.seen.0 + self.seen.1) / BASE_PER_RANK).clamp(1, BASE_RANK);
        let (mut a, mut b) = (
            self.current.iter().peekable(),
            self.previous.iter().peekable(),
        );
        let mut nth = None;
        for _ in 0..rank {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if y < x => b.next(),
                (Some(_), _) => a.next(),
                (None, _) => b.next(),
            };
            match next {
                Some(rtt) => nth = Some(*rtt),
                None => break,
            }
        }
        nth
    }
}

/// Inserts `rtt` into `kept` (sorted), keeping its `BASE_RANK` lowest.
fn lowest_kept(kept: &mut Vec<Duration>, rtt: Duration) {
    let at = kept.partition_point(|k| *k <= rtt);
    if at < BASE_RANK {
        kept.insert(at, rtt);
        kept.truncate(BASE_RANK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_is_the_ranked_lowest_of_both_spans_as_if_merged() {
        let mut rng = fastrand::Rng::with_seed(11);
        let ms = Duration::from_millis;
        for _ in 0..2000 {
            let list = |rng: &mut fastrand::Rng| {
                let mut v: Vec<Duration> = (0..rng.usize(0..=BASE_RANK))
                    .map(|_| ms(rng.u64(1..50)))
                    .collect();
                v.sort();
                v
            };
            let base = Base {
                since: Instant::now(),
                current: list(&mut rng),
                previous: list(&mut rng),
                seen: (rng.usize(0..12), rng.usize(0..12)),
            };
            let mut all: Vec<Duration> =
                base.current.iter().chain(&base.previous).copied().collect();
            all.sort();
            all.truncate(BASE_RANK);
            let rank = ((base.seen.0 + base.seen.1) / BASE_PER_RANK).clamp(1, BASE_RANK);
            let want = rank.min(all.len()).checked_sub(1).map(|i| all[i]);
            assert_eq!(base.value(), want, "{base:?}");
        }
    }

    /// A server with `slots` requests served at once, each taking `service`, and a queue
    /// before them: the round trip of `n` requests in flight.
    fn rtt_of(n: usize, slots: usize, service: Duration) -> Duration {
        service.mul_f64((n as f64 / slots as f64).max(1.0))
    }

    /// Runs `windows` windows at the limit, answering as a server of `slots` slots would.
    fn run(c: &mut Concurrency, t: &mut Instant, windows: usize, slots: usize, service: Duration) {
        for _ in 0..windows {
            let n = c.limit();
            let rtt = rtt_of(n, slots, service);
            for i in 1..=n {
                c.on_send(i);
            }
            *t += rtt;
            for _ in 0..n {
                c.on_answer(rtt, false, true, n == 1, *t);
            }
        }
    }

    #[test]
    fn grows_to_a_servers_limit_and_stays_near_it() {
        let mut t = Instant::now();
        let mut c = Concurrency::new(Mode::Auto { max: 64 }, t);
        // 8 slots of 10 ms: the knee at 8; queueing past 3x10+20 ms means more than 40.
        run(&mut c, &mut t, 200, 8, Duration::from_millis(10));
        let mut seen = Vec::new();
        for _ in 0..100 {
            run(&mut c, &mut t, 1, 8, Duration::from_millis(10));
            seen.push(c.limit());
        }
        let (lo, hi) = (seen.iter().min(), seen.iter().max());
        assert!(lo >= Some(&8), "{seen:?}");
        assert!(hi <= Some(&45), "{seen:?}");
    }

    #[test]
    fn stays_at_its_maximum_when_the_server_keeps_up() {
        let mut t = Instant::now();
        let mut c = Concurrency::new(Mode::Auto { max: 32 }, t);
        run(&mut c, &mut t, 100, 1000, Duration::from_millis(40));
        assert_eq!(c.limit(), 32);
    }

    #[test]
    fn back_pressure_cuts_and_a_pinned_limit_never_moves() {
        let mut t = Instant::now();
        let mut c = Concurrency::new(Mode::Auto { max: 32 }, t);
        run(&mut c, &mut t, 40, 1000, Duration::from_millis(5));
        let before = c.limit();
        // A window pushed back as a whole (one answer pushed back among served ones does
        // not cut: see the random 503s below).
        for _ in 0..2 {
            t += Duration::from_millis(20);
            for _ in 0..before {
                c.on_answer(Duration::from_millis(5), true, true, false, t);
            }
        }
        assert!(c.limit() < before, "{before} -> {}", c.limit());

        let mut pinned = Concurrency::new(Mode::Fixed(6), t);
        for _ in 0..100 {
            t += Duration::from_millis(20);
            pinned.on_answer(Duration::from_secs(5), true, true, false, t);
        }
        assert_eq!(pinned.limit(), 6);
    }

    #[test]
    fn a_slower_server_lowers_the_limit_then_the_new_round_trip_is_learnt() {
        let mut t = Instant::now();
        let mut c = Concurrency::new(Mode::Auto { max: 64 }, t);
        run(&mut c, &mut t, 300, 8, Duration::from_millis(20));
        let before = c.limit();
        // Every request now takes twice as long.
        run(&mut c, &mut t, 3, 8, Duration::from_millis(40));
        let after = c.limit();
        assert!(after < before, "{before} -> {after}");
        // Minutes on (each window here is a round trip of up to 64 in flight), the base of
        // before has aged out and the one measured again (one request at a time, once a
        // minute) is the new round trip: the limit finds the 8 slots again.
        run(&mut c, &mut t, 3000, 8, Duration::from_millis(40));
        assert!(
            c.base().is_some_and(|f| f >= Duration::from_millis(39)),
            "{:?}",
            c.base()
        );
        assert!(c.limit() >= 8, "{}", c.limit());
    }

    /// Runs 2000 windows of 20 ms at the limit, the `i`-th of `n` answers pushed back
    /// when `pushed_back(i, n)`: the limits of the last 1000.
    fn run_pushed_back(mut pushed_back: impl FnMut(usize, usize) -> bool) -> Vec<usize> {
        let mut t = Instant::now();
        let mut c = Concurrency::new(Mode::Auto { max: 32 }, t);
        let mut seen = Vec::new();
        for _ in 0..2000 {
            let n = c.limit();
            for i in 1..=n {
                c.on_send(i);
            }
            t += Duration::from_millis(20);
            for i in 0..n {
                c.on_answer(
                    Duration::from_millis(20),
                    pushed_back(i, n),
                    true,
                    n == 1,
                    t,
                );
            }
            seen.push(n);
        }
        seen.split_off(1000)
    }

    #[test]
    fn random_503s_for_a_third_of_the_requests_do_not_pin_the_limit_at_one() {
        let mut rng = fastrand::Rng::with_seed(3);
        let seen = run_pushed_back(|_, _| rng.f64() < 0.3);
        let mean = seen.iter().sum::<usize>() as f64 / seen.len() as f64;
        // The server keeps up at any limit: random refusals leave it near its maximum
        // (cut on any push-back, it sat near 4).
        assert!(mean >= 24.0, "{mean}");
    }

    #[test]
    fn a_server_refusing_what_exceeds_its_slots_holds_the_limit_near_them() {
        // 8 slots: the rest is answered 503 at once.
        let seen = run_pushed_back(|i, _| i >= 8);
        let (lo, hi) = (seen.iter().min(), seen.iter().max());
        assert!(lo >= Some(&6), "{lo:?}..{hi:?}");
        assert!(hi <= Some(&12), "{lo:?}..{hi:?}");
    }

    #[test]
    fn one_late_push_back_cuts_a_window_of_answers() {
        let mut t = Instant::now();
        let mut c = Concurrency::new(Mode::Auto { max: 32 }, t);
        run(&mut c, &mut t, 40, 1000, Duration::from_millis(5));
        let before = c.limit();
        // 31 answers in 5 ms and one request that timed out (10 s): the server's load.
        t += Duration::from_millis(20);
        for _ in 0..31 {
            c.on_answer(Duration::from_millis(5), false, true, false, t);
        }
        c.on_answer(Duration::from_secs(10), true, true, false, t);
        t += Duration::from_millis(20);
        c.on_answer(Duration::from_millis(5), false, true, false, t);
        assert!(c.limit() < before, "{before} -> {}", c.limit());
        // The same answer in 5 ms (a flaky proxy's 503) does not.
        let before = c.limit();
        for _ in 0..3 {
            t += Duration::from_millis(20);
            for _ in 0..31 {
                c.on_answer(Duration::from_millis(5), false, true, false, t);
            }
            c.on_answer(Duration::from_millis(5), true, true, false, t);
        }
        assert_eq!(c.limit(), before);
    }

    #[test]
    fn a_queue_that_grows_slowly_past_the_base_cuts() {
        let mut t = Instant::now();
        let mut c = Concurrency::new(Mode::Auto { max: 32 }, t);
        run(&mut c, &mut t, 50, 1000, Duration::from_millis(10));
        assert_eq!(c.limit(), 32);
        // The round trip creeps up 1 % per window (never a sudden step): the limit holds
        // while it is well within 2 x 10 + 20 ms of the base, and comes down past it.
        let mut rtt = 10.0;
        let mut lowest_within = 32;
        let mut lowest_past = 32;
        while rtt < 60.0 {
            rtt *= 1.01;
            let service = Duration::from_secs_f64(rtt / 1000.0);
            run(&mut c, &mut t, 1, 1000, service);
            if rtt < 35.0 {
                lowest_within = lowest_within.min(c.limit());
            } else {
                lowest_past = lowest_past.min(c.limit());
            }
        }
        assert!(lowest_within >= 16, "{lowest_within}");
        assert!(lowest_past < 16, "{lowest_past}");
    }

    #[test]
    fn a_machine_slow_at_any_concurrency_does_not_pin_the_limit_at_one() {
        let mut t = Instant::now();
        let mut c = Concurrency::new(Mode::Auto { max: 32 }, t);
        run(&mut c, &mut t, 50, 1000, Duration::from_millis(5));
        // Everything 40 times slower, whatever the concurrency (a loaded machine).
        run(&mut c, &mut t, 200, 1000, Duration::from_millis(200));
        assert!(c.limit() >= 16, "{}", c.limit());
    }

    #[test]
    fn a_latency_step_lowers_the_limit_but_not_below_the_servers_slots() {
        let mut t = Instant::now();
        let mut c = Concurrency::new(Mode::Auto { max: 64 }, t);
        // 8 slots of 20 ms: the base's bound (2 x 20 + 20 ms) is 24 in flight.
        run(&mut c, &mut t, 300, 8, Duration::from_millis(20));
        let before = c.limit();
        assert!((20..=28).contains(&before), "{before}");
        // 40 ms each: the same bound is 12 in flight, still every slot busy.
        let mut seen = Vec::new();
        for _ in 0..300 {
            run(&mut c, &mut t, 1, 8, Duration::from_millis(40));
            seen.push(c.limit());
        }
        let tail = &seen[100..];
        assert!(tail.iter().all(|n| *n < before), "{before} -> {tail:?}");
        assert!(tail.iter().all(|n| *n >= 8), "{tail:?}");
    }

    #[test]
    fn the_base_outlasts_an_outage_and_one_fast_answer() {
        let mut t = Instant::now();
        let mut c = Concurrency::new(Mode::Auto { max: 32 }, t);
        for rtt in [30, 31, 2, 32, 30, 33, 34, 30, 35] {
            t += Duration::from_millis(500);
            c.on_answer(Duration::from_millis(rtt), false, true, true, t);
        }
        assert_eq!(
            c.base(),
            Some(Duration::from_millis(30)),
            "not the 2 ms one"
        );
        // Refused connections and 503s say nothing of it.
        t += Duration::from_millis(500);
        c.on_answer(Duration::from_micros(100), false, false, true, t);
        c.on_answer(Duration::from_micros(100), true, true, true, t);
        assert_eq!(c.base(), Some(Duration::from_millis(30)));
        c.restart(t);
        assert_eq!(
            c.base(),
            Some(Duration::from_millis(30)),
            "kept through an outage"
        );
        // Minutes of slower answers (a slower link for good) replace it.
        for _ in 0..2000 {
            t += Duration::from_millis(500);
            c.on_answer(Duration::from_millis(80), false, true, true, t);
        }
        assert_eq!(c.base(), Some(Duration::from_millis(80)));
    }

    #[test]
    fn only_a_queue_that_lasts_at_one_request_takes_the_limit_below_one() {
        let mut t = Instant::now();
        let mut c = Concurrency::new(Mode::Auto { max: 32 }, t);
        for _ in 0..3 {
            t += Duration::from_millis(30);
            c.on_answer(Duration::from_millis(30), false, true, true, t);
        }
        // A slow answer now and then (a loaded machine): never below one.
        for rtt in [300, 30, 30, 30, 30, 300, 30, 30, 30, 30, 300, 30] {
            t += Duration::from_millis(rtt);
            c.on_answer(Duration::from_millis(rtt), false, true, true, t);
            assert!(c.fractional() >= 1.0, "{}", c.fractional());
            assert_eq!(c.paced_until(), None);
        }
        // A queue that stays (a fleet's): below one, and paced.
        for _ in 0..4 {
            t += Duration::from_millis(300);
            c.on_answer(Duration::from_millis(300), false, true, true, t);
        }
        assert!(c.fractional() < 1.0, "{}", c.fractional());
        assert!(c.paced_until().is_some_and(|p| p > t));
    }

    #[test]
    fn a_cold_servers_first_slow_answers_do_not_make_the_base() {
        let mut t = Instant::now();
        let mut c = Concurrency::new(Mode::Auto { max: 32 }, t);
        // A start sends alone only a few times before the limit grows.
        for rtt in [400, 25, 30] {
            t += Duration::from_millis(rtt);
            c.on_answer(Duration::from_millis(rtt), false, true, true, t);
        }
        assert_eq!(c.base(), Some(Duration::from_millis(25)));
    }

    /// A fleet of `gateways` controllers with a backlog each, sharing a server of `slots`
    /// served at once in `service` each, first in first out.
    struct Fleet {
        t: Instant,
        c: Vec<Concurrency>,
        in_flight: Vec<usize>,
        backlog: Vec<u32>,
        /// Requests on their way: (answered at, gateway, sent at, sent alone).
        out: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, usize, Instant, bool)>>,
        slots: Vec<Instant>,
        service: Duration,
        served: u64,
    }

    impl Fleet {
        fn new(gateways: usize, slots: usize, service: Duration) -> Fleet {
            let t = Instant::now();
            Fleet {
                t,
                c: (0..gateways)
                    .map(|_| Concurrency::new(Mode::Auto { max: 32 }, t))
                    .collect(),
                in_flight: vec![0; gateways],
                backlog: vec![0; gateways],
                out: Default::default(),
                slots: vec![t; slots],
                service,
                served: 0,
            }
        }

        fn total_in_flight(&self) -> usize {
            self.in_flight.iter().sum()
        }

        /// Sends what each controller allows, then moves to the next answer or paced send.
        fn step(&mut self) {
            for g in 0..self.c.len() {
                while self.backlog[g] > 0
                    && self.in_flight[g] < self.c[g].limit()
                    && self.c[g].paced_until().is_none_or(|p| p <= self.t)
                {
                    self.backlog[g] -= 1;
                    self.in_flight[g] += 1;
                    self.c[g].on_send(self.in_flight[g]);
                    let slot = (0..self.slots.len())
                        .min_by_key(|i| self.slots[*i])
                        .unwrap_or(0);
                    let done = self.slots[slot].max(self.t) + self.service;
                    self.slots[slot] = done;
                    let alone = self.in_flight[g] == 1;
                    self.out.push(std::cmp::Reverse((done, g, self.t, alone)));
                }
            }
            let paced = (0..self.c.len())
                .filter(|g| self.backlog[*g] > 0)
                .filter_map(|g| self.c[g].paced_until())
                .filter(|p| *p > self.t)
                .min();
            let answer = self.out.peek().map(|r| r.0 .0);
            self.t = match (answer, paced) {
                (Some(a), Some(p)) => a.min(p),
                (a, p) => a.or(p).unwrap_or(self.t + Duration::from_millis(1)),
            };
            while let Some(std::cmp::Reverse((done, g, sent, alone))) = self.out.peek().copied() {
                if done > self.t {
                    break;
                }
                self.out.pop();
                self.in_flight[g] -= 1;
                self.served += 1;
                self.c[g].on_answer(done - sent, false, true, alone, self.t);
            }
        }

        fn run_for(&mut self, span: Duration, mut each: impl FnMut(&Fleet)) {
            let until = self.t + span;
            while self.t < until {
                self.step();
                each(self);
            }
        }
    }

    #[test]
    fn a_fleet_back_from_an_outage_keeps_near_the_servers_slots() {
        // 50 gateways, a server of 8 slots of 40 ms (200 requests/s).
        let service = Duration::from_millis(40);
        let mut f = Fleet::new(50, 8, service);
        // Before the outage: a reading a second each, so every round trip is the server's.
        for _ in 0..30 {
            for g in 0..50 {
                f.backlog[g] += 1;
                f.run_for(Duration::from_millis(20), |_| {});
            }
        }
        assert!(f.c.iter().all(|c| c.base() == Some(service)));
        // The outage: everyone holds 200 readings and starts again at once.
        for g in 0..50 {
            f.backlog[g] += 200;
            f.c[g].restart(f.t);
        }
        let start = f.t;
        let served0 = f.served;
        let mut peak_late = 0;
        let mut samples = Vec::new();
        while f.backlog.iter().any(|b| *b > 0) && f.t - start < Duration::from_secs(600) {
            f.step();
            if f.t - start >= Duration::from_secs(10) {
                peak_late = peak_late.max(f.total_in_flight());
                samples.push(f.total_in_flight());
            }
        }
        let took = (f.t - start).as_secs_f64();
        let allowed = (f.served - served0) as f64 * service.as_secs_f64() / 8.0;
        // Settled where the round trip is the base's bound: 2 x 40 + 20 ms, 20 in flight;
        // not one each (50), and the slots busy: within 10 % of the server's own time.
        let mean = samples.iter().sum::<usize>() as f64 / samples.len().max(1) as f64;
        assert!(mean <= 24.0, "{mean} in flight");
        assert!(peak_late <= 40, "{peak_late}");
        assert!(took <= allowed * 1.1, "{took} s for {allowed} s of work");
    }
}
