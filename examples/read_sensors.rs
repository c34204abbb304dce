//! Hardware demo (needs a Pi with sensors): reads the `[[sensors]]` of a TOML file every
//! second through a `SensorSet` and prints each tick and the health.
//!
//! ```sh
//! cargo run --example read_sensors -- sensors.toml
//! ```
//!
//! with e.g. `sensors.toml`:
//!
//! ```toml
//! [[sensors]]
//! type = "bme280"
//! bus = 1
//!
//! [[sensors]]
//! type = "adxl345"
//! aggregate = "peak"
//! ```

use std::time::Duration;

use profilo_gateway::sensors::{SensorConfig, SensorSet};
use serde::Deserialize;

#[derive(Deserialize)]
struct Doc {
    sensors: Vec<SensorConfig>,
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: read_sensors <file.toml>"))?;
    let doc: Doc = toml::from_str(&std::fs::read_to_string(&path)?)?;
    let interval = Duration::from_secs(1);
    let mut set = SensorSet::from_config(&doc.sensors, interval)?;
    for _ in 0..10 {
        std::thread::sleep(interval);
        let tick = set.read_all();
        for m in &tick.measurements {
            print!("{}={} ", m.field, m.value);
        }
        println!("failed={:?}", tick.failed);
    }
    println!("{}", serde_json::to_string_pretty(&set.health())?);
    Ok(())
}
