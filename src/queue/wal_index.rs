//! Where SQLite keeps the queue's wal-index, and checking that it can.
//!
//! In WAL mode SQLite keeps an index of the log in a memory-mapped file. Beside the queue
//! (`queue.db-shm`) the kernel writes its dirty pages back to the SD card every ~30 s:
//! 300-500 B/s, 1.5-2.5 KiB per reading at 5 s sampling. This build's SQLite is compiled
//! with `SQLITE_SHM_DIRECTORY` (.cargo/config.toml), so the file is
//! `/dev/shm/sqlite-shm-<inode>-<device>` instead: tmpfs, never written to the card. Every
//! process of this build that opens the queue (the daemon, `queue stats`, `retry-dead`)
//! derives the same name from the queue's inode, so they still share it. A different
//! SQLite (the `sqlite3` shell) would use `queue.db-shm`: it must not open the queue while
//! the daemon runs (README "SD card wear").
//!
//! The index holds nothing that matters after a crash or a reboot: SQLite rebuilds it from
//! the WAL when the first connection opens the queue.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::QueueError;

/// `SQLITE_SHM_DIRECTORY` of .cargo/config.toml: the two must name the same directory
/// (the test below fails otherwise).
pub const WAL_INDEX_DIR: &str = "/dev/shm";

/// Where the wal-index of the queue at `path` is while a connection has it open in WAL mode:
/// in [`WAL_INDEX_DIR`] when this build's SQLite puts it there, else `<path>-shm` (a build
/// without the flag, reported at the daemon's start). `None` while no connection has it open
/// or the queue file is missing.
pub fn location(path: &Path) -> Option<PathBuf> {
    let meta = std::fs::metadata(path).ok()?;
    // As os_unix.c names it: "%x" of the inode and of the device, each cut to 32 bits.
    let tmpfs = Path::new(WAL_INDEX_DIR).join(format!(
        "sqlite-shm-{:x}-{:x}",
        meta.ino() as u32,
        meta.dev() as u32
    ));
    [tmpfs, super::beside(path, "-shm")]
        .into_iter()
        .find(|p| p.exists())
}

/// `<path>-shm` when it exists beside a queue whose index this build keeps on tmpfs: a
/// program with another SQLite (the `sqlite3` shell, Python) has the queue open. Its
/// index is not the daemon's, so its writes (and the checkpoint it may run) would
/// corrupt the queue.
pub fn foreign_index(path: &Path) -> Option<PathBuf> {
    let ours = location(path).filter(|p| p.starts_with(WAL_INDEX_DIR))?;
    let beside = super::beside(path, "-shm");
    (ours != beside && beside.exists()).then_some(beside)
}

/// Fails, saying what to do, when `dir` cannot hold wal-index files: SQLite would then fail
/// every access to the queue with "unable to open database file", which names the queue,
/// not the directory.
pub fn check_dir(dir: &Path) -> Result<(), QueueError> {
    let problem = match std::fs::metadata(dir) {
        Err(e) => Some(e.to_string()),
        Ok(m) if !m.is_dir() => Some("not a directory".to_owned()),
        Ok(_) if !writable(dir) => Some("not writable by this user".to_owned()),
        Ok(_) => None,
    };
    match problem {
        None => Ok(()),
        Some(detail) => Err(QueueError::WalIndexDir {
            dir: dir.to_path_buf(),
            detail,
        }),
    }
}

fn writable(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OverflowPolicy;
    use crate::queue::testing::*;

    /// Catches a build whose SQLite lacks `SQLITE_SHM_DIRECTORY` (LIBSQLITE3_FLAGS not
    /// reaching libsqlite3-sys): the index would be written to the card beside the queue.
    #[test]
    fn the_wal_index_is_on_tmpfs_not_beside_the_queue() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        q.enqueue(&[reading(1)])?;
        let mode: String = q.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        assert_eq!(mode, "wal");
        assert!(
            !dir.path().join("q.db-shm").exists(),
            "q.db-shm beside the queue: SQLite was built without SQLITE_SHM_DIRECTORY"
        );
        let at = location(&dir.path().join("q.db"));
        assert!(
            at.as_ref()
                .is_some_and(|p| p.starts_with(WAL_INDEX_DIR) && p.is_file()),
            "no wal-index in {WAL_INDEX_DIR}: {at:?}"
        );
        // A second connection of another process would derive the same name: the read-only
        // open of `queue stats` sees the daemon's rows through it.
        let ro = crate::queue::Queue::open_read_only(&dir.path().join("q.db"))?;
        assert_eq!(ro.pending()?, 1);
        assert_eq!(ro.stats()?.wal_index, at.map(|p| p.display().to_string()));
        drop(ro);
        drop(q);
        assert_eq!(
            location(&dir.path().join("q.db")),
            None,
            "the last connection removes it"
        );
        Ok(())
    }

    #[test]
    fn another_sqlites_index_beside_the_queue_is_noticed() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let path = dir.path().join("q.db");
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        q.enqueue(&[reading(1)])?;
        assert_eq!(foreign_index(&path), None);
        // What the sqlite3 shell leaves while it has the queue open.
        let beside = dir.path().join("q.db-shm");
        std::fs::write(&beside, [0u8; 32]).map_err(io_error)?;
        assert_eq!(foreign_index(&path), Some(beside));
        Ok(())
    }

    #[test]
    fn a_missing_or_unusable_directory_is_named_with_what_to_do() -> Result<(), QueueError> {
        assert!(check_dir(Path::new(WAL_INDEX_DIR)).is_ok());
        let dir = tempdir()?;
        let missing = dir.path().join("no-such-dir");
        let err = check_dir(&missing).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("no-such-dir") && e.contains("tmpfs")),
            "{err:?}"
        );
        let file = dir.path().join("file");
        std::fs::write(&file, b"").map_err(io_error)?;
        let err = check_dir(&file).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("not a directory")),
            "{err:?}"
        );
        Ok(())
    }
}
