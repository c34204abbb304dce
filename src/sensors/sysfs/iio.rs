//! Any Linux Industrial I/O device, through sysfs (`/sys/bus/iio/devices/iio:deviceN`):
//! every sensor the kernel drives, including those of the Pi's device-tree overlays
//! (`dtoverlay=i2c-sensor,bme280`, `dtoverlay=dht11`, ...).
//!
//! For each quantity the processed attribute `in_<chan>_input` is used when present,
//! otherwise `(in_<chan>_raw + offset) * scale` with `in_<chan>_offset`/`in_<chan>_scale`
//! (per axis first, then shared, e.g. `in_accel_x_scale` then `in_accel_scale`), as the
//! kernel's sysfs-bus-iio ABI defines them. Units after that: temperature milli-°C,
//! relative humidity milli-%, pressure kPa, acceleration m/s²; the payload gets °C, %,
//! hPa and the accelerometer aggregate.
//!
//! Which channels the device has is found when it is opened; a quantity the device does
//! not have is skipped (so the default `fields` suit any device), a mapped quantity whose
//! file disappears or fails later is a fault, and the device is opened again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sensors::accel::aggregate::{Aggregate, Gravity, Unit};
use crate::sensors::accel::{self, AccelSensor, AccelSettings, AccelSource, Opener};
use crate::sensors::worker::Threaded;
use crate::sensors::{
    defaults, limits, push_checked, round, Measurement, Sensor, SensorError, SensorType,
    SettingDoc, TypeDoc,
};

/// Payload fields of an `iio` entry. Set a key to `""` to not send that quantity.
/// Quantities the device does not have are skipped.
///
/// An omitted key (`None`) takes the server's field name, but only when no other entry
/// sends it and no explicit mapping claims it (see [`crate::sensors::resolve_defaults`]): one
/// `iio` entry stands for any device, so its defaults must not collide with a sensor
/// that does have that quantity (a BME280 through the kernel driver next to an
/// `adxl345`). An explicit mapping that collides is still an error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IioFields {
    /// Temperature in °C. Default `"temperature"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<String>,
    /// Relative humidity in %. Default `"humidite"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub humidity: Option<String>,
    /// Pressure in hPa. Default `"pression"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure: Option<String>,
    /// Accelerometer aggregate, in `unit`. Default `"accelerometre"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceleration: Option<String>,
}

impl IioFields {
    /// The `fields` keys, in order.
    pub const KEYS: [&'static str; 4] = ["temperature", "humidity", "pressure", "acceleration"];

    /// The payload field an omitted `key` defaults to.
    pub fn default_name(key: &str) -> &'static str {
        match key {
            "temperature" => defaults::TEMPERATURE,
            "humidity" => defaults::HUMIDITY,
            "pressure" => defaults::PRESSURE,
            _ => defaults::ACCELERATION,
        }
    }

    fn slot(&self, key: &str) -> &Option<String> {
        match key {
            "temperature" => &self.temperature,
            "humidity" => &self.humidity,
            "pressure" => &self.pressure,
            _ => &self.acceleration,
        }
    }

    /// Sets `key` (one of [`Self::KEYS`]) explicitly.
    pub fn set(&mut self, key: &str, field: String) {
        let slot = match key {
            "temperature" => &mut self.temperature,
            "humidity" => &mut self.humidity,
            "pressure" => &mut self.pressure,
            _ => &mut self.acceleration,
        };
        *slot = Some(field);
    }

    /// The payload field of `key`: its mapping, or its default when omitted.
    pub fn get(&self, key: &str) -> &str {
        self.slot(key)
            .as_deref()
            .unwrap_or_else(|| Self::default_name(key))
    }

    pub fn temperature(&self) -> &str {
        self.get("temperature")
    }
    pub fn humidity(&self) -> &str {
        self.get("humidity")
    }
    pub fn pressure(&self) -> &str {
        self.get("pressure")
    }
    pub fn acceleration(&self) -> &str {
        self.get("acceleration")
    }

    /// Every key with its payload field, omitted keys at their default.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        Self::KEYS.iter().map(|k| (*k, self.get(k))).collect()
    }

    /// Only the keys set in the file, with their payload field.
    pub fn explicit_pairs(&self) -> Vec<(&'static str, &str)> {
        Self::KEYS
            .iter()
            .filter_map(|k| self.slot(k).as_deref().map(|f| (*k, f)))
            .collect()
    }

    /// The keys left to their default.
    pub fn omitted(&self) -> Vec<&'static str> {
        Self::KEYS
            .iter()
            .copied()
            .filter(|k| self.slot(k).is_none())
            .collect()
    }
}

pub const DEFAULT_DEVICE: &str = "/sys/bus/iio/devices/iio:device0";

fn default_device() -> String {
    DEFAULT_DEVICE.to_owned()
}
const fn default_rate() -> u32 {
    100
}

/// A `type = "iio"` entry.
///
/// ```toml
/// [[sensors]]
/// type = "iio"
/// device = "/sys/bus/iio/devices/iio:device0"
/// fields = { temperature = "temperature", humidity = "humidite", pressure = "pression" }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IioConfig {
    /// The device's sysfs directory. Default `/sys/bus/iio/devices/iio:device0`. Device
    /// numbers follow probe order: check `cat /sys/bus/iio/devices/*/name`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Acceleration only: how often the `in_accel_*` files are read, Hz (1..=1000,
    /// default 100). Each read may start a conversion in the driver: for vibration at
    /// hundreds of Hz prefer the `adxl345`/`mpu6050` types, which read the chip's FIFO.
    #[serde(default = "default_rate")]
    pub rate_hz: u32,
    /// Acceleration only: `"rms"` (default), `"peak"` or `"mean"`; see [`Aggregate`].
    #[serde(default)]
    pub aggregate: Aggregate,
    /// Acceleration only: `"measured"` (default) or `"standard"`; see [`Gravity`].
    #[serde(default)]
    pub gravity: Gravity,
    /// Acceleration only: `"m/s2"` (default) or `"g"`.
    #[serde(default)]
    pub unit: Unit,
    /// Payload field names; see [`IioFields`].
    #[serde(default)]
    pub fields: IioFields,
}

impl Default for IioConfig {
    fn default() -> Self {
        IioConfig {
            device: default_device(),
            rate_hz: default_rate(),
            aggregate: Aggregate::default(),
            gravity: Gravity::default(),
            unit: Unit::default(),
            fields: IioFields::default(),
        }
    }
}

impl IioConfig {
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        if self.device.is_empty() {
            return Err((
                "device".into(),
                "empty path; use e.g. \"/sys/bus/iio/devices/iio:device0\"".into(),
            ));
        }
        if !(1..=1000).contains(&self.rate_hz) {
            return Err((
                "rate_hz".into(),
                format!("{} Hz is outside 1..=1000", self.rate_hz),
            ));
        }
        Ok(())
    }
}

impl SensorType for IioConfig {
    fn type_name(&self) -> &'static str {
        "iio"
    }

    fn doc() -> TypeDoc {
        let mut settings = vec![SettingDoc::new(
            "device",
            "\"/sys/bus/iio/devices/iio:device0\"",
            "the IIO device's sysfs directory (see /sys/bus/iio/devices/*/name)",
        )];
        settings.extend(
            accel::settings_doc(
                "100",
                "acceleration only: sysfs read rate, 1..=1000 Hz",
                "",
                "",
            )
            .into_iter()
            .filter(|d| d.key != "range_g" && d.key != "fields"),
        );
        settings.push(SettingDoc::new(
            "fields",
            "{ temperature = \"temperature\", humidity = \"humidite\", pressure = \"pression\", acceleration = \"accelerometre\" }",
            "payload fields; channels the device lacks are skipped; \"\" drops one; an omitted key \
             takes its default only if no other entry sends that field",
        ));
        TypeDoc {
            type_name: "iio",
            description:
                "any Linux IIO device (in_temp, in_humidityrelative, in_pressure, in_accel_[xyz])",
            settings,
        }
    }

    fn fields(&self) -> Vec<(&'static str, &str)> {
        self.fields.pairs()
    }

    fn check(&self) -> Result<(), (String, String)> {
        IioConfig::check(self)
    }

    /// On its own thread: a sysfs read waits on the driver.
    fn build(&self, _: usize, deadline: Duration) -> Box<dyn Sensor> {
        Box::new(Threaded::new(IioSensor::new(self.clone()), deadline))
    }
}

/// One channel: where its value is and how to convert it to the ABI unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    pub file: PathBuf,
    pub scale: f64,
    pub offset: f64,
}

fn read_number(file: &Path, sensor: &str) -> Result<f64, SensorError> {
    let text = fs::read_to_string(file).map_err(|e| SensorError::Bus {
        sensor: sensor.to_owned(),
        detail: match e.kind() {
            io::ErrorKind::NotFound => format!(
                "{} disappeared (the device was removed or its driver unloaded)",
                file.display()
            ),
            _ => format!(
                "cannot read {}: {e} (the driver could not talk to the chip)",
                file.display()
            ),
        },
    })?;
    text.trim()
        .parse::<f64>()
        .map_err(|_| SensorError::BadData {
            sensor: sensor.to_owned(),
            detail: format!("{} holds {:?}, not a number", file.display(), text.trim()),
        })
}

impl Channel {
    /// Finds channel `chan` (e.g. `temp`, `accel_x`) in `dir`: `in_<chan>_input`, or
    /// `in_<chan>_raw` with scale and offset (per channel, then shared by `shared`,
    /// e.g. `accel`). `Ok(None)` when the device has no such channel.
    pub fn find(
        dir: &Path,
        chan: &str,
        shared: &str,
        sensor: &str,
    ) -> Result<Option<Channel>, SensorError> {
        let input = dir.join(format!("in_{chan}_input"));
        if input.is_file() {
            return Ok(Some(Channel {
                file: input,
                scale: 1.0,
                offset: 0.0,
            }));
        }
        let raw = dir.join(format!("in_{chan}_raw"));
        if !raw.is_file() {
            return Ok(None);
        }
        let attribute = |name: &str, default: f64| -> Result<f64, SensorError> {
            for candidate in [format!("in_{chan}_{name}"), format!("in_{shared}_{name}")] {
                let path = dir.join(candidate);
                if path.is_file() {
                    return read_number(&path, sensor);
                }
            }
            Ok(default)
        };
        Ok(Some(Channel {
            file: raw,
            scale: attribute("scale", 1.0)?,
            offset: attribute("offset", 0.0)?,
        }))
    }

    /// The value in the ABI unit: `(raw + offset) * scale`, or the processed value.
    pub fn read(&self, sensor: &str) -> Result<f64, SensorError> {
        Ok((read_number(&self.file, sensor)? + self.offset) * self.scale)
    }
}

/// The channels of an open device that the entry maps.
#[derive(Debug, Default)]
struct Channels {
    temperature: Option<Channel>,
    humidity: Option<Channel>,
    pressure: Option<Channel>,
    accel: bool,
}

/// The three acceleration axes, if the device has them all.
pub fn accel_channels(dir: &Path, sensor: &str) -> Result<Option<[Channel; 3]>, SensorError> {
    let x = Channel::find(dir, "accel_x", "accel", sensor)?;
    let y = Channel::find(dir, "accel_y", "accel", sensor)?;
    let z = Channel::find(dir, "accel_z", "accel", sensor)?;
    Ok(match (x, y, z) {
        (Some(x), Some(y), Some(z)) => Some([x, y, z]),
        _ => None,
    })
}

struct AccelFiles {
    sensor: String,
    axes: [Channel; 3],
    period: Duration,
}

impl AccelSource for AccelFiles {
    fn drain(&mut self, out: &mut Vec<[f64; 3]>) -> Result<(), SensorError> {
        let mut v = [0.0; 3];
        for (value, axis) in v.iter_mut().zip(&self.axes) {
            *value = axis.read(&self.sensor)?;
        }
        out.push(v);
        Ok(())
    }

    fn poll_period(&self) -> Duration {
        self.period
    }
}

/// The `iio` sensor.
pub struct IioSensor {
    name: String,
    dir: PathBuf,
    config: IioConfig,
    channels: Option<Channels>,
    accel: Option<AccelSensor>,
}

impl IioSensor {
    pub fn new(config: IioConfig) -> Self {
        let dir = PathBuf::from(&config.device);
        let base = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| config.device.clone());
        let chip = fs::read_to_string(dir.join("name"))
            .map(|n| format!("({})", n.trim()))
            .unwrap_or_default();
        IioSensor {
            name: format!("iio@{base}{chip}"),
            dir,
            config,
            channels: None,
            accel: None,
        }
    }

    fn open(&mut self) -> Result<Channels, SensorError> {
        if !self.dir.is_dir() {
            return Err(SensorError::Setup {
                sensor: self.name.clone(),
                detail: format!(
                    "no IIO device at {} (is its overlay loaded, e.g. `dtoverlay=i2c-sensor,bme280` \
                     in config.txt? `cat /sys/bus/iio/devices/*/name` lists the devices)",
                    self.dir.display()
                ),
            });
        }
        let f = &self.config.fields;
        let name = self.name.as_str();
        let find = |field: &str, chan: &str| -> Result<Option<Channel>, SensorError> {
            if field.is_empty() {
                return Ok(None);
            }
            Channel::find(&self.dir, chan, chan, name)
        };
        let mut channels = Channels {
            temperature: find(f.temperature(), "temp")?,
            humidity: find(f.humidity(), "humidityrelative")?,
            pressure: find(f.pressure(), "pressure")?,
            accel: false,
        };
        if !f.acceleration().is_empty() {
            if let Some(axes) = accel_channels(&self.dir, name)? {
                channels.accel = true;
                if self.accel.is_none() {
                    self.accel = Some(self.start_accel(axes));
                }
            }
        }
        if channels.temperature.is_none()
            && channels.humidity.is_none()
            && channels.pressure.is_none()
            && !channels.accel
        {
            return Err(SensorError::Setup {
                sensor: self.name.clone(),
                detail: format!(
                    "{} has none of the mapped channels (in_temp_*, in_humidityrelative_*, \
                     in_pressure_*, in_accel_[xyz]_*): check `device` and `fields`",
                    self.dir.display()
                ),
            });
        }
        Ok(channels)
    }

    fn start_accel(&self, axes: [Channel; 3]) -> AccelSensor {
        let c = &self.config;
        let settings = AccelSettings {
            rate_hz: c.rate_hz,
            aggregate: c.aggregate,
            gravity: c.gravity,
            unit: c.unit,
        };
        let period = Duration::from_secs_f64(1.0 / f64::from(c.rate_hz.max(1)));
        let (dir, sensor) = (self.dir.clone(), self.name.clone());
        let mut first = Some(axes);
        let opener: Opener = Box::new(move || {
            let axes = match first.take() {
                Some(axes) => axes,
                None => accel_channels(&dir, &sensor)?.ok_or_else(|| SensorError::Setup {
                    sensor: sensor.clone(),
                    detail: format!("{} has no in_accel_[xyz] channels any more", dir.display()),
                })?,
            };
            Ok(Box::new(AccelFiles {
                sensor: sensor.clone(),
                axes,
                period,
            }) as Box<dyn AccelSource>)
        });
        AccelSensor::start(
            self.name.clone(),
            c.fields.acceleration().to_owned(),
            settings,
            opener,
        )
    }

    fn read_channels(&mut self, channels: &Channels) -> Result<Vec<Measurement>, SensorError> {
        let f = &self.config.fields;
        let name = self.name.as_str();
        let mut out = Vec::with_capacity(4);
        if let Some(c) = &channels.temperature {
            let v = round(c.read(name)? / 1000.0, 3);
            push_checked(
                &mut out,
                name,
                "temperature",
                f.temperature(),
                v,
                limits::TEMPERATURE,
            )?;
        }
        if let Some(c) = &channels.humidity {
            let v = round(c.read(name)? / 1000.0, 3);
            push_checked(
                &mut out,
                name,
                "humidity",
                f.humidity(),
                v,
                limits::HUMIDITY,
            )?;
        }
        if let Some(c) = &channels.pressure {
            let v = round(c.read(name)? * 10.0, 3);
            push_checked(
                &mut out,
                name,
                "pressure",
                f.pressure(),
                v,
                limits::PRESSURE,
            )?;
        }
        if channels.accel {
            if let Some(accel) = self.accel.as_mut() {
                out.extend(accel.read()?);
            }
        }
        Ok(out)
    }
}

impl Sensor for IioSensor {
    fn name(&self) -> &str {
        &self.name
    }

    /// Not `retries_itself`: the sysfs channels are retried by the set's backoff. The
    /// accelerometer thread goes on meanwhile, so what it sampled during a skipped tick
    /// is dropped (see `AccelSensor::discard`).
    fn skipped(&mut self) {
        if let Some(accel) = &self.accel {
            accel.discard();
        }
    }

    fn read(&mut self) -> Result<Vec<Measurement>, SensorError> {
        let channels = match self.channels.take() {
            Some(c) => c,
            None => self.open()?,
        };
        let result = self.read_channels(&channels);
        if result.is_ok() {
            self.channels = Some(channels); // any error makes the next read look again
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            fs::write(dir.path().join(name), content).unwrap();
        }
        dir
    }

    fn config(dir: &Path) -> IioConfig {
        IioConfig {
            device: dir.display().to_string(),
            ..IioConfig::default()
        }
    }

    fn value(m: &[Measurement], field: &str) -> Option<f64> {
        m.iter().find(|m| m.field == field).map(|m| m.value)
    }

    #[test]
    fn bme280_driver_attributes_convert_to_payload_units() {
        // As the kernel's bmp280 driver presents a BME280.
        let dir = device(&[
            ("name", "bme280\n"),
            ("in_temp_input", "23450\n"),
            ("in_humidityrelative_input", "51234\n"),
            ("in_pressure_input", "101.325\n"),
        ]);
        let mut s = IioSensor::new(config(dir.path()));
        assert!(s.name().ends_with("(bme280)"), "{}", s.name());
        let m = s.read().unwrap();
        assert_eq!(value(&m, "temperature"), Some(23.45));
        assert_eq!(value(&m, "humidite"), Some(51.234));
        assert_eq!(value(&m, "pression"), Some(1013.25));
        assert_eq!(m.len(), 3, "no acceleration channels, none sent: {m:?}");
    }

    #[test]
    fn raw_scale_and_offset() {
        // (raw + offset) * scale, in milli-°C: (1000 + -500) * 50 = 25000 -> 25 °C.
        let dir = device(&[
            ("in_temp_raw", "1000"),
            ("in_temp_scale", "50"),
            ("in_temp_offset", "-500"),
        ]);
        let m = IioSensor::new(config(dir.path())).read().unwrap();
        assert_eq!(value(&m, "temperature"), Some(25.0));
    }

    #[test]
    fn accel_axes_use_per_axis_then_shared_scale_and_offset() {
        let dir = device(&[
            ("in_accel_x_raw", "100"),
            ("in_accel_y_raw", "-100"),
            ("in_accel_z_raw", "256"),
            ("in_accel_scale", "0.038307"),
            ("in_accel_z_scale", "0.5"),
            ("in_accel_x_offset", "1"),
        ]);
        let axes = accel_channels(dir.path(), "t").unwrap().unwrap();
        assert_eq!(axes[0].scale, 0.038307);
        assert_eq!(axes[0].offset, 1.0);
        assert_eq!(axes[2].scale, 0.5);
        assert!((axes[0].read("t").unwrap() - 101.0 * 0.038307).abs() < 1e-12);
        assert_eq!(axes[2].read("t").unwrap(), 128.0);
    }

    #[test]
    fn accelerometer_device_sends_the_aggregate() {
        let dir = device(&[
            ("in_accel_x_raw", "0"),
            ("in_accel_y_raw", "0"),
            ("in_accel_z_raw", "1000"),
            ("in_accel_scale", "0.00980665"),
        ]);
        let mut c = config(dir.path());
        c.aggregate = Aggregate::Mean;
        c.unit = Unit::G;
        c.rate_hz = 500;
        let mut s = IioSensor::new(c);
        // The first read finds the axes and starts the sampling thread.
        let _ = s.read();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let m = loop {
            std::thread::sleep(Duration::from_millis(20));
            if let Ok(m) = s.read() {
                break m;
            }
            assert!(std::time::Instant::now() < deadline, "no aggregate");
        };
        let a = value(&m, "accelerometre").unwrap();
        assert!((a - 1.0).abs() < 1e-6, "{a}");
    }

    #[test]
    fn missing_device_is_a_setup_fault_naming_the_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let e = IioSensor::new(config(&dir.path().join("iio:device9")))
            .read()
            .unwrap_err();
        assert!(matches!(e, SensorError::Setup { .. }));
        assert!(e.to_string().contains("dtoverlay"), "{e}");
    }

    #[test]
    fn device_without_mapped_channels_is_a_fault() {
        let dir = device(&[("name", "ads1015"), ("in_voltage0_raw", "12")]);
        let e = IioSensor::new(config(dir.path())).read().unwrap_err();
        assert!(e.to_string().contains("none of the mapped channels"), "{e}");
    }

    #[test]
    fn malformed_file_is_bad_data_and_vanished_file_a_bus_fault() {
        let dir = device(&[
            ("in_temp_input", "23450"),
            ("in_humidityrelative_input", "n/a\n"),
        ]);
        let mut s = IioSensor::new(config(dir.path()));
        let e = s.read().unwrap_err();
        assert!(matches!(e, SensorError::BadData { .. }), "{e:?}");
        assert!(e.to_string().contains("\"n/a\""), "{e}");
        fs::write(dir.path().join("in_humidityrelative_input"), "40000").unwrap();
        assert_eq!(s.read().unwrap().len(), 2);
        fs::remove_file(dir.path().join("in_temp_input")).unwrap();
        let e = s.read().unwrap_err();
        assert!(matches!(e, SensorError::Bus { .. }), "{e:?}");
        assert!(e.to_string().contains("disappeared"), "{e}");
        // Looked up again: only humidity is left, and it is read.
        assert_eq!(s.read().unwrap().len(), 1);
    }

    #[test]
    fn out_of_range_value_is_bad_data() {
        let dir = device(&[("in_temp_input", "500000")]);
        let e = IioSensor::new(config(dir.path())).read().unwrap_err();
        assert!(e.to_string().contains("outside the physical range"), "{e}");
    }

    #[test]
    fn unmapped_quantity_is_not_read() {
        let dir = device(&[("in_temp_input", "20000"), ("in_pressure_input", "garbage")]);
        let mut c = config(dir.path());
        c.fields.pressure = Some(String::new());
        let m = IioSensor::new(c).read().unwrap();
        assert_eq!(m.len(), 1);
    }
}
