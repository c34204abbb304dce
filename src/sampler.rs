//! Ticks at `sampling.interval`, reads the sensors, stamps the capture time and hands the
//! reading to the queue. Runs on its own thread: it never waits for the network, and a slow
//! sensor never stalls the uploader.

use std::time::{Duration, Instant};

use crate::clock::{boottime_ms, clock_floor_ms, Clock};
use crate::config::OnSensorError;
use crate::queue::writer::{Captured, StoreHandle};
use crate::reading::Reading;
use crate::sensors::set::{SensorSet, Tick};
use crate::watchdog::{Heartbeat, Stop};

/// Ticks late by less than this are caught up (at up to twice the rate) instead of skipped,
/// so a loaded machine that wakes the sampler late still takes every reading at 1 kHz.
const CATCH_UP_LIMIT: Duration = Duration::from_millis(100);
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

pub struct Sampler {
    pub source: Box<dyn TickSource>,
    pub store: StoreHandle,
    pub clock: Clock,
    pub interval: Duration,
    pub on_sensor_error: OnSensorError,
    pub heartbeat: Heartbeat,
}

impl Sampler {
    /// Samples until `stop` is asked.
    pub fn run(mut self, stop: Stop) {
        let floor = clock_floor_ms();
        let mut next = Instant::now();
        let mut last_failed: Option<Vec<String>> = None;
        let mut health_at = Instant::now();
        let mut warned_clock = false;
        let min_spacing = self.interval / 2;
        let mut last_capture_ms = i64::MIN;
        loop {
            self.heartbeat.beat();
            let tick_started = Instant::now();
            let mut captured_at = self.clock.now();
            if crate::reading::unix_ms(captured_at) == last_capture_ms {
                // Capture times have millisecond precision and identify a reading: wait for
                // the next millisecond rather than stamp two readings alike.
                let into_ms = captured_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_micros() % 1000)
                    .unwrap_or(0);
                std::thread::sleep(Duration::from_micros(u64::from(1000 - into_ms)));
                captured_at = self.clock.now();
            }
            last_capture_ms = crate::reading::unix_ms(captured_at);
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
            let clock_synced = self.clock.trusted(reading.captured_at_ms);
            if !clock_synced && !warned_clock {
                let why = if reading.captured_at_ms < floor {
                    "wall clock is before this build's date"
                } else {
                    "the kernel reports the wall clock unsynchronised (NTP has not set it since boot)"
                };
                tracing::warn!(
                    "{why}: readings are held with their boot time and dated once the clock is synchronised or the server vouches for it (no RTC, no NTP?)"
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
            let behind = now.saturating_duration_since(next);
            if behind > self.interval.max(CATCH_UP_LIMIT) {
                // Far behind (slow sensor, suspended machine): skip the missed ticks rather
                // than firing a burst. A little behind (a late wake-up) is caught up below.
                let missed = behind.as_nanos() / self.interval.as_nanos().max(1) + 1;
                next += self.interval * u32::try_from(missed).unwrap_or(u32::MAX);
            }
            // Half an interval apart at least: a lag is caught up, not fired as a burst.
            // The schedule itself stays put, so a lag is caught up at up to twice the rate.
            let wake = next.max(tick_started + min_spacing);
            if stop.sleep_until(wake, Some(&self.heartbeat)) {
                return;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QueueConfig;
    use crate::queue::Queue;
    use crate::sensors::Measurement;

    /// A queue thread on a fresh queue in a temporary directory (kept alive by the first
    /// element).
    fn queue_thread() -> Result<
        (
            tempfile::TempDir,
            QueueConfig,
            crate::queue::writer::StoreHandle,
            std::thread::JoinHandle<()>,
        ),
        String,
    > {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = QueueConfig {
            path: dir.path().join("q.db"),
            ..QueueConfig::default()
        };
        let queue = Queue::open(&config).map_err(|e| e.to_string())?;
        let (store, thread) = crate::queue::writer::spawn(
            queue,
            Duration::from_millis(10),
            "b".into(),
            Clock::system(),
        )
        .map_err(|e| e.to_string())?;
        Ok((dir, config, store, thread))
    }

    /// What the queue holds once its thread has stopped (every handle dropped).
    fn stored_once_closed(
        thread: std::thread::JoinHandle<()>,
        config: &QueueConfig,
    ) -> Result<Vec<crate::queue::Stored>, String> {
        thread
            .join()
            .map_err(|_| "queue thread panicked".to_string())?;
        let q = Queue::open_read_only(&config.path).map_err(|e| e.to_string())?;
        q.peek(0, 10_000).map_err(|e| e.to_string())
    }

    /// A sensor whose reads are sometimes slow, so ticks run late.
    struct Jittery(u32);

    impl TickSource for Jittery {
        fn read_all(&mut self) -> Tick {
            self.0 += 1;
            if self.0.is_multiple_of(3) {
                std::thread::sleep(Duration::from_millis(4));
            }
            Tick {
                measurements: vec![Measurement {
                    field: "temperature".into(),
                    value: f64::from(self.0),
                }],
                failed: Vec::new(),
            }
        }
    }

    #[test]
    fn a_hanging_sensor_neither_stops_the_heartbeat_nor_the_others_readings() -> Result<(), String>
    {
        use crate::sensors::worker::testing::{Gate, Gated};
        use crate::sensors::worker::{deadline, Threaded};
        use crate::sensors::Sensor;
        let (_dir, config, store, thread) = queue_thread()?;
        let interval = Duration::from_millis(100);
        let stuck = Gate::closed();
        let open = Gate::closed();
        open.open();
        let hung: Box<dyn Sensor> = Box::new(Threaded::new(
            Gated::new("hangs", "temperature_eau", &stuck),
            deadline(interval),
        ));
        let ok: Box<dyn Sensor> = Box::new(Gated::new("ok", "humidite", &open));
        let heartbeat = Heartbeat::new();
        let sampler = Sampler {
            source: Box::new(SensorSet::from_sensors(
                vec![(hung, "ds18b20".into()), (ok, "x".into())],
                interval,
            )),
            store,
            clock: Clock::system(),
            interval,
            on_sensor_error: OnSensorError::Partial,
            heartbeat: heartbeat.clone(),
        };
        let stop = Stop::new();
        let running = {
            let stop = stop.clone();
            std::thread::spawn(move || sampler.run(stop))
        };
        // Before sensors read on their own threads, the sampler blocked in the hanging
        // read and the heartbeat stopped; now it beats at every 100 ms tick.
        let mut longest = Duration::ZERO;
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(50));
            longest = longest.max(heartbeat.since_last_beat(tokio::time::Instant::now()));
        }
        stop.stop();
        running.join().map_err(|_| "sampler panicked".to_string())?;
        stuck.open();
        assert!(
            longest < Duration::from_millis(900),
            "heartbeat silent for {longest:?}"
        );
        let rows = stored_once_closed(thread, &config)?;
        assert!(
            rows.len() >= 3,
            "only {} readings in 1 s at 100 ms",
            rows.len()
        );
        assert!(rows
            .iter()
            .all(|r| r.reading.fields.contains_key("humidite")
                && !r.reading.fields.contains_key("temperature_eau")));
        Ok(())
    }

    #[test]
    fn late_ticks_never_share_a_capture_millisecond_and_stop_is_prompt() -> Result<(), String> {
        let (_dir, config, store, thread) = queue_thread()?;
        let sampler = Sampler {
            source: Box::new(Jittery(0)),
            store,
            clock: Clock::system(),
            interval: Duration::from_millis(5),
            on_sensor_error: OnSensorError::Partial,
            heartbeat: Heartbeat::new(),
        };
        let stop = Stop::new();
        let running = {
            let stop = stop.clone();
            std::thread::spawn(move || sampler.run(stop))
        };
        std::thread::sleep(Duration::from_millis(300));
        let asked = Instant::now();
        stop.stop();
        running.join().map_err(|_| "sampler panicked".to_string())?;
        assert!(asked.elapsed() < Duration::from_millis(100));
        let rows = stored_once_closed(thread, &config)?;
        assert!(
            rows.len() >= 20,
            "only {} readings in 300 ms at 5 ms",
            rows.len()
        );
        let mut stamps: Vec<i64> = rows.iter().map(|r| r.reading.captured_at_ms).collect();
        let n = stamps.len();
        stamps.dedup();
        assert_eq!(stamps.len(), n, "two readings share a capture millisecond");
        Ok(())
    }
}
