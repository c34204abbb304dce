//! Progress between two looks at the queue: readings taken and uploaded, the upload rate
//! and the time to an empty queue. Pure: the daemon's minute summary and
//! `queue stats --watch` hand it two [`Stats`] and the time between them.

use std::time::Duration;

use crate::queue::Stats;

/// What changed between two looks at the queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Readings that entered the queue: now pending, uploaded, dead-lettered or dropped.
    pub taken: u64,
    pub uploaded: u64,
    pub pending: u64,
    /// Readings accepted by the server per second.
    pub upload_rate: f64,
    /// Pending readings gained per second (negative while the queue drains).
    pub growth_rate: f64,
    pub elapsed: Duration,
}

impl Progress {
    /// From `before` to `after`, `elapsed` apart. Counters that went back (the queue was
    /// purged, or recreated) count as no progress rather than a huge negative one.
    pub fn between(before: &Stats, after: &Stats, elapsed: Duration) -> Progress {
        let entered = |s: &Stats| {
            s.pending + s.uploaded_total + s.dead + s.dropped_total + s.dead_evicted_total
        };
        let secs = elapsed.as_secs_f64().max(1e-3);
        let uploaded = after.uploaded_total.saturating_sub(before.uploaded_total);
        Progress {
            taken: entered(after).saturating_sub(entered(before)),
            uploaded,
            pending: after.pending,
            upload_rate: uploaded as f64 / secs,
            growth_rate: (after.pending as f64 - before.pending as f64) / secs,
            elapsed,
        }
    }

    /// How long until the queue is empty at the current net rate; `None` while it does
    /// not shrink. Zero when it is empty.
    pub fn time_to_empty(&self) -> Option<Duration> {
        if self.pending == 0 {
            return Some(Duration::ZERO);
        }
        if self.growth_rate >= 0.0 {
            return None;
        }
        Some(Duration::from_secs_f64(
            (self.pending as f64 / -self.growth_rate).min(1.0e9),
        ))
    }

    /// `upload 12.0/s, queue empty in 3m 20s` (or `growing by 2.0/s`, or `empty`).
    pub fn rate_line(&self) -> String {
        let tail = match self.time_to_empty() {
            Some(Duration::ZERO) => "queue empty".to_owned(),
            Some(t) => format!(
                "queue empty in {}",
                humantime::format_duration(Duration::from_secs(t.as_secs().max(1)))
            ),
            None if self.growth_rate > 0.0 => {
                format!("queue growing by {:.1}/s", self.growth_rate)
            }
            None => "queue not shrinking".to_owned(),
        };
        format!("upload {:.1}/s, {tail}", self.upload_rate)
    }

    /// The daemon's minute line: `last 1m: taken 600, uploaded 590, pending 10 (...)`.
    pub fn summary_line(&self) -> String {
        format!(
            "last {}: taken {}, uploaded {}, pending {} ({})",
            humantime::format_duration(Duration::from_secs(self.elapsed.as_secs())),
            self.taken,
            self.uploaded,
            self.pending,
            self.rate_line()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(pending: u64, uploaded: u64) -> Stats {
        Stats {
            pending,
            uploaded_total: uploaded,
            ..Stats::default()
        }
    }

    #[test]
    fn a_draining_queue_has_a_time_to_empty() {
        let p = Progress::between(&stats(1000, 0), &stats(900, 200), Duration::from_secs(10));
        assert_eq!((p.taken, p.uploaded, p.pending), (100, 200, 900));
        assert_eq!(p.upload_rate, 20.0);
        assert_eq!(p.time_to_empty(), Some(Duration::from_secs(90)));
        assert_eq!(p.rate_line(), "upload 20.0/s, queue empty in 1m 30s");
    }

    #[test]
    fn a_growing_or_empty_queue_says_so() {
        let growing = Progress::between(&stats(10, 0), &stats(30, 0), Duration::from_secs(10));
        assert_eq!(growing.time_to_empty(), None);
        assert_eq!(growing.rate_line(), "upload 0.0/s, queue growing by 2.0/s");
        let empty = Progress::between(&stats(0, 5), &stats(0, 15), Duration::from_secs(60));
        assert_eq!(
            empty.summary_line(),
            "last 1m: taken 10, uploaded 10, pending 0 (upload 0.2/s, queue empty)"
        );
    }

    #[test]
    fn a_purged_queue_is_no_progress_not_a_negative_one() {
        let p = Progress::between(&stats(500, 10), &stats(0, 10), Duration::from_secs(1));
        assert_eq!((p.taken, p.uploaded), (0, 0));
    }
}
