//! `sensors list|scan|read`: the arguments, the handlers and their output (stdout). What
//! `sensors list` shows comes from the sensor types themselves ([`sensors::type_docs`]).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::Serialize;

use clap::Subcommand;

use crate::config::Config;
use crate::sensors::{self, i2c, SensorConfig};

#[derive(Debug, Subcommand)]
pub enum SensorsCommand {
    /// Supported sensor types and their settings.
    List {
        /// Print one JSON array: each type with its description and settings (name,
        /// default, meaning) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Probe an I2C bus and list the addresses that answer, with the likely chip.
    Scan {
        /// I2C bus number (/dev/i2c-N).
        #[arg(long, default_value_t = 1)]
        bus: u8,
        /// Print one JSON array of the devices that answered (address, likely chips)
        /// instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Take one reading from each configured sensor, with errors spelled out.
    Read {
        /// Print one JSON array: each configured sensor with its values or its error,
        /// instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(command: SensorsCommand, config: &Config) -> anyhow::Result<ExitCode> {
    match command {
        SensorsCommand::List { json } => list(json)?,
        SensorsCommand::Scan { bus, json } => scan(bus, json)?,
        SensorsCommand::Read { json } => read(&config.sensors, json)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `sensors list`: the supported types and their settings with defaults.
pub fn list(json: bool) -> anyhow::Result<()> {
    let docs = sensors::type_docs();
    if json {
        println!("{}", serde_json::to_string_pretty(&docs)?);
        return Ok(());
    }
    println!("Sensor types for [[sensors]] entries (type = \"...\"). In `fields`, an omitted key");
    println!(
        "takes its default and \"\" drops that quantity; two entries may not send the same field."
    );
    for doc in docs {
        println!();
        println!("{}: {}", doc.type_name, doc.description);
        for setting in doc.settings {
            println!(
                "  {:<12} default {:<10} {}",
                setting.key, setting.default, setting.description
            );
        }
    }
    Ok(())
}

/// Chips usually found at an address.
pub fn likely_chips(address: u8) -> &'static [&'static str] {
    match address {
        0x1D => &["ADXL345 (alt address)", "MMA8451"],
        0x1E => &["HMC5883L"],
        0x23 | 0x5C => &["BH1750"],
        0x27 | 0x3F => &["PCF8574 (LCD backpack)"],
        0x29 => &["VL53L0X", "TSL2591"],
        0x38 => &["AHT10/AHT20"],
        0x39 => &["TSL2561", "APDS-9960"],
        0x3C | 0x3D => &["SSD1306 display"],
        0x40 => &["HTU21D/Si7021", "HDC1080", "INA219"],
        0x44 => &["SHT3x", "SHT4x"],
        0x45 => &["SHT3x (ADDR high)", "SHT4x-B"],
        0x46 => &["SHT4x-C"],
        0x48..=0x4B => &["ADS1115/ADS1015", "TMP102"],
        0x53 => &["ADXL345", "EEPROM (AT24)"],
        0x50..=0x57 => &["EEPROM (HAT ID or AT24)"],
        0x68 => &["MPU-6050", "DS3231/DS1307 RTC"],
        0x69 => &["MPU-6050 (AD0 high)"],
        0x76 | 0x77 => &["BME280", "BMP280", "BME680", "MS5611"],
        _ => &[],
    }
}

/// Reads an id register to tell the likely chips apart, where that is harmless.
fn identify(bus: &rppal::i2c::I2c, address: u8) -> Option<String> {
    let (register, known): (u8, &[(u8, &str)]) = match address {
        0x76 | 0x77 => (
            sensors::climate::bme280::reg::CHIP_ID,
            &[(0x60, "BME280"), (0x58, "BMP280"), (0x61, "BME680")],
        ),
        0x53 | 0x1D => (sensors::accel::adxl345::reg::DEVID, &[(0xE5, "ADXL345")]),
        0x68 | 0x69 => (
            sensors::accel::mpu6050::reg::WHO_AM_I,
            &[(0x68, "MPU-6050"), (0x70, "MPU-6500"), (0x71, "MPU-9250")],
        ),
        _ => return None,
    };
    let id = bus.smbus_read_byte(register).ok()?;
    let name = known
        .iter()
        .find(|(k, _)| *k == id)
        .map(|(_, n)| *n)
        .unwrap_or("unknown");
    Some(format!(
        "{name} (id 0x{id:02x} at register 0x{register:02x})"
    ))
}

#[derive(Debug, Serialize)]
struct Found {
    address: String,
    /// A kernel driver owns the address (i2cdetect's "UU").
    in_use_by_kernel: bool,
    identified: Option<String>,
    likely: Vec<&'static str>,
}

fn available_buses() -> String {
    let mut buses: Vec<String> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("i2c-"))
                .collect()
        })
        .unwrap_or_default();
    buses.sort();
    if buses.is_empty() {
        "none".into()
    } else {
        buses.join(", ")
    }
}

/// `sensors scan [--bus N]`: probes 0x03..=0x77 on /dev/i2c-N as `i2cdetect` does (SMBus
/// quick write, or a byte read at 0x30..=0x37 and 0x50..=0x5F where a quick write could
/// upset EEPROMs) and prints the addresses that answer with the likely chips.
pub fn scan(bus: u8, json: bool) -> anyhow::Result<()> {
    let path = format!("/dev/i2c-{bus}");
    let mut i2c = match rppal::i2c::I2c::with_bus(bus) {
        Ok(i2c) => i2c,
        Err(rppal::i2c::Error::Io(e)) => {
            return Err(anyhow!(
                "{} (buses present: {})",
                i2c::open_hint(&path, &e),
                available_buses()
            ))
        }
        Err(e) => return Err(anyhow!("cannot open {path}: {e}")),
    };
    let caps = i2c.capabilities();
    let mut found = Vec::new();
    for address in 0x03u8..=0x77 {
        if let Err(e) = i2c.set_slave_address(u16::from(address)) {
            if let rppal::i2c::Error::Io(io) = &e {
                if io.raw_os_error() == Some(libc::EBUSY) {
                    found.push(Found {
                        address: format!("0x{address:02x}"),
                        in_use_by_kernel: true,
                        identified: None,
                        likely: likely_chips(address).to_vec(),
                    });
                }
            }
            continue;
        }
        let read_probe = (0x30..=0x37).contains(&address) || (0x50..=0x5F).contains(&address);
        let answered = if read_probe || !caps.smbus_quick_command() {
            i2c.smbus_receive_byte().is_ok()
        } else {
            i2c.smbus_quick_command(false).is_ok()
        };
        if answered {
            found.push(Found {
                address: format!("0x{address:02x}"),
                in_use_by_kernel: false,
                identified: identify(&i2c, address),
                likely: likely_chips(address).to_vec(),
            });
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    if found.is_empty() {
        println!("{path}: no device answered (check power, SDA/SCL wiring and pull-ups)");
        return Ok(());
    }
    println!("{path}: {} device(s)", found.len());
    for f in found {
        let mut line = format!("  {}", f.address);
        if f.in_use_by_kernel {
            line.push_str("  in use by a kernel driver (read it with type = \"iio\")");
        }
        if let Some(id) = &f.identified {
            line.push_str(&format!("  {id}"));
        }
        if !f.likely.is_empty() {
            line.push_str(&format!("  likely: {}", f.likely.join(", ")));
        }
        println!("{line}");
    }
    Ok(())
}

/// One configured sensor's test reading: its values or its error.
#[derive(Debug, Serialize)]
pub(super) struct ReadResult {
    pub index: usize,
    #[serde(rename = "type")]
    pub sensor_type: &'static str,
    pub sensor: String,
    pub ok: bool,
    pub values: serde_json::Map<String, serde_json::Value>,
    pub error: Option<String>,
}

/// How long accelerometers sample before `sensors read` takes their aggregate.
pub const ACCEL_WINDOW: Duration = Duration::from_millis(1500);

/// One reading from each configured sensor (for `sensors read` and `doctor`); prints
/// nothing. Errs only when the configuration cannot build the sensors.
pub(super) fn read_each(configs: &[SensorConfig]) -> anyhow::Result<Vec<ReadResult>> {
    let mut built = sensors::build(configs).context("invalid [[sensors]] configuration")?;
    // What `build` built: an `iio` entry's omitted fields resolved against the others.
    let configs = &sensors::resolve_defaults(configs);
    let has_accel = configs.iter().any(|c| {
        matches!(c, SensorConfig::Adxl345(_) | SensorConfig::Mpu6050(_))
            || matches!(c, SensorConfig::Iio(i) if !i.fields.acceleration().is_empty())
    });
    if has_accel {
        // The sampling threads start with the sensors; let them fill an interval. An IIO
        // device finds its accelerometer on its first read, so read those once first.
        for (sensor, config) in built.iter_mut().zip(configs) {
            if matches!(config, SensorConfig::Iio(_)) {
                let _ = sensor.read();
            }
        }
        std::thread::sleep(ACCEL_WINDOW);
    }
    let mut results = Vec::with_capacity(built.len());
    for (index, (sensor, config)) in built.iter_mut().zip(configs).enumerate() {
        let outcome = sensor.read();
        let mut values = serde_json::Map::new();
        let error = match outcome {
            // Only an accelerometer whose thread has neither sampled nor failed yet
            // returns nothing: after ACCEL_WINDOW that is worth saying, not an "ok".
            Ok(measurements) if measurements.is_empty() => Some(format!(
                "{}: no samples after {} ms (the chip is slow to start, or its sampling \
                 thread is stuck opening the bus)",
                sensor.name(),
                ACCEL_WINDOW.as_millis()
            )),
            Ok(measurements) => {
                for m in measurements {
                    values.insert(m.field, serde_json::json!(m.value));
                }
                None
            }
            Err(e) => Some(e.to_string()),
        };
        results.push(ReadResult {
            index,
            sensor_type: config.type_name(),
            sensor: sensor.name().to_owned(),
            ok: error.is_none(),
            values,
            error,
        });
    }
    drop(built); // stops the sampling threads
    Ok(results)
}

/// `sensors read [--json]`: one reading from each configured sensor, errors spelled out.
/// Fails (non-zero exit) when any sensor failed, after printing every result.
pub fn read(configs: &[SensorConfig], json: bool) -> anyhow::Result<()> {
    let results = read_each(configs)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else if results.is_empty() {
        println!("no [[sensors]] configured");
    } else {
        for r in &results {
            match &r.error {
                None => {
                    let values: Vec<String> =
                        r.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!("sensors[{}] {}: {}", r.index, r.sensor, values.join(" "));
                }
                Some(e) => println!("sensors[{}] {}: FAILED: {e}", r.index, r.sensor),
            }
        }
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        return Err(anyhow!("{failed} of {} sensor(s) failed", results.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_documents_every_type_and_its_true_defaults() {
        let docs = sensors::type_docs();
        let names: Vec<&str> = docs.iter().map(|d| d.type_name).collect();
        assert_eq!(
            names,
            [
                "bme280",
                "sht3x",
                "sht4x",
                "adxl345",
                "mpu6050",
                "iio",
                "ds18b20",
                "gpio",
                "simulated"
            ]
        );
        // Every key that a default configuration serializes is documented with that value.
        let defaults: Vec<(&str, toml::Value)> = vec![
            (
                "bme280",
                toml::Value::try_from(sensors::climate::bme280::Bme280Config::default()).unwrap(),
            ),
            (
                "sht3x",
                toml::Value::try_from(sensors::climate::sht3x::Sht3xConfig::default()).unwrap(),
            ),
            (
                "sht4x",
                toml::Value::try_from(sensors::climate::sht4x::Sht4xConfig::default()).unwrap(),
            ),
            (
                "adxl345",
                toml::Value::try_from(sensors::accel::adxl345::Adxl345Config::default()).unwrap(),
            ),
            (
                "mpu6050",
                toml::Value::try_from(sensors::accel::mpu6050::Mpu6050Config::default()).unwrap(),
            ),
            (
                "iio",
                // Omitted iio fields take every default when no other entry sends them,
                // which is what `sensors list` shows.
                toml::Value::try_from(iio_alone()).unwrap(),
            ),
            (
                "ds18b20",
                toml::Value::try_from(sensors::sysfs::ds18b20::Ds18b20Config::default()).unwrap(),
            ),
            (
                "simulated",
                toml::Value::try_from(sensors::simulated::SimulatedConfig::default()).unwrap(),
            ),
        ];
        for (type_name, value) in defaults {
            let doc = docs.iter().find(|d| d.type_name == type_name).unwrap();
            let table = value.as_table().unwrap();
            for (key, default) in table {
                let setting = doc
                    .settings
                    .iter()
                    .find(|s| s.key == key)
                    .unwrap_or_else(|| panic!("{type_name}.{key} is not listed"));
                let listed: toml::Table = toml::from_str(&format!("v = {}", setting.default))
                    .unwrap_or_else(|e| panic!("{type_name}.{key}: {e}"));
                assert_eq!(&listed["v"], default, "{type_name}.{key}");
            }
        }
    }

    fn iio_alone() -> sensors::sysfs::iio::IioConfig {
        match sensors::resolve_defaults(&[SensorConfig::Iio(Default::default())]).remove(0) {
            SensorConfig::Iio(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn likely_chips_cover_the_supported_ones() {
        assert!(likely_chips(0x76).contains(&"BME280"));
        assert!(likely_chips(0x44).contains(&"SHT3x"));
        assert!(likely_chips(0x53).contains(&"ADXL345"));
        assert!(likely_chips(0x68).contains(&"MPU-6050"));
        assert!(likely_chips(0x10).is_empty());
    }

    #[test]
    fn read_reports_each_sensor_and_fails_if_one_fails() {
        let configs: Vec<SensorConfig> = vec![
            SensorConfig::Simulated(sensors::simulated::SimulatedConfig {
                seed: Some(1),
                ..Default::default()
            }),
            SensorConfig::Ds18b20(sensors::sysfs::ds18b20::Ds18b20Config {
                base_path: "/nonexistent/w1".into(),
                device: None,
                fields: sensors::sysfs::ds18b20::TemperatureFields {
                    temperature: "t2".into(),
                },
            }),
        ];
        let e = read(&configs, true).unwrap_err();
        assert_eq!(e.to_string(), "1 of 2 sensor(s) failed");
        assert!(read(&configs[..1], false).is_ok());
    }
}
