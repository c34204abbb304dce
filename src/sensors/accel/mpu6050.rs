//! InvenSense MPU-6050 accelerometer on I2C, from its product specification and register
//! map (RM-MPU-6000A-00): the accelerometer alone into the 1024-byte FIFO at
//! 1 kHz / (1 + SMPLRT_DIV), the digital low-pass filter below half the sample rate,
//! drained in bursts by the sampling thread of [`super`]. The gyroscope is not
//! used (its X axis is only the clock source, as the register map recommends).
//!
//! Backend: [`Backend::Combined`]. The register map's burst-read sequence is
//! `S AD+W RA Sr AD+R ...`, a repeated START; the FIFO count and the FIFO data must also
//! not be interleaved with another process's access to the same chip.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use super::chip::{AccelChip, AccelConfig};
pub use super::error::{Error, Identity};
use crate::sensors::i2c::{Backend, I2cBus, Registers, StdDelay, Target};
use crate::sensors::SensorError;

/// Value of [`reg::WHO_AM_I`].
pub const WHO_AM_I: u8 = 0x68;
/// AD0 low (0x68, the default) or high (0x69).
pub const ADDRESSES: [u8; 2] = [0x68, 0x69];

/// Register addresses.
pub mod reg {
    pub const SMPLRT_DIV: u8 = 0x19;
    pub const CONFIG: u8 = 0x1A;
    pub const ACCEL_CONFIG: u8 = 0x1C;
    pub const FIFO_EN: u8 = 0x23;
    pub const INT_STATUS: u8 = 0x3A;
    pub const USER_CTRL: u8 = 0x6A;
    pub const PWR_MGMT_1: u8 = 0x6B;
    /// FIFO_COUNTH, then FIFO_COUNTL.
    pub const FIFO_COUNTH: u8 = 0x72;
    pub const FIFO_R_W: u8 = 0x74;
    pub const WHO_AM_I: u8 = 0x75;
}

pub const PWR_MGMT_1_DEVICE_RESET: u8 = 0x80;
/// Awake, clock from the X gyroscope's PLL.
pub const PWR_MGMT_1_CLK_PLL_X: u8 = 0x01;
pub const FIFO_EN_ACCEL: u8 = 0x08;
pub const USER_CTRL_FIFO_EN: u8 = 0x40;
pub const USER_CTRL_FIFO_RESET: u8 = 0x04;
pub const INT_STATUS_FIFO_OFLOW: u8 = 0x10;
pub const FIFO_SIZE: u16 = 1024;
/// Bytes per FIFO sample with only the accelerometer enabled.
pub const SAMPLE_BYTES: u16 = 6;
/// Largest FIFO burst read in one transfer (40 samples).
pub const MAX_BURST: u16 = 240;

/// Sample rates this driver sets (Hz): 1 kHz divided by an integer (the accelerometer
/// outputs at most 1 kHz).
pub const RATES_HZ: [u32; 6] = [100, 125, 200, 250, 500, 1000];
pub const RANGES_G: [u8; 4] = [2, 4, 8, 16];

/// SMPLRT_DIV for a rate: 1 kHz / (1 + div) with the DLPF on.
pub fn sample_divider(rate_hz: u32) -> Option<u8> {
    if !RATES_HZ.contains(&rate_hz) {
        return None;
    }
    u8::try_from(1000 / rate_hz - 1).ok()
}

/// DLPF_CFG whose accelerometer bandwidth is below half the sample rate:
/// 1 = 184 Hz, 2 = 94 Hz, 3 = 44 Hz.
pub fn dlpf(rate_hz: u32) -> u8 {
    match rate_hz {
        r if r >= 400 => 1,
        r if r >= 200 => 2,
        _ => 3,
    }
}

/// AFS_SEL bits (4:3) of ACCEL_CONFIG and the sensitivity in LSB/g.
pub fn range_setting(range_g: u8) -> Option<(u8, f64)> {
    RANGES_G
        .iter()
        .position(|r| *r == range_g)
        .map(|i| ((i as u8) << 3, 16384.0 / f64::from(1u16 << i)))
}

/// WHO_AM_I of every MPU-6050.
pub const IDENTITY: Identity = Identity {
    chip: "MPU-6050",
    register: "WHO_AM_I",
    value: WHO_AM_I,
    hint: "another chip answers at this address, or a clone with a different register set \
           (0x70 is an MPU-6500, 0x71 an MPU-9250)",
};

/// The MPU-6050 driver, generic over the I2C bus.
pub struct Mpu6050<I2C> {
    regs: Registers<I2C>,
    lsb_per_g: f64,
}

impl<I2C: I2c> Mpu6050<I2C> {
    pub fn new(i2c: I2C, address: u8) -> Self {
        Mpu6050 {
            regs: Registers::new(i2c, address),
            lsb_per_g: 16384.0,
        }
    }

    pub fn destroy(self) -> I2C {
        self.regs.release()
    }

    /// Checks WHO_AM_I, resets the chip, wakes it, sets rate, filter and range, and
    /// starts filling the FIFO with accelerometer samples.
    pub fn init(
        &mut self,
        rate_hz: u32,
        range_g: u8,
        delay: &mut impl DelayNs,
    ) -> Result<(), Error<I2C::Error>> {
        let divider = sample_divider(rate_hz).ok_or(Error::Setting("rate_hz"))?;
        let (afs, lsb_per_g) = range_setting(range_g).ok_or(Error::Setting("range_g"))?;
        let mut id = [0u8];
        self.regs.read(reg::WHO_AM_I, &mut id)?;
        if id[0] != WHO_AM_I {
            return Err(Error::WrongChip {
                found: id[0],
                chip: &IDENTITY,
            });
        }
        self.regs.write(reg::PWR_MGMT_1, PWR_MGMT_1_DEVICE_RESET)?;
        delay.delay_ms(100); // the reset takes up to 100 ms
        self.regs.write(reg::PWR_MGMT_1, PWR_MGMT_1_CLK_PLL_X)?;
        self.regs.write(reg::SMPLRT_DIV, divider)?;
        self.regs.write(reg::CONFIG, dlpf(rate_hz))?;
        self.regs.write(reg::ACCEL_CONFIG, afs)?;
        self.regs.write(reg::USER_CTRL, USER_CTRL_FIFO_RESET)?;
        self.regs.write(reg::FIFO_EN, FIFO_EN_ACCEL)?;
        self.regs.write(reg::USER_CTRL, USER_CTRL_FIFO_EN)?;
        self.lsb_per_g = lsb_per_g;
        Ok(())
    }

    /// Reads every whole sample in the FIFO, in g, appending them to `out`. On a FIFO
    /// overflow the FIFO is reset (its alignment is lost) and `Ok(false)` returned.
    pub fn read_fifo(&mut self, out: &mut Vec<[f64; 3]>) -> Result<bool, Error<I2C::Error>> {
        let mut status = [0u8];
        self.regs.read(reg::INT_STATUS, &mut status)?;
        if status[0] & INT_STATUS_FIFO_OFLOW != 0 {
            self.regs
                .write(reg::USER_CTRL, USER_CTRL_FIFO_EN | USER_CTRL_FIFO_RESET)?;
            return Ok(false);
        }
        let mut count = [0u8; 2];
        self.regs.read(reg::FIFO_COUNTH, &mut count)?;
        let count = u16::from_be_bytes(count).min(FIFO_SIZE);
        let mut remaining = count - count % SAMPLE_BYTES;
        let mut buf = [0u8; MAX_BURST as usize];
        while remaining > 0 {
            let n = usize::from(remaining.min(MAX_BURST));
            self.regs.read(reg::FIFO_R_W, &mut buf[..n])?;
            for chunk in buf[..n].chunks_exact(usize::from(SAMPLE_BYTES)) {
                let axis = |i: usize| {
                    f64::from(i16::from_be_bytes([chunk[i], chunk[i + 1]])) / self.lsb_per_g
                };
                out.push([axis(0), axis(2), axis(4)]);
            }
            remaining -= n as u16;
        }
        Ok(true)
    }
}

crate::sensors::i2c::i2c_chip! {
    /// The MPU-6050 as a `[[sensors]]` type.
    Mpu6050Chip {
        type: "mpu6050",
        addresses: &ADDRESSES,
        address_doc: "0x68 (AD0 low) or 0x69",
        description: "MPU-6050 accelerometer on I2C, sampled from its FIFO in its own thread",
    }
}

/// A `type = "mpu6050"` entry ([`AccelConfig`], which shows one).
/// `address`: 0x68 (AD0 low, the default) or 0x69 (high).
///
/// `rate_hz`: 1 kHz divided by an integer, i.e. 100, 125, 200, 250, 500 (default) or
/// 1000; the low-pass filter is set below half of it. `range_g`: 2, 4 (default), 8 or
/// 16; resolution halves at each step (16384 LSB/g at ±2 g).
pub type Mpu6050Config = AccelConfig<Mpu6050Chip>;

impl AccelChip for Mpu6050Chip {
    type Driver = Mpu6050<I2cBus>;
    const BACKEND: Backend = Backend::Combined;
    const RATES_HZ: &'static [u32] = &RATES_HZ;
    const RATES_WHY: &'static str = "1 kHz divided by an integer";
    const RANGES_G: &'static [u8] = &RANGES_G;
    const DEFAULT_RATE_HZ: u32 = 500;
    const DEFAULT_RANGE_G: u8 = 4;
    const RATES_DOC: &'static str = "sample rate: 100, 125, 200, 250, 500 or 1000 Hz";
    const RANGES_DOC: &'static str = "full scale ±2, 4, 8 or 16 g";
    const FIFO_SAMPLES: u32 = (FIFO_SIZE / SAMPLE_BYTES) as u32;

    fn init(
        bus: I2cBus,
        target: &Target,
        rate_hz: u32,
        range_g: u8,
    ) -> Result<Self::Driver, SensorError> {
        let mut dev = Mpu6050::new(bus, target.address);
        dev.init(rate_hz, range_g, &mut StdDelay)
            .map_err(|e| target.error(&e))?;
        Ok(dev)
    }

    fn read_fifo(
        dev: &mut Self::Driver,
        target: &Target,
        out: &mut Vec<[f64; 3]>,
    ) -> Result<(), SensorError> {
        let aligned = dev.read_fifo(out).map_err(|e| target.error(&e))?;
        if !aligned {
            tracing::debug!(sensor = %target.name, "FIFO overflow: reset, samples lost");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};

    const ADDR: u8 = 0x68;

    #[test]
    fn init_sequence_on_the_wire() {
        let tx = [
            T::write_read(ADDR, vec![reg::WHO_AM_I], vec![0x68]),
            T::write(ADDR, vec![reg::PWR_MGMT_1, 0x80]),
            T::write(ADDR, vec![reg::PWR_MGMT_1, 0x01]),
            T::write(ADDR, vec![reg::SMPLRT_DIV, 1]), // 1 kHz / 2 = 500 Hz
            T::write(ADDR, vec![reg::CONFIG, 1]),
            T::write(ADDR, vec![reg::ACCEL_CONFIG, 0x08]), // ±4 g
            T::write(ADDR, vec![reg::USER_CTRL, 0x04]),
            T::write(ADDR, vec![reg::FIFO_EN, 0x08]),
            T::write(ADDR, vec![reg::USER_CTRL, 0x40]),
        ];
        let mut i2c = Mock::new(&tx);
        let mut dev = Mpu6050::new(i2c.clone(), ADDR);
        dev.init(500, 4, &mut NoopDelay).unwrap();
        dev.destroy();
        i2c.done();
    }

    #[test]
    fn fifo_burst_is_read_in_whole_samples_and_scaled() {
        // 13 bytes waiting: two whole samples (the 13th byte stays for later). ±2 g.
        let tx = [
            T::write_read(ADDR, vec![reg::INT_STATUS], vec![0x01]),
            T::write_read(ADDR, vec![reg::FIFO_COUNTH], vec![0x00, 13]),
            T::write_read(
                ADDR,
                vec![reg::FIFO_R_W],
                vec![
                    0x40, 0x00, 0x00, 0x00, 0xC0, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00,
                ],
            ),
        ];
        let mut i2c = Mock::new(&tx);
        let mut dev = Mpu6050::new(i2c.clone(), ADDR);
        let mut out = Vec::new();
        assert!(dev.read_fifo(&mut out).unwrap());
        assert_eq!(out, vec![[1.0, 0.0, -1.0], [0.0, 0.5, 0.0]]);
        i2c.done();
    }

    #[test]
    fn large_fifo_is_read_in_bursts() {
        let tx = [
            T::write_read(ADDR, vec![reg::INT_STATUS], vec![0x00]),
            T::write_read(ADDR, vec![reg::FIFO_COUNTH], vec![0x01, 0x2C]), // 300 bytes
            T::write_read(ADDR, vec![reg::FIFO_R_W], vec![0; 240]),
            T::write_read(ADDR, vec![reg::FIFO_R_W], vec![0; 60]),
        ];
        let mut i2c = Mock::new(&tx);
        let mut dev = Mpu6050::new(i2c.clone(), ADDR);
        let mut out = Vec::new();
        dev.read_fifo(&mut out).unwrap();
        assert_eq!(out.len(), 50);
        i2c.done();
    }

    #[test]
    fn overflow_resets_the_fifo() {
        let tx = [
            T::write_read(ADDR, vec![reg::INT_STATUS], vec![INT_STATUS_FIFO_OFLOW]),
            T::write(ADDR, vec![reg::USER_CTRL, 0x44]),
        ];
        let mut i2c = Mock::new(&tx);
        let mut dev = Mpu6050::new(i2c.clone(), ADDR);
        assert!(!dev.read_fifo(&mut Vec::new()).unwrap());
        i2c.done();
    }

    #[test]
    fn wrong_chip_and_bus_error() {
        let tx = [
            T::write_read(ADDR, vec![reg::WHO_AM_I], vec![0x70]),
            T::write_read(ADDR, vec![reg::INT_STATUS], vec![0])
                .with_error(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)),
        ];
        let mut i2c = Mock::new(&tx);
        let mut dev = Mpu6050::new(i2c.clone(), ADDR);
        let e = dev.init(500, 4, &mut NoopDelay).unwrap_err();
        assert!(e.to_string().contains("MPU-6500"), "{e}");
        assert!(matches!(dev.read_fifo(&mut Vec::new()), Err(Error::Bus(_))));
        i2c.done();
    }

    #[test]
    fn settings() {
        assert_eq!(sample_divider(1000), Some(0));
        assert_eq!(sample_divider(100), Some(9));
        assert_eq!(sample_divider(400), None);
        assert_eq!(range_setting(16), Some((0x18, 2048.0)));
        assert_eq!(dlpf(100), 3);
        let c: Mpu6050Config = toml::from_str("rate_hz = 400").unwrap();
        assert_eq!(c.check().unwrap_err().0, "rate_hz");
    }
}
