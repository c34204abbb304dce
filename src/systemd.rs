//! systemd integration: readiness and status notification over `sd_notify(3)`.
//!
//! [`Notifier`] speaks the protocol (`READY=1`, `STATUS=...`, `STOPPING=1`, `WATCHDOG=1`)
//! over `$NOTIFY_SOCKET`. Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op, so
//! the daemon never needs to know how it was started. The unit has `Type=notify` and
//! `NotifyAccess=main`. When to feed the watchdog is `watchdog`'s business.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use sd_notify::NotifyState;

/// A notification could not be delivered to systemd.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot send {message} to the systemd notify socket {socket}: {source} (the service manager may be gone; with NotifyAccess=main only the main process may notify)"
)]
pub struct NotifyError {
    /// The first line of the message, e.g. `READY=1`.
    pub message: String,
    /// `$NOTIFY_SOCKET` as given.
    pub socket: String,
    #[source]
    pub source: io::Error,
}

/// Where `$NOTIFY_SOCKET` points: a path, or (leading `@`) an abstract name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NotifySocket {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl NotifySocket {
    fn parse(value: &std::ffi::OsStr) -> Option<Self> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = value.as_bytes();
        match bytes.first() {
            None => None,
            Some(b'@') => Some(Self::Abstract(bytes[1..].to_vec())),
            Some(b'/') => Some(Self::Path(PathBuf::from(value))),
            // vsock: and relative paths are not for us; behave as outside systemd.
            Some(_) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Path(p) => p.display().to_string(),
            Self::Abstract(name) => format!("@{}", String::from_utf8_lossy(name)),
        }
    }

    fn send(&self, payload: &[u8]) -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        match self {
            Self::Path(p) => sock.connect(p)?,
            Self::Abstract(name) => connect_abstract(&sock, name)?,
        }
        let sent = sock.send(payload)?;
        if sent == payload.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "incomplete datagram",
            ))
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn connect_abstract(sock: &UnixDatagram, name: &[u8]) -> io::Result<()> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.connect_addr(&addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn connect_abstract(_sock: &UnixDatagram, _name: &[u8]) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract unix sockets exist only on Linux",
    ))
}

/// Sends `sd_notify(3)` messages; a no-op outside systemd. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<NotifySocket>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` once.
    ///
    /// The variables are left in place (no child process of ours needs them
    /// removed, and removing them is not thread-safe).
    pub fn from_env() -> Self {
        Self::from_vars(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    }

    /// [`from_env`](Self::from_env) with the values passed in (for tests).
    ///
    /// As `sd_watchdog_enabled(3)`: the watchdog is on when `watchdog_usec`
    /// is a positive integer and `watchdog_pid`, if present, is `my_pid`.
    pub fn from_vars(
        notify_socket: Option<&std::ffi::OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        my_pid: u32,
    ) -> Self {
        let socket = notify_socket.and_then(NotifySocket::parse);
        let pid_ok = match watchdog_pid {
            None => true,
            Some(p) => p.trim().parse::<u32>().ok() == Some(my_pid),
        };
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && pid_ok && socket.is_some())
            .map(Duration::from_micros);
        Self { socket, watchdog }
    }

    /// A notifier that sends to the socket at `path` (tests, or a custom setup).
    pub fn with_socket(path: impl Into<PathBuf>, watchdog: Option<Duration>) -> Self {
        Self {
            socket: Some(NotifySocket::Path(path.into())),
            watchdog,
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// True when running under systemd with a notify socket.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// `WatchdogSec=` of the unit, when the watchdog is on for this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// `READY=1`: the queue is open and sampling runs.
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.send(&[NotifyState::Ready])
    }

    /// `STATUS=...`, shown by `systemctl status`. Newlines become spaces.
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        let one_line = status.replace(['\n', '\r'], " ");
        self.send(&[NotifyState::Status(&one_line)])
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send(&[NotifyState::Stopping])
    }

    /// `WATCHDOG=1`: the keep-alive. Prefer [`crate::watchdog::watchdog_loop`], which sends it
    /// only while the tasks make progress.
    pub fn ping_watchdog(&self) -> Result<(), NotifyError> {
        self.send(&[NotifyState::Watchdog])
    }

    fn send(&self, states: &[NotifyState<'_>]) -> Result<(), NotifyError> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let mut payload = String::new();
        for state in states {
            payload.push_str(&state.to_string());
            payload.push('\n');
        }
        socket
            .send(payload.as_bytes())
            .map_err(|source| NotifyError {
                message: payload.lines().next().unwrap_or_default().to_owned(),
                socket: socket.describe(),
                source,
            })
    }
}

/// The `STATUS=` text: pending count, dead letters and the last upload.
pub fn status_line(pending: u64, dead: u64, last_upload: Option<SystemTime>) -> String {
    let last = match last_upload {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => "never".to_owned(),
    };
    format!("pending {pending}, dead {dead}, last upload {last}")
}

/// A notify socket that records what it is sent.
#[cfg(test)]
pub(crate) mod fake {
    use std::os::unix::net::UnixDatagram;
    use std::path::PathBuf;

    pub struct FakeSystemd {
        _dir: tempfile::TempDir,
        pub path: PathBuf,
        sock: UnixDatagram,
    }

    impl FakeSystemd {
        pub fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify");
            let sock = UnixDatagram::bind(&path).unwrap();
            sock.set_nonblocking(true).unwrap();
            Self {
                _dir: dir,
                path,
                sock,
            }
        }

        pub fn messages(&self) -> Vec<String> {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = self.sock.recv(&mut buf) {
                out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            out
        }

        pub fn pings(&self) -> usize {
            self.messages()
                .iter()
                .filter(|m| m.as_str() == "WATCHDOG=1\n")
                .count()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeSystemd;
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn outside_systemd_everything_is_a_no_op() {
        let n = Notifier::from_vars(None, Some("30000000"), None, 42);
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.ready().unwrap();
        n.status("pending 3").unwrap();
        n.ping_watchdog().unwrap();
        n.stopping().unwrap();
        Notifier::disabled().ready().unwrap();
    }

    #[test]
    fn watchdog_interval_follows_sd_watchdog_enabled() {
        let sock = Some(OsStr::new("/run/systemd/notify"));
        let n = Notifier::from_vars(sock, Some("30000000"), Some("42"), 42);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(30)));
        // WATCHDOG_PID absent: the watchdog is meant for us.
        let n = Notifier::from_vars(sock, Some("500000"), None, 42);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_millis(500)));
        // Meant for another process (we are a child that inherited the env).
        let n = Notifier::from_vars(sock, Some("30000000"), Some("41"), 42);
        assert_eq!(n.watchdog_interval(), None);
        assert!(n.is_enabled());
        for bad in ["0", "", "x", "-5"] {
            let n = Notifier::from_vars(sock, Some(bad), Some("42"), 42);
            assert_eq!(n.watchdog_interval(), None, "WATCHDOG_USEC={bad:?}");
        }
        let n = Notifier::from_vars(sock, None, Some("42"), 42);
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn notify_socket_forms() {
        assert_eq!(NotifySocket::parse(OsStr::new("")), None);
        assert_eq!(NotifySocket::parse(OsStr::new("relative")), None);
        assert_eq!(
            NotifySocket::parse(OsStr::new("/run/systemd/notify")),
            Some(NotifySocket::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            NotifySocket::parse(OsStr::new("@/org/freedesktop/systemd1/notify")),
            Some(NotifySocket::Abstract(
                b"/org/freedesktop/systemd1/notify".to_vec()
            ))
        );
    }

    #[test]
    fn messages_follow_the_protocol() {
        let systemd = FakeSystemd::new();
        let n = Notifier::with_socket(&systemd.path, None);
        n.ready().unwrap();
        n.status("pending 3,\nlast upload never").unwrap();
        n.ping_watchdog().unwrap();
        n.stopping().unwrap();
        assert_eq!(
            systemd.messages(),
            [
                "READY=1\n",
                "STATUS=pending 3, last upload never\n",
                "WATCHDOG=1\n",
                "STOPPING=1\n"
            ]
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_socket_is_reached() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("profilo-gateway-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let value = format!("@{name}");
        let n = Notifier::from_vars(Some(OsStr::new(&value)), None, None, 1);
        n.ready().unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\n");
    }

    #[test]
    fn an_absent_socket_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::with_socket(dir.path().join("gone"), None);
        let e = n.ready().unwrap_err();
        let text = e.to_string();
        assert!(text.contains("READY=1"), "{text}");
        assert!(text.contains("gone"), "{text}");
    }

    #[test]
    fn status_line_reads_well() {
        assert_eq!(
            status_line(12, 0, None),
            "pending 12, dead 0, last upload never"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            status_line(0, 2, Some(t)),
            "pending 0, dead 2, last upload 2023-11-14T22:13:20Z"
        );
    }
}
