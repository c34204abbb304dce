//! profilo-gateway: a Raspberry Pi field gateway for the Profilometre API.
//!
//! Data flows one way: sensors -> sampler -> queue -> uploader -> api -> server, with
//! auth beside the uploader. Nothing upstream knows about anything downstream, and no
//! two top-level modules import each other. The map, one line a module:
//!
//! - [`config`]: typed settings from TOML and `PROFILO_GATEWAY__*`, validated with bounds
//!   (`config::validate`; `config::parse_error`: a TOML error without its source line).
//! - [`reading`]: a reading (capture time + values) and its wire JSON.
//! - [`clock`]: boot id, boottime, build-date floor, sync detection, trust in the server's clock.
//! - [`sensors`]: the `Sensor` trait, its errors and the set read at each tick:
//!   - `sensors::config`: the `[[sensors]]` entry enum, the one list of types;
//!   - `sensors::build`: entries to sensors, without opening devices;
//!   - `sensors::set`: every sensor once per tick, with per-sensor health and backoff;
//!   - `sensors::worker`: reads that can hang, on their own thread with a deadline;
//!   - `sensors::i2c`: bus selection, chip address (`target`), the lazy driver and error glue (`driver`), register access (`registers`);
//!   - `sensors::climate`: BME280, SHT3x, SHT4x (and what Sensirion chips share);
//!   - `sensors::accel`: the accelerometer thread, its aggregate, the drivers' error, ADXL345, MPU-6050;
//!   - `sensors::sysfs`: DS18B20 (1-Wire) and IIO devices;
//!   - `sensors::gpio`, `sensors::simulated`: a digital input; random plausible values.
//! - [`sampler`]: ticks, reads the sensors, stamps the capture time, hands readings to the queue.
//! - [`queue`]: the SQLite store and forward (`Queue`: enqueue, peek, ack):
//!   - `queue::schema`: open, check, migrate, move a corrupt file aside;
//!   - `queue::bounds`: `max_readings`, `max_bytes`, the overflow policy;
//!   - `queue::layout`: field names stored once per layout, rows keep their values;
//!   - `queue::wal_index`: SQLite's wal-index on tmpfs (`/dev/shm`), off the card;
//!   - `queue::redate`: readings captured before the clock was synchronised;
//!   - `queue::dead`: dead letters and quarantine;
//!   - `queue::stats`: what `queue stats` shows;
//!   - `queue::runtime`: the per-second status in a file under /run, not on the card;
//!   - `queue::writer`: the queue thread, the one writer, group commit (`writer::commit`:
//!     one write of readings, acks and status; `writer::thread_health`: its heartbeat and faults);
//!   - `queue::health`: whether the open file is still the queue (deleted, replaced, corrupt);
//!   - `queue::lock`: one daemon per queue (flock).
//! - [`api`]: the HTTP client of shared/API.md (`api::classify`: what every answer means;
//!   `api::summary`: error bodies a person can read; `api::lanes`: a connection per request
//!   in flight, none opened idle).
//! - [`tls`]: the TLS client configuration: CA file, pinned self-signed certificates, client certificates, errors explained.
//! - [`auth`]: the token manager (`auth::manager`), JWT claims (`auth::jwt`), password sources (`auth::password`).
//! - [`uploader`]: the event loop that drains the queue:
//!   - `uploader::drain`: the pure state machine (what to send next, what an answer settles);
//!   - `uploader::concurrency`: the adaptive (AIMD) request limit;
//!   - `uploader::failure_log`: a run of identical failures as one line, a count, an end.
//! - [`backoff`]: the one exponential backoff (full jitter, or none for local retries).
//! - [`watchdog`]: heartbeats, stall tracking, the one sleep-until-stop.
//! - [`systemd`]: sd_notify (READY, STATUS, WATCHDOG).
//! - [`logging`]: the journal or the terminal, the filter and its reload on SIGHUP.
//! - [`daemon`]: `serve(deps, shutdown)` wires the tasks; `run` adds the signals.
//! - [`metrics`]: what monitoring reads: the state in Prometheus text, progress rates:
//!   - `metrics::http`: the `[metrics] listen` responder (`/metrics`, `/health`);
//!   - `metrics::rate`: taken, uploaded, upload rate, time to an empty queue (pure);
//!   - `metrics::summary`: the daemon's line a minute.
//! - [`cli`]: the command line, one file per command (its arguments, handler and output);
//!   `cli::doctor` has its checks in `doctor::network` and `doctor::local`.

pub mod api;
pub mod auth;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod logging;
pub mod metrics;
pub mod queue;
pub mod reading;
pub mod sampler;
pub mod sensors;
pub mod systemd;
pub mod tls;
pub mod uploader;
pub mod watchdog;
