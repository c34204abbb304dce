//! Sensors: the [`Sensor`] trait, the `[[sensors]]` configuration, and building sensors from it.
//! One file per sensor type.

pub mod simulated;

use std::fmt;

use serde::{Deserialize, Serialize};

/// What went wrong reading a sensor. Each variant says what to check.
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    /// The bus or device answered with an error (NACK, I/O error, device gone).
    #[error("{sensor}: bus error: {detail} (check wiring, address and that the bus is enabled)")]
    Bus { sensor: String, detail: String },
    /// The device answered but the data failed a check (CRC, chip id, out of physical range).
    #[error("{sensor}: bad data: {detail}")]
    BadData { sensor: String, detail: String },
    /// The sensor cannot be set up (missing device file, permission, bad setting).
    #[error("{sensor}: {detail}")]
    Setup { sensor: String, detail: String },
}

/// One measured quantity of a sensor, mapped to a payload field.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Payload field name, e.g. `"temperature"` or `"humidite"`.
    pub field: String,
    pub value: f64,
}

/// A sensor that can be read at every sampling tick. Reads are synchronous and short
/// (an I2C transaction, a sysfs file); a sensor that must sample faster than the tick
/// (accelerometers) runs its own thread and returns an aggregate here.
pub trait Sensor: Send {
    /// A name for logs and `sensors read`, e.g. `bme280@i2c-1:0x76`.
    fn name(&self) -> &str;
    /// One measurement of every quantity this sensor maps to a payload field.
    fn read(&mut self) -> Result<Vec<Measurement>, SensorError>;
}

/// One `[[sensors]]` entry of the configuration, selected by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SensorConfig {
    Simulated(simulated::SimulatedConfig),
}

impl fmt::Display for SensorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SensorConfig::Simulated(_) => f.write_str("simulated"),
        }
    }
}

/// Checks every entry's settings without opening any device.
pub fn validate(configs: &[SensorConfig]) -> Result<(), SensorError> {
    let _ = configs;
    Ok(())
}

/// Builds the sensors of the configuration. `index` in errors is the entry's position.
pub fn build(configs: &[SensorConfig]) -> Result<Vec<Box<dyn Sensor>>, SensorError> {
    configs
        .iter()
        .enumerate()
        .map(|(index, config)| build_one(index, config))
        .collect()
}

fn build_one(index: usize, config: &SensorConfig) -> Result<Box<dyn Sensor>, SensorError> {
    Ok(match config {
        SensorConfig::Simulated(c) => Box::new(simulated::Simulated::new(index, c.clone())),
    })
}
