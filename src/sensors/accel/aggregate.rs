//! The accelerometer aggregate: pure math, no I/O.
//!
//! An [`Accumulator`] takes acceleration vectors (m/s²) one by one, in constant memory,
//! and at every tick gives one value for the whole interval: the RMS or the peak of the
//! vibration (the magnitude minus gravity), or the mean magnitude.

use serde::{Deserialize, Serialize};

/// Standard gravity, m/s² (exact by definition).
pub const STANDARD_GRAVITY: f64 = 9.80665;

/// What one reading says about the samples of its interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// Root mean square of the vibration `|a| - g`: its energy. The default.
    #[default]
    Rms,
    /// Largest `||a| - g|`: the worst shock of the interval.
    Peak,
    /// Mean of `|a|` (≈ 1 g at rest): whether the sensor is at rest, tilted or falling.
    Mean,
}

/// Which `g` is subtracted from the magnitude for `rms` and `peak`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gravity {
    /// The mean magnitude over the interval: the gravity as this sensor measures it, so
    /// its offset and sensitivity errors (a few % of 1 g on MEMS parts) do not show up as
    /// a constant fake vibration. The default.
    #[default]
    Measured,
    /// Standard gravity, 9.80665 m/s²: shows slow changes of the magnitude too, and the
    /// sensor's calibration error.
    Standard,
}

/// Unit of the value sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    /// Metres per second squared (SI). The default.
    #[default]
    #[serde(rename = "m/s2")]
    MetresPerSecondSquared,
    /// Standard gravities (1 g = 9.80665 m/s²).
    #[serde(rename = "g")]
    G,
}

impl Unit {
    pub fn from_ms2(self, value: f64) -> f64 {
        match self {
            Unit::MetresPerSecondSquared => value,
            Unit::G => value / STANDARD_GRAVITY,
        }
    }
}

/// Running statistics of the magnitude of the samples: count, mean and sum of squared
/// deviations (Welford's algorithm, stable for a 1 g offset with milli-g vibration),
/// minimum and maximum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accumulator {
    count: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
}

impl Accumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample, a vector in m/s². Non-finite samples are ignored.
    pub fn push(&mut self, sample: [f64; 3]) {
        let magnitude =
            (sample[0] * sample[0] + sample[1] * sample[1] + sample[2] * sample[2]).sqrt();
        self.push_magnitude(magnitude);
    }

    /// Adds one sample given by its magnitude, m/s².
    pub fn push_magnitude(&mut self, magnitude: f64) {
        if !magnitude.is_finite() {
            return;
        }
        self.count += 1;
        if self.count == 1 {
            self.min = magnitude;
            self.max = magnitude;
        } else {
            self.min = self.min.min(magnitude);
            self.max = self.max.max(magnitude);
        }
        let delta = magnitude - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (magnitude - self.mean);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The aggregate over every sample pushed, in `unit`; `None` without samples.
    pub fn value(&self, aggregate: Aggregate, gravity: Gravity, unit: Unit) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let g = match gravity {
            Gravity::Measured => self.mean,
            Gravity::Standard => STANDARD_GRAVITY,
        };
        let ms2 = match aggregate {
            Aggregate::Mean => self.mean,
            // mean((m - g)²) = variance + (mean - g)²
            Aggregate::Rms => {
                let variance = self.m2 / self.count as f64;
                (variance + (self.mean - g).powi(2)).max(0.0).sqrt()
            }
            Aggregate::Peak => (self.max - g).abs().max((g - self.min).abs()),
        };
        Some(unit.from_ms2(ms2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    const G: f64 = STANDARD_GRAVITY;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// `n` samples of gravity on z plus a sine of `amp` at `freq` Hz along z, at `rate` Hz.
    fn sine_on_z(amp: f64, freq: f64, rate: f64, n: usize) -> Accumulator {
        let mut acc = Accumulator::new();
        for i in 0..n {
            let t = i as f64 / rate;
            acc.push([0.0, 0.0, G + amp * (2.0 * PI * freq * t).sin()]);
        }
        acc
    }

    #[test]
    fn at_rest_rms_and_peak_are_zero_and_mean_is_g() {
        let mut acc = Accumulator::new();
        for _ in 0..1000 {
            acc.push([0.0, 0.0, G]);
        }
        let v = |a, g| acc.value(a, g, Unit::MetresPerSecondSquared).unwrap();
        assert!(close(v(Aggregate::Rms, Gravity::Measured), 0.0, 1e-9));
        assert!(close(v(Aggregate::Rms, Gravity::Standard), 0.0, 1e-9));
        assert!(close(v(Aggregate::Peak, Gravity::Measured), 0.0, 1e-9));
        assert!(close(v(Aggregate::Mean, Gravity::Measured), G, 1e-9));
        assert!(close(
            acc.value(Aggregate::Mean, Gravity::Measured, Unit::G)
                .unwrap(),
            1.0,
            1e-12
        ));
    }

    #[test]
    fn tilted_sensor_at_rest_has_no_vibration() {
        // Gravity split over three axes: the magnitude is still 1 g.
        let mut acc = Accumulator::new();
        let c = G / 3f64.sqrt();
        for _ in 0..100 {
            acc.push([c, -c, c]);
        }
        let rms = acc
            .value(Aggregate::Rms, Gravity::Standard, Unit::G)
            .unwrap();
        assert!(close(rms, 0.0, 1e-9), "{rms}");
    }

    #[test]
    fn sine_rms_is_amplitude_over_root_two_and_peak_is_amplitude() {
        // 10 Hz sine of 2 m/s² sampled at 800 Hz over exactly 10 periods.
        let acc = sine_on_z(2.0, 10.0, 800.0, 800);
        for gravity in [Gravity::Measured, Gravity::Standard] {
            let rms = acc
                .value(Aggregate::Rms, gravity, Unit::MetresPerSecondSquared)
                .unwrap();
            assert!(close(rms, 2.0 / 2f64.sqrt(), 1e-6), "{gravity:?} {rms}");
            let peak = acc
                .value(Aggregate::Peak, gravity, Unit::MetresPerSecondSquared)
                .unwrap();
            assert!(close(peak, 2.0, 1e-6), "{gravity:?} {peak}");
        }
        let mean = acc
            .value(
                Aggregate::Mean,
                Gravity::Measured,
                Unit::MetresPerSecondSquared,
            )
            .unwrap();
        assert!(close(mean, G, 1e-9), "{mean}");
        let rms_g = acc
            .value(Aggregate::Rms, Gravity::Measured, Unit::G)
            .unwrap();
        assert!(close(rms_g, 2.0 / 2f64.sqrt() / G, 1e-9));
    }

    #[test]
    fn square_wave_rms_equals_peak() {
        let mut acc = Accumulator::new();
        for i in 0..1000 {
            let s = if i % 2 == 0 { 0.5 } else { -0.5 };
            acc.push([0.0, G + s, 0.0]);
        }
        let rms = acc
            .value(
                Aggregate::Rms,
                Gravity::Measured,
                Unit::MetresPerSecondSquared,
            )
            .unwrap();
        let peak = acc
            .value(
                Aggregate::Peak,
                Gravity::Measured,
                Unit::MetresPerSecondSquared,
            )
            .unwrap();
        assert!(
            close(rms, 0.5, 1e-9) && close(peak, 0.5, 1e-9),
            "{rms} {peak}"
        );
    }

    #[test]
    fn single_shock_sets_the_peak() {
        let mut acc = Accumulator::new();
        for i in 0..100 {
            let z = if i == 50 { G + 30.0 } else { G };
            acc.push([0.0, 0.0, z]);
        }
        let peak = acc
            .value(
                Aggregate::Peak,
                Gravity::Standard,
                Unit::MetresPerSecondSquared,
            )
            .unwrap();
        assert!(close(peak, 30.0, 1e-9), "{peak}");
        // RMS of one 30 spike in 100 samples, about the standard g: sqrt(900/100) = 3.
        let rms = acc
            .value(
                Aggregate::Rms,
                Gravity::Standard,
                Unit::MetresPerSecondSquared,
            )
            .unwrap();
        assert!(close(rms, 3.0, 1e-9), "{rms}");
    }

    #[test]
    fn miscalibrated_sensor_measured_gravity_hides_offset_standard_shows_it() {
        // A sensor reading 1.03 g at rest.
        let mut acc = Accumulator::new();
        for _ in 0..100 {
            acc.push([0.0, 0.0, 1.03 * G]);
        }
        let measured = acc
            .value(Aggregate::Rms, Gravity::Measured, Unit::G)
            .unwrap();
        let standard = acc
            .value(Aggregate::Rms, Gravity::Standard, Unit::G)
            .unwrap();
        assert!(close(measured, 0.0, 1e-9), "{measured}");
        assert!(close(standard, 0.03, 1e-9), "{standard}");
    }

    #[test]
    fn empty_and_non_finite() {
        let mut acc = Accumulator::new();
        assert_eq!(acc.value(Aggregate::Rms, Gravity::Measured, Unit::G), None);
        acc.push([f64::NAN, 0.0, 0.0]);
        assert_eq!(acc.count(), 0);
        acc.push([0.0, 0.0, G]);
        assert_eq!(acc.count(), 1);
    }

    #[test]
    fn unit_names_in_config() {
        #[derive(Deserialize)]
        struct U {
            unit: Unit,
        }
        let u: U = toml::from_str("unit = \"m/s2\"").unwrap();
        assert_eq!(u.unit, Unit::MetresPerSecondSquared);
        let u: U = toml::from_str("unit = \"g\"").unwrap();
        assert_eq!(u.unit, Unit::G);
    }
}
