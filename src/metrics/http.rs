//! `[metrics] listen`: a tiny HTTP/1.1 responder for `GET /metrics` (the text of
//! [`super::render`]) and `GET /health` (200 while sampling and uploading make progress,
//! as the watchdog's stall tracking sees it; 503 otherwise). One request per connection
//! (`Connection: close`), bounded in size and time: enough for a Prometheus scrape or a
//! load balancer's probe, and nothing a web framework would add is needed.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::queue::writer::StoreHandle;
use crate::watchdog::{stalled_tasks, Heartbeat};

/// The longest request head read; a scrape sends a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// A client that has not sent its request, or read the answer, by then is dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many connections are answered at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 8;

/// What the answers are made of.
#[derive(Clone)]
pub struct Probe {
    pub store: StoreHandle,
    pub clock: Clock,
    /// The tasks whose progress `/health` judges (the watchdog's heartbeats).
    pub heartbeats: Vec<(&'static str, Heartbeat)>,
    pub stall_after: Duration,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    Health,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// The request line's route, and whether the answer carries a body (not for HEAD).
fn route(head: &[u8]) -> (Route, bool) {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return (Route::BadRequest, true);
    };
    if !version.starts_with("HTTP/1.") {
        return (Route::BadRequest, true);
    }
    let body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => return (Route::MethodNotAllowed, true),
    };
    // A query string (`/metrics?name[]=...`, sent by some scrapers) does not change the answer.
    let path = target.split('?').next().unwrap_or_default();
    let route = match path {
        "/metrics" => Route::Metrics,
        "/health" | "/healthz" => Route::Health,
        _ => Route::NotFound,
    };
    (route, body)
}

/// A complete response.
fn response(status: u16, content_type: &str, body: &str, with_body: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if with_body {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

/// `/health`'s status and body from the stalled tasks.
fn health(stalled: &[(&'static str, Duration)]) -> (u16, String) {
    if stalled.is_empty() {
        return (200, "ok: sampling and uploading make progress\n".into());
    }
    let list: Vec<String> = stalled
        .iter()
        .map(|(task, silence)| format!("{task} silent for {}s", silence.as_secs()))
        .collect();
    (503, format!("stalled: {}\n", list.join(", ")))
}

const TEXT: &str = "text/plain; charset=utf-8";
/// The Prometheus text exposition format's content type.
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Probe {
    async fn answer(&self, head: &[u8]) -> Vec<u8> {
        let (route, with_body) = route(head);
        match route {
            Route::Metrics => match self.store.stats().await {
                Ok(stats) => {
                    let ctx = super::Context {
                        now_ms: self.clock.now_ms(),
                        clock_synchronized: self.clock.trusted(self.clock.now_ms()),
                    };
                    response(200, PROMETHEUS, &super::render(&stats, ctx), with_body)
                }
                Err(e) => response(503, TEXT, &format!("queue unavailable: {e}\n"), with_body),
            },
            Route::Health => {
                let stalled = stalled_tasks(
                    &self.heartbeats,
                    self.stall_after,
                    tokio::time::Instant::now(),
                );
                let (status, body) = health(&stalled);
                response(status, TEXT, &body, with_body)
            }
            Route::NotFound => response(404, TEXT, "try /metrics or /health\n", with_body),
            Route::MethodNotAllowed => response(405, TEXT, "GET or HEAD only\n", with_body),
            Route::BadRequest => response(400, TEXT, "not an HTTP/1.x request\n", true),
        }
    }

    async fn serve_one(&self, mut stream: TcpStream) {
        let exchange = async {
            let mut head = Vec::with_capacity(512);
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let answer = self.answer(&head).await;
            stream.write_all(&answer).await?;
            stream.shutdown().await
        };
        match tokio::time::timeout(CLIENT_TIMEOUT, exchange).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!("metrics client: {e}"),
            Err(_) => tracing::debug!("metrics client too slow; dropped"),
        }
    }
}

/// Binds the listener, saying where it serves (a test asks for port 0 and reads it here).
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "metrics: cannot listen on {addr}: {e} (is the port taken? under systemd, the unit needs the drop-in /usr/share/doc/profilo-gateway/examples/metrics.conf: SocketBindAllow=tcp:{}); going on without /metrics",
            addr.port()
        )
    })?;
    let local = listener.local_addr().map_err(|e| format!("metrics: {e}"))?;
    tracing::info!(%local, "metrics: serving /metrics and /health on http://{local}");
    Ok(listener)
}

/// Answers on `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, probe: Probe, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let probe = probe.clone();
                tracker.spawn(async move {
                    probe.serve_one(stream).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors, mostly: wait a little rather than spin.
                tracing::warn!("metrics listener: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    tracker.close();
    // Answers in progress are short; they may not hold the shutdown up.
    let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_method_and_path() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            (Route::Metrics, true)
        );
        assert_eq!(
            route(b"HEAD /health HTTP/1.0\r\n\r\n"),
            (Route::Health, false)
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"),
            (Route::Metrics, true)
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), (Route::NotFound, true));
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            (Route::MethodNotAllowed, true)
        );
        assert_eq!(route(b"\x16\x03\x01garbage"), (Route::BadRequest, true));
        assert_eq!(route(b""), (Route::BadRequest, true));
    }

    #[test]
    fn a_response_has_its_length_and_no_body_for_head() {
        let full = String::from_utf8(response(200, TEXT, "ok\n", true)).unwrap();
        assert!(full.starts_with("HTTP/1.1 200 OK\r\n"), "{full}");
        assert!(full.contains("Content-Length: 3\r\n"), "{full}");
        assert!(full.ends_with("\r\n\r\nok\n"), "{full}");
        let head = String::from_utf8(response(200, TEXT, "ok\n", false)).unwrap();
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        assert!(head.contains("Content-Length: 3\r\n"), "{head}");
    }

    #[test]
    fn health_is_503_while_a_task_is_stalled() {
        assert_eq!(health(&[]).0, 200);
        let (status, body) = health(&[("uploader", Duration::from_secs(75))]);
        assert_eq!(status, 503);
        assert_eq!(body, "stalled: uploader silent for 75s\n");
    }
}
