//! Sensirion SHT30/SHT31/SHT35 temperature and humidity on I2C, from the datasheet:
//! single-shot measurement, high repeatability, clock stretching disabled (command
//! 0x2400), 6-byte answer with a CRC-8 per word. See [`super::sensirion`] for the backend
//! choice (rppal: command, STOP, wait, read).

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use super::sensirion::{self, Error};
use super::ClimateConfig;

/// ADDR pin low (the default) or high.
pub const ADDRESSES: [u8; 2] = [0x44, 0x45];

/// 16-bit commands, sent most significant byte first.
pub mod cmd {
    /// Single shot, high repeatability, no clock stretching.
    pub const MEASURE_HIGH: u16 = 0x2400;
    pub const SOFT_RESET: u16 = 0x30A2;
    pub const READ_STATUS: u16 = 0xF32D;
}

/// Maximum duration of a high-repeatability measurement (datasheet table 4: 15 ms).
pub const MEASUREMENT_MS: u32 = 16;
/// Soft reset time (datasheet table 4: 1.5 ms max).
pub const RESET_MS: u32 = 2;

/// Relative humidity in % from the raw word: 100 · S / (2¹⁶ - 1).
pub fn humidity(raw: u16) -> f64 {
    100.0 * f64::from(raw) / 65535.0
}

/// The SHT3x driver, generic over the I2C bus.
pub struct Sht3x<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> Sht3x<I2C> {
    pub fn new(i2c: I2C, address: u8) -> Self {
        Sht3x { i2c, address }
    }

    pub fn destroy(self) -> I2C {
        self.i2c
    }

    fn command(&mut self, command: u16) -> Result<(), Error<I2C::Error>> {
        self.i2c
            .write(self.address, &command.to_be_bytes())
            .map_err(Error::Bus)
    }

    /// Soft-resets the chip and reads its status word (checking its CRC), which proves
    /// that an SHT3x answers. Returns the status word.
    pub fn init(&mut self, delay: &mut impl DelayNs) -> Result<u16, Error<I2C::Error>> {
        self.command(cmd::SOFT_RESET)?;
        delay.delay_ms(RESET_MS);
        self.command(cmd::READ_STATUS)?;
        let mut buf = [0u8; 3];
        self.i2c.read(self.address, &mut buf).map_err(Error::Bus)?;
        let computed = sensirion::crc8(&buf[..2]);
        let word = u16::from_be_bytes([buf[0], buf[1]]);
        if computed != buf[2] {
            return Err(Error::Crc {
                word,
                received: buf[2],
                computed,
            });
        }
        Ok(word)
    }

    /// One measurement: (°C, %RH).
    pub fn measure(&mut self, delay: &mut impl DelayNs) -> Result<(f64, f64), Error<I2C::Error>> {
        self.command(cmd::MEASURE_HIGH)?;
        delay.delay_ms(MEASUREMENT_MS);
        let mut frame = [0u8; 6];
        self.i2c
            .read(self.address, &mut frame)
            .map_err(Error::Bus)?;
        let (t, h) = sensirion::decode(&frame)?;
        Ok((sensirion::temperature(t), humidity(h)))
    }
}

sensirion::sensirion_chip! {
    /// The SHT3x as a `[[sensors]]` type.
    Sht3xChip(Sht3x) {
        type: "sht3x",
        addresses: &ADDRESSES,
        address_doc: "0x44 (ADDR low) or 0x45",
        description: "Sensirion SHT30/31/35 temperature and humidity on I2C",
    }
}

/// A `type = "sht3x"` entry ([`ClimateConfig`], which shows one).
/// `address`: 0x44 (ADDR low, the default) or 0x45 (ADDR high).
pub type Sht3xConfig = ClimateConfig<Sht3xChip>;

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};

    const ADDR: u8 = 0x44;

    fn word(w: u16) -> Vec<u8> {
        let b = w.to_be_bytes();
        vec![b[0], b[1], sensirion::crc8(&b)]
    }

    #[test]
    fn reset_status_and_measurement_on_the_wire() {
        // 0x6666 -> -45 + 175 * 0.4 = 25.0 °C; 0x8000 -> 50.0 %RH.
        let mut frame = word(0x6666);
        frame.extend(word(0x8000));
        let tx = [
            T::write(ADDR, vec![0x30, 0xA2]),
            T::write(ADDR, vec![0xF3, 0x2D]),
            T::read(ADDR, word(0x8010)),
            T::write(ADDR, vec![0x24, 0x00]),
            T::read(ADDR, frame),
        ];
        let mut i2c = Mock::new(&tx);
        let mut dev = Sht3x::new(i2c.clone(), ADDR);
        assert_eq!(dev.init(&mut NoopDelay).unwrap(), 0x8010);
        let (t, h) = dev.measure(&mut NoopDelay).unwrap();
        assert!((t - 25.0).abs() < 1e-9, "{t}");
        assert!((h - 50.0).abs() < 0.001, "{h}");
        dev.destroy();
        i2c.done();
    }

    #[test]
    fn crc_mismatch_is_an_error() {
        let tx = [
            T::write(ADDR, vec![0x24, 0x00]),
            T::read(ADDR, vec![0xBE, 0xEF, 0x92, 0x80, 0x00, 0x00]),
        ];
        let mut i2c = Mock::new(&tx);
        let mut dev = Sht3x::new(i2c.clone(), ADDR);
        let e = dev.measure(&mut NoopDelay).unwrap_err();
        assert!(matches!(e, Error::Crc { word: 0x8000, .. }), "{e:?}");
        assert!(e.to_string().contains("CRC mismatch"));
        i2c.done();
    }

    #[test]
    fn nack_while_measuring_is_a_bus_error() {
        let tx = [
            T::write(ADDR, vec![0x24, 0x00]),
            T::read(ADDR, vec![0; 6])
                .with_error(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)),
        ];
        let mut i2c = Mock::new(&tx);
        let mut dev = Sht3x::new(i2c.clone(), ADDR);
        assert!(matches!(dev.measure(&mut NoopDelay), Err(Error::Bus(_))));
        i2c.done();
    }

    #[test]
    fn humidity_conversion_ends() {
        assert_eq!(humidity(0), 0.0);
        assert_eq!(humidity(0xFFFF), 100.0);
    }
}
