//! A run of identical failures said in a few lines: one when it starts, a count once a
//! minute while it lasts, one when it ends. Against a proxy answering 503 to a third of
//! the requests, one line per failure is thousands of lines that all say the same thing.

use std::time::{Duration, Instant};

/// While a run lasts, its count is said this often.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// What to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A failure unlike the one before it.
    Started { what: String },
    /// The same failure, `count` times since it started.
    Repeated { what: String, count: u64 },
    /// The run is over: a success, or another failure.
    Ended {
        what: String,
        count: u64,
        lasted: Duration,
    },
}

#[derive(Debug, Default)]
pub struct FailureLog {
    run: Option<Run>,
}

#[derive(Debug)]
struct Run {
    what: String,
    count: u64,
    since: Instant,
    said_at: Instant,
    said_count: u64,
}

impl FailureLog {
    /// The failure now going on, if any.
    pub fn current(&self) -> Option<&str> {
        self.run.as_ref().map(|r| r.what.as_str())
    }

    /// A failure happened: the lines to log (none while it repeats within the minute).
    pub fn failed(&mut self, what: &str, now: Instant) -> Vec<Line> {
        if let Some(run) = self.run.as_mut().filter(|r| r.what == what) {
            run.count += 1;
            return self.tick(now).into_iter().collect();
        }
        let mut lines: Vec<Line> = self.end(now).into_iter().collect();
        self.run = Some(Run {
            what: what.to_owned(),
            count: 1,
            since: now,
            said_at: now,
            said_count: 1,
        });
        lines.push(Line::Started { what: what.into() });
        lines
    }

    /// The minute's count, when due and something happened since it was last said.
    pub fn tick(&mut self, now: Instant) -> Option<Line> {
        let run = self.run.as_mut()?;
        if now.saturating_duration_since(run.said_at) < REPEAT_EVERY || run.count == run.said_count
        {
            return None;
        }
        run.said_at = now;
        run.said_count = run.count;
        Some(Line::Repeated {
            what: run.what.clone(),
            count: run.count,
        })
    }

    /// Something went through: the run, if any, is over.
    pub fn succeeded(&mut self, now: Instant) -> Option<Line> {
        self.end(now)
    }

    fn end(&mut self, now: Instant) -> Option<Line> {
        let run = self.run.take()?;
        Some(Line::Ended {
            what: run.what,
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
        // 503 ten times a second for three minutes and a half.
        for i in 0..2100u64 {
            lines.extend(log.failed("503", t0 + Duration::from_millis(100 * i)));
        }
        lines.extend(log.succeeded(t0 + Duration::from_secs(211)));
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(lines[0], Line::Started { what: "503".into() });
        assert!(
            matches!(lines[1], Line::Repeated { count: 601, .. }),
            "{:?}",
            lines[1]
        );
        assert!(
            matches!(lines[3], Line::Repeated { count: 1801, .. }),
            "{:?}",
            lines[3]
        );
        assert!(
            matches!(lines[4], Line::Ended { count: 2100, lasted, .. } if lasted == Duration::from_secs(211)),
            "{:?}",
            lines[4]
        );
        assert_eq!(log.succeeded(t0 + Duration::from_secs(300)), None);
    }

    #[test]
    fn another_failure_ends_the_run_and_starts_its_own() {
        let t0 = Instant::now();
        let mut log = FailureLog::default();
        assert_eq!(log.failed("404", t0).len(), 1);
        let lines = log.failed("503", t0 + Duration::from_secs(1));
        assert!(matches!(&lines[0], Line::Ended { what, count: 1, .. } if what == "404"));
        assert_eq!(lines[1], Line::Started { what: "503".into() });
        assert_eq!(log.current(), Some("503"));
        // Nothing new within the minute: no count line.
        assert_eq!(log.tick(t0 + Duration::from_secs(120)), None);
    }
}
