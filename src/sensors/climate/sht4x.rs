//! Sensirion SHT40/SHT41/SHT45 temperature and humidity on I2C, from the datasheet:
//! high-precision measurement (command 0xFD, 8.3 ms max), 6-byte answer with a CRC-8 per
//! word; the chip never stretches the clock (it NACKs a read while busy). See
//! [`super::sensirion`] for the backend choice.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use super::sensirion::{self, Error};
use super::ClimateConfig;

/// SHT4x-A (the common part, the default), -B and -C addresses.
pub const ADDRESSES: [u8; 3] = [0x44, 0x45, 0x46];

/// 8-bit commands.
pub mod cmd {
    /// Measure T and RH with high precision (high repeatability).
    pub const MEASURE_HIGH: u8 = 0xFD;
    pub const READ_SERIAL: u8 = 0x89;
    pub const SOFT_RESET: u8 = 0x94;
}

/// Maximum duration of a high-precision measurement (datasheet: 8.3 ms).
pub const MEASUREMENT_MS: u32 = 9;
/// Soft reset time (datasheet: 1 ms max).
pub const RESET_MS: u32 = 1;

/// Relative humidity in % from the raw word: -6 + 125 · S / (2¹⁶ - 1), cropped to 0..100
/// as the datasheet recommends.
pub fn humidity(raw: u16) -> f64 {
    (-6.0 + 125.0 * f64::from(raw) / 65535.0).clamp(0.0, 100.0)
}

/// The SHT4x driver, generic over the I2C bus.
pub struct Sht4x<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> Sht4x<I2C> {
    pub fn new(i2c: I2C, address: u8) -> Self {
        Sht4x { i2c, address }
    }

    pub fn destroy(self) -> I2C {
        self.i2c
    }

    fn exchange(
        &mut self,
        command: u8,
        wait_ms: u32,
        delay: &mut impl DelayNs,
    ) -> Result<(u16, u16), Error<I2C::Error>> {
        self.i2c
            .write(self.address, &[command])
            .map_err(Error::Bus)?;
        delay.delay_ms(wait_ms);
        let mut frame = [0u8; 6];
        self.i2c
            .read(self.address, &mut frame)
            .map_err(Error::Bus)?;
        sensirion::decode(&frame)
    }

    /// Soft-resets the chip and reads its serial number (checking both CRCs).
    pub fn init(&mut self, delay: &mut impl DelayNs) -> Result<u32, Error<I2C::Error>> {
        self.i2c
            .write(self.address, &[cmd::SOFT_RESET])
            .map_err(Error::Bus)?;
        delay.delay_ms(RESET_MS);
        let (hi, lo) = self.exchange(cmd::READ_SERIAL, 1, delay)?;
        Ok((u32::from(hi) << 16) | u32::from(lo))
    }

    /// One measurement: (°C, %RH).
    pub fn measure(&mut self, delay: &mut impl DelayNs) -> Result<(f64, f64), Error<I2C::Error>> {
        let (t, h) = self.exchange(cmd::MEASURE_HIGH, MEASUREMENT_MS, delay)?;
        Ok((sensirion::temperature(t), humidity(h)))
    }
}

sensirion::sensirion_chip! {
    /// The SHT4x as a `[[sensors]]` type.
    Sht4xChip(Sht4x) {
        type: "sht4x",
        addresses: &ADDRESSES,
        address_doc: "0x44 (SHT4x-A), 0x45 (-B) or 0x46 (-C)",
        description: "Sensirion SHT40/41/45 temperature and humidity on I2C",
    }
}

/// A `type = "sht4x"` entry ([`ClimateConfig`], which shows one).
/// `address`: 0x44 (SHT4x-A, the default), 0x45 (-B) or 0x46 (-C).
pub type Sht4xConfig = ClimateConfig<Sht4xChip>;

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};

    const ADDR: u8 = 0x44;

    fn words(a: u16, b: u16) -> Vec<u8> {
        let (a, b) = (a.to_be_bytes(), b.to_be_bytes());
        vec![
            a[0],
            a[1],
            sensirion::crc8(&a),
            b[0],
            b[1],
            sensirion::crc8(&b),
        ]
    }

    #[test]
    fn reset_serial_and_measurement_on_the_wire() {
        let tx = [
            T::write(ADDR, vec![0x94]),
            T::write(ADDR, vec![0x89]),
            T::read(ADDR, words(0x0F2A, 0x1B3C)),
            T::write(ADDR, vec![0xFD]),
            // 0x6666 -> 25.0 °C; 0x8000 -> -6 + 62.5 = 56.5 %RH.
            T::read(ADDR, words(0x6666, 0x8000)),
        ];
        let mut i2c = Mock::new(&tx);
        let mut dev = Sht4x::new(i2c.clone(), ADDR);
        assert_eq!(dev.init(&mut NoopDelay).unwrap(), 0x0F2A_1B3C);
        let (t, h) = dev.measure(&mut NoopDelay).unwrap();
        assert!((t - 25.0).abs() < 1e-9, "{t}");
        assert!((h - 56.5).abs() < 0.001, "{h}");
        dev.destroy();
        i2c.done();
    }

    #[test]
    fn crc_mismatch_and_busy_nack() {
        let mut bad = words(0x6666, 0x8000);
        bad[2] ^= 0x01;
        let tx = [
            T::write(ADDR, vec![0xFD]),
            T::read(ADDR, bad),
            T::write(ADDR, vec![0xFD]),
            T::read(ADDR, vec![0; 6])
                .with_error(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)),
        ];
        let mut i2c = Mock::new(&tx);
        let mut dev = Sht4x::new(i2c.clone(), ADDR);
        assert!(matches!(
            dev.measure(&mut NoopDelay),
            Err(Error::Crc { word: 0x6666, .. })
        ));
        assert!(matches!(dev.measure(&mut NoopDelay), Err(Error::Bus(_))));
        i2c.done();
    }

    #[test]
    fn humidity_is_cropped() {
        assert_eq!(humidity(0), 0.0);
        assert_eq!(humidity(0xFFFF), 100.0);
    }
}
