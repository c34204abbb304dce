//! A digital input through rppal: its level (0 or 1) at each tick, or the edges counted
//! over the interval (a rain gauge, an anemometer, a wheel encoder). The pin is behind
//! [`DigitalInput`], so tests use a fake pin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{defaults, Measurement, Sensor, SensorError, SensorType, SettingDoc, TypeDoc};

/// What is sent each tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The level now: 1.0 high, 0.0 low. The default.
    #[default]
    Level,
    /// The number of edges since the previous reading (counted by an interrupt).
    Edges,
}

/// The pin's internal resistor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    /// None: the circuit drives the pin. The default.
    #[default]
    None,
    Up,
    Down,
}

/// Which transitions count in `edges` mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Edge {
    /// Low to high. The default.
    #[default]
    Rising,
    Falling,
    Both,
}

/// Payload fields of a `gpio` entry; only the one of the entry's `mode` is sent. Omit a
/// key for its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioFields {
    /// `mode = "level"`: 0 or 1. Default `"gpio_level"`.
    #[serde(default = "defaults::level")]
    pub level: String,
    /// `mode = "edges"`: edges counted over the interval. Default `"gpio_edges"`.
    #[serde(default = "defaults::edges")]
    pub edges: String,
}

impl Default for GpioFields {
    fn default() -> Self {
        GpioFields {
            level: defaults::level(),
            edges: defaults::edges(),
        }
    }
}

/// A `type = "gpio"` entry.
///
/// ```toml
/// [[sensors]]
/// type = "gpio"
/// pin = 17             # BCM number, not the header pin
/// mode = "edges"       # or "level"
/// pull = "up"          # "none", "up" or "down"
/// edge = "falling"     # "rising", "falling" or "both"
/// debounce_ms = 5
/// fields = { edges = "impulsions" }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioConfig {
    /// BCM GPIO number (GPIO17 is header pin 11). Required.
    pub pin: u8,
    /// `"level"` (default) or `"edges"`.
    #[serde(default)]
    pub mode: Mode,
    /// Internal resistor: `"none"` (default), `"up"` or `"down"`. A switch to ground
    /// needs `"up"`.
    #[serde(default)]
    pub pull: Pull,
    /// `edges` mode: `"rising"` (default), `"falling"` or `"both"`.
    #[serde(default)]
    pub edge: Edge,
    /// `edges` mode: ignore edges closer than this after the previous one, ms (0..=1000;
    /// default none). Mechanical contacts bounce for a few ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce_ms: Option<u64>,
    /// Payload field names; see [`GpioFields`].
    #[serde(default)]
    pub fields: GpioFields,
}

/// Highest BCM GPIO number (the BCM2835 family has 54).
pub const MAX_PIN: u8 = 53;

impl SensorType for GpioConfig {
    fn type_name(&self) -> &'static str {
        "gpio"
    }

    fn doc() -> TypeDoc {
        TypeDoc {
            type_name: "gpio",
            description: "a digital input through rppal: its level, or edges counted per interval",
            settings: vec![
                SettingDoc::new(
                    "pin",
                    "required",
                    "BCM GPIO number (GPIO17 is header pin 11)",
                ),
                SettingDoc::new(
                    "mode",
                    "\"level\"",
                    "\"level\" (0/1) or \"edges\" (count over the interval)",
                ),
                SettingDoc::new(
                    "pull",
                    "\"none\"",
                    "internal resistor: \"none\", \"up\" or \"down\"",
                ),
                SettingDoc::new(
                    "edge",
                    "\"rising\"",
                    "edges mode: \"rising\", \"falling\" or \"both\"",
                ),
                SettingDoc::new(
                    "debounce_ms",
                    "none",
                    "edges mode: ignore edges closer than this, 0..=1000 ms",
                ),
                SettingDoc::new(
                    "fields",
                    "{ level = \"gpio_level\", edges = \"gpio_edges\" }",
                    "payload field of the mode",
                ),
            ],
        }
    }

    /// Only the field of the configured mode.
    fn fields(&self) -> Vec<(&'static str, &str)> {
        self.active_fields()
    }

    fn check(&self) -> Result<(), (String, String)> {
        GpioConfig::check(self)
    }

    /// Never blocks: a read is a register read.
    fn build(&self, _: usize, _: Duration) -> Box<dyn Sensor> {
        Box::new(GpioSensor::rppal(self.clone()))
    }
}

impl GpioConfig {
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        if self.pin > MAX_PIN {
            return Err((
                "pin".into(),
                format!(
                    "GPIO{} does not exist (BCM numbers are 0..={MAX_PIN})",
                    self.pin
                ),
            ));
        }
        if matches!(self.debounce_ms, Some(ms) if ms > 1000) {
            return Err(("debounce_ms".into(), "at most 1000 ms".into()));
        }
        Ok(())
    }

    /// The field of the entry's mode.
    pub fn active_fields(&self) -> Vec<(&'static str, &str)> {
        match self.mode {
            Mode::Level => vec![("level", self.fields.level.as_str())],
            Mode::Edges => vec![("edges", self.fields.edges.as_str())],
        }
    }
}

/// A digital input pin.
pub trait DigitalInput: Send {
    /// The level now.
    fn is_high(&mut self) -> Result<bool, String>;
    /// Edges counted since the previous call (or since the pin was opened).
    fn take_edges(&mut self) -> Result<u64, String>;
}

/// Opens the pin; called on the first read and after a failure.
pub type PinOpener = Box<dyn FnMut(&GpioConfig) -> Result<Box<dyn DigitalInput>, String> + Send>;

/// The `gpio` sensor.
pub struct GpioSensor {
    name: String,
    config: GpioConfig,
    opener: PinOpener,
    pin: Option<Box<dyn DigitalInput>>,
}

impl GpioSensor {
    /// A sensor whose pin comes from `opener` (tests pass a fake pin).
    pub fn new(config: GpioConfig, opener: PinOpener) -> Self {
        GpioSensor {
            name: format!("gpio@GPIO{}", config.pin),
            config,
            opener,
            pin: None,
        }
    }

    /// A sensor on the Raspberry Pi's GPIO through rppal.
    pub fn rppal(config: GpioConfig) -> Self {
        Self::new(config, Box::new(open_rppal))
    }
}

impl Sensor for GpioSensor {
    fn name(&self) -> &str {
        &self.name
    }

    fn read(&mut self) -> Result<Vec<Measurement>, SensorError> {
        let mut pin = match self.pin.take() {
            Some(pin) => pin,
            None => (self.opener)(&self.config).map_err(|detail| SensorError::Setup {
                sensor: self.name.clone(),
                detail,
            })?,
        };
        let (field, value) = match self.config.mode {
            Mode::Level => (
                &self.config.fields.level,
                pin.is_high().map(|h| if h { 1.0 } else { 0.0 }),
            ),
            Mode::Edges => (
                &self.config.fields.edges,
                pin.take_edges().map(|n| n as f64),
            ),
        };
        let value = value.map_err(|detail| SensorError::Bus {
            sensor: self.name.clone(),
            detail,
        })?;
        self.pin = Some(pin);
        Ok(vec![Measurement {
            field: field.clone(),
            value,
        }])
    }
}

/// An rppal input pin, counting edges with an asynchronous interrupt in `edges` mode.
struct RppalInput {
    pin: rppal::gpio::InputPin,
    edges: Arc<AtomicU64>,
}

impl DigitalInput for RppalInput {
    fn is_high(&mut self) -> Result<bool, String> {
        Ok(self.pin.is_high())
    }

    fn take_edges(&mut self) -> Result<u64, String> {
        Ok(self.edges.swap(0, Ordering::Relaxed))
    }
}

fn rppal_hint(pin: u8, e: rppal::gpio::Error) -> String {
    use rppal::gpio::Error as E;
    match e {
        E::PermissionDenied(path) => {
            format!("permission denied on {path} (add the service user to the `gpio` group)")
        }
        E::PinUsed(_) => format!("GPIO{pin} is already in use (by another entry or process)"),
        E::PinNotAvailable(_) => format!("GPIO{pin} does not exist on this board"),
        E::UnknownModel => "this is not a Raspberry Pi that rppal knows (GPIO through rppal \
                            needs one)"
            .into(),
        other => format!("GPIO{pin}: {other}"),
    }
}

fn open_rppal(config: &GpioConfig) -> Result<Box<dyn DigitalInput>, String> {
    let gpio = rppal::gpio::Gpio::new().map_err(|e| rppal_hint(config.pin, e))?;
    let pin = gpio
        .get(config.pin)
        .map_err(|e| rppal_hint(config.pin, e))?;
    let mut pin = match config.pull {
        Pull::None => pin.into_input(),
        Pull::Up => pin.into_input_pullup(),
        Pull::Down => pin.into_input_pulldown(),
    };
    let edges = Arc::new(AtomicU64::new(0));
    if config.mode == Mode::Edges {
        let trigger = match config.edge {
            Edge::Rising => rppal::gpio::Trigger::RisingEdge,
            Edge::Falling => rppal::gpio::Trigger::FallingEdge,
            Edge::Both => rppal::gpio::Trigger::Both,
        };
        let counter = Arc::clone(&edges);
        pin.set_async_interrupt(
            trigger,
            config.debounce_ms.map(Duration::from_millis),
            move |_event| {
                counter.fetch_add(1, Ordering::Relaxed);
            },
        )
        .map_err(|e| rppal_hint(config.pin, e))?;
    }
    Ok(Box::new(RppalInput { pin, edges }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A fake pin whose level, edge count and failure the test controls.
    #[derive(Clone, Default)]
    struct FakePin {
        state: Arc<Mutex<(bool, u64, bool)>>, // (high, edges, failing)
    }

    impl DigitalInput for FakePin {
        fn is_high(&mut self) -> Result<bool, String> {
            let s = self.state.lock().map_err(|e| e.to_string())?;
            if s.2 {
                return Err("pin gone".into());
            }
            Ok(s.0)
        }
        fn take_edges(&mut self) -> Result<u64, String> {
            let mut s = self.state.lock().map_err(|e| e.to_string())?;
            if s.2 {
                return Err("pin gone".into());
            }
            Ok(std::mem::take(&mut s.1))
        }
    }

    fn sensor(config: &str, pin: &FakePin) -> GpioSensor {
        let config: GpioConfig = toml::from_str(config).unwrap();
        let pin = pin.clone();
        GpioSensor::new(
            config,
            Box::new(move |_| Ok(Box::new(pin.clone()) as Box<dyn DigitalInput>)),
        )
    }

    #[test]
    fn level_mode_sends_zero_or_one() {
        let pin = FakePin::default();
        let mut s = sensor("pin = 17", &pin);
        assert_eq!(
            s.read().unwrap(),
            vec![Measurement {
                field: "gpio_level".into(),
                value: 0.0
            }]
        );
        pin.state.lock().unwrap().0 = true;
        assert_eq!(s.read().unwrap()[0].value, 1.0);
    }

    #[test]
    fn edges_mode_counts_per_interval() {
        let pin = FakePin::default();
        let mut s = sensor(
            "pin = 27\nmode = \"edges\"\nfields = { edges = \"pluie\" }",
            &pin,
        );
        pin.state.lock().unwrap().1 = 7;
        assert_eq!(
            s.read().unwrap(),
            vec![Measurement {
                field: "pluie".into(),
                value: 7.0
            }]
        );
        assert_eq!(
            s.read().unwrap()[0].value,
            0.0,
            "counted since the previous reading"
        );
    }

    #[test]
    fn failing_pin_is_an_error_then_reopened() {
        let pin = FakePin::default();
        let opens = Arc::new(AtomicU64::new(0));
        let (p, o) = (pin.clone(), Arc::clone(&opens));
        let config: GpioConfig = toml::from_str("pin = 4").unwrap();
        let mut s = GpioSensor::new(
            config,
            Box::new(move |_| {
                o.fetch_add(1, Ordering::SeqCst);
                Ok(Box::new(p.clone()) as Box<dyn DigitalInput>)
            }),
        );
        s.read().unwrap();
        pin.state.lock().unwrap().2 = true;
        assert!(matches!(s.read(), Err(SensorError::Bus { .. })));
        pin.state.lock().unwrap().2 = false;
        s.read().unwrap();
        assert_eq!(opens.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn open_failure_is_a_setup_error() {
        let config: GpioConfig = toml::from_str("pin = 4").unwrap();
        let mut s = GpioSensor::new(config, Box::new(|_| Err("not a Pi".into())));
        assert!(matches!(s.read(), Err(SensorError::Setup { .. })));
    }

    #[test]
    fn config_checks_and_fields() {
        let c: GpioConfig = toml::from_str("pin = 60").unwrap();
        assert_eq!(c.check().unwrap_err().0, "pin");
        let c: GpioConfig = toml::from_str("pin = 5\ndebounce_ms = 5000").unwrap();
        assert_eq!(c.check().unwrap_err().0, "debounce_ms");
        let c: GpioConfig =
            toml::from_str("pin = 5\nmode = \"edges\"\nedge = \"both\"\npull = \"up\"").unwrap();
        assert_eq!(c.active_fields(), vec![("edges", "gpio_edges")]);
        assert!(
            toml::from_str::<GpioConfig>("mode = \"level\"").is_err(),
            "pin is required"
        );
    }
}
