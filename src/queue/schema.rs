//! Opening the queue file: creating it, checking it, migrating its schema, and moving a
//! corrupt file aside so that a damaged SD card never turns into a crash loop. The
//! daemon, the read-only commands and the maintenance commands each open it their way.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags};

use super::wal_index::{self, WAL_INDEX_DIR};
use super::{Queue, QueueError};
use crate::config::{OverflowPolicy, QueueConfig, UnfixableTime};
use crate::reading::unix_ms;

pub(super) const SCHEMA_VERSION: i64 = 3;
/// The first version whose rows keep their values and a layout (`layout`).
const PACKED_SINCE: i64 = 3;
/// Page size of a queue. A commit appends one WAL frame per page it changed (the page
/// plus 24 bytes), and the kernel writes whole 4 KiB blocks: a 4 KiB page's frame (4,120
/// bytes) always touches two blocks, a 1 KiB page's frame (1,048 bytes) one, or two one
/// time in four (5.1 KiB on average). Measured (`bash scripts/bench.sh --wear`, README "SD
/// card wear"): 20-50 % less written per reading than 4 KiB pages at 1 s and 5 s
/// sampling, 28 % less at 1 kHz. Smaller pages would split the table's pages more often.
/// A queue made with another page size is converted at the daemon's start while it is
/// small (`convert_page_size`).
const PAGE_SIZE: i64 = 1024;
/// The WAL is checkpointed once it holds this many bytes (see `open_checked`).
const WAL_CHECKPOINT_BYTES: i64 = 1024 * 1024;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Queue {
    /// Opens (creating if needed) the queue for the daemon. A corrupt file is moved aside
    /// (`queue.db.corrupt-<unix time>`) and a fresh queue started, so a damaged SD card
    /// never turns into a crash loop.
    pub fn open(config: &QueueConfig) -> Result<Queue, QueueError> {
        let path = &config.path;
        wal_index::check_dir(Path::new(WAL_INDEX_DIR))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| QueueError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        if !path.exists() && super::beside(path, "-wal").exists() {
            // The queue was deleted under a daemon: its log alone would be replayed into
            // the fresh file as a torso of the old one.
            let aside = move_aside(path)?;
            tracing::warn!(
                queue = %path.display(),
                moved_to = %aside.display(),
                "the queue file is missing but its WAL is there; moved the WAL aside and started a fresh queue"
            );
        }
        let conn = match Self::open_checked(path) {
            Ok(conn) => {
                convert_page_size(&conn, path)?;
                conn
            }
            Err(e) if e.is_corrupt() => {
                let aside = move_aside(path)?;
                tracing::error!(
                    queue = %path.display(),
                    moved_to = %aside.display(),
                    "queue database is corrupt ({e}); moved it aside and started a fresh queue"
                );
                Self::open_checked(path)?
            }
            Err(e) => return Err(e),
        };
        log_wal_index(path);
        Self::writable(conn, config)
    }

    /// A queue that writes, bounded as `config` says.
    fn writable(conn: Connection, config: &QueueConfig) -> Result<Queue, QueueError> {
        let next_id = std::cell::Cell::new(first_free_id(&conn)?);
        let packed = user_version(&conn)? >= PACKED_SINCE;
        Ok(Queue {
            packed,
            conn,
            path: config.path.clone(),
            max_readings: config.max_readings,
            max_bytes: config.max_bytes,
            overflow: config.overflow,
            current_boot: None,
            hold_unfixable: config.unfixable_time == UnfixableTime::Hold,
            clock_floor_ms: crate::clock::clock_floor_ms(),
            writable: true,
            next_id,
            pending_bytes: Default::default(),
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
        // Only takes effect on a new, empty file (before WAL mode and the first table).
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|source| open_error(path, source))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // The access pattern is append at the tail, read and delete at the head: a small
        // page cache serves it, and memory is scarce on a Pi Zero (default is 2 MiB).
        conn.pragma_update(None, "cache_size", -512)?;
        // After a checkpoint the WAL file is cut back to this size, so a burst (a backlog
        // drained, a disk that was full) does not leave it large for good.
        conn.pragma_update(None, "journal_size_limit", 1024 * 1024)?;
        // Checkpoint once the WAL holds 1 MiB (SQLite's default is 1000 pages, 4 MiB with
        // 4 KiB pages). A checkpoint needs free room for the pages it moves into the
        // database file, so a WAL that grew until it filled a small filesystem can never be
        // checkpointed: the queue would stay stuck even after space returned. A queue
        // rewrites the same few pages (tail and head of `readings`), so a checkpoint copies
        // few distinct pages: at 1 MiB the checkpoints cost under 5 % of what is written.
        checkpoint_every_wal_bytes(&conn)?;
        migrate(&conn, path)?;
        Ok(conn)
    }

    /// Opens an existing queue for reading only (`queue stats`, `list`, `export`), so a
    /// command run as root never creates a file the service user cannot write.
    pub fn open_read_only(path: &Path) -> Result<Queue, QueueError> {
        if !path.exists() {
            return Err(QueueError::Missing(path.to_path_buf()));
        }
        wal_index::check_dir(Path::new(WAL_INDEX_DIR))?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| open_error(path, source))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // A daemon starting for the first time creates the file before its tables: until
        // the schema is committed the queue does not exist yet, rather than "no such table".
        let version = user_version(&conn)?;
        if version == 0 {
            return Err(QueueError::Missing(path.to_path_buf()));
        }
        Ok(Queue {
            packed: version >= PACKED_SINCE,
            next_id: Default::default(),
            pending_bytes: Default::default(),
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
        wal_index::check_dir(Path::new(WAL_INDEX_DIR))?;
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
        Self::writable(conn, config)
    }
}

/// Sets `wal_autocheckpoint` (in pages) to `WAL_CHECKPOINT_BYTES` for the file's page
/// size; returns the page size.
fn checkpoint_every_wal_bytes(conn: &Connection) -> Result<i64, QueueError> {
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        WAL_CHECKPOINT_BYTES / page_size.max(512),
    )?;
    Ok(page_size)
}

/// A queue is converted to `PAGE_SIZE` at the daemon's start only while its live pages
/// take at most this much: `VACUUM` rewrites the whole file (seconds on an SD card at
/// this size) and needs about as much free space again.
const CONVERT_PAGE_SIZE_UP_TO: u64 = 8 * 1024 * 1024;
/// Free space kept beyond three times the file's size for the conversion.
const CONVERT_SPARE_ROOM: u64 = 4 * 1024 * 1024;

/// Rewrites a queue made with another page size (by a version before 1 KiB pages) with
/// `PAGE_SIZE`, when it is small enough (a drained queue is). SQLite changes the page size
/// of a WAL file only through a rollback-journal `VACUUM`, which is atomic: a crash or a
/// full disk leaves the file as it was, and the queue then runs on its old page size (it
/// works, writing more) until a later start succeeds.
fn convert_page_size(conn: &Connection, path: &Path) -> Result<(), QueueError> {
    let page: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages: u64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: u64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let live = pages.saturating_sub(free) * page;
    if page == PAGE_SIZE as u64 || live > CONVERT_PAGE_SIZE_UP_TO {
        return Ok(());
    }
    // Leaving WAL and coming back both write, and a `VACUUM` needs a copy of the file and
    // its journal: on a nearly full disk the queue would be left outside WAL mode, unable
    // to open. Tried only with room to spare; otherwise a later start does it.
    let file = std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let room = super::health::free_space(dir).map_or(0, |(free, _)| free);
    if room < file.saturating_mul(3).saturating_add(CONVERT_SPARE_ROOM) {
        tracing::info!(
            queue = %path.display(),
            page_size = page,
            free_bytes = room,
            "not rewriting the queue with smaller pages now: too little free space; a later start tries again"
        );
        return Ok(());
    }
    let converted = conn
        .pragma_update(None, "journal_mode", "DELETE")
        .and_then(|()| conn.pragma_update(None, "page_size", PAGE_SIZE))
        .and_then(|()| conn.execute_batch("VACUUM"));
    // Back to WAL whatever happened: the queue's durability rests on it.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|source| open_error(path, source))?;
    let now = checkpoint_every_wal_bytes(conn)?;
    match converted {
        Ok(()) => tracing::info!(
            queue = %path.display(),
            from = page,
            to = now,
            "rewrote the queue with smaller pages (fewer bytes written per reading)"
        ),
        Err(e) => tracing::warn!(
            queue = %path.display(),
            page_size = page,
            "cannot rewrite the queue with {PAGE_SIZE}-byte pages ({e}); it keeps its {page}-byte pages (it works, writing more per reading) and the next start tries again"
        ),
    }
    Ok(())
}

/// Says at the daemon's start where the wal-index is: a build whose SQLite lacks
/// `SQLITE_SHM_DIRECTORY` works, but writes it to the card.
fn log_wal_index(path: &Path) {
    match wal_index::location(path) {
        Some(at) if at.starts_with(WAL_INDEX_DIR) => tracing::info!(
            queue = %path.display(),
            wal_index = %at.display(),
            "the queue's wal-index is on tmpfs, off the SD card"
        ),
        Some(at) => tracing::warn!(
            queue = %path.display(),
            wal_index = %at.display(),
            "the queue's wal-index is beside the queue, on the SD card (300-500 bytes/s more written): this binary's SQLite was built without SQLITE_SHM_DIRECTORY (build it with the repository's .cargo/config.toml)"
        ),
        None => tracing::debug!(queue = %path.display(), "no wal-index file found for the queue"),
    }
}

fn open_error(path: &Path, source: rusqlite::Error) -> QueueError {
    let hint = match source.sqlite_error_code() {
        Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::PermissionDenied)
        | Some(rusqlite::ErrorCode::ReadOnly) => {
            " (the service user needs write access to the queue file and its directory, the StateDirectory, and to the wal-index in /dev/shm)"
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

fn user_version(conn: &Connection) -> Result<i64, QueueError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), QueueError> {
    let version = user_version(conn)?;
    if version > SCHEMA_VERSION {
        return Err(QueueError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
        });
    }
    if version < 1 {
        conn.execute_batch(&format!(
            "BEGIN;
             {READINGS_TABLE}
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
             {V3}
             PRAGMA user_version = {SCHEMA_VERSION};
             COMMIT;"
        ))?;
        return Ok(());
    }
    // A version that cannot be migrated for a full disk still works (version 1: its
    // triggers keep a counter nobody reads; version 2: its rows keep their field names,
    // and so do the new ones): the queue runs on it and a later start migrates.
    if version < 2 && !migrated_unless_disk_full(conn, path, 2, migrate_v1_to_v2)? {
        return Ok(());
    }
    if version < 3 {
        migrated_unless_disk_full(conn, path, 3, |conn| {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {V3} PRAGMA user_version = 3; COMMIT;"
            ))
        })?;
    }
    Ok(())
}

/// Runs one migration step (a transaction); false when the disk was too full for it, which
/// leaves the file as it was.
fn migrated_unless_disk_full(
    conn: &Connection,
    path: &Path,
    to: i64,
    step: impl FnOnce(&Connection) -> rusqlite::Result<()>,
) -> Result<bool, QueueError> {
    let Err(e) = step(conn) else {
        return Ok(true);
    };
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let e = QueueError::from(e);
    if !e.is_disk_full() {
        return Err(e);
    }
    tracing::warn!(
        queue = %path.display(),
        "the disk is too full to migrate the queue to schema version {to}; running on version {} (more bytes written per reading) until a start finds room",
        to - 1
    );
    Ok(false)
}

/// Version 3 over version 2: a row keeps its values and a layout, whose field names are
/// stored once (`layout`). Adding a column rewrites no row, so the migration writes a
/// few pages whatever the size of the queue; the rows of version 2 (`layout` NULL) keep
/// their JSON objects and are read as they are.
const V3: &str = "ALTER TABLE readings ADD COLUMN layout INTEGER;
     CREATE TABLE IF NOT EXISTS layouts (id INTEGER PRIMARY KEY, names TEXT NOT NULL UNIQUE);";

/// The last id a version 1 file gave (its AUTOINCREMENT sequence), kept by the migration.
const COUNTER_V1_SEQ: &str = "readings_v1_seq";

/// `readings` as of version 2. Plain `INTEGER PRIMARY KEY`, not AUTOINCREMENT: that kept
/// `sqlite_sequence` in step, one more page written by every commit. Ids are still never
/// reused while the daemon runs: it hands them out itself (`Queue::next_id`).
const READINGS_TABLE: &str = "CREATE TABLE IF NOT EXISTS readings (
                 id INTEGER PRIMARY KEY,
                 captured_at_ms INTEGER NOT NULL,
                 fields TEXT NOT NULL,
                 boot_id TEXT,
                 monotonic_ms INTEGER,
                 clock_synced INTEGER NOT NULL DEFAULT 1
             );";

/// Version 2 writes one page per reading: `readings` without AUTOINCREMENT (rebuilt, ids
/// kept), and no triggers keeping a byte count in `counters` (the estimate is kept in
/// memory, `bounds`). One transaction: a failure leaves version 1 as it was.
fn migrate_v1_to_v2(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         DROP TRIGGER IF EXISTS readings_bytes_insert;
         DROP TRIGGER IF EXISTS readings_bytes_delete;
         DELETE FROM counters WHERE name = 'pending_bytes';
         ALTER TABLE readings RENAME TO readings_v1;
         {READINGS_TABLE}
         INSERT INTO readings (id, captured_at_ms, fields, boot_id, monotonic_ms, clock_synced)
             SELECT id, captured_at_ms, fields, boot_id, monotonic_ms, clock_synced
             FROM readings_v1 ORDER BY id;
         INSERT OR REPLACE INTO counters (name, value)
             SELECT '{COUNTER_V1_SEQ}', seq FROM sqlite_sequence WHERE name = 'readings_v1';
         DROP TABLE readings_v1;
         PRAGMA user_version = 2;
         COMMIT;"
    ))
}

/// The first id above every reading the file knows of, pending or dead (and, for a file
/// made before version 2, every id ever given).
fn first_free_id(conn: &Connection) -> Result<i64, QueueError> {
    let max: i64 = conn.query_row(
        "SELECT max(coalesce((SELECT max(id) FROM readings), 0),
                    coalesce((SELECT max(reading_id) FROM dead_letters), 0))",
        [],
        |r| r.get(0),
    )?;
    // A version 1 file keeps it in `sqlite_sequence`, a migrated one in `counters`.
    let seq: i64 = conn
        .query_row(
            "SELECT max(coalesce((SELECT max(seq) FROM sqlite_sequence WHERE name = 'readings'), 0),
                        coalesce((SELECT value FROM counters WHERE name = ?1), 0))",
            [COUNTER_V1_SEQ],
            |r| r.get(0),
        )
        .unwrap_or(0);
    Ok(max.max(seq) + 1)
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
        let from = super::beside(path, suffix);
        match std::fs::rename(&from, super::beside(&aside, suffix)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(QueueError::MoveAside { path: from, source }),
        }
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::testing::*;

    /// A temporary directory holding `q.db`, 8 KiB that are not an SQLite database.
    fn garbage_queue_file() -> Result<tempfile::TempDir, QueueError> {
        let dir = tempdir()?;
        let path = dir.path().join("q.db");
        std::fs::write(&path, vec![0x5a; 8192]).map_err(io_error)?;
        Ok(dir)
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_a_fresh_queue_starts() -> Result<(), QueueError> {
        let dir = garbage_queue_file()?;
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        q.enqueue(&[reading(1)])?;
        assert_eq!(q.pending()?, 1);
        let aside = file_names(dir.path())?
            .iter()
            .filter(|name| name.contains(".corrupt-"))
            .count();
        assert_eq!(aside, 1);
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
        assert_eq!(
            file_names(dir.path())?,
            vec!["q.db".to_owned()],
            "nothing moved or created"
        );
        assert_eq!(
            std::fs::read(dir.path().join("q.db"))
                .map(|b| b.len())
                .unwrap_or(0),
            8192
        );
        Ok(())
    }

    /// A queue file as version 1 made it (AUTOINCREMENT, the byte-count triggers), with
    /// three readings of which the newest (id 4) was already uploaded.
    fn version_1_file(path: &Path) -> rusqlite::Result<()> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE readings (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 captured_at_ms INTEGER NOT NULL,
                 fields TEXT NOT NULL,
                 boot_id TEXT,
                 monotonic_ms INTEGER,
                 clock_synced INTEGER NOT NULL DEFAULT 1
             );
             CREATE TABLE dead_letters (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 reading_id INTEGER NOT NULL,
                 captured_at_ms INTEGER NOT NULL,
                 fields TEXT NOT NULL,
                 status INTEGER NOT NULL,
                 response TEXT NOT NULL,
                 failed_at_ms INTEGER NOT NULL
             );
             CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE status (name TEXT PRIMARY KEY, value TEXT NOT NULL);
             PRAGMA user_version = 1;
             CREATE TRIGGER readings_bytes_insert AFTER INSERT ON readings BEGIN
                 UPDATE counters SET value = value + length(NEW.fields) + 32 WHERE name = 'pending_bytes';
             END;
             CREATE TRIGGER readings_bytes_delete AFTER DELETE ON readings BEGIN
                 UPDATE counters SET value = value - length(OLD.fields) - 32 WHERE name = 'pending_bytes';
             END;
             INSERT INTO counters VALUES ('pending_bytes', 0), ('uploaded_total', 7);
             INSERT INTO readings (captured_at_ms, fields) VALUES
                 (1, '{\"temperature\":0.1}'), (2, '{\"temperature\":0.2}'),
                 (3, '{\"temperature\":0.3}'), (4, '{\"temperature\":0.4}');
             DELETE FROM readings WHERE id = 4;
             INSERT INTO dead_letters (reading_id, captured_at_ms, fields, status, response, failed_at_ms)
                 SELECT id, captured_at_ms, fields, 400, 'no', 0 FROM readings WHERE id = 1;
             DELETE FROM readings WHERE id = 1;
             INSERT INTO status VALUES ('last_error', 'old');",
        )
    }

    #[test]
    fn a_version_1_queue_is_migrated_and_keeps_its_readings() -> Result<(), QueueError> {
        let dir = tempdir()?;
        version_1_file(&dir.path().join("q.db"))?;
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        let version: i64 = q.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(kept(&q)?, vec![2, 3], "pending readings kept, in order");
        let stats = q.stats()?;
        assert_eq!((stats.pending, stats.dead, stats.uploaded_total), (2, 1, 7));
        assert_eq!(stats.last_error.as_deref(), Some("old"));
        let left: i64 = q.conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' OR name = 'readings_v1'
                 OR sql LIKE '%readings%AUTOINCREMENT%' AND name = 'readings'",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(
            left, 0,
            "no trigger, no AUTOINCREMENT on readings, no leftover"
        );
        // Ids go on above every id the old file gave (4 was uploaded: never given again).
        q.enqueue(&[reading(5)])?;
        let ids: Vec<i64> = q.peek(0, 10)?.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![2, 3, 5]);
        drop(q);
        // Opening again is a no-op.
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        assert_eq!(kept(&q)?, vec![2, 3, 5]);
        Ok(())
    }

    #[test]
    fn a_disk_too_full_to_migrate_to_version_3_leaves_version_2_working() -> Result<(), QueueError>
    {
        let dir = tempdir()?;
        let path = dir.path().join("q.db");
        version_1_file(&path)?;
        let conn = Connection::open(&path)?;
        migrate_v1_to_v2(&conn)?;
        // No page to spare: SQLite answers SQLITE_FULL, as on a full disk.
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        conn.pragma_update(None, "max_page_count", pages)?;
        migrate(&conn, &path)?;
        assert_eq!(user_version(&conn)?, 2);
        let q = Queue::writable(conn, &config(dir.path(), 100, OverflowPolicy::DropOldest))?;
        assert!(!q.packed);
        assert_eq!(kept(&q)?, vec![2, 3]);
        drop(q);
        // Room again: the next start migrates, and the old rows still read.
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        assert!(q.packed);
        q.enqueue(&[reading(5)])?;
        assert_eq!(kept(&q)?, vec![2, 3, 5]);
        Ok(())
    }

    #[test]
    fn a_new_queue_has_its_page_size_and_ids_are_never_reused() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        let page: i64 = q.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        assert_eq!(page, PAGE_SIZE);
        q.enqueue(&[reading(1), reading(2)])?;
        let ids: Vec<i64> = q.peek(0, 10)?.iter().map(|s| s.id).collect();
        q.ack(&ids)?;
        q.enqueue(&[reading(3)])?;
        let again = q.peek(0, 10)?;
        assert!(again[0].id > ids[1], "{again:?} reuses an id of {ids:?}");
        Ok(())
    }

    #[test]
    fn a_queue_with_4_kib_pages_is_rewritten_with_small_pages_and_keeps_its_readings(
    ) -> Result<(), QueueError> {
        let dir = tempdir()?;
        let path = dir.path().join("q.db");
        {
            let old = Connection::open(&path)?;
            old.execute_batch("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL;")?;
            migrate(&old, &path)?;
            old.execute_batch(
                "INSERT INTO readings (id, captured_at_ms, fields) VALUES
                     (1, 1, '{\"t\":1}'), (2, 2, '{\"t\":2}');
                 INSERT INTO counters VALUES ('uploaded_total', 5);",
            )?;
        }
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        let page: i64 = q.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let mode: String = q.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        assert_eq!((page, mode.as_str()), (PAGE_SIZE, "wal"));
        assert_eq!(kept(&q)?, vec![1, 2]);
        assert_eq!(q.stats()?.uploaded_total, 5);
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
}
