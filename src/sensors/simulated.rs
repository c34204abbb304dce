//! A simulated sensor for machines with none: temperature 20–30 °C, humidity 40–80 %,
//! acceleration 0–100, each a bounded random walk so consecutive readings drift plausibly.

use serde::{Deserialize, Serialize};

use std::time::Duration;

use super::{defaults, Measurement, Sensor, SensorError, SensorType, SettingDoc, TypeDoc};

/// A `type = "simulated"` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedConfig {
    /// Seed for a reproducible sequence; random when absent.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Payload field names; see [`SimulatedFields`].
    #[serde(default)]
    pub fields: SimulatedFields,
}

/// Payload fields of a `simulated` entry. Omit a key for its default; set it to `""` to
/// not send that quantity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedFields {
    /// 20–30 °C. Default `"temperature"`.
    #[serde(default = "defaults::temperature")]
    pub temperature: String,
    /// 40–80 %. Default `"humidite"`.
    #[serde(default = "defaults::humidity")]
    pub humidity: String,
    /// 0–100. Default `"accelerometre"`.
    #[serde(default = "defaults::acceleration")]
    pub acceleration: String,
}

impl Default for SimulatedFields {
    fn default() -> Self {
        SimulatedFields {
            temperature: defaults::temperature(),
            humidity: defaults::humidity(),
            acceleration: defaults::acceleration(),
        }
    }
}

impl SensorType for SimulatedConfig {
    fn type_name(&self) -> &'static str {
        "simulated"
    }

    fn doc() -> TypeDoc {
        TypeDoc {
            type_name: "simulated",
            description: "random plausible values, for machines without sensors",
            settings: vec![
                SettingDoc::new("seed", "none", "seed for a reproducible sequence"),
                SettingDoc::new(
                    "fields",
                    "{ temperature = \"temperature\", humidity = \"humidite\", acceleration = \"accelerometre\" }",
                    "payload fields; \"\" drops one",
                ),
            ],
        }
    }

    fn fields(&self) -> Vec<(&'static str, &str)> {
        self.fields.pairs()
    }

    fn check(&self) -> Result<(), (String, String)> {
        Ok(())
    }

    /// Never blocks. Seeded from its position when `seed` is not set.
    fn build(&self, index: usize, _: Duration) -> Box<dyn Sensor> {
        Box::new(Simulated::new(index, self.clone()))
    }
}

impl SimulatedFields {
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("temperature", self.temperature.as_str()),
            ("humidity", self.humidity.as_str()),
            ("acceleration", self.acceleration.as_str()),
        ]
    }
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
    fields: SimulatedFields,
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
            fields: config.fields,
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
        // Every walk advances, so a dropped field does not change the others' sequence.
        let values = [
            (&self.fields.temperature, self.temperature.next(rng)),
            (&self.fields.humidity, self.humidity.next(rng)),
            (&self.fields.acceleration, self.acceleration.next(rng)),
        ];
        Ok(values
            .into_iter()
            .filter(|(field, _)| !field.is_empty())
            .map(|(field, value)| Measurement {
                field: field.clone(),
                value,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_in_range_and_drift_slowly() {
        let mut s = Simulated::new(
            0,
            SimulatedConfig {
                seed: Some(7),
                ..SimulatedConfig::default()
            },
        );
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

    #[test]
    fn fields_are_renamed_or_dropped() {
        let config: SimulatedConfig =
            toml::from_str("seed = 1\nfields = { temperature = \"t\", humidity = \"\" }").unwrap();
        let m = Simulated::new(0, config).read().unwrap_or_default();
        let names: Vec<&str> = m.iter().map(|m| m.field.as_str()).collect();
        assert_eq!(names, ["t", "accelerometre"]);
    }
}
