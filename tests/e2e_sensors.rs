//! The daemon with one sensor failing keeps delivering the other sensors' fields, and
//! shows the failing one in `queue stats`.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_failing_sensor_does_not_stop_the_others() {
    let server = TestServer::start(ServerOptions::default());
    server.create_user(DEFAULT_USERNAME, DEFAULT_PASSWORD);
    let mut gw = Gateway::new(&server.base_url(), GatewayOptions::default());
    let missing_device = gw.dir().join("no-such-iio-device");
    // The generated config ends with a simulated sensor; replace the sensors with one that
    // sends temperature only and an IIO humidity sensor whose device does not exist.
    let base = gw.default_config();
    let head = base
        .split("[[sensors]]")
        .next()
        .unwrap_or_default()
        .to_owned();
    gw.set_config(&format!(
        "{head}\
         [[sensors]]\n\
         type = \"simulated\"\n\
         fields = {{ temperature = \"temperature\", humidity = \"\", acceleration = \"\" }}\n\
         \n\
         [[sensors]]\n\
         type = \"iio\"\n\
         device = {device:?}\n\
         fields = {{ humidity = \"humidite\", temperature = \"\", pressure = \"\", acceleration = \"\" }}\n",
        device = missing_device.to_string_lossy(),
    ));
    gw.spawn();
    wait_until("10 readings at the server", Duration::from_secs(30), || {
        server.readings().len() >= 10
    });
    gw.assert_running();
    let stats = gw.queue_stats();
    let exit = gw.sigterm(Duration::from_secs(5));
    assert!(
        exit.status.success(),
        "exit {:?}\n{}",
        exit.status,
        gw.log_text()
    );

    let readings = server.readings();
    assert!(
        readings
            .iter()
            .all(|r| r.temperature.is_some() && r.humidite.is_none()),
        "want temperature from the working sensor and no humidity: {readings:?}"
    );
    let sensors = stats["sensors"].as_array().cloned().unwrap_or_default();
    let iio = sensors
        .iter()
        .find(|s| s["type"] == "iio")
        .unwrap_or_else(|| panic!("no iio sensor in queue stats: {stats:#}"));
    assert_eq!(iio["state"], "failing", "{stats:#}");
    assert!(
        iio["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("no-such-iio-device"),
        "the error should name the device: {iio:#}"
    );
    let simulated = sensors.iter().find(|s| s["type"] == "simulated");
    assert_eq!(
        simulated.map(|s| &s["state"]),
        Some(&serde_json::json!("ok")),
        "{stats:#}"
    );
}
