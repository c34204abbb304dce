//! Drains the queue to `POST /api/send/data/`, oldest first. The decisions (what to send
//! next, what an answer settles, when to pause, how many requests in flight) are the pure
//! [`drain::Drain`]'s; this loop does the I/O it asks for: reads batches from the queue,
//! sends requests with the token of their moment, commits acknowledgements, sleeps, and
//! says what happened in a few log lines ([`failure_log`]).

pub mod concurrency;
pub mod drain;
pub mod failure_log;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::api::{Api, SendOutcome};
use crate::auth::{AuthError, TokenManager};
use crate::clock::Clock;
use crate::config::{UploadConcurrency, UploadConfig};
use crate::queue::writer::{Settlement, StoreHandle};
use crate::queue::{status_key, Stored};
use crate::watchdog::Heartbeat;

use concurrency::Mode;
use drain::{Answer, Drain, Pause, Settle, State};
use failure_log::{FailureLog, Line};

/// How long in-flight requests may finish after shutdown was asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Even with nothing to do the loop wakes this often, to beat its heartbeat and look
/// for readings.
const IDLE_WAKE: Duration = Duration::from_secs(5);
/// Requests in flight and the concurrency are written for `queue stats` at most this
/// often: they change at every request, and each write is a status update of the queue.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// A change of the concurrency is logged at most this often.
const CONCURRENCY_LOG_EVERY: Duration = Duration::from_secs(60);
/// Without a username, how long before looking again (the config does not change).
const NOT_CONFIGURED_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct UploadSettings {
    pub concurrency: Mode,
    pub batch_size: usize,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl UploadSettings {
    pub fn from_config(c: &UploadConfig) -> UploadSettings {
        UploadSettings {
            concurrency: match c.concurrency {
                UploadConcurrency::Auto => Mode::Auto {
                    max: c.max_concurrency,
                },
                UploadConcurrency::Fixed(n) => Mode::Fixed(n),
            },
            batch_size: c.batch_size,
            backoff_base: c.backoff_base,
            backoff_max: c.backoff_max,
        }
    }
}

/// Send outcomes since start, shown by `queue stats`.
#[derive(Debug, Default)]
pub struct UploadCounters {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub unauthorized: AtomicU64,
    pub transient: AtomicU64,
    /// Answers that say the endpoint or the account is wrong (403, 404, ...).
    pub endpoint_refused: AtomicU64,
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
            "endpoint_refused": self.endpoint_refused.load(Ordering::Relaxed),
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

type SettleFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// What became of one send, as the loop sees it.
enum Sent {
    Answered(SendOutcome),
    /// Not sent: no session yet.
    NoSession {
        until: Instant,
        reason: String,
        configured: bool,
    },
}

/// What the loop last wrote for `queue stats`, to write only changes.
#[derive(Default)]
struct Published {
    state: Option<&'static str>,
    at: Option<Instant>,
    in_flight: Option<u64>,
    concurrency: Option<usize>,
    concurrency_logged: Option<(usize, Instant)>,
    last_error: Option<String>,
    not_configured: bool,
}

impl Uploader {
    pub async fn run(self, cancel: CancellationToken) {
        let settings = drain::Settings {
            batch_size: self.settings.batch_size,
            concurrency: self.settings.concurrency,
            backoff_base: self.settings.backoff_base,
            backoff_max: self.settings.backoff_max,
        };
        let mut drain: Drain<Stored> = Drain::new(settings, Instant::now());
        let mut sends = FuturesUnordered::new();
        let mut settling: Option<SettleFuture> = None;
        let mut failures = FailureLog::default();
        let mut published = Published::default();
        let mut acked_since_log = 0usize;
        let mut grace: Option<tokio::time::Instant> = None;
        loop {
            self.heartbeat.beat();
            let now = Instant::now();
            if let Some((after_id, limit)) = drain.wants_fetch(now) {
                match self.store.peek(after_id, limit).await {
                    Ok(batch) => {
                        drain.fetched(batch.into_iter().map(|s| (s.id, s)).collect(), limit)
                    }
                    Err(e) => {
                        let pause = drain.fetch_failed(now);
                        self.failed(
                            &mut failures,
                            &mut published,
                            &format!("cannot read the queue: {e}"),
                            None,
                            Some(pause),
                            now,
                        )
                        .await;
                    }
                }
            }
            while let Some((id, stored)) = drain.next_send(now) {
                sends.push(self.send_one(id, stored));
            }
            if settling.is_none() {
                if let Some(settle) = drain.take_settlement(now) {
                    settling = Some(self.begin_settle(settle));
                }
            }
            self.publish(&drain, &mut published, now);
            if grace.is_some() && sends.is_empty() && settling.is_none() {
                break;
            }
            let wake = drain
                .next_wake(now)
                .map_or(IDLE_WAKE, |t| t.saturating_duration_since(now))
                .min(IDLE_WAKE);
            tokio::select! {
                _ = self.auth.retry_now() => drain.session_back(Instant::now()),
                Some((id, stored, sent)) = sends.next(), if !sends.is_empty() => {
                    let now = Instant::now();
                    let (answer, pause) = match sent {
                        Sent::Answered(outcome) => {
                            let answer = self.account(id, outcome, &mut failures, &mut published, now).await;
                            let got_through = matches!(answer, Answer::Accepted | Answer::Refused { .. });
                            if got_through {
                                for line in failures.succeeded(now) {
                                    self.say(line, None);
                                }
                            }
                            let pause = drain.answered(id, stored, answer.clone(), now);
                            (answer, pause)
                        }
                        Sent::NoSession { until, reason, configured } => {
                            published.not_configured = !configured;
                            self.set_last_error(&mut published, reason);
                            let answer = Answer::NotYet { until };
                            (answer.clone(), drain.answered(id, stored, answer, now))
                        }
                    };
                    if let Some(pause) = pause {
                        self.paused(pause, &answer).await;
                    }
                }
                done = async {
                    match settling.as_mut() {
                        Some(commit) => commit.await,
                        None => std::future::pending().await,
                    }
                }, if settling.is_some() => {
                    settling = None;
                    let now = Instant::now();
                    match done {
                        Ok(()) => {
                            drain.committed(true, now);
                        }
                        Err(e) => {
                            let pause = drain.committed(false, now);
                            self.failed(
                                &mut failures,
                                &mut published,
                                &format!("cannot record uploaded readings in the queue: {e}; no upload until they are"),
                                None,
                                pause,
                                now,
                            )
                            .await;
                        }
                    }
                }
                _ = self.store.new_readings.notified() => drain.more_queued(),
                _ = tokio::time::sleep(wake) => {
                    if drain.state(Instant::now()) == State::Idle {
                        // Readings may have come without a wake-up (another process).
                        drain.more_queued();
                    }
                    for line in failures.tick(Instant::now()) {
                        self.say(line, None);
                    }
                }
                _ = cancel.cancelled(), if grace.is_none() => {
                    drain.stop();
                    grace = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                }
                _ = async {
                    if let Some(g) = grace { tokio::time::sleep_until(g).await }
                }, if grace.is_some() => {
                    // What has not finished stays queued and is sent after the restart.
                    break;
                }
            }
            let acked = self.counters.accepted.load(Ordering::Relaxed) as usize;
            if acked >= acked_since_log + 1000 && drain.state(Instant::now()) == State::Idle {
                let pending = self.pending().await;
                tracing::info!(uploaded = acked - acked_since_log, pending, "backlog sent");
                acked_since_log = acked;
            }
        }
        drop(sends);
        // Answers already in: committed before leaving, so they are not sent again.
        if let Some(commit) = settling.take() {
            let _ = commit.await;
        }
        if let Some(settle) = drain.take_settlement(Instant::now()) {
            let _ = self.begin_settle(settle).await;
        }
        let left = drain.abandon();
        if !left.is_empty() {
            tracing::debug!(readings = left.len(), "left queued for the next start");
        }
        self.store.set_status(
            status_key::IN_FLIGHT,
            self.counters.in_flight.load(Ordering::Relaxed).to_string(),
        );
    }

    /// Counts an outcome and says a failure; what the drain should make of it.
    async fn account(
        &self,
        id: i64,
        outcome: SendOutcome,
        failures: &mut FailureLog,
        published: &mut Published,
        now: Instant,
    ) -> Answer {
        match outcome {
            SendOutcome::Accepted => {
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                Answer::Accepted
            }
            SendOutcome::Rejected { status, body } => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                // READING_ID= in the journal: `journalctl READING_ID=N` tells one reading's story.
                tracing::warn!(
                    reading_id = id,
                    status,
                    "server refused a reading for good; kept as a dead letter: {}",
                    crate::api::summarize(&body)
                );
                Answer::Refused { status, body }
            }
            SendOutcome::Misdirected { status, detail } => {
                self.counters
                    .endpoint_refused
                    .fetch_add(1, Ordering::Relaxed);
                self.failed(failures, published, &detail, Some(status), None, now)
                    .await;
                Answer::Blocked
            }
            // send_one already renewed once; a fresh token refused is not the reading's fault.
            SendOutcome::Unauthorized => {
                let detail = "the server refused a freshly renewed token (401): the account may lack access to /api/send/data/";
                self.failed(failures, published, detail, Some(401), None, now)
                    .await;
                Answer::Blocked
            }
            SendOutcome::Transient {
                status,
                retry_after,
                detail,
                back_pressure,
            } => {
                self.counters.transient.fetch_add(1, Ordering::Relaxed);
                self.failed(failures, published, &detail, status, None, now)
                    .await;
                Answer::Failed {
                    retry_after,
                    back_pressure,
                }
            }
        }
    }

    /// Says a failure once per run of identical ones, and keeps it as `last_error`.
    async fn failed(
        &self,
        failures: &mut FailureLog,
        published: &mut Published,
        what: &str,
        status: Option<u16>,
        pause: Option<Pause>,
        now: Instant,
    ) {
        for line in failures.failed(what, now) {
            if let Line::Started { .. } = line {
                self.set_last_error(published, what.to_owned());
                self.say(line, status);
            } else {
                self.say(line, status);
            }
        }
        if let Some(pause) = pause {
            self.paused(pause, &Answer::Blocked).await;
        }
    }

    fn say(&self, line: Line, status: Option<u16>) {
        match line {
            Line::Started { what } => tracing::warn!(status, "upload failed: {what}"),
            Line::Repeated { what, count } => {
                tracing::warn!(
                    status,
                    count,
                    "upload still failing ({count} times so far): {what}"
                )
            }
            Line::Ended {
                what,
                count,
                lasted,
            } => tracing::info!(
                count,
                "upload failure over after {count} times in {}: {what}",
                humantime::format_duration(Duration::from_secs(lasted.as_secs()))
            ),
        }
    }

    /// Uploading pauses as a whole: one line per pause (an outage begins, or a probe failed).
    async fn paused(&self, pause: Pause, answer: &Answer) {
        let pending = if pause.starts {
            self.pending().await
        } else {
            None
        };
        let why = if pause.retry_after {
            "as the server's Retry-After asks"
        } else if matches!(answer, Answer::Blocked) {
            "nothing can get through"
        } else {
            "no request got through"
        };
        let retry_in =
            humantime::format_duration(Duration::from_millis(pause.wait.as_millis() as u64));
        if pause.starts {
            tracing::warn!(%retry_in, pending, "uploads paused ({why}); then one request at a time until one gets through");
        } else {
            tracing::debug!(%retry_in, pending, "probe failed; uploads still paused");
        }
    }

    fn set_last_error(&self, published: &mut Published, error: String) {
        if published.last_error.as_deref() != Some(error.as_str()) {
            self.store.set_status(status_key::LAST_ERROR, error.clone());
            published.last_error = Some(error);
        }
    }

    /// Writes the state, the requests in flight and the concurrency for `queue stats`
    /// when they changed (the numbers at most once per `PUBLISH_EVERY`), and logs a new
    /// concurrency at most once per `CONCURRENCY_LOG_EVERY`.
    fn publish(&self, drain: &Drain<Stored>, published: &mut Published, now: Instant) {
        let state = match drain.state(now) {
            State::Idle => "idle",
            State::Uploading => "uploading",
            State::BackingOff => "backing off",
            State::WaitingForLogin if published.not_configured => "not configured",
            State::WaitingForLogin => "waiting for login",
        };
        if published.state != Some(state) {
            self.store
                .set_status(status_key::UPLOADER_STATE, state.to_owned());
            published.state = Some(state);
        }
        let due = published
            .at
            .is_none_or(|at| now.saturating_duration_since(at) >= PUBLISH_EVERY);
        if !due {
            return;
        }
        published.at = Some(now);
        let in_flight = self.counters.in_flight.load(Ordering::Relaxed);
        if published.in_flight != Some(in_flight) {
            self.store
                .set_status(status_key::IN_FLIGHT, in_flight.to_string());
            published.in_flight = Some(in_flight);
        }
        let concurrency = drain.concurrency();
        if published.concurrency != Some(concurrency) {
            self.store
                .set_status(status_key::UPLOAD_CONCURRENCY, concurrency.to_string());
            published.concurrency = Some(concurrency);
            let log_due = published.concurrency_logged.is_none_or(|(was, at)| {
                was != concurrency && now.saturating_duration_since(at) >= CONCURRENCY_LOG_EVERY
            });
            if log_due {
                tracing::info!(
                    upload_concurrency = concurrency,
                    rtt_ms = drain
                        .mean_rtt()
                        .map(|f| (f.as_secs_f64() * 10_000.0).round() / 10.0),
                    "upload concurrency now {concurrency}"
                );
                published.concurrency_logged = Some((concurrency, now));
            }
        }
    }

    /// The pending count for a log line's `pending` field (journal: `PENDING=`); only
    /// asked when something worth a line happened, never per reading.
    async fn pending(&self) -> Option<u64> {
        self.store.stats().await.ok().map(|s| s.pending)
    }

    /// Starts committing acks and dead letters.
    fn begin_settle(&self, settle: Settle) -> SettleFuture {
        if !settle.acked.is_empty() {
            self.store.set_status(
                status_key::LAST_UPLOAD_AT,
                crate::reading::format_rfc3339_ms(self.clock.now_ms()),
            );
        }
        Box::pin(self.store.settle(Settlement {
            acked: settle.acked,
            dead: settle.dead,
        }))
    }

    async fn send_one(&self, id: i64, stored: Stored) -> (i64, Stored, Sent) {
        let _in_flight = InFlight::enter(&self.counters.in_flight);
        let mut body = stored.reading.to_wire_json();
        if stored.clock_unsynced {
            // Captured in an earlier boot before the clock was set: the time may be wrong.
            if let Some(o) = body.as_object_mut() {
                o.insert("clock_unsynced".into(), true.into());
            }
        }
        // The token of this moment, not of the batch: a drain can outlive its token,
        // and once one send has renewed it the others must not use the dead one.
        let token = match self.auth.access_token().await {
            Ok(t) => t,
            Err(e) => return (id, stored, no_session(e)),
        };
        let mut outcome = self.api.send_reading(&token, &body).await;
        if outcome == SendOutcome::Unauthorized {
            // One renewal and one retry, never a loop.
            self.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
            self.auth.reject(&token).await;
            outcome = match self.auth.access_token().await {
                Ok(fresh) => self.api.send_reading(&fresh, &body).await,
                Err(e) => return (id, stored, no_session(e)),
            };
            if outcome == SendOutcome::Unauthorized {
                self.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
            }
        }
        (id, stored, Sent::Answered(outcome))
    }
}

fn no_session(e: AuthError) -> Sent {
    match e {
        AuthError::Waiting { until, reason } => Sent::NoSession {
            until: until.into_std(),
            reason,
            configured: true,
        },
        e @ AuthError::NoUsername => Sent::NoSession {
            until: Instant::now() + NOT_CONFIGURED_WAIT,
            reason: e.to_string(),
            configured: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn settings_from_config_auto_and_pinned() {
        let mut c = UploadConfig::default();
        assert_eq!(
            UploadSettings::from_config(&c).concurrency,
            Mode::Auto { max: 32 }
        );
        c.concurrency = UploadConcurrency::Fixed(6);
        assert_eq!(UploadSettings::from_config(&c).concurrency, Mode::Fixed(6));
    }
}
