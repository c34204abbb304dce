//! The command line: the [`Cli`], its [`Command`]s, the dispatch, exit codes and the
//! output helpers the commands share. Each command group lives in its own file with its
//! arguments, handler and text output. Doc comments are the `--help` text.
//! This is the application layer, so handlers return `anyhow` errors with context.

mod config;
mod doctor;
mod login;
mod metrics;
mod queue;
mod sensors;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigSource};

pub use self::config::ConfigCommand;
pub use self::doctor::DoctorArgs;
pub use self::login::LoginArgs;
pub use self::queue::{ExportFormat, QueueCommand};
pub use self::sensors::SensorsCommand;

const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PROFILO_GATEWAY_GIT_COMMIT"),
    ")"
);

/// Field gateway for the Profilometre API: samples sensors, queues every reading in SQLite,
/// uploads them with JWT authentication, and loses nothing when the network goes away.
#[derive(Debug, Parser)]
#[command(name = "profilo-gateway", version = VERSION, propagate_version = true)]
pub struct Cli {
    /// Configuration file [default: /etc/profilo-gateway/config.toml if it exists, else
    /// built-in defaults]. Any key can be overridden with PROFILO_GATEWAY__SECTION__KEY.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "PROFILO_GATEWAY_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway in the foreground (what the systemd service runs). Stops cleanly on
    /// SIGTERM or SIGINT, leaving unsent readings queued; on SIGHUP re-reads the log level
    /// and the password sources.
    Run,
    /// Inspect and manage the reading queue. Works while the daemon runs.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Log in with the configured credentials, print the user's profile, when the tokens
    /// expire and the clock offset to the server. Never prints a token.
    Login(LoginArgs),
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Store the API password in the kernel keyring (read without echo, or from stdin when
    /// it is not a terminal). systemd credentials are the recommended production path.
    SetPassword,
    /// Remove the API password from the kernel keyring.
    DeletePassword,
    /// Sensor commands: supported types, I2C scan, one test reading.
    #[command(subcommand)]
    Sensors(SensorsCommand),
    /// Is this gateway healthy? Checks the configuration, the password source, the server
    /// (DNS, TCP, TLS, login), each sensor, the I2C buses, the clock, the disk, the queue
    /// and the service, each with its fix. Exits 1 when a check fails.
    Doctor(DoctorArgs),
    /// Print the state in the Prometheus text format (for node_exporter's textfile
    /// collector or Telegraf's inputs.exec). The daemon serves the same on `[metrics] listen`.
    Metrics,
}

impl Command {
    /// Whether this is the daemon (`run`), whose logs carry its errors and which keeps
    /// the stop signals and SIGPIPE for itself.
    pub fn is_daemon(&self) -> bool {
        matches!(self, Command::Run)
    }

    /// The log level: the configured one for the daemon; interactive commands log
    /// warnings only, so their output stays readable.
    pub fn log_level(&self, config: &Config) -> String {
        match self {
            Command::Run => config.log.level.clone(),
            // The token manager's warnings speak of the next attempt; a one-shot login
            // has none, and its error is printed on its own.
            // `doctor` reports every failure as a check of its own.
            Command::Login(_) | Command::Doctor(_) => "error".to_owned(),
            _ => "warn".to_owned(),
        }
    }
}

/// Exit code for configuration errors (sysexits EX_CONFIG); the unit does not restart on it.
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigFailure(pub crate::config::ConfigError);

pub fn load_config(cli_path: Option<PathBuf>) -> Result<Config, ConfigFailure> {
    Config::load(&ConfigSource::resolve(cli_path), std::env::vars_os()).map_err(ConfigFailure)
}

/// One line for an error and its causes, each said once. Many of our errors already
/// quote their source in their own message (`cannot open queue X: permission denied`), so
/// anyhow's `{:#}`, which appends every cause again, would repeat it.
pub fn error_report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Runs the parsed command line; logging is set up by the caller.
pub fn dispatch(cli: Cli, config: Config) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run => {
            let path = cli.config.clone();
            crate::daemon::run(&config, move || {
                load_config(path.clone()).map_err(|e| e.to_string())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue(q) => queue::run(q, &config),
        Command::Login(args) => login::login(&config, args.json),
        Command::Config(c) => config::run(c, &config),
        Command::SetPassword => login::set_password(&config),
        Command::DeletePassword => login::delete_password(&config),
        Command::Sensors(s) => sensors::run(s, &config),
        Command::Doctor(args) => doctor::doctor(&config, args.json),
        Command::Metrics => metrics::print(&config),
    }
}

/// A command that reports a configuration that does not load as its own result (`doctor`)
/// does so here and gives its exit code; `None` for the others (the caller exits 78).
pub fn report_config_failure(command: &Command, error: &ConfigFailure) -> Option<ExitCode> {
    match command {
        Command::Doctor(args) => Some(doctor::config_failure(&error.to_string(), args.json)),
        _ => None,
    }
}

/// Prints `value` as one line of JSON when `json`, else the text `text` makes.
fn print_json_or(
    json: bool,
    value: &impl serde::Serialize,
    text: impl FnOnce() -> String,
) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, value)?;
        writeln!(out)?;
    } else {
        out.write_all(text().as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod error_report_tests {
    use super::error_report;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open queue /q.db: {source}")]
    struct Open {
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let e = anyhow::Error::new(Open { source: io }).context("cannot start the queue");
        assert_eq!(
            error_report(&e),
            "cannot start the queue: cannot open queue /q.db: permission denied"
        );
        let plain = anyhow::anyhow!("no answer").context("login failed");
        assert_eq!(error_report(&plain), "login failed: no answer");
    }
}
