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
        // The token manager's warnings speak of the next attempt; a one-shot login has
        // none, and its error is printed on its own.
        Command::Login { .. } => "error".to_owned(),
        _ => "warn".to_owned(),
    };
    if !matches!(cli.command, Command::Run) {
        // `queue export | head` should end quietly, as Unix tools do. The daemon keeps
        // Rust's default (SIGPIPE ignored) so a restarted journald cannot kill it.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if let Err(e) = profilo_gateway::logging::init(&level) {
        eprintln!("profilo-gateway: {e}");
        return ExitCode::from(cli::EXIT_CONFIG);
    }
    if matches!(cli.command, Command::Run) {
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
    }
    // Said once: the daemon's logs (terminal or journal) carry its fatal error; a command
    // prints it on stderr like any Unix tool.
    let daemon = matches!(cli.command, Command::Run);
    match cli::dispatch(cli, config) {
        Ok(code) => code,
        Err(e) if daemon => {
            tracing::error!("{}", cli::error_report(&e));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("profilo-gateway: {}", cli::error_report(&e));
            ExitCode::FAILURE
        }
    }
}
