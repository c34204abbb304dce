//! The daemon's status while it runs, outside the queue file: the figures that change
//! every second (daemon seen, sensor health, requests in flight, uploader state, login and
//! upload counts) would otherwise cost the SD card a commit each. The queue thread keeps
//! them in memory and writes them to a small JSON file in a runtime directory (tmpfs),
//! which `queue stats` in another process reads while the daemon runs. The queue file gets
//! them only every few minutes and at shutdown (`writer`), for after the daemon stopped.
//!
//! Where the file lives, first that applies:
//! - `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=profilo-gateway`: `/run/profilo-gateway`);
//! - `$XDG_RUNTIME_DIR/profilo-gateway` (a user session);
//! - beside the queue (`queue.db.status.json`): on the card itself, so written less often.
//!
//! `queue stats` looks in those places and `/run/profilo-gateway` (a command run by hand,
//! without systemd's environment, still finds the service's file), and believes a file only
//! if it names this queue and its daemon still runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The service's runtime directory, for commands run without systemd's environment.
const SERVICE_RUNTIME_DIR: &str = "/run/profilo-gateway";
/// A file on tmpfs is rewritten at most this often; one beside the queue, on the card,
/// at most every `ON_DISK_EVERY`.
const IN_RUNTIME_DIR_EVERY: Duration = Duration::from_secs(1);
const ON_DISK_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
struct Contents {
    pid: u32,
    queue: String,
    status: BTreeMap<String, String>,
}

/// Where this daemon writes its status, and how often.
#[derive(Debug, Clone)]
pub struct RuntimeFile {
    path: PathBuf,
    pub every: Duration,
}

impl RuntimeFile {
    /// The daemon's file for the queue at `queue` (see the module doc).
    pub fn for_daemon(queue: &Path) -> RuntimeFile {
        let runtime = std::env::var_os("RUNTIME_DIRECTORY")
            .and_then(|v| std::env::split_paths(&v).next())
            .filter(|d| !d.as_os_str().is_empty())
            .or_else(|| {
                let dir = PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?).join(DIR_NAME);
                std::fs::create_dir_all(&dir).ok().map(|()| dir)
            });
        match runtime {
            Some(dir) => RuntimeFile {
                path: dir.join(file_name(queue)),
                every: IN_RUNTIME_DIR_EVERY,
            },
            None => RuntimeFile {
                path: beside(queue),
                every: ON_DISK_EVERY,
            },
        }
    }

    /// Replaces the file atomically (write, then rename), so a reader never sees half.
    /// Not synced: it describes a running process and means nothing after a power cut.
    pub fn write(
        &self,
        queue: &Path,
        status: &BTreeMap<&'static str, String>,
    ) -> std::io::Result<()> {
        let contents = Contents {
            pid: std::process::id(),
            queue: queue.display().to_string(),
            status: status
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        };
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, serde_json::to_vec(&contents)?)?;
        std::fs::rename(&tmp, &self.path)
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

const DIR_NAME: &str = "profilo-gateway";

/// The status of the daemon running on the queue at `queue`, if one runs and wrote it.
pub fn read_live(queue: &Path) -> Option<BTreeMap<String, String>> {
    let name = file_name(queue);
    let mut places: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("RUNTIME_DIRECTORY") {
        places.extend(std::env::split_paths(&v).map(|d| d.join(&name)));
    }
    places.push(Path::new(SERVICE_RUNTIME_DIR).join(&name));
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        places.push(PathBuf::from(d).join(DIR_NAME).join(&name));
    }
    places.push(beside(queue));
    let want = queue.display().to_string();
    places.iter().find_map(|p| {
        let c: Contents = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        (c.queue == want && alive(c.pid)).then_some(c.status)
    })
}

/// A process with this id runs (a daemon killed with -9 leaves its file behind).
fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// One file per queue, so that several daemons can share a runtime directory.
fn file_name(queue: &Path) -> String {
    // FNV-1a: stable across builds and platforms, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in queue.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("queue-{h:016x}.status.json")
}

fn beside(queue: &Path) -> PathBuf {
    super::beside(queue, ".status.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_daemons_file_is_read_and_a_dead_ones_ignored() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let queue = dir.path().join("q.db");
        let file = RuntimeFile {
            path: beside(&queue),
            every: ON_DISK_EVERY,
        };
        assert_eq!(read_live(&queue), None, "no file yet");
        let mut status = BTreeMap::new();
        status.insert("uploader_state", "idle".to_owned());
        file.write(&queue, &status)?;
        let read = read_live(&queue);
        assert_eq!(
            read.as_ref()
                .and_then(|s| s.get("uploader_state"))
                .map(String::as_str),
            Some("idle")
        );
        // Another queue's file is not this one's.
        assert_eq!(read_live(&dir.path().join("other.db")), None);
        // A file left by a process that is gone (kill -9) is not believed.
        let stale = Contents {
            pid: u32::MAX,
            queue: queue.display().to_string(),
            status: BTreeMap::new(),
        };
        std::fs::write(file.path(), serde_json::to_vec(&stale)?)?;
        assert_eq!(read_live(&queue), None);
        file.remove();
        assert!(!file.path().exists());
        Ok(())
    }
}
