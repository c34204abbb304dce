//! [`SensorSet`]: every configured sensor, read once per sampling tick, with per-sensor
//! health and retry backoff.
//!
//! The sensors whose reads can hang (I2C climate sensors, `iio`, `ds18b20`) read on
//! threads of their own ([`super::worker::Threaded`]): a tick starts all their reads,
//! then collects them, each awaited at most a deadline. A read that misses it, or whose
//! previous read still runs, is a failure like any other (backoff included), so a hung
//! bus costs one tick a deadline and the other sensors' fields still go out.
//!
//! A sensor that fails (NACK, CRC mismatch, device gone, value out of physical range) is
//! skipped for a while and tried again: after n consecutive failures it waits about
//! `interval · 2ⁿ⁻¹` ticks' worth of time, at most [`BACKOFF_CAP`]. The first failure
//! is retried at the very next tick. Its state is logged once per change: a warning when
//! it starts failing, an info line when it recovers. The other sensors are read as usual.

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::backoff::Backoff;

use super::{build_for_interval, Measurement, Sensor, SensorConfig, SensorError};

/// The longest wait between two attempts on a failing sensor.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// What one tick produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tick {
    /// Every measurement of the sensors that answered.
    pub measurements: Vec<Measurement>,
    /// Names of the sensors that failed this tick or were skipped (in backoff).
    pub failed: Vec<String>,
}

/// `ok` or `failing`, as `queue stats`/`status` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Ok,
    Failing,
}

/// One sensor's health.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensorHealth {
    pub name: String,
    #[serde(rename = "type")]
    pub sensor_type: String,
    pub state: HealthState,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    /// RFC 3339 UTC time of the last good reading; `null` if none yet.
    pub last_ok: Option<String>,
}

struct Slot {
    sensor: Box<dyn Sensor>,
    name: String,
    sensor_type: String,
    /// Its retry schedule; its attempts are the consecutive failures.
    backoff: Backoff,
    last_error: Option<String>,
    last_ok: Option<SystemTime>,
    retry_at: Option<Instant>,
}

/// Every sensor of the configuration; see the module documentation.
pub struct SensorSet {
    slots: Vec<Slot>,
    interval: Duration,
}

impl SensorSet {
    /// Validates and builds every sensor; a bad setting is an error naming the entry
    /// index, type and key. A device that is absent or failing at start is NOT an error:
    /// it is a runtime fault, retried.
    pub fn from_config(
        configs: &[SensorConfig],
        interval: Duration,
    ) -> Result<SensorSet, SensorError> {
        let sensors = build_for_interval(configs, interval)?;
        Ok(Self::from_sensors(
            sensors
                .into_iter()
                .zip(configs)
                .map(|(s, c)| (s, c.type_name().to_owned()))
                .collect(),
            interval,
        ))
    }

    /// A set of already built sensors, each with its type name (tests, custom sensors).
    pub fn from_sensors(sensors: Vec<(Box<dyn Sensor>, String)>, interval: Duration) -> SensorSet {
        let interval = interval.max(Duration::from_millis(1));
        let mut slots: Vec<Slot> = Vec::with_capacity(sensors.len());
        for (index, (sensor, sensor_type)) in sensors.into_iter().enumerate() {
            let mut name = sensor.name().to_owned();
            if slots.iter().any(|s| s.name == name) {
                name = format!("{name}#{index}");
            }
            slots.push(Slot {
                sensor,
                name,
                sensor_type,
                backoff: Backoff::new(interval, BACKOFF_CAP),
                last_error: None,
                last_ok: None,
                retry_at: None,
            });
        }
        SensorSet { slots, interval }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Reads every healthy sensor (skipping ones in backoff), returns all measurements of
    /// this tick.
    pub fn read_all(&mut self) -> Tick {
        self.read_all_at(Instant::now(), SystemTime::now())
    }

    pub(crate) fn read_all_at(&mut self, now: Instant, wall: SystemTime) -> Tick {
        let mut tick = Tick::default();
        // A sensor that retries by itself (accelerometer thread) is never skipped: see
        // `Sensor::retries_itself`.
        let in_backoff: Vec<bool> = self
            .slots
            .iter()
            .map(|s| matches!(s.retry_at, Some(at) if now < at) && !s.sensor.retries_itself())
            .collect();
        // Every read starts before any is awaited: the threaded ones then run side by
        // side, and a tick waits one deadline at most however many sensors hang.
        for (slot, _) in self.slots.iter_mut().zip(&in_backoff).filter(|(_, b)| !**b) {
            slot.sensor.begin_read();
        }
        for (i, skip) in in_backoff.into_iter().enumerate() {
            if skip {
                self.slots[i].sensor.skipped();
                tick.failed.push(self.slots[i].name.clone());
                continue;
            }
            let result = self.slots[i].sensor.read();
            let slot = &mut self.slots[i];
            let failed_before = slot.backoff.attempts();
            match result {
                Ok(measurements) => {
                    if failed_before > 0 {
                        tracing::info!(sensor = %slot.name, after_failures = failed_before, "sensor recovered");
                    }
                    slot.backoff.reset();
                    slot.last_error = None;
                    slot.retry_at = None;
                    slot.last_ok = Some(wall);
                    tick.measurements.extend(measurements);
                }
                Err(e) => {
                    let message = e.to_string();
                    // Without jitter: the retry must fall on a tick, and no other
                    // gateway shares this sensor.
                    let wait = slot.backoff.next_ceiling();
                    let failures = slot.backoff.attempts();
                    if failed_before == 0 {
                        tracing::warn!(sensor = %slot.name, error = %message,
                            "sensor failing; its fields are left out until it recovers");
                    } else {
                        tracing::debug!(sensor = %slot.name, error = %message, failures, "sensor still failing");
                    }
                    slot.last_error = Some(message);
                    // Half an interval early, so the retry falls on the tick it is meant for.
                    slot.retry_at = Some(now + wait.saturating_sub(self.interval / 2));
                    tick.failed.push(slot.name.clone());
                }
            }
        }
        tick
    }

    /// Per-sensor health for `queue stats`/`status`.
    pub fn health(&self) -> Vec<SensorHealth> {
        self.slots
            .iter()
            .map(|s| SensorHealth {
                name: s.name.clone(),
                sensor_type: s.sensor_type.clone(),
                state: if s.backoff.attempts() == 0 {
                    HealthState::Ok
                } else {
                    HealthState::Failing
                },
                last_error: s.last_error.clone(),
                consecutive_failures: s.backoff.attempts(),
                last_ok: s
                    .last_ok
                    .map(|t| humantime::format_rfc3339_millis(t).to_string()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;

    /// Sends `field = 1.0`, or fails while `fail` is set; counts its reads and the
    /// ticks that skipped it (in `reads` too, as 1000 each).
    struct Flaky {
        name: String,
        field: String,
        fail: Arc<AtomicBool>,
        reads: Arc<AtomicU32>,
        retries_itself: bool,
    }

    impl Sensor for Flaky {
        fn name(&self) -> &str {
            &self.name
        }
        fn retries_itself(&self) -> bool {
            self.retries_itself
        }
        fn skipped(&mut self) {
            self.reads.fetch_add(1000, Ordering::SeqCst);
        }
        fn read(&mut self) -> Result<Vec<Measurement>, SensorError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(SensorError::Bus {
                    sensor: self.name.clone(),
                    detail: "NACK".into(),
                });
            }
            Ok(vec![Measurement {
                field: self.field.clone(),
                value: 1.0,
            }])
        }
    }

    fn flaky(name: &str, field: &str) -> (Box<dyn Sensor>, Arc<AtomicBool>, Arc<AtomicU32>) {
        let fail = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU32::new(0));
        let s = Flaky {
            name: name.into(),
            field: field.into(),
            fail: Arc::clone(&fail),
            reads: Arc::clone(&reads),
            retries_itself: false,
        };
        (Box::new(s), fail, reads)
    }

    #[test]
    fn skipped_ticks_tell_the_sensor_and_self_retrying_sensors_are_never_skipped() {
        let (a, a_fail, a_reads) = flaky("a", "t");
        let b_fail = Arc::new(AtomicBool::new(true));
        let b_reads = Arc::new(AtomicU32::new(0));
        let b = Box::new(Flaky {
            name: "b".into(),
            field: "acc".into(),
            fail: Arc::clone(&b_fail),
            reads: Arc::clone(&b_reads),
            retries_itself: true,
        });
        let mut set = SensorSet::from_sensors(vec![(a, "x".into()), (b, "adxl345".into())], SEC);
        a_fail.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        let wall = SystemTime::now();
        // Failures at 0 and 1 put `a` in backoff until 2.5 s: skipped (and told) at 2.
        for s in 0..3u64 {
            set.read_all_at(t0 + Duration::from_secs(s), wall);
        }
        assert_eq!(a_reads.load(Ordering::SeqCst), 2 + 1000);
        // `b` failed every tick but was read every tick, and counts its failures.
        assert_eq!(b_reads.load(Ordering::SeqCst), 3);
        assert_eq!(set.health()[1].consecutive_failures, 3);
        // Its recovery shows at the very next tick.
        b_fail.store(false, Ordering::SeqCst);
        let tick = set.read_all_at(t0 + Duration::from_secs(3), wall);
        assert!(tick.measurements.iter().any(|m| m.field == "acc"));
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn one_failing_sensor_does_not_stop_the_others() {
        let (a, a_fail, _) = flaky("a", "temperature");
        let (b, _, _) = flaky("b", "humidite");
        let mut set = SensorSet::from_sensors(vec![(a, "x".into()), (b, "y".into())], SEC);
        a_fail.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        let tick = set.read_all_at(t0, SystemTime::now());
        assert_eq!(
            tick.measurements,
            vec![Measurement {
                field: "humidite".into(),
                value: 1.0
            }]
        );
        assert_eq!(tick.failed, vec!["a".to_owned()]);
        let h = set.health();
        assert_eq!(h[0].state, HealthState::Failing);
        assert_eq!(h[0].consecutive_failures, 1);
        assert!(h[0].last_error.as_deref().unwrap_or("").contains("NACK"));
        assert_eq!(h[0].last_ok, None);
        assert_eq!(h[1].state, HealthState::Ok);
        assert!(h[1].last_ok.is_some());
    }

    #[test]
    fn backoff_doubles_then_recovery_resets_it() {
        let (a, a_fail, reads) = flaky("a", "t");
        let mut set = SensorSet::from_sensors(vec![(a, "x".into())], SEC);
        a_fail.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        let wall = SystemTime::now();
        // Ticks every second for 20 s: attempts at 0, 1, 3, 7, 15 (waits 1, 2, 4, 8 s).
        let mut attempted = Vec::new();
        for s in 0..20u64 {
            let before = reads.load(Ordering::SeqCst) % 1000; // skips count as 1000
            let tick = set.read_all_at(t0 + Duration::from_secs(s), wall);
            assert_eq!(
                tick.failed,
                vec!["a".to_owned()],
                "failed or skipped at {s}"
            );
            if reads.load(Ordering::SeqCst) % 1000 > before {
                attempted.push(s);
            }
        }
        assert_eq!(attempted, vec![0, 1, 3, 7, 15]);
        assert_eq!(set.health()[0].consecutive_failures, 5);
        // The device comes back: read at the next attempt (15 + 16 = 31), then every tick.
        a_fail.store(false, Ordering::SeqCst);
        assert!(!set
            .read_all_at(t0 + Duration::from_secs(30), wall)
            .failed
            .is_empty());
        let tick = set.read_all_at(t0 + Duration::from_secs(31), wall);
        assert!(tick.failed.is_empty());
        assert_eq!(tick.measurements.len(), 1);
        let h = &set.health()[0];
        assert_eq!(
            (h.state, h.consecutive_failures, h.last_error.clone()),
            (HealthState::Ok, 0, None)
        );
        assert!(set
            .read_all_at(t0 + Duration::from_secs(32), wall)
            .failed
            .is_empty());
    }

    #[test]
    fn a_hanging_sensor_costs_one_deadline_and_the_others_still_go_out() {
        use crate::sensors::worker::testing::{eventually, Gate, Gated};
        use crate::sensors::worker::Threaded;
        let gate = Gate::closed();
        let hung = Gated::new("hangs", "temperature_eau", &gate);
        let hung_reads = Arc::clone(&hung.reads);
        let hung: Box<dyn Sensor> = Box::new(Threaded::new(hung, Duration::from_millis(200)));
        let (ok, _, _) = flaky("ok", "humidite");
        let mut set =
            SensorSet::from_sensors(vec![(hung, "ds18b20".into()), (ok, "x".into())], SEC);
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let humidity_only = vec![Measurement {
            field: "humidite".into(),
            value: 1.0,
        }];

        let started = Instant::now();
        let tick = set.read_all_at(t0, wall);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waited for the hang"
        );
        assert_eq!(tick.measurements, humidity_only);
        assert_eq!(tick.failed, vec!["hangs".to_owned()]);
        let error = set.health()[0].last_error.clone().unwrap_or_default();
        assert!(error.contains("did not finish within 200 ms"), "{error}");

        // Next tick (the first retry, not in backoff): no second read while it hangs.
        let started = Instant::now();
        let tick = set.read_all_at(t0 + SEC, wall);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(tick.measurements, humidity_only);
        let error = set.health()[0].last_error.clone().unwrap_or_default();
        assert!(error.contains("previous read still running"), "{error}");
        assert_eq!(hung_reads.load(Ordering::SeqCst), 1);
        assert_eq!(set.health()[0].consecutive_failures, 2);

        // The bus comes back: the late result of read 1 is dropped, read 2 is sent.
        // Ticks 400 s apart are past any backoff (capped at 300 s).
        gate.open();
        let mut s = 1u64;
        let mut last = Tick::default();
        assert!(eventually(|| {
            s += 1;
            last = set.read_all_at(t0 + Duration::from_secs(400 * s), wall);
            last.failed.is_empty()
        }));
        assert!(
            last.measurements.contains(&Measurement {
                field: "temperature_eau".into(),
                value: 2.0
            }),
            "{last:?}"
        );
        assert_eq!(set.health()[0].state, HealthState::Ok);
    }

    #[test]
    fn hanging_sensors_are_awaited_side_by_side() {
        use crate::sensors::worker::testing::{Gate, Gated};
        use crate::sensors::worker::Threaded;
        let gate = Gate::closed();
        // Five reads that each give up after 600 ms: 3 s one after another, 0.6 s together.
        let sensors = (0..5)
            .map(|i| {
                let s = Gated::new(&format!("hangs{i}"), &format!("f{i}"), &gate);
                let s: Box<dyn Sensor> = Box::new(Threaded::new(s, Duration::from_millis(600)));
                (s, "iio".to_owned())
            })
            .collect();
        let mut set = SensorSet::from_sensors(sensors, SEC);
        let started = Instant::now();
        let tick = set.read_all_at(Instant::now(), SystemTime::now());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(tick.failed.len(), 5);
        gate.open();
    }

    #[test]
    fn backoff_is_capped() {
        let (a, _, _) = flaky("a", "t");
        let mut set = SensorSet::from_sensors(vec![(a, "x".into())], SEC);
        // The wait after the n-th consecutive failure.
        let waits: Vec<Duration> = (0..40)
            .map(|_| set.slots[0].backoff.next_ceiling())
            .collect();
        assert_eq!(waits[0], SEC);
        assert_eq!(waits[3], 8 * SEC);
        assert_eq!(waits[39], BACKOFF_CAP);
    }

    #[test]
    fn duplicate_names_are_made_unique() {
        let (a, _, _) = flaky("same", "t1");
        let (b, _, _) = flaky("same", "t2");
        let set = SensorSet::from_sensors(vec![(a, "x".into()), (b, "x".into())], SEC);
        let names: Vec<String> = set.health().into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["same", "same#1"]);
    }

    #[test]
    fn from_config_validates_without_touching_hardware() {
        // A BME280 on a bus that does not exist here: built fine, fails at read time.
        let configs = vec![
            SensorConfig::Bme280(crate::sensors::climate::bme280::Bme280Config {
                device: Some("/nonexistent/i2c-9".into()),
                fields: crate::sensors::climate::bme280::ClimateFields {
                    temperature: "t_bme".into(),
                    humidity: "h_bme".into(),
                    pressure: String::new(),
                },
                ..Default::default()
            }),
            SensorConfig::Simulated(crate::sensors::simulated::SimulatedConfig {
                seed: Some(3),
                ..Default::default()
            }),
        ];
        let mut set = SensorSet::from_config(&configs, SEC).unwrap();
        let tick = set.read_all();
        assert_eq!(tick.failed.len(), 1);
        assert!(tick.failed[0].starts_with("bme280@/nonexistent/i2c-9"));
        let fields: Vec<&str> = tick.measurements.iter().map(|m| m.field.as_str()).collect();
        assert_eq!(fields, ["temperature", "humidite", "accelerometre"]);
        let health = serde_json::to_value(set.health()).unwrap();
        assert_eq!(health[0]["type"], "bme280");
        assert_eq!(health[0]["state"], "failing");
        assert!(health[0]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("raspi-config"));
        assert_eq!(health[1]["state"], "ok");
        assert!(health[1]["last_ok"].as_str().unwrap_or("").ends_with('Z'));

        let bad = vec![SensorConfig::Gpio(crate::sensors::gpio::GpioConfig {
            pin: 99,
            mode: Default::default(),
            pull: Default::default(),
            edge: Default::default(),
            debounce_ms: None,
            fields: Default::default(),
        })];
        let e = SensorSet::from_config(&bad, SEC)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("sensors[0] (type \"gpio\"): pin:"), "{e}");
    }
}
