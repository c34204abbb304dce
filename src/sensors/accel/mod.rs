//! Accelerometers: a sampling thread per sensor drains the chip (its FIFO, or one sample
//! per poll) at the configured rate into an [`Accumulator`]; each tick's `read` takes the
//! aggregate of everything sampled since the previous read.
//!
//! The thread opens and initialises the chip itself and, after a failure, closes it and
//! opens it again with a capped exponential backoff. It also treats a chip that stops
//! producing samples (a power glitch resets it to standby) as a failure, so the chip is
//! initialised again. `read` reports the thread's current failure, if any.

pub mod adxl345;
pub mod aggregate;
mod chip;
mod error;
pub mod mpu6050;

pub use chip::{AccelChip, AccelConfig};

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::sensors::{round, Measurement, Sensor, SensorError, SettingDoc};
use aggregate::{Accumulator, Aggregate, Gravity, Unit};

/// A source of acceleration samples, opened and initialised.
pub trait AccelSource: Send {
    /// Appends every sample available now, each a vector in m/s².
    fn drain(&mut self, out: &mut Vec<[f64; 3]>) -> Result<(), SensorError>;
    /// How often `drain` should be called to lose nothing (half the time the chip's
    /// FIFO takes to fill, or the sample period without a FIFO).
    fn poll_period(&self) -> Duration;
}

/// Opens and initialises the source; called by the sampling thread, again after failures.
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn AccelSource>, SensorError> + Send>;

/// The aggregation settings common to every accelerometer entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccelSettings {
    pub rate_hz: u32,
    pub aggregate: Aggregate,
    pub gravity: Gravity,
    pub unit: Unit,
}

#[derive(Default)]
struct State {
    acc: Accumulator,
    error: Option<SensorError>,
    /// The thread has delivered samples or met an error at least once. Before that, an
    /// empty accumulator is "no fields yet", not a fault: the first tick comes right
    /// after the daemon starts the thread, before the chip has produced anything.
    started: bool,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the accumulator inconsistent in a
        // way that matters; keep going rather than propagate the poison.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An accelerometer read through its own sampling thread.
pub struct AccelSensor {
    name: String,
    field: String,
    settings: AccelSettings,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// First and largest wait before opening a failed source again.
const REOPEN_FIRST: Duration = Duration::from_millis(500);
const REOPEN_CAP: Duration = Duration::from_secs(30);

impl AccelSensor {
    /// Starts the sampling thread. The thread opens the device; this does not block.
    pub fn start(name: String, field: String, settings: AccelSettings, opener: Opener) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            stop: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let thread_name = format!("accel {name}");
        let rate = settings.rate_hz;
        let thread_sensor_name = name.clone();
        let spawned = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || sample_loop(&thread_shared, &thread_sensor_name, opener, rate));
        let thread = match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                shared.lock().error = Some(SensorError::Setup {
                    sensor: name.clone(),
                    detail: format!("cannot start the sampling thread: {e}"),
                });
                None
            }
        };
        AccelSensor {
            name,
            field,
            settings,
            shared,
            thread,
        }
    }
}

impl Sensor for AccelSensor {
    fn name(&self) -> &str {
        &self.name
    }

    /// The thread reopens the chip with its own backoff (`REOPEN_FIRST`..`REOPEN_CAP`)
    /// and `read` only takes the accumulator, so the set's backoff would add nothing but
    /// a late recovery; and reading at every tick also empties the accumulator, so the
    /// first value after a failure covers one interval, not the whole outage.
    fn retries_itself(&self) -> bool {
        true
    }

    fn skipped(&mut self) {
        self.discard();
    }

    fn read(&mut self) -> Result<Vec<Measurement>, SensorError> {
        let (acc, error, started) = {
            let mut state = self.shared.lock();
            (
                std::mem::take(&mut state.acc),
                state.error.clone(),
                state.started,
            )
        };
        if let Some(e) = error {
            return Err(e);
        }
        let s = self.settings;
        match acc.value(s.aggregate, s.gravity, s.unit) {
            Some(v) => Ok(vec![Measurement {
                field: self.field.clone(),
                value: round(v, 5),
            }]),
            None if !started => Ok(Vec::new()),
            None => Err(SensorError::BadData {
                sensor: self.name.clone(),
                detail: "no samples since the last reading (the sampling thread is starting, or \
                         the interval is shorter than one sample)"
                    .into(),
            }),
        }
    }
}

impl AccelSensor {
    /// Drops what was sampled since the last read: the sensor set calls this (through
    /// `Sensor::skipped`) when it skips a tick, e.g. for an `iio` device whose other
    /// channels are in backoff, so that the first value after recovery covers one
    /// interval rather than the whole outage.
    pub fn discard(&self) {
        self.shared.lock().acc = Accumulator::default();
    }
}

impl Drop for AccelSensor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.thread.take() {
            let _ = handle.join();
        }
    }
}

/// Sleeps `total` in slices, returning early (true) when asked to stop.
fn sleep_or_stop(shared: &Shared, total: Duration) -> bool {
    let deadline = Instant::now() + total;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

fn sample_loop(shared: &Shared, name: &str, mut opener: Opener, rate_hz: u32) {
    // A chip that produced nothing for this long has stopped measuring.
    let stall_after =
        Duration::from_millis(500).max(Duration::from_secs_f64(50.0 / f64::from(rate_hz.max(1))));
    let mut reopen = Backoff::new(REOPEN_FIRST, REOPEN_CAP);
    let mut buffer: Vec<[f64; 3]> = Vec::with_capacity(256);
    while !shared.stop.load(Ordering::Relaxed) {
        match opener() {
            Ok(mut source) => {
                if run_source(shared, name, source.as_mut(), stall_after, &mut buffer) {
                    reopen.reset();
                }
            }
            Err(e) => {
                let mut state = shared.lock();
                state.error = Some(e);
                state.started = true;
            }
        }
        // Without jitter: this chip is ours alone, nobody's retries to spread out.
        if sleep_or_stop(shared, reopen.next_ceiling()) {
            return;
        }
    }
}

/// Drains an open source until it fails or the sensor is dropped. Returns whether it
/// delivered samples (then the next reopen starts from the shortest wait).
fn run_source(
    shared: &Shared,
    name: &str,
    source: &mut dyn AccelSource,
    stall_after: Duration,
    buffer: &mut Vec<[f64; 3]>,
) -> bool {
    let poll = source.poll_period();
    let mut last_sample = Instant::now();
    let mut delivered = false;
    while !shared.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        buffer.clear();
        let outcome = source.drain(buffer);
        if !buffer.is_empty() {
            last_sample = Instant::now();
            delivered = true;
        }
        let failure = match outcome {
            Err(e) => Some(e),
            Ok(()) if last_sample.elapsed() > stall_after => Some(SensorError::BadData {
                sensor: name.to_owned(),
                detail: format!(
                    "no samples for {} ms (the chip stopped measuring, e.g. reset by a power \
                     glitch); initialising it again",
                    stall_after.as_millis()
                ),
            }),
            Ok(()) => None,
        };
        let failed = failure.is_some();
        {
            let mut state = shared.lock();
            for s in buffer.iter() {
                state.acc.push(*s);
            }
            if failed {
                state.error = failure;
                state.started = true;
            } else if !buffer.is_empty() {
                state.error = None;
                state.started = true;
            }
        }
        if failed || sleep_or_stop(shared, poll.saturating_sub(started.elapsed())) {
            return delivered;
        }
    }
    delivered
}

/// Payload field of an accelerometer entry. Omit it for the default; `""` is refused
/// (an accelerometer that sends nothing should be removed instead).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccelFields {
    /// The aggregate of the interval, in the entry's `unit`. Default `"accelerometre"`.
    #[serde(default = "crate::sensors::defaults::acceleration")]
    pub acceleration: String,
}

impl Default for AccelFields {
    fn default() -> Self {
        AccelFields {
            acceleration: crate::sensors::defaults::acceleration(),
        }
    }
}

impl AccelFields {
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        vec![("acceleration", self.acceleration.as_str())]
    }
}

/// `sensors list`: the sampling and aggregation settings of an accelerometer entry.
pub fn settings_doc(
    rate: impl Into<Cow<'static, str>>,
    rates: &'static str,
    range: impl Into<Cow<'static, str>>,
    ranges: &'static str,
) -> Vec<SettingDoc> {
    vec![
        SettingDoc::new("rate_hz", rate, rates),
        SettingDoc::new("range_g", range, ranges),
        SettingDoc::new(
            "aggregate",
            "\"rms\"",
            "value per reading: \"rms\" or \"peak\" of |a| - g, or \"mean\" of |a|",
        ),
        SettingDoc::new(
            "gravity",
            "\"measured\"",
            "g subtracted: \"measured\" (mean |a| of the interval) or \"standard\" (9.80665)",
        ),
        SettingDoc::new("unit", "\"m/s2\"", "unit sent: \"m/s2\" or \"g\""),
        SettingDoc::new(
            "fields",
            "{ acceleration = \"accelerometre\" }",
            "payload field; \"\" drops it",
        ),
    ]
}

/// Checks `rate_hz` against the rates a chip supports.
pub(crate) fn check_rate(
    rate_hz: u32,
    supported: &[u32],
    why: &str,
) -> Result<(), (String, String)> {
    if supported.contains(&rate_hz) {
        return Ok(());
    }
    let list: Vec<String> = supported.iter().map(u32::to_string).collect();
    Err((
        "rate_hz".into(),
        format!(
            "{rate_hz} Hz is not supported; use one of {} ({why})",
            list.join(", ")
        ),
    ))
}

/// Checks `range_g` against the full-scale ranges a chip supports.
pub(crate) fn check_range(range_g: u8, supported: &[u8]) -> Result<(), (String, String)> {
    if supported.contains(&range_g) {
        return Ok(());
    }
    let list: Vec<String> = supported.iter().map(u8::to_string).collect();
    Err((
        "range_g".into(),
        format!(
            "±{range_g} g is not supported; use one of {}",
            list.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Produces `per_drain` samples of a 1 g + 0.5 m/s² square wave on z per drain, and
    /// fails while `fail` is set.
    struct Fake {
        per_drain: usize,
        phase: bool,
        fail: Arc<AtomicBool>,
    }

    impl AccelSource for Fake {
        fn drain(&mut self, out: &mut Vec<[f64; 3]>) -> Result<(), SensorError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(SensorError::Bus {
                    sensor: "fake".into(),
                    detail: "gone".into(),
                });
            }
            for _ in 0..self.per_drain {
                self.phase = !self.phase;
                let z = super::aggregate::STANDARD_GRAVITY + if self.phase { 0.5 } else { -0.5 };
                out.push([0.0, 0.0, z]);
            }
            Ok(())
        }
        fn poll_period(&self) -> Duration {
            Duration::from_millis(2)
        }
    }

    fn settings(aggregate: Aggregate) -> AccelSettings {
        AccelSettings {
            rate_hz: 1000,
            aggregate,
            gravity: Gravity::Measured,
            unit: Unit::MetresPerSecondSquared,
        }
    }

    fn wait_for<F: FnMut() -> bool>(mut f: F) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// An accelerometer on a [`Fake`] source of `per_drain` samples a poll, failing
    /// while `fail` is set.
    fn start_fake(per_drain: usize, fail: &Arc<AtomicBool>, aggregate: Aggregate) -> AccelSensor {
        let f = Arc::clone(fail);
        let opener: Opener = Box::new(move || {
            Ok(Box::new(Fake {
                per_drain,
                phase: false,
                fail: Arc::clone(&f),
            }) as Box<dyn AccelSource>)
        });
        AccelSensor::start("fake".into(), "acc".into(), settings(aggregate), opener)
    }

    #[test]
    fn reads_the_aggregate_of_the_samples_since_the_last_read() {
        let fail = Arc::new(AtomicBool::new(false));
        let mut s = start_fake(10, &fail, Aggregate::Rms);
        std::thread::sleep(Duration::from_millis(30));
        let m = s.read().unwrap();
        assert_eq!(m[0].field, "acc");
        assert!((m[0].value - 0.5).abs() < 1e-3, "{m:?}");
    }

    #[test]
    fn failing_source_is_reported_then_reopened() {
        let fail = Arc::new(AtomicBool::new(true));
        let opens = Arc::new(AtomicUsize::new(0));
        let (f, o) = (Arc::clone(&fail), Arc::clone(&opens));
        let opener: Opener = Box::new(move || {
            o.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Fake {
                per_drain: 4,
                phase: false,
                fail: Arc::clone(&f),
            }) as Box<dyn AccelSource>)
        });
        let mut s = AccelSensor::start(
            "fake".into(),
            "acc".into(),
            settings(Aggregate::Peak),
            opener,
        );
        assert!(wait_for(|| matches!(
            s.read(),
            Err(SensorError::Bus { .. })
        )));
        fail.store(false, Ordering::SeqCst);
        assert!(
            wait_for(|| s.read().is_ok()),
            "recovers after the source comes back"
        );
        assert!(
            opens.load(Ordering::SeqCst) >= 2,
            "the source was opened again"
        );
    }

    #[test]
    fn open_failure_is_reported_and_drop_stops_the_thread() {
        let opener: Opener = Box::new(|| {
            Err(SensorError::Setup {
                sensor: "fake".into(),
                detail: "no bus".into(),
            })
        });
        let mut s = AccelSensor::start(
            "fake".into(),
            "acc".into(),
            settings(Aggregate::Mean),
            opener,
        );
        assert!(wait_for(|| matches!(
            s.read(),
            Err(SensorError::Setup { .. })
        )));
        let started = Instant::now();
        drop(s);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn first_read_before_any_sample_is_no_fields_not_an_error() {
        // The daemon's first tick comes right after the thread starts: the chip has not
        // produced anything yet, which is not a fault.
        let go = Arc::new(AtomicBool::new(false));
        let g = Arc::clone(&go);
        let opener: Opener = Box::new(move || {
            while !g.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(Box::new(Fake {
                per_drain: 4,
                phase: false,
                fail: Arc::new(AtomicBool::new(false)),
            }) as Box<dyn AccelSource>)
        });
        let mut s = AccelSensor::start(
            "fake".into(),
            "acc".into(),
            settings(Aggregate::Rms),
            opener,
        );
        let first = s.read();
        go.store(true, Ordering::SeqCst);
        assert_eq!(first.unwrap(), Vec::new());
        assert!(wait_for(|| matches!(s.read(), Ok(m) if m.len() == 1)));
    }

    #[test]
    fn a_set_reads_a_recovered_accelerometer_at_the_next_tick() {
        use crate::sensors::set::SensorSet;
        use std::time::SystemTime;
        let fail = Arc::new(AtomicBool::new(true));
        let mut s = start_fake(4, &fail, Aggregate::Rms);
        assert!(wait_for(|| matches!(
            s.read(),
            Err(SensorError::Bus { .. })
        )));
        let sec = Duration::from_secs(1);
        let mut set = SensorSet::from_sensors(vec![(Box::new(s), "adxl345".into())], sec);
        let (t0, wall) = (Instant::now(), SystemTime::now());
        // Two failed ticks: a sensor the set backs off would now wait until t0 + 2.5 s.
        assert_eq!(set.read_all_at(t0, wall).failed.len(), 1);
        assert_eq!(set.read_all_at(t0 + sec, wall).failed.len(), 1);
        fail.store(false, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100)); // the thread reopens within 500 ms..
        let mut tick = set.read_all_at(t0 + 2 * sec, wall);
        let deadline = Instant::now() + Duration::from_secs(5);
        while tick.measurements.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            tick = set.read_all_at(t0 + 2 * sec, wall);
        }
        // ..and the tick at 2 s, still inside the set's backoff, reads it.
        assert_eq!(tick.measurements.len(), 1, "{tick:?}");
        assert!(tick.failed.is_empty(), "{tick:?}");
    }

    #[test]
    fn discard_drops_what_was_sampled() {
        let mut s = start_fake(4, &Arc::new(AtomicBool::new(false)), Aggregate::Rms);
        assert!(wait_for(|| s.shared.lock().acc.count() > 400));
        s.skipped();
        // Samples keep coming, but the ones before `skipped` are gone: the accumulator
        // now holds what a few polls (4 samples per 2 ms) add, not hundreds.
        assert!(s.shared.lock().acc.count() < 100);
    }

    #[test]
    fn rate_and_range_checks_list_the_choices() {
        let e = check_rate(300, &[100, 200, 400], "ODR").unwrap_err();
        assert_eq!(e.0, "rate_hz");
        assert!(e.1.contains("100, 200, 400"));
        assert_eq!(check_range(3, &[2, 4]).unwrap_err().0, "range_g");
    }
}
