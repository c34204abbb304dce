//! `queue ...`: inspect and manage the reading queue; its arguments, handler, text output
//! and export.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};

use super::print_json_or;
use crate::config::Config;
use crate::metrics::rate::Progress;
use crate::queue::{DeadLetter, Queue, QueueError, Stats, Stored};

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Counts (pending, dead, dropped, uploaded), capture-time range, database size and the
    /// daemon's state. With --json, stdout holds one JSON object.
    Stats {
        /// Print one JSON object (pending, dead, in_flight, uploaded_total, dropped_total,
        /// db_bytes, ... and the daemon's sensors, auth and uploads state) instead of text.
        #[arg(long)]
        json: bool,
        /// Redraw every second, with the upload rate and the time to an empty queue,
        /// until interrupted (Ctrl-C).
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// The oldest pending readings, as they will be sent.
    List {
        /// How many readings to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print one JSON array of {"id", "reading"} (the reading as it will be sent)
        /// instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Readings the server refused for good, with its status and answer.
    Dead {
        /// How many dead letters to show, oldest first.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print one JSON array of dead letters (id, reading_id, captured_at, fields,
        /// status, response, failed_at) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in the pending queue (all of them, or one with --id).
    RetryDead {
        /// The dead letter's id (see `queue dead`).
        #[arg(long)]
        id: Option<i64>,
        /// Print {"requeued": N} instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete dead letters (--dead) or everything, pending readings included (--all).
    /// Refuses without --yes.
    Purge {
        /// Delete the dead letters only.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        dead: bool,
        /// Delete everything: pending readings (never uploaded) and dead letters.
        #[arg(long)]
        all: bool,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
        /// Print {"deleted": N} instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stream pending (or dead) readings as JSON lines or CSV.
    Export {
        /// jsonl: one JSON object a line (a reading as it will be sent, with its queue id;
        /// or a dead letter); csv: RFC 4180, one row per field (id,timestamp,field,value,
        /// and status,response,failed_at for dead letters).
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

/// How `queue export` writes readings (see its `--format` help).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

pub(super) fn run(command: QueueCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let path = &config.queue.path;
    match command {
        QueueCommand::Stats {
            json: _,
            watch: true,
        } => watch(path),
        QueueCommand::Stats { json, watch: false } => {
            let stats = current_stats(path)?;
            print_json_or(json, &stats, || stats_text(&stats))
        }
        QueueCommand::List { limit, json } => {
            let q = Queue::open_read_only(path)?;
            let rows = q.peek(0, limit)?;
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|s| serde_json::json!({"id": s.id, "reading": s.reading.to_wire_json()}))
                .collect();
            print_json_or(json, &items, || list_text(&rows))
        }
        QueueCommand::Dead { limit, json } => {
            let q = Queue::open_read_only(path)?;
            let dead = q.dead_letters(limit)?;
            print_json_or(json, &dead, || dead_text(&dead))
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
            let mut progress = std::io::stderr().is_terminal().then(|| {
                let stats = q.stats().unwrap_or_default();
                ExportProgress::new(if dead { stats.dead } else { stats.pending })
            });
            let n = export(&q, format, dead, &mut sink, progress.as_mut())?;
            sink.flush()?;
            if let Some(p) = progress {
                p.finish();
            }
            if let Some(file) = output {
                eprintln!("{n} reading(s) written to {}", file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The queue's figures as `queue stats` shows them (zeros while the queue does not
/// exist): the one place the commands (`queue stats`, `doctor`, `metrics`) read them.
pub(super) fn current_stats(path: &Path) -> anyhow::Result<Stats> {
    match Queue::open_read_only(path) {
        Ok(q) => Ok(q.stats()?),
        Err(QueueError::Missing(_)) => Ok(Stats {
            path: path.display().to_string(),
            ..Default::default()
        }),
        Err(e) => Err(e.into()),
    }
}

/// How many seconds of samples `--watch` takes its rates over: one second is noise.
const WATCH_WINDOW: usize = 10;

/// `queue stats --watch`: the text of `queue stats`, redrawn every second, with the rates.
fn watch(path: &Path) -> anyhow::Result<ExitCode> {
    let mut samples: std::collections::VecDeque<(Instant, Stats)> = Default::default();
    loop {
        let stats = current_stats(path)?;
        let now = Instant::now();
        let rate = match samples.front() {
            Some((at, before)) => Progress::between(before, &stats, now - *at).rate_line(),
            None => "upload rate: measuring...".to_owned(),
        };
        let mut out = std::io::stdout().lock();
        // Home and clear, as watch(1) does; the terminal keeps no scrollback of it.
        writeln!(
            out,
            "\x1b[H\x1b[2J{}{:<16}{rate}",
            stats_text(&stats),
            "progress:"
        )?;
        out.flush()?;
        drop(out);
        samples.push_back((now, stats));
        if samples.len() > WATCH_WINDOW {
            samples.pop_front();
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `queue export`'s progress on stderr (only when stderr is a terminal): count, rate
/// and time left, redrawn in place at most every 200 ms.
struct ExportProgress {
    total: u64,
    started: Instant,
    drawn: Option<Instant>,
}

impl ExportProgress {
    fn new(total: u64) -> Self {
        ExportProgress {
            total,
            started: Instant::now(),
            drawn: None,
        }
    }

    fn update(&mut self, done: u64) {
        if self
            .drawn
            .is_some_and(|t| t.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.drawn = Some(Instant::now());
        eprint!(
            "\r{}\x1b[K",
            progress_line(done, self.total, self.started.elapsed())
        );
    }

    fn finish(self) {
        if self.drawn.is_some() {
            eprintln!();
        }
    }
}

/// `1200/5000 readings (24%), 600/s, 6s left`.
fn progress_line(done: u64, total: u64, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    let total = total.max(done);
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    let left = if rate > 0.0 {
        let secs = ((total - done) as f64 / rate).ceil() as u64;
        format!(
            ", {} left",
            humantime::format_duration(Duration::from_secs(secs))
        )
    } else {
        String::new()
    };
    format!("{done}/{total} readings ({percent}%), {rate:.0}/s{left}")
}

fn stats_text(s: &Stats) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = format!(
        "queue:          {}\n\
         pending:        {}\n\
         in flight:      {}\n\
         dead letters:   {}\n\
         uploaded total: {}\n\
         dropped total:  {}\n\
         dead evicted:   {}\n\
         oldest capture: {}\n\
         newest capture: {}\n\
         database size:  {} bytes\n\
         last upload:    {}\n\
         last error:     {}\n\
         uploader:       {}\n\
         concurrency:    {}\n\
         wal-index:      {}\n\
         daemon seen:    {}\n",
        s.path,
        s.pending,
        s.in_flight,
        s.dead,
        s.uploaded_total,
        s.dropped_total,
        s.dead_evicted_total,
        opt(&s.oldest_captured_at),
        opt(&s.newest_captured_at),
        s.db_bytes,
        opt(&s.last_upload_at),
        opt(&s.last_error),
        opt(&s.uploader_state),
        opt(&s
            .upload_concurrency
            .map(|n| format!("{n} request(s) in flight allowed"))),
        opt(&s.wal_index),
        opt(&s.daemon_updated_at),
    );
    if let Some(sensors) = s.sensors.as_ref().and_then(|v| v.as_array()) {
        for h in sensors {
            out.push_str(&format!("{:<16}{}\n", "sensor:", sensor_line(h)));
        }
    }
    for (name, value) in [("auth", &s.auth), ("uploads", &s.uploads)] {
        if let Some(v) = value {
            out.push_str(&format!("{:<16}{}\n", format!("{name}:"), counters_line(v)));
        }
    }
    out
}

/// `bme280@i2c-1:0x76 ok (last good reading 2027-...)` or `... FAILING 3x: error`.
fn sensor_line(h: &serde_json::Value) -> String {
    let text = |key: &str| h.get(key).and_then(|v| v.as_str()).unwrap_or("-");
    let name = text("name");
    if text("state") == "ok" {
        format!("{name} ok (last good reading {})", text("last_ok"))
    } else {
        let failures = h
            .get("consecutive_failures")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        format!(
            "{name} FAILING {failures}x since {}: {}",
            text("last_ok"),
            text("last_error")
        )
    }
}

/// A counters object as words, by name: `0 login failures, 2 logins, ...`; a counter
/// added later shows without a change here.
fn counters_line(v: &serde_json::Value) -> String {
    match v.as_object() {
        Some(o) => o
            .iter()
            .map(|(k, v)| format!("{v} {}", k.replace('_', " ")))
            .collect::<Vec<_>>()
            .join(", "),
        None => v.to_string(),
    }
}

fn list_text(rows: &[Stored]) -> String {
    if rows.is_empty() {
        return "queue is empty\n".into();
    }
    rows.iter()
        .map(|s| format!("{:>8}  {}\n", s.id, s.reading.to_wire_json()))
        .collect()
}

fn dead_text(dead: &[DeadLetter]) -> String {
    if dead.is_empty() {
        return "no dead letters\n".into();
    }
    dead.iter()
        .map(|d| {
            format!(
                "{:>6}  {}  status {}  captured {}  {}\n        answer: {}\n",
                d.id, d.failed_at, d.status, d.captured_at, d.fields, d.response
            )
        })
        .collect()
}

/// Streams readings page by page, so a large backlog never sits in memory.
fn export(
    q: &Queue,
    format: ExportFormat,
    dead: bool,
    out: &mut dyn Write,
    mut progress: Option<&mut ExportProgress>,
) -> Result<u64, ExportError> {
    const PAGE: usize = 1000;
    let mut n = 0;
    if dead {
        if matches!(format, ExportFormat::Csv) {
            // The pending columns first, so one tool reads both; then why it was refused.
            writeln!(out, "id,timestamp,field,value,status,response,failed_at")?;
        }
        // Dead letters are few by nature; one read is enough.
        for d in q.dead_letters(usize::MAX >> 1)? {
            match format {
                ExportFormat::Jsonl => writeln!(out, "{}", serde_json::to_string(&d)?)?,
                ExportFormat::Csv => dead_csv_rows(&d, out)?,
            }
            n += 1;
        }
        return Ok(n);
    }
    if matches!(format, ExportFormat::Csv) {
        writeln!(out, "id,timestamp,field,value")?;
    }
    let mut after = 0;
    loop {
        let page = q.peek(after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for s in &page {
            match format {
                ExportFormat::Jsonl => {
                    let mut v = s.reading.to_wire_json();
                    if let Some(o) = v.as_object_mut() {
                        o.insert("id".into(), s.id.into());
                    }
                    writeln!(out, "{v}")?;
                }
                ExportFormat::Csv => {
                    let ts = s.reading.timestamp();
                    for (k, v) in &s.reading.fields {
                        writeln!(out, "{},{},{},{}", s.id, ts, csv(k), v)?;
                    }
                }
            }
            n += 1;
        }
        if let Some(p) = progress.as_deref_mut() {
            p.update(n);
        }
    }
    Ok(n)
}

/// One row per field; a dead letter whose fields are not a JSON object (it may be there
/// precisely because it was unreadable) still gets one row, its raw text as the value.
fn dead_csv_rows(d: &DeadLetter, out: &mut dyn Write) -> std::io::Result<()> {
    let tail = format!("{},{},{}", d.status, csv(&d.response), csv(&d.failed_at));
    let head = format!("{},{}", d.id, csv(&d.captured_at));
    match d.fields.as_object().filter(|f| !f.is_empty()) {
        Some(fields) => {
            for (k, v) in fields {
                writeln!(out, "{head},{},{},{tail}", csv(k), csv(&json_text(v)))?;
            }
        }
        None => writeln!(out, "{head},,{},{tail}", csv(&json_text(&d.fields)))?,
    }
    Ok(())
}

/// A JSON value as a CSV cell: strings without their JSON quotes.
fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// RFC 4180: a field with a comma, a quote, CR or LF is quoted, quotes doubled.
fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("{0}")]
    Queue(#[from] QueueError),
    #[error("cannot write the export: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot encode: {0}")]
    Json(#[from] serde_json::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QueueConfig;
    use crate::reading::Reading;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn stats_text_shows_sensors_auth_and_uploads_as_lines() {
        let stats = Stats {
            sensors: Some(serde_json::json!([
                {"name": "simulated", "state": "ok", "last_ok": "2027-01-15T08:00:00.000Z"},
                {"name": "bme280@i2c-1:0x76", "state": "failing", "consecutive_failures": 3,
                 "last_ok": null, "last_error": "no answer at 0x76"}
            ])),
            auth: Some(serde_json::json!({"logins": 2, "login_failures": 0})),
            uploads: Some(serde_json::json!({"accepted": 40, "transient_failures": 1})),
            ..Stats::default()
        };
        let text = stats_text(&stats);
        for line in [
            "sensor:         simulated ok (last good reading 2027-01-15T08:00:00.000Z)\n",
            "sensor:         bme280@i2c-1:0x76 FAILING 3x since -: no answer at 0x76\n",
            "auth:           0 login failures, 2 logins\n",
            "uploads:        40 accepted, 1 transient failures\n",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
        assert!(!text.contains('{'), "raw JSON left: {text}");
    }

    #[test]
    fn export_progress_line_has_the_rate_and_time_left() {
        assert_eq!(
            progress_line(1000, 4000, Duration::from_secs(2)),
            "1000/4000 readings (25%), 500/s, 6s left"
        );
        assert_eq!(
            progress_line(10, 0, Duration::from_secs(1)),
            "10/10 readings (100%), 10/s, 0s left"
        );
    }

    #[test]
    fn csv_quotes_per_rfc_4180() {
        assert_eq!(csv("plain"), "plain");
        assert_eq!(csv("a,b"), "\"a,b\"");
        assert_eq!(csv("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv("line\r\nnext"), "\"line\r\nnext\"");
        assert_eq!(csv("cr\ronly"), "\"cr\ronly\"");
    }

    #[test]
    fn dead_letter_csv_has_status_and_answer_and_keeps_unparsable_rows() -> TestResult {
        let dir = tempfile::tempdir()?;
        let config = QueueConfig {
            path: dir.path().join("q.db"),
            ..QueueConfig::default()
        };
        let q = Queue::open(&config)?;
        let mut r = Reading::new(crate::reading::from_unix_ms(1_800_000_000_000));
        r.fields.insert("temperature".into(), 21.5);
        q.enqueue(&[r.clone(), r])?;
        let ids: Vec<i64> = q.peek(0, 10)?.iter().map(|s| s.id).collect();
        q.dead_letter(
            ids[0],
            400,
            "{\"temperature\": [\"too \"hot\", sorry\"]}\r\n",
        )?;
        // A reading whose fields do not parse (written by hand, or an older bug).
        let raw = rusqlite::Connection::open(&config.path)?;
        raw.execute(
            "UPDATE readings SET fields = 'not json' WHERE id = ?1",
            [ids[1]],
        )?;
        drop(raw);
        // Reading it quarantines it as a dead letter with status 0.
        assert!(q.peek(0, 10)?.is_empty());

        let ro = Queue::open_read_only(&config.path)?;
        let mut out = Vec::new();
        let n = export(&ro, ExportFormat::Csv, true, &mut out, None)?;
        assert_eq!(n, 2);
        let text = String::from_utf8(out)?;
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("id,timestamp,field,value,status,response,failed_at")
        );
        let first = "1,2027-01-15T08:00:00.000Z,temperature,21.5,400,\"{\"\"temperature\"\": [\"\"too \"\"hot\"\", sorry\"\"]}\r\n\",";
        assert!(text.contains(first), "{text:?}");
        // Fields that do not parse: one row, the raw text as the value, the reason kept.
        assert!(
            text.contains("\n2,2027-01-15T08:00:00.000Z,,not json,0,\"unreadable"),
            "{text:?}"
        );
        assert_eq!(
            lines.count(),
            3,
            "two rows, one with a quoted line break: {text:?}"
        );
        Ok(())
    }
}
