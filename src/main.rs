//! profilo-gateway: parse the command line, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use profilo_gateway::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = cli.command.is_daemon();
    if daemon {
        profilo_gateway::daemon::hold_stop_signals();
    }
    let config = match cli::load_config(cli.config.clone()) {
        Ok(c) => c,
        Err(e) => {
            if let Some(code) = cli::report_config_failure(&cli.command, &e) {
                return code;
            }
            eprintln!("profilo-gateway: {e}");
            return ExitCode::from(cli::EXIT_CONFIG);
        }
    };
    if !daemon {
        // `queue export | head` should end quietly, as Unix tools do. The daemon keeps
        // Rust's default (SIGPIPE ignored) so a restarted journald cannot kill it.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if let Err(e) = profilo_gateway::logging::init(&cli.command.log_level(&config)) {
        eprintln!("profilo-gateway: {e}");
        return ExitCode::from(cli::EXIT_CONFIG);
    }
    if daemon {
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
    }
    // Said once: the daemon's logs (terminal or journal) carry its fatal error; a command
    // prints it on stderr like any Unix tool.
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
