//! Temperature, humidity and pressure chips on I2C: the Bosch BME280/BMP280 and the
//! Sensirion SHT3x/SHT4x (which share [`sensirion`]).
//!
//! Every chip here has the same entry (`bus`, `device`, `address`, `fields`:
//! [`ClimateConfig`]) and the same sensor ([`ClimateSensor`]: open lazily, one
//! measurement per read, drop the driver after an error). A chip's own file says what
//! differs ([`ClimateChip`]): its driver, its backend, its `fields` table and how a
//! measurement becomes payload values.

pub mod bme280;
pub mod sensirion;
pub mod sht3x;
pub mod sht4x;

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::sensors::i2c::{self, Backend, I2cBus, I2cChip, LazyDriver, Target};
use crate::sensors::worker::Threaded;
use crate::sensors::{Measurement, Sensor, SensorError, SensorType, SettingDoc, TypeDoc};

/// What one climate chip brings to [`ClimateConfig`] and [`ClimateSensor`].
pub trait ClimateChip: I2cChip {
    /// Its `fields` table.
    type Fields: fmt::Debug
        + Clone
        + PartialEq
        + Default
        + Serialize
        + DeserializeOwned
        + Send
        + 'static;
    /// Its driver on an open bus.
    type Driver: Send;
    /// One measurement, as the driver returns it.
    type Values;
    /// How `write_read` must reach the wire; see [`crate::sensors::i2c`].
    const BACKEND: Backend;
    /// `sensors list`: the default `fields` table as TOML, and what it holds.
    const FIELDS_DOC: (&'static str, &'static str);

    /// Every `fields` key with its payload field (`""`: not sent).
    fn pairs(fields: &Self::Fields) -> Vec<(&'static str, &str)>;
    /// Initialises the chip on a freshly opened bus.
    fn init(
        bus: I2cBus,
        target: &Target,
        fields: &Self::Fields,
    ) -> Result<Self::Driver, SensorError>;
    /// One measurement.
    fn measure(driver: &mut Self::Driver, target: &Target) -> Result<Self::Values, SensorError>;
    /// The payload values of a measurement, range-checked.
    fn measurements(
        name: &str,
        fields: &Self::Fields,
        values: Self::Values,
    ) -> Result<Vec<Measurement>, SensorError>;
}

/// A `[[sensors]]` entry of a climate chip.
///
/// ```toml
/// [[sensors]]
/// type = "bme280"    # or "sht3x", "sht4x"
/// bus = 1            # or device = "/dev/i2c-1"
/// address = 0x76     # the chip's first address by default
/// fields = { temperature = "temperature", humidity = "humidite", pressure = "pression" }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, bound = "")]
pub struct ClimateConfig<C: ClimateChip> {
    /// I2C bus number N, i.e. `/dev/i2c-N`. Default 1 (header pins 3 and 5).
    /// Set `bus` or `device`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<u8>,
    /// Path of the i2c-dev node, e.g. `"/dev/i2c-1"`, for boards that name buses otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// 7-bit address, one of the chip's [`I2cChip::ADDRESSES`] (the first by default).
    #[serde(default = "i2c::default_address::<C>")]
    pub address: u8,
    /// Payload field names; see the chip's `Fields`.
    #[serde(default)]
    pub fields: C::Fields,
    #[serde(skip)]
    pub chip: PhantomData<C>,
}

impl<C: ClimateChip> Default for ClimateConfig<C> {
    fn default() -> Self {
        ClimateConfig {
            bus: None,
            device: None,
            address: i2c::default_address::<C>(),
            fields: C::Fields::default(),
            chip: PhantomData,
        }
    }
}

impl<C: ClimateChip> ClimateConfig<C> {
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        i2c::check_target::<C>(self.bus, self.device.as_deref(), self.address)
    }

    fn target(&self) -> Target {
        Target::new::<C>(self.bus, self.device.as_deref(), self.address)
    }
}

impl<C: ClimateChip> SensorType for ClimateConfig<C> {
    fn type_name(&self) -> &'static str {
        C::TYPE
    }

    fn i2c_bus(&self) -> Option<i2c::BusLocation> {
        Some(self.target().location)
    }

    fn doc() -> TypeDoc {
        let mut settings = i2c::settings_doc::<C>();
        let (default, description) = C::FIELDS_DOC;
        settings.push(SettingDoc::new("fields", default, description));
        TypeDoc {
            type_name: C::TYPE,
            description: C::DESCRIPTION,
            settings,
        }
    }

    fn fields(&self) -> Vec<(&'static str, &str)> {
        C::pairs(&self.fields)
    }

    fn check(&self) -> Result<(), (String, String)> {
        ClimateConfig::check(self)
    }

    /// On its own thread: a chip can hold the bus down.
    fn build(&self, _: usize, deadline: Duration) -> Box<dyn Sensor> {
        Box::new(Threaded::new(ClimateSensor::new(self.clone()), deadline))
    }
}

/// A climate chip's sensor: opens the bus on first use and again after any error.
pub struct ClimateSensor<C: ClimateChip> {
    driver: LazyDriver<C::Driver>,
    fields: C::Fields,
}

impl<C: ClimateChip> ClimateSensor<C> {
    pub fn new(config: ClimateConfig<C>) -> Self {
        ClimateSensor {
            driver: LazyDriver::new(config.target(), C::BACKEND),
            fields: config.fields,
        }
    }
}

impl<C: ClimateChip> Sensor for ClimateSensor<C> {
    fn name(&self) -> &str {
        &self.driver.target().name
    }

    fn read(&mut self) -> Result<Vec<Measurement>, SensorError> {
        let fields = &self.fields;
        // The driver is kept after a good measurement even if a value is then out of
        // range: the chip answered; only a driver error reopens and resets it.
        let values = self
            .driver
            .with(|bus, target| C::init(bus, target, fields), C::measure)?;
        C::measurements(&self.driver.target().name, fields, values)
    }
}
