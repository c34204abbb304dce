//! `sensors ...`: the arguments; the handlers are in `crate::cli_sensors`.

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum SensorsCommand {
    /// Supported sensor types and their settings.
    List {
        /// Print one JSON array: each type with its description and settings (name,
        /// default, meaning) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Probe an I2C bus and list the addresses that answer, with the likely chip.
    Scan {
        /// I2C bus number (/dev/i2c-N).
        #[arg(long, default_value_t = 1)]
        bus: u8,
        /// Print one JSON array of the devices that answered (address, likely chips)
        /// instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Take one reading from each configured sensor, with errors spelled out.
    Read {
        /// Print one JSON array: each configured sensor with its values or its error,
        /// instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(command: SensorsCommand, config: &Config) -> anyhow::Result<ExitCode> {
    match command {
        SensorsCommand::List { json } => crate::cli_sensors::list(json)?,
        SensorsCommand::Scan { bus, json } => crate::cli_sensors::scan(bus, json)?,
        SensorsCommand::Read { json } => crate::cli_sensors::read(&config.sensors, json)?,
    }
    Ok(ExitCode::SUCCESS)
}
