//! Ticks at `sampling.interval`, reads the sensors, stamps the capture time and hands the
//! reading to the queue. Runs on its own thread: it never waits for the network, and a slow
//! sensor never stalls the uploader.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::config::OnSensorError;
use crate::reading::Reading;
use crate::sensors::set::{SensorSet, Tick};
use crate::store::{Captured, StoreHandle};
use crate::systemd::Heartbeat;

/// Sensor health is written to the queue when it changes, and at least this often.
const HEALTH_EVERY: Duration = Duration::from_secs(30);

/// Whatever reads all sensors once per tick (the configured sensor set, or a fake in tests).
pub trait TickSource: Send {
    fn read_all(&mut self) -> Tick;
    /// Per-sensor health as JSON, for `queue stats`.
    fn health_json(&self) -> Option<String> {
        None
    }
}

/// Below this wall-clock time the clock cannot be right: the binary was built after it.
/// A Pi without a real-time clock boots at its last saved time, or at 1970.
pub fn clock_floor_ms() -> i64 {
    let built: i64 = option_env!("PROFILO_GATEWAY_BUILD_UNIX")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (built - 86_400) * 1000
}

/// Milliseconds of CLOCK_BOOTTIME: monotonic, counts suspend, restarts at boot.
pub fn boottime_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    // time_t and c_long are 32 bits on armv7: widen portably.
    #[allow(clippy::useless_conversion)]
    let (secs, nanos) = (i64::from(ts.tv_sec), i64::from(ts.tv_nsec));
    secs * 1000 + nanos / 1_000_000
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

pub struct Sampler {
    pub source: Box<dyn TickSource>,
    pub store: StoreHandle,
    pub clock: Clock,
    pub interval: Duration,
    pub on_sensor_error: OnSensorError,
    pub heartbeat: Heartbeat,
}

impl Sampler {
    /// Samples until `stop` receives a message or is dropped.
    pub fn run(mut self, stop: Receiver<()>) {
        let floor = clock_floor_ms();
        let mut next = Instant::now();
        let mut last_failed: Option<Vec<String>> = None;
        let mut health_at = Instant::now();
        let mut warned_clock = false;
        loop {
            self.heartbeat.beat();
            let captured_at = self.clock.now();
            let monotonic_ms = boottime_ms();
            let tick = self.source.read_all();
            // Serialising health at every tick would cost more than sampling at 1 kHz.
            if last_failed.as_ref() != Some(&tick.failed) || health_at.elapsed() >= HEALTH_EVERY {
                if let Some(h) = self.source.health_json() {
                    self.store.set_status(crate::queue::status_key::SENSORS, h);
                }
                last_failed = Some(tick.failed.clone());
                health_at = Instant::now();
            }
            let mut reading = Reading::new(captured_at);
            let clock_synced = reading.captured_at_ms >= floor;
            if !clock_synced && !warned_clock {
                tracing::warn!(
                    "wall clock is before this build's date: not synchronised yet (no RTC, no NTP?); readings keep their boot time for correction"
                );
                warned_clock = true;
            }
            let skip = tick.measurements.is_empty()
                || (!tick.failed.is_empty() && self.on_sensor_error == OnSensorError::Skip);
            if !skip {
                for m in tick.measurements {
                    reading.fields.insert(m.field, m.value);
                }
                let captured = Captured {
                    reading,
                    monotonic_ms,
                    clock_synced,
                };
                if self.store.enqueue(captured).is_err() {
                    tracing::error!("queue thread is gone; sampler stops");
                    return;
                }
            }
            next += self.interval;
            let now = Instant::now();
            if next < now {
                // Fell behind (slow sensor, suspended machine): skip the missed ticks
                // rather than firing a burst.
                let missed = (now - next).as_nanos() / self.interval.as_nanos().max(1) + 1;
                next += self.interval * u32::try_from(missed).unwrap_or(u32::MAX);
            }
            match stop.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

impl TickSource for SensorSet {
    fn read_all(&mut self) -> Tick {
        SensorSet::read_all(self)
    }

    fn health_json(&self) -> Option<String> {
        serde_json::to_string(&self.health()).ok()
    }
}
