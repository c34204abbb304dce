//! The glue between an embedded-hal driver and [`Sensor`](crate::sensors::Sensor),
//! written once for every I2C chip: which of a driver's errors are bus errors, and the
//! life cycle "open the bus and initialise the chip on first use, drop the driver after
//! any error" (the chip may have been power-cycled: the next read initialises it again).

use std::fmt;

use crate::sensors::SensorError;

use super::{Backend, I2cBus, I2cBusError, Target};

/// A driver's error (`Error<I2cBusError>`): the bus failed, or the chip answered wrongly.
pub trait ChipError: fmt::Display {
    /// The bus error, when that is what failed.
    fn bus_error(&self) -> Option<&I2cBusError>;
}

/// A chip's driver, opened lazily and dropped after an error.
pub struct LazyDriver<D> {
    target: Target,
    backend: Backend,
    driver: Option<D>,
}

impl<D> LazyDriver<D> {
    /// Nothing is opened yet: building a sensor never touches hardware.
    pub fn new(target: Target, backend: Backend) -> Self {
        LazyDriver {
            target,
            backend,
            driver: None,
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Runs `op` on the driver, first opening the bus and calling `init` on it if there
    /// is no driver. After an error (of `init` or `op`) the driver is dropped.
    pub fn with<T>(
        &mut self,
        init: impl FnOnce(I2cBus, &Target) -> Result<D, SensorError>,
        op: impl FnOnce(&mut D, &Target) -> Result<T, SensorError>,
    ) -> Result<T, SensorError> {
        let mut driver = match self.driver.take() {
            Some(driver) => driver,
            None => {
                let bus = super::open(&self.target.location, self.backend, &self.target.name)?;
                init(bus, &self.target)?
            }
        };
        let value = op(&mut driver, &self.target)?;
        self.driver = Some(driver);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::climate::bme280::Bme280Chip;

    #[test]
    fn a_bus_that_cannot_be_opened_is_a_setup_error_and_nothing_is_kept() {
        let target = Target::new::<Bme280Chip>(None, Some("/nonexistent/i2c-9"), 0x76);
        let mut lazy: LazyDriver<()> = LazyDriver::new(target, Backend::Combined);
        for _ in 0..2 {
            let e = lazy
                .with(|_, _| panic!("init without a bus"), |_, _| Ok(()))
                .unwrap_err();
            assert!(matches!(e, SensorError::Setup { .. }), "{e:?}");
            assert!(
                e.to_string().starts_with("bme280@/nonexistent/i2c-9:0x76"),
                "{e}"
            );
            assert!(lazy.driver.is_none());
        }
    }
}
