//! Helpers for the queue tests (tests/e2e_queue.rs, tests/queue_cli.rs): config edits by
//! key, the queue CLI's JSON listings, network faults (a refused port, a black hole that
//! can turn into a forwarding proxy), a size-limited tmpfs and SQLite's integrity check.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use super::Gateway;

impl Gateway {
    /// Sets `key = value_toml` in `[section]` of the config file (value as TOML, e.g.
    /// `"\"2ms\""` or `"64"`): replaces the key when present, else adds it under the
    /// header, else appends the section. Takes effect at the next spawn or CLI call.
    pub fn set_config_key(&self, section: &str, key: &str, value_toml: &str) {
        let text = self.config_text();
        let mut out: Vec<String> = Vec::new();
        let mut current = String::new();
        let mut header_at: Option<usize> = None;
        let mut done = false;
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                current = t.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
                if current == section && header_at.is_none() && !t.starts_with("[[") {
                    header_at = Some(out.len());
                }
            } else if !done && current == section {
                if let Some((k, _)) = t.split_once('=') {
                    if k.trim() == key {
                        out.push(format!("{key} = {value_toml}"));
                        done = true;
                        continue;
                    }
                }
            }
            out.push(line.to_owned());
        }
        if !done {
            match header_at {
                Some(i) => out.insert(i + 1, format!("{key} = {value_toml}")),
                None => {
                    out.push(String::new());
                    out.push(format!("[{section}]"));
                    out.push(format!("{key} = {value_toml}"));
                }
            }
        }
        self.set_config(&(out.join("\n") + "\n"));
    }

    /// Like [`wait_until`](Gateway::wait_until), with the gateway handed to the condition
    /// (so it can run CLI commands); fails fast, with the log, when the daemon exits.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Gateway) -> bool,
    ) {
        let gw: &Gateway = self;
        gw.wait_until(what, timeout, || cond(gw));
    }

    /// `api.base_url`.
    pub fn set_base_url(&self, url: &str) {
        self.set_config_key("api", "base_url", &format!("{url:?}"));
    }

    /// `sampling.interval` (humantime, e.g. `"2ms"`, `"1h"`).
    pub fn set_interval(&self, interval: &str) {
        self.set_config_key("sampling", "interval", &format!("{interval:?}"));
    }

    /// The items of `queue list --json` (`{"id": N, "reading": {...}}`), all of them.
    pub fn queue_items(&self) -> Vec<Value> {
        match self.queue_list(Some(10_000_000)) {
            Value::Array(a) => a,
            other => panic!("`queue list --json` is not an array: {other}"),
        }
    }

    /// `queue dead --json`, all of them.
    pub fn queue_dead(&self) -> Vec<Value> {
        let out = self.cli_ok(&["queue", "dead", "--json", "--limit", "10000000"]);
        match serde_json::from_str(&out) {
            Ok(Value::Array(a)) => a,
            other => panic!("`queue dead --json` printed no JSON array ({other:?}): {out}"),
        }
    }
}

/// `http://127.0.0.1:PORT` where nothing listens (connections refused). The port is
/// below the ephemeral range, so no outgoing connection takes it meanwhile.
pub fn refused_url() -> String {
    for _ in 0..200 {
        let port = fastrand::u16(20_000..32_000);
        if TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok() {
            return format!("http://127.0.0.1:{port}");
        }
    }
    panic!("no free TCP port in 20000..32000");
}

/// A TCP endpoint that is a black hole (accepts connections, reads and never answers)
/// or a transparent proxy to `target`, switchable at any time. A connection that lived
/// through black-hole time never forwards again (its HTTP stream lost bytes); new
/// connections follow the current mode.
pub struct BlackHole {
    port: u16,
    forward: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl BlackHole {
    /// Starts in black-hole mode; `target` (`127.0.0.1:PORT`) is where forwarding goes.
    pub fn start(target: u16) -> BlackHole {
        let listener =
            TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind black hole");
        let port = listener.local_addr().expect("local addr").port();
        let forward = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (forward, stop, accepted, conns) = (
                forward.clone(),
                stop.clone(),
                accepted.clone(),
                conns.clone(),
            );
            thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    if let Ok(c) = client.try_clone() {
                        conns.lock().unwrap().push(c);
                    }
                    let forward = forward.clone();
                    thread::spawn(move || serve(client, target, forward));
                }
            })
        };
        BlackHole {
            port,
            forward,
            stop,
            accepted,
            conns,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Forward new connections to the target (true) or swallow everything (false).
    pub fn set_forward(&self, on: bool) {
        self.forward.store(on, Ordering::SeqCst);
    }
}

fn serve(client: TcpStream, target: u16, forward: Arc<AtomicBool>) {
    let upstream = if forward.load(Ordering::SeqCst) {
        TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, target)).ok()
    } else {
        None
    };
    let Some(upstream) = upstream else {
        // Black hole: read and discard until the client gives up.
        let mut client = client;
        let mut buf = [0u8; 8192];
        while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
        return;
    };
    let (mut c_read, mut u_write) = match (client.try_clone(), upstream.try_clone()) {
        (Ok(c), Ok(u)) => (c, u),
        _ => return,
    };
    let (mut u_read, mut c_write) = (upstream, client);
    let up = thread::spawn(move || {
        let mut buf = [0u8; 16384];
        let mut poisoned = false;
        loop {
            match c_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    poisoned |= !forward.load(Ordering::SeqCst);
                    if !poisoned && u_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = u_write.shutdown(Shutdown::Write);
    });
    let mut buf = [0u8; 16384];
    loop {
        match u_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if c_write.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = c_write.shutdown(Shutdown::Write);
    let _ = up.join();
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// A tmpfs of a given size mounted on a directory (root only); unmounted when dropped.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (mount's syntax: `2m`) on `dir` (created). Err with the
    /// reason when mounting is impossible here (not root, no CAP_SYS_ADMIN...).
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        run_mount(
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            dir,
        )?;
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Changes the size in place (the files stay).
    pub fn resize(&self, size: &str) {
        run_mount(&["-o", &format!("remount,size={size}")], &self.dir)
            .unwrap_or_else(|e| panic!("cannot resize the tmpfs: {e}"));
    }

    /// Free bytes on it.
    pub fn free_bytes(&self) -> u64 {
        let c = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs fills the struct we own; the path is a valid C string.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(c.as_ptr(), &mut s) != 0 {
                return 0;
            }
            s.f_bavail as u64 * s.f_frsize as u64
        }
    }
}

fn run_mount(args: &[&str], dir: &Path) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {} {}: {} {}",
            args.join(" "),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file must not keep the mount (or fail the test).
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}

/// `PRAGMA integrity_check` of an SQLite file, opened read-only ("ok" when sound).
pub fn integrity_check(path: &Path) -> String {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_else(|e| panic!("integrity_check of {}: {e}", path.display()));
    rows.join("; ")
}
