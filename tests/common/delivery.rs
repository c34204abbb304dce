//! What the delivery checks of the end-to-end tests share: the runs of a daemon, wire
//! timestamps in microseconds, and "every capture time lies in a run, without holes".

/// A longer silence in the capture times of one sampling run means readings were lost
/// (generous: a loaded 2-core machine can delay ticks).
pub const MAX_GAP_US: i64 = 3_000_000;
/// Slack for comparing the gateway's clock readings with the harness's.
pub const CLOCK_SLACK_US: i64 = 1_000_000;

/// A time window (harness clock, µs) during which one daemon run was producing.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub start_us: i64,
    pub end_us: i64,
    /// Whether this run sampled all along (100 ms), so that its capture times must
    /// leave no hole; false for a drain run.
    pub sampling: bool,
}

impl Run {
    /// A run that sampled from `start_us` to `end_us`.
    pub fn sampling(start_us: i64, end_us: i64) -> Run {
        Run {
            start_us,
            end_us,
            sampling: true,
        }
    }

    fn holds(&self, t: i64) -> bool {
        t >= self.start_us - CLOCK_SLACK_US && t <= self.end_us + CLOCK_SLACK_US
    }
}

/// Whether [`capture_time_problem`] also wants the first and last reading of a sampling
/// run within [`MAX_GAP_US`] of its start and end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edges {
    Checked,
    Unchecked,
}

/// Microseconds since the epoch of a wire timestamp (`...Z`).
pub fn parse_us(ts: &str) -> i64 {
    let t = humantime::parse_rfc3339(ts)
        .unwrap_or_else(|e| panic!("cannot parse timestamp {ts:?}: {e}"));
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .expect("timestamp before 1970");
    i64::try_from(d.as_micros()).expect("timestamp overflow")
}

/// The first broken promise about capture times `all` (sorted, µs): each lies in one of
/// `runs`, and within each sampling run there is a reading, with no hole longer than
/// [`MAX_GAP_US`] (nor at its edges, with [`Edges::Checked`]). None when all hold.
pub fn capture_time_problem(all: &[i64], runs: &[Run], edges: Edges) -> Option<String> {
    if let Some(t) = all.iter().find(|&&t| !runs.iter().any(|r| r.holds(t))) {
        return Some(format!(
            "capture time {t} µs lies outside every run of the gateway {runs:?}"
        ));
    }
    for run in runs.iter().filter(|r| r.sampling) {
        let in_run: Vec<i64> = all.iter().copied().filter(|&t| run.holds(t)).collect();
        let (Some(&first), Some(&last)) = (in_run.first(), in_run.last()) else {
            return Some(format!("no reading captured during run {run:?}"));
        };
        // The first tick comes after start-up; the last before SIGTERM.
        if edges == Edges::Checked
            && (first - run.start_us > MAX_GAP_US || run.end_us - last > MAX_GAP_US)
        {
            return Some(format!(
                "readings missing at the start or end of run {run:?}: first {first} last {last}"
            ));
        }
        if let Some(w) = in_run.windows(2).find(|w| w[1] - w[0] > MAX_GAP_US) {
            return Some(format!(
                "no reading captured between {} and {} µs ({} ms): readings were lost",
                w[0],
                w[1],
                (w[1] - w[0]) / 1000
            ));
        }
    }
    None
}
