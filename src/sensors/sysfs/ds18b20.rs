//! Maxim DS18B20 1-Wire thermometer through the kernel's w1 sysfs
//! (`dtoverlay=w1-gpio`, data on GPIO 4 by default): `<base>/28-xxxxxxxxxxxx/w1_slave`
//! holds two lines, the scratchpad with the kernel's CRC verdict, then the temperature:
//!
//! ```text
//! 72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
//! 72 01 4b 46 7f ff 0e 10 57 t=23125
//! ```
//!
//! Reading the file makes the kernel run a conversion: about 750 ms at 12 bits
//! ([`CONVERSION`]). The read runs on its own thread (see `worker::Threaded`), so the
//! other sensors are read meanwhile; keep the sampling interval above it all the same,
//! or every tick waits for the conversion and runs late.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sensors::worker::Threaded;
use crate::sensors::{
    defaults, limits, push_checked, Measurement, Sensor, SensorError, SensorType, SettingDoc,
    TypeDoc,
};

/// How long the kernel's read of `w1_slave` takes: one conversion at 12 bits
/// (datasheet: 750 ms max).
pub const CONVERSION: std::time::Duration = std::time::Duration::from_millis(750);
/// Family code of the DS18B20 in 1-Wire device ids.
pub const FAMILY: &str = "28-";
pub const DEFAULT_BASE_PATH: &str = "/sys/bus/w1/devices";
/// The scratchpad's power-on value, 85.000 °C: read back when the conversion did not
/// run (power dropped, parasite power too weak), so it is treated as a fault.
///
/// It is ALWAYS rejected, even though 85.000 °C is inside the chip's range: the file
/// gives no way to tell a real 85.000 from a conversion that never ran, and sending a
/// believable wrong value is worse than a gap. A probe really at 85 °C loses only the
/// readings that land exactly on 85.000 (the next 1/16 °C step, 85.0625, passes).
pub const POWER_ON_RESET_MILLI_C: i64 = 85_000;

fn default_base_path() -> String {
    DEFAULT_BASE_PATH.to_owned()
}

/// Payload field of a `ds18b20` entry. Omit it for the default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemperatureFields {
    /// Temperature in °C. Default `"temperature"`.
    #[serde(default = "defaults::temperature")]
    pub temperature: String,
}

impl Default for TemperatureFields {
    fn default() -> Self {
        TemperatureFields {
            temperature: defaults::temperature(),
        }
    }
}

impl TemperatureFields {
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        vec![("temperature", self.temperature.as_str())]
    }
}

/// A `type = "ds18b20"` entry.
///
/// ```toml
/// [[sensors]]
/// type = "ds18b20"
/// base_path = "/sys/bus/w1/devices"
/// device = "28-0316a2795bff"   # omit for the first 28-* found
/// fields = { temperature = "temperature" }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ds18b20Config {
    /// Where the kernel lists 1-Wire devices. Default `/sys/bus/w1/devices`.
    #[serde(default = "default_base_path")]
    pub base_path: String,
    /// The device id, e.g. `"28-0316a2795bff"` (`ls /sys/bus/w1/devices`). Omitted: the
    /// first `28-*` in name order; name it when there are several probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Payload field name; see [`TemperatureFields`].
    #[serde(default)]
    pub fields: TemperatureFields,
}

impl Default for Ds18b20Config {
    fn default() -> Self {
        Ds18b20Config {
            base_path: default_base_path(),
            device: None,
            fields: TemperatureFields::default(),
        }
    }
}

impl SensorType for Ds18b20Config {
    fn type_name(&self) -> &'static str {
        "ds18b20"
    }

    fn doc() -> TypeDoc {
        TypeDoc {
            type_name: "ds18b20",
            description:
                "DS18B20 1-Wire thermometer through the kernel's w1 sysfs (~750 ms per read)",
            settings: vec![
                SettingDoc::new(
                    "base_path",
                    "\"/sys/bus/w1/devices\"",
                    "where the kernel lists 1-Wire devices",
                ),
                SettingDoc::new(
                    "device",
                    "none",
                    "device id, e.g. \"28-0316a2795bff\"; none: the first 28-*",
                ),
                SettingDoc::new(
                    "fields",
                    "{ temperature = \"temperature\" }",
                    "payload field (°C)",
                ),
            ],
        }
    }

    fn fields(&self) -> Vec<(&'static str, &str)> {
        self.fields.pairs()
    }

    fn check(&self) -> Result<(), (String, String)> {
        Ds18b20Config::check(self)
    }

    /// On its own thread: the w1 read waits for the conversion. A healthy read takes a
    /// whole conversion: never give up before twice that.
    fn build(&self, _: usize, deadline: std::time::Duration) -> Box<dyn Sensor> {
        Box::new(Threaded::new(
            Ds18b20Sensor::new(self.clone()),
            deadline.max(2 * CONVERSION),
        ))
    }
}

impl Ds18b20Config {
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        if self.base_path.is_empty() {
            return Err((
                "base_path".into(),
                "empty path; the default is /sys/bus/w1/devices".into(),
            ));
        }
        if let Some(id) = &self.device {
            if !id.starts_with(FAMILY) || id.contains('/') {
                return Err((
                    "device".into(),
                    format!("{id:?} is not a DS18B20 id (family 28: \"28-\" and 12 hex digits)"),
                ));
            }
        }
        Ok(())
    }
}

/// Parses `w1_slave`: the first line must end in `YES` (the kernel's CRC check), the
/// second carry `t=<milli-°C>`. Returns milli-°C.
pub fn parse_w1_slave(text: &str) -> Result<i64, String> {
    let mut lines = text.lines();
    let crc_line = lines.next().unwrap_or("").trim();
    if crc_line.is_empty() {
        return Err("empty w1_slave (the probe did not answer)".into());
    }
    if !crc_line.ends_with("YES") {
        return Err(format!(
            "CRC check failed ({crc_line:?}): noise on the 1-Wire line; check the 4.7 kΩ \
             pull-up and the cable length"
        ));
    }
    // An all-00 scratchpad passes the CRC (the CRC-8 of zeros is 0) and reads as
    // t=0, a believable 0 °C: it is a data line held low (short to GND, a dead probe).
    // All-ff is an open line or a missing pull-up (the kernel's CRC rejects it, but
    // checking costs nothing and does not depend on that).
    let bytes: Vec<&str> = crc_line
        .split(':')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    if !bytes.is_empty() && bytes.iter().all(|b| b.eq_ignore_ascii_case("00")) {
        return Err(format!(
            "the scratchpad is all zeros ({crc_line:?}): the data line is held low; check \
             for a short to GND or a dead probe"
        ));
    }
    if !bytes.is_empty() && bytes.iter().all(|b| b.eq_ignore_ascii_case("ff")) {
        return Err(format!(
            "the scratchpad is all ff ({crc_line:?}): nothing drives the data line; check \
             the 4.7 kΩ pull-up and the probe's wiring"
        ));
    }
    let t_line = lines.next().unwrap_or("");
    let t = t_line
        .rsplit_once("t=")
        .map(|(_, t)| t.trim())
        .ok_or_else(|| format!("no t= in {t_line:?}"))?;
    let milli = t
        .parse::<i64>()
        .map_err(|_| format!("t={t:?} is not a number"))?;
    if milli == POWER_ON_RESET_MILLI_C {
        return Err(
            "85.000 °C is the power-on value: the conversion did not run (check the \
                    probe's power; parasite power needs a strong pull-up)"
                .into(),
        );
    }
    Ok(milli)
}

/// The `ds18b20` sensor.
pub struct Ds18b20Sensor {
    name: String,
    config: Ds18b20Config,
}

impl Ds18b20Sensor {
    pub fn new(config: Ds18b20Config) -> Self {
        let name = match &config.device {
            Some(id) => format!("ds18b20@{id}"),
            None => format!("ds18b20@{}/28-*", config.base_path),
        };
        Ds18b20Sensor { name, config }
    }

    /// The device directory: the configured id, or the first `28-*`.
    fn device_dir(&self) -> Result<PathBuf, SensorError> {
        let base = Path::new(&self.config.base_path);
        if let Some(id) = &self.config.device {
            return Ok(base.join(id));
        }
        let entries = fs::read_dir(base).map_err(|e| SensorError::Setup {
            sensor: self.name.clone(),
            detail: format!(
                "cannot list {}: {e} (enable 1-Wire: `dtoverlay=w1-gpio` in config.txt, or set \
                 `base_path`)",
                base.display()
            ),
        })?;
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(FAMILY))
            .collect();
        ids.sort();
        ids.into_iter()
            .next()
            .map(|id| base.join(id))
            .ok_or_else(|| SensorError::Setup {
                sensor: self.name.clone(),
                detail: format!(
                    "no DS18B20 (28-*) in {} (check the probe's wiring: data on GPIO 4 with a \
                     4.7 kΩ pull-up to 3.3 V)",
                    base.display()
                ),
            })
    }
}

impl Sensor for Ds18b20Sensor {
    fn name(&self) -> &str {
        &self.name
    }

    fn read(&mut self) -> Result<Vec<Measurement>, SensorError> {
        let file = self.device_dir()?.join("w1_slave");
        let text = fs::read_to_string(&file).map_err(|e| SensorError::Bus {
            sensor: self.name.clone(),
            detail: match e.kind() {
                io::ErrorKind::NotFound => format!(
                    "{} does not exist (the probe is disconnected, or the id is wrong: \
                     `ls {}`)",
                    file.display(),
                    self.config.base_path
                ),
                _ => format!("cannot read {}: {e}", file.display()),
            },
        })?;
        let milli = parse_w1_slave(&text).map_err(|detail| SensorError::BadData {
            sensor: self.name.clone(),
            detail,
        })?;
        let mut out = Vec::with_capacity(1);
        push_checked(
            &mut out,
            &self.name,
            "temperature",
            &self.config.fields.temperature,
            milli as f64 / 1000.0,
            limits::TEMPERATURE,
        )?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";
    const NEGATIVE: &str =
        "5e ff 4b 46 7f ff 02 10 d8 : crc=d8 YES\n5e ff 4b 46 7f ff 02 10 d8 t=-10125\n";
    const BAD_CRC: &str =
        "72 01 4b 46 7f ff 0e 10 57 : crc=12 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";

    fn tree(devices: &[(&str, Option<&str>)]) -> tempfile::TempDir {
        let base = tempfile::tempdir().unwrap();
        for (id, content) in devices {
            let dir = base.path().join(id);
            fs::create_dir(&dir).unwrap();
            if let Some(content) = content {
                fs::write(dir.join("w1_slave"), content).unwrap();
            }
        }
        base
    }

    fn sensor(base: &Path, device: Option<&str>) -> Ds18b20Sensor {
        Ds18b20Sensor::new(Ds18b20Config {
            base_path: base.display().to_string(),
            device: device.map(str::to_owned),
            fields: TemperatureFields::default(),
        })
    }

    #[test]
    fn parses_the_kernel_format() {
        assert_eq!(parse_w1_slave(GOOD), Ok(23125));
        assert_eq!(parse_w1_slave(NEGATIVE), Ok(-10125));
        assert!(parse_w1_slave(BAD_CRC).unwrap_err().contains("CRC"));
        assert!(parse_w1_slave("").unwrap_err().contains("empty"));
        assert!(parse_w1_slave("50 05 : crc=00 YES\n00 t=abc\n").is_err());
        assert!(parse_w1_slave("50 05 : crc=00 YES\n")
            .unwrap_err()
            .contains("no t="));
        let por = "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n";
        assert!(parse_w1_slave(por).unwrap_err().contains("power-on"));
    }

    #[test]
    fn stuck_scratchpads_are_rejected_not_sent_as_0_degrees() {
        // A shorted or stuck-low bus: every byte 00, and the CRC of zeros is 00, so the
        // kernel says YES and t=0.
        let zeros = "00 00 00 00 00 00 00 00 00 : crc=00 YES\n00 00 00 00 00 00 00 00 00 t=0\n";
        let e = parse_w1_slave(zeros).unwrap_err();
        assert!(e.contains("all zeros") && e.contains("GND"), "{e}");
        let ones = "ff ff ff ff ff ff ff ff ff : crc=ff YES\nff ff ff ff ff ff ff ff ff t=-62\n";
        let e = parse_w1_slave(ones).unwrap_err();
        assert!(e.contains("all ff") && e.contains("pull-up"), "{e}");
        // A real 0 °C has a non-zero scratchpad (config byte 7f, reserved ff/10).
        let freezing = "00 00 4b 46 7f ff 10 10 6c : crc=6c YES\n00 00 4b 46 7f ff 10 10 6c t=0\n";
        assert_eq!(parse_w1_slave(freezing), Ok(0));
    }

    #[test]
    fn first_28_device_is_used_when_no_id_is_given() {
        let base = tree(&[
            ("w1_bus_master1", None),
            ("10-000802b4ba0e", Some(NEGATIVE)),
            ("28-0316a2795bff", Some(GOOD)),
            ("28-ffff00000000", Some(NEGATIVE)),
        ]);
        let m = sensor(base.path(), None).read().unwrap();
        assert_eq!(
            m,
            vec![Measurement {
                field: "temperature".into(),
                value: 23.125
            }]
        );
        let m = sensor(base.path(), Some("28-ffff00000000")).read().unwrap();
        assert_eq!(m[0].value, -10.125);
    }

    #[test]
    fn missing_and_malformed_files() {
        let base = tree(&[("28-0316a2795bff", None)]);
        let e = sensor(base.path(), None).read().unwrap_err();
        assert!(
            matches!(e, SensorError::Bus { .. }) && e.to_string().contains("disconnected"),
            "{e}"
        );
        let e = sensor(base.path(), Some("28-000000000000"))
            .read()
            .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = sensor(empty.path(), None).read().unwrap_err();
        assert!(e.to_string().contains("no DS18B20"), "{e}");
        let e = sensor(&empty.path().join("nope"), None).read().unwrap_err();
        assert!(e.to_string().contains("w1-gpio"), "{e}");
        let base = tree(&[("28-0316a2795bff", Some(BAD_CRC))]);
        let e = sensor(base.path(), None).read().unwrap_err();
        assert!(matches!(e, SensorError::BadData { .. }), "{e:?}");
        let base = tree(&[("28-0316a2795bff", Some("garbage"))]);
        assert!(sensor(base.path(), None).read().is_err());
    }

    #[test]
    fn config_checks_the_id() {
        let c = Ds18b20Config {
            device: Some("10-000802b4ba0e".into()),
            ..Ds18b20Config::default()
        };
        assert_eq!(c.check().unwrap_err().0, "device");
        assert!(Ds18b20Config::default().check().is_ok());
    }
}
