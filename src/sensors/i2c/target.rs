//! Where an I2C chip is: the `bus`, `device` and `address` settings every I2C entry
//! has, checked and resolved here once for all of them.

use std::path::PathBuf;

use crate::sensors::{SensorError, SettingDoc};

use super::driver::ChipError;

/// An I2C chip that is a `[[sensors]]` type.
/// (The derived traits let the generic entries derive theirs.)
pub trait I2cChip: Clone + std::fmt::Debug + PartialEq + Send + 'static {
    /// Its `type` in the configuration, e.g. `"bme280"`; also names its sensors
    /// (`bme280@i2c-1:0x76`).
    const TYPE: &'static str;
    /// The addresses the chip can have; the first is the default.
    const ADDRESSES: &'static [u8];
    /// The addresses as `sensors list` explains them, e.g. `"0x76 (SDO low) or 0x77"`.
    const ADDRESS_DOC: &'static str;
    /// What the type is, for `sensors list`.
    const DESCRIPTION: &'static str;
}

/// `sensors list`: the `bus`, `device` and `address` settings of a chip's entries.
pub fn settings_doc<C: I2cChip>() -> Vec<SettingDoc> {
    vec![
        SettingDoc::new(
            "bus",
            DEFAULT_BUS.to_string(),
            "I2C bus number N (/dev/i2c-N); set bus or device, not both",
        ),
        SettingDoc::new(
            "device",
            "none",
            "i2c-dev path instead of bus, e.g. \"/dev/i2c-1\"",
        ),
        SettingDoc::new(
            "address",
            format!("0x{:02x}", default_address::<C>()),
            C::ADDRESS_DOC,
        ),
    ]
}

/// Declares a chip's `[[sensors]]` type: its marker type, its [`I2cChip`] facts and,
/// with `error`, that the `Bus` variant of its driver's `Error` is the bus error
/// ([`ChipError`](super::ChipError)). The same few lines for every chip, said once.
macro_rules! i2c_chip {
    (
        $(#[$meta:meta])* $chip:ident {
            type: $type:literal,
            addresses: $addresses:expr,
            address_doc: $address_doc:literal,
            description: $description:literal $(,)?
        } $(error: $error:ident)?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Default)]
        pub struct $chip;

        impl $crate::sensors::i2c::I2cChip for $chip {
            const TYPE: &'static str = $type;
            const ADDRESSES: &'static [u8] = $addresses;
            const ADDRESS_DOC: &'static str = $address_doc;
            const DESCRIPTION: &'static str = $description;
        }

        $(
            impl $crate::sensors::i2c::ChipError for $error<$crate::sensors::i2c::I2cBusError> {
                fn bus_error(&self) -> Option<&$crate::sensors::i2c::I2cBusError> {
                    match self {
                        $error::Bus(e) => Some(e),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
            }
        )?
    };
}
pub(crate) use i2c_chip;

/// The default `address` of a chip's entries (a serde default).
pub fn default_address<C: I2cChip>() -> u8 {
    C::ADDRESSES[0]
}

/// Checks an entry's `bus`, `device` and `address` settings.
pub fn check_target<C: I2cChip>(
    bus: Option<u8>,
    device: Option<&str>,
    address: u8,
) -> Result<(), (String, String)> {
    BusLocation::from_settings(bus, device)?;
    check_address(address, C::ADDRESSES)
}

/// A chip's bus and address, and the sensor name made of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub location: BusLocation,
    pub address: u8,
    /// `type@bus:address`, e.g. `bme280@i2c-1:0x76`.
    pub name: String,
}

impl Target {
    /// The target of a checked entry (a bad `bus`/`device` pair, refused by
    /// [`check_target`] before any sensor is built, falls back to the default bus).
    pub fn new<C: I2cChip>(bus: Option<u8>, device: Option<&str>, address: u8) -> Self {
        let location =
            BusLocation::from_settings(bus, device).unwrap_or(BusLocation::Number(DEFAULT_BUS));
        Target {
            name: format!("{}@{}:0x{address:02x}", C::TYPE, location.label()),
            location,
            address,
        }
    }

    /// A driver's error as this sensor's error: a bus fault with what to check, any
    /// other (a CRC, a chip id, a setting) as bad data.
    pub fn error(&self, e: &impl ChipError) -> SensorError {
        match e.bus_error() {
            Some(bus) => SensorError::Bus {
                sensor: self.name.clone(),
                detail: super::bus_detail(bus, self.address),
            },
            None => SensorError::BadData {
                sensor: self.name.clone(),
                detail: e.to_string(),
            },
        }
    }
}

/// Where a chip's bus is, from the entry's `bus` / `device` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusLocation {
    /// `bus = N`: `/dev/i2c-N`.
    Number(u8),
    /// `device = "/dev/i2c-N"` (or any i2c-dev node).
    Path(String),
}

/// The default I2C bus: bus 1 is the one on header pins 3 (SDA) and 5 (SCL) of every
/// Raspberry Pi since the first revision.
pub const DEFAULT_BUS: u8 = 1;

impl BusLocation {
    /// Resolves `bus` and `device`: at most one may be set; neither means bus 1.
    pub fn from_settings(bus: Option<u8>, device: Option<&str>) -> Result<Self, (String, String)> {
        match (bus, device) {
            (Some(_), Some(_)) => Err((
                "device".into(),
                "set either `bus` or `device`, not both".into(),
            )),
            (None, Some("")) => Err((
                "device".into(),
                "empty path; use e.g. \"/dev/i2c-1\" or remove the key".into(),
            )),
            (None, Some(path)) => Ok(BusLocation::Path(path.to_owned())),
            (Some(n), None) => Ok(BusLocation::Number(n)),
            (None, None) => Ok(BusLocation::Number(DEFAULT_BUS)),
        }
    }

    pub fn path(&self) -> PathBuf {
        match self {
            BusLocation::Number(n) => PathBuf::from(format!("/dev/i2c-{n}")),
            BusLocation::Path(p) => PathBuf::from(p),
        }
    }

    /// Short form for sensor names: `i2c-1` or the path given.
    pub fn label(&self) -> String {
        match self {
            BusLocation::Number(n) => format!("i2c-{n}"),
            BusLocation::Path(p) => p.clone(),
        }
    }
}

/// Checks a 7-bit address setting.
pub fn check_address(address: u8, usual: &[u8]) -> Result<(), (String, String)> {
    if !(0x03..=0x77).contains(&address) {
        return Err((
            "address".into(),
            format!("0x{address:02x} is not a 7-bit device address (0x03..=0x77)"),
        ));
    }
    if !usual.is_empty() && !usual.contains(&address) {
        let list: Vec<String> = usual.iter().map(|a| format!("0x{a:02x}")).collect();
        return Err((
            "address".into(),
            format!(
                "0x{address:02x} is not an address this chip can have ({})",
                list.join(" or ")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_and_device_resolve() {
        assert_eq!(
            BusLocation::from_settings(None, None).unwrap(),
            BusLocation::Number(1)
        );
        assert_eq!(
            BusLocation::from_settings(Some(3), None).unwrap().path(),
            PathBuf::from("/dev/i2c-3")
        );
        assert_eq!(
            BusLocation::from_settings(None, Some("/dev/i2c-7"))
                .unwrap()
                .label(),
            "/dev/i2c-7"
        );
        assert_eq!(
            BusLocation::from_settings(Some(1), Some("/dev/i2c-1"))
                .unwrap_err()
                .0,
            "device"
        );
    }

    #[test]
    fn addresses_are_checked() {
        assert!(check_address(0x76, &[0x76, 0x77]).is_ok());
        assert!(check_address(0x78, &[]).is_err());
        assert!(check_address(0x40, &[0x76, 0x77])
            .unwrap_err()
            .1
            .contains("0x76 or 0x77"));
    }
}
