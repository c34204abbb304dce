//! Register access for the register-mapped chips (BME280, ADXL345, MPU-6050): a read is a
//! write of the register number then a read, in one transaction (see [`super::Backend`]
//! for why that matters); a write sends the register number and the value.

use embedded_hal::i2c::I2c;

/// A chip on a bus at one address, addressed by 8-bit register numbers. Its errors are
/// the bus's own; each driver's `Error` wraps them (`From`), so `?` reads as the datasheet.
pub struct Registers<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> Registers<I2C> {
    pub fn new(i2c: I2C, address: u8) -> Self {
        Registers { i2c, address }
    }

    /// Gives the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }

    /// Reads `buf.len()` bytes from `register` on (auto-incrementing where the chip does).
    pub fn read(&mut self, register: u8, buf: &mut [u8]) -> Result<(), I2C::Error> {
        self.i2c.write_read(self.address, &[register], buf)
    }

    pub fn write(&mut self, register: u8, value: u8) -> Result<(), I2C::Error> {
        self.i2c.write(self.address, &[register, value])
    }
}
