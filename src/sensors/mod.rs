//! Sensors: the [`Sensor`] trait, its [`Measurement`]s and [`SensorError`]s; the
//! `[[sensors]]` configuration in [`config`], building sensors from it in [`build()`].
//! One file per sensor type, grouped: [`i2c`] (the bus and the driver glue every I2C
//! chip shares), [`climate`], [`accel`], [`sysfs`], [`gpio`], [`simulated`].
//! [`set::SensorSet`] is what the sampler calls once per tick; [`worker`] reads a sensor
//! that can hang on its own thread.
//!
//! Every `[[sensors]]` entry has a `type` (one of [`SensorConfig`]'s variants), the
//! settings of that type, and a `fields` table mapping what it measures to payload
//! fields. In every `fields` table, an omitted key takes its default (the server's field
//! names for temperature, humidity and acceleration) and a key set to `""` drops that
//! quantity: it is not read into the payload. Two entries may not send the same payload
//! field: map one of them to another name or to `""`.
//!
//! Building never touches hardware: a device that is absent or failing is a runtime
//! fault, retried with backoff by [`set::SensorSet`]. Only a bad setting is an error at
//! start.

pub mod accel;
pub mod build;
pub mod climate;
pub mod config;
pub mod gpio;
pub mod i2c;
pub mod set;
pub mod simulated;
pub mod sysfs;
pub mod worker;

pub use build::{build, build_for_interval};
pub use config::{
    entry_error, resolve_defaults, type_docs, validate, SensorConfig, SensorType, SettingDoc,
    TypeDoc,
};
pub use set::{SensorHealth, SensorSet, Tick};

/// What went wrong with a sensor. Each variant says what to check.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SensorError {
    /// The bus or device answered with an error (NACK, I/O error, device gone).
    #[error("{sensor}: bus error: {detail}")]
    Bus { sensor: String, detail: String },
    /// The device answered but the data failed a check (CRC, chip id, out of physical range).
    #[error("{sensor}: bad data: {detail}")]
    BadData { sensor: String, detail: String },
    /// The sensor cannot be set up (missing device file, permission).
    #[error("{sensor}: {detail}")]
    Setup { sensor: String, detail: String },
    /// A setting of the `[[sensors]]` entry number `index` (0-based) is invalid.
    /// Fix the named key in the configuration file.
    #[error("sensors[{index}] (type \"{sensor_type}\"): {key}: {detail}")]
    Config {
        index: usize,
        sensor_type: String,
        key: String,
        detail: String,
    },
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
/// (accelerometers) runs its own thread and returns an aggregate here. A sensor whose
/// reads can hang (a stuck bus) is wrapped in [`worker::Threaded`] by [`build()`].
///
/// A sensor opens its device lazily, on the first read, and drops it after an error so
/// the next read opens and initialises it again (the chip may have been power-cycled).
pub trait Sensor: Send {
    /// A name for logs and `sensors read`, e.g. `bme280@i2c-1:0x76`.
    fn name(&self) -> &str;
    /// One measurement of every quantity this sensor maps to a payload field. An empty
    /// list is "no fields yet" (an accelerometer whose thread has not sampled yet).
    fn read(&mut self) -> Result<Vec<Measurement>, SensorError>;
    /// Called on every sensor of a tick before any `read`: a sensor that reads on its
    /// own thread ([`worker::Threaded`]) starts its read here, so the reads of a tick
    /// run side by side and the tick waits one deadline at most however many hang.
    /// `read` without it still works (it starts the read itself).
    fn begin_read(&mut self) {}
    /// True for a sensor whose own thread reopens its device with backoff
    /// (accelerometers): [`set::SensorSet`] then reads it at every tick instead of
    /// skipping it in backoff. Its `read` is only a look at the thread's state, so
    /// skipping saves nothing, and the thread's recovery shows at the next tick.
    fn retries_itself(&self) -> bool {
        false
    }
    /// Called instead of `read` at a tick that skips this sensor (it is in backoff):
    /// a sensor that accumulates between reads drops what it has, so the first value
    /// after recovery covers one interval, not the whole outage.
    fn skipped(&mut self) {}
}

/// Default payload field names, shared by the `fields` tables of every type.
pub mod defaults {
    use crate::reading::field;

    pub const TEMPERATURE: &str = field::TEMPERATURE;
    pub const HUMIDITY: &str = field::HUMIDITY;
    pub const ACCELERATION: &str = field::ACCELERATION;
    pub const PRESSURE: &str = "pression";

    pub fn temperature() -> String {
        field::TEMPERATURE.to_owned()
    }
    pub fn humidity() -> String {
        field::HUMIDITY.to_owned()
    }
    pub fn acceleration() -> String {
        field::ACCELERATION.to_owned()
    }
    /// Pressure, in hPa.
    pub fn pressure() -> String {
        PRESSURE.to_owned()
    }
    pub fn level() -> String {
        "gpio_level".to_owned()
    }
    pub fn edges() -> String {
        "gpio_edges".to_owned()
    }
}

/// Physical limits outside which a value is a fault (a glitch, a wrong chip, a broken
/// wire), not a measurement.
pub mod limits {
    /// °C: the widest range of the supported thermometers (DS18B20 -55..125,
    /// SHT4x -40..125), with a margin.
    pub const TEMPERATURE: (f64, f64) = (-60.0, 130.0);
    /// %RH.
    pub const HUMIDITY: (f64, f64) = (0.0, 100.0);
    /// hPa: BME280's range is 300..1100; a little margin for weather and altitude.
    pub const PRESSURE: (f64, f64) = (250.0, 1150.0);
}

/// Pushes `value` as `field` unless the field is dropped (`""`); a value outside
/// `range` (or not finite) is [`SensorError::BadData`].
pub(crate) fn push_checked(
    out: &mut Vec<Measurement>,
    sensor: &str,
    quantity: &str,
    field: &str,
    value: f64,
    range: (f64, f64),
) -> Result<(), SensorError> {
    if field.is_empty() {
        return Ok(());
    }
    if !value.is_finite() || value < range.0 || value > range.1 {
        return Err(SensorError::BadData {
            sensor: sensor.to_owned(),
            detail: format!(
                "{quantity} {value} is outside the physical range {}..{} \
                 (a glitch, a loose wire or a different chip at this address)",
                range.0, range.1
            ),
        });
    }
    out.push(Measurement {
        field: field.to_owned(),
        value,
    });
    Ok(())
}

/// Rounds to `decimals` places, so payloads carry the sensor's resolution, not float noise.
pub(crate) fn round(value: f64, decimals: i32) -> f64 {
    let m = 10f64.powi(decimals);
    (value * m).round() / m
}
