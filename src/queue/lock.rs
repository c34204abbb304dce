//! One daemon per queue: `run` holds an exclusive `flock` on `<queue>.lock` (beside the
//! queue file, e.g. `queue.db.lock`) for as long as it runs. Two daemons on one queue
//! would sample every chip twice and send every reading twice, and the second one's start
//! could move a queue it takes for corrupt aside under the first.
//!
//! The queue commands take no lock: the read-only ones (`stats`, `list`, `dead`,
//! `export`) only read, and `retry-dead` and `purge` are short transactions that SQLite's
//! own locking serialises with the daemon's commits; none of them samples, uploads or
//! moves a file aside.
//!
//! The lock file holds the pid of its holder, for the message of the one refused. It is
//! never deleted: a process that opened it just before a deletion would lock an inode no
//! one else can see, and two daemons would both hold "the" lock. The kernel drops the lock
//! when its holder exits, however it exits (SIGKILL and power cuts included), so a stale
//! file never blocks a start.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another profilo-gateway ({holder}) is running on {queue}: stop it first (`systemctl stop profilo-gateway` for the service), or give this one its own queue.path")]
    Held { holder: String, queue: PathBuf },
    #[error("cannot lock {path}: {source} (the service user needs write access to the queue's directory, the StateDirectory)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The lock of one queue, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    // Never read: the open file description is the lock.
    _file: File,
}

/// `<queue>.lock`, beside the queue file.
pub fn lock_path(queue: &Path) -> PathBuf {
    let mut name = queue.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl RunLock {
    /// Takes the lock of `queue` at once, or says who holds it; never waits.
    pub fn acquire(queue: &Path) -> Result<RunLock, LockError> {
        let path = lock_path(queue);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(e));
            }
            return Err(LockError::Held {
                holder: holder(&mut file),
                queue: queue.to_path_buf(),
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(RunLock { _file: file })
    }
}

/// "pid N" from the lock file; the holder may not have written it yet.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    match text.trim().parse::<u32>() {
        Ok(pid) => format!("pid {pid}"),
        Err(_) => "pid unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = dir.path().join("state").join("queue.db");
        let first = RunLock::acquire(&queue).expect("the first lock");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("state/queue.db.lock")).expect("lock file"),
            format!("{}\n", std::process::id())
        );
        // A second open file description conflicts even within one process, as a
        // second daemon would.
        let refused = RunLock::acquire(&queue).expect_err("held");
        let message = refused.to_string();
        assert!(matches!(refused, LockError::Held { .. }), "{refused:?}");
        assert!(
            message.starts_with(&format!(
                "another profilo-gateway (pid {}) is running on {}",
                std::process::id(),
                queue.display()
            )),
            "{message}"
        );
        drop(first);
        let again = RunLock::acquire(&queue);
        assert!(again.is_ok(), "{again:?}");
    }

    #[test]
    fn a_stale_lock_file_of_a_dead_holder_does_not_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = dir.path().join("queue.db");
        std::fs::write(lock_path(&queue), "999999999\nleftover\n").expect("stale file");
        let lock = RunLock::acquire(&queue);
        assert!(lock.is_ok(), "{lock:?}");
        assert_eq!(
            std::fs::read_to_string(lock_path(&queue)).expect("lock file"),
            format!("{}\n", std::process::id()),
            "the stale pid is replaced, not appended to"
        );
    }

    #[test]
    fn a_lock_file_without_a_pid_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = File::create(dir.path().join("x.lock")).expect("file");
        assert_eq!(holder(&mut file), "pid unknown");
    }

    #[test]
    fn a_directory_that_cannot_be_created_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").expect("file");
        let err = RunLock::acquire(&blocker.join("queue.db")).expect_err("not a directory");
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("cannot lock"), "{err}");
    }
}
