//! The `[[sensors]]` configuration: one entry per sensor, selected by `type`
//! ([`SensorConfig`]), checked as a whole by [`validate`]. Each type describes itself
//! ([`SensorType`]: its settings and their defaults, its checks, what it builds) in its
//! own file; this file only lists the types.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::accel::adxl345::Adxl345Config;
use super::accel::mpu6050::Mpu6050Config;
use super::climate::bme280::Bme280Config;
use super::climate::sht3x::Sht3xConfig;
use super::climate::sht4x::Sht4xConfig;
use super::gpio::GpioConfig;
use super::simulated::SimulatedConfig;
use super::sysfs::ds18b20::Ds18b20Config;
use super::sysfs::iio::{IioConfig, IioFields};
use super::{Sensor, SensorError};

/// What a sensor type is: implemented by each type's configuration, in its own file.
pub trait SensorType {
    /// The type's `type` string, e.g. `"bme280"`.
    fn type_name(&self) -> &'static str;
    /// `sensors list`: the type, what it is, and every setting with its default.
    fn doc() -> TypeDoc
    where
        Self: Sized;
    /// Every `fields` key with its payload field (`""`: not sent).
    fn fields(&self) -> Vec<(&'static str, &str)>;
    /// Checks the entry's own settings, without touching hardware.
    /// On error: the offending key and what is wrong with it.
    fn check(&self) -> Result<(), (String, String)>;
    /// The sensor, without opening any device. Sensors whose reads can hang (sysfs
    /// reads that wait on a driver, I2C transactions on a bus a chip holds down) read
    /// on their own thread ([`super::worker::Threaded`]) and give up after `deadline`.
    /// `index` is the entry's position (the simulated sensor seeds from it).
    fn build(&self, index: usize, deadline: Duration) -> Box<dyn Sensor>;
    /// The I2C bus the entry's chip is on (`doctor` checks it); `None` off I2C.
    fn i2c_bus(&self) -> Option<super::i2c::BusLocation> {
        None
    }
}

/// One setting of a sensor type, for `sensors list`.
#[derive(Debug, Clone, Serialize)]
pub struct SettingDoc {
    pub key: &'static str,
    /// The default as TOML, or `"required"` / `"none"`.
    pub default: Cow<'static, str>,
    pub description: &'static str,
}

impl SettingDoc {
    pub fn new(
        key: &'static str,
        default: impl Into<Cow<'static, str>>,
        description: &'static str,
    ) -> Self {
        SettingDoc {
            key,
            default: default.into(),
            description,
        }
    }
}

/// A sensor type, for `sensors list`.
#[derive(Debug, Clone, Serialize)]
pub struct TypeDoc {
    #[serde(rename = "type")]
    pub type_name: &'static str,
    pub description: &'static str,
    pub settings: Vec<SettingDoc>,
}

/// One `[[sensors]]` entry of the configuration, selected by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SensorConfig {
    /// Bosch BME280 temperature/humidity/pressure on I2C (0x76 or 0x77).
    Bme280(Bme280Config),
    /// Sensirion SHT30/31/35 temperature/humidity on I2C (0x44 or 0x45).
    Sht3x(Sht3xConfig),
    /// Sensirion SHT40/41/45 temperature/humidity on I2C (0x44).
    Sht4x(Sht4xConfig),
    /// Analog Devices ADXL345 accelerometer on I2C (0x53 or 0x1D).
    Adxl345(Adxl345Config),
    /// InvenSense MPU-6050 accelerometer (and gyroscope, unused) on I2C (0x68 or 0x69).
    Mpu6050(Mpu6050Config),
    /// Any Linux Industrial I/O device (`/sys/bus/iio/devices/iio:deviceN`).
    Iio(IioConfig),
    /// Maxim DS18B20 1-Wire thermometer through the kernel's w1 sysfs.
    Ds18b20(Ds18b20Config),
    /// A digital input: its level, or the edges counted over the sampling interval.
    Gpio(GpioConfig),
    /// Random plausible values, for machines without sensors.
    Simulated(SimulatedConfig),
}

impl SensorConfig {
    /// What this entry's type does: the one place that lists every type.
    pub fn kind(&self) -> &dyn SensorType {
        match self {
            SensorConfig::Bme280(c) => c,
            SensorConfig::Sht3x(c) => c,
            SensorConfig::Sht4x(c) => c,
            SensorConfig::Adxl345(c) => c,
            SensorConfig::Mpu6050(c) => c,
            SensorConfig::Iio(c) => c,
            SensorConfig::Ds18b20(c) => c,
            SensorConfig::Gpio(c) => c,
            SensorConfig::Simulated(c) => c,
        }
    }

    /// The `type` string of this entry.
    pub fn type_name(&self) -> &'static str {
        self.kind().type_name()
    }

    /// Payload fields this entry sends (the non-empty mappings of its `fields` table),
    /// each with the `fields` key that produces it.
    pub fn payload_fields(&self) -> Vec<(&'static str, &str)> {
        let mut fields = self.kind().fields();
        fields.retain(|(_, f)| !f.is_empty());
        fields
    }
}

/// Every supported type with its settings and defaults, in the order `sensors list`
/// shows them (that of [`SensorConfig`]).
pub fn type_docs() -> Vec<TypeDoc> {
    vec![
        Bme280Config::doc(),
        Sht3xConfig::doc(),
        Sht4xConfig::doc(),
        Adxl345Config::doc(),
        Mpu6050Config::doc(),
        IioConfig::doc(),
        Ds18b20Config::doc(),
        GpioConfig::doc(),
        SimulatedConfig::doc(),
    ]
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
                    let default = IioFields::default_name(key);
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
        config
            .kind()
            .check()
            .map_err(|(key, detail)| err(&key, detail))?;
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
        let docs = type_docs();
        assert_eq!(c.len(), docs.len());
        for (config, doc) in c.iter().zip(&docs) {
            assert_eq!(config.type_name(), doc.type_name);
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
