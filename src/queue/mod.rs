//! The store and forward: every reading waits in this SQLite queue until the server
//! acknowledges it. [`Queue`] is one connection to the file; [`writer`] is the queue
//! thread that owns the daemon's connection and commits in groups.
//!
//! A reading leaves `readings` only on a 2xx (deleted) or a permanent rejection (moved to
//! `dead_letters` with the status and the server's answer). Nothing here knows about HTTP.
//!
//! Durability: WAL with `synchronous = FULL`. In WAL mode FULL syncs the log at every
//! commit, so a reading survives a power cut once its group commit returned; NORMAL would
//! only sync at checkpoints and could lose the last seconds on an SD card that loses power.
//! Because the queue thread groups a whole `commit_interval` of readings into one
//! transaction (see [`writer`]), FULL costs one fsync per group, not per reading.
//!
//! - `schema`: opening, migrating, moving a corrupt file aside.
//! - `bounds`: `max_readings` / `max_bytes`, the overflow policy, byte accounting.
//! - `layout`: field names stored once per set of names, rows keep their values.
//! - `redate`: correcting capture times taken before the clock was synchronised.
//! - `dead`: dead letters and the quarantine of unreadable rows.
//! - [`lock`]: one daemon per queue (`<queue>.lock`).
//! - [`health`]: noticing a queue that broke while the daemon runs, and when to give up.
//! - `stats`: counters, daemon status and the figures of `queue stats`.
//! - `runtime`: the daemon's status file in its runtime directory (tmpfs), read by
//!   `queue stats` while the daemon runs.
//! - [`wal_index`]: where SQLite keeps the wal-index (tmpfs, off the SD card).
//! - `writer`: the queue thread (group commit, the handle the sampler and uploader use).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};

use crate::config::OverflowPolicy;
use crate::reading::Reading;

mod bounds;
mod dead;
pub mod health;
mod layout;
pub mod lock;
mod redate;
pub mod runtime;
mod schema;
mod stats;
#[cfg(test)]
mod testing;
pub mod wal_index;
pub mod writer;

pub use dead::DeadLetter;
pub use stats::{status_key, Stats};

use schema::SCHEMA_VERSION;
use stats::{bump_counter, COUNTER_DEAD_EVICTED, COUNTER_DROPPED, COUNTER_UPLOADED};

/// A file named after the queue's: `queue.db` + `-wal` is SQLite's log beside it.
pub(crate) fn beside(queue: &Path, suffix: &str) -> PathBuf {
    let mut name = queue.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot create the queue directory {path}: {source} (the service user needs write access to its StateDirectory)")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("queue {path} is corrupt and cannot be moved aside: {source} (move or delete it by hand; the service user needs write access to its directory)")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open queue {path}: {source}{hint}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
        hint: &'static str,
    },
    #[error("queue {path} has schema version {found}, newer than this binary knows ({SCHEMA_VERSION}): upgrade profilo-gateway or move the file aside")]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("no queue at {0} (the daemon has not stored anything there yet; check queue.path)")]
    Missing(PathBuf),
    #[error("queue database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored reading {id} is unreadable: {detail}")]
    BadRow { id: i64, detail: String },
    #[error("queue {path} is gone from under the daemon ({detail}): nothing written since is kept; restarting starts a fresh queue there")]
    Vanished { path: PathBuf, detail: String },
    #[error("cannot keep the queue's wal-index in {dir} ({detail}): the queue was not opened. SQLite keeps its index of the WAL there, on tmpfs, to spare the SD card; {dir} must be a directory the service user can write (it is on every Linux; a systemd drop-in must not hide it with InaccessiblePaths= or TemporaryFileSystem=)")]
    WalIndexDir { dir: PathBuf, detail: String },
    #[error("queue {path} is corrupt ({detail}); this command left it as it is: restart the daemon (systemctl restart profilo-gateway), which moves a corrupt queue aside and starts a fresh one")]
    CorruptNotMoved { path: PathBuf, detail: String },
}

impl QueueError {
    /// The disk (or the filesystem's quota) is full: writes fail but the file is intact.
    pub fn is_disk_full(&self) -> bool {
        self.sqlite_code() == Some(rusqlite::ErrorCode::DiskFull)
    }

    /// The file is damaged or not a database at all.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self.sqlite_code(),
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
        )
    }

    fn sqlite_code(&self) -> Option<rusqlite::ErrorCode> {
        match self {
            QueueError::Sql(e) | QueueError::Open { source: e, .. } => e.sqlite_error_code(),
            _ => None,
        }
    }
}

/// A reading as stored, with its queue id.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub id: i64,
    pub reading: Reading,
    /// Captured while the wall clock was not synchronised, in a boot whose timestamps can
    /// no longer be corrected: the capture time may be wrong.
    pub clock_unsynced: bool,
}

/// The clock state of one capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureClock {
    /// CLOCK_BOOTTIME at capture, in ms.
    pub monotonic_ms: i64,
    pub synced: bool,
}

/// What `enqueue` did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enqueued {
    pub inserted: u64,
    /// Readings dropped to respect the bounds (old ones or new ones, per policy).
    pub dropped: u64,
    /// Dead letters deleted, oldest first, because the file was over `max_bytes`.
    pub dead_evicted: u64,
}

pub struct Queue {
    conn: Connection,
    path: PathBuf,
    max_readings: u64,
    max_bytes: u64,
    overflow: OverflowPolicy,
    /// The running boot's id: its unsynchronised readings are held until corrected.
    current_boot: Option<String>,
    /// Whether unsynchronised readings of earlier boots are sent (flagged) or held.
    hold_unfixable: bool,
    /// Below this capture time an uncorrected reading is held even when flagging: "never
    /// stamped 1970" (`clock::clock_floor_ms`).
    clock_floor_ms: i64,
    /// False for the CLI's read-only opens: unreadable rows are then skipped, not moved.
    writable: bool,
    /// The id the next reading gets, at least. Handed out here (the table has no
    /// AUTOINCREMENT, whose sequence cost a page per commit), so that an id is never reused
    /// while this connection lives and a late ack can never delete a newer reading.
    next_id: std::cell::Cell<i64>,
    /// The estimate behind `max_bytes` (see `bounds`).
    pending_bytes: std::cell::Cell<bounds::PendingBytes>,
    /// Schema version 3 or later: rows keep their values and a layout (`layout`). False
    /// only on a file left at an earlier version (a full disk stopped its migration).
    packed: bool,
}

impl Queue {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tests make writes fail fast against a writer that holds the lock.
    #[cfg(test)]
    pub(crate) fn set_busy_timeout(&self, timeout: std::time::Duration) -> Result<(), QueueError> {
        self.conn.busy_timeout(timeout)?;
        Ok(())
    }

    /// Starts a transaction that groups the following calls into one commit.
    pub fn begin(&self) -> Result<(), QueueError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    pub fn commit(&self) -> Result<(), QueueError> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Copies the WAL into the database and truncates it: on a full disk this gives back the
    /// space the log took, so that the next commit (acks delete rows, but still need log
    /// space) can succeed.
    pub fn checkpoint_truncate(&self) -> Result<(), QueueError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Abandons an open transaction, if any (after a failed commit, e.g. disk full).
    pub fn rollback(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Runs `f` atomically, inside the caller's transaction when one is open.
    fn atomically<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        self.conn.execute_batch("SAVEPOINT queue_op")?;
        match f(&self.conn) {
            Ok(v) => {
                self.conn.execute_batch("RELEASE queue_op")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self
                    .conn
                    .execute_batch("ROLLBACK TO queue_op; RELEASE queue_op");
                Err(e)
            }
        }
    }

    /// Stores readings, enforcing `max_readings` / `max_bytes` with the overflow policy.
    pub fn enqueue(&self, readings: &[Reading]) -> Result<Enqueued, QueueError> {
        self.enqueue_with_origin(readings, None)
    }

    /// Like `enqueue`, recording the boot id and, per reading, the CLOCK_BOOTTIME of its
    /// capture and whether the wall clock was synchronised then, so that timestamps taken
    /// before synchronisation can be corrected later (`fix_unsynced`).
    pub fn enqueue_with_origin(
        &self,
        readings: &[Reading],
        origin: Option<(&str, &[CaptureClock])>,
    ) -> Result<Enqueued, QueueError> {
        if readings.is_empty() {
            return Ok(Enqueued::default());
        }
        self.atomically(|conn| {
            let (kept, mut dropped) = self.make_room(conn, readings)?;
            let to_insert = &readings[kept.clone()];
            let clocks = origin.map(|(boot, c)| (boot, c.get(kept).unwrap_or_default()));
            let max_id: i64 =
                conn.query_row("SELECT coalesce(max(id), 0) FROM readings", [], |r| r.get(0))?;
            let mut id = self.next_id.get().max(max_id + 1);
            let mut stmt = conn.prepare_cached(if self.packed {
                "INSERT INTO readings (id, captured_at_ms, fields, boot_id, monotonic_ms, clock_synced, layout)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            } else {
                "INSERT INTO readings (id, captured_at_ms, fields, boot_id, monotonic_ms, clock_synced)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            })?;
            // The layout of the reading before, within this call's transaction: a batch
            // has one layout, looked up once.
            let mut last_layout = None;
            for (i, r) in to_insert.iter().enumerate() {
                let (fields, layout) = self.stored_fields(conn, r, &mut last_layout)?;
                let (boot, mono, synced) = match clocks.and_then(|(b, c)| Some((b, c.get(i)?))) {
                    Some((boot, c)) => (Some(boot), Some(c.monotonic_ms), c.synced),
                    None => (None, None, true),
                };
                let row = params![id, r.captured_at_ms, fields, boot, mono, synced, layout];
                stmt.execute(&row[..if self.packed { 7 } else { 6 }])?;
                self.bytes_added(bounds::row_size(&fields, boot));
                id += 1;
            }
            drop(stmt);
            self.next_id.set(id);
            let mut dead_evicted = 0;
            if self.max_bytes > 0 {
                let (d, e) = self.enforce_max_bytes(conn)?;
                dropped += d;
                dead_evicted = e;
            }
            if dropped > 0 {
                bump_counter(conn, COUNTER_DROPPED, dropped)?;
            }
            if dead_evicted > 0 {
                bump_counter(conn, COUNTER_DEAD_EVICTED, dead_evicted)?;
            }
            Ok(Enqueued {
                inserted: to_insert.len() as u64,
                dropped,
                dead_evicted,
            })
        })
    }

    /// The oldest pending readings with an id above `after_id`, at most `limit`.
    ///
    /// A row that cannot be read back (a null or text where a number belongs) must not
    /// block the rows behind it: it is moved to the dead letters with status 0 and the
    /// reason, and skipped (read-only opens only skip it). Other errors are returned.
    pub fn peek(&self, after_id: i64, limit: usize) -> Result<Vec<Stored>, QueueError> {
        let mut out = Vec::new();
        let mut cursor = after_id;
        while out.len() < limit {
            let want = limit - out.len();
            let mut bad = Vec::new();
            let mut seen = 0;
            {
                // Which rows are pending is said once, for both layouts of the table.
                macro_rules! pending_after {
                    () => {
                        " WHERE r.id > ?1 AND (r.clock_synced = 1 OR ?3 IS NULL
                             OR (r.boot_id IS NOT ?3 AND NOT ?4 AND r.captured_at_ms >= ?5))
                         ORDER BY r.id LIMIT ?2"
                    };
                }
                let mut stmt = self.conn.prepare_cached(if self.packed {
                    concat!(
                        "SELECT r.id, r.captured_at_ms, r.fields, r.clock_synced, l.names
                         FROM readings r LEFT JOIN layouts l ON l.id = r.layout",
                        pending_after!()
                    )
                } else {
                    concat!(
                        "SELECT r.id, r.captured_at_ms, r.fields, r.clock_synced, NULL
                         FROM readings r",
                        pending_after!()
                    )
                })?;
                let params = params![
                    cursor,
                    want as i64,
                    self.current_boot,
                    self.hold_unfixable,
                    self.clock_floor_ms
                ];
                let rows = stmt.query_map(params, |r| Ok((r.get::<_, i64>(0)?, read_stored(r))))?;
                for row in rows {
                    let (id, stored) = row?;
                    seen += 1;
                    cursor = id;
                    match stored {
                        Ok(s) => out.push(s),
                        Err(detail) => bad.push((id, detail)),
                    }
                }
            }
            for (id, detail) in bad {
                self.quarantine(id, &detail);
            }
            if seen < want {
                break;
            }
        }
        Ok(out)
    }

    /// The server took these readings: they leave the queue.
    pub fn ack(&self, ids: &[i64]) -> Result<u64, QueueError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.atomically(|conn| {
            let mut n = 0;
            for id in ids {
                if let Some(size) = self.delete_reading(conn, *id)? {
                    self.bytes_removed(size);
                    n += 1;
                }
            }
            // In the transaction of the deletes: after a crash the total still matches
            // what left the queue, which a count kept in memory could not promise.
            bump_counter(conn, COUNTER_UPLOADED, n)?;
            Ok(n)
        })
    }
}

/// The latest capture time a reading may carry, 9999-12-31T23:59:59.999Z: RFC 3339 (the
/// wire format) has four-digit years. Anything later, or before 1970, is a damaged row.
pub const MAX_CAPTURE_MS: i64 = 253_402_300_799_999;

/// Whether a stored capture time is one a reading can have (see [`MAX_CAPTURE_MS`]).
pub fn capture_time_in_range(ms: i64) -> bool {
    (0..=MAX_CAPTURE_MS).contains(&ms)
}

/// A stored capture time as RFC 3339, or the raw number when it is out of range (a
/// listing must show a damaged row, not die formatting it).
pub fn capture_time_text(ms: i64) -> String {
    if capture_time_in_range(ms) {
        crate::reading::format_rfc3339_ms(ms)
    } else {
        format!("{ms} ms (out of range)")
    }
}

impl Queue {
    /// A reading's `fields` column and layout id as this file stores them (`layout`).
    fn stored_fields(
        &self,
        conn: &Connection,
        r: &Reading,
        last_layout: &mut Option<(String, i64)>,
    ) -> Result<(String, Option<i64>), QueueError> {
        let bad = |e: serde_json::Error| QueueError::BadRow {
            id: 0,
            detail: e.to_string(),
        };
        if !self.packed {
            // Never `serde_json::to_string(&r.fields)`: it writes NaN and inf as null,
            // which no later read could parse back.
            return Ok((r.stored_fields_json().map_err(bad)?, None));
        }
        let (names, values) = layout::pack(r).map_err(bad)?;
        let id = match last_layout {
            Some((last, id)) if *last == names => *id,
            _ => {
                let id = layout::layout_id(conn, &names)?;
                *last_layout = Some((names, id));
                id
            }
        };
        Ok((values, Some(id)))
    }

    /// Deletes one pending reading; returns its estimated size if it was there.
    fn delete_reading(&self, conn: &Connection, id: i64) -> Result<Option<u64>, QueueError> {
        let mut stmt = conn.prepare_cached(&format!(
            "DELETE FROM readings WHERE id = ?1 RETURNING {}",
            bounds::reading_size_sql()
        ))?;
        let mut rows = stmt.query([id])?;
        let size = match rows.next()? {
            Some(r) => Some(r.get::<_, Option<i64>>(0)?.unwrap_or(0).max(0) as u64),
            None => None,
        };
        Ok(size)
    }
}

/// One `readings` row of `peek`, or why it cannot be read.
fn read_stored(r: &rusqlite::Row<'_>) -> Result<Stored, String> {
    let id: i64 = r.get(0).map_err(|e| e.to_string())?;
    let captured_at_ms: i64 = r.get(1).map_err(|e| format!("captured_at_ms: {e}"))?;
    if !capture_time_in_range(captured_at_ms) {
        return Err(format!(
            "capture time {captured_at_ms} ms is out of range (before 1970 or after 9999)"
        ));
    }
    let fields: String = r.get(2).map_err(|e| format!("fields: {e}"))?;
    let names: Option<String> = r.get(4).map_err(|e| format!("layout: {e}"))?;
    let fields = layout::unpack(&fields, names.as_deref())?;
    let synced: bool = r.get(3).map_err(|e| format!("clock_synced: {e}"))?;
    Ok(Stored {
        id,
        reading: Reading {
            captured_at_ms,
            fields,
        },
        clock_unsynced: !synced,
    })
}

fn count_pending(conn: &Connection) -> Result<u64, QueueError> {
    Ok(conn.query_row("SELECT count(*) FROM readings", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::testing::*;

    #[test]
    fn enqueue_peek_ack_round_trip_and_survives_reopen() -> Result<(), QueueError> {
        let dir = tempdir()?;
        {
            let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
            q.enqueue(&[reading(1), reading(2), reading(3)])?;
            let batch = q.peek(0, 2)?;
            assert_eq!(batch.len(), 2);
            assert_eq!(batch[0].reading, reading(1));
            assert_eq!(q.ack(&[batch[0].id])?, 1);
        }
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        let rest = q.peek(0, 10)?;
        assert_eq!(
            rest.iter()
                .map(|s| s.reading.captured_at_ms)
                .collect::<Vec<_>>(),
            vec![2, 3]
        );
        let stats = q.stats()?;
        assert_eq!((stats.pending, stats.uploaded_total), (2, 1));
        assert_eq!(
            stats.oldest_captured_at.as_deref(),
            Some("1970-01-01T00:00:00.002Z")
        );
        Ok(())
    }

    #[test]
    fn a_non_finite_value_is_never_stored_as_null() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        let mut r = reading(1);
        r.fields.insert("humidite".into(), f64::NAN);
        q.enqueue(&[r])?;
        let got = q.peek(0, 10)?;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].reading, reading(1));
        assert!(q.dead_letters(10)?.is_empty());
        Ok(())
    }

    #[test]
    fn capture_times_out_of_range_are_dead_lettered_and_listed_without_panic(
    ) -> Result<(), QueueError> {
        let dir = tempdir()?;
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        q.enqueue(&[reading(1), reading(2), reading(3), reading(MAX_CAPTURE_MS)])?;
        q.conn.execute(
            "UPDATE readings SET captured_at_ms = ?1 WHERE id = 1",
            [i64::MAX],
        )?;
        q.conn
            .execute("UPDATE readings SET captured_at_ms = -5 WHERE id = 3", [])?;
        // Read-only (the CLI): skipped, and the figures name only the sound ones.
        let ro = Queue::open_read_only(&dir.path().join("q.db"))?;
        let ids: Vec<i64> = ro.peek(0, 10)?.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![2, 4]);
        let stats = ro.stats()?;
        assert_eq!(stats.pending, 4);
        assert_eq!(
            (
                stats.oldest_captured_at.as_deref(),
                stats.newest_captured_at.as_deref()
            ),
            (
                Some("1970-01-01T00:00:00.002Z"),
                Some("9999-12-31T23:59:59.999Z")
            )
        );
        // The daemon: moved to the dead letters with the reason.
        let ids: Vec<i64> = q.peek(0, 10)?.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![2, 4]);
        let dead = q.dead_letters(10)?;
        assert_eq!(
            dead.iter().map(|d| d.reading_id).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert!(dead[0].response.contains("out of range"), "{dead:?}");
        assert_eq!(
            dead[0].captured_at,
            format!("{} ms (out of range)", i64::MAX)
        );
        assert_eq!(dead[1].captured_at, "-5 ms (out of range)");
        Ok(())
    }

    #[test]
    fn group_commit_is_one_transaction() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        q.begin()?;
        q.enqueue(&[reading(1)])?;
        q.enqueue(&[reading(2)])?;
        q.rollback();
        assert_eq!(q.pending()?, 0);
        q.begin()?;
        q.enqueue(&[reading(1)])?;
        q.commit()?;
        assert_eq!(q.pending()?, 1);
        Ok(())
    }
}
