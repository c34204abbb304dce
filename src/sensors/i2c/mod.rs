//! I2C bus selection shared by the I2C sensor types (`bus = N` or `device = "/dev/i2c-N"`)
//! and the two Linux backends behind embedded-hal 1.0.
//!
//! The backends differ in one way that matters to drivers: how `write_read` (write a
//! register address, then read) reaches the wire.
//!
//! - [`Backend::Combined`]: linux-embedded-hal's `I2cdev`. Every embedded-hal
//!   `transaction` becomes ONE `I2C_RDWR` ioctl: a write, a repeated START, a read, one
//!   STOP. This is the sequence the BME280, ADXL345 and MPU-6050 datasheets draw for a
//!   register read, and the kernel holds the adapter lock for the whole transfer, so no
//!   other process talking to the same chip (e.g. `sensors read` while the daemon runs)
//!   can move the chip's register pointer between our write and our read.
//! - [`Backend::Rppal`]: rppal's `I2c`. Its embedded-hal `transaction` issues one
//!   `write(2)`/`read(2)` per operation: STOP then START between them, and another
//!   process may slip in between. Fine for chips whose protocol is "send a command, wait,
//!   read" with a STOP in between anyway (the Sensirion SHT3x/SHT4x); rppal also turns off
//!   PEC and 10-bit addressing when it opens the bus, and offers the SMBus quick command
//!   that `sensors scan` uses to probe like `i2cdetect`.
//!
//! Each driver's sensor says which backend it uses and why. A `device` path always
//! uses `Combined` (rppal opens buses by number only).

use std::fmt;
use std::io;
use std::time::Duration;

use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};
use linux_embedded_hal::I2cdev;

use crate::sensors::SensorError;

mod driver;
mod registers;
mod target;

pub use driver::{ChipError, LazyDriver};
pub use registers::Registers;
pub(crate) use target::i2c_chip;
pub use target::{
    check_address, check_target, default_address, settings_doc, BusLocation, I2cChip, Target,
    DEFAULT_BUS,
};

/// Which Linux I2C backend a chip uses; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// linux-embedded-hal `I2cdev`: combined transfers with a repeated START.
    Combined,
    /// rppal `I2c`: STOP+START between operations.
    Rppal,
}

/// An open I2C bus, through either backend.
pub enum I2cBus {
    Combined(I2cdev),
    Rppal(rppal::i2c::I2c),
}

/// A bus error of either backend.
#[derive(Debug)]
pub enum I2cBusError {
    Combined(linux_embedded_hal::I2CError),
    Rppal(rppal::i2c::Error),
}

impl fmt::Display for I2cBusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            I2cBusError::Combined(e) => write!(f, "{e}"),
            I2cBusError::Rppal(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for I2cBusError {}

impl I2cBusError {
    /// The errno of the failed ioctl, if the backend reports one.
    pub fn os_error(&self) -> Option<i32> {
        use linux_embedded_hal::i2cdev::linux::LinuxI2CError;
        match self {
            I2cBusError::Combined(e) => match e.inner() {
                LinuxI2CError::Errno(n) => Some(*n),
                LinuxI2CError::Io(e) => e.raw_os_error(),
            },
            I2cBusError::Rppal(rppal::i2c::Error::Io(e)) => e.raw_os_error(),
            I2cBusError::Rppal(_) => None,
        }
    }
}

impl embedded_hal::i2c::Error for I2cBusError {
    fn kind(&self) -> ErrorKind {
        match self {
            I2cBusError::Combined(e) => e.kind(),
            I2cBusError::Rppal(rppal::i2c::Error::Io(e)) => match e.raw_os_error() {
                // The kernel's I2C fault codes (Documentation/i2c/fault-codes.rst).
                Some(libc::ENXIO) => ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address),
                Some(libc::ENODEV) => ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data),
                Some(libc::EAGAIN) => ErrorKind::ArbitrationLoss,
                Some(libc::EIO) | Some(libc::EBUSY) => ErrorKind::Bus,
                _ => ErrorKind::Other,
            },
            I2cBusError::Rppal(_) => ErrorKind::Other,
        }
    }
}

impl ErrorType for I2cBus {
    type Error = I2cBusError;
}

impl I2c for I2cBus {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        match self {
            I2cBus::Combined(bus) => bus
                .transaction(address, operations)
                .map_err(I2cBusError::Combined),
            I2cBus::Rppal(bus) => bus
                .transaction(address, operations)
                .map_err(I2cBusError::Rppal),
        }
    }
}

/// Opens the bus for a chip. `Rppal` is used only for `bus = N`; a path always opens
/// through `I2cdev`. Errors say what to check.
pub fn open(location: &BusLocation, backend: Backend, sensor: &str) -> Result<I2cBus, SensorError> {
    let path = location.path();
    let setup = |e: io::Error| SensorError::Setup {
        sensor: sensor.to_owned(),
        detail: open_hint(&path.display().to_string(), &e),
    };
    match (backend, location) {
        (Backend::Rppal, BusLocation::Number(n)) => match rppal::i2c::I2c::with_bus(*n) {
            Ok(bus) => Ok(I2cBus::Rppal(bus)),
            Err(rppal::i2c::Error::Io(e)) => Err(setup(e)),
            Err(e) => Err(SensorError::Setup {
                sensor: sensor.to_owned(),
                detail: format!("cannot open {}: {e}", path.display()),
            }),
        },
        _ => match I2cdev::new(&path) {
            Ok(bus) => Ok(I2cBus::Combined(bus)),
            Err(linux_embedded_hal::i2cdev::linux::LinuxI2CError::Io(e)) => Err(setup(e)),
            Err(e) => Err(SensorError::Setup {
                sensor: sensor.to_owned(),
                detail: format!("cannot open {}: {e}", path.display()),
            }),
        },
    }
}

/// "cannot open /dev/i2c-1: ..." with the usual cause and fix.
pub fn open_hint(path: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => format!(
            "cannot open {path}: no such device (enable I2C: `sudo raspi-config nonint do_i2c 0` \
             or `dtparam=i2c_arm=on` in /boot/firmware/config.txt, then check `ls /dev/i2c-*` \
             for the bus number)"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "cannot open {path}: permission denied (add the service user to the `i2c` group)"
        ),
        _ => format!("cannot open {path}: {e}"),
    }
}

/// Describes a driver's bus error with what to check, e.g. a NACK at the address.
pub fn bus_detail<E: embedded_hal::i2c::Error + fmt::Display + 'static>(
    e: &E,
    address: u8,
) -> String {
    // EBUSY from i2c-dev means the I2C_SLAVE ioctl refused the address because a kernel
    // driver owns it (a `dtoverlay=i2c-sensor,...` line): both backends map it to a
    // generic bus fault, whose "check wiring" hint would send the user the wrong way.
    // Only our own bus error carries the errno, hence the downcast.
    let os_error = (e as &dyn std::any::Any)
        .downcast_ref::<I2cBusError>()
        .and_then(I2cBusError::os_error);
    if os_error == Some(libc::EBUSY) {
        return format!(
            "0x{address:02x} is claimed by a kernel driver ({e}), usually a `dtoverlay` in \
             /boot/firmware/config.txt: read the chip through that driver with \
             `type = \"iio\"`, or remove the overlay and reboot to use this type"
        );
    }
    match e.kind() {
        ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address) => format!(
            "no device answered at 0x{address:02x} (NACK; check wiring, power, the `address` \
             setting and `sensors scan`)"
        ),
        ErrorKind::NoAcknowledge(_) => format!(
            "0x{address:02x} did not acknowledge ({e}; the chip may be busy, resetting or not the \
             expected one)"
        ),
        ErrorKind::ArbitrationLoss | ErrorKind::Bus => format!(
            "bus fault talking to 0x{address:02x} ({e}; check wiring, pull-ups and cable length)"
        ),
        _ => format!("I/O error talking to 0x{address:02x}: {e} (the device may be gone)"),
    }
}

/// A `DelayNs` that sleeps the thread: the drivers wait for conversions this way.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdDelay;

impl embedded_hal::delay::DelayNs for StdDelay {
    fn delay_ns(&mut self, ns: u32) {
        std::thread::sleep(Duration::from_nanos(u64::from(ns)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_bus_says_how_to_enable_i2c() {
        let e = open(
            &BusLocation::Path("/nonexistent/i2c-9".into()),
            Backend::Combined,
            "t",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("raspi-config"), "{e}");
    }

    #[test]
    fn nack_detail_points_at_the_address() {
        let d = bus_detail(
            &ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address),
            0x76,
        );
        assert!(d.contains("0x76") && d.contains("sensors scan"), "{d}");
    }

    #[test]
    fn ebusy_says_a_kernel_driver_owns_the_address() {
        use linux_embedded_hal::i2cdev::linux::LinuxI2CError;
        let busy = || io::Error::from_raw_os_error(libc::EBUSY);
        for e in [
            I2cBusError::Rppal(rppal::i2c::Error::Io(busy())),
            I2cBusError::Combined(LinuxI2CError::Io(busy()).into()),
            I2cBusError::Combined(LinuxI2CError::Errno(libc::EBUSY).into()),
        ] {
            let d = bus_detail(&e, 0x77);
            assert!(
                d.contains("0x77") && d.contains("kernel driver") && d.contains("type = \"iio\""),
                "{d}"
            );
            assert!(!d.contains("wiring"), "{d}");
        }
        // Other faults keep their own hint.
        let eio = I2cBusError::Rppal(rppal::i2c::Error::Io(io::Error::from_raw_os_error(
            libc::EIO,
        )));
        assert!(bus_detail(&eio, 0x77).contains("wiring"));
    }
}
