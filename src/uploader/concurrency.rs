//! How many requests may be in flight: found, not configured. An AIMD controller after
//! Vector's Adaptive Request Concurrency: per window (about one round trip), one more
//! request when the whole limit was in use, nothing pushed back and the round trip did not
//! grow; a multiplicative cut when the server pushed back (429, 503, no answer in time) or
//! when the window's round trip is well above the running mean of the past ones (mean +
//! 2.5 standard deviations: the server started queueing our requests). Comparing with the
//! recent past rather than an all-time floor means a link or a machine that is slower for
//! a while is learnt within a few windows instead of pinning the limit at one.

use std::time::{Duration, Instant};

/// The cut on back-pressure or a long round trip (Vector's default `decrease_ratio`).
const DECREASE: f64 = 0.9;
/// A window's round trip is "well above" the past ones beyond this many deviations.
const RTT_DEVIATIONS: f64 = 2.5;
/// Weight of the newest window in the running mean and variance (Vector's `ewma_alpha`).
const EWMA_ALPHA: f64 = 0.4;
/// The shortest window, so that a sub-millisecond round trip does not make the limit jump.
const MIN_WINDOW: Duration = Duration::from_millis(10);

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
    window: Window,
}

#[derive(Debug, Clone)]
struct Window {
    start: Instant,
    rtt_sum: Duration,
    answers: u32,
    back_pressure: bool,
    /// The limit was reached: all of it was in use at some send of the window.
    full: bool,
}

impl Window {
    fn new(start: Instant) -> Window {
        Window {
            start,
            rtt_sum: Duration::ZERO,
            answers: 0,
            back_pressure: false,
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
            window: Window::new(now),
        }
    }

    /// Requests that may be in flight now.
    pub fn limit(&self) -> usize {
        self.limit as usize
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

    /// An answer (or a failure) came after `rtt`.
    pub fn on_answer(&mut self, rtt: Duration, back_pressure: bool, now: Instant) {
        if let Mode::Fixed(_) = self.mode {
            return;
        }
        self.window.rtt_sum += rtt;
        self.window.answers += 1;
        self.window.back_pressure |= back_pressure;
        let length = self.mean_rtt().unwrap_or(rtt).max(MIN_WINDOW);
        if now.saturating_duration_since(self.window.start) >= length {
            self.end_window(now);
        }
    }

    /// Everything failed for a while (an outage): start again from one request, as at
    /// start, so that a fleet coming back does not come back at full load.
    pub fn restart(&mut self, now: Instant) {
        if let Mode::Auto { .. } = self.mode {
            self.limit = 1.0;
            self.past = None;
            self.window = Window::new(now);
        }
    }

    fn end_window(&mut self, now: Instant) {
        let w = std::mem::replace(&mut self.window, Window::new(now));
        if w.answers == 0 {
            return;
        }
        let rtt = (w.rtt_sum / w.answers).as_secs_f64();
        let (mean, var) = self.past.unwrap_or((rtt, 0.0));
        let queued = rtt > mean + RTT_DEVIATIONS * var.sqrt();
        if w.back_pressure || queued {
            self.limit = (self.limit * DECREASE).floor().max(1.0);
        } else if w.full && rtt <= mean {
            self.limit = (self.limit + 1.0).min(self.max());
        }
        let diff = rtt - mean;
        self.past = Some((
            mean + EWMA_ALPHA * diff,
            (1.0 - EWMA_ALPHA) * (var + EWMA_ALPHA * diff * diff),
        ));
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
                c.on_answer(rtt, false, *t);
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
        t += Duration::from_millis(20);
        c.on_answer(Duration::from_millis(5), true, t);
        assert_eq!(c.limit(), (before as f64 * DECREASE) as usize);

        let mut pinned = Concurrency::new(Mode::Fixed(6), t);
        for _ in 0..100 {
            t += Duration::from_millis(20);
            pinned.on_answer(Duration::from_secs(5), true, t);
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
        // Later the new round trip is the norm: the limit finds the 8 slots again.
        run(&mut c, &mut t, 300, 8, Duration::from_millis(40));
        assert!(c.limit() >= 8, "{}", c.limit());
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
