//! profilo-gateway: parse the command line, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use profilo_gateway::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run) {
        profilo_gateway::daemon::hold_stop_signals();
    }
    let config = match cli::load_config(cli.config.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("profilo-gateway: {e}");
            return ExitCode::from(cli::EXIT_CONFIG);
        }
    };
    // Interactive commands log warnings only, so their output stays readable.
    let level = match cli.command {
        Command::Run => config.log.level.clone(),
        _ => {
            // `queue export | head` should end quietly, as Unix tools do. The daemon keeps
            // Rust's default (SIGPIPE ignored) so a restarted journald cannot kill it.
            // SAFETY: setting a signal disposition before any thread is started.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            "warn".to_owned()
        }
    };
    if let Err(e) = profilo_gateway::logging::init(&level) {
        eprintln!("profilo-gateway: {e}");
        return ExitCode::from(cli::EXIT_CONFIG);
    }
    match cli::dispatch(cli, config) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("profilo-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}
