//! Wires the tasks together: the queue thread, the sampler thread, and on a single-threaded
//! tokio runtime the uploader, the token keeper, the watchdog and the status line. Shutdown
//! is one cancellation token; every wait is bounded so the process exits well inside
//! systemd's `TimeoutStopSec`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::Api;
use crate::auth::password::PasswordSources;
use crate::auth::{AuthSettings, TokenManager};
use crate::clock::Clock;
use crate::config::Config;
use crate::queue::{status_key, Queue, QueueError};
use crate::sampler::Sampler;
use crate::sensors::set::SensorSet;
use crate::systemd::{Heartbeat, Notifier};
use crate::uploader::{UploadCounters, UploadSettings, Uploader};

/// How long the tasks get to stop after SIGTERM/SIGINT before the runtime drops them.
const STOP_TIMEOUT: Duration = Duration::from_secs(4);
/// How often the systemd status line and the daemon's heartbeat in the queue are updated.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// A task silent for this long is stalled: the watchdog stops being fed.
const STALL_AFTER: Duration = Duration::from_secs(60);

/// The stall limit for a configuration. The uploader only beats between events, and one
/// event may wait for a token renewal (one request) and then its own request, each bounded
/// by `api.request_timeout`: a slow but healthy link must not look like a stalled task, or
/// systemd would restart a gateway that is only waiting for a black-holed server.
fn stall_after(request_timeout: Duration) -> Duration {
    STALL_AFTER.max(request_timeout.saturating_mul(3) + Duration::from_secs(10))
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    // Transparent: the queue's message is the whole story, and its source chain stays
    // one link long (not the same text twice under anyhow's `{:#}`).
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("{0}")]
    Clock(String),
    #[error("sensors: {0}")]
    Sensors(#[from] crate::sensors::SensorError),
    #[error("api: {0}")]
    Api(#[from] crate::api::ApiError),
    #[error("cannot start {what}: {source}")]
    Start {
        what: &'static str,
        source: std::io::Error,
    },
}

/// Runs the gateway in the foreground until SIGTERM or SIGINT.
pub fn run(config: &Config) -> Result<(), DaemonError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Start {
            what: "the async runtime",
            source,
        })?;
    // Handlers first: a SIGTERM during start-up (systemd stopping a service that is still
    // opening its queue) must mean a clean stop, not death by the default action.
    let signals = {
        let _context = runtime.enter();
        let signals = StopSignals::install().map_err(|source| DaemonError::Start {
            what: "signal handling",
            source,
        })?;
        // A signal that arrived while held (see `hold_stop_signals`) is delivered now.
        set_stop_signals_blocked(false);
        signals
    };
    let clock = Clock::from_env().map_err(DaemonError::Clock)?;
    let queue = Queue::open(&config.queue)?;
    let pending = queue.pending()?;
    tracing::info!(
        queue = %config.queue.path.display(),
        pending,
        server = %config.api.base_url,
        interval = %humantime::format_duration(config.sampling.interval),
        "starting"
    );
    let (store, store_thread) = crate::store::spawn(
        queue,
        config.queue.commit_interval,
        crate::sampler::boot_id(),
        clock,
    )
    .map_err(|source| DaemonError::Start {
        what: "the queue thread",
        source,
    })?;

    let sensors = SensorSet::from_config(&config.sensors, config.sampling.interval)?;
    let sampler_heartbeat = Heartbeat::new();
    let uploader_heartbeat = Heartbeat::new();
    let (stop_sampler, stop_rx) = std::sync::mpsc::channel::<()>();
    let sampler = Sampler {
        source: Box::new(sensors),
        store: store.clone(),
        clock,
        interval: config.sampling.interval,
        on_sensor_error: config.sampling.on_sensor_error,
        heartbeat: sampler_heartbeat.clone(),
    };
    let sampler_thread = std::thread::Builder::new()
        .name("sampler".into())
        .spawn(move || sampler.run(stop_rx))
        .map_err(|source| DaemonError::Start {
            what: "the sampler thread",
            source,
        })?;

    let api = Api::new(&config.api.base_url, config.api.request_timeout)?;
    let result = runtime.block_on(serve(
        config,
        api,
        clock,
        store,
        [
            ("sampler", sampler_heartbeat),
            ("uploader", uploader_heartbeat),
        ],
        signals,
    ));
    // Dropping the runtime drops any task that outlived the stop timeout, and with them the
    // last queue handles, so the queue thread makes its final commit and ends.
    drop(runtime);
    let _ = stop_sampler.send(());
    if sampler_thread.join().is_err() {
        tracing::error!("sampler thread panicked");
    }
    if store_thread.join().is_err() {
        tracing::error!("queue thread panicked");
    }
    tracing::info!("stopped");
    result
}

async fn serve(
    config: &Config,
    api: Api,
    clock: Clock,
    store: crate::store::StoreHandle,
    heartbeats: [(&'static str, Heartbeat); 2],
    mut signals: StopSignals,
) -> Result<(), DaemonError> {
    let notifier = Notifier::from_env();
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let passwords = config
        .api
        .username
        .as_deref()
        .map(|u| PasswordSources::new(u, config.api.password_file.clone()));
    let auth = Arc::new(TokenManager::new(
        api.clone(),
        config.api.username.clone(),
        passwords,
        clock,
        AuthSettings {
            refresh_margin: config.api.refresh_margin,
            login_backoff_base: config.api.login_backoff_base,
            login_backoff_max: config.api.login_backoff_max,
        },
    ));
    let [sampler_hb, uploader_hb] = heartbeats;
    let upload_counters = Arc::new(UploadCounters::default());
    let uploader = Uploader {
        api,
        auth: auth.clone(),
        store: store.clone(),
        clock,
        settings: UploadSettings::from_config(&config.upload),
        heartbeat: uploader_hb.1.clone(),
        counters: upload_counters.clone(),
    };
    tracker.spawn(uploader.run(cancel.child_token()));
    {
        let auth = auth.clone();
        let cancel = cancel.child_token();
        tracker.spawn(async move { auth.keep_fresh(cancel).await });
    }
    tracker.spawn(crate::systemd::watchdog_loop(
        notifier.clone(),
        vec![sampler_hb, uploader_hb],
        stall_after(config.api.request_timeout),
        cancel.child_token(),
    ));
    tracker.spawn(status_loop(
        store.clone(),
        notifier.clone(),
        clock,
        Counters {
            auth: auth.clone(),
            uploads: upload_counters,
        },
        cancel.child_token(),
    ));
    drop(store);
    if let Err(e) = notifier.ready() {
        tracing::warn!("cannot tell systemd we are ready: {e}");
    }
    tracing::info!("ready");

    signals.recv().await;
    tracing::info!("stopping: finishing in-flight uploads, closing the queue");
    let _ = notifier.stopping();
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(STOP_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop in time; what they held stays queued");
    }
    Ok(())
}

/// Holds SIGTERM and SIGINT pending from the very start of the process until `run` has
/// its handlers, so a stop request during start-up is never fatal. Call before any thread.
pub fn hold_stop_signals() {
    set_stop_signals_blocked(true);
}

fn set_stop_signals_blocked(blocked: bool) {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; pthread_sigmask only
    // changes this thread's mask (threads started later inherit it).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let how = if blocked {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// SIGTERM and SIGINT, registered once at start.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// What `queue stats` shows of the daemon's activity since start.
struct Counters {
    auth: Arc<TokenManager>,
    uploads: Arc<UploadCounters>,
}

/// Keeps systemd's STATUS= line and the daemon's state in the queue current.
async fn status_loop(
    store: crate::store::StoreHandle,
    notifier: Notifier,
    clock: Clock,
    counters: Counters,
    cancel: CancellationToken,
) {
    loop {
        store.set_status(
            status_key::UPDATED_AT,
            crate::reading::format_rfc3339_ms(clock.now_ms()),
        );
        store.set_status(
            status_key::AUTH,
            counters.auth.counters.to_json().to_string(),
        );
        store.set_status(status_key::UPLOADS, counters.uploads.to_json().to_string());
        if notifier.is_enabled() {
            if let Ok(stats) = store.stats().await {
                let last = stats
                    .last_upload_at
                    .as_deref()
                    .and_then(|t| humantime::parse_rfc3339(t).ok());
                let line = crate::systemd::status_line(stats.pending, stats.dead, last);
                let _ = notifier.status(&line);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(STATUS_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_limit_outlasts_a_renewal_and_a_request() {
        assert_eq!(stall_after(Duration::from_secs(10)), STALL_AFTER);
        let long = Duration::from_secs(60);
        assert!(stall_after(long) > long * 2);
    }
}
