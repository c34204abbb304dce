//! Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
//! Jitter"): the n-th wait is uniform in [0, min(cap, base * 2^n)], so many gateways that
//! failed together do not retry together. Twenty lines, so no crate for it.
//!
//! [`Backoff::next_ceiling`] is the same schedule without the jitter, for retries that
//! nobody else shares (a local sensor, a chip on our own bus): they are due at a tick
//! and need a wait they can count on.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The ceiling of the next wait, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next wait, at least `floor` (e.g. a server's `Retry-After`) but never more
    /// than the cap: a `Retry-After` of days, or an HTTP date compared with a local clock
    /// that is wrong (a Pi without RTC before NTP), must not stall the uploader for good.
    pub fn next_wait(&mut self, floor: Option<Duration>) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let jittered = ceiling.mul_f64(fastrand::f64());
        jittered.max(floor.unwrap_or(Duration::ZERO).min(self.cap))
    }

    /// The next wait without jitter: [`Self::ceiling`], then one attempt more.
    pub fn next_ceiling(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling
    }

    /// The next wait with equal jitter, uniform in [c/2, c] where c is the ceiling but no
    /// more than `cap`: half the spread of full jitter, and never a near-zero wait in a
    /// loop that probes a server that is down.
    pub fn next_wait_within(&mut self, cap: Duration) -> Duration {
        let ceiling = self.ceiling().min(cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling / 2 + (ceiling / 2).mul_f64(fastrand::f64())
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_below_the_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let ceiling = b.ceiling();
            let wait = b.next_wait(None);
            assert!(wait <= ceiling);
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn next_ceiling_doubles_to_the_cap_without_jitter() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let waits: Vec<u128> = (0..9).map(|_| b.next_ceiling().as_millis()).collect();
        assert_eq!(
            waits,
            vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(b.attempts(), 9);
        b.reset();
        assert_eq!(b.next_ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_secs(10));
        assert!(b.next_wait(Some(Duration::from_secs(5))) >= Duration::from_secs(5));
    }

    #[test]
    fn retry_after_is_capped_at_backoff_max() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_secs(2));
        // A year, as a far-future HTTP date read with a clock stuck in the past gives.
        let wait = b.next_wait(Some(Duration::from_secs(365 * 86_400)));
        assert!(wait <= Duration::from_secs(2), "{wait:?}");
    }

    #[test]
    fn within_a_cap_the_wait_is_equal_jitter_below_it() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        for _ in 0..10 {
            b.next_wait(None);
        }
        let w = b.next_wait_within(Duration::from_secs(4));
        assert!(
            w >= Duration::from_secs(2) && w <= Duration::from_secs(4),
            "{w:?}"
        );
        assert_eq!(b.attempts(), 11);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..1000 {
            assert!(b.next_wait(None) <= Duration::from_secs(60));
        }
    }
}
