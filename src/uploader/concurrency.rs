//! How many requests may be in flight: found, not configured. An AIMD controller in the
//! manner of Vector's Adaptive Request Concurrency: one more request per window (about one
//! round trip) that saw no back-pressure and used the whole limit, a multiplicative cut when
//! the server pushes back (429, 503, no answer in time) or when the round trip grows well
//! above its floor (the server queues our requests). The floor is the round trip of a
//! request sent alone; when none was seen for a while the limit drops to one for a few
//! answers to measure it again (Envoy's adaptive concurrency filter), so that a slower link
//! is learnt and a slower server is noticed.

use std::time::{Duration, Instant};

/// The cut on back-pressure or a long round trip (Vector's default `decrease_ratio`).
const DECREASE: f64 = 0.9;
/// A round trip is "well above its floor" past `floor * RTT_FACTOR + RTT_SLACK`: the slack
/// keeps a loopback server's millisecond floor from forbidding any queueing at all.
const RTT_FACTOR: f64 = 3.0;
const RTT_SLACK: Duration = Duration::from_millis(20);
/// The shortest window, so that a sub-millisecond floor does not make the limit jump.
const MIN_WINDOW: Duration = Duration::from_millis(10);
/// Weight of the newest window's mean round trip in the running mean.
const EWMA_ALPHA: f64 = 0.4;
/// The floor is measured again when no request went out alone for this long.
const FLOOR_MAX_AGE: Duration = Duration::from_secs(60);
/// Answers to requests sent alone that make a new floor.
const FLOOR_SAMPLES: u32 = 5;

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
    /// Round trip of a request sent alone, the lowest seen since it was last measured.
    floor: Option<Duration>,
    floor_at: Option<Instant>,
    /// While re-measuring the floor: the limit to come back to, and samples still wanted.
    measuring: Option<(f64, u32, Option<Duration>)>,
    mean: Option<Duration>,
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
            floor: None,
            floor_at: None,
            measuring: None,
            mean: None,
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

    /// The round trip below which the server is not queueing, when known.
    pub fn floor(&self) -> Option<Duration> {
        self.floor
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
    /// flight while it was (its round trip is the link's and the server's, not a queue's).
    pub fn on_answer(&mut self, rtt: Duration, back_pressure: bool, alone: bool, now: Instant) {
        if let Mode::Fixed(_) = self.mode {
            return;
        }
        if alone {
            self.sample_floor(rtt, back_pressure, now);
        } else if !back_pressure && self.floor.is_some_and(|f| rtt < f) {
            self.floor = Some(rtt);
        }
        self.window.rtt_sum += rtt;
        self.window.answers += 1;
        self.window.back_pressure |= back_pressure;
        let length = self.mean.unwrap_or(rtt).max(MIN_WINDOW);
        if now.saturating_duration_since(self.window.start) >= length {
            self.end_window(now);
        }
        if self.measuring.is_none()
            && self
                .floor_at
                .is_some_and(|at| now.saturating_duration_since(at) >= FLOOR_MAX_AGE)
        {
            self.measuring = Some((self.limit, FLOOR_SAMPLES, None));
        }
    }

    /// Everything failed for a while (an outage): start again from one request, as at
    /// start, so that a fleet coming back does not come back at full load.
    pub fn restart(&mut self, now: Instant) {
        if let Mode::Auto { .. } = self.mode {
            self.limit = 1.0;
            self.measuring = None;
            self.window = Window::new(now);
        }
    }

    /// An answer to a request sent alone. One pushed back says nothing of the floor, but
    /// counts towards the end of a measurement, which must end even against a server that
    /// answers nothing but 503.
    fn sample_floor(&mut self, rtt: Duration, back_pressure: bool, now: Instant) {
        match self.measuring.as_mut() {
            Some((back_to, left, lowest)) => {
                if !back_pressure {
                    *lowest = Some(lowest.map_or(rtt, |l| l.min(rtt)));
                }
                *left -= 1;
                if *left == 0 {
                    self.limit = *back_to;
                    if lowest.is_some() {
                        self.floor = *lowest;
                    }
                    self.floor_at = Some(now);
                    self.measuring = None;
                }
            }
            None if back_pressure => {}
            None => {
                if self.floor.is_none_or(|f| rtt <= f) {
                    self.floor = Some(rtt);
                }
                self.floor_at = Some(now);
            }
        }
    }

    fn end_window(&mut self, now: Instant) {
        let w = std::mem::replace(&mut self.window, Window::new(now));
        if w.answers == 0 || self.measuring.is_some() {
            return;
        }
        let rtt = w.rtt_sum / w.answers;
        self.mean = Some(match self.mean {
            None => rtt,
            Some(m) => m.mul_f64(1.0 - EWMA_ALPHA) + rtt.mul_f64(EWMA_ALPHA),
        });
        let queued = self
            .floor
            .is_some_and(|f| rtt > f.mul_f64(RTT_FACTOR) + RTT_SLACK);
        if w.back_pressure || queued {
            self.limit = (self.limit * DECREASE).floor().max(1.0);
        } else if w.full {
            self.limit = (self.limit + 1.0).min(self.max());
        }
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
        t += Duration::from_millis(20);
        c.on_answer(Duration::from_millis(5), true, false, t);
        assert_eq!(c.limit(), (before as f64 * DECREASE) as usize);

        let mut pinned = Concurrency::new(Mode::Fixed(6), t);
        for _ in 0..100 {
            t += Duration::from_millis(20);
            pinned.on_answer(Duration::from_secs(5), true, false, t);
        }
        assert_eq!(pinned.limit(), 6);
    }

    #[test]
    fn a_slower_server_lowers_the_limit_then_its_floor_is_learnt_again() {
        let mut t = Instant::now();
        let mut c = Concurrency::new(Mode::Auto { max: 64 }, t);
        run(&mut c, &mut t, 300, 8, Duration::from_millis(20));
        let before = c.limit();
        // Every request now takes twice as long.
        run(&mut c, &mut t, 30, 8, Duration::from_millis(40));
        let after = c.limit();
        assert!(after < before, "{before} -> {after}");
        // A minute on, the floor is measured again (one request at a time) and the
        // limit no longer treats the new round trip as a queue.
        run(&mut c, &mut t, 3000, 8, Duration::from_millis(40));
        assert!(
            c.floor().is_some_and(|f| f >= Duration::from_millis(39)),
            "{:?}",
            c.floor()
        );
        assert!(c.limit() >= 8, "{}", c.limit());
    }
}
