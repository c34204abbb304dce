//! Runs of identical failures said in a few lines: one when a run starts, a count once a
//! minute while it lasts, one when it ends. A run lasts while the failure keeps coming,
//! even between successes: against a proxy answering 503 to a third of the requests, one
//! line per failure (or per failure after a success) is thousands of lines that all say
//! the same thing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// While a run lasts, its count is said this often.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);
/// A run is over once something got through and the failure has not come for this long.
pub const QUIET: Duration = Duration::from_secs(10);
/// Runs followed at once; past this the oldest is said to end.
const MAX_RUNS: usize = 8;

/// What to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A failure not seen lately.
    Started { what: String },
    /// The same failure, `count` times since it started.
    Repeated { what: String, count: u64 },
    /// The run is over.
    Ended {
        what: String,
        count: u64,
        lasted: Duration,
    },
}

#[derive(Debug, Default)]
pub struct FailureLog {
    runs: BTreeMap<String, Run>,
    last_success: Option<Instant>,
}

#[derive(Debug)]
struct Run {
    count: u64,
    since: Instant,
    last: Instant,
    said_at: Instant,
    said_count: u64,
}

impl FailureLog {
    /// A failure happened: the lines to log (none while it repeats within the minute).
    pub fn failed(&mut self, what: &str, now: Instant) -> Vec<Line> {
        if let Some(run) = self.runs.get_mut(what) {
            run.count += 1;
            run.last = now;
            return self.tick(now);
        }
        let mut lines = Vec::new();
        if self.runs.len() >= MAX_RUNS {
            let oldest = self
                .runs
                .iter()
                .min_by_key(|(_, r)| r.last)
                .map(|(w, _)| w.clone());
            if let Some(w) = oldest {
                lines.extend(self.end(&w, now));
            }
        }
        self.runs.insert(
            what.to_owned(),
            Run {
                count: 1,
                since: now,
                last: now,
                said_at: now,
                said_count: 1,
            },
        );
        lines.push(Line::Started { what: what.into() });
        lines
    }

    /// Something went through: runs that have been quiet since end (now or at a tick).
    pub fn succeeded(&mut self, now: Instant) -> Vec<Line> {
        self.last_success = Some(now);
        self.tick(now)
    }

    /// Counts due, and the runs that are over.
    pub fn tick(&mut self, now: Instant) -> Vec<Line> {
        let mut lines = Vec::new();
        let over: Vec<String> = self
            .runs
            .iter()
            .filter(|(_, r)| {
                now.saturating_duration_since(r.last) >= QUIET
                    && self.last_success.is_some_and(|s| s > r.last)
            })
            .map(|(w, _)| w.clone())
            .collect();
        for w in over {
            lines.extend(self.end(&w, now));
        }
        for (what, run) in self.runs.iter_mut() {
            if now.saturating_duration_since(run.said_at) >= REPEAT_EVERY
                && run.count > run.said_count
            {
                run.said_at = now;
                run.said_count = run.count;
                lines.push(Line::Repeated {
                    what: what.clone(),
                    count: run.count,
                });
            }
        }
        lines
    }

    fn end(&mut self, what: &str, now: Instant) -> Option<Line> {
        let run = self.runs.remove(what)?;
        Some(Line::Ended {
            what: what.to_owned(),
            count: run.count,
            lasted: now.saturating_duration_since(run.since),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_a_line_at_its_start_a_count_a_minute_and_a_line_at_its_end() {
        let t0 = Instant::now();
        let mut log = FailureLog::default();
        let mut lines = Vec::new();
        // 503 to every third request, ten requests a second, for three minutes and a half.
        for i in 0..2100u64 {
            let t = t0 + Duration::from_millis(100 * i);
            if i % 3 == 0 {
                lines.extend(log.failed("503", t));
            } else {
                lines.extend(log.succeeded(t));
            }
        }
        // Then only successes.
        for s in 210..230 {
            lines.extend(log.succeeded(t0 + Duration::from_secs(s)));
        }
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(lines[0], Line::Started { what: "503".into() });
        assert!(
            matches!(lines[1], Line::Repeated { count: 201, .. }),
            "{:?}",
            lines[1]
        );
        assert!(
            matches!(lines[3], Line::Repeated { count: 601, .. }),
            "{:?}",
            lines[3]
        );
        assert!(
            matches!(lines[4], Line::Ended { count: 700, .. }),
            "{:?}",
            lines[4]
        );
    }

    #[test]
    fn an_outage_does_not_end_its_run_and_two_failures_are_two_runs() {
        let t0 = Instant::now();
        let mut log = FailureLog::default();
        assert_eq!(log.failed("404", t0).len(), 1);
        // No success: still the same run a while later.
        assert!(log.tick(t0 + Duration::from_secs(30)).is_empty());
        let lines = log.failed("503", t0 + Duration::from_secs(31));
        assert_eq!(lines, vec![Line::Started { what: "503".into() }]);
        assert!(log.failed("404", t0 + Duration::from_secs(32)).is_empty());
        // Nothing new within the minute: no count line; then success and quiet: both end.
        let lines = log.succeeded(t0 + Duration::from_secs(50));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().all(|l| matches!(l, Line::Ended { .. })));
    }
}
