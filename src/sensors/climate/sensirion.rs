//! What the Sensirion SHT3x and SHT4x share: the CRC-8 of every 16-bit word, the 6-byte
//! answer (temperature word, CRC, humidity word, CRC), the driver error, their fields
//! table and the I2C settings.
//!
//! Both are "send a command, wait, read" chips: the command write ends with a STOP that
//! starts the measurement, and the result is fetched with a separate read, never a
//! `write_read`. They are therefore read through [`Backend::Rppal`] on `bus = N` (a STOP
//! between operations is exactly what they need; no combined transfer is involved).
//! Both are used without clock stretching (the commands chosen do not stretch), which
//! the Raspberry Pi's BCM2835 I2C controller handles badly.
//!
//! [`Backend::Rppal`]: crate::sensors::i2c::Backend::Rppal

use serde::{Deserialize, Serialize};

use super::ClimateChip;
use crate::sensors::i2c::{Backend, ChipError, I2cBus, I2cBusError, I2cChip, StdDelay, Target};
use crate::sensors::{defaults, limits, push_checked, round, Measurement, SensorError};

/// CRC-8 of the Sensirion datasheets: polynomial 0x31 (x⁸ + x⁵ + x⁴ + 1), initial value
/// 0xFF, no reflection, no final XOR. `crc8(&[0xBE, 0xEF]) == 0x92`.
pub fn crc8(data: &[u8]) -> u8 {
    const POLYNOMIAL: u8 = 0x31;
    let mut crc: u8 = 0xFF;
    for byte in data {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ POLYNOMIAL
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A driver error; `E` is the bus's error.
#[derive(Debug)]
pub enum Error<E> {
    /// The bus failed (NACK, I/O error).
    Bus(E),
    /// A word's CRC did not match: noise on the bus or a bad connection.
    Crc {
        word: u16,
        received: u8,
        computed: u8,
    },
}

impl<E: std::fmt::Display> std::fmt::Display for Error<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Bus(e) => write!(f, "bus error: {e}"),
            Error::Crc {
                word,
                received,
                computed,
            } => write!(
                f,
                "CRC mismatch on word 0x{word:04x}: received 0x{received:02x}, computed \
                 0x{computed:02x} (noise on the bus: check wiring, pull-ups and cable length)"
            ),
        }
    }
}

impl ChipError for Error<I2cBusError> {
    fn bus_error(&self) -> Option<&I2cBusError> {
        match self {
            Error::Bus(e) => Some(e),
            Error::Crc { .. } => None,
        }
    }
}

/// Checks and decodes the 6-byte answer into the raw temperature and humidity words.
pub fn decode<E>(frame: &[u8; 6]) -> Result<(u16, u16), Error<E>> {
    let word = |i: usize| -> Result<u16, Error<E>> {
        let computed = crc8(&frame[i..i + 2]);
        let word = u16::from_be_bytes([frame[i], frame[i + 1]]);
        if computed != frame[i + 2] {
            return Err(Error::Crc {
                word,
                received: frame[i + 2],
                computed,
            });
        }
        Ok(word)
    };
    Ok((word(0)?, word(3)?))
}

/// Temperature in °C from the raw word: -45 + 175 · S / (2¹⁶ - 1) (both families).
pub fn temperature(raw: u16) -> f64 {
    -45.0 + 175.0 * f64::from(raw) / 65535.0
}

/// Payload fields of an `sht3x`/`sht4x` entry. Omit a key for its default; set it to
/// `""` to not send that quantity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThFields {
    /// Temperature in °C. Default `"temperature"`.
    #[serde(default = "defaults::temperature")]
    pub temperature: String,
    /// Relative humidity in %. Default `"humidite"`.
    #[serde(default = "defaults::humidity")]
    pub humidity: String,
}

impl Default for ThFields {
    fn default() -> Self {
        ThFields {
            temperature: defaults::temperature(),
            humidity: defaults::humidity(),
        }
    }
}

impl ThFields {
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("temperature", self.temperature.as_str()),
            ("humidity", self.humidity.as_str()),
        ]
    }
}

/// A Sensirion driver on an open bus: what the SHT3x and SHT4x sensors need of it.
pub trait Driver: Send + Sized {
    fn open(bus: I2cBus, address: u8) -> Self;
    /// Soft-resets the chip and reads a checked identity word (status or serial).
    fn reset(&mut self, delay: &mut StdDelay) -> Result<(), Error<I2cBusError>>;
    /// One measurement: (°C, %RH).
    fn measure_th(&mut self, delay: &mut StdDelay) -> Result<(f64, f64), Error<I2cBusError>>;
}

/// A Sensirion chip as a climate type: only its driver differs from the other's.
pub trait SensirionChip: I2cChip {
    type Driver: Driver;
}

/// Declares a Sensirion chip: its `[[sensors]]` type (as [`i2c_chip!`]) and how the shared
/// climate sensor drives its driver `$driver`, whose `new`, `init` and `measure` both chip
/// files write from their datasheets.
///
/// [`i2c_chip!`]: crate::sensors::i2c::i2c_chip
macro_rules! sensirion_chip {
    ($(#[$meta:meta])* $chip:ident($driver:ident) { $($settings:tt)* }) => {
        $crate::sensors::i2c::i2c_chip! { $(#[$meta])* $chip { $($settings)* } }

        impl $crate::sensors::climate::sensirion::SensirionChip for $chip {
            type Driver = $driver<$crate::sensors::i2c::I2cBus>;
        }

        impl $crate::sensors::climate::sensirion::Driver for $driver<$crate::sensors::i2c::I2cBus> {
            fn open(bus: $crate::sensors::i2c::I2cBus, address: u8) -> Self {
                $driver::new(bus, address)
            }

            fn reset(
                &mut self,
                delay: &mut $crate::sensors::i2c::StdDelay,
            ) -> Result<(), $crate::sensors::climate::sensirion::Error<$crate::sensors::i2c::I2cBusError>> {
                self.init(delay).map(drop)
            }

            fn measure_th(
                &mut self,
                delay: &mut $crate::sensors::i2c::StdDelay,
            ) -> Result<(f64, f64), $crate::sensors::climate::sensirion::Error<$crate::sensors::i2c::I2cBusError>> {
                self.measure(delay)
            }
        }
    };
}
pub(crate) use sensirion_chip;

impl<C: SensirionChip> ClimateChip for C {
    type Fields = ThFields;
    type Driver = C::Driver;
    type Values = (f64, f64);
    /// Command, STOP, wait, read: see the module documentation.
    const BACKEND: Backend = Backend::Rppal;
    const FIELDS_DOC: (&'static str, &'static str) = (
        "{ temperature = \"temperature\", humidity = \"humidite\" }",
        "payload fields (°C, %); \"\" drops one",
    );

    fn pairs(fields: &ThFields) -> Vec<(&'static str, &str)> {
        fields.pairs()
    }

    fn init(bus: I2cBus, target: &Target, _: &ThFields) -> Result<C::Driver, SensorError> {
        let mut driver = C::Driver::open(bus, target.address);
        driver.reset(&mut StdDelay).map_err(|e| target.error(&e))?;
        Ok(driver)
    }

    fn measure(driver: &mut C::Driver, target: &Target) -> Result<(f64, f64), SensorError> {
        driver
            .measure_th(&mut StdDelay)
            .map_err(|e| target.error(&e))
    }

    fn measurements(
        name: &str,
        fields: &ThFields,
        values: (f64, f64),
    ) -> Result<Vec<Measurement>, SensorError> {
        measurements(name, fields, values)
    }
}

/// The payload values of a Sensirion (°C, %RH) pair, range-checked.
pub fn measurements(
    name: &str,
    fields: &ThFields,
    (t, h): (f64, f64),
) -> Result<Vec<Measurement>, SensorError> {
    let mut out = Vec::with_capacity(2);
    push_checked(
        &mut out,
        name,
        "temperature",
        &fields.temperature,
        round(t, 2),
        limits::TEMPERATURE,
    )?;
    push_checked(
        &mut out,
        name,
        "humidity",
        &fields.humidity,
        round(h, 2),
        limits::HUMIDITY,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_datasheet_example() {
        assert_eq!(crc8(&[0xBE, 0xEF]), 0x92);
        assert_eq!(crc8(&[]), 0xFF);
    }

    #[test]
    fn decode_checks_both_words() {
        let ok = [0xBE, 0xEF, 0x92, 0xBE, 0xEF, 0x92];
        assert_eq!(decode::<()>(&ok).unwrap(), (0xBEEF, 0xBEEF));
        let bad = [0xBE, 0xEF, 0x92, 0xBE, 0xEF, 0x93];
        assert!(matches!(
            decode::<()>(&bad),
            Err(Error::Crc {
                word: 0xBEEF,
                received: 0x93,
                computed: 0x92
            })
        ));
    }

    #[test]
    fn temperature_conversion_ends() {
        assert_eq!(temperature(0), -45.0);
        assert_eq!(temperature(0xFFFF), 130.0);
    }

    #[test]
    fn out_of_range_values_are_bad_data() {
        let e = measurements("s", &ThFields::default(), (25.0, 130.0)).unwrap_err();
        assert!(matches!(e, SensorError::BadData { .. }), "{e:?}");
        let ok = measurements(
            "s",
            &ThFields {
                temperature: "t".into(),
                humidity: String::new(),
            },
            (25.0, 130.0),
        )
        .unwrap();
        assert_eq!(ok.len(), 1, "a dropped field is not checked");
    }
}
