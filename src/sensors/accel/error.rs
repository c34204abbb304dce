//! The accelerometer drivers' error: both chips fail in the same three ways.

use crate::sensors::i2c::{ChipError, I2cBusError};

/// A driver error; `E` is the bus's error.
#[derive(Debug)]
pub enum Error<E> {
    Bus(E),
    /// The identity register holds another chip's value: `found` instead of `chip.value`.
    WrongChip {
        found: u8,
        chip: &'static Identity,
    },
    /// A rate or range this chip does not support.
    Setting(&'static str),
}

/// How a chip proves it is the one configured, for the message when it is not.
#[derive(Debug)]
pub struct Identity {
    pub chip: &'static str,
    /// The register's name in the datasheet.
    pub register: &'static str,
    pub value: u8,
    /// What else answers there, and what to do.
    pub hint: &'static str,
}

impl<E> From<E> for Error<E> {
    fn from(e: E) -> Self {
        Error::Bus(e)
    }
}

impl<E: std::fmt::Display> std::fmt::Display for Error<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Bus(e) => write!(f, "bus error: {e}"),
            Error::WrongChip { found, chip } => write!(
                f,
                "{} 0x{found:02x} is not an {}'s (0x{:02x}): {}",
                chip.register, chip.chip, chip.value, chip.hint
            ),
            Error::Setting(what) => write!(f, "unsupported {what}"),
        }
    }
}

impl ChipError for Error<I2cBusError> {
    fn bus_error(&self) -> Option<&I2cBusError> {
        match self {
            Error::Bus(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::accel::{adxl345, mpu6050};

    #[test]
    fn a_wrong_chip_is_named_with_its_register_and_what_else_answers() {
        let e = Error::<std::io::Error>::WrongChip {
            found: 0x68,
            chip: &adxl345::IDENTITY,
        };
        assert_eq!(
            e.to_string(),
            "device id 0x68 is not an ADXL345's (0xe5): another chip answers at this address \
             (see `sensors scan`)"
        );
        let e = Error::<std::io::Error>::WrongChip {
            found: 0x70,
            chip: &mpu6050::IDENTITY,
        };
        assert!(
            e.to_string()
                .starts_with("WHO_AM_I 0x70 is not an MPU-6050's (0x68): another chip answers"),
            "{e}"
        );
        assert!(e.to_string().contains("0x70 is an MPU-6500"), "{e}");
    }
}
