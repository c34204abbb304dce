//! Temperature, humidity and pressure chips on I2C: the Bosch BME280/BMP280 and the
//! Sensirion SHT3x/SHT4x (which share [`sensirion`]).

pub mod bme280;
pub mod sensirion;
pub mod sht3x;
pub mod sht4x;
