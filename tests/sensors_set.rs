//! The sensor set through the public API, against fake sysfs trees: one failing sensor
//! does not stop the others' fields, it is retried, and it recovers.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use profilo_gateway::sensors::{validate, SensorConfig, SensorSet};
use serde::Deserialize;

#[derive(Deserialize)]
struct Doc {
    sensors: Vec<SensorConfig>,
}

fn parse(src: &str) -> Vec<SensorConfig> {
    toml::from_str::<Doc>(src)
        .map(|d| d.sensors)
        .unwrap_or_else(|e| panic!("{e}"))
}

const W1_GOOD: &str =
    "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";

fn config(w1: &Path, iio: &Path) -> Vec<SensorConfig> {
    parse(&format!(
        r#"
[[sensors]]
type = "ds18b20"
base_path = "{}"
fields = {{ temperature = "temperature_eau" }}

[[sensors]]
type = "iio"
device = "{}"
fields = {{ temperature = "", pressure = "" }}
"#,
        w1.display(),
        iio.display()
    ))
}

fn fields(tick: &profilo_gateway::sensors::Tick) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = tick
        .measurements
        .iter()
        .map(|m| (m.field.clone(), m.value))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn a_failing_sensor_leaves_the_others_fields_and_recovers() {
    let w1 = tempfile::tempdir().unwrap();
    let probe = w1.path().join("28-0316a2795bff");
    fs::create_dir(&probe).unwrap();
    fs::write(probe.join("w1_slave"), W1_GOOD).unwrap();
    let iio = tempfile::tempdir().unwrap();
    fs::write(iio.path().join("name"), "dht11\n").unwrap();
    fs::write(iio.path().join("in_humidityrelative_input"), "48000\n").unwrap();

    let configs = config(w1.path(), iio.path());
    validate(&configs).unwrap();
    let interval = Duration::from_millis(5);
    let mut set = SensorSet::from_config(&configs, interval).unwrap();

    let tick = set.read_all();
    assert!(tick.failed.is_empty(), "{:?}", tick.failed);
    assert_eq!(
        fields(&tick),
        vec![
            ("humidite".into(), 48.0),
            ("temperature_eau".into(), 23.125)
        ]
    );

    // The probe is unplugged: the IIO humidity still goes out.
    fs::remove_file(probe.join("w1_slave")).unwrap();
    let tick = set.read_all();
    assert_eq!(fields(&tick), vec![("humidite".into(), 48.0)]);
    assert_eq!(tick.failed.len(), 1);
    let health = set.health();
    assert_eq!(health[0].consecutive_failures, 1);
    assert!(health[0]
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("disconnected"));
    let json = serde_json::to_value(&health).unwrap();
    assert_eq!(json[0]["state"], "failing");
    assert_eq!(json[1]["state"], "ok");

    // Plugged back: after the backoff it is read again.
    fs::write(probe.join("w1_slave"), W1_GOOD).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(interval);
        let tick = set.read_all();
        if tick.failed.is_empty() {
            assert_eq!(tick.measurements.len(), 2);
            break;
        }
        assert!(Instant::now() < deadline, "never recovered");
    }
    assert_eq!(
        serde_json::to_value(set.health()).unwrap()[0]["state"],
        "ok"
    );
}

#[test]
fn a_hanging_1_wire_read_does_not_block_the_other_sensor() {
    // w1_slave is a FIFO with no writer: opening it blocks, as a read of a wedged 1-Wire
    // bus does.
    let w1 = tempfile::tempdir().unwrap();
    let probe = w1.path().join("28-0316a2795bff");
    fs::create_dir(&probe).unwrap();
    let w1_slave = probe.join("w1_slave");
    let made = std::process::Command::new("mkfifo")
        .arg(&w1_slave)
        .status()
        .unwrap();
    assert!(made.success());
    let iio = tempfile::tempdir().unwrap();
    fs::write(iio.path().join("in_humidityrelative_input"), "48000\n").unwrap();
    let mut set =
        SensorSet::from_config(&config(w1.path(), iio.path()), Duration::from_millis(200)).unwrap();

    // The DS18B20 gets twice its 750 ms conversion; the humidity goes out regardless.
    let started = Instant::now();
    let tick = set.read_all();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for the hang"
    );
    assert_eq!(fields(&tick), vec![("humidite".into(), 48.0)]);
    let error = set.health()[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("did not finish within 1500 ms"), "{error}");
    // The next tick does not wait again, nor start a second read.
    let started = Instant::now();
    let tick = set.read_all();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(fields(&tick), vec![("humidite".into(), 48.0)]);
    let error = set.health()[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("previous read still running"), "{error}");

    // The bus answers (the blocked read gets a value, too late to be sent) and the
    // file is a plain one again: the next reads find the probe.
    let mut writer = fs::OpenOptions::new().write(true).open(&w1_slave).unwrap();
    let plain = probe.join("w1_slave.new");
    fs::write(&plain, W1_GOOD).unwrap();
    fs::rename(&plain, &w1_slave).unwrap();
    std::io::Write::write_all(
        &mut writer,
        W1_GOOD.replace("t=23125", "t=99000").as_bytes(),
    )
    .unwrap();
    drop(writer);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let tick = set.read_all();
        if tick.failed.is_empty() {
            assert_eq!(
                fields(&tick),
                vec![
                    ("humidite".into(), 48.0),
                    ("temperature_eau".into(), 23.125)
                ]
            );
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {tick:?}");
    }
}

#[test]
fn a_device_absent_at_start_is_not_a_configuration_error() {
    let configs = parse(
        r#"
[[sensors]]
type = "sht3x"
device = "/nonexistent/i2c-42"

[[sensors]]
type = "simulated"
fields = { temperature = "t_sim", humidity = "h_sim" }
"#,
    );
    let mut set = SensorSet::from_config(&configs, Duration::from_secs(1)).unwrap();
    let tick = set.read_all();
    assert_eq!(tick.failed.len(), 1);
    assert!(tick.measurements.iter().any(|m| m.field == "t_sim"));
}

#[test]
fn configuration_errors_name_the_entry_and_the_key() {
    let e = validate(&parse(
        "[[sensors]]\ntype = \"simulated\"\n[[sensors]]\ntype = \"mpu6050\"\nrange_g = 3\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("sensors[1] (type \"mpu6050\"): range_g:"),
        "{e}"
    );

    let e = toml::from_str::<Doc>("[[sensors]]\ntype = \"bme280\"\nbuss = 1\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("buss"), "{e}");
}

#[test]
fn an_iio_accelerometer_is_not_a_failure_before_its_first_sample() {
    // The thread starts at the first read, and the first tick takes the aggregate right
    // away: "no fields yet", not a failure (which would drop the first reading with
    // on_sensor_error = "skip").
    let iio = tempfile::tempdir().unwrap();
    fs::write(iio.path().join("name"), "adxl345\n").unwrap();
    for (axis, raw) in [("x", "0"), ("y", "0"), ("z", "256")] {
        fs::write(iio.path().join(format!("in_accel_{axis}_raw")), raw).unwrap();
    }
    fs::write(iio.path().join("in_accel_scale"), "0.038307\n").unwrap();
    let configs = parse(&format!(
        "[[sensors]]\ntype = \"iio\"\ndevice = \"{}\"\nrate_hz = 200\n",
        iio.path().display()
    ));
    let mut set = SensorSet::from_config(&configs, Duration::from_secs(1)).unwrap();
    let tick = set.read_all();
    assert!(tick.failed.is_empty(), "{tick:?}");
    assert!(tick.measurements.len() <= 1, "{tick:?}");
    std::thread::sleep(Duration::from_millis(200));
    let tick = set.read_all();
    assert!(tick.failed.is_empty(), "{tick:?}");
    assert_eq!(fields(&tick).len(), 1, "{tick:?}");
    assert_eq!(fields(&tick)[0].0, "accelerometre");
}

#[test]
fn an_iio_climate_device_and_an_adxl345_validate_together() {
    // The iio entry's default acceleration field gives way to the adxl345's.
    let configs = parse(
        "[[sensors]]\ntype = \"iio\"\ndevice = \"/sys/bus/iio/devices/iio:device0\"\n\
         [[sensors]]\ntype = \"adxl345\"\n",
    );
    validate(&configs).unwrap();
    // Written out, the same field twice is still refused.
    let e = validate(&parse(
        "[[sensors]]\ntype = \"iio\"\nfields = { acceleration = \"accelerometre\" }\n\
         [[sensors]]\ntype = \"adxl345\"\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("already sent by sensors[0] (iio)"), "{e}");
}
