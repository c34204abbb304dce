//! [`Threaded`]: runs a sensor's reads on its own thread and waits for each at most a
//! deadline, so a read that hangs (a wedged 1-Wire bus, an IIO driver waiting on a
//! dead chip, a stalled I2C bus) costs the tick one deadline instead of blocking the
//! sampler, and with it every other sensor and the watchdog heartbeat.
//!
//! One read at a time, never a queue of them: while a read is still running (past its
//! deadline), later ticks get an error at once instead of starting another read; when
//! it finally ends its result is dropped, because it belongs to a tick that is gone.
//!
//! [`SensorSet`](super::SensorSet) calls [`Sensor::begin_read`] on every sensor before
//! it collects any, so the reads of one tick run side by side and a tick waits for one
//! deadline at most, however many sensors hang.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Measurement, Sensor, SensorError};

/// The shortest deadline. A healthy I2C read takes up to ~20 ms (SHT3x's 16 ms
/// measurement, plus the chip's reset on a first read) and a woken thread may wait a few
/// ms for a core on a busy Pi: below this, healthy sensors would be marked failing at
/// fast sampling intervals. A tick with a hanging sensor then runs late by this much at
/// most, which the sampler absorbs (it skips the ticks it missed).
pub const MIN_DEADLINE: Duration = Duration::from_millis(50);
/// The longest deadline. No healthy read of the wrapped sensors takes this long (a
/// DS18B20's conversion, the slowest, is 750 ms), so waiting longer only delays the
/// reading that carries the other sensors' fields.
pub const MAX_DEADLINE: Duration = Duration::from_secs(2);

/// How long a tick waits for one read at sampling `interval`: half the interval, within
/// [`MIN_DEADLINE`]..=[`MAX_DEADLINE`]. Half, because the reads of a tick start together:
/// a hang then ends the tick by mid-interval, leaving the other half for the reading to
/// be queued, so the sampler keeps its schedule and the other fields go out on time.
pub fn deadline(interval: Duration) -> Duration {
    (interval / 2).clamp(MIN_DEADLINE, MAX_DEADLINE)
}

/// A sensor whose reads run on a thread of their own, named `sensor-<name>`, each
/// awaited at most a deadline. The thread starts at the first read (building a sensor
/// touches nothing), and ends after this is dropped, once its current read returns:
/// dropping never waits for a hanging read.
pub struct Threaded<S: Sensor + 'static> {
    name: String,
    deadline: Duration,
    shared: Arc<Shared>,
    /// The sensor until its thread runs (kept if the thread cannot be started, to try
    /// again at the next tick).
    parked: Option<S>,
    /// This tick's read, between `begin_read` and `read`.
    begun: Option<Begun>,
    next_id: u64,
    /// The inner sensor's answer, as of its last read (it lives on the thread).
    retries_itself: bool,
}

enum Begun {
    /// Read number `id` was asked for at `at`.
    Started {
        id: u64,
        at: Instant,
    },
    /// A previous read, asked for at `since`, still runs: none was started.
    Busy {
        since: Instant,
    },
    Failed(SensorError),
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the thread: a read or skip is asked for, or the sensor is dropped.
    to_worker: Condvar,
    /// Wakes the reader: a read finished, or the thread ended.
    to_reader: Condvar,
}

#[derive(Default)]
struct State {
    /// Number of the read to run.
    request: Option<u64>,
    /// `Sensor::skipped` to run (coalesced: a flag, not a queue).
    skip: bool,
    /// The `Threaded` was dropped: the thread ends.
    closed: bool,
    /// When the read now asked for or running was asked for; `None` when idle.
    busy_since: Option<Instant>,
    /// The last finished read, with its number.
    done: Option<(u64, Result<Vec<Measurement>, SensorError>)>,
    retries_itself: bool,
    /// The thread ended (its sensor panicked).
    gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock (reads run outside it), so a poisoned
        // lock still holds consistent state: keep going rather than spread the panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S: Sensor + 'static> Threaded<S> {
    /// Wraps `sensor`; each read is awaited at most `deadline` (see [`deadline`]).
    pub fn new(sensor: S, deadline: Duration) -> Self {
        let retries_itself = sensor.retries_itself();
        Threaded {
            name: sensor.name().to_owned(),
            deadline,
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    retries_itself,
                    ..State::default()
                }),
                to_worker: Condvar::new(),
                to_reader: Condvar::new(),
            }),
            parked: Some(sensor),
            begun: None,
            next_id: 0,
            retries_itself,
        }
    }

    fn bus_error(&self, detail: String) -> SensorError {
        SensorError::Bus {
            sensor: self.name.clone(),
            detail,
        }
    }

    fn gone_error(&self) -> SensorError {
        SensorError::Setup {
            sensor: self.name.clone(),
            detail: "its reading thread ended (its driver panicked: see the log); restart \
                     the daemon to read it again"
                .into(),
        }
    }

    /// Starts the thread if it does not run yet.
    fn ensure_worker(&mut self) -> Result<(), SensorError> {
        let Some(sensor) = self.parked.take() else {
            return Ok(());
        };
        // The sensor goes over a channel after the spawn succeeded, so a failed spawn
        // leaves it here for the next attempt instead of dropping it with the closure.
        let (give, take) = std::sync::mpsc::sync_channel::<S>(1);
        let shared = Arc::clone(&self.shared);
        let (name, deadline) = (self.name.clone(), self.deadline);
        let spawned = std::thread::Builder::new()
            // A NUL would make the spawn panic; Linux keeps the first 15 bytes.
            .name(format!("sensor-{}", self.name.replace('\0', "")))
            .spawn(move || {
                if let Ok(sensor) = take.recv() {
                    work(sensor, &shared, &name, deadline);
                }
            });
        match spawned {
            // Dropping the handle detaches the thread: it never delays the exit.
            Ok(_) => give.send(sensor).map_err(|e| {
                self.parked = Some(e.0);
                self.gone_error()
            }),
            Err(e) => {
                self.parked = Some(sensor);
                Err(SensorError::Setup {
                    sensor: self.name.clone(),
                    detail: format!(
                        "cannot start its reading thread: {e} (out of memory or of \
                         threads?); retried at the next attempt"
                    ),
                })
            }
        }
    }

    fn start(&mut self) -> Begun {
        if let Err(e) = self.ensure_worker() {
            return Begun::Failed(e);
        }
        let now = Instant::now();
        let mut st = self.shared.lock();
        if st.gone {
            drop(st);
            return Begun::Failed(self.gone_error());
        }
        if let Some(since) = st.busy_since {
            return Begun::Busy { since };
        }
        // A result still here finished after its deadline: it belongs to an old tick.
        st.done = None;
        self.next_id += 1;
        st.request = Some(self.next_id);
        st.busy_since = Some(now);
        self.shared.to_worker.notify_one();
        Begun::Started {
            id: self.next_id,
            at: now,
        }
    }

    /// Waits until read `id` is done or `until`.
    fn collect(&mut self, id: u64, until: Instant) -> Result<Vec<Measurement>, SensorError> {
        let mut st = self.shared.lock();
        loop {
            if matches!(st.done, Some((done, _)) if done == id) {
                self.retries_itself = st.retries_itself;
                if let Some((_, result)) = st.done.take() {
                    return result;
                }
            }
            if st.gone {
                drop(st);
                return Err(self.gone_error());
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(st);
                return Err(self.bus_error(format!(
                    "read did not finish within {} ms (the device or its bus hangs: check \
                     its wiring and power, and `dmesg` for bus errors)",
                    self.deadline.as_millis()
                )));
            }
            st = match self.shared.to_reader.wait_timeout(st, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

impl<S: Sensor + 'static> Sensor for Threaded<S> {
    fn name(&self) -> &str {
        &self.name
    }

    fn begin_read(&mut self) {
        if self.begun.is_none() {
            self.begun = Some(self.start());
        }
    }

    fn read(&mut self) -> Result<Vec<Measurement>, SensorError> {
        let begun = match self.begun.take() {
            Some(b) => b,
            None => self.start(),
        };
        match begun {
            Begun::Started { id, at } => self.collect(id, at + self.deadline),
            Begun::Busy { since } => Err(self.bus_error(format!(
                "previous read still running for {:.1}s (the device or its bus hangs); no \
                 other read is started until it returns",
                since.elapsed().as_secs_f64()
            ))),
            Begun::Failed(e) => Err(e),
        }
    }

    fn retries_itself(&self) -> bool {
        self.retries_itself
    }

    fn skipped(&mut self) {
        if let Some(sensor) = self.parked.as_mut() {
            sensor.skipped();
            return;
        }
        // Runs on the thread, after the read in progress if any.
        self.shared.lock().skip = true;
        self.shared.to_worker.notify_one();
    }
}

impl<S: Sensor + 'static> Drop for Threaded<S> {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.to_worker.notify_one();
    }
}

/// Marks the thread gone when it ends, even by a panic, so readers stop waiting for it.
struct Gone<'a>(&'a Shared);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        self.0.lock().gone = true;
        self.0.to_reader.notify_all();
    }
}

/// The thread: runs the reads and skips asked for, until the `Threaded` is dropped.
fn work<S: Sensor>(mut sensor: S, shared: &Shared, name: &str, deadline: Duration) {
    let _gone = Gone(shared);
    loop {
        let mut st = shared.lock();
        while st.request.is_none() && !st.skip && !st.closed {
            st = shared.to_worker.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.closed {
            return;
        }
        let skip = std::mem::take(&mut st.skip);
        let request = st.request.take();
        drop(st);
        if skip {
            sensor.skipped();
        }
        let Some(id) = request else { continue };
        let started = Instant::now();
        let result = sensor.read();
        let took = started.elapsed();
        let mut st = shared.lock();
        st.busy_since = None;
        st.retries_itself = sensor.retries_itself();
        st.done = Some((id, result));
        drop(st);
        shared.to_reader.notify_all();
        if took > deadline {
            // Once per hang: the tick's error said it hangs, this says how long it did.
            tracing::info!(sensor = %name, took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                "a read that missed its deadline returned; its result is dropped (it belongs to an old tick)");
        }
    }
}

/// A fake sensor that blocks while its gate is closed, for the tests of this module, of
/// the sensor set and of the sampler.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    use crate::sensors::{Measurement, Sensor, SensorError};

    /// Open or closed; reads wait while it is closed.
    #[derive(Clone, Default)]
    pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

    impl Gate {
        pub fn closed() -> Self {
            Gate::default()
        }
        pub fn open(&self) {
            *self.0 .0.lock().unwrap() = true;
            self.0 .1.notify_all();
        }
        fn wait(&self) {
            let mut open = self.0 .0.lock().unwrap();
            while !*open {
                open = self.0 .1.wait(open).unwrap();
            }
        }
    }

    /// Sends `field` = the number of its read (1, 2, ...) once its gate is open.
    pub struct Gated {
        pub name: String,
        pub field: String,
        pub gate: Gate,
        pub reads: Arc<AtomicU32>,
        pub skips: Arc<AtomicU32>,
        pub retries_itself: bool,
        /// Set when the sensor is dropped (its thread ended).
        pub dropped: Arc<AtomicU32>,
    }

    impl Gated {
        pub fn new(name: &str, field: &str, gate: &Gate) -> Self {
            Gated {
                name: name.into(),
                field: field.into(),
                gate: gate.clone(),
                reads: Arc::default(),
                skips: Arc::default(),
                retries_itself: false,
                dropped: Arc::default(),
            }
        }
    }

    impl Sensor for Gated {
        fn name(&self) -> &str {
            &self.name
        }
        fn read(&mut self) -> Result<Vec<Measurement>, SensorError> {
            let n = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
            self.gate.wait();
            Ok(vec![Measurement {
                field: self.field.clone(),
                value: f64::from(n),
            }])
        }
        fn retries_itself(&self) -> bool {
            self.retries_itself
        }
        fn skipped(&mut self) {
            self.skips.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Drop for Gated {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls `done` every 10 ms for up to 5 s.
    pub fn eventually(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{eventually, Gate, Gated};
    use super::*;
    use std::sync::atomic::Ordering;

    const D: Duration = Duration::from_millis(100);
    /// Far above `D`: only a read that waited for the hang would take this long.
    const PROMPT: Duration = Duration::from_secs(2);

    #[test]
    fn deadline_is_half_the_interval_within_bounds() {
        assert_eq!(deadline(Duration::from_secs(1)), Duration::from_millis(500));
        assert_eq!(deadline(Duration::from_millis(5)), MIN_DEADLINE);
        assert_eq!(deadline(Duration::from_secs(60)), MAX_DEADLINE);
    }

    #[test]
    fn a_hanging_read_times_out_is_not_repeated_and_its_late_result_is_dropped() {
        let gate = Gate::closed();
        let fake = Gated::new("hangs", "t", &gate);
        let reads = Arc::clone(&fake.reads);
        let mut s = Threaded::new(fake, D);

        let started = Instant::now();
        let e = s.read().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(started.elapsed() < PROMPT, "waited for the hang");
        assert!(e.contains("did not finish within 100 ms"), "{e}");

        // The next tick: the first read still hangs, so no second one is started.
        let started = Instant::now();
        let e = s.read().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(started.elapsed() < PROMPT);
        assert!(e.contains("previous read still running for"), "{e}");
        assert_eq!(reads.load(Ordering::SeqCst), 1);

        // The device answers: read 1 returns late and is dropped; read 2 is what the
        // next tick gets.
        gate.open();
        let mut got = None;
        assert!(eventually(|| {
            got = s.read().ok();
            got.is_some()
        }));
        assert_eq!(
            got,
            Some(vec![Measurement {
                field: "t".into(),
                value: 2.0
            }])
        );
        assert_eq!(s.read().ok().map(|m| m[0].value), Some(3.0));
    }

    #[test]
    fn begin_read_starts_the_read_that_read_collects() {
        let gate = Gate::closed();
        gate.open();
        let fake = Gated::new("ok", "t", &gate);
        let reads = Arc::clone(&fake.reads);
        let mut s = Threaded::new(fake, D);
        s.begin_read();
        s.begin_read(); // twice in a tick is still one read
        assert_eq!(s.read().ok().map(|m| m[0].value), Some(1.0));
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn skipped_and_retries_itself_reach_the_inner_sensor() {
        let gate = Gate::closed();
        gate.open();
        let mut fake = Gated::new("self-retrying", "acc", &gate);
        fake.retries_itself = true;
        let skips = Arc::clone(&fake.skips);
        let mut s = Threaded::new(fake, D);
        assert!(s.retries_itself());
        s.skipped(); // before the thread runs: directly
        assert_eq!(skips.load(Ordering::SeqCst), 1);
        assert!(s.read().is_ok());
        assert!(s.retries_itself());
        s.skipped(); // on the thread
        assert!(eventually(|| skips.load(Ordering::SeqCst) == 2));
        assert_eq!(s.name(), "self-retrying");
    }

    #[test]
    fn dropping_never_waits_for_a_hanging_read_and_the_thread_then_ends() {
        let gate = Gate::closed();
        let fake = Gated::new("hangs", "t", &gate);
        let dropped = Arc::clone(&fake.dropped);
        let mut s = Threaded::new(fake, D);
        assert!(s.read().is_err());
        let started = Instant::now();
        drop(s);
        assert!(started.elapsed() < PROMPT);
        assert_eq!(dropped.load(Ordering::SeqCst), 0, "still in its read");
        gate.open();
        assert!(
            eventually(|| dropped.load(Ordering::SeqCst) == 1),
            "the thread did not end after its read returned"
        );
    }

    #[test]
    fn a_panicking_driver_is_an_error_not_a_hang() {
        struct Panics;
        impl Sensor for Panics {
            fn name(&self) -> &str {
                "panics"
            }
            fn read(&mut self) -> Result<Vec<Measurement>, SensorError> {
                panic!("driver bug")
            }
        }
        let mut s = Threaded::new(Panics, Duration::from_secs(30));
        let started = Instant::now();
        let e = s.read().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(e.contains("thread ended"), "{e}");
        let e = s.read().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("thread ended"), "{e}");
    }
}
