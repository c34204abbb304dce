//! Sensors the kernel drives, read through sysfs files: any Industrial I/O device
//! ([`iio`]) and the DS18B20 1-Wire thermometer ([`ds18b20`]). Their reads can wait on a
//! driver, so they read on their own thread ([`super::worker::Threaded`]).

pub mod ds18b20;
pub mod iio;
