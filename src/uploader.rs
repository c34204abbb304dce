//! Drains the queue to `POST /api/send/data/`, oldest first, `upload.concurrency` requests
//! in flight. A reading leaves the queue only on a 2xx (or as a dead letter on a permanent
//! refusal); on anything transient the whole loop backs off and tries again later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::api::{Api, SendOutcome};
use crate::auth::{AuthError, TokenManager};
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::queue::{status_key, Stored};
use crate::store::{Settlement, StoreHandle};
use crate::systemd::Heartbeat;

/// How long in-flight requests may finish after shutdown was asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Even with nothing to do the loop wakes this often, to beat its heartbeat.
const IDLE_WAKE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct UploadSettings {
    pub concurrency: usize,
    pub batch_size: usize,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// Counters for logs and tests.
#[derive(Debug, Default)]
pub struct UploadCounters {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub unauthorized: AtomicU64,
    pub transient: AtomicU64,
}

pub struct Uploader {
    pub api: Api,
    pub auth: Arc<TokenManager>,
    pub store: StoreHandle,
    pub clock: Clock,
    pub settings: UploadSettings,
    pub heartbeat: Heartbeat,
    pub counters: Arc<UploadCounters>,
}

/// What one batch came to.
#[derive(Debug, Default)]
struct BatchResult {
    settlement: Settlement,
    /// The first transient failure, with the server's `Retry-After` if any.
    transient: Option<(String, Option<Duration>)>,
}

enum Item {
    Done(i64, SendOutcome),
    /// Not sent: an earlier reading of the batch failed transiently.
    Skipped,
}

impl Uploader {
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(self.settings.backoff_base, self.settings.backoff_max);
        let mut last_state = String::new();
        loop {
            self.heartbeat.beat();
            if cancel.is_cancelled() {
                return;
            }
            let batch = match self.store.peek(0, self.settings.batch_size).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("cannot read the queue: {e}");
                    if self.pause(&cancel, backoff.next_wait(None)).await {
                        return;
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                self.set_state(&mut last_state, "idle");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.store.new_readings.notified() => {}
                    _ = tokio::time::sleep(IDLE_WAKE) => {}
                }
                continue;
            }
            // No batch without a session; each send then asks for the token of its moment.
            match self.auth.access_token().await {
                Ok(_) => {}
                Err(AuthError::Waiting { until, reason }) => {
                    self.set_state(&mut last_state, "waiting for login");
                    self.store.set_status(status_key::LAST_ERROR, reason);
                    let wait = until.saturating_duration_since(tokio::time::Instant::now());
                    if self
                        .pause(&cancel, wait.clamp(Duration::from_millis(50), IDLE_WAKE))
                        .await
                    {
                        return;
                    }
                    continue;
                }
                Err(e @ AuthError::NoUsername) => {
                    self.set_state(&mut last_state, "not configured");
                    self.store.set_status(status_key::LAST_ERROR, e.to_string());
                    if self.pause(&cancel, IDLE_WAKE * 12).await {
                        return;
                    }
                    continue;
                }
            }
            self.set_state(&mut last_state, "uploading");
            self.store
                .set_status(status_key::IN_FLIGHT, batch.len().to_string());
            let result = self.send_batch(batch, &cancel).await;
            let acked = result.settlement.acked.len();
            let dead = result.settlement.dead.len();
            for (id, status, body) in &result.settlement.dead {
                tracing::warn!(
                    reading_id = id,
                    status,
                    "server refused a reading for good; kept as a dead letter: {body}"
                );
            }
            if acked > 0 {
                self.store.set_status(
                    status_key::LAST_UPLOAD_AT,
                    crate::reading::format_rfc3339_ms(self.clock.now_ms()),
                );
            }
            self.store.set_status(status_key::IN_FLIGHT, "0".into());
            if let Err(e) = self.store.settle(result.settlement).await {
                tracing::error!("cannot record uploaded readings: {e}; they may be sent again");
            }
            tracing::debug!(acked, dead, "batch done");
            match result.transient {
                None => backoff.reset(),
                Some((detail, retry_after)) => {
                    let wait = backoff.next_wait(retry_after);
                    self.set_state(&mut last_state, "backing off");
                    tracing::warn!(
                        retry_in = %humantime::format_duration(Duration::from_millis(wait.as_millis() as u64)),
                        attempt = backoff.attempts(),
                        "upload failed: {detail}"
                    );
                    self.store.set_status(status_key::LAST_ERROR, detail);
                    if self.pause(&cancel, wait).await {
                        return;
                    }
                }
            }
        }
    }

    fn set_state(&self, last: &mut String, state: &str) {
        if last != state {
            state.clone_into(last);
            self.store
                .set_status(status_key::UPLOADER_STATE, state.to_owned());
        }
    }

    /// Sleeps, beating the heartbeat; true when shutdown was asked for.
    async fn pause(&self, cancel: &CancellationToken, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.heartbeat.beat();
            let step = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(IDLE_WAKE);
            if step.is_zero() {
                return false;
            }
            tokio::select! {
                _ = cancel.cancelled() => return true,
                _ = tokio::time::sleep(step) => {}
            }
        }
    }

    async fn send_batch(&self, batch: Vec<Stored>, cancel: &CancellationToken) -> BatchResult {
        // After one transient failure the rest of the batch is not sent: against a server
        // that accepts connections but never answers, one timeout per batch, not per reading.
        let halt = &std::sync::atomic::AtomicBool::new(false);
        let sends = stream::iter(batch)
            .map(|stored| async move {
                if halt.load(Ordering::Relaxed) {
                    return Item::Skipped;
                }
                let mut body = stored.reading.to_wire_json();
                if stored.clock_unsynced {
                    // Captured in an earlier boot before the clock was set: the time may be wrong.
                    if let Some(o) = body.as_object_mut() {
                        o.insert("clock_unsynced".into(), true.into());
                    }
                }
                // The token of this moment, not of the batch: a batch can outlive its token,
                // and once one send has renewed it the others must not use the dead one.
                let token = match self.auth.access_token().await {
                    Ok(t) => t,
                    Err(e) => {
                        halt.store(true, Ordering::Relaxed);
                        return Item::Done(
                            stored.id,
                            SendOutcome::Transient {
                                status: None,
                                retry_after: None,
                                detail: e.to_string(),
                            },
                        );
                    }
                };
                let token = &token;
                let mut outcome = self.api.send_reading(token, &body).await;
                if outcome == SendOutcome::Unauthorized {
                    // One renewal and one retry, never a loop.
                    self.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
                    self.auth.reject(token).await;
                    outcome = match self.auth.access_token().await {
                        Ok(fresh) => self.api.send_reading(&fresh, &body).await,
                        Err(e) => SendOutcome::Transient {
                            status: Some(401),
                            retry_after: None,
                            detail: e.to_string(),
                        },
                    };
                    if outcome == SendOutcome::Unauthorized {
                        self.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
                        outcome = SendOutcome::Transient {
                            status: Some(401),
                            retry_after: None,
                            detail: "server refused a freshly renewed token (401)".into(),
                        };
                    }
                }
                if matches!(outcome, SendOutcome::Transient { .. }) {
                    halt.store(true, Ordering::Relaxed);
                }
                Item::Done(stored.id, outcome)
            })
            .buffer_unordered(self.settings.concurrency);
        let mut result = BatchResult::default();
        let mut sends = std::pin::pin!(sends);
        let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            let next = tokio::select! {
                item = sends.next() => item,
                _ = cancel.cancelled(), if grace.is_none() => {
                    grace = Some(Box::pin(tokio::time::sleep(SHUTDOWN_GRACE)));
                    continue;
                }
                _ = async { if let Some(g) = grace.as_mut() { g.await } }, if grace.is_some() => {
                    // What has not finished stays queued and is sent after the restart.
                    break;
                }
            };
            let (id, outcome) = match next {
                None => break,
                Some(Item::Skipped) => continue,
                Some(Item::Done(id, outcome)) => (id, outcome),
            };
            match outcome {
                SendOutcome::Accepted => {
                    self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                    result.settlement.acked.push(id);
                }
                SendOutcome::Rejected { status, body } => {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    result.settlement.dead.push((id, status, body));
                }
                SendOutcome::Unauthorized => {
                    // The send closure already turned a second 401 into a transient failure.
                    result
                        .transient
                        .get_or_insert(("401 unauthorized".into(), None));
                }
                SendOutcome::Transient {
                    status,
                    retry_after,
                    detail,
                } => {
                    self.counters.transient.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(reading_id = id, status, "transient failure: {detail}");
                    if result.transient.is_none() {
                        result.transient = Some((detail, retry_after));
                    } else if let (Some((_, ra)), Some(new)) =
                        (result.transient.as_mut(), retry_after)
                    {
                        *ra = Some(ra.map_or(new, |old| old.max(new)));
                    }
                }
            }
            if grace.is_none() && result.transient.is_some() && cancel.is_cancelled() {
                break;
            }
        }
        result
    }
}
