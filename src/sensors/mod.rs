//! Sensors: the [`Sensor`] trait, the `[[sensors]]` configuration, validating it, and
//! building sensors from it. One file per sensor type; [`set::SensorSet`] is what the
//! sampler calls once per tick.
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
pub mod adxl345;
pub mod aggregate;
pub mod bme280;
pub mod ds18b20;
pub mod gpio;
pub mod i2c;
pub mod iio;
pub mod mpu6050;
pub mod sensirion;
pub mod set;
pub mod sht3x;
pub mod sht4x;
pub mod simulated;
pub mod worker;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
/// reads can hang (a stuck bus) is wrapped in [`worker::Threaded`] by [`build`].
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

/// One `[[sensors]]` entry of the configuration, selected by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SensorConfig {
    /// Bosch BME280 temperature/humidity/pressure on I2C (0x76 or 0x77).
    Bme280(bme280::Bme280Config),
    /// Sensirion SHT30/31/35 temperature/humidity on I2C (0x44 or 0x45).
    Sht3x(sht3x::Sht3xConfig),
    /// Sensirion SHT40/41/45 temperature/humidity on I2C (0x44).
    Sht4x(sht4x::Sht4xConfig),
    /// Analog Devices ADXL345 accelerometer on I2C (0x53 or 0x1D).
    Adxl345(adxl345::Adxl345Config),
    /// InvenSense MPU-6050 accelerometer (and gyroscope, unused) on I2C (0x68 or 0x69).
    Mpu6050(mpu6050::Mpu6050Config),
    /// Any Linux Industrial I/O device (`/sys/bus/iio/devices/iio:deviceN`).
    Iio(iio::IioConfig),
    /// Maxim DS18B20 1-Wire thermometer through the kernel's w1 sysfs.
    Ds18b20(ds18b20::Ds18b20Config),
    /// A digital input: its level, or the edges counted over the sampling interval.
    Gpio(gpio::GpioConfig),
    /// Random plausible values, for machines without sensors.
    Simulated(simulated::SimulatedConfig),
}

/// Every supported `type`, in the order `sensors list` shows them.
pub const TYPES: &[&str] = &[
    "bme280",
    "sht3x",
    "sht4x",
    "adxl345",
    "mpu6050",
    "iio",
    "ds18b20",
    "gpio",
    "simulated",
];

impl SensorConfig {
    /// The `type` string of this entry.
    pub fn type_name(&self) -> &'static str {
        match self {
            SensorConfig::Bme280(_) => "bme280",
            SensorConfig::Sht3x(_) => "sht3x",
            SensorConfig::Sht4x(_) => "sht4x",
            SensorConfig::Adxl345(_) => "adxl345",
            SensorConfig::Mpu6050(_) => "mpu6050",
            SensorConfig::Iio(_) => "iio",
            SensorConfig::Ds18b20(_) => "ds18b20",
            SensorConfig::Gpio(_) => "gpio",
            SensorConfig::Simulated(_) => "simulated",
        }
    }

    /// Payload fields this entry sends (the non-empty mappings of its `fields` table),
    /// each with the `fields` key that produces it.
    pub fn payload_fields(&self) -> Vec<(&'static str, &str)> {
        let all: Vec<(&'static str, &str)> = match self {
            SensorConfig::Bme280(c) => c.fields.pairs(),
            SensorConfig::Sht3x(c) => c.fields.pairs(),
            SensorConfig::Sht4x(c) => c.fields.pairs(),
            SensorConfig::Adxl345(c) => c.fields.pairs(),
            SensorConfig::Mpu6050(c) => c.fields.pairs(),
            SensorConfig::Iio(c) => c.fields.pairs(),
            SensorConfig::Ds18b20(c) => c.fields.pairs(),
            SensorConfig::Gpio(c) => c.active_fields(),
            SensorConfig::Simulated(c) => c.fields.pairs(),
        };
        all.into_iter().filter(|(_, f)| !f.is_empty()).collect()
    }

    /// Checks this entry's own settings, without touching hardware.
    /// On error: the offending key and what is wrong with it.
    fn check(&self) -> Result<(), (String, String)> {
        match self {
            SensorConfig::Bme280(c) => c.check(),
            SensorConfig::Sht3x(c) => c.check(),
            SensorConfig::Sht4x(c) => c.check(),
            SensorConfig::Adxl345(c) => c.check(),
            SensorConfig::Mpu6050(c) => c.check(),
            SensorConfig::Iio(c) => c.check(),
            SensorConfig::Ds18b20(c) => c.check(),
            SensorConfig::Gpio(c) => c.check(),
            SensorConfig::Simulated(_) => Ok(()),
        }
    }
}

impl fmt::Display for SensorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}

/// Which `[[sensors]]` entry of a configuration file fails to parse, and why:
/// `"sensors[1] (type \"bme280\"): unknown key `adress`, expected one of ..."`. `None`
/// when every entry parses (or the text is not TOML: the caller's error says so).
///
/// Needed because the entries are an internally tagged enum: serde buffers an entry
/// before choosing its type, which loses the position, so toml reports an unknown key
/// of any entry at "line 1, column 1" without saying which entry it is.
pub fn entry_error(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    let entries = table.get("sensors")?.as_array()?;
    entries.iter().enumerate().find_map(|(index, entry)| {
        let e = SensorConfig::deserialize(entry.clone()).err()?;
        let message = e.message().replace("unknown field", "unknown key");
        Some(match entry.get("type").and_then(toml::Value::as_str) {
            Some(t) => format!("sensors[{index}] (type \"{t}\"): {message}"),
            None => format!("sensors[{index}]: {message}"),
        })
    })
}

/// Gives the omitted `fields` keys of `iio` entries their payload field. Unlike the
/// other types, an `iio` entry does not say what it measures (that is found when the
/// device is opened), so its defaults name every quantity; taken as such, an `iio`
/// BME280 next to an `adxl345` would collide on `accelerometre`. So an omitted key
/// claims its default only if no explicit mapping and no other type's entry sends that
/// field (and no earlier `iio` entry's default took it); otherwise it is dropped (`""`).
/// Explicit mappings are left as written, so an explicit duplicate is still refused by
/// [`validate`].
pub fn resolve_defaults(configs: &[SensorConfig]) -> Vec<SensorConfig> {
    let mut claimed: Vec<String> = configs
        .iter()
        .flat_map(|c| match c {
            SensorConfig::Iio(i) => i.fields.explicit_pairs(),
            other => other.payload_fields(),
        })
        .map(|(_, field)| field.to_owned())
        .collect();
    configs
        .iter()
        .map(|config| match config {
            SensorConfig::Iio(i) => {
                let mut i = i.clone();
                for key in i.fields.omitted() {
                    let default = iio::IioFields::default_name(key);
                    if claimed.iter().any(|f| f == default) {
                        i.fields.set(key, String::new());
                    } else {
                        claimed.push(default.to_owned());
                        i.fields.set(key, default.to_owned());
                    }
                }
                SensorConfig::Iio(i)
            }
            other => other.clone(),
        })
        .collect()
}

/// Checks every entry without opening any device: each entry's settings, that each
/// entry sends at least one field, and that no two entries send the same payload field
/// (after [`resolve_defaults`]). The error names the entry index, its type and the key.
pub fn validate(configs: &[SensorConfig]) -> Result<(), SensorError> {
    let configs = &resolve_defaults(configs);
    let mut seen: Vec<(String, usize)> = Vec::new();
    for (index, config) in configs.iter().enumerate() {
        let err = |key: &str, detail: String| SensorError::Config {
            index,
            sensor_type: config.type_name().to_owned(),
            key: key.to_owned(),
            detail,
        };
        config.check().map_err(|(key, detail)| err(&key, detail))?;
        let fields = config.payload_fields();
        if fields.is_empty() {
            return Err(err(
                "fields",
                "every quantity is mapped to \"\" (or, for an `iio` entry, left to a \
                 default that another entry already sends), so this entry sends nothing; \
                 map at least one to a payload field name or remove the entry"
                    .into(),
            ));
        }
        for (key, field) in fields {
            if let Some((_, other)) = seen.iter().find(|(f, _)| f == field) {
                return Err(err(
                    &format!("fields.{key}"),
                    format!(
                        "payload field \"{field}\" is already sent by sensors[{other}] ({}); \
                         map this one or that one to another name, or to \"\" to drop it",
                        configs[*other].type_name()
                    ),
                ));
            }
            if let Some(what) = crate::reading::field::reserved(field) {
                return Err(err(
                    &format!("fields.{key}"),
                    format!("\"{field}\" is reserved for {what}; choose another name"),
                ));
            }
            seen.push((field.to_owned(), index));
        }
    }
    Ok(())
}

/// Validates the configuration, then builds its sensors (with [`resolve_defaults`])
/// without opening any device, for one-off reads (`sensors read`): a read that hangs
/// gives up after [`worker::MAX_DEADLINE`]. The daemon uses [`build_for_interval`].
pub fn build(configs: &[SensorConfig]) -> Result<Vec<Box<dyn Sensor>>, SensorError> {
    build_with_deadline(configs, worker::MAX_DEADLINE)
}

/// [`build`] for sampling every `interval`: a read that hangs gives up after
/// [`worker::deadline`]`(interval)`.
pub fn build_for_interval(
    configs: &[SensorConfig],
    interval: Duration,
) -> Result<Vec<Box<dyn Sensor>>, SensorError> {
    build_with_deadline(configs, worker::deadline(interval))
}

fn build_with_deadline(
    configs: &[SensorConfig],
    deadline: Duration,
) -> Result<Vec<Box<dyn Sensor>>, SensorError> {
    validate(configs)?;
    Ok(resolve_defaults(configs)
        .iter()
        .enumerate()
        .map(|(index, config)| build_one(index, config, deadline))
        .collect())
}

/// Builds one sensor. Those whose reads can hang for long (sysfs reads that wait on a
/// driver: `iio`, `ds18b20`; I2C transactions on a bus a chip holds down) read on their
/// own thread ([`worker::Threaded`]). The others never block: `simulated` and `gpio`
/// (a register read), and the accelerometers, whose `read` only looks at what their
/// own sampling thread gathered.
fn build_one(index: usize, config: &SensorConfig, deadline: Duration) -> Box<dyn Sensor> {
    use worker::Threaded;
    match config {
        SensorConfig::Bme280(c) => Box::new(Threaded::new(
            bme280::Bme280Sensor::new(c.clone()),
            deadline,
        )),
        SensorConfig::Sht3x(c) => {
            Box::new(Threaded::new(sht3x::Sht3xSensor::new(c.clone()), deadline))
        }
        SensorConfig::Sht4x(c) => {
            Box::new(Threaded::new(sht4x::Sht4xSensor::new(c.clone()), deadline))
        }
        SensorConfig::Adxl345(c) => Box::new(adxl345::sensor(c.clone())),
        SensorConfig::Mpu6050(c) => Box::new(mpu6050::sensor(c.clone())),
        SensorConfig::Iio(c) => Box::new(Threaded::new(iio::IioSensor::new(c.clone()), deadline)),
        // A healthy read takes a whole conversion: never give up before twice that.
        SensorConfig::Ds18b20(c) => Box::new(Threaded::new(
            ds18b20::Ds18b20Sensor::new(c.clone()),
            deadline.max(2 * ds18b20::CONVERSION),
        )),
        SensorConfig::Gpio(c) => Box::new(gpio::GpioSensor::rppal(c.clone())),
        SensorConfig::Simulated(c) => Box::new(simulated::Simulated::new(index, c.clone())),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_src: &str) -> Result<Vec<SensorConfig>, toml::de::Error> {
        #[derive(Deserialize)]
        struct Doc {
            sensors: Vec<SensorConfig>,
        }
        toml::from_str::<Doc>(toml_src).map(|d| d.sensors)
    }

    #[test]
    fn defaults_map_to_the_server_fields() {
        let c = parse("[[sensors]]\ntype = \"bme280\"\n").unwrap();
        let fields = c[0].payload_fields();
        assert_eq!(
            fields,
            vec![
                ("temperature", "temperature"),
                ("humidity", "humidite"),
                ("pressure", "pression")
            ]
        );
        validate(&c).unwrap();
    }

    #[test]
    fn empty_mapping_drops_a_quantity() {
        let c = parse(
            "[[sensors]]\ntype = \"bme280\"\nfields = { pressure = \"\", humidity = \"hum\" }\n",
        )
        .unwrap();
        assert_eq!(
            c[0].payload_fields(),
            vec![("temperature", "temperature"), ("humidity", "hum")]
        );
    }

    #[test]
    fn duplicate_payload_field_names_both_entries() {
        let c = parse("[[sensors]]\ntype = \"bme280\"\n[[sensors]]\ntype = \"sht3x\"\n").unwrap();
        let e = validate(&c).unwrap_err().to_string();
        assert!(e.contains("sensors[1]"), "{e}");
        assert!(e.contains("fields.temperature"), "{e}");
        assert!(e.contains("sensors[0] (bme280)"), "{e}");
    }

    #[test]
    fn iio_defaults_never_collide_but_explicit_duplicates_do() {
        // A BME280 through the kernel driver (iio, all defaults) next to an ADXL345.
        let c = parse("[[sensors]]\ntype = \"iio\"\n[[sensors]]\ntype = \"adxl345\"\n").unwrap();
        validate(&c).unwrap();
        let r = resolve_defaults(&c);
        assert_eq!(
            r[0].payload_fields(),
            vec![
                ("temperature", "temperature"),
                ("humidity", "humidite"),
                ("pressure", "pression")
            ]
        );
        assert_eq!(
            r[1].payload_fields(),
            vec![("acceleration", "accelerometre")]
        );
        // Other entries win whatever their position; an explicit iio mapping is kept.
        let c = parse(
            "[[sensors]]\ntype = \"iio\"\nfields = { pressure = \"p\" }\n\
             [[sensors]]\ntype = \"ds18b20\"\n\
             [[sensors]]\ntype = \"iio\"\ndevice = \"/sys/bus/iio/devices/iio:device1\"\n",
        )
        .unwrap();
        validate(&c).unwrap();
        let r = resolve_defaults(&c);
        assert_eq!(
            r[0].payload_fields(),
            vec![
                ("humidity", "humidite"),
                ("pressure", "p"),
                ("acceleration", "accelerometre")
            ]
        );
        assert_eq!(r[2].payload_fields(), vec![("pressure", "pression")]);
        // Written out, a duplicate is still an error.
        let c = parse(
            "[[sensors]]\ntype = \"iio\"\nfields = { acceleration = \"accelerometre\" }\n\
             [[sensors]]\ntype = \"adxl345\"\n",
        )
        .unwrap();
        let e = validate(&c).unwrap_err().to_string();
        assert!(
            e.contains("sensors[1]") && e.contains("already sent by sensors[0] (iio)"),
            "{e}"
        );
    }

    #[test]
    fn entry_error_names_the_entry_and_its_type() {
        let text = "[sampling]\ninterval = \"1s\"\n\
                    [[sensors]]\ntype = \"ds18b20\"\n\
                    [[sensors]]\ntype = \"bme280\"\nadress = 0x76\n";
        let e = entry_error(text).unwrap_or_default();
        assert!(
            e.starts_with("sensors[1] (type \"bme280\"): unknown key `adress`, expected one of"),
            "{e}"
        );
        let e = entry_error("[[sensors]]\ntype = \"bme680\"\n").unwrap_or_default();
        assert!(
            e.starts_with("sensors[0] (type \"bme680\"): unknown variant"),
            "{e}"
        );
        let e = entry_error("[[sensors]]\naddress = 0x76\n").unwrap_or_default();
        assert!(e.starts_with("sensors[0]: missing field `type`"), "{e}");
        assert_eq!(entry_error("[[sensors]]\ntype = \"bme280\"\n"), None);
        assert_eq!(entry_error("not toml ["), None);
    }

    #[test]
    fn all_fields_dropped_is_an_error() {
        let c =
            parse("[[sensors]]\ntype = \"ds18b20\"\nfields = { temperature = \"\" }\n").unwrap();
        let e = validate(&c).unwrap_err().to_string();
        assert!(e.contains("sensors[0] (type \"ds18b20\"): fields"), "{e}");
    }

    #[test]
    fn unknown_type_and_unknown_key_are_named() {
        let e = parse("[[sensors]]\ntype = \"bme680\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bme680"), "{e}");
        let e = parse("[[sensors]]\ntype = \"bme280\"\nadress = 0x76\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("adress"), "{e}");
        let e = parse("[[sensors]]\ntype = \"bme280\"\nfields = { humidite = \"h\" }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("humidite"), "{e}");
    }

    #[test]
    fn bad_setting_names_index_type_and_key() {
        let c = parse(
            "[[sensors]]\ntype = \"simulated\"\nfields = { temperature = \"t0\", humidity = \"\", acceleration = \"\" }\n\
             [[sensors]]\ntype = \"adxl345\"\nrate_hz = 300\n",
        )
        .unwrap();
        let e = validate(&c).unwrap_err();
        match &e {
            SensorError::Config {
                index,
                sensor_type,
                key,
                ..
            } => {
                assert_eq!(*index, 1);
                assert_eq!(sensor_type, "adxl345");
                assert_eq!(key, "rate_hz");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_type_round_trips_through_serde() {
        let src = "[[sensors]]\ntype = \"bme280\"\n[[sensors]]\ntype = \"sht3x\"\nfields = { temperature = \"t1\", humidity = \"h1\" }\n\
            [[sensors]]\ntype = \"sht4x\"\nfields = { temperature = \"t2\", humidity = \"\" }\n\
            [[sensors]]\ntype = \"adxl345\"\n[[sensors]]\ntype = \"mpu6050\"\nfields = { acceleration = \"a2\" }\n\
            [[sensors]]\ntype = \"iio\"\nfields = { temperature = \"t3\", humidity = \"h3\", pressure = \"p3\", acceleration = \"a3\" }\n\
            [[sensors]]\ntype = \"ds18b20\"\nfields = { temperature = \"t4\" }\n\
            [[sensors]]\ntype = \"gpio\"\npin = 17\n[[sensors]]\ntype = \"simulated\"\nfields = { temperature = \"\", humidity = \"\", acceleration = \"a5\" }\n";
        let c = parse(src).unwrap();
        assert_eq!(c.len(), TYPES.len());
        for (config, name) in c.iter().zip(TYPES) {
            assert_eq!(config.type_name(), *name);
        }
        validate(&c).unwrap();
        #[derive(Serialize, Deserialize)]
        struct Doc {
            sensors: Vec<SensorConfig>,
        }
        let text = toml::to_string(&Doc { sensors: c.clone() }).unwrap();
        let back: Doc = toml::from_str(&text).unwrap();
        assert_eq!(back.sensors, c);
    }
}
