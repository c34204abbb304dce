//! `metrics`: the state in the Prometheus text format, on stdout, for node_exporter's
//! textfile collector (`profilo-gateway metrics > DIR/profilo.prom.$$ && mv ...`) and
//! Telegraf's `inputs.exec` (`data_format = "prometheus"`).

use std::io::Write;
use std::process::ExitCode;

use crate::clock::Clock;
use crate::config::Config;

pub(super) fn print(config: &Config) -> anyhow::Result<ExitCode> {
    let stats = super::queue::current_stats(&config.queue.path)?;
    let clock = Clock::from_env().map_err(anyhow::Error::msg)?;
    let now_ms = clock.now_ms();
    let ctx = crate::metrics::Context {
        now_ms,
        clock_synchronized: clock.trusted(now_ms),
    };
    std::io::stdout()
        .lock()
        .write_all(crate::metrics::render(&stats, ctx).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
