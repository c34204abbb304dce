//! What the I2C accelerometers (ADXL345, MPU-6050) share: their entry
//! ([`AccelConfig`]: where the chip is, rate, range and aggregation) and the source that
//! drains the chip's FIFO for the sampling thread of [`super::AccelSensor`]. A chip's own
//! file says what differs ([`AccelChip`]): its rates and ranges, FIFO depth, backend,
//! initialisation and FIFO read.

use std::marker::PhantomData;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::aggregate::{Aggregate, Gravity, Unit, STANDARD_GRAVITY};
use super::{
    check_range, check_rate, settings_doc, AccelFields, AccelSensor, AccelSettings, AccelSource,
    Opener,
};
use crate::sensors::i2c::{self, Backend, I2cBus, I2cChip, Target};
use crate::sensors::{Sensor, SensorError, SensorType, TypeDoc};

/// What one accelerometer chip brings to [`AccelConfig`] and its sampling thread.
pub trait AccelChip: I2cChip {
    /// Its driver on an open bus, initialised and measuring.
    type Driver: Send + 'static;
    /// How `write_read` must reach the wire; see [`crate::sensors::i2c`].
    const BACKEND: Backend;
    /// The `rate_hz` values it supports, and what they are (for the error message).
    const RATES_HZ: &'static [u32];
    const RATES_WHY: &'static str;
    /// The `range_g` values it supports.
    const RANGES_G: &'static [u8];
    const DEFAULT_RATE_HZ: u32;
    const DEFAULT_RANGE_G: u8;
    /// `sensors list`: the rates and ranges explained.
    const RATES_DOC: &'static str;
    const RANGES_DOC: &'static str;
    /// Samples its FIFO holds: it is drained twice per fill, at least every 50 ms.
    const FIFO_SAMPLES: u32;

    /// Initialises the chip on a freshly opened bus and starts its FIFO.
    fn init(
        bus: I2cBus,
        target: &Target,
        rate_hz: u32,
        range_g: u8,
    ) -> Result<Self::Driver, SensorError>;
    /// Appends every sample waiting in the FIFO, in g.
    fn read_fifo(
        driver: &mut Self::Driver,
        target: &Target,
        out: &mut Vec<[f64; 3]>,
    ) -> Result<(), SensorError>;
}

fn default_rate<C: AccelChip>() -> u32 {
    C::DEFAULT_RATE_HZ
}
fn default_range<C: AccelChip>() -> u8 {
    C::DEFAULT_RANGE_G
}

/// A `[[sensors]]` entry of an I2C accelerometer.
///
/// ```toml
/// [[sensors]]
/// type = "adxl345"     # or "mpu6050"
/// bus = 1              # or device = "/dev/i2c-1"
/// address = 0x53       # the chip's first address by default
/// rate_hz = 400        # one of the chip's rates
/// range_g = 16         # one of the chip's ranges
/// aggregate = "rms"    # "rms", "peak" or "mean"
/// gravity = "measured" # or "standard"
/// unit = "m/s2"        # or "g"
/// fields = { acceleration = "accelerometre" }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, bound = "")]
pub struct AccelConfig<C: AccelChip> {
    /// I2C bus number N, i.e. `/dev/i2c-N`. Default 1. Set `bus` or `device`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<u8>,
    /// Path of the i2c-dev node, e.g. `"/dev/i2c-1"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// 7-bit address, one of the chip's [`I2cChip::ADDRESSES`] (the first by default).
    #[serde(default = "i2c::default_address::<C>")]
    pub address: u8,
    /// Sample rate, Hz: one of the chip's [`AccelChip::RATES_HZ`].
    #[serde(default = "default_rate::<C>")]
    pub rate_hz: u32,
    /// Full-scale range, ±g: one of the chip's [`AccelChip::RANGES_G`].
    #[serde(default = "default_range::<C>")]
    pub range_g: u8,
    /// The value per reading: `"rms"` (default), `"peak"` or `"mean"`; see [`Aggregate`].
    #[serde(default)]
    pub aggregate: Aggregate,
    /// The gravity subtracted for `rms` and `peak`: `"measured"` (default) or
    /// `"standard"`; see [`Gravity`].
    #[serde(default)]
    pub gravity: Gravity,
    /// Unit of the value sent: `"m/s2"` (default) or `"g"`.
    #[serde(default)]
    pub unit: Unit,
    /// Payload field name; see [`AccelFields`].
    #[serde(default)]
    pub fields: AccelFields,
    #[serde(skip)]
    pub chip: PhantomData<C>,
}

impl<C: AccelChip> Default for AccelConfig<C> {
    fn default() -> Self {
        AccelConfig {
            bus: None,
            device: None,
            address: i2c::default_address::<C>(),
            rate_hz: C::DEFAULT_RATE_HZ,
            range_g: C::DEFAULT_RANGE_G,
            aggregate: Aggregate::default(),
            gravity: Gravity::default(),
            unit: Unit::default(),
            fields: AccelFields::default(),
            chip: PhantomData,
        }
    }
}

impl<C: AccelChip> AccelConfig<C> {
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        i2c::check_target::<C>(self.bus, self.device.as_deref(), self.address)?;
        check_rate(self.rate_hz, C::RATES_HZ, C::RATES_WHY)?;
        check_range(self.range_g, C::RANGES_G)
    }

    /// The sensor: starts its sampling thread, which opens the chip.
    pub fn sensor(&self) -> AccelSensor {
        let target = Target::new::<C>(self.bus, self.device.as_deref(), self.address);
        let settings = AccelSettings {
            rate_hz: self.rate_hz,
            aggregate: self.aggregate,
            gravity: self.gravity,
            unit: self.unit,
        };
        // Half the time the FIFO takes to fill, at most 50 ms.
        let poll = Duration::from_secs_f64(
            (f64::from(C::FIFO_SAMPLES) / f64::from(self.rate_hz.max(1)) / 2.0).min(0.05),
        );
        let (name, rate, range) = (target.name.clone(), self.rate_hz, self.range_g);
        let opener: Opener = Box::new(move || {
            let bus = i2c::open(&target.location, C::BACKEND, &target.name)?;
            let driver = C::init(bus, &target, rate, range)?;
            Ok(Box::new(Source::<C> {
                target: target.clone(),
                driver,
                poll,
            }) as Box<dyn AccelSource>)
        });
        AccelSensor::start(name, self.fields.acceleration.clone(), settings, opener)
    }
}

impl<C: AccelChip> SensorType for AccelConfig<C> {
    fn type_name(&self) -> &'static str {
        C::TYPE
    }

    fn i2c_bus(&self) -> Option<i2c::BusLocation> {
        Some(Target::new::<C>(self.bus, self.device.as_deref(), self.address).location)
    }

    fn doc() -> TypeDoc {
        let mut settings = i2c::settings_doc::<C>();
        settings.extend(settings_doc(
            C::DEFAULT_RATE_HZ.to_string(),
            C::RATES_DOC,
            C::DEFAULT_RANGE_G.to_string(),
            C::RANGES_DOC,
        ));
        TypeDoc {
            type_name: C::TYPE,
            description: C::DESCRIPTION,
            settings,
        }
    }

    fn fields(&self) -> Vec<(&'static str, &str)> {
        self.fields.pairs()
    }

    fn check(&self) -> Result<(), (String, String)> {
        AccelConfig::check(self)
    }

    /// Never blocks: `read` only looks at what the sampling thread gathered.
    fn build(&self, _: usize, _: Duration) -> Box<dyn Sensor> {
        Box::new(self.sensor())
    }
}

/// An open, measuring chip.
struct Source<C: AccelChip> {
    target: Target,
    driver: C::Driver,
    poll: Duration,
}

impl<C: AccelChip> AccelSource for Source<C> {
    fn drain(&mut self, out: &mut Vec<[f64; 3]>) -> Result<(), SensorError> {
        let start = out.len();
        C::read_fifo(&mut self.driver, &self.target, out)?;
        for s in &mut out[start..] {
            for v in s.iter_mut() {
                *v *= STANDARD_GRAVITY;
            }
        }
        Ok(())
    }

    fn poll_period(&self) -> Duration {
        self.poll
    }
}
