//! Logging setup: the journal under systemd, the terminal otherwise.
//!
//! [`init`] picks the output once, at start:
//!
//! - **journald** (through `tracing-journald`) when stderr *is* the journal,
//!   i.e. `JOURNAL_STREAM=<dev>:<inode>` names the device and inode of fd 2,
//!   as systemd sets it for `StandardError=journal` (the default). Every event
//!   field becomes a journal field with its name upper-cased and no prefix, so
//!   `info!(reading_id = 42, status = 201, pending = 7, "uploaded")` can be
//!   found with `journalctl -u profilo-gateway READING_ID=42`. Levels map to
//!   syslog priorities (`journalctl -p warning`).
//! - **stderr** (tracing-subscriber's `fmt`) otherwise, with colours only when
//!   stderr is a terminal. Fields print as `reading_id=42 status=201`.
//!
//! The filter is `RUST_LOG` when that is set and not empty, else the `level`
//! argument (from the config), both as tracing target directives: `info`,
//! `debug`, `warn,profilo_gateway=debug`, ...
//!
//! The dependencies' `log` records (reqwest, keyring) are bridged into the same
//! subscriber (tracing-subscriber's `tracing-log` feature: `try_init` installs the
//! `LogTracer`), so `RUST_LOG` governs them too and nothing they say escapes the
//! secrets check of the end-to-end tests. hyper-util logs through tracing already;
//! hyper itself is built without its (unstable) tracing.
//!
//! [`set_level`] changes the configured level of the running process (SIGHUP), through
//! tracing-subscriber's reload layer around the filter.
//!
//! Never log a token or a password: they are `secrecy::SecretString` in the
//! code, and nothing here could redact them afterwards. The one dependency target
//! that would print them, reqwest's `connection_verbose` byte dump (every header and
//! body, at trace level), is off in api.rs and filtered out here whatever the filter
//! says: see [`NEVER_LOGGED`].

use std::fs::File;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Layer, Registry};

/// The name journald files our lines under (`SYSLOG_IDENTIFIER=`, `journalctl -t`).
pub const SYSLOG_IDENTIFIER: &str = "profilo-gateway";

/// The environment variable that overrides the configured level.
pub const RUST_LOG: &str = "RUST_LOG";

/// Targets dropped whatever `RUST_LOG` or the config say. `reqwest::connect::verbose`
/// dumps every byte of a connection at trace level (the `Authorization: Bearer` header,
/// the login body with the password) once `ClientBuilder::connection_verbose(true)` is
/// set: api.rs never sets it, and this keeps a later change from leaking through
/// `RUST_LOG=trace`. No other target of our dependencies logs a header or a body
/// (reqwest logs URLs, which hold no secret: `api.base_url` may not carry credentials).
pub const NEVER_LOGGED: &[&str] = &["reqwest::connect::verbose"];

/// `filter` with [`NEVER_LOGGED`] switched off (the most specific target wins).
fn mask(filter: Targets) -> Targets {
    NEVER_LOGGED.iter().fold(filter, |f, target| {
        f.with_target(*target, tracing_subscriber::filter::LevelFilter::OFF)
    })
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// `RUST_LOG` holds something that is not a level or target directives.
    #[error(
        "invalid RUST_LOG={value:?}: {source} (use a level such as `info` or directives such as `warn,profilo_gateway=debug`, or unset RUST_LOG)"
    )]
    InvalidRustLog {
        value: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The configured level is not a valid filter.
    #[error(
        "invalid log level {value:?}: {source} (use one of error, warn, info, debug, trace, or directives such as warn,profilo_gateway=debug)"
    )]
    InvalidLevel {
        value: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The configured level holds a bare word that is not a level.
    #[error(
        "invalid log level {value:?}: {word:?} is not a level (use one of off, error, warn, info, debug, trace, or `target=level` directives)"
    )]
    UnknownLevel { value: String, word: String },
    /// A global subscriber was installed before (`init` called twice).
    #[error("logging is already initialised: {0}")]
    AlreadyInitialised(String),
}

/// The running filter, for [`set_level`]; set by [`init`].
static FILTER: OnceLock<reload::Handle<Targets, Registry>> = OnceLock::new();

/// Where the log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The systemd journal, with structured fields.
    Journald,
    /// stderr, human-readable; `ansi` when stderr is a terminal.
    Stderr { ansi: bool },
}

/// Sets up the global tracing subscriber; call once, early in `main`.
///
/// `level` is the configured filter (e.g. `"info"`); `RUST_LOG` wins when set.
/// When stderr is the journal but the journal socket cannot be opened, this
/// falls back to stderr (which the journal still captures, without fields)
/// and says so in a warning.
pub fn init(level: &str) -> Result<(), LoggingError> {
    let rust_log = std::env::var(RUST_LOG).ok();
    let output = detect_output();
    let mut journald_failed = None;
    let (filter, handle) = reload::Layer::new(mask(build_filter(level, rust_log.as_deref())?));

    let result = match output {
        Output::Journald => match journald_layer() {
            Ok(layer) => tracing_subscriber::registry()
                .with(layer.with_filter(filter))
                .try_init(),
            Err(e) => {
                journald_failed = Some(e);
                stderr_registry(filter, false).try_init()
            }
        },
        Output::Stderr { ansi } => stderr_registry(filter, ansi).try_init(),
    };
    result.map_err(|e| LoggingError::AlreadyInitialised(e.to_string()))?;
    let _ = FILTER.set(handle);

    if let Some(e) = journald_failed {
        tracing::warn!(
            error = %e,
            "JOURNAL_STREAM is set but the journal socket /run/systemd/journal/socket cannot be used; logging to stderr without structured fields"
        );
    }
    Ok(())
}

/// Decides the output from the environment and the file behind fd 2.
pub fn detect_output() -> Output {
    let stderr = std::io::stderr();
    let identity = stderr
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(File::from)
        .and_then(|f| f.metadata().ok())
        .map(|m| (m.dev(), m.ino()));
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    match identity {
        Some((dev, ino)) if journal_stream_matches(journal_stream.as_deref(), dev, ino) => {
            Output::Journald
        }
        _ => Output::Stderr {
            ansi: stderr.is_terminal(),
        },
    }
}

/// True when `JOURNAL_STREAM` (`"<dev>:<inode>"`, decimal) names `dev` and `ino`.
///
/// A child started from a service inherits `JOURNAL_STREAM` even when its own
/// stderr is redirected elsewhere, hence the comparison with fd 2.
pub fn journal_stream_matches(value: Option<&str>, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.and_then(|v| v.trim().split_once(':')) else {
        return false;
    };
    matches!(
        (d.parse::<u64>(), i.parse::<u64>()),
        (Ok(d), Ok(i)) if d == dev && i == ino
    )
}

/// The filter: `rust_log` when set and not blank, else `level`.
pub fn build_filter(level: &str, rust_log: Option<&str>) -> Result<Targets, LoggingError> {
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(value) => value
            .parse::<Targets>()
            .map_err(|source| LoggingError::InvalidRustLog {
                value: value.to_owned(),
                source,
            }),
        None => {
            let value = level.trim();
            let value = if value.is_empty() { "info" } else { value };
            let invalid = |source| LoggingError::InvalidLevel {
                value: level.to_owned(),
                source,
            };
            // A bare word parses as a target name, so a misspelt
            // level ("verbose") would silently log nothing else; in the
            // config, a directive without `=` must be a level.
            let bare_word = value
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty() && !d.contains('=') && !d.contains('['))
                .find(|d| {
                    d.parse::<tracing_subscriber::filter::LevelFilter>()
                        .is_err()
                });
            if let Some(word) = bare_word {
                return Err(LoggingError::UnknownLevel {
                    value: level.to_owned(),
                    word: word.to_owned(),
                });
            }
            value.parse::<Targets>().map_err(invalid)
        }
    }
}

fn journald_layer() -> std::io::Result<tracing_journald::Layer> {
    Ok(tracing_journald::layer()?
        // `reading_id` becomes READING_ID, not F_READING_ID.
        .with_field_prefix(None)
        .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned()))
}

fn stderr_registry(filter: reload::Layer<Targets, Registry>, ansi: bool) -> impl SubscriberInitExt {
    tracing_subscriber::registry().with(fmt_layer(std::io::stderr, ansi).with_filter(filter))
}

/// What [`set_level`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelChange {
    /// The filter is now this.
    Set(String),
    /// `RUST_LOG` is set: it still wins over the configured level.
    RustLogWins(String),
}

/// Replaces the configured level of the running process; `RUST_LOG`, when set, still
/// wins (as at start). Fails, changing nothing, on an invalid level.
pub fn set_level(level: &str) -> Result<LevelChange, LoggingError> {
    let rust_log = std::env::var(RUST_LOG)
        .ok()
        .filter(|v| !v.trim().is_empty());
    if let Some(value) = rust_log {
        return Ok(LevelChange::RustLogWins(value));
    }
    let filter = build_filter(level, None)?;
    let text = filter.to_string();
    if let Some(handle) = FILTER.get() {
        handle
            .reload(mask(filter))
            .map_err(|e| LoggingError::AlreadyInitialised(e.to_string()))?;
    }
    Ok(LevelChange::Set(text))
}

/// The human-readable layer, generic over its writer so tests can capture it.
fn fmt_layer<S, W>(writer: W, ansi: bool) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn journal_stream_must_match_device_and_inode() {
        assert!(journal_stream_matches(Some("8:12345"), 8, 12345));
        assert!(journal_stream_matches(Some(" 8:12345\n"), 8, 12345));
        assert!(!journal_stream_matches(Some("8:12345"), 8, 12346));
        assert!(!journal_stream_matches(Some("9:12345"), 8, 12345));
        assert!(!journal_stream_matches(None, 8, 12345));
        assert!(!journal_stream_matches(Some(""), 0, 0));
        assert!(!journal_stream_matches(Some("8"), 8, 0));
        assert!(!journal_stream_matches(Some("a:b"), 0, 0));
        assert!(!journal_stream_matches(Some("8:-1"), 8, 0));
    }

    #[test]
    fn rust_log_overrides_level() {
        let f = build_filter("info", Some("debug")).unwrap();
        assert_eq!(f.to_string(), "debug");
        let f = build_filter("warn", None).unwrap();
        assert_eq!(f.to_string(), "warn");
        // An empty RUST_LOG counts as unset.
        let f = build_filter("warn", Some("  ")).unwrap();
        assert_eq!(f.to_string(), "warn");
        let f = build_filter("", None).unwrap();
        assert_eq!(f.to_string(), "info");
        let f = build_filter("warn,profilo_gateway=debug", None).unwrap();
        assert!(f.to_string().contains("profilo_gateway=debug"));
    }

    #[test]
    fn bad_filters_name_their_source() {
        let e = build_filter("info", Some("profilo_gateway=loud")).unwrap_err();
        assert!(matches!(e, LoggingError::InvalidRustLog { .. }), "{e:?}");
        assert!(e.to_string().contains("RUST_LOG"), "{e}");
        let e = build_filter("chatty", None).unwrap_err();
        assert!(matches!(e, LoggingError::UnknownLevel { .. }), "{e:?}");
        assert!(e.to_string().contains("log level"), "{e}");
        let e = build_filter("info,profilo_gateway=loud", None).unwrap_err();
        assert!(matches!(e, LoggingError::InvalidLevel { .. }), "{e:?}");
        // Levels are case-insensitive, targets with levels pass.
        build_filter("WARN", None).unwrap();
        build_filter("off", None).unwrap();
        build_filter("warn,profilo_gateway::uploader=trace", None).unwrap();
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn stderr_output_keeps_structured_fields_and_no_ansi() {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::registry().with(
            fmt_layer(move || writer.clone(), false)
                .with_filter(build_filter("info", None).unwrap()),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(reading_id = 42, status = 201, pending = 7, "uploaded");
            tracing::debug!("filtered out");
        });
        let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert!(out.contains("uploaded"), "{out}");
        assert!(out.contains("reading_id=42"), "{out}");
        assert!(out.contains("status=201"), "{out}");
        assert!(out.contains("pending=7"), "{out}");
        assert!(!out.contains("filtered out"), "{out}");
        assert!(
            !out.contains('\u{1b}'),
            "no ANSI escapes off a terminal: {out:?}"
        );
    }

    #[test]
    fn a_reloaded_filter_takes_effect_at_once() {
        let capture = Capture::default();
        let writer = capture.clone();
        let (filter, handle) = reload::Layer::new(build_filter("warn", None).unwrap());
        let subscriber = tracing_subscriber::registry()
            .with(fmt_layer(move || writer.clone(), false).with_filter(filter));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before the reload");
            handle.reload(build_filter("debug", None).unwrap()).unwrap();
            tracing::debug!("after the reload");
        });
        let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert!(!out.contains("before the reload"), "{out}");
        assert!(out.contains("after the reload"), "{out}");
    }

    #[test]
    fn detect_output_ignores_a_stale_journal_stream() {
        // Under `cargo test` fd 2 is never the journal with inode 1 on device 1.
        // (Reading the env here is fine; it is not modified by any test.)
        assert!(!journal_stream_matches(Some("1:1"), 0, 0));
        if std::env::var_os("JOURNAL_STREAM").is_none() {
            assert!(matches!(detect_output(), Output::Stderr { .. }));
        }
    }
}
