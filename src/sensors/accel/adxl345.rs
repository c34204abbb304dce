//! Analog Devices ADXL345 accelerometer on I2C, from the datasheet (Rev. G): full
//! resolution (3.9 mg/LSB at every range), the output data rate of `rate_hz`, and the
//! 32-sample FIFO in stream mode, drained by the sampling thread of [`super`].
//!
//! Backend: [`Backend::Combined`]. Every access is a register read; the datasheet's
//! figure 41 accepts either a repeated START or a STOP+START before the read, but the
//! FIFO is read as one 6-byte burst per sample, and a combined transfer keeps another
//! process from moving the register pointer in between.

use embedded_hal::i2c::I2c;

use super::chip::{AccelChip, AccelConfig};
pub use super::error::{Error, Identity};
use crate::sensors::i2c::{Backend, I2cBus, Registers, Target};
use crate::sensors::SensorError;

/// Value of [`reg::DEVID`].
pub const DEVICE_ID: u8 = 0xE5;
/// ALT ADDRESS low (0x53, the default) or high (0x1D).
pub const ADDRESSES: [u8; 2] = [0x53, 0x1D];

/// Register addresses.
pub mod reg {
    pub const DEVID: u8 = 0x00;
    pub const BW_RATE: u8 = 0x2C;
    pub const POWER_CTL: u8 = 0x2D;
    pub const DATA_FORMAT: u8 = 0x31;
    /// DATAX0..DATAZ1: three little-endian 16-bit values; reading all six pops one FIFO entry.
    pub const DATAX0: u8 = 0x32;
    pub const FIFO_CTL: u8 = 0x38;
    pub const FIFO_STATUS: u8 = 0x39;
}

/// [`reg::POWER_CTL`]: measurement mode (0 is standby).
pub const POWER_CTL_MEASURE: u8 = 0x08;
/// [`reg::DATA_FORMAT`]: full resolution, 3.9 mg/LSB at every range.
pub const DATA_FORMAT_FULL_RES: u8 = 0x08;
/// [`reg::FIFO_CTL`]: stream mode (the FIFO keeps the latest 32 samples).
pub const FIFO_CTL_STREAM: u8 = 0x80;
/// [`reg::FIFO_STATUS`]: number of samples waiting.
pub const FIFO_STATUS_ENTRIES: u8 = 0x3F;
/// FIFO depth.
pub const FIFO_DEPTH: u32 = 32;
/// Scale factor in full resolution, datasheet table 1: 3.9 mg/LSB.
pub const G_PER_LSB: f64 = 0.0039;

/// Output data rates this driver sets (Hz), datasheet table 7.
pub const RATES_HZ: [u32; 5] = [100, 200, 400, 800, 1600];
/// Full-scale ranges (±g).
pub const RANGES_G: [u8; 4] = [2, 4, 8, 16];

/// BW_RATE code of an output data rate: 0x0A is 100 Hz, each step doubles.
pub fn rate_code(rate_hz: u32) -> Option<u8> {
    RATES_HZ
        .iter()
        .position(|r| *r == rate_hz)
        .map(|i| 0x0A + i as u8)
}

/// DATA_FORMAT range bits of a full-scale range.
pub fn range_code(range_g: u8) -> Option<u8> {
    RANGES_G.iter().position(|r| *r == range_g).map(|i| i as u8)
}

/// DEVID of every ADXL345.
pub const IDENTITY: Identity = Identity {
    chip: "ADXL345",
    register: "device id",
    value: DEVICE_ID,
    hint: "another chip answers at this address (see `sensors scan`)",
};

/// The ADXL345 driver, generic over the I2C bus.
pub struct Adxl345<I2C> {
    regs: Registers<I2C>,
}

impl<I2C: I2c> Adxl345<I2C> {
    pub fn new(i2c: I2C, address: u8) -> Self {
        Adxl345 {
            regs: Registers::new(i2c, address),
        }
    }

    pub fn destroy(self) -> I2C {
        self.regs.release()
    }

    /// Checks DEVID, then configures in standby: rate, full resolution and range, FIFO in
    /// stream mode; then starts measuring.
    pub fn init(&mut self, rate_hz: u32, range_g: u8) -> Result<(), Error<I2C::Error>> {
        let rate = rate_code(rate_hz).ok_or(Error::Setting("rate_hz"))?;
        let range = range_code(range_g).ok_or(Error::Setting("range_g"))?;
        let mut id = [0u8];
        self.regs.read(reg::DEVID, &mut id)?;
        if id[0] != DEVICE_ID {
            return Err(Error::WrongChip {
                found: id[0],
                chip: &IDENTITY,
            });
        }
        self.regs.write(reg::POWER_CTL, 0x00)?;
        self.regs.write(reg::BW_RATE, rate)?;
        self.regs
            .write(reg::DATA_FORMAT, DATA_FORMAT_FULL_RES | range)?;
        self.regs.write(reg::FIFO_CTL, FIFO_CTL_STREAM)?;
        self.regs.write(reg::POWER_CTL, POWER_CTL_MEASURE)?;
        Ok(())
    }

    /// Reads every sample waiting in the FIFO, in g, appending them to `out`. Returns how
    /// many were waiting (32 means the FIFO was full: samples may have been lost).
    pub fn read_fifo(&mut self, out: &mut Vec<[f64; 3]>) -> Result<u8, Error<I2C::Error>> {
        let mut status = [0u8];
        self.regs.read(reg::FIFO_STATUS, &mut status)?;
        let entries = status[0] & FIFO_STATUS_ENTRIES;
        for _ in 0..entries {
            let mut d = [0u8; 6];
            self.regs.read(reg::DATAX0, &mut d)?;
            out.push(to_g(&d));
        }
        Ok(entries)
    }
}

/// Converts DATAX0..DATAZ1 (full resolution) to g.
pub fn to_g(d: &[u8; 6]) -> [f64; 3] {
    let axis = |i: usize| f64::from(i16::from_le_bytes([d[i], d[i + 1]])) * G_PER_LSB;
    [axis(0), axis(2), axis(4)]
}

crate::sensors::i2c::i2c_chip! {
    /// The ADXL345 as a `[[sensors]]` type.
    Adxl345Chip {
        type: "adxl345",
        addresses: &ADDRESSES,
        address_doc: "0x53 (ALT ADDRESS low) or 0x1D",
        description: "ADXL345 accelerometer on I2C, sampled from its FIFO in its own thread",
    }
}

/// A `type = "adxl345"` entry ([`AccelConfig`], which shows one).
/// `address`: 0x53 (ALT ADDRESS low, the default) or 0x1D (high).
///
/// `rate_hz`: 100, 200, 400 (default), 800 or 1600. Over I2C the FIFO is read one sample
/// per transfer: 800 Hz and more need the bus at 400 kHz
/// (`dtparam=i2c_arm_baudrate=400000`), and 1600 Hz is at the edge of what I2C carries
/// (the datasheet recommends SPI for it). `range_g`: 2, 4, 8 or 16 (default). Full
/// resolution keeps 3.9 mg/LSB at every range, so 16 costs nothing and clips only
/// beyond 16 g.
pub type Adxl345Config = AccelConfig<Adxl345Chip>;

/// Whether the FIFO was found full at the last poll. A full FIFO means samples were
/// lost (the thread was starved: a loaded CPU, a slow bus), so the aggregate covers
/// fewer samples than it should: worth a warning, but one when it starts and one when
/// it stops, not one per poll (up to 20 a second).
#[derive(Debug, Default)]
struct FifoWatch {
    full: bool,
}

impl FifoWatch {
    /// `Some(true)` when the FIFO has just become full, `Some(false)` when it has just
    /// stopped being full, `None` when nothing changed.
    fn update(&mut self, entries: u8) -> Option<bool> {
        let full = u32::from(entries) >= FIFO_DEPTH;
        if full == self.full {
            return None;
        }
        self.full = full;
        Some(full)
    }
}

/// An open, measuring ADXL345, and whether its FIFO was full at the last poll.
pub struct Fifo {
    dev: Adxl345<I2cBus>,
    watch: FifoWatch,
}

impl AccelChip for Adxl345Chip {
    type Driver = Fifo;
    const BACKEND: Backend = Backend::Combined;
    const RATES_HZ: &'static [u32] = &RATES_HZ;
    const RATES_WHY: &'static str = "the ADXL345's output data rates";
    const RANGES_G: &'static [u8] = &RANGES_G;
    const DEFAULT_RATE_HZ: u32 = 400;
    const DEFAULT_RANGE_G: u8 = 16;
    const RATES_DOC: &'static str =
        "output data rate: 100, 200, 400, 800 or 1600 Hz (800+ needs a 400 kHz bus)";
    const RANGES_DOC: &'static str = "full scale ±2, 4, 8 or 16 g (3.9 mg/LSB at all)";
    const FIFO_SAMPLES: u32 = FIFO_DEPTH;

    fn init(bus: I2cBus, target: &Target, rate_hz: u32, range_g: u8) -> Result<Fifo, SensorError> {
        let mut dev = Adxl345::new(bus, target.address);
        dev.init(rate_hz, range_g).map_err(|e| target.error(&e))?;
        Ok(Fifo {
            dev,
            watch: FifoWatch::default(),
        })
    }

    fn read_fifo(
        fifo: &mut Fifo,
        target: &Target,
        out: &mut Vec<[f64; 3]>,
    ) -> Result<(), SensorError> {
        let entries = fifo.dev.read_fifo(out).map_err(|e| target.error(&e))?;
        match fifo.watch.update(entries) {
            Some(true) => tracing::warn!(
                sensor = %target.name,
                "FIFO full: samples were lost (the sampling thread could not keep up: \
                 CPU load or a slow bus; a lower rate_hz helps); the aggregate covers \
                 fewer samples until it catches up"
            ),
            Some(false) => {
                tracing::info!(sensor = %target.name, "FIFO no longer full: sampling keeps up again")
            }
            None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::accel::aggregate::{Aggregate, Unit};
    use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};

    const ADDR: u8 = 0x53;

    #[test]
    fn full_fifo_is_reported_once_per_change_of_state() {
        let mut w = FifoWatch::default();
        let seen: Vec<Option<bool>> = [10, 32, 32, 32, 5, 6, 32, 31]
            .into_iter()
            .map(|entries| w.update(entries))
            .collect();
        assert_eq!(
            seen,
            [
                None,
                Some(true),
                None,
                None,
                Some(false),
                None,
                Some(true),
                Some(false)
            ]
        );
    }

    #[test]
    fn init_sequence_on_the_wire() {
        let tx = [
            T::write_read(ADDR, vec![reg::DEVID], vec![DEVICE_ID]),
            T::write(ADDR, vec![reg::POWER_CTL, 0x00]),
            T::write(ADDR, vec![reg::BW_RATE, 0x0C]), // 400 Hz
            T::write(ADDR, vec![reg::DATA_FORMAT, 0x0B]), // full res, ±16 g
            T::write(ADDR, vec![reg::FIFO_CTL, 0x80]),
            T::write(ADDR, vec![reg::POWER_CTL, 0x08]),
        ];
        let mut i2c = Mock::new(&tx);
        let mut dev = Adxl345::new(i2c.clone(), ADDR);
        dev.init(400, 16).unwrap();
        dev.destroy();
        i2c.done();
    }

    #[test]
    fn fifo_is_drained_and_scaled() {
        // 256 LSB = 0.9984 g on z; -256 on x.
        let tx = [
            T::write_read(ADDR, vec![reg::FIFO_STATUS], vec![0x82]), // trigger bit + 2 entries
            T::write_read(
                ADDR,
                vec![reg::DATAX0],
                vec![0x00, 0xFF, 0x00, 0x00, 0x00, 0x01],
            ),
            T::write_read(
                ADDR,
                vec![reg::DATAX0],
                vec![0x00, 0x00, 0x00, 0x00, 0x00, 0x01],
            ),
        ];
        let mut i2c = Mock::new(&tx);
        let mut dev = Adxl345::new(i2c.clone(), ADDR);
        let mut out = Vec::new();
        assert_eq!(dev.read_fifo(&mut out).unwrap(), 2);
        assert_eq!(out.len(), 2);
        assert!((out[0][0] + 0.9984).abs() < 1e-9);
        assert!((out[0][2] - 0.9984).abs() < 1e-9);
        i2c.done();
    }

    #[test]
    fn wrong_device_and_nack() {
        let tx = [
            T::write_read(ADDR, vec![reg::DEVID], vec![0x68]),
            T::write_read(ADDR, vec![reg::FIFO_STATUS], vec![0])
                .with_error(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)),
        ];
        let mut i2c = Mock::new(&tx);
        let mut dev = Adxl345::new(i2c.clone(), ADDR);
        assert!(matches!(
            dev.init(100, 2),
            Err(Error::WrongChip { found: 0x68, .. })
        ));
        assert!(matches!(dev.read_fifo(&mut Vec::new()), Err(Error::Bus(_))));
        i2c.done();
    }

    #[test]
    fn codes_and_config_checks() {
        assert_eq!(rate_code(100), Some(0x0A));
        assert_eq!(rate_code(1600), Some(0x0E));
        assert_eq!(rate_code(300), None);
        assert_eq!(range_code(2), Some(0));
        assert_eq!(range_code(16), Some(3));
        let c: Adxl345Config = toml::from_str("rate_hz = 3200").unwrap();
        assert_eq!(c.check().unwrap_err().0, "rate_hz");
        let c: Adxl345Config = toml::from_str("aggregate = \"peak\"\nunit = \"g\"").unwrap();
        assert_eq!((c.aggregate, c.unit), (Aggregate::Peak, Unit::G));
        assert!(c.check().is_ok());
        assert!(toml::from_str::<Adxl345Config>("aggregate = \"max\"").is_err());
    }
}
