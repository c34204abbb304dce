//! What the queue tells about itself: the counters kept in the file (dropped, uploaded,
//! evicted), the daemon's status (in its runtime file while it runs, see `runtime`, and in
//! the queue file as of its last save), and the figures of `queue stats`, whose JSON keys
//! are a contract.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{count_pending, Queue, QueueError};
use crate::reading::format_rfc3339_ms;

/// The figures of `queue stats`. Keys are a contract: extend, do not rename.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub path: String,
    pub pending: u64,
    pub dead: u64,
    pub in_flight: u64,
    pub dropped_total: u64,
    pub uploaded_total: u64,
    /// Dead letters deleted to keep the file within `queue.max_bytes`.
    pub dead_evicted_total: u64,
    pub oldest_captured_at: Option<String>,
    pub newest_captured_at: Option<String>,
    /// Size of the database file plus its WAL, in bytes.
    pub db_bytes: u64,
    pub last_upload_at: Option<String>,
    pub last_error: Option<String>,
    pub uploader_state: Option<String>,
    pub sensors: Option<serde_json::Value>,
    /// Logins and refreshes since the daemon started.
    pub auth: Option<serde_json::Value>,
    /// Send outcomes since the daemon started.
    pub uploads: Option<serde_json::Value>,
    pub daemon_updated_at: Option<String>,
    /// Requests the uploader lets be in flight now (adaptive with `upload.concurrency = "auto"`).
    pub upload_concurrency: Option<u64>,
    /// The wal-index file while a connection has the queue open: on tmpfs (`wal_index`).
    pub wal_index: Option<String>,
}

/// Names in the `status` table, written by the daemon, read by `queue stats`.
pub mod status_key {
    pub const IN_FLIGHT: &str = "in_flight";
    pub const LAST_UPLOAD_AT: &str = "last_upload_at";
    pub const LAST_ERROR: &str = "last_error";
    pub const UPLOADER_STATE: &str = "uploader_state";
    pub const SENSORS: &str = "sensors";
    pub const UPDATED_AT: &str = "updated_at";
    pub const AUTH: &str = "auth";
    pub const UPLOADS: &str = "uploads";
    pub const UPLOAD_CONCURRENCY: &str = "upload_concurrency";
}

pub(super) const COUNTER_DROPPED: &str = "dropped_total";
pub(super) const COUNTER_UPLOADED: &str = "uploaded_total";
pub(super) const COUNTER_DEAD_EVICTED: &str = "dead_evicted_total";

impl Queue {
    /// Counts readings dropped outside SQLite (in memory, while writes failed).
    pub fn add_dropped(&self, n: u64) -> Result<(), QueueError> {
        bump_counter(&self.conn, COUNTER_DROPPED, n)
    }

    /// Records daemon state for `queue stats` after the daemon stopped.
    pub fn set_status(&self, key: &str, value: &str) -> Result<(), QueueError> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO status (name, value) VALUES (?1, ?2)")?
            .execute(params![key, value])?;
        Ok(())
    }

    pub fn pending(&self) -> Result<u64, QueueError> {
        count_pending(&self.conn)
    }

    pub fn stats(&self) -> Result<Stats, QueueError> {
        let conn = &self.conn;
        let (pending, oldest, newest): (u64, Option<i64>, Option<i64>) = conn.query_row(
            // Damaged rows (out of range, see `peek`) are not a capture time to show.
            "SELECT count(*), min(iif(captured_at_ms BETWEEN 0 AND ?1, captured_at_ms, NULL)),
                 max(iif(captured_at_ms BETWEEN 0 AND ?1, captured_at_ms, NULL)) FROM readings",
            [super::MAX_CAPTURE_MS],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let dead: u64 = conn.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))?;
        let mut stats = Stats {
            path: self.path.display().to_string(),
            pending,
            dead,
            dropped_total: counter(conn, COUNTER_DROPPED)?,
            uploaded_total: counter(conn, COUNTER_UPLOADED)?,
            dead_evicted_total: counter(conn, COUNTER_DEAD_EVICTED)?,
            oldest_captured_at: oldest.map(format_rfc3339_ms),
            newest_captured_at: newest.map(format_rfc3339_ms),
            db_bytes: file_len(&self.path) + file_len(&wal_path(&self.path)),
            wal_index: super::wal_index::location(&self.path).map(|p| p.display().to_string()),
            ..Stats::default()
        };
        // As last saved in the file, then as the running daemon sees it now.
        let mut stmt = conn.prepare_cached("SELECT name, value FROM status")?;
        let saved = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in saved {
            let (key, value) = row?;
            stats.set_status(&key, &value);
        }
        for (key, value) in super::runtime::read_live(&self.path).unwrap_or_default() {
            stats.set_status(&key, &value);
        }
        Ok(stats)
    }
}

impl Stats {
    /// Takes one entry of the daemon's status (a `status_key`); unknown keys are ignored.
    pub(super) fn set_status(&mut self, key: &str, value: &str) {
        let json = || serde_json::from_str(value).ok();
        match key {
            status_key::IN_FLIGHT => self.in_flight = value.parse().unwrap_or(0),
            status_key::LAST_UPLOAD_AT => self.last_upload_at = Some(value.to_owned()),
            status_key::LAST_ERROR => self.last_error = Some(value.to_owned()),
            status_key::UPLOADER_STATE => self.uploader_state = Some(value.to_owned()),
            status_key::SENSORS => self.sensors = json(),
            status_key::AUTH => self.auth = json(),
            status_key::UPLOADS => self.uploads = json(),
            status_key::UPDATED_AT => self.daemon_updated_at = Some(value.to_owned()),
            status_key::UPLOAD_CONCURRENCY => self.upload_concurrency = value.parse().ok(),
            _ => {}
        }
    }
}

fn counter(conn: &Connection, name: &str) -> Result<u64, QueueError> {
    Ok(conn
        .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0))
}

pub(super) fn bump_counter(conn: &Connection, name: &str, by: u64) -> Result<(), QueueError> {
    conn.prepare_cached(
        "INSERT INTO counters (name, value) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
    )?
    .execute(params![name, by as i64])?;
    Ok(())
}

fn wal_path(path: &Path) -> PathBuf {
    super::beside(path, "-wal")
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
