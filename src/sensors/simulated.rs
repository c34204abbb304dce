//! A simulated sensor for machines with none: temperature 20–30 °C, humidity 40–80 %,
//! acceleration 0–100, each a bounded random walk so consecutive readings drift plausibly.

use serde::{Deserialize, Serialize};

use super::{Measurement, Sensor, SensorError};
use crate::reading::field;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedConfig {
    /// Seed for a reproducible sequence; random when absent.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// A value that wanders inside `[min, max]` by at most `step` per read.
#[derive(Debug, Clone)]
struct Walk {
    value: f64,
    min: f64,
    max: f64,
    step: f64,
}

impl Walk {
    fn new(rng: &mut fastrand::Rng, min: f64, max: f64, step: f64) -> Self {
        Walk {
            value: min + rng.f64() * (max - min),
            min,
            max,
            step,
        }
    }

    fn next(&mut self, rng: &mut fastrand::Rng) -> f64 {
        let delta = (rng.f64() * 2.0 - 1.0) * self.step;
        let mut v = self.value + delta;
        // Reflect at the bounds rather than clamp, so the walk does not stick to an edge.
        if v > self.max {
            v = 2.0 * self.max - v;
        }
        if v < self.min {
            v = 2.0 * self.min - v;
        }
        self.value = v.clamp(self.min, self.max);
        round2(self.value)
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

pub struct Simulated {
    name: String,
    rng: fastrand::Rng,
    temperature: Walk,
    humidity: Walk,
    acceleration: Walk,
}

impl Simulated {
    pub fn new(index: usize, config: SimulatedConfig) -> Self {
        let mut rng = match config.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Simulated {
            name: format!("simulated#{index}"),
            temperature: Walk::new(&mut rng, 20.0, 30.0, 0.2),
            humidity: Walk::new(&mut rng, 40.0, 80.0, 0.5),
            acceleration: Walk::new(&mut rng, 0.0, 100.0, 2.0),
            rng,
        }
    }
}

impl Sensor for Simulated {
    fn name(&self) -> &str {
        &self.name
    }

    fn read(&mut self) -> Result<Vec<Measurement>, SensorError> {
        let rng = &mut self.rng;
        Ok(vec![
            Measurement {
                field: field::TEMPERATURE.into(),
                value: self.temperature.next(rng),
            },
            Measurement {
                field: field::HUMIDITY.into(),
                value: self.humidity.next(rng),
            },
            Measurement {
                field: field::ACCELERATION.into(),
                value: self.acceleration.next(rng),
            },
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_in_range_and_drift_slowly() {
        let mut s = Simulated::new(0, SimulatedConfig { seed: Some(7) });
        let mut last: Option<Vec<Measurement>> = None;
        for _ in 0..10_000 {
            let m = s.read().unwrap_or_default();
            assert_eq!(m.len(), 3);
            assert!((20.0..=30.0).contains(&m[0].value), "{:?}", m[0]);
            assert!((40.0..=80.0).contains(&m[1].value), "{:?}", m[1]);
            assert!((0.0..=100.0).contains(&m[2].value), "{:?}", m[2]);
            if let Some(prev) = &last {
                assert!((m[0].value - prev[0].value).abs() <= 0.21);
                assert!((m[1].value - prev[1].value).abs() <= 0.51);
            }
            last = Some(m);
        }
    }
}
