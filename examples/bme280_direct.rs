//! Hardware demo (needs a BME280 on /dev/i2c-1 at 0x76): the driver used directly, over
//! linux-embedded-hal's I2cdev, as any embedded-hal 1.0 driver is.
//!
//! ```sh
//! cargo run --example bme280_direct -- /dev/i2c-1 0x76
//! ```

use linux_embedded_hal::I2cdev;
use profilo_gateway::sensors::climate::bme280::Bme280;
use profilo_gateway::sensors::i2c::StdDelay;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "/dev/i2c-1".into());
    let address = match args.next() {
        Some(a) => u8::from_str_radix(a.trim_start_matches("0x"), 16)?,
        None => 0x76,
    };
    let i2c = I2cdev::new(&path)?;
    let mut bme = Bme280::new(i2c, address);
    let id = bme
        .init(&mut StdDelay)
        .map_err(|e| anyhow::anyhow!("{path} 0x{address:02x}: {e}"))?;
    println!("chip id 0x{id:02x}, calibration {:?}", bme.calibration());
    for _ in 0..5 {
        let v = bme
            .measure(&mut StdDelay)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "{:.2} °C  {:.2} hPa  {}",
            v.temperature,
            v.pressure / 100.0,
            v.humidity
                .map(|h| format!("{h:.2} %RH"))
                .unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    Ok(())
}
