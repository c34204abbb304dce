//! Whether the daemon's queue can still be trusted while it runs, and what to do when it
//! cannot. SQLite notices neither a deleted queue file (it goes on writing to the unlinked
//! inode) nor one overwritten in place (its page cache still holds the old pages), so the
//! queue thread asks [`Queue::verify_file`] now and then; and [`Failures`] decides, for
//! each failed write or read, whether to retry or to give up so that the daemon exits
//! non-zero and systemd starts it again (a new start moves a corrupt file aside).
//!
//! A full disk is the one failure that is waited out for as long as it lasts: the file is
//! intact, the readings wait in memory, and the watchdog is still fed.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Queue, QueueError};

/// Failing writes (other than a full disk) are retried this long before the queue thread
/// gives up: an SD card may stall for seconds, but one failing for this long is broken.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// The first bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Free bytes (for an unprivileged user) and total bytes of the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we own; `c` is a valid C string.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return None;
        }
        #[allow(clippy::useless_conversion)]
        let frsize = u64::from(s.f_frsize);
        #[allow(clippy::useless_conversion)]
        Some((
            u64::from(s.f_bavail) * frsize,
            u64::from(s.f_blocks) * frsize,
        ))
    }
}

/// Device and inode of the queue file, as opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    pub fn of(path: &Path) -> std::io::Result<FileIdentity> {
        let meta = std::fs::metadata(path)?;
        Ok(FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl Queue {
    /// Checks that the file at the queue's path is still the one this connection writes
    /// to, and that its pages read back: drops the page cache, reads the header and the
    /// ends of the readings table. Cheap (the OS caches the file); no write.
    pub fn verify_file(&self, opened: FileIdentity) -> Result<(), QueueError> {
        let vanished = |detail: String| QueueError::Vanished {
            path: self.path.clone(),
            detail,
        };
        match FileIdentity::of(&self.path) {
            Ok(now) if now == opened => {}
            Ok(_) => return Err(vanished("another file is at its path now".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(vanished("it was deleted".into()))
            }
            Err(e) => return Err(vanished(e.to_string())),
        }
        let mut head = [0u8; 16];
        let read = std::fs::File::open(&self.path).and_then(|mut f| f.read(&mut head));
        match read {
            // A new queue's first pages are still in the WAL: an empty file is fine.
            Ok(0) => {}
            Ok(n) if n == head.len() && &head == SQLITE_MAGIC => {}
            Ok(_) => {
                return Err(QueueError::Sql(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_NOTADB),
                    Some("the file no longer starts with the SQLite header".into()),
                )))
            }
            Err(e) => return Err(vanished(e.to_string())),
        }
        // Pages are then read from the file again, so damage shows as SQLITE_CORRUPT.
        self.conn.execute_batch("PRAGMA shrink_memory")?;
        self.conn
            .query_row("SELECT min(id), max(id) FROM readings", [], |_| Ok(()))?;
        Ok(())
    }
}

/// What a failure of the queue means for the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Wait it out, feeding the watchdog: nothing is damaged.
    DiskFull,
    /// Give up at once: retrying cannot help (corrupt, deleted, replaced).
    Broken,
    /// Retry for `GIVE_UP_AFTER` (I/O errors, a lock held by another process, ...).
    Other,
}

impl Fault {
    pub fn of(e: &QueueError) -> Fault {
        if e.is_disk_full() {
            Fault::DiskFull
        } else if e.is_corrupt() || matches!(e, QueueError::Vanished { .. }) {
            Fault::Broken
        } else {
            Fault::Other
        }
    }
}

/// The verdict on the queue's failures: pure state, fed by the queue thread.
#[derive(Debug, Default)]
pub struct Failures {
    /// Since when writes fail for another reason than a full disk.
    failing_since: Option<Instant>,
    last: Option<Fault>,
}

impl Failures {
    /// A commit (or a check) succeeded.
    pub fn succeeded(&mut self) {
        *self = Failures::default();
    }

    /// Records a failure at `now`; true when the queue thread must give up.
    pub fn failed(&mut self, fault: Fault, now: Instant) -> bool {
        self.last = Some(fault);
        match fault {
            Fault::DiskFull => {
                self.failing_since = None;
                false
            }
            Fault::Broken => true,
            Fault::Other => {
                let since = *self.failing_since.get_or_insert(now);
                now.saturating_duration_since(since) >= GIVE_UP_AFTER
            }
        }
    }

    /// Whether the watchdog may be fed: writes work, or only the disk is full.
    pub fn feeds_watchdog(&self) -> bool {
        matches!(self.last, None | Some(Fault::DiskFull))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OverflowPolicy;
    use crate::queue::testing::*;

    fn sql_error(code: i32) -> QueueError {
        QueueError::Sql(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
    }

    #[test]
    fn a_full_disk_is_waited_out_corruption_ends_at_once_other_errors_after_a_while() {
        use rusqlite::ffi;
        for (code, fault) in [
            (ffi::SQLITE_FULL, Fault::DiskFull),
            (ffi::SQLITE_CORRUPT, Fault::Broken),
            (ffi::SQLITE_NOTADB, Fault::Broken),
            (ffi::SQLITE_IOERR, Fault::Other),
            (ffi::SQLITE_BUSY, Fault::Other),
        ] {
            assert_eq!(Fault::of(&sql_error(code)), fault, "code {code}");
        }
        let t0 = Instant::now();
        let mut f = Failures::default();
        assert!(f.feeds_watchdog());
        for s in 0..600 {
            assert!(!f.failed(Fault::DiskFull, t0 + Duration::from_secs(s)));
            assert!(f.feeds_watchdog(), "a full disk is no stall");
        }
        assert!(!f.failed(Fault::Other, t0));
        assert!(!f.feeds_watchdog());
        assert!(!f.failed(Fault::Other, t0 + GIVE_UP_AFTER - Duration::from_secs(1)));
        assert!(f.failed(Fault::Other, t0 + GIVE_UP_AFTER));
        f.succeeded();
        assert!(f.feeds_watchdog());
        assert!(
            !f.failed(Fault::Other, t0 + GIVE_UP_AFTER * 3),
            "a new count"
        );
        assert!(f.failed(Fault::Broken, t0 + GIVE_UP_AFTER * 3));
    }

    #[test]
    fn a_deleted_replaced_or_overwritten_file_is_noticed() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let path = dir.path().join("q.db");
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        let id = FileIdentity::of(&path).map_err(io_error)?;
        let batch: Vec<_> = (0..500).map(reading).collect();
        q.enqueue(&batch)?;
        q.checkpoint_truncate()?;
        q.verify_file(id)?;

        // Overwritten in place: SQLite alone would go on from its cache.
        let len = std::fs::metadata(&path).map_err(io_error)?.len() as usize;
        let saved = std::fs::read(&path).map_err(io_error)?;
        std::fs::write(&path, vec![0x5a; len]).map_err(io_error)?;
        let err = q.verify_file(id).expect_err("garbage");
        assert_eq!(Fault::of(&err), Fault::Broken, "{err}");
        // Only the pages past the header: the read-back finds them.
        let mut damaged = saved.clone();
        damaged[4096..].fill(0xa5);
        std::fs::write(&path, &damaged).map_err(io_error)?;
        let err = q.verify_file(id).expect_err("damaged pages");
        assert_eq!(Fault::of(&err), Fault::Broken, "{err}");
        std::fs::write(&path, &saved).map_err(io_error)?;
        q.verify_file(id)?;

        std::fs::rename(&path, dir.path().join("moved.db")).map_err(io_error)?;
        let err = q.verify_file(id).expect_err("deleted");
        assert!(err.to_string().contains("deleted"), "{err}");
        std::fs::write(&path, b"").map_err(io_error)?;
        let err = q.verify_file(id).expect_err("replaced");
        assert!(err.to_string().contains("another file"), "{err}");
        assert_eq!(Fault::of(&err), Fault::Broken);
        Ok(())
    }
}
