//! The command line. Doc comments are the `--help` text; one handler per subcommand.
//! This is the application layer, so handlers return `anyhow` errors with context.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, ConfigSource};
use crate::queue::Queue;

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
    /// SIGTERM or SIGINT, leaving unsent readings queued.
    Run,
    /// Inspect and manage the reading queue. Works while the daemon runs.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Log in with the configured credentials, print the user's profile, when the tokens
    /// expire and the clock offset to the server. Never prints a token.
    Login {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
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
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Counts (pending, dead, dropped, uploaded), capture-time range, database size and the
    /// daemon's state. With --json, stdout holds one JSON object.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// The oldest pending readings, as they will be sent.
    List {
        /// How many readings to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Readings the server refused for good, with its status and answer.
    Dead {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in the pending queue (all of them, or one with --id).
    RetryDead {
        /// The dead letter's id (see `queue dead`).
        #[arg(long)]
        id: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Delete dead letters (--dead) or everything, pending readings included (--all).
    /// Refuses without --yes.
    Purge {
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        dead: bool,
        #[arg(long)]
        all: bool,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stream pending (or dead) readings as JSON lines or CSV.
    Export {
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Write to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Export the dead letters instead of the pending readings.
        #[arg(long)]
        dead: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective one (file + env overrides +
    /// defaults). Secrets are never part of it: only where the password comes from.
    Check {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SensorsCommand {
    /// Supported sensor types and their settings.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Probe an I2C bus and list the addresses that answer, with the likely chip.
    Scan {
        /// I2C bus number (/dev/i2c-N).
        #[arg(long, default_value_t = 1)]
        bus: u8,
        #[arg(long)]
        json: bool,
    },
    /// Take one reading from each configured sensor, with errors spelled out.
    Read {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    #[arg(long)]
    pub json: bool,
}

/// Exit code for configuration errors (sysexits EX_CONFIG); the unit does not restart on it.
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigFailure(pub crate::config::ConfigError);

pub fn load_config(cli_path: Option<PathBuf>) -> Result<Config, ConfigFailure> {
    Config::load(&ConfigSource::resolve(cli_path), std::env::vars_os()).map_err(ConfigFailure)
}

/// Runs the parsed command line; logging is set up by the caller.
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

pub fn dispatch(cli: Cli, config: Config) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run => {
            crate::daemon::run(&config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue(q) => queue_command(q, &config),
        Command::Login { json } => crate::cli_login::login(&config, json),
        Command::Config(ConfigCommand::Check { json }) => config_check(&config, json),
        Command::SetPassword => crate::cli_login::set_password(&config),
        Command::DeletePassword => crate::cli_login::delete_password(&config),
        Command::Sensors(s) => sensors_command(s, &config),
    }
}

fn sensors_command(command: SensorsCommand, config: &Config) -> anyhow::Result<ExitCode> {
    match command {
        SensorsCommand::List { json } => crate::cli_sensors::list(json)?,
        SensorsCommand::Scan { bus, json } => crate::cli_sensors::scan(bus, json)?,
        SensorsCommand::Read { json } => crate::cli_sensors::read(&config.sensors, json)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn config_check(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
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
        let pw = crate::cli_login::password_origin(config);
        println!("# password: {pw}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn print_json_or(
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

fn queue_command(command: QueueCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let path = &config.queue.path;
    match command {
        QueueCommand::Stats { json } => {
            let stats = match Queue::open_read_only(path) {
                Ok(q) => q.stats()?,
                Err(crate::queue::QueueError::Missing(_)) => crate::queue::Stats {
                    path: path.display().to_string(),
                    ..Default::default()
                },
                Err(e) => return Err(e.into()),
            };
            print_json_or(json, &stats, || crate::cli_queue::stats_text(&stats))
        }
        QueueCommand::List { limit, json } => {
            let q = Queue::open_read_only(path)?;
            let rows = q.peek(0, limit)?;
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|s| serde_json::json!({"id": s.id, "reading": s.reading.to_wire_json()}))
                .collect();
            print_json_or(json, &items, || crate::cli_queue::list_text(&rows))
        }
        QueueCommand::Dead { limit, json } => {
            let q = Queue::open_read_only(path)?;
            let dead = q.dead_letters(limit)?;
            print_json_or(json, &dead, || crate::cli_queue::dead_text(&dead))
        }
        QueueCommand::RetryDead { id, json } => {
            let q = Queue::open_existing(&config.queue)?;
            let n = q.retry_dead(id)?;
            if id.is_some() && n == 0 {
                bail!(
                    "no dead letter with id {} (see `queue dead`)",
                    id.unwrap_or_default()
                );
            }
            print_json_or(json, &serde_json::json!({"requeued": n}), || {
                format!("{n} dead letter(s) put back in the queue\n")
            })
        }
        QueueCommand::Purge {
            dead: _,
            all,
            yes,
            json,
        } => {
            if !yes {
                let what = if all {
                    "every pending reading and dead letter"
                } else {
                    "every dead letter"
                };
                bail!("this deletes {what} for good; add --yes to confirm");
            }
            let q = Queue::open_existing(&config.queue)?;
            let n = q.purge(all)?;
            print_json_or(json, &serde_json::json!({"deleted": n}), || {
                format!("{n} deleted\n")
            })
        }
        QueueCommand::Export {
            format,
            output,
            dead,
        } => {
            let q = Queue::open_read_only(path)?;
            let mut sink: Box<dyn Write> = match &output {
                Some(file) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(file)
                        .with_context(|| format!("cannot create {}", file.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let n = crate::cli_queue::export(&q, format, dead, &mut sink)?;
            sink.flush()?;
            if let Some(file) = output {
                eprintln!("{n} reading(s) written to {}", file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
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
