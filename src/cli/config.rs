//! `config ...`: check the configuration and show the effective one.

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective one (file + env overrides +
    /// defaults). Secrets are never part of it: only where the password comes from.
    Check {
        /// Print the effective configuration as one JSON object instead of commented TOML.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(command: ConfigCommand, config: &Config) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Check { json } => check(config, json),
    }
}

fn check(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        // stdout stays one JSON object.
        for warning in config.warnings() {
            eprintln!("profilo-gateway: warning: {warning}");
        }
        println!("{}", serde_json::to_string_pretty(config)?);
    } else {
        println!("# configuration is valid; effective settings (file + environment + defaults):");
        for warning in config.warnings() {
            println!("# WARNING: {warning}");
        }
        print!("{}", config.to_toml());
        let pw = super::login::password_origin(config);
        println!("# password: {pw}");
    }
    Ok(ExitCode::SUCCESS)
}
