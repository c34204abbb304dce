//! How many requests may be in flight: found, not configured. An AIMD controller after
//! Vector's Adaptive Request Concurrency: per window (about one round trip), one more
//! request when the whole limit was in use, little was pushed back and the round trip did
//! not grow; a multiplicative cut when the server pushed back (429, 503, no answer in time) or
//! when the window's round trip is well above the running mean of the past ones (mean +
//! 2.5 standard deviations: a sudden queue) or above three times its floor plus 20 ms (a
//! queue that grew slowly). The floor is the lowest of the last round trips of requests
//! sent alone, so at a low limit it follows a link or a machine that became slower within
//! a few requests; when none went out alone for a minute, the limit drops to one for five
//! answers to measure it again (Envoy's adaptive concurrency filter).
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
//! the served round trips are far above the floor and cut on their own). It grows only
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
/// Past `floor * RTT_FACTOR + RTT_SLACK` the server is queueing our requests; the slack
/// keeps a loopback server's millisecond floor from forbidding any queueing at all.
const RTT_FACTOR: f64 = 3.0;
const RTT_SLACK: Duration = Duration::from_millis(20);
/// Round trips of requests sent alone that make the floor (their lowest).
const ALONE_KEPT: usize = 8;
/// The floor is measured again when no request went out alone for this long.
const FLOOR_MAX_AGE: Duration = Duration::from_secs(60);
/// Answers that make a new floor when it is measured again.
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
    /// The last round trips of requests sent alone (not pushed back), and when.
    alone: std::collections::VecDeque<Duration>,
    alone_at: Option<Instant>,
    /// While the floor is measured again: the limit to come back to, answers still wanted.
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
            alone: std::collections::VecDeque::new(),
            alone_at: None,
            measuring: None,
            window: Window::new(now),
        }
    }

    /// Requests that may be in flight now.
    pub fn limit(&self) -> usize {
        if self.measuring.is_some() {
            return 1;
        }
        self.limit as usize
    }

    /// The round trip of a request sent alone (the lowest of the last few), when known.
    pub fn floor(&self) -> Option<Duration> {
        self.alone.iter().min().copied()
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

    /// An answer (or a failure) came after `rtt`. `alone`: no other request of ours was in
    /// flight when it left.
    pub fn on_answer(&mut self, rtt: Duration, back_pressure: bool, alone: bool, now: Instant) {
        if let Mode::Fixed(_) = self.mode {
            return;
        }
        if alone {
            self.sample_floor(rtt, back_pressure, now);
        }
        if back_pressure {
            self.window.pushed_back += 1;
            self.window.late_push_back |= self.late(rtt);
        } else {
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
        if stale && self.measuring.is_none() {
            self.measuring = Some((self.limit, FLOOR_SAMPLES));
            self.alone.clear();
        }
    }

    /// A pushed-back answer says nothing of the floor, but counts towards the end of a
    /// measurement, which must end even against a server answering nothing but 503.
    fn sample_floor(&mut self, rtt: Duration, back_pressure: bool, now: Instant) {
        self.alone_at = Some(now);
        if !back_pressure {
            if self.alone.len() >= ALONE_KEPT {
                self.alone.pop_front();
            }
            self.alone.push_back(rtt);
        }
        if let Some((back_to, left)) = self.measuring.as_mut() {
            *left -= 1;
            if *left == 0 {
                self.limit = *back_to;
                self.measuring = None;
            }
        }
    }

    /// Everything failed for a while (an outage): start again from one request, as at
    /// start, so that a fleet coming back does not come back at full load.
    pub fn restart(&mut self, now: Instant) {
        if let Mode::Auto { .. } = self.mode {
            self.limit = 1.0;
            self.past = None;
            self.measuring = None;
            self.window = Window::new(now);
        }
    }

    /// Far slower than the requests served (a timeout, a balancer that waited before it
    /// gave up), where a flaky proxy's refusal comes about as fast as an answer.
    fn late(&self, rtt: Duration) -> bool {
        self.mean_rtt()
            .is_some_and(|mean| rtt > mean.mul_f64(RTT_FACTOR) + RTT_SLACK)
    }

    fn end_window(&mut self, now: Instant) {
        let w = std::mem::replace(&mut self.window, Window::new(now));
        if w.answers == 0 || self.measuring.is_some() {
            return;
        }
        if w.served == 0 {
            // Nothing but push-backs, and no round trip measured.
            self.cut();
            return;
        }
        let pushed_back = f64::from(w.pushed_back) / f64::from(w.answers);
        let window_rtt = w.rtt_sum / w.served;
        let rtt = window_rtt.as_secs_f64();
        let (mean, var) = self.past.unwrap_or((rtt, 0.0));
        let queued = rtt > mean + RTT_DEVIATIONS * var.sqrt()
            || self
                .floor()
                .is_some_and(|f| window_rtt > f.mul_f64(RTT_FACTOR) + RTT_SLACK);
        if pushed_back > CUT_SHARE || w.late_push_back || queued {
            self.cut();
        } else if w.full && pushed_back <= GROW_SHARE && rtt <= mean * NOT_LONGER {
            self.limit = (self.limit + 1.0).min(self.max());
        }
        let diff = rtt - mean;
        self.past = Some((
            mean + EWMA_ALPHA * diff,
            (1.0 - EWMA_ALPHA) * (var + EWMA_ALPHA * diff * diff),
        ));
    }

    fn cut(&mut self) {
        // Kept fractional: rounded down at every cut, a limit of 2 would halve at once.
        self.limit = (self.limit * DECREASE).max(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                c.on_answer(rtt, false, n == 1, *t);
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
                c.on_answer(Duration::from_millis(5), true, false, t);
            }
        }
        assert!(c.limit() < before, "{before} -> {}", c.limit());

        let mut pinned = Concurrency::new(Mode::Fixed(6), t);
        for _ in 0..100 {
            t += Duration::from_millis(20);
            pinned.on_answer(Duration::from_secs(5), true, false, t);
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
        // A minute on, the floor is measured again (one request at a time): the new round
        // trip is the norm and the limit finds the 8 slots again.
        run(&mut c, &mut t, 3000, 8, Duration::from_millis(40));
        assert!(
            c.floor().is_some_and(|f| f >= Duration::from_millis(39)),
            "{:?}",
            c.floor()
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
                c.on_answer(Duration::from_millis(20), pushed_back(i, n), n == 1, t);
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
            c.on_answer(Duration::from_millis(5), false, false, t);
        }
        c.on_answer(Duration::from_secs(10), true, false, t);
        t += Duration::from_millis(20);
        c.on_answer(Duration::from_millis(5), false, false, t);
        assert!(c.limit() < before, "{before} -> {}", c.limit());
        // The same answer in 5 ms (a flaky proxy's 503) does not.
        let before = c.limit();
        for _ in 0..3 {
            t += Duration::from_millis(20);
            for _ in 0..31 {
                c.on_answer(Duration::from_millis(5), false, false, t);
            }
            c.on_answer(Duration::from_millis(5), true, false, t);
        }
        assert_eq!(c.limit(), before);
    }

    #[test]
    fn a_queue_that_grows_slowly_past_the_floor_cuts() {
        let mut t = Instant::now();
        let mut c = Concurrency::new(Mode::Auto { max: 32 }, t);
        run(&mut c, &mut t, 50, 1000, Duration::from_millis(10));
        assert_eq!(c.limit(), 32);
        // The round trip creeps up 1 % per window (never a sudden step): the limit holds
        // while it is well within 3 x 10 + 20 ms of the floor, and comes down past it.
        let mut rtt = 10.0;
        let mut lowest_within = 32;
        let mut lowest_past = 32;
        while rtt < 60.0 {
            rtt *= 1.01;
            let service = Duration::from_secs_f64(rtt / 1000.0);
            run(&mut c, &mut t, 1, 1000, service);
            if rtt < 45.0 {
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
}
