//! Opening the queue file: creating it, checking it, migrating its schema, and moving a
//! corrupt file aside so that a damaged SD card never turns into a crash loop. The
//! daemon, the read-only commands and the maintenance commands each open it their way.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags};

use super::bounds::ensure_pending_bytes;
use super::{Queue, QueueError};
use crate::config::{OverflowPolicy, QueueConfig, UnfixableTime};
use crate::reading::unix_ms;

pub(super) const SCHEMA_VERSION: i64 = 1;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Queue {
    /// Opens (creating if needed) the queue for the daemon. A corrupt file is moved aside
    /// (`queue.db.corrupt-<unix time>`) and a fresh queue started, so a damaged SD card
    /// never turns into a crash loop.
    pub fn open(config: &QueueConfig) -> Result<Queue, QueueError> {
        let path = &config.path;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| QueueError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        if !path.exists() && Path::new(&wal).exists() {
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
            Ok(conn) => conn,
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
        Ok(Self::writable(conn, config))
    }

    /// A queue that writes, bounded as `config` says.
    fn writable(conn: Connection, config: &QueueConfig) -> Queue {
        Queue {
            conn,
            path: config.path.clone(),
            max_readings: config.max_readings,
            max_bytes: config.max_bytes,
            overflow: config.overflow,
            current_boot: None,
            hold_unfixable: config.unfixable_time == UnfixableTime::Hold,
            clock_floor_ms: crate::clock::clock_floor_ms(),
            writable: true,
        }
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
        Ok(Self::writable(conn, config))
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
