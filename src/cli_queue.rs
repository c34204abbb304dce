//! Text output and export of the queue commands.

use std::io::Write;

use crate::cli::ExportFormat;
use crate::queue::{DeadLetter, Queue, QueueError, Stats, Stored};

pub fn stats_text(s: &Stats) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = format!(
        "queue:          {}\n\
         pending:        {}\n\
         in flight:      {}\n\
         dead letters:   {}\n\
         uploaded total: {}\n\
         dropped total:  {}\n\
         oldest capture: {}\n\
         newest capture: {}\n\
         database size:  {} bytes\n\
         last upload:    {}\n\
         last error:     {}\n\
         uploader:       {}\n\
         daemon seen:    {}\n",
        s.path,
        s.pending,
        s.in_flight,
        s.dead,
        s.uploaded_total,
        s.dropped_total,
        opt(&s.oldest_captured_at),
        opt(&s.newest_captured_at),
        s.db_bytes,
        opt(&s.last_upload_at),
        opt(&s.last_error),
        opt(&s.uploader_state),
        opt(&s.daemon_updated_at),
    );
    for (name, value) in [
        ("sensors", &s.sensors),
        ("auth", &s.auth),
        ("uploads", &s.uploads),
    ] {
        if let Some(v) = value {
            out.push_str(&format!("{:<16}{v}\n", format!("{name}:")));
        }
    }
    out
}

pub fn list_text(rows: &[Stored]) -> String {
    if rows.is_empty() {
        return "queue is empty\n".into();
    }
    rows.iter()
        .map(|s| format!("{:>8}  {}\n", s.id, s.reading.to_wire_json()))
        .collect()
}

pub fn dead_text(dead: &[DeadLetter]) -> String {
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
pub fn export(
    q: &Queue,
    format: ExportFormat,
    dead: bool,
    out: &mut dyn Write,
) -> Result<u64, ExportError> {
    const PAGE: usize = 1000;
    let mut n = 0;
    if matches!(format, ExportFormat::Csv) {
        writeln!(out, "id,timestamp,field,value")?;
    }
    if dead {
        // Dead letters are few by nature; one read is enough.
        for d in q.dead_letters(usize::MAX >> 1)? {
            match format {
                ExportFormat::Jsonl => writeln!(out, "{}", serde_json::to_string(&d)?)?,
                ExportFormat::Csv => {
                    if let Some(fields) = d.fields.as_object() {
                        for (k, v) in fields {
                            writeln!(out, "{},{},{},{}", d.id, d.captured_at, csv(k), v)?;
                        }
                    }
                }
            }
            n += 1;
        }
        return Ok(n);
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
    }
    Ok(n)
}

fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Queue(#[from] QueueError),
    #[error("cannot write the export: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot encode: {0}")]
    Json(#[from] serde_json::Error),
}
