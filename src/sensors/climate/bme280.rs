//! Bosch BME280 (temperature, humidity, pressure) on I2C, written from the datasheet
//! (BST-BME280-DS002): chip id 0x60, calibration words at 0x88..0xA1 and 0xE1..0xE7,
//! forced mode (one measurement per read, the chip sleeps in between: the datasheet's
//! "weather monitoring" setting, 1x oversampling, filter off), and the datasheet's
//! integer compensation formulas. A BMP280 (chip id 0x58, same registers without
//! humidity) also works when `fields.humidity = ""`.
//!
//! Backend: [`Backend::Combined`]. Every access is a register read (write the register
//! address, repeated START, read), drawn with a repeated START in the datasheet's I2C
//! read figure; the combined transfer also keeps another process (a `sensors read`
//! while the daemon runs) from moving the register pointer between our write and read.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;
use serde::{Deserialize, Serialize};

use super::{ClimateChip, ClimateConfig};
use crate::sensors::i2c::{Backend, I2cBus, Registers, StdDelay, Target};
use crate::sensors::{defaults, limits, push_checked, round, Measurement, SensorError};

/// Chip id of the BME280 in [`reg::CHIP_ID`].
pub const CHIP_ID_BME280: u8 = 0x60;
/// Chip id of the BMP280 (no humidity).
pub const CHIP_ID_BMP280: u8 = 0x58;
/// Primary address (SDO to GND) and secondary (SDO to VDDIO).
pub const ADDRESSES: [u8; 2] = [0x76, 0x77];

/// Register addresses.
pub mod reg {
    pub const CHIP_ID: u8 = 0xD0;
    pub const RESET: u8 = 0xE0;
    /// dig_T1..dig_P9 (24 bytes), a reserved byte, then dig_H1 at 0xA1.
    pub const CALIB_TP: u8 = 0x88;
    pub const CALIB_TP_LEN: usize = 26;
    /// dig_H2..dig_H6.
    pub const CALIB_H: u8 = 0xE1;
    pub const CALIB_H_LEN: usize = 7;
    pub const CTRL_HUM: u8 = 0xF2;
    pub const STATUS: u8 = 0xF3;
    pub const CTRL_MEAS: u8 = 0xF4;
    pub const CONFIG: u8 = 0xF5;
    /// press_msb..hum_lsb (8 bytes; 6 on a BMP280).
    pub const DATA: u8 = 0xF7;
}

/// Writing this to [`reg::RESET`] resets the chip.
pub const RESET_COMMAND: u8 = 0xB6;
/// [`reg::STATUS`]: a conversion is running.
pub const STATUS_MEASURING: u8 = 0x08;
/// [`reg::STATUS`]: the calibration is being copied from NVM.
pub const STATUS_IM_UPDATE: u8 = 0x01;
/// [`reg::CTRL_HUM`]: humidity oversampling x1.
pub const CTRL_HUM_OSRS_X1: u8 = 0x01;
/// [`reg::CTRL_MEAS`]: temperature x1 (bits 7:5), pressure x1 (bits 4:2), forced mode (01).
pub const CTRL_MEAS_FORCED_X1: u8 = (1 << 5) | (1 << 2) | 0b01;
/// A skipped measurement reads as this raw value (0x80000).
pub const SKIPPED_20BIT: i32 = 0x80000;
/// A skipped humidity measurement reads as this raw value (0x8000), e.g. when ctrl_hum
/// was reset to "skipped" by a brown-out.
pub const SKIPPED_16BIT: i32 = 0x8000;
/// Maximum measurement time with 1x oversampling of all three, datasheet 9.1:
/// 1.25 + 2.3 + (2.3 + 0.575) + (2.3 + 0.575) = 9.3 ms.
pub const MEASUREMENT_MS: u32 = 10;

/// A driver error; `E` is the bus's error.
#[derive(Debug)]
pub enum Error<E> {
    /// The bus failed (NACK, I/O error).
    Bus(E),
    /// The chip id is not a BME280's (0x60) or a BMP280's (0x58).
    ChipId(u8),
    /// The chip was still measuring (or copying its calibration) after the maximum time.
    NotReady,
    /// The chip skipped the measurement (its settings were lost, e.g. after a reset).
    Skipped,
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
            Error::ChipId(id) => write!(
                f,
                "chip id 0x{id:02x} is not a BME280's (0x60) or BMP280's (0x58): another chip \
                 answers at this address (see `sensors scan`)"
            ),
            Error::NotReady => {
                f.write_str("the chip was still busy after its maximum measurement time")
            }
            Error::Skipped => f.write_str(
                "the chip skipped the measurement (it lost its settings, e.g. after a reset)",
            ),
        }
    }
}

/// The factory calibration, read once after power-up (datasheet 4.2.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calibration {
    pub t1: u16,
    pub t2: i16,
    pub t3: i16,
    pub p1: u16,
    pub p2: i16,
    pub p3: i16,
    pub p4: i16,
    pub p5: i16,
    pub p6: i16,
    pub p7: i16,
    pub p8: i16,
    pub p9: i16,
    pub h1: u8,
    pub h2: i16,
    pub h3: u8,
    pub h4: i16,
    pub h5: i16,
    pub h6: i8,
}

impl Calibration {
    /// Decodes 0x88..=0xA1 and 0xE1..=0xE7 (pass zeros for the latter on a BMP280).
    pub fn from_registers(tp: &[u8; reg::CALIB_TP_LEN], h: &[u8; reg::CALIB_H_LEN]) -> Self {
        let u = |i: usize| u16::from_le_bytes([tp[i], tp[i + 1]]);
        let s = |i: usize| i16::from_le_bytes([tp[i], tp[i + 1]]);
        Calibration {
            t1: u(0),
            t2: s(2),
            t3: s(4),
            p1: u(6),
            p2: s(8),
            p3: s(10),
            p4: s(12),
            p5: s(14),
            p6: s(16),
            p7: s(18),
            p8: s(20),
            p9: s(22),
            h1: tp[25],
            h2: i16::from_le_bytes([h[0], h[1]]),
            h3: h[2],
            // dig_H4: 0xE4 (signed) holds bits 11:4, 0xE5 bits 3:0 hold bits 3:0.
            h4: (i16::from(h[3] as i8) << 4) | i16::from(h[4] & 0x0F),
            // dig_H5: 0xE6 (signed) holds bits 11:4, 0xE5 bits 7:4 hold bits 3:0.
            h5: (i16::from(h[5] as i8) << 4) | i16::from(h[4] >> 4),
            h6: h[6] as i8,
        }
    }

    /// `t_fine` and the temperature in 0.01 °C ("5123" is 51.23 °C): the datasheet's
    /// `BME280_compensate_T_int32`, in i64 so that garbage input cannot overflow.
    pub fn temperature(&self, adc_t: i32) -> (i32, i32) {
        let adc_t = i64::from(adc_t);
        let t1 = i64::from(self.t1);
        let var1 = (((adc_t >> 3) - (t1 << 1)) * i64::from(self.t2)) >> 11;
        let d = (adc_t >> 4) - t1;
        let var2 = (((d * d) >> 12) * i64::from(self.t3)) >> 14;
        let t_fine = var1 + var2;
        let t = (t_fine * 5 + 128) >> 8;
        (clamp_i32(t_fine), clamp_i32(t))
    }

    /// Pressure in Pa as Q24.8 ("24674867" is 24674867/256 = 96386.2 Pa): the datasheet's
    /// `BME280_compensate_P_int64`, with wrapping arithmetic so garbage cannot panic.
    pub fn pressure(&self, adc_p: i32, t_fine: i32) -> u32 {
        let mut var1 = i64::from(t_fine) - 128_000;
        let mut var2 = var1.wrapping_mul(var1).wrapping_mul(i64::from(self.p6));
        var2 = var2.wrapping_add(var1.wrapping_mul(i64::from(self.p5)) << 17);
        var2 = var2.wrapping_add(i64::from(self.p4) << 35);
        var1 = (var1.wrapping_mul(var1).wrapping_mul(i64::from(self.p3)) >> 8)
            .wrapping_add(var1.wrapping_mul(i64::from(self.p2)) << 12);
        var1 = ((1i64 << 47).wrapping_add(var1)).wrapping_mul(i64::from(self.p1)) >> 33;
        if var1 == 0 {
            return 0; // avoid a division by zero, as the datasheet does
        }
        let mut p: i64 = 1_048_576 - i64::from(adc_p);
        p = ((p << 31).wrapping_sub(var2))
            .wrapping_mul(3125)
            .wrapping_div(var1);
        var1 = i64::from(self.p9)
            .wrapping_mul(p >> 13)
            .wrapping_mul(p >> 13)
            >> 25;
        var2 = i64::from(self.p8).wrapping_mul(p) >> 19;
        p = (p.wrapping_add(var1).wrapping_add(var2) >> 8).wrapping_add(i64::from(self.p7) << 4);
        u32::try_from(p).unwrap_or(0)
    }

    /// Relative humidity in %RH as Q22.10 ("47445" is 47445/1024 = 46.333 %RH): the
    /// datasheet's `bme280_compensate_H_int32`, in i64.
    pub fn humidity(&self, adc_h: i32, t_fine: i32) -> u32 {
        let h1 = i64::from(self.h1);
        let h2 = i64::from(self.h2);
        let h3 = i64::from(self.h3);
        let h4 = i64::from(self.h4);
        let h5 = i64::from(self.h5);
        let h6 = i64::from(self.h6);
        let mut v = i64::from(t_fine) - 76_800;
        v = ((((i64::from(adc_h) << 14) - (h4 << 20) - (h5 * v)) + 16_384) >> 15)
            * (((((((v * h6) >> 10) * (((v * h3) >> 11) + 32_768)) >> 10) + 2_097_152) * h2
                + 8_192)
                >> 14);
        v -= ((((v >> 15) * (v >> 15)) >> 7) * h1) >> 4;
        v = v.clamp(0, 419_430_400);
        u32::try_from(v >> 12).unwrap_or(0)
    }
}

fn clamp_i32(v: i64) -> i32 {
    i32::try_from(v).unwrap_or(if v < 0 { i32::MIN } else { i32::MAX })
}

/// The raw 20-bit temperature and pressure and the 16-bit humidity of [`reg::DATA`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw {
    pub adc_p: i32,
    pub adc_t: i32,
    pub adc_h: i32,
}

impl Raw {
    /// Decodes press_msb..hum_lsb (humidity 0 when only 6 bytes are given).
    pub fn from_registers(d: &[u8]) -> Self {
        let b = |i: usize| i32::from(d.get(i).copied().unwrap_or(0));
        Raw {
            adc_p: (b(0) << 12) | (b(1) << 4) | (b(2) >> 4),
            adc_t: (b(3) << 12) | (b(4) << 4) | (b(5) >> 4),
            adc_h: (b(6) << 8) | b(7),
        }
    }
}

/// One compensated measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Values {
    /// °C, 0.01 °C resolution.
    pub temperature: f64,
    /// Pa.
    pub pressure: f64,
    /// %RH; `None` on a BMP280.
    pub humidity: Option<f64>,
}

impl Calibration {
    /// Compensates a raw measurement.
    pub fn compensate(&self, raw: Raw, with_humidity: bool) -> Values {
        let (t_fine, t) = self.temperature(raw.adc_t);
        Values {
            temperature: f64::from(t) / 100.0,
            pressure: f64::from(self.pressure(raw.adc_p, t_fine)) / 256.0,
            humidity: with_humidity.then(|| f64::from(self.humidity(raw.adc_h, t_fine)) / 1024.0),
        }
    }
}

/// The BME280 driver, generic over the I2C bus.
pub struct Bme280<I2C> {
    regs: Registers<I2C>,
    calibration: Calibration,
    humidity: bool,
}

impl<I2C: I2c> Bme280<I2C> {
    /// Takes the bus; call [`init`](Self::init) before measuring.
    pub fn new(i2c: I2C, address: u8) -> Self {
        Bme280 {
            regs: Registers::new(i2c, address),
            calibration: Calibration::default(),
            humidity: true,
        }
    }

    /// Gives the bus back.
    pub fn destroy(self) -> I2C {
        self.regs.release()
    }

    /// Whether the chip measures humidity (a BME280, not a BMP280). Valid after `init`.
    pub fn has_humidity(&self) -> bool {
        self.humidity
    }

    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    /// Checks the chip id, resets the chip, reads its calibration and sets the filter
    /// off. Returns the chip id. (Humidity oversampling is set by every `measure`.)
    pub fn init(&mut self, delay: &mut impl DelayNs) -> Result<u8, Error<I2C::Error>> {
        let mut id = [0u8];
        self.regs.read(reg::CHIP_ID, &mut id)?;
        self.humidity = match id[0] {
            CHIP_ID_BME280 => true,
            CHIP_ID_BMP280 => false,
            other => return Err(Error::ChipId(other)),
        };
        self.regs.write(reg::RESET, RESET_COMMAND)?;
        delay.delay_ms(2); // start-up time after reset, datasheet table 1
        self.wait_until_clear(STATUS_IM_UPDATE, delay)?;
        let mut tp = [0u8; reg::CALIB_TP_LEN];
        self.regs.read(reg::CALIB_TP, &mut tp)?;
        let mut h = [0u8; reg::CALIB_H_LEN];
        if self.humidity {
            self.regs.read(reg::CALIB_H, &mut h)?;
        }
        self.calibration = Calibration::from_registers(&tp, &h);
        self.regs.write(reg::CONFIG, 0x00)?;
        Ok(id[0])
    }

    fn wait_until_clear(
        &mut self,
        bit: u8,
        delay: &mut impl DelayNs,
    ) -> Result<(), Error<I2C::Error>> {
        for _ in 0..5 {
            let mut status = [0u8];
            self.regs.read(reg::STATUS, &mut status)?;
            if status[0] & bit == 0 {
                return Ok(());
            }
            delay.delay_ms(2);
        }
        Err(Error::NotReady)
    }

    /// Starts a forced-mode measurement, waits for it and compensates it.
    pub fn measure(&mut self, delay: &mut impl DelayNs) -> Result<Values, Error<I2C::Error>> {
        if self.humidity {
            // Written before every ctrl_meas, not once in `init`: a brown-out resets
            // ctrl_hum to 0 (humidity skipped) while temperature and pressure still work,
            // and a change of ctrl_hum takes effect only at the next ctrl_meas write
            // (datasheet 5.4.3). One extra byte per reading buys a chip that always
            // measures humidity.
            self.regs.write(reg::CTRL_HUM, CTRL_HUM_OSRS_X1)?;
        }
        self.regs.write(reg::CTRL_MEAS, CTRL_MEAS_FORCED_X1)?;
        delay.delay_ms(MEASUREMENT_MS);
        self.wait_until_clear(STATUS_MEASURING, delay)?;
        let mut data = [0u8; 8];
        let len = if self.humidity { 8 } else { 6 };
        self.regs.read(reg::DATA, &mut data[..len])?;
        let raw = Raw::from_registers(&data[..len]);
        // A skipped humidity measurement (0x8000) would still compensate to a believable
        // %RH: refuse it like a skipped temperature or pressure. A BMP280 has no humidity
        // register, so its (absent) humidity is not checked.
        if raw.adc_t == SKIPPED_20BIT
            || raw.adc_p == SKIPPED_20BIT
            || (self.humidity && raw.adc_h == SKIPPED_16BIT)
        {
            return Err(Error::Skipped);
        }
        Ok(self.calibration.compensate(raw, self.humidity))
    }
}

/// Payload fields of a `bme280` entry. Omit a key for its default; set it to `""` to
/// not send that quantity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClimateFields {
    /// Temperature in °C. Default `"temperature"`.
    #[serde(default = "defaults::temperature")]
    pub temperature: String,
    /// Relative humidity in %. Default `"humidite"`.
    #[serde(default = "defaults::humidity")]
    pub humidity: String,
    /// Pressure in hPa. Default `"pression"`.
    #[serde(default = "defaults::pressure")]
    pub pressure: String,
}

impl Default for ClimateFields {
    fn default() -> Self {
        ClimateFields {
            temperature: defaults::temperature(),
            humidity: defaults::humidity(),
            pressure: defaults::pressure(),
        }
    }
}

impl ClimateFields {
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("temperature", self.temperature.as_str()),
            ("humidity", self.humidity.as_str()),
            ("pressure", self.pressure.as_str()),
        ]
    }
}

crate::sensors::i2c::i2c_chip! {
    /// The BME280 as a `[[sensors]]` type.
    Bme280Chip {
        type: "bme280",
        addresses: &ADDRESSES,
        address_doc: "0x76 (SDO low) or 0x77",
        description: "Bosch BME280 (or BMP280) temperature, humidity, pressure on I2C",
    } error: Error
}

/// A `type = "bme280"` entry ([`ClimateConfig`], which shows one).
/// `address`: 0x76 (SDO to GND, the default) or 0x77 (SDO to VDDIO).
pub type Bme280Config = ClimateConfig<Bme280Chip>;

impl ClimateChip for Bme280Chip {
    type Fields = ClimateFields;
    type Driver = Bme280<I2cBus>;
    type Values = Values;
    const BACKEND: Backend = Backend::Combined;
    const FIELDS_DOC: (&'static str, &'static str) = (
        "{ temperature = \"temperature\", humidity = \"humidite\", pressure = \"pression\" }",
        "payload fields (°C, %, hPa); \"\" drops one",
    );

    fn pairs(fields: &ClimateFields) -> Vec<(&'static str, &str)> {
        fields.pairs()
    }

    fn init(
        bus: I2cBus,
        target: &Target,
        fields: &ClimateFields,
    ) -> Result<Self::Driver, SensorError> {
        let mut driver = Bme280::new(bus, target.address);
        driver.init(&mut StdDelay).map_err(|e| target.error(&e))?;
        if !driver.has_humidity() && !fields.humidity.is_empty() {
            return Err(SensorError::Setup {
                sensor: target.name.clone(),
                detail: "this is a BMP280 (chip id 0x58), which has no humidity sensor; \
                         set fields.humidity = \"\" in this entry"
                    .into(),
            });
        }
        Ok(driver)
    }

    fn measure(driver: &mut Self::Driver, target: &Target) -> Result<Values, SensorError> {
        driver.measure(&mut StdDelay).map_err(|e| target.error(&e))
    }

    fn measurements(
        name: &str,
        f: &ClimateFields,
        v: Values,
    ) -> Result<Vec<Measurement>, SensorError> {
        let mut out = Vec::with_capacity(3);
        push_checked(
            &mut out,
            name,
            "temperature",
            &f.temperature,
            v.temperature,
            limits::TEMPERATURE,
        )?;
        if let Some(h) = v.humidity {
            push_checked(
                &mut out,
                name,
                "humidity",
                &f.humidity,
                round(h, 2),
                limits::HUMIDITY,
            )?;
        }
        push_checked(
            &mut out,
            name,
            "pressure",
            &f.pressure,
            round(v.pressure / 100.0, 2),
            limits::PRESSURE,
        )?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};

    const ADDR: u8 = 0x76;

    /// The worked example of the BMP280 datasheet (BST-BMP280-DS001, 3.12), whose
    /// temperature and pressure formulas the BME280 shares, plus typical humidity words.
    fn example() -> Calibration {
        Calibration {
            t1: 27504,
            t2: 26435,
            t3: -1000,
            p1: 36477,
            p2: -10685,
            p3: 3024,
            p4: 2855,
            p5: 140,
            p6: -7,
            p7: 15500,
            p8: -14600,
            p9: 6000,
            h1: 75,
            h2: 362,
            h3: 0,
            h4: 313,
            h5: 50,
            h6: 30,
        }
    }

    fn registers(c: &Calibration) -> (Vec<u8>, Vec<u8>) {
        let mut tp = Vec::new();
        tp.extend(c.t1.to_le_bytes());
        tp.extend(c.t2.to_le_bytes());
        tp.extend(c.t3.to_le_bytes());
        tp.extend(c.p1.to_le_bytes());
        for p in [c.p2, c.p3, c.p4, c.p5, c.p6, c.p7, c.p8, c.p9] {
            tp.extend(p.to_le_bytes());
        }
        tp.push(0x00); // 0xA0, reserved
        tp.push(c.h1);
        let h4 = c.h4 as u16;
        let h5 = c.h5 as u16;
        let mut h = Vec::new();
        h.extend(c.h2.to_le_bytes());
        h.push(c.h3);
        h.push((h4 >> 4) as u8);
        h.push(((h5 & 0x0F) << 4) as u8 | (h4 & 0x0F) as u8);
        h.push((h5 >> 4) as u8);
        h.push(c.h6 as u8);
        (tp, h)
    }

    /// adc_T = 519888, adc_P = 415148 (the datasheet's example), adc_H = 0x6A1F.
    const DATA: [u8; 8] = [0x65, 0x5A, 0xC0, 0x7E, 0xED, 0x00, 0x6A, 0x1F];

    /// The datasheet's double-precision humidity formula (4.2.3), as a reference. Not
    /// clamped to 0..100 %RH (the datasheet's version is): comparing two clamped values
    /// would pass for any input that saturates both.
    fn humidity_f64(c: &Calibration, adc_h: f64, t_fine: f64) -> f64 {
        let mut h = t_fine - 76800.0;
        h = (adc_h - (f64::from(c.h4) * 64.0 + f64::from(c.h5) / 16384.0 * h))
            * (f64::from(c.h2) / 65536.0
                * (1.0
                    + f64::from(c.h6) / 67108864.0 * h * (1.0 + f64::from(c.h3) / 67108864.0 * h)));
        h *= 1.0 - f64::from(c.h1) * h / 524288.0;
        h
    }

    /// A calibration whose dig_H3 is not 0 (it is 0 on many chips, which leaves the
    /// `h3` term of the formula untested), with the other words of [`example`]. The term
    /// is second order (it scales the dig_H6 correction), so the largest dig_H3 makes it
    /// worth ~0.2 %RH here, well above the comparison's 0.05 %RH tolerance.
    fn example_h3() -> Calibration {
        Calibration {
            h3: 255,
            ..example()
        }
    }

    #[test]
    fn datasheet_example_temperature_and_pressure() {
        let c = example();
        let (t_fine, t) = c.temperature(519888);
        assert_eq!(t_fine, 128422);
        assert_eq!(t, 2508); // 25.08 °C
        let p = f64::from(c.pressure(415148, t_fine)) / 256.0;
        assert!((p - 100653.27).abs() < 0.5, "{p}"); // 100653.27 Pa in the datasheet
    }

    #[test]
    fn humidity_integer_formula_matches_the_floating_point_one() {
        for c in [example(), example_h3()] {
            let (t_fine, _) = c.temperature(519888);
            for adc_h in [0x5000, 0x6A1F, 0x7000, 0x7800] {
                let int = f64::from(c.humidity(adc_h, t_fine)) / 1024.0;
                let float = humidity_f64(&c, f64::from(adc_h), f64::from(t_fine));
                // Inside 0..100 so that the integer formula's clamp cannot hide a mismatch.
                assert!(float > 1.0 && float < 99.0, "{adc_h:#x}: reference {float}");
                assert!((int - float).abs() < 0.05, "{adc_h:#x}: {int} vs {float}");
            }
        }
        // dig_H3 changes the result, so the comparison above does exercise that term.
        let (t_fine, _) = example().temperature(519888);
        let a = example().humidity(0x6A1F, t_fine);
        let b = example_h3().humidity(0x6A1F, t_fine);
        assert!(a.abs_diff(b) > 102, "{a} vs {b}"); // > 0.1 %RH (Q22.10)
    }

    #[test]
    fn calibration_registers_decode_including_split_h4_h5() {
        let c = example();
        let (tp, h) = registers(&c);
        let tp: [u8; 26] = tp.try_into().unwrap();
        let h: [u8; 7] = h.try_into().unwrap();
        assert_eq!(Calibration::from_registers(&tp, &h), c);
        // Negative dig_H4/H5 keep their sign.
        let neg = Calibration {
            h4: -300,
            h5: -7,
            ..c
        };
        let (tp, h) = registers(&neg);
        let back = Calibration::from_registers(&tp.try_into().unwrap(), &h.try_into().unwrap());
        assert_eq!((back.h4, back.h5), (-300, -7));
    }

    #[test]
    fn raw_data_decodes_20_and_16_bit_values() {
        let raw = Raw::from_registers(&DATA);
        assert_eq!(
            raw,
            Raw {
                adc_p: 415148,
                adc_t: 519888,
                adc_h: 0x6A1F
            }
        );
    }

    fn init_transactions(c: &Calibration) -> Vec<T> {
        let (tp, h) = registers(c);
        vec![
            T::write_read(ADDR, vec![reg::CHIP_ID], vec![CHIP_ID_BME280]),
            T::write(ADDR, vec![reg::RESET, RESET_COMMAND]),
            T::write_read(ADDR, vec![reg::STATUS], vec![0x00]),
            T::write_read(ADDR, vec![reg::CALIB_TP], tp),
            T::write_read(ADDR, vec![reg::CALIB_H], h),
            T::write(ADDR, vec![reg::CONFIG, 0x00]),
        ]
    }

    #[test]
    fn init_and_forced_measurement_on_the_wire() {
        let c = example();
        let mut tx = init_transactions(&c);
        tx.extend([
            T::write(ADDR, vec![reg::CTRL_HUM, 0x01]),
            T::write(ADDR, vec![reg::CTRL_MEAS, 0x25]),
            T::write_read(ADDR, vec![reg::STATUS], vec![STATUS_MEASURING]),
            T::write_read(ADDR, vec![reg::STATUS], vec![0x00]),
            T::write_read(ADDR, vec![reg::DATA], DATA.to_vec()),
        ]);
        let mut i2c = Mock::new(&tx);
        let mut dev = Bme280::new(i2c.clone(), ADDR);
        assert_eq!(dev.init(&mut NoopDelay).unwrap(), CHIP_ID_BME280);
        assert_eq!(*dev.calibration(), c);
        let v = dev.measure(&mut NoopDelay).unwrap();
        assert_eq!(v.temperature, 25.08);
        assert!((v.pressure - 100653.27).abs() < 0.5, "{}", v.pressure);
        let h = v.humidity.unwrap();
        let (t_fine, _) = c.temperature(519888);
        let expected = humidity_f64(&c, f64::from(0x6A1F), f64::from(t_fine));
        assert!(expected > 1.0 && expected < 99.0, "reference {expected}");
        assert!((h - expected).abs() < 0.05, "{h} vs {expected}");
        dev.destroy();
        i2c.done();
    }

    #[test]
    fn ctrl_hum_is_written_before_every_measurement() {
        // After a brown-out the chip forgets ctrl_hum (humidity skipped) but still
        // measures temperature and pressure: rewriting it before each ctrl_meas brings
        // humidity back at the very next reading, without a new `init`.
        let c = example_h3();
        let mut tx = init_transactions(&c);
        for _ in 0..2 {
            tx.extend([
                T::write(ADDR, vec![reg::CTRL_HUM, CTRL_HUM_OSRS_X1]),
                T::write(ADDR, vec![reg::CTRL_MEAS, CTRL_MEAS_FORCED_X1]),
                T::write_read(ADDR, vec![reg::STATUS], vec![0x00]),
                T::write_read(ADDR, vec![reg::DATA], DATA.to_vec()),
            ]);
        }
        let mut i2c = Mock::new(&tx);
        let mut dev = Bme280::new(i2c.clone(), ADDR);
        dev.init(&mut NoopDelay).unwrap();
        for _ in 0..2 {
            let v = dev.measure(&mut NoopDelay).unwrap();
            let (t_fine, _) = c.temperature(519888);
            let expected = humidity_f64(&c, f64::from(0x6A1F), f64::from(t_fine));
            let h = v.humidity.unwrap();
            assert!((h - expected).abs() < 0.05, "{h} vs {expected}");
        }
        i2c.done();
    }

    #[test]
    fn skipped_humidity_alone_is_an_error() {
        // Temperature and pressure measured, humidity skipped (raw 0x8000): the
        // compensation would turn 0x8000 into a believable %RH, so it must be refused.
        let c = example();
        let mut tx = init_transactions(&c);
        tx.extend([
            T::write(ADDR, vec![reg::CTRL_HUM, CTRL_HUM_OSRS_X1]),
            T::write(ADDR, vec![reg::CTRL_MEAS, CTRL_MEAS_FORCED_X1]),
            T::write_read(ADDR, vec![reg::STATUS], vec![0x00]),
            T::write_read(
                ADDR,
                vec![reg::DATA],
                vec![0x65, 0x5A, 0xC0, 0x7E, 0xED, 0x00, 0x80, 0x00],
            ),
        ]);
        let mut i2c = Mock::new(&tx);
        let mut dev = Bme280::new(i2c.clone(), ADDR);
        dev.init(&mut NoopDelay).unwrap();
        let (t_fine, _) = c.temperature(519888);
        let believable = f64::from(c.humidity(0x8000, t_fine)) / 1024.0;
        assert!(believable > 0.0 && believable < 100.0, "{believable}");
        assert!(matches!(dev.measure(&mut NoopDelay), Err(Error::Skipped)));
        i2c.done();
    }

    #[test]
    fn wrong_chip_id_is_reported() {
        let mut i2c = Mock::new(&[T::write_read(ADDR, vec![reg::CHIP_ID], vec![0x61])]);
        let mut dev = Bme280::new(i2c.clone(), ADDR);
        let e = dev.init(&mut NoopDelay).unwrap_err();
        assert!(matches!(e, Error::ChipId(0x61)), "{e:?}");
        assert!(e.to_string().contains("0x61"));
        i2c.done();
    }

    #[test]
    fn nack_is_a_bus_error() {
        use embedded_hal::i2c::NoAcknowledgeSource;
        let mut i2c = Mock::new(&[T::write_read(ADDR, vec![reg::CHIP_ID], vec![0x00])
            .with_error(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address))]);
        let mut dev = Bme280::new(i2c.clone(), ADDR);
        assert!(matches!(
            dev.init(&mut NoopDelay),
            Err(Error::Bus(ErrorKind::NoAcknowledge(_)))
        ));
        i2c.done();
    }

    #[test]
    fn skipped_measurement_and_stuck_status_are_errors() {
        let c = example();
        let mut tx = init_transactions(&c);
        tx.extend([
            T::write(ADDR, vec![reg::CTRL_HUM, 0x01]),
            T::write(ADDR, vec![reg::CTRL_MEAS, 0x25]),
            T::write_read(ADDR, vec![reg::STATUS], vec![0x00]),
            T::write_read(ADDR, vec![reg::DATA], vec![0x80, 0, 0, 0x80, 0, 0, 0x80, 0]),
            T::write(ADDR, vec![reg::CTRL_HUM, 0x01]),
            T::write(ADDR, vec![reg::CTRL_MEAS, 0x25]),
        ]);
        tx.extend((0..5).map(|_| T::write_read(ADDR, vec![reg::STATUS], vec![STATUS_MEASURING])));
        let mut i2c = Mock::new(&tx);
        let mut dev = Bme280::new(i2c.clone(), ADDR);
        dev.init(&mut NoopDelay).unwrap();
        assert!(matches!(dev.measure(&mut NoopDelay), Err(Error::Skipped)));
        assert!(matches!(dev.measure(&mut NoopDelay), Err(Error::NotReady)));
        i2c.done();
    }

    #[test]
    fn bmp280_reads_six_bytes_and_has_no_humidity() {
        let c = Calibration {
            h1: 0,
            h2: 0,
            h3: 0,
            h4: 0,
            h5: 0,
            h6: 0,
            ..example()
        };
        let (tp, _) = registers(&c);
        let tx = vec![
            T::write_read(ADDR, vec![reg::CHIP_ID], vec![CHIP_ID_BMP280]),
            T::write(ADDR, vec![reg::RESET, RESET_COMMAND]),
            T::write_read(ADDR, vec![reg::STATUS], vec![0x00]),
            T::write_read(ADDR, vec![reg::CALIB_TP], tp),
            T::write(ADDR, vec![reg::CONFIG, 0x00]),
            T::write(ADDR, vec![reg::CTRL_MEAS, 0x25]),
            T::write_read(ADDR, vec![reg::STATUS], vec![0x00]),
            T::write_read(ADDR, vec![reg::DATA], DATA[..6].to_vec()),
        ];
        let mut i2c = Mock::new(&tx);
        let mut dev = Bme280::new(i2c.clone(), ADDR);
        dev.init(&mut NoopDelay).unwrap();
        assert!(!dev.has_humidity());
        let v = dev.measure(&mut NoopDelay).unwrap();
        assert_eq!(v.humidity, None);
        assert_eq!(v.temperature, 25.08);
        i2c.done();
    }

    #[test]
    fn garbage_calibration_does_not_panic() {
        let c = Calibration {
            t1: u16::MAX,
            t2: i16::MIN,
            t3: i16::MIN,
            p1: u16::MAX,
            p2: i16::MIN,
            p3: i16::MIN,
            p4: i16::MIN,
            p5: i16::MIN,
            p6: i16::MIN,
            p7: i16::MIN,
            p8: i16::MIN,
            p9: i16::MIN,
            h1: u8::MAX,
            h2: i16::MIN,
            h3: u8::MAX,
            h4: i16::MIN,
            h5: i16::MIN,
            h6: i8::MIN,
        };
        for adc in [0, 0xFFFFF, 0x80000] {
            let _ = c.compensate(
                Raw {
                    adc_p: adc,
                    adc_t: adc,
                    adc_h: adc & 0xFFFF,
                },
                true,
            );
        }
    }

    #[test]
    fn config_defaults_and_checks() {
        let c: Bme280Config = toml::from_str("").unwrap();
        assert_eq!(c, Bme280Config::default());
        assert_eq!(c.address, 0x76);
        let c: Bme280Config = toml::from_str("address = 0x40").unwrap();
        assert_eq!(c.check().unwrap_err().0, "address");
        let c: Bme280Config = toml::from_str("bus = 1\ndevice = \"/dev/i2c-1\"").unwrap();
        assert_eq!(c.check().unwrap_err().0, "device");
    }
}
