//! Wires the tasks together: the queue thread, the sampler thread, and on a single-threaded
//! tokio runtime the uploader, the token keeper, the watchdog and the status line. Shutdown
//! is one cancellation token; every wait is bounded so the process exits well inside
//! systemd's `TimeoutStopSec`.
//!
//! SIGHUP (`systemctl reload`, a closed terminal) never kills it: the configuration is read
//! again and what can change without a restart is applied, the log level and the password
//! sources; the rest waits for the next start, and the log says so.

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
use crate::sampler::{Sampler, TickSource};
use crate::sensors::set::SensorSet;
use crate::systemd::Notifier;
use crate::uploader::{UploadCounters, UploadSettings, Uploader};
use crate::watchdog::{Heartbeat, Stop};

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
    /// The queue thread gave up on the queue: exiting non-zero gets the service restarted.
    #[error("stopped: {0}")]
    QueueBroken(String),
    #[error(transparent)]
    Lock(#[from] crate::queue::lock::LockError),
    #[error("cannot start {what}: {source}")]
    Start {
        what: &'static str,
        source: std::io::Error,
    },
}

/// The parts the daemon is made of, handed to [`serve`]. [`run`] builds them from the
/// configuration and this machine; a test builds its own (a simulated sensor, no systemd).
pub struct Deps {
    pub config: Config,
    /// The one clock: its clones share what the server's clock vouches for.
    pub clock: Clock,
    /// This boot's id: readings captured before the clock was set are dated per boot.
    pub boot_id: String,
    pub sensors: Box<dyn TickSource>,
    pub api: Api,
    /// Where the password comes from; `None` without `api.username` (uploads off).
    pub passwords: Option<PasswordSources>,
    pub notifier: Notifier,
    /// Configurations read again on SIGHUP, to apply while running; `None`: no reloads.
    pub reloads: Option<tokio::sync::mpsc::UnboundedReceiver<Config>>,
}

impl Deps {
    /// The parts for `config` on this machine: the clock and NTP state from the
    /// environment, the configured sensors, the server's API and systemd's socket.
    pub fn from_config(config: &Config) -> Result<Deps, DaemonError> {
        let clock = Clock::from_env().map_err(DaemonError::Clock)?;
        let sensors = SensorSet::from_config(&config.sensors, config.sampling.interval)?;
        let api = Api::from_config(&config.api, clock.clone())?;
        let passwords = config
            .api
            .username
            .as_deref()
            .map(|u| PasswordSources::new(u, config.api.password_file.clone()));
        Ok(Deps {
            config: config.clone(),
            clock,
            boot_id: crate::clock::boot_id(),
            sensors: Box::new(sensors),
            api,
            passwords,
            notifier: Notifier::from_env(),
            reloads: None,
        })
    }
}

/// Runs the gateway in the foreground until SIGTERM or SIGINT, the only daemon on its
/// queue (see `queue::lock`). On SIGHUP it applies what `reload` reads (see the module).
pub fn run(
    config: &Config,
    reload: impl Fn() -> Result<Config, String> + Send + 'static,
) -> Result<(), DaemonError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Start {
            what: "the async runtime",
            source,
        })?;
    // Handlers first: a SIGTERM during start-up (systemd stopping a service that is still
    // opening its queue) must mean a clean stop, not death by the default action.
    let mut signals = {
        let _context = runtime.enter();
        let signals = Signals::install().map_err(|source| DaemonError::Start {
            what: "signal handling",
            source,
        })?;
        // A signal that arrived while held (see `hold_stop_signals`) is delivered now.
        set_stop_signals_blocked(false);
        signals
    };
    let shutdown = CancellationToken::new();
    let (reloads, reloaded) = tokio::sync::mpsc::unbounded_channel();
    runtime.spawn({
        let shutdown = shutdown.clone();
        async move {
            while let Signal::Reload = signals.recv().await {
                tracing::info!("SIGHUP: reading the configuration again");
                match reload() {
                    Ok(config) => {
                        let _ = reloads.send(config);
                    }
                    Err(e) => tracing::error!(
                        "cannot reload: {e}; the running configuration stays in force"
                    ),
                }
            }
            shutdown.cancel();
        }
    });
    // Before the sensors are opened: a second daemon must not touch the chips either.
    let _lock = crate::queue::lock::RunLock::acquire(&config.queue.path)?;
    let mut deps = Deps::from_config(config)?;
    deps.reloads = Some(reloaded);
    runtime.block_on(serve(deps, shutdown))
}

/// Runs the gateway from `deps` until `shutdown` is cancelled: the queue thread, the
/// sampler thread and, on the caller's runtime, the uploader, the token keeper, the
/// watchdog and the status line. Returns once everything has stopped and the queue made
/// its last commit.
pub async fn serve(deps: Deps, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let Deps {
        config,
        clock,
        boot_id,
        sensors,
        api,
        passwords,
        notifier,
        reloads,
    } = deps;
    let queue = Queue::open(&config.queue)?;
    let pending = queue.pending()?;
    tracing::info!(
        queue = %config.queue.path.display(),
        pending,
        server = %config.api.base_url,
        interval = %humantime::format_duration(config.sampling.interval),
        "starting"
    );
    if config.api.username.is_none() {
        tracing::warn!(
            "uploads are off: api.username is not set, so readings are only queued; set `username = \"...\"` under [api] in the configuration file (default {}), store the password (`profilo-gateway set-password`, api.password_file or a systemd credential) and restart",
            crate::config::DEFAULT_CONFIG_PATH
        );
    }
    let (store, store_thread) =
        crate::queue::writer::spawn(queue, config.queue.commit_interval, boot_id, clock.clone())
            .map_err(|source| DaemonError::Start {
                what: "the queue thread",
                source,
            })?;

    let queue_heartbeat = store.heartbeat.clone();
    let queue_broken = store.broken();
    let sampler_heartbeat = Heartbeat::new();
    let uploader_heartbeat = Heartbeat::new();
    let stop_sampler = Stop::new();
    let sampler = Sampler {
        source: sensors,
        store: store.clone(),
        clock: clock.clone(),
        interval: config.sampling.interval,
        on_sensor_error: config.sampling.on_sensor_error,
        heartbeat: sampler_heartbeat.clone(),
    };
    let sampler_thread = std::thread::Builder::new()
        .name("sampler".into())
        .spawn({
            let stop = stop_sampler.clone();
            move || sampler.run(stop)
        })
        .map_err(|source| DaemonError::Start {
            what: "the sampler thread",
            source,
        })?;

    let cancel = shutdown.child_token();
    let tracker = TaskTracker::new();
    let auth = Arc::new(TokenManager::new(
        api.clone(),
        config.api.username.clone(),
        passwords,
        clock.clone(),
        AuthSettings::from_config(&config),
    ));
    let upload_counters = Arc::new(UploadCounters::default());
    let uploader = Uploader {
        api,
        auth: auth.clone(),
        store: store.clone(),
        clock: clock.clone(),
        settings: UploadSettings::from_config(&config.upload),
        heartbeat: uploader_heartbeat.clone(),
        counters: upload_counters.clone(),
    };
    let mut tasks = vec![tracker.spawn(uploader.run(cancel.child_token()))];
    tasks.push({
        let auth = auth.clone();
        let cancel = cancel.child_token();
        tracker.spawn(async move { auth.keep_fresh(cancel).await })
    });
    let heartbeats = vec![
        ("sampler", sampler_heartbeat),
        ("uploader", uploader_heartbeat),
        ("queue", queue_heartbeat),
    ];
    if let Some(addr) = config.metrics.listen {
        let probe = crate::metrics::http::Probe {
            store: store.clone(),
            clock: clock.clone(),
            heartbeats: heartbeats.clone(),
            stall_after: stall_after(config.api.request_timeout),
        };
        match crate::metrics::http::bind(addr).await {
            Ok(listener) => tasks.push(tracker.spawn(crate::metrics::http::serve(
                listener,
                probe,
                cancel.child_token(),
            ))),
            // Sampling and queueing matter more than being watched: go on without it.
            Err(e) => tracing::error!("{e}"),
        }
    }
    tasks.push(tracker.spawn(crate::metrics::summary::summary_loop(
        store.clone(),
        crate::metrics::summary::SUMMARY_EVERY,
        cancel.child_token(),
    )));
    tasks.push(tracker.spawn(crate::watchdog::watchdog_loop(
        notifier.clone(),
        heartbeats,
        stall_after(config.api.request_timeout),
        cancel.child_token(),
    )));
    if let Some(reloads) = reloads {
        tasks.push(tracker.spawn(reload_loop(
            reloads,
            auth.clone(),
            config.clone(),
            cancel.child_token(),
        )));
    }
    tasks.push(tracker.spawn(status_loop(
        store.clone(),
        notifier.clone(),
        clock,
        Counters {
            auth,
            uploads: upload_counters,
        },
        cancel.child_token(),
    )));
    drop(store);
    if let Err(e) = notifier.ready() {
        tracing::warn!("cannot tell systemd we are ready: {e}");
    }
    tracing::info!("ready");

    let broken = tokio::select! {
        _ = shutdown.cancelled() => None,
        reason = queue_broken.wait() => Some(reason),
    };
    tracing::info!("stopping: finishing in-flight uploads, closing the queue");
    let _ = notifier.stopping();
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(STOP_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop in time; what they held stays queued");
        // Dropped at their next await, and with them their queue handles, so that the
        // queue thread can make its last commit.
        for task in &tasks {
            task.abort();
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    stop_sampler.stop();
    let joined = tokio::task::spawn_blocking(move || {
        if sampler_thread.join().is_err() {
            tracing::error!("sampler thread panicked");
        }
        if store_thread.join().is_err() {
            tracing::error!("queue thread panicked");
        }
    })
    .await;
    if joined.is_err() {
        tracing::error!("cannot wait for the sampler and queue threads to stop");
    }
    tracing::info!("stopped");
    match broken {
        Some(reason) => Err(DaemonError::QueueBroken(reason)),
        None => Ok(()),
    }
}

/// Applies the configurations read on SIGHUP until `cancel`.
async fn reload_loop(
    mut reloads: tokio::sync::mpsc::UnboundedReceiver<Config>,
    auth: Arc<TokenManager>,
    running: Config,
    cancel: CancellationToken,
) {
    loop {
        let new = tokio::select! {
            _ = cancel.cancelled() => return,
            new = reloads.recv() => match new {
                Some(new) => new,
                None => return,
            },
        };
        apply_reload(&auth, &running, &new).await;
    }
}

/// Applies what can change while running (the log level, the password sources) and says
/// what it did; the rest takes effect at the next start.
async fn apply_reload(auth: &TokenManager, running: &Config, new: &Config) {
    match crate::logging::set_level(&new.log.level) {
        Ok(crate::logging::LevelChange::Set(filter)) => {
            tracing::info!(filter = %filter, "reload: log level set")
        }
        Ok(crate::logging::LevelChange::RustLogWins(value)) => tracing::info!(
            "reload: log level unchanged, RUST_LOG={value:?} is set and wins over log.level"
        ),
        Err(e) => tracing::error!("reload: log level unchanged: {e}"),
    }
    // The username names the session: changing it needs a restart.
    let sources = running
        .api
        .username
        .as_deref()
        .map(|u| PasswordSources::new(u, new.api.password_file.clone()));
    match sources.as_ref().map(PasswordSources::read) {
        Some(Ok((_, source))) => {
            tracing::info!("reload: password sources read again, the password comes from the {source}; the next login uses it")
        }
        Some(Err(e)) => tracing::error!("reload: password sources read again: {e}"),
        None => {}
    }
    auth.set_passwords(sources).await;
    if new.api.username != running.api.username {
        tracing::warn!(
            "reload: api.username changed; it takes effect at the next restart (systemctl restart profilo-gateway)"
        );
    }
    tracing::info!(
        "reload done: other settings take effect at the next restart (systemctl restart profilo-gateway)"
    );
}

/// Holds SIGTERM, SIGINT and SIGHUP pending from the very start of the process until `run`
/// has its handlers, so a signal during start-up is never fatal. Call before any thread.
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
        libc::sigaddset(&mut set, libc::SIGHUP);
        let how = if blocked {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// What a signal asks for.
enum Signal {
    Stop,
    Reload,
}

/// SIGTERM, SIGINT and SIGHUP, registered once at start.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
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
    store: crate::queue::writer::StoreHandle,
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

    /// The daemon's parts for an in-process run: one simulated sensor every 10 ms, a queue
    /// in `dir`, no username (uploads off: the server is never asked), no systemd.
    fn deps(dir: &std::path::Path) -> Deps {
        let mut config = Config::default();
        config.queue.path = dir.join("q.db");
        config.queue.commit_interval = Duration::from_millis(20);
        config.sampling.interval = Duration::from_millis(10);
        config.api.username = None;
        config.sensors = vec![crate::sensors::SensorConfig::Simulated(Default::default())];
        let sensors = SensorSet::from_config(&config.sensors, config.sampling.interval)
            .expect("a simulated sensor");
        Deps {
            api: Api::new("http://127.0.0.1:9", Duration::from_secs(1)).expect("api"),
            config,
            clock: Clock::system(),
            boot_id: "test-boot".into(),
            sensors: Box::new(sensors),
            passwords: None,
            notifier: Notifier::disabled(),
            reloads: None,
        }
    }

    /// The queue's figures as another process sees them; zeros while it does not exist.
    fn stats(path: &std::path::Path) -> crate::queue::Stats {
        Queue::open_read_only(path)
            .and_then(|q| q.stats())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn serve_queues_readings_and_stops_cleanly_when_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("q.db");
        let shutdown = CancellationToken::new();
        let driver = async {
            let t0 = tokio::time::Instant::now();
            loop {
                let s = stats(&path);
                // Without a username the uploader says so and never sends.
                if s.pending >= 5 && s.uploader_state.as_deref() == Some("not configured") {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "within 30 s, not 5 readings queued and uploads off: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            shutdown.cancel();
        };
        let (served, ()) = tokio::join!(
            tokio::time::timeout(
                Duration::from_secs(60),
                serve(deps(dir.path()), shutdown.clone())
            ),
            driver
        );
        assert!(
            matches!(served, Ok(Ok(()))),
            "serve did not stop cleanly: {served:?}"
        );
        // Stopped for good: the sampler no longer samples, the queue thread made its last
        // commit, nothing was dropped or sent.
        let after = stats(&path);
        assert!(after.pending >= 5, "{after:?}");
        assert_eq!(
            (after.dropped_total, after.uploaded_total),
            (0, 0),
            "{after:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            stats(&path).pending,
            after.pending,
            "readings still arrive after serve returned"
        );
    }

    #[test]
    fn stall_limit_outlasts_a_renewal_and_a_request() {
        assert_eq!(stall_after(Duration::from_secs(10)), STALL_AFTER);
        let long = Duration::from_secs(60);
        assert!(stall_after(long) > long * 2);
    }
}
