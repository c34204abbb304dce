//! Fixtures shared by the queue's unit tests: a temporary queue, a reading, and the
//! capture times a queue hands out.

use std::collections::BTreeMap;
use std::path::Path;

use super::{Queue, QueueError};
use crate::config::{OverflowPolicy, QueueConfig};
use crate::reading::Reading;

/// An I/O failure of a test's own set-up, as a queue error the test can return.
pub fn io_error(e: std::io::Error) -> QueueError {
    QueueError::BadRow {
        id: 0,
        detail: e.to_string(),
    }
}

pub fn tempdir() -> Result<tempfile::TempDir, QueueError> {
    tempfile::tempdir().map_err(io_error)
}

pub fn config(dir: &Path, max: u64, overflow: OverflowPolicy) -> QueueConfig {
    QueueConfig {
        path: dir.join("q.db"),
        max_readings: max,
        overflow,
        ..QueueConfig::default()
    }
}

pub fn reading(ms: i64) -> Reading {
    let mut fields = BTreeMap::new();
    fields.insert("temperature".to_owned(), ms as f64 / 10.0);
    Reading {
        captured_at_ms: ms,
        fields,
    }
}

pub fn open(dir: &Path, max: u64, overflow: OverflowPolicy) -> Queue {
    match Queue::open(&config(dir, max, overflow)) {
        Ok(q) => q,
        Err(e) => panic!("{e}"),
    }
}

/// The capture times of the first pending readings, oldest first.
pub fn kept(q: &Queue) -> Result<Vec<i64>, QueueError> {
    Ok(q.peek(0, 10)?
        .iter()
        .map(|s| s.reading.captured_at_ms)
        .collect())
}

/// The names of the files in `dir`.
pub fn file_names(dir: &Path) -> Result<Vec<String>, QueueError> {
    Ok(std::fs::read_dir(dir)
        .map_err(io_error)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}
