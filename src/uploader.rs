//! Drains the queue to `POST /api/send/data/`, oldest first, `upload.concurrency` requests
//! in flight. A reading leaves the queue only on a 2xx (or as a dead letter on a permanent
//! refusal); on anything transient the whole loop backs off and tries again later.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
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
/// The number of requests in flight is written for `queue stats` at most this often: it
/// changes at every request, and each write is a status update of the queue.
const IN_FLIGHT_PUBLISH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct UploadSettings {
    pub concurrency: usize,
    pub batch_size: usize,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// Send outcomes since start, shown by `queue stats`.
#[derive(Debug, Default)]
pub struct UploadCounters {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub unauthorized: AtomicU64,
    pub transient: AtomicU64,
    /// Requests started and not finished, now (not the configured concurrency).
    pub in_flight: AtomicU64,
}

/// Counts one request in flight for as long as it lives, also when its future is
/// dropped half-way (shutdown grace over).
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl UploadCounters {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "accepted": self.accepted.load(Ordering::Relaxed),
            "rejected": self.rejected.load(Ordering::Relaxed),
            "unauthorized": self.unauthorized.load(Ordering::Relaxed),
            "transient_failures": self.transient.load(Ordering::Relaxed),
            "in_flight": self.in_flight.load(Ordering::Relaxed),
        })
    }
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

type SettleFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// What one drain came to.
#[derive(Debug, Default)]
struct DrainResult {
    acked: usize,
    /// The first transient failure, with the longest `Retry-After` the server asked for.
    transient: Option<Failure>,
}

/// A transient failure that ends a drain.
#[derive(Debug)]
struct Failure {
    detail: String,
    retry_after: Option<Duration>,
    /// The HTTP status, when the server answered: a structured field in the journal
    /// (`journalctl -u profilo-gateway STATUS=503`).
    status: Option<u16>,
}

impl Failure {
    fn local(detail: String) -> Self {
        Failure {
            detail,
            retry_after: None,
            status: None,
        }
    }
}

enum Item {
    Done(i64, SendOutcome),
    /// Not sent: an earlier send failed transiently, or shutdown was asked for.
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
            let waiting = match self.store.peek(0, 1).await {
                Ok(b) => !b.is_empty(),
                Err(e) => {
                    tracing::error!("cannot read the queue: {e}");
                    self.set_state(&mut last_state, "backing off");
                    self.store.set_status(status_key::LAST_ERROR, e);
                    if self.pause(&cancel, backoff.next_wait(None)).await {
                        return;
                    }
                    continue;
                }
            };
            if !waiting {
                self.set_state(&mut last_state, "idle");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.store.new_readings.notified() => {}
                    _ = tokio::time::sleep(IDLE_WAKE) => {}
                }
                continue;
            }
            // No drain without a session; each send then asks for the token of its moment.
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
            let result = self.drain(&cancel).await;
            if result.acked >= 1000 {
                let pending = self.pending().await;
                tracing::info!(uploaded = result.acked, pending, "backlog sent");
            } else {
                tracing::debug!(uploaded = result.acked, "upload round done");
            }
            match result.transient {
                None => backoff.reset(),
                Some(Failure {
                    detail,
                    retry_after,
                    status,
                }) => {
                    let wait = backoff.next_wait(retry_after);
                    self.set_state(&mut last_state, "backing off");
                    let pending = self.pending().await;
                    tracing::warn!(
                        retry_in = %humantime::format_duration(Duration::from_millis(wait.as_millis() as u64)),
                        attempt = backoff.attempts(),
                        status,
                        pending,
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

    /// The pending count for a log line's `pending` field (journal: `PENDING=`); only
    /// asked when something worth a line happened, never per reading.
    async fn pending(&self) -> Option<u64> {
        self.store.stats().await.ok().map(|s| s.pending)
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

    /// Sends the queue, oldest first, until it is empty or a send fails transiently.
    /// `concurrency` requests stay in flight across batch boundaries: the next batch is read
    /// while the last sends of the current one are still out, and acknowledgements are
    /// committed while sends go on. No send starts while `batch_size` readings are sent or
    /// acked but not yet committed: that is the bound on duplicates after a crash.
    async fn drain(&self, cancel: &CancellationToken) -> DrainResult {
        // After one transient failure nothing more is sent: against a server that accepts
        // connections but never answers, one timeout per round, not per reading.
        let halt = &AtomicBool::new(false);
        let concurrency = self.settings.concurrency;
        let batch_size = self.settings.batch_size;
        // Half the room left by the sends in flight, so that sends continue while one
        // group of acks is being committed.
        let settle_at = (batch_size.saturating_sub(concurrency) / 2).max(1);
        let mut published: Option<(u64, tokio::time::Instant)> = None;
        let mut result = DrainResult::default();
        let mut unsettled = Settlement::default();
        let mut settling: Option<(usize, SettleFuture)> = None;
        let mut in_flight = FuturesUnordered::new();
        let mut ready: VecDeque<Stored> = VecDeque::new();
        let mut after_id = 0;
        let mut exhausted = false;
        let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            self.heartbeat.beat();
            self.publish_in_flight(&mut published);
            // Keep `concurrency` sends out, reading the next batch when this one runs dry.
            loop {
                let uncommitted = unsettled.acked.len()
                    + unsettled.dead.len()
                    + settling.as_ref().map_or(0, |(n, _)| *n)
                    + in_flight.len();
                if in_flight.len() >= concurrency
                    || uncommitted >= batch_size
                    || halt.load(Ordering::Relaxed)
                {
                    break;
                }
                if ready.is_empty() && !exhausted {
                    match self.store.peek(after_id, self.settings.batch_size).await {
                        Ok(batch) => match batch.last() {
                            Some(last) => {
                                after_id = last.id;
                                ready.extend(batch);
                            }
                            None => exhausted = true,
                        },
                        Err(e) => {
                            // A failure like any other: stop and back off, never a tight
                            // loop of drains that each end at once.
                            exhausted = true;
                            halt.store(true, Ordering::Relaxed);
                            result.transient.get_or_insert(Failure::local(format!(
                                "cannot read the queue: {e}"
                            )));
                        }
                    }
                }
                match ready.pop_front() {
                    Some(stored) => in_flight.push(self.send_one(stored, halt)),
                    None => break,
                }
            }
            if in_flight.is_empty() && settling.is_none() {
                break;
            }
            let next = tokio::select! {
                item = in_flight.next(), if !in_flight.is_empty() => item,
                done = async {
                    match settling.as_mut() {
                        Some((_, commit)) => commit.await,
                        None => std::future::pending().await,
                    }
                }, if settling.is_some() => {
                    let n = settling.take().map_or(0, |(n, _)| n);
                    settled(&mut result, halt, n, done);
                    continue;
                }
                _ = cancel.cancelled(), if grace.is_none() => {
                    halt.store(true, Ordering::Relaxed);
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
                    unsettled.acked.push(id);
                }
                SendOutcome::Rejected { status, body } => {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        reading_id = id,
                        status,
                        "server refused a reading for good; kept as a dead letter: {body}"
                    );
                    unsettled.dead.push((id, status, body));
                }
                SendOutcome::Unauthorized => {
                    // send_one already turned a second 401 into a transient failure.
                    result.transient.get_or_insert(Failure {
                        detail: "401 unauthorized".into(),
                        retry_after: None,
                        status: Some(401),
                    });
                }
                SendOutcome::Misdirected { status, detail } => {
                    result.transient.get_or_insert(Failure {
                        detail,
                        retry_after: None,
                        status: Some(status),
                    });
                }
                SendOutcome::Transient {
                    status,
                    retry_after,
                    detail,
                    ..
                } => {
                    self.counters.transient.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(reading_id = id, status, "transient failure: {detail}");
                    match result.transient.as_mut() {
                        None => {
                            result.transient = Some(Failure {
                                detail,
                                retry_after,
                                status,
                            })
                        }
                        Some(first) => {
                            if let Some(new) = retry_after {
                                first.retry_after =
                                    Some(first.retry_after.map_or(new, |old| old.max(new)));
                            }
                        }
                    }
                }
            }
            if settling.is_none() && unsettled.acked.len() + unsettled.dead.len() >= settle_at {
                settling = Some(self.begin_settle(std::mem::take(&mut unsettled)));
            }
        }
        for (n, commit) in settling.into_iter().chain([self.begin_settle(unsettled)]) {
            settled(&mut result, halt, n, commit.await);
        }
        drop(in_flight);
        self.store.set_status(
            status_key::IN_FLIGHT,
            self.counters.in_flight.load(Ordering::Relaxed).to_string(),
        );
        result
    }

    /// Writes the number of requests in flight for `queue stats` when it changed, at most
    /// once per `IN_FLIGHT_PUBLISH_EVERY`.
    fn publish_in_flight(&self, last: &mut Option<(u64, tokio::time::Instant)>) {
        let now = tokio::time::Instant::now();
        let n = self.counters.in_flight.load(Ordering::Relaxed);
        let due = match *last {
            None => true,
            Some((was, at)) => was != n && now.duration_since(at) >= IN_FLIGHT_PUBLISH_EVERY,
        };
        if due {
            self.store.set_status(status_key::IN_FLIGHT, n.to_string());
            *last = Some((n, now));
        }
    }

    /// Starts committing acks and dead letters: how many were acked, and the commit.
    fn begin_settle(&self, settlement: Settlement) -> (usize, SettleFuture) {
        let acked = settlement.acked.len();
        if acked == 0 && settlement.dead.is_empty() {
            return (0, Box::pin(async { Ok(()) }));
        }
        if acked > 0 {
            self.store.set_status(
                status_key::LAST_UPLOAD_AT,
                crate::reading::format_rfc3339_ms(self.clock.now_ms()),
            );
        }
        tracing::debug!(acked, "recording uploads");
        (acked, Box::pin(self.store.settle(settlement)))
    }

    async fn send_one(&self, stored: Stored, halt: &AtomicBool) -> Item {
        if halt.load(Ordering::Relaxed) {
            return Item::Skipped;
        }
        let _in_flight = InFlight::enter(&self.counters.in_flight);
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
                        back_pressure: false,
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
                    back_pressure: false,
                },
            };
            if outcome == SendOutcome::Unauthorized {
                self.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
                outcome = SendOutcome::Transient {
                    status: Some(401),
                    retry_after: None,
                    detail: "server refused a freshly renewed token (401)".into(),
                    back_pressure: false,
                };
            }
        }
        if matches!(
            outcome,
            SendOutcome::Transient { .. } | SendOutcome::Misdirected { .. }
        ) {
            halt.store(true, Ordering::Relaxed);
        }
        Item::Done(stored.id, outcome)
    }
}

/// Accounts for a commit of acks: counted as uploaded only once on disk. A failed commit
/// is a transient failure like a 503: nothing more is sent in this drain, the loop backs
/// off, and the store refuses a new drain until the acks are committed; otherwise the
/// whole queue would be sent again and again (a disk full while the server is up).
fn settled(result: &mut DrainResult, halt: &AtomicBool, acked: usize, commit: Result<(), String>) {
    match commit {
        Ok(()) => result.acked += acked,
        Err(e) => {
            halt.store(true, Ordering::Relaxed);
            tracing::error!(
                acked,
                "cannot record uploaded readings: {e}; pausing uploads until they are recorded"
            );
            result.transient.get_or_insert(Failure::local(format!(
                "cannot record {acked} uploaded readings in the queue: {e}"
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_ack_commit_is_a_transient_failure_and_not_counted() {
        let halt = AtomicBool::new(false);
        let mut result = DrainResult::default();
        settled(&mut result, &halt, 10, Ok(()));
        assert_eq!(result.acked, 10);
        assert!(result.transient.is_none() && !halt.load(Ordering::Relaxed));
        settled(
            &mut result,
            &halt,
            7,
            Err("database or disk is full".into()),
        );
        assert_eq!(result.acked, 10, "not on disk: not uploaded");
        assert!(halt.load(Ordering::Relaxed), "nothing more is sent");
        assert!(
            result
                .transient
                .as_ref()
                .is_some_and(|f| f.detail.contains("disk is full")),
            "{:?}",
            result.transient
        );
    }

    #[tokio::test]
    async fn in_flight_counts_requests_out_now_even_when_dropped() {
        let counters = UploadCounters::default();
        let request = |n| {
            let counter = &counters.in_flight;
            async move {
                let _guard = InFlight::enter(counter);
                tokio::time::sleep(Duration::from_millis(n)).await;
            }
        };
        let mut out = FuturesUnordered::new();
        out.push(request(1));
        out.push(request(60_000));
        out.push(request(60_000));
        // Started, not finished: counted; the configured concurrency plays no part.
        assert_eq!(counters.in_flight.load(Ordering::Relaxed), 0);
        out.next().await;
        assert_eq!(counters.in_flight.load(Ordering::Relaxed), 2);
        assert_eq!(counters.to_json()["in_flight"], 2);
        // Shutdown grace over: the futures are dropped and nothing stays counted.
        drop(out);
        assert_eq!(counters.in_flight.load(Ordering::Relaxed), 0);
    }
}
