//! profilo-gateway: a Raspberry Pi field gateway for the Profilometre API.
//!
//! Data flows one way: sensors -> sampler -> queue -> uploader -> api -> server,
//! with auth beside the uploader. Nothing upstream knows about anything downstream.
//!
//! - [`config`]: typed settings, loaded from TOML and `PROFILO_GATEWAY__*` env, validated.
//! - [`reading`]: a reading (capture time + values) and its wire JSON.
//! - [`sensors`]: the `Sensor` trait and one module per sensor type.
//! - [`sampler`]: ticks, reads sensors, hands readings to the queue.
//! - [`queue`]: the SQLite store and forward: enqueue, peek, ack, dead letters, stats; `queue::writer` is the queue thread.
//! - [`api`]: the HTTP client for the server's endpoints, classifying every answer.
//! - [`auth`]: the token manager, JWT payload decoding, password sources.
//! - [`uploader`]: drains the queue through api + auth with the retry policy.
//! - [`backoff`]: exponential backoff with full jitter.
//! - [`daemon`]: wires the tasks together, shutdown, systemd notification.
//! - [`metrics`]: the state in Prometheus text, the `/metrics` + `/health` listener, progress rates.
//! - [`cli`]: the command line: one file per command group (arguments, handler, output).

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
