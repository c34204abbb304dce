//! The SQLite store: readings wait here until the server acknowledges them.
//!
//! A reading leaves `readings` only on a 2xx (deleted) or a permanent rejection (moved to
//! `dead_letters` with the status and the server's answer). Nothing here knows about HTTP.
//!
//! Durability: WAL with `synchronous = FULL`. In WAL mode FULL syncs the log at every
//! commit, so a reading survives a power cut once its group commit returned; NORMAL would
//! only sync at checkpoints and could lose the last seconds on an SD card that loses power.
//! Because the daemon groups a whole `commit_interval` of readings into one transaction
//! (see `store`), FULL costs one fsync per group, not per reading.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use crate::config::{OverflowPolicy, QueueConfig, UnfixableTime};
use crate::reading::{format_rfc3339_ms, unix_ms, Reading};

const SCHEMA_VERSION: i64 = 1;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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

/// A reading the server refused for good.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub reading_id: i64,
    pub captured_at: String,
    pub fields: serde_json::Value,
    pub status: u16,
    pub response: String,
    pub failed_at: String,
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

const COUNTER_DROPPED: &str = "dropped_total";
const COUNTER_UPLOADED: &str = "uploaded_total";
const COUNTER_DEAD_EVICTED: &str = "dead_evicted_total";
/// Estimated bytes of the pending readings, kept by triggers (see `ensure_pending_bytes`).
const COUNTER_PENDING_BYTES: &str = "pending_bytes";
/// What a reading row costs beyond its `fields` and `boot_id` text: rowid, capture time,
/// boottime, flags, record header and cell pointer. An estimate, on the safe side.
const ROW_OVERHEAD: i64 = 32;
/// The same for a dead letter, beyond its `fields` and `response`.
const DEAD_ROW_OVERHEAD: i64 = 48;

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
    /// stamped 1970" (`sampler::clock_floor_ms`).
    clock_floor_ms: i64,
    /// False for the CLI's read-only opens: unreadable rows are then skipped, not moved.
    writable: bool,
}

impl Queue {
    /// Opens (creating if needed) the queue for the daemon. A corrupt file is moved aside
    /// (`queue.db.corrupt-<unix time>`) and a fresh queue started, so a damaged SD card
    /// never turns into a crash loop.
    pub fn open(config: &QueueConfig) -> Result<Queue, QueueError> {
        let path = config.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| QueueError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = match Self::open_checked(&path) {
            Ok(conn) => conn,
            Err(e) if e.is_corrupt() => {
                let aside = move_aside(&path)?;
                tracing::error!(
                    queue = %path.display(),
                    moved_to = %aside.display(),
                    "queue database is corrupt ({e}); moved it aside and started a fresh queue"
                );
                Self::open_checked(&path)?
            }
            Err(e) => return Err(e),
        };
        Ok(Queue {
            conn,
            path,
            max_readings: config.max_readings,
            max_bytes: config.max_bytes,
            overflow: config.overflow,
            current_boot: None,
            hold_unfixable: config.unfixable_time == UnfixableTime::Hold,
            clock_floor_ms: crate::sampler::clock_floor_ms(),
            writable: true,
        })
    }

    fn open_checked(path: &Path) -> Result<Connection, QueueError> {
        let conn = Connection::open(path).map_err(|source| open_error(path, source))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|source| open_error(path, source))?;
        if check != "ok" {
            return Err(QueueError::Sql(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(check),
            )));
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|source| open_error(path, source))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // The access pattern is append at the tail, read and delete at the head: a small
        // page cache serves it, and memory is scarce on a Pi Zero (default is 2 MiB).
        conn.pragma_update(None, "cache_size", -512)?;
        // After a checkpoint the WAL file is cut back to this size, so a burst (a backlog
        // drained, a disk that was full) does not leave it large for good.
        conn.pragma_update(None, "journal_size_limit", 1024 * 1024)?;
        // Checkpoint once the WAL holds 256 pages (1 MiB; SQLite's default is 1000, 4 MiB).
        // A checkpoint needs free room for the pages it moves into the database file, so a
        // WAL that grew until it filled a small filesystem can never be checkpointed: the
        // queue would stay stuck even after space returned. Small groups coalesce well at
        // this size, so the SD card sees few more writes.
        conn.pragma_update(None, "wal_autocheckpoint", 256)?;
        migrate(&conn, path)?;
        ensure_pending_bytes(&conn)?;
        Ok(conn)
    }

    /// Opens an existing queue for reading only (`queue stats`, `list`, `export`), so a
    /// command run as root never creates a file the service user cannot write.
    pub fn open_read_only(path: &Path) -> Result<Queue, QueueError> {
        if !path.exists() {
            return Err(QueueError::Missing(path.to_path_buf()));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| open_error(path, source))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // A daemon starting for the first time creates the file before its tables: until
        // the schema is committed the queue does not exist yet, rather than "no such table".
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version == 0 {
            return Err(QueueError::Missing(path.to_path_buf()));
        }
        Ok(Queue {
            conn,
            path: path.to_path_buf(),
            max_readings: u64::MAX,
            max_bytes: 0,
            overflow: OverflowPolicy::DropOldest,
            current_boot: None,
            hold_unfixable: false,
            clock_floor_ms: i64::MIN,
            writable: false,
        })
    }

    /// Opens an existing queue for maintenance commands (`retry-dead`, `purge`). Unlike
    /// `open` it never moves a corrupt file aside: the daemon may be running on it, and
    /// a command must not swap the live queue for an empty one. It fails instead; the
    /// daemon repairs at its next start.
    pub fn open_existing(config: &QueueConfig) -> Result<Queue, QueueError> {
        let path = &config.path;
        if !path.exists() {
            return Err(QueueError::Missing(path.clone()));
        }
        let conn = Self::open_checked(path).map_err(|e| {
            if e.is_corrupt() {
                QueueError::CorruptNotMoved {
                    path: path.clone(),
                    detail: e.to_string(),
                }
            } else {
                e
            }
        })?;
        Ok(Queue {
            conn,
            path: path.clone(),
            max_readings: config.max_readings,
            max_bytes: config.max_bytes,
            overflow: config.overflow,
            current_boot: None,
            hold_unfixable: config.unfixable_time == UnfixableTime::Hold,
            clock_floor_ms: crate::sampler::clock_floor_ms(),
            writable: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tests make writes fail fast against a writer that holds the lock.
    #[cfg(test)]
    pub(crate) fn set_busy_timeout(&self, timeout: Duration) -> Result<(), QueueError> {
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
            let incoming = readings.len() as u64;
            // An exact count scans the table; the id span bounds it from above in O(1),
            // so the scan only happens when the queue may actually be near its bound.
            let pending = match id_span(conn)? {
                span if span.saturating_add(incoming) <= self.max_readings => span,
                _ => count_pending(conn)?,
            };
            let room = self.max_readings.saturating_sub(pending);
            let (to_insert, mut dropped) = match self.overflow {
                OverflowPolicy::DropOldest => {
                    let excess = (pending + incoming).saturating_sub(self.max_readings);
                    let from_old = excess.min(pending);
                    delete_oldest(conn, from_old)?;
                    // A single batch larger than the bound keeps only its newest part.
                    let skip = (excess - from_old) as usize;
                    (&readings[skip..], excess)
                }
                OverflowPolicy::DropNewest => {
                    let keep = room.min(incoming) as usize;
                    (&readings[..keep], incoming - keep as u64)
                }
            };
            let mut stmt = conn.prepare_cached(
                "INSERT INTO readings (captured_at_ms, fields, boot_id, monotonic_ms, clock_synced)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (i, r) in to_insert.iter().enumerate() {
                // Never `serde_json::to_string(&r.fields)`: it writes NaN and inf as null,
                // which no later read could parse back.
                let fields = r.stored_fields_json().map_err(|e| QueueError::BadRow {
                    id: 0,
                    detail: e.to_string(),
                })?;
                let (boot, mono, synced) = match origin.and_then(|(b, c)| Some((b, c.get(i)?))) {
                    Some((boot, c)) => (Some(boot), Some(c.monotonic_ms), c.synced),
                    None => (None, None, true),
                };
                stmt.execute(params![r.captured_at_ms, fields, boot, mono, synced])?;
            }
            drop(stmt);
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

    /// Keeps the queue within `max_bytes`; returns (readings dropped, dead letters evicted).
    ///
    /// The pending readings are measured on their own (the `pending_bytes` estimate), so
    /// dead letters can never make the queue drop every new reading. Dead letters are
    /// bounded by what room is left: while the file's live pages exceed `max_bytes`, the
    /// oldest dead letters go first (counted in `dead_evicted_total`). Pending readings
    /// are the data the gateway exists to deliver; a dead letter was already refused.
    fn enforce_max_bytes(&self, conn: &Connection) -> Result<(u64, u64), QueueError> {
        let used = pending_bytes(conn)?;
        let dropped = if used > self.max_bytes {
            let newest = self.overflow == OverflowPolicy::DropNewest;
            delete_covering(
                conn,
                "readings",
                &reading_size_sql(),
                used - self.max_bytes,
                newest,
            )?
        } else {
            0
        };
        let live = live_bytes(conn)?;
        let evicted = if live > self.max_bytes {
            delete_covering(
                conn,
                "dead_letters",
                &format!("length(fields) + length(response) + {DEAD_ROW_OVERHEAD}"),
                live - self.max_bytes,
                false,
            )?
        } else {
            0
        };
        Ok((dropped, evicted))
    }

    /// Holds back this boot's readings captured before the clock was synchronised: they
    /// are sent once `fix_unsynced` has corrected their timestamps.
    pub fn set_current_boot(&mut self, boot_id: &str) {
        self.current_boot = Some(boot_id.to_owned());
    }

    /// Rewrites the capture time of this boot's unsynchronised readings from their
    /// CLOCK_BOOTTIME, now that the wall clock is right:
    /// wall(now) - (boottime(now) - boottime(capture)).
    pub fn fix_unsynced(
        &self,
        boot_id: &str,
        now_wall_ms: i64,
        now_boot_ms: i64,
    ) -> Result<u64, QueueError> {
        Ok(self.conn.execute(
            "UPDATE readings SET captured_at_ms = ?2 - (?3 - monotonic_ms), clock_synced = 1
             WHERE clock_synced = 0 AND boot_id = ?1 AND monotonic_ms IS NOT NULL",
            params![boot_id, now_wall_ms, now_boot_ms],
        )? as u64)
    }

    /// Whether readings wait for a timestamp correction.
    pub fn has_unsynced(&self) -> Result<bool, QueueError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM readings WHERE clock_synced = 0 LIMIT 1",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Corrects the unsynchronised readings of earlier boots from a reading of the same
    /// boot taken once the clock was synchronised: within one boot, wall - boottime is
    /// the same for every capture, so one synced reading dates all the others. Cheap to
    /// run at start: one scan, then one per earlier boot that has such readings.
    pub fn fix_earlier_boots(&self) -> Result<u64, QueueError> {
        let boots: Vec<String> = self
            .conn
            .prepare(
                "SELECT DISTINCT boot_id FROM readings
                 WHERE clock_synced = 0 AND boot_id IS NOT NULL AND boot_id IS NOT ?1",
            )?
            .query_map([&self.current_boot], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut fixed = 0;
        for boot in boots {
            let offset: Option<i64> = self
                .conn
                .query_row(
                    "SELECT captured_at_ms - monotonic_ms FROM readings
                     WHERE boot_id = ?1 AND clock_synced = 1 AND monotonic_ms IS NOT NULL
                     ORDER BY id LIMIT 1",
                    [&boot],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(offset) = offset {
                fixed += self.conn.execute(
                    "UPDATE readings SET captured_at_ms = monotonic_ms + ?2, clock_synced = 1
                     WHERE boot_id = ?1 AND clock_synced = 0 AND monotonic_ms IS NOT NULL",
                    params![boot, offset],
                )? as u64;
            }
        }
        Ok(fixed)
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
                let mut stmt = self.conn.prepare_cached(
                    "SELECT id, captured_at_ms, fields, clock_synced FROM readings
                     WHERE id > ?1 AND (clock_synced = 1 OR ?3 IS NULL
                         OR (boot_id IS NOT ?3 AND NOT ?4 AND captured_at_ms >= ?5))
                     ORDER BY id LIMIT ?2",
                )?;
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

    /// Moves an unreadable row out of the way of the others (see `peek`).
    fn quarantine(&self, id: i64, detail: &str) {
        if !self.writable {
            tracing::warn!(
                reading_id = id,
                "stored reading is unreadable ({detail}); skipped"
            );
            return;
        }
        let reason = format!(
            "unreadable in the queue, never sent: {detail} (fix it and `queue retry-dead --id N`, or purge it)"
        );
        match self.dead_letter(id, 0, &reason) {
            Ok(_) => tracing::warn!(
                reading_id = id,
                "stored reading is unreadable ({detail}); moved to the dead letters with status 0"
            ),
            // Skipped this time; the next read tries again. Not fatal: the rows behind it
            // are still sent.
            Err(e) => tracing::error!(
                reading_id = id,
                "stored reading is unreadable ({detail}) and cannot be moved to the dead letters: {e}"
            ),
        }
    }

    /// The server took these readings: they leave the queue.
    pub fn ack(&self, ids: &[i64]) -> Result<u64, QueueError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.atomically(|conn| {
            let mut stmt = conn.prepare_cached("DELETE FROM readings WHERE id = ?1")?;
            let mut n = 0;
            for id in ids {
                n += stmt.execute([id])? as u64;
            }
            drop(stmt);
            bump_counter(conn, COUNTER_UPLOADED, n)?;
            Ok(n)
        })
    }

    /// The server refused this reading for good: keep it with the answer, out of the way.
    pub fn dead_letter(&self, id: i64, status: u16, response: &str) -> Result<bool, QueueError> {
        self.atomically(|conn| {
            let moved = conn.execute(
                "INSERT INTO dead_letters (reading_id, captured_at_ms, fields, status, response, failed_at_ms)
                 SELECT id, captured_at_ms, fields, ?2, ?3, ?4 FROM readings WHERE id = ?1",
                params![id, status, truncate(response, 4096), unix_ms(SystemTime::now())],
            )?;
            conn.execute("DELETE FROM readings WHERE id = ?1", [id])?;
            Ok(moved > 0)
        })
    }

    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, reading_id, captured_at_ms, fields, status, response, failed_at_ms
             FROM dead_letters ORDER BY id LIMIT ?1",
        )?;
        // Dead letters include rows quarantined because they were unreadable: every
        // column but the ids is read leniently, so that they can still be listed.
        let rows = stmt.query_map([limit as i64], |r| {
            let fields = lenient_text(r.get(3)?);
            Ok(DeadLetter {
                id: r.get(0)?,
                reading_id: r.get(1)?,
                captured_at: match r.get(2)? {
                    rusqlite::types::Value::Integer(ms) => format_rfc3339_ms(ms),
                    other => lenient_text(other),
                },
                fields: serde_json::from_str(&fields).unwrap_or(serde_json::Value::String(fields)),
                status: r.get(4)?,
                response: r.get(5)?,
                failed_at: format_rfc3339_ms(r.get(6)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Puts dead letters (one, or all) back into the pending queue; returns how many.
    pub fn retry_dead(&self, id: Option<i64>) -> Result<u64, QueueError> {
        self.atomically(|conn| {
            // `?1 IS NULL` selects every row when no id is given.
            let filter = if id.is_some() {
                "WHERE id = ?1"
            } else {
                "WHERE ?1 IS NULL"
            };
            let n = conn.execute(
                &format!(
                    "INSERT INTO readings (captured_at_ms, fields, clock_synced)
                     SELECT captured_at_ms, fields, 1 FROM dead_letters {filter} ORDER BY id"
                ),
                [id],
            )?;
            conn.execute(&format!("DELETE FROM dead_letters {filter}"), [id])?;
            Ok(n as u64)
        })
    }

    /// Deletes dead letters, and with `all` the pending readings too; returns how many.
    pub fn purge(&self, all: bool) -> Result<u64, QueueError> {
        self.atomically(|conn| {
            let mut n = conn.execute("DELETE FROM dead_letters", [])? as u64;
            if all {
                n += conn.execute("DELETE FROM readings", [])? as u64;
            }
            Ok(n)
        })
    }

    /// Counts readings dropped outside SQLite (in memory, while writes failed).
    pub fn add_dropped(&self, n: u64) -> Result<(), QueueError> {
        bump_counter(&self.conn, COUNTER_DROPPED, n)
    }

    /// Records daemon state for `queue stats` in other processes.
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
            "SELECT count(*), min(captured_at_ms), max(captured_at_ms) FROM readings",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let dead: u64 = conn.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))?;
        let status = |key: &str| -> Result<Option<String>, QueueError> {
            Ok(conn
                .query_row("SELECT value FROM status WHERE name = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()?)
        };
        let in_flight = status(status_key::IN_FLIGHT)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(Stats {
            path: self.path.display().to_string(),
            pending,
            dead,
            in_flight,
            dropped_total: counter(conn, COUNTER_DROPPED)?,
            uploaded_total: counter(conn, COUNTER_UPLOADED)?,
            dead_evicted_total: counter(conn, COUNTER_DEAD_EVICTED)?,
            oldest_captured_at: oldest.map(format_rfc3339_ms),
            newest_captured_at: newest.map(format_rfc3339_ms),
            db_bytes: file_len(&self.path) + file_len(&wal_path(&self.path)),
            last_upload_at: status(status_key::LAST_UPLOAD_AT)?,
            last_error: status(status_key::LAST_ERROR)?,
            uploader_state: status(status_key::UPLOADER_STATE)?,
            sensors: status(status_key::SENSORS)?.and_then(|s| serde_json::from_str(&s).ok()),
            auth: status(status_key::AUTH)?.and_then(|s| serde_json::from_str(&s).ok()),
            uploads: status(status_key::UPLOADS)?.and_then(|s| serde_json::from_str(&s).ok()),
            daemon_updated_at: status(status_key::UPDATED_AT)?,
            upload_concurrency: status(status_key::UPLOAD_CONCURRENCY)?
                .and_then(|s| s.parse().ok()),
        })
    }
}

fn open_error(path: &Path, source: rusqlite::Error) -> QueueError {
    let hint = match source.sqlite_error_code() {
        Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::PermissionDenied)
        | Some(rusqlite::ErrorCode::ReadOnly) => {
            " (the service user needs write access to the queue file and its directory, the StateDirectory)"
        }
        Some(rusqlite::ErrorCode::DiskFull) => " (the disk is full: free some space)",
        _ => "",
    };
    QueueError::Open {
        path: path.to_path_buf(),
        source,
        hint,
    }
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), QueueError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(QueueError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
        });
    }
    if version < 1 {
        // AUTOINCREMENT: an id is never reused, so a late ack can never delete a newer reading.
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS readings (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 captured_at_ms INTEGER NOT NULL,
                 fields TEXT NOT NULL,
                 boot_id TEXT,
                 monotonic_ms INTEGER,
                 clock_synced INTEGER NOT NULL DEFAULT 1
             );
             CREATE TABLE IF NOT EXISTS dead_letters (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 reading_id INTEGER NOT NULL,
                 captured_at_ms INTEGER NOT NULL,
                 fields TEXT NOT NULL,
                 status INTEGER NOT NULL,
                 response TEXT NOT NULL,
                 failed_at_ms INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS status (name TEXT PRIMARY KEY, value TEXT NOT NULL);
             PRAGMA user_version = 1;
             COMMIT;",
        )?;
    }
    Ok(())
}

/// SQL for the estimated size of a `readings` row (see `ROW_OVERHEAD`).
fn reading_size_sql() -> String {
    format!("length(fields) + coalesce(length(boot_id), 0) + {ROW_OVERHEAD}")
}

/// Keeps the `pending_bytes` counter with triggers, so that every writer (the daemon,
/// `queue retry-dead` and `purge` in another process) keeps it right and `max_bytes`
/// needs no scan. Installed once per file, with the current total; no schema version
/// bump, so an older binary still opens the file (and its triggers keep the count).
fn ensure_pending_bytes(conn: &Connection) -> Result<(), QueueError> {
    let installed: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'trigger' AND name = 'readings_bytes_delete'",
        [],
        |r| r.get(0),
    )?;
    if installed {
        return Ok(());
    }
    let size_new = reading_size_sql()
        .replace("fields", "NEW.fields")
        .replace("boot_id", "NEW.boot_id");
    let size_old = reading_size_sql()
        .replace("fields", "OLD.fields")
        .replace("boot_id", "OLD.boot_id");
    let sql = format!(
        "BEGIN IMMEDIATE;
         CREATE TRIGGER IF NOT EXISTS readings_bytes_insert AFTER INSERT ON readings BEGIN
             UPDATE counters SET value = value + ({size_new}) WHERE name = '{COUNTER_PENDING_BYTES}';
         END;
         CREATE TRIGGER IF NOT EXISTS readings_bytes_delete AFTER DELETE ON readings BEGIN
             UPDATE counters SET value = value - ({size_old}) WHERE name = '{COUNTER_PENDING_BYTES}';
         END;
         INSERT OR REPLACE INTO counters (name, value)
             SELECT '{COUNTER_PENDING_BYTES}', coalesce(sum({size}), 0) FROM readings;
         COMMIT;",
        size = reading_size_sql()
    );
    if let Err(e) = conn.execute_batch(&sql) {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        return Err(e.into());
    }
    Ok(())
}

/// The estimated bytes of the pending readings.
fn pending_bytes(conn: &Connection) -> Result<u64, QueueError> {
    let v: Option<i64> = conn
        .query_row(
            "SELECT value FROM counters WHERE name = ?1",
            [COUNTER_PENDING_BYTES],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

/// Deletes the oldest (or newest) rows of `table` whose `size` adds up to `bytes` at
/// least; returns how many. Reads only the rows it deletes, and one more.
fn delete_covering(
    conn: &Connection,
    table: &str,
    size: &str,
    bytes: u64,
    newest: bool,
) -> Result<u64, QueueError> {
    let order = if newest { "DESC" } else { "ASC" };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, {size} FROM {table} ORDER BY id {order}"
    ))?;
    let mut rows = stmt.query([])?;
    let (mut covered, mut last) = (0u64, None);
    while let Some(row) = rows.next()? {
        last = Some(row.get::<_, i64>(0)?);
        covered += row.get::<_, Option<i64>>(1)?.unwrap_or(0).max(1) as u64;
        if covered >= bytes {
            break;
        }
    }
    drop(rows);
    let Some(last) = last else { return Ok(0) };
    let cmp = if newest { ">=" } else { "<=" };
    Ok(conn.execute(&format!("DELETE FROM {table} WHERE id {cmp} ?1"), [last])? as u64)
}

/// Any stored value as text, for listing rows whose types are not what they should be.
fn lenient_text(v: rusqlite::types::Value) -> String {
    use rusqlite::types::Value;
    match v {
        Value::Null => "null".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(t) => t,
        Value::Blob(b) => String::from_utf8_lossy(&b).into_owned(),
    }
}

/// One `readings` row of `peek`, or why it cannot be read.
fn read_stored(r: &rusqlite::Row<'_>) -> Result<Stored, String> {
    let id: i64 = r.get(0).map_err(|e| e.to_string())?;
    let captured_at_ms: i64 = r.get(1).map_err(|e| format!("captured_at_ms: {e}"))?;
    let fields: String = r.get(2).map_err(|e| format!("fields: {e}"))?;
    let fields = serde_json::from_str(&fields).map_err(|e| format!("fields {fields}: {e}"))?;
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

/// `max(id) - min(id) + 1`: at least the number of pending readings, read from the rowid index.
fn id_span(conn: &Connection) -> Result<u64, QueueError> {
    let (min, max): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(id), max(id) FROM readings", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    Ok(match (min, max) {
        (Some(min), Some(max)) => (max - min + 1) as u64,
        _ => 0,
    })
}

fn delete_oldest(conn: &Connection, n: u64) -> Result<u64, QueueError> {
    if n == 0 {
        return Ok(0);
    }
    Ok(conn.execute(
        "DELETE FROM readings WHERE id IN (SELECT id FROM readings ORDER BY id LIMIT ?1)",
        [n as i64],
    )? as u64)
}

fn live_bytes(conn: &Connection) -> Result<u64, QueueError> {
    let pages: u64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: u64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(pages.saturating_sub(free) * size)
}

fn counter(conn: &Connection, name: &str) -> Result<u64, QueueError> {
    Ok(conn
        .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0))
}

fn bump_counter(conn: &Connection, name: &str, by: u64) -> Result<(), QueueError> {
    conn.prepare_cached(
        "INSERT INTO counters (name, value) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
    )?
    .execute(params![name, by as i64])?;
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn wal_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Renames a damaged queue (and its WAL and shared-memory files) out of the way, never
/// over an earlier one: each is evidence of what the SD card did.
fn move_aside(path: &Path) -> Result<PathBuf, QueueError> {
    let stamp = unix_ms(SystemTime::now()) / 1000;
    let mut aside = PathBuf::new();
    for n in 0.. {
        let mut name = path.as_os_str().to_owned();
        name.push(if n == 0 {
            format!(".corrupt-{stamp}")
        } else {
            format!(".corrupt-{stamp}-{n}")
        });
        aside = PathBuf::from(name);
        if !aside.exists() {
            break;
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = aside.as_os_str().to_owned();
        to.push(suffix);
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(QueueError::MoveAside {
                    path: PathBuf::from(from),
                    source,
                })
            }
        }
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn tempdir() -> Result<tempfile::TempDir, QueueError> {
        tempfile::tempdir().map_err(|e| QueueError::BadRow {
            id: 0,
            detail: e.to_string(),
        })
    }

    fn config(dir: &Path, max: u64, overflow: OverflowPolicy) -> QueueConfig {
        QueueConfig {
            path: dir.join("q.db"),
            max_readings: max,
            overflow,
            ..QueueConfig::default()
        }
    }

    fn reading(ms: i64) -> Reading {
        let mut fields = BTreeMap::new();
        fields.insert("temperature".to_owned(), ms as f64 / 10.0);
        Reading {
            captured_at_ms: ms,
            fields,
        }
    }

    fn open(dir: &Path, max: u64, overflow: OverflowPolicy) -> Queue {
        match Queue::open(&config(dir, max, overflow)) {
            Ok(q) => q,
            Err(e) => panic!("{e}"),
        }
    }

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
    fn drop_oldest_keeps_the_newest_and_counts() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let q = open(dir.path(), 3, OverflowPolicy::DropOldest);
        q.enqueue(&[reading(1), reading(2)])?;
        let r = q.enqueue(&[reading(3), reading(4), reading(5)])?;
        assert_eq!(
            r,
            Enqueued {
                inserted: 3,
                dropped: 2,
                dead_evicted: 0
            }
        );
        let kept: Vec<i64> = q
            .peek(0, 10)?
            .iter()
            .map(|s| s.reading.captured_at_ms)
            .collect();
        assert_eq!(kept, vec![3, 4, 5]);
        // One batch larger than the bound keeps only its newest part.
        let r = q.enqueue(&[reading(6), reading(7), reading(8), reading(9)])?;
        assert_eq!(
            r,
            Enqueued {
                inserted: 3,
                dropped: 4,
                dead_evicted: 0
            }
        );
        let kept: Vec<i64> = q
            .peek(0, 10)?
            .iter()
            .map(|s| s.reading.captured_at_ms)
            .collect();
        assert_eq!(kept, vec![7, 8, 9]);
        assert_eq!(q.stats()?.dropped_total, 6);
        Ok(())
    }

    #[test]
    fn drop_newest_keeps_what_is_queued() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let q = open(dir.path(), 3, OverflowPolicy::DropNewest);
        let r = q.enqueue(&[reading(1), reading(2), reading(3), reading(4)])?;
        assert_eq!(
            r,
            Enqueued {
                inserted: 3,
                dropped: 1,
                dead_evicted: 0
            }
        );
        let kept: Vec<i64> = q
            .peek(0, 10)?
            .iter()
            .map(|s| s.reading.captured_at_ms)
            .collect();
        assert_eq!(kept, vec![1, 2, 3]);
        assert_eq!(q.stats()?.dropped_total, 1);
        Ok(())
    }

    #[test]
    fn max_bytes_bounds_the_live_pages() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let mut cfg = config(dir.path(), 1_000_000, OverflowPolicy::DropOldest);
        cfg.max_bytes = 64 * 1024;
        let q = Queue::open(&cfg)?;
        for chunk in 0..50 {
            let batch: Vec<Reading> = (0..100).map(|i| reading(chunk * 100 + i)).collect();
            q.enqueue(&batch)?;
        }
        let stats = q.stats()?;
        assert!(stats.dropped_total > 0);
        assert_eq!(stats.pending + stats.dropped_total, 5000);
        assert!(pending_bytes(&q.conn)? <= 64 * 1024);
        // The estimate errs on the large side: the file's live pages stay near the bound.
        assert!(
            live_bytes(&q.conn)? <= 64 * 1024 * 5 / 4,
            "{}",
            live_bytes(&q.conn)?
        );
        // The triggers' running sum is the sum of the rows.
        let scanned: i64 = q.conn.query_row(
            &format!("SELECT sum({}) FROM readings", reading_size_sql()),
            [],
            |r| r.get(0),
        )?;
        assert_eq!(pending_bytes(&q.conn)?, scanned as u64);
        // The newest reading is always kept under drop_oldest.
        assert_eq!(
            stats.newest_captured_at.as_deref(),
            Some("1970-01-01T00:00:04.999Z")
        );
        Ok(())
    }

    #[test]
    fn dead_letters_keep_status_and_answer_and_can_be_retried() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        q.enqueue(&[reading(1), reading(2)])?;
        let first = q.peek(0, 1)?[0].id;
        assert!(q.dead_letter(first, 400, r#"{"temperature":["bad"]}"#)?);
        let dead = q.dead_letters(10)?;
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].status, 400);
        assert!(dead[0].response.contains("bad"));
        assert_eq!(q.stats()?.pending, 1);
        assert_eq!(q.retry_dead(Some(dead[0].id))?, 1);
        let stats = q.stats()?;
        assert_eq!((stats.pending, stats.dead), (2, 0));
        q.dead_letter(q.peek(0, 1)?[0].id, 422, "x")?;
        assert_eq!(q.purge(false)?, 1);
        assert_eq!(q.purge(true)?, 1);
        assert_eq!(q.stats()?.pending, 0);
        Ok(())
    }

    /// A temporary directory holding `q.db`, 8 KiB that are not an SQLite database.
    fn garbage_queue_file() -> Result<tempfile::TempDir, QueueError> {
        let dir = tempdir()?;
        let path = dir.path().join("q.db");
        std::fs::write(&path, vec![0x5a; 8192]).map_err(|e| QueueError::BadRow {
            id: 0,
            detail: e.to_string(),
        })?;
        Ok(dir)
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_a_fresh_queue_starts() -> Result<(), QueueError> {
        let dir = garbage_queue_file()?;
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        q.enqueue(&[reading(1)])?;
        assert_eq!(q.pending()?, 1);
        let aside = std::fs::read_dir(dir.path())
            .map_err(|e| QueueError::BadRow {
                id: 0,
                detail: e.to_string(),
            })?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .count();
        assert_eq!(aside, 1);
        Ok(())
    }

    #[test]
    fn unsynced_readings_are_held_then_corrected_from_boottime() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let mut q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        q.set_current_boot("boot-b");
        let clocks = [
            CaptureClock {
                monotonic_ms: 1_000,
                synced: false,
            },
            CaptureClock {
                monotonic_ms: 2_000,
                synced: false,
            },
        ];
        // A reading of an earlier boot can no longer be corrected: it goes out flagged.
        q.enqueue_with_origin(
            &[reading(1_800_000_000_005)],
            Some(("boot-a", &clocks[..1])),
        )?;
        q.enqueue_with_origin(&[reading(10), reading(11)], Some(("boot-b", &clocks)))?;
        let visible = q.peek(0, 10)?;
        assert_eq!(visible.len(), 1);
        assert!(visible[0].clock_unsynced);
        assert!(q.has_unsynced()?);
        // Clock synchronised at wall 1_800_000_000_000 ms when boottime is 61_000 ms.
        assert_eq!(q.fix_unsynced("boot-b", 1_800_000_000_000, 61_000)?, 2);
        let all = q.peek(0, 10)?;
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].reading.captured_at_ms, 1_800_000_000_000 - 60_000);
        assert_eq!(all[2].reading.captured_at_ms, 1_800_000_000_000 - 59_000);
        assert!(!all[1].clock_unsynced);

        let mut cfg = config(dir.path(), 100, OverflowPolicy::DropOldest);
        cfg.path = dir.path().join("hold.db");
        cfg.unfixable_time = UnfixableTime::Hold;
        let mut held = Queue::open(&cfg)?;
        held.set_current_boot("boot-b");
        held.enqueue_with_origin(&[reading(5)], Some(("boot-a", &clocks[..1])))?;
        assert!(held.peek(0, 10)?.is_empty(), "hold keeps it back");
        Ok(())
    }

    #[test]
    fn earlier_boot_is_fixed_from_its_synced_readings_and_1970_is_never_sent(
    ) -> Result<(), QueueError> {
        let dir = tempdir()?;
        let mut q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        q.set_current_boot("boot-c");
        let unsynced = |ms| CaptureClock {
            monotonic_ms: ms,
            synced: false,
        };
        // Boot a: two readings at 1970 before the clock synced, then one after, at
        // boottime 70 s when the wall clock read 1_800_000_000_000.
        q.enqueue_with_origin(
            &[reading(10_000), reading(20_000), reading(1_800_000_000_000)],
            Some((
                "boot-a",
                &[
                    unsynced(10_000),
                    unsynced(20_000),
                    CaptureClock {
                        monotonic_ms: 70_000,
                        synced: true,
                    },
                ],
            )),
        )?;
        // Boot b never synced: nothing to date it from, and 1970 is below the floor.
        q.enqueue_with_origin(&[reading(30_000)], Some(("boot-b", &[unsynced(30_000)])))?;
        assert_eq!(q.fix_earlier_boots()?, 2);
        let sent = q.peek(0, 10)?;
        let times: Vec<i64> = sent.iter().map(|s| s.reading.captured_at_ms).collect();
        assert_eq!(
            times,
            vec![1_799_999_940_000, 1_799_999_950_000, 1_800_000_000_000],
            "boot b's 1970 reading is held even in flag mode"
        );
        assert!(sent.iter().all(|s| !s.clock_unsynced));
        assert_eq!(q.pending()?, 4, "held, not dropped");
        Ok(())
    }

    #[test]
    fn dead_letters_past_max_bytes_do_not_drop_new_readings() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let mut cfg = config(dir.path(), 1_000_000, OverflowPolicy::DropOldest);
        cfg.max_bytes = 64 * 1024;
        let q = Queue::open(&cfg)?;
        let batch: Vec<Reading> = (0..40).map(reading).collect();
        q.enqueue(&batch)?;
        let answer = "x".repeat(4000);
        for s in q.peek(0, 100)? {
            q.dead_letter(s.id, 400, &answer)?;
        }
        assert!(
            live_bytes(&q.conn)? > 64 * 1024,
            "dead letters fill the file"
        );
        let r = q.enqueue(&[reading(100), reading(101)])?;
        assert_eq!((r.inserted, r.dropped), (2, 0), "{r:?}");
        assert!(r.dead_evicted > 0, "{r:?}");
        let stats = q.stats()?;
        assert_eq!(stats.pending, 2);
        assert_eq!(stats.dropped_total, 0);
        assert_eq!(stats.dead_evicted_total, r.dead_evicted);
        assert_eq!(stats.dead, 40 - r.dead_evicted);
        // The oldest dead letters went first.
        let first_left = q.dead_letters(1)?;
        assert_eq!(first_left[0].reading_id, 1 + r.dead_evicted as i64);
        Ok(())
    }

    #[test]
    fn an_unreadable_row_is_quarantined_and_the_rest_is_read() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        q.enqueue(&[reading(1), reading(2), reading(3), reading(4)])?;
        q.conn.execute(
            r#"UPDATE readings SET fields = '{"temperature":null}' WHERE id = 2"#,
            [],
        )?;
        q.conn.execute(
            "UPDATE readings SET captured_at_ms = 'soon' WHERE id = 3",
            [],
        )?;
        // The read-only view (CLI) skips it without moving it.
        let ro = Queue::open_read_only(&dir.path().join("q.db"))?;
        let ids: Vec<i64> = ro.peek(0, 10)?.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![1, 4]);
        // A page of one row that is unreadable does not end the read.
        let ids: Vec<i64> = q.peek(1, 1)?.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![4]);
        let dead = q.dead_letters(10)?;
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0].status, 0);
        assert!(
            dead[0].response.contains("unreadable"),
            "{}",
            dead[0].response
        );
        assert_eq!(q.pending()?, 2);
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
    fn maintenance_open_never_moves_a_corrupt_file() -> Result<(), QueueError> {
        let dir = garbage_queue_file()?;
        let err = Queue::open_existing(&config(dir.path(), 100, OverflowPolicy::DropOldest)).err();
        assert!(
            matches!(err, Some(QueueError::CorruptNotMoved { .. })),
            "{err:?}"
        );
        assert!(err.is_some_and(|e| e.to_string().contains("restart the daemon")));
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .map_err(|e| QueueError::BadRow {
                id: 0,
                detail: e.to_string(),
            })?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["q.db".to_owned()], "nothing moved or created");
        assert_eq!(
            std::fs::read(dir.path().join("q.db"))
                .map(|b| b.len())
                .unwrap_or(0),
            8192
        );
        Ok(())
    }

    #[test]
    fn read_only_open_of_a_missing_queue_says_so() {
        let err = Queue::open_read_only(Path::new("/nonexistent/q.db")).err();
        assert!(matches!(err, Some(QueueError::Missing(_))));
        // Created by a daemon that has not committed its schema yet.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("q.db"), b"").expect("empty file");
        let err = Queue::open_read_only(&dir.path().join("q.db")).err();
        assert!(matches!(err, Some(QueueError::Missing(_))), "{err:?}");
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
