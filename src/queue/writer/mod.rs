//! The queue thread: the one writer of the daemon's queue. SQLite is synchronous and its
//! connection single-threaded, so one thread owns the daemon's [`Queue`] and serves the
//! sampler and the uploader through a channel ([`StoreHandle`]). Readings handed over within `commit_interval` are committed together: at
//! 1 kHz that is one transaction (and one fsync) per ~50 readings instead of per reading.
//!
//! What is written is what a restart needs, as little as the promises allow (SD cards
//! wear out with small writes):
//! - readings: within `commit_interval`, one fsync per group;
//! - acknowledgements: at once while the uploader works through a backlog (it stops
//!   sending at `upload.batch_size` uncommitted), but lazily once it has caught up
//!   (its last read reached the end of the queue): they then ride along with the next
//!   readings' commit, or wait at most `ACK_WINDOW`. The uploader's duplicates bound is
//!   unchanged: `settle` still resolves only once the acks are on disk;
//! - the daemon's status: in memory and in the runtime file (`runtime`, tmpfs) as it
//!   changes; in the queue file only every `STATUS_SAVE_EVERY`, along with a data commit
//!   when there is one, and at shutdown.
//!
//! When a commit fails (disk full, I/O error) the transaction is rolled back, nothing on
//! disk changes, and the readings wait in memory (bounded; overflow counted as drops) until
//! a later commit succeeds. So do the acknowledgements of uploaded readings: until they
//! are committed, a drain may not start again (it would resend them), see `Peek`.
//!
//! A queue that breaks for good (deleted, overwritten, corrupt, or failing for
//! `health::GIVE_UP_AFTER`) is not retried forever: the thread gives up and says so
//! ([`BrokenSignal`]), and the daemon exits non-zero. Its [`StoreHandle::heartbeat`] beats
//! only while writes work or the disk is merely full, so a thread stuck in a commit
//! stops the watchdog.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch, Notify};

use self::commit::{DropLog, Written};
use self::thread_health::Health;
use super::health::{Failures, FileIdentity};
use super::runtime::RuntimeFile;
use super::{Queue, Stats, Stored};
use crate::clock::Clock;
use crate::reading::Reading;
use crate::watchdog::Heartbeat;

mod commit;
mod thread_health;

/// Readings held in memory while the disk refuses writes; beyond this they are dropped
/// (and counted) rather than letting memory grow on a small Pi.
const MAX_BUFFERED: usize = 10_000;
/// Most readings in one commit while writes work: bounds the transaction and its memory.
const MAX_GROUP: usize = 2_000;
/// The daemon's status is saved in the queue file this often (and at shutdown): what
/// `queue stats` shows after a kill -9 is at most this old.
const STATUS_SAVE_EVERY: Duration = Duration::from_secs(300);
/// Acks of an uploader that has caught up wait at most this long for readings to commit
/// with (and only while readings come at least this often). Longer than the default
/// sampling interval (5 s), so that each commit carries one reading and the acks of the
/// one before.
const ACK_WINDOW: Duration = Duration::from_secs(10);
/// Between two attempts to write after a failure.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// A failing write is logged at most this often.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);
/// With nothing to write the thread still turns this often, to beat its heartbeat.
const IDLE_TURN: Duration = Duration::from_secs(1);
/// How often the queue file is checked for having been deleted, replaced or damaged.
const VERIFY_EVERY: Duration = Duration::from_secs(10);

/// A reading with where and when it was captured, for later clock correction.
#[derive(Debug, Clone)]
pub struct Captured {
    pub reading: Reading,
    /// Milliseconds of CLOCK_BOOTTIME at capture.
    pub monotonic_ms: i64,
    /// Whether the wall clock was believed synchronised at capture.
    pub clock_synced: bool,
}

/// The uploader's verdict on a batch.
#[derive(Debug, Default)]
pub struct Settlement {
    pub acked: Vec<i64>,
    pub dead: Vec<(i64, u16, String)>,
}

enum Command {
    Enqueue(Captured),
    Peek {
        after_id: i64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Stored>, String>>,
    },
    Settle {
        settlement: Settlement,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Status(&'static str, String),
    Stats(oneshot::Sender<Result<Stats, String>>),
}

#[derive(Debug, thiserror::Error)]
#[error("the queue thread has stopped")]
pub struct StoreClosed;

/// A cheap handle to the queue thread.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Command>,
    /// Woken after readings were committed, so the uploader need not poll.
    pub new_readings: Arc<Notify>,
    /// Beats while the queue thread's writes succeed (or only the disk is full).
    pub heartbeat: Heartbeat,
    broken: watch::Receiver<Option<String>>,
}

/// Resolves once the queue thread gave up on a broken queue, with why.
pub struct BrokenSignal(watch::Receiver<Option<String>>);

impl BrokenSignal {
    /// Why the queue broke; never resolves while it works or after a normal stop.
    pub async fn wait(mut self) -> String {
        match self.0.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }
}

impl StoreHandle {
    /// Tells when the queue thread gives up; holds no handle, so it does not keep the
    /// thread running.
    pub fn broken(&self) -> BrokenSignal {
        BrokenSignal(self.broken.clone())
    }

    /// Hands a reading over; it is on disk within `commit_interval`.
    pub fn enqueue(&self, captured: Captured) -> Result<(), StoreClosed> {
        self.tx
            .send(Command::Enqueue(captured))
            .map_err(|_| StoreClosed)
    }

    pub fn set_status(&self, key: &'static str, value: String) {
        let _ = self.tx.send(Command::Status(key, value));
    }

    pub async fn peek(&self, after_id: i64, limit: usize) -> Result<Vec<Stored>, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Peek {
                after_id,
                limit,
                reply,
            })
            .map_err(|_| StoreClosed.to_string())?;
        rx.await.map_err(|_| StoreClosed.to_string())?
    }

    /// Records acks and dead letters at once (the commit starts now); the returned future
    /// resolves once they are committed.
    pub fn settle(
        &self,
        settlement: Settlement,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .tx
            .send(Command::Settle { settlement, reply })
            .map_err(|_| StoreClosed.to_string());
        async move {
            sent?;
            rx.await.map_err(|_| StoreClosed.to_string())?
        }
    }

    pub async fn stats(&self) -> Result<Stats, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Stats(reply))
            .map_err(|_| StoreClosed.to_string())?;
        rx.await.map_err(|_| StoreClosed.to_string())?
    }
}

/// Starts the queue thread. It stops, after a last commit, once every handle is dropped.
pub fn spawn(
    mut queue: Queue,
    commit_interval: Duration,
    boot_id: String,
    clock: Clock,
) -> std::io::Result<(StoreHandle, JoinHandle<()>)> {
    queue.set_current_boot(&boot_id);
    match queue.fix_earlier_boots() {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            corrected = n,
            "corrected the capture time of readings of earlier boots from readings taken after their clock synchronised"
        ),
        // Not fatal: they stay flagged or held, as `queue.unfixable_time` says.
        Err(e) => tracing::warn!("cannot correct readings of earlier boots: {e}"),
    }
    // Readings of this boot may wait for a correction from an earlier run of the daemon.
    let maybe_unsynced = queue.has_unsynced().unwrap_or(true);
    let queue_path = queue.path().to_path_buf();
    let (tx, rx) = mpsc::channel();
    let new_readings = Arc::new(Notify::new());
    let notify = new_readings.clone();
    let heartbeat = Heartbeat::new();
    let (broken_tx, broken) = watch::channel(None);
    let file = FileIdentity::of(queue.path()).ok();
    let beat = heartbeat.clone();
    let thread = std::thread::Builder::new()
        .name("queue".into())
        .spawn(move || {
            let mut writer = Writer {
                queue,
                boot_id,
                clock,
                maybe_unsynced,
                readings: VecDeque::new(),
                settlements: Vec::new(),
                unsaved: Vec::new(),
                last_error: None,
                drops: DropLog::default(),
                evictions: DropLog::default(),
                runtime: RuntimeFile::for_daemon(queue_path.as_path()),
                status: BTreeMap::new(),
                status_unsaved: false,
                status_saved_at: Instant::now(),
                file_due: None,
                file_written_at: None,
                caught_up: false,
                last_enqueue: None,
                reading_gap: None,
                commit_interval,
                closing: false,
                dropped_in_memory: 0,
                failing_since: None,
                last_failure_log: None,
                notify,
                health: Health {
                    heartbeat: beat,
                    failures: Failures::default(),
                    file,
                    last_verified: Instant::now(),
                    broken: broken_tx,
                    gave_up: false,
                    foreign_index: false,
                },
            };
            writer.serve(rx, commit_interval);
        })?;
    Ok((
        StoreHandle {
            tx,
            new_readings,
            heartbeat,
            broken,
        },
        thread,
    ))
}

struct Writer {
    queue: Queue,
    boot_id: String,
    clock: Clock,
    /// Readings with an unsynchronised capture time may be stored.
    maybe_unsynced: bool,
    readings: VecDeque<Captured>,
    settlements: Vec<(Settlement, oneshot::Sender<Result<(), String>>)>,
    /// Settlements whose commit failed: the uploader was told, and they are retried with
    /// every write until they are on disk.
    unsaved: Vec<Settlement>,
    /// Why the last write failed, while writes fail.
    last_error: Option<String>,
    /// Readings dropped to respect the bounds, logged at most once a minute.
    drops: DropLog,
    /// Dead letters evicted to respect `max_bytes`, logged at most once a minute.
    evictions: DropLog,
    /// Where the status goes while the daemon runs.
    runtime: RuntimeFile,
    /// The daemon's whole status, as last set.
    status: BTreeMap<&'static str, String>,
    /// The status changed since it was last saved in the queue file.
    status_unsaved: bool,
    status_saved_at: Instant,
    /// The status changed: the runtime file is rewritten then.
    file_due: Option<Instant>,
    file_written_at: Option<Instant>,
    /// The uploader's last read reached the end of the queue: its acks may wait.
    caught_up: bool,
    /// When the last reading came, and the time since the one before.
    last_enqueue: Option<Instant>,
    reading_gap: Option<Duration>,
    commit_interval: Duration,
    /// The last flush, before the thread ends: everything is written.
    closing: bool,
    /// Drops that happened in memory (writes failing); added to the stored counter later.
    dropped_in_memory: u64,
    failing_since: Option<Instant>,
    last_failure_log: Option<Instant>,
    notify: Arc<Notify>,
    health: Health,
}

impl Writer {
    fn serve(&mut self, rx: mpsc::Receiver<Command>, commit_interval: Duration) {
        // When the next commit is due (`None`: nothing waits).
        let mut deadline: Option<Instant> = None;
        loop {
            self.check_health();
            if self.health.gave_up {
                return;
            }
            // Idle, the thread still wakes every IDLE_TURN to beat and check the file
            // (memory and reads only: nothing is written).
            let wake = deadline.into_iter().chain(self.file_due).min();
            let received = match wake {
                None => rx.recv_timeout(IDLE_TURN),
                Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
            };
            match received {
                Ok(command) => {
                    if self.accept(command) {
                        self.flush();
                        deadline = None;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.closing = true;
                    self.flush();
                    self.runtime.remove();
                    if self.has_writes() {
                        tracing::error!(
                            readings = self.readings.len(),
                            "queue closed with readings that could not be written (disk full?)"
                        );
                    }
                    return;
                }
            }
            // A channel that is never empty never times out: commit when the window has
            // passed or the group is full, whatever keeps arriving.
            let now = Instant::now();
            let group_full = self.failing_since.is_none() && self.readings.len() >= MAX_GROUP;
            if group_full || deadline.is_some_and(|d| d <= now) {
                self.flush();
                deadline = None;
            }
            self.write_runtime_file(now);
            if !self.has_writes() {
                deadline = None;
                continue;
            }
            let wait = if self.failing_since.is_some() {
                RETRY_AFTER_FAILURE
            } else if !self.readings.is_empty() {
                commit_interval
            } else if !self.settlements.is_empty() {
                self.ack_wait().unwrap_or(Duration::ZERO)
            } else if self.redate_due() {
                Duration::ZERO
            } else {
                // Status alone: saved when due.
                STATUS_SAVE_EVERY.saturating_sub(self.status_saved_at.elapsed())
            };
            // Only ever brought forward: at a steady high rate the first write of a group
            // fixes its commit time.
            let wanted = now + wait;
            deadline = Some(deadline.map_or(wanted, |d| d.min(wanted)));
        }
    }

    /// How long the acks may wait for the next readings' commit, if they may: the
    /// uploader has caught up and readings come at least every `ACK_WINDOW`. One and a
    /// half sampling gaps, so that the next reading is in time despite jitter.
    fn ack_wait(&self) -> Option<Duration> {
        let gap = self.reading_gap?;
        let recent = self.last_enqueue.is_some_and(|t| t.elapsed() <= ACK_WINDOW);
        (self.caught_up && recent && gap <= ACK_WINDOW)
            .then(|| (gap + gap / 2 + self.commit_interval).min(ACK_WINDOW))
    }

    fn has_writes(&self) -> bool {
        !self.readings.is_empty()
            || !self.settlements.is_empty()
            || !self.unsaved.is_empty()
            || self.status_unsaved
            || self.redate_due()
    }

    /// Held readings can be dated now (the clock became trustworthy): a write of its own,
    /// since an idle queue may see no other for hours.
    fn redate_due(&self) -> bool {
        self.maybe_unsynced && self.clock.trusted(self.clock.now_ms())
    }

    /// The status goes into the queue file with this write.
    fn status_due(&self) -> bool {
        self.status_unsaved && (self.closing || self.status_saved_at.elapsed() >= STATUS_SAVE_EVERY)
    }

    /// Rewrites the runtime file if the status changed and the last write is old enough.
    fn write_runtime_file(&mut self, now: Instant) {
        if self.file_due.is_none_or(|d| d > now) {
            return;
        }
        self.file_due = None;
        self.file_written_at = Some(now);
        if let Err(e) = self.runtime.write(self.queue.path(), &self.status) {
            // `queue stats` then shows the status last saved in the queue file.
            tracing::debug!(file = %self.runtime.path().display(), "cannot write the status file: {e}");
        }
    }

    /// Takes a command; returns true when it must be served with everything written first.
    fn accept(&mut self, command: Command) -> bool {
        match command {
            Command::Enqueue(c) => {
                let now = Instant::now();
                if let Some(last) = self.last_enqueue.replace(now) {
                    self.reading_gap = Some(now.duration_since(last));
                }
                if self.failing_since.is_some() && self.readings.len() >= MAX_BUFFERED {
                    // Writes fail (disk full): keep the newest in memory, count the loss.
                    self.readings.pop_front();
                    self.dropped_in_memory += 1;
                }
                self.readings.push_back(c);
                false
            }
            Command::Status(key, value) => {
                if self.status.get(key) != Some(&value) {
                    // A key's first value is shown at once (a daemon just started says what
                    // it does); changes are paced, the file may be on the card.
                    let first = self.status.insert(key, value).is_none();
                    self.status_unsaved = true;
                    let earliest = match self.file_written_at {
                        Some(t) if !first => t + self.runtime.every,
                        _ => Instant::now(),
                    };
                    self.file_due = Some(self.file_due.map_or(earliest, |d| d.min(earliest)));
                }
                false
            }
            Command::Settle { settlement, reply } => {
                self.settlements.push((settlement, reply));
                // Caught up, the uploader waits for new readings anyway: the acks commit
                // with them, if readings come often enough. Working through a backlog, or
                // with nothing to commit with soon, it waits for these.
                self.ack_wait().is_none()
            }
            Command::Peek {
                after_id,
                limit,
                reply,
            } => {
                // A drain starts at id 0: its acks must be on disk first, or acked readings
                // would be sent again. Later peeks of a drain read past its cursor and never
                // meet an acked reading, so they need no commit (and no fsync stall).
                if after_id == 0 {
                    self.flush();
                    // Acks that are still not on disk would be sent again, and again at
                    // each new drain: no drain until they are committed.
                    if !self.unsaved.is_empty() {
                        let acked: usize = self.unsaved.iter().map(|s| s.acked.len()).sum();
                        let why = self.last_error.as_deref().unwrap_or("unknown error");
                        let _ = reply.send(Err(format!(
                            "the acknowledgements of {acked} uploaded readings are not on disk yet ({why}); \
                             no upload until they are (free space on the queue's filesystem if it is full)"
                        )));
                        return false;
                    }
                }
                let peeked = self.queue.peek(after_id, limit);
                self.caught_up = peeked.as_ref().is_ok_and(|rows| rows.len() < limit);
                if let Err(e) = &peeked {
                    self.note_failure(e);
                }
                let _ = reply.send(peeked.map_err(|e| e.to_string()));
                false
            }
            Command::Stats(reply) => {
                let stats = self.queue.stats().map(|mut stats| {
                    for (key, value) in &self.status {
                        stats.set_status(key, value);
                    }
                    stats
                });
                let _ = reply.send(stats.map_err(|e| e.to_string()));
                false
            }
        }
    }

    fn flush(&mut self) {
        let data =
            !self.readings.is_empty() || !self.settlements.is_empty() || !self.unsaved.is_empty();
        // Dating held readings is a write of its own: with sampling slow and every reading
        // held (nothing to upload, so no acks), no other write may come for hours.
        if !data && !self.status_due() && !self.redate_due() {
            return;
        }
        match self.write_all() {
            Ok(Written {
                inserted,
                dropped,
                dead_evicted,
                status_saved,
            }) => {
                self.health.failures.succeeded();
                self.last_error = None;
                self.unsaved.clear();
                self.drops.add(dropped + self.dropped_in_memory);
                self.evictions.add(dead_evicted);
                if let Some(since) = self.failing_since.take() {
                    tracing::info!(
                        after = %humantime::format_duration(Duration::from_secs(since.elapsed().as_secs())),
                        "queue writes work again"
                    );
                }
                self.readings.clear();
                if status_saved {
                    self.status_unsaved = false;
                    self.status_saved_at = Instant::now();
                }
                self.dropped_in_memory = 0;
                for (_, reply) in self.settlements.drain(..) {
                    let _ = reply.send(Ok(()));
                }
                if inserted > 0 {
                    self.notify.notify_one();
                }
                self.log_drops();
            }
            Err(e) => {
                self.last_error = Some(e.to_string());
                self.queue.rollback();
                if e.is_disk_full() {
                    // The WAL may hold most of a small filesystem; give it back before retrying.
                    if let Err(c) = self.queue.checkpoint_truncate() {
                        tracing::debug!("checkpoint after a full disk failed: {c}");
                    }
                }
                self.failing_since.get_or_insert_with(Instant::now);
                let now = Instant::now();
                if self
                    .last_failure_log
                    .is_none_or(|t| now.duration_since(t) >= FAILURE_LOG_EVERY)
                {
                    let hint = if e.is_disk_full() {
                        " (disk full: free space on the queue's filesystem; readings wait in memory meanwhile)"
                    } else {
                        ""
                    };
                    tracing::error!(
                        buffered = self.readings.len(),
                        "cannot write to the queue: {e}{hint}; retrying"
                    );
                    self.last_failure_log = Some(now);
                }
                // The uploader must not wait forever on a settlement: it is told, stops
                // sending and backs off; the settlement is kept and retried with every
                // write, and no new drain starts before it is on disk (see `Peek`).
                for (settlement, reply) in self.settlements.drain(..) {
                    let _ = reply.send(Err(e.to_string()));
                    self.unsaved.push(settlement);
                }
                self.note_failure(&e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QueueConfig;

    fn captured(ms: i64) -> Captured {
        let mut reading = Reading::new(crate::reading::from_unix_ms(ms));
        reading.fields.insert("temperature".into(), 21.0);
        Captured {
            reading,
            monotonic_ms: ms,
            clock_synced: true,
        }
    }

    type Started = (tempfile::TempDir, QueueConfig, StoreHandle, JoinHandle<()>);

    /// A fresh queue in a temporary directory, served by its thread.
    fn started(commit_interval: Duration) -> Result<Started, String> {
        started_with(commit_interval, Clock::system())
    }

    fn started_with(commit_interval: Duration, clock: Clock) -> Result<Started, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = QueueConfig {
            path: dir.path().join("q.db"),
            ..QueueConfig::default()
        };
        let queue = Queue::open(&config).map_err(|e| e.to_string())?;
        let (store, thread) =
            spawn(queue, commit_interval, "boot".into(), clock).map_err(|e| e.to_string())?;
        Ok((dir, config, store, thread))
    }

    /// Drops the last handle and waits for the thread's last commit.
    fn stopped(store: StoreHandle, thread: JoinHandle<()>) -> Result<(), String> {
        drop(store);
        thread
            .join()
            .map_err(|_| "queue thread panicked".to_string())
    }

    /// Like `started`, committing every 20 ms, whose writes give up waiting for another
    /// writer's lock after 100 ms: a test's blocker makes every commit fail quickly.
    fn started_contended() -> Result<Started, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = QueueConfig {
            path: dir.path().join("q.db"),
            ..QueueConfig::default()
        };
        let queue = Queue::open(&config).map_err(|e| e.to_string())?;
        queue
            .set_busy_timeout(Duration::from_millis(100))
            .map_err(|e| e.to_string())?;
        let (store, thread) = spawn(
            queue,
            Duration::from_millis(20),
            "boot".into(),
            Clock::system(),
        )
        .map_err(|e| e.to_string())?;
        Ok((dir, config, store, thread))
    }

    #[tokio::test]
    async fn readings_are_committed_in_groups_and_settled() -> Result<(), String> {
        let (_dir, config, store, thread) = started(Duration::from_millis(20))?;
        for ms in 0..100 {
            store.enqueue(captured(ms)).map_err(|e| e.to_string())?;
        }
        store.new_readings.notified().await;
        let batch = store.peek(0, 1000).await?;
        assert_eq!(batch.len(), 100);
        store
            .settle(Settlement {
                acked: batch[..90].iter().map(|s| s.id).collect(),
                dead: vec![(batch[95].id, 400, "bad".into())],
            })
            .await?;
        let stats = store.stats().await?;
        assert_eq!(
            (stats.pending, stats.dead, stats.uploaded_total),
            (9, 1, 90)
        );
        store.set_status(crate::queue::status_key::LAST_ERROR, "x".into());
        stopped(store, thread)?;
        let q = Queue::open_read_only(&config.path).map_err(|e| e.to_string())?;
        assert_eq!(
            q.stats().map_err(|e| e.to_string())?.last_error.as_deref(),
            Some("x")
        );
        Ok(())
    }

    /// Frames in the WAL: `(len - header) / (page + frame header)`, the page size as the
    /// WAL header says (bytes 8..12, big-endian).
    fn wal_frames(config: &QueueConfig) -> u64 {
        let bytes = std::fs::read(crate::queue::beside(&config.path, "-wal")).unwrap_or_default();
        let page = match bytes.get(8..12) {
            Some(&[a, b, c, d]) => u64::from(u32::from_be_bytes([a, b, c, d])),
            _ => return 0,
        };
        (bytes.len() as u64).saturating_sub(32) / (page + 24)
    }

    #[tokio::test]
    async fn synced_readings_are_stored_without_the_boot_origin_unsynced_ones_with_it(
    ) -> Result<(), String> {
        let (_dir, config, store, thread) = started(Duration::from_millis(20))?;
        store.enqueue(captured(1)).map_err(|e| e.to_string())?;
        store.new_readings.notified().await;
        let mut unsynced = captured(2);
        unsynced.clock_synced = false;
        store.enqueue(unsynced).map_err(|e| e.to_string())?;
        store.new_readings.notified().await;
        stopped(store, thread)?;
        let conn = rusqlite::Connection::open(&config.path).map_err(|e| e.to_string())?;
        let origins: Vec<(Option<String>, Option<i64>)> = conn
            .prepare("SELECT boot_id, monotonic_ms FROM readings ORDER BY id")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()
            })
            .map_err(|e| e.to_string())?;
        assert_eq!(
            origins,
            vec![(None, None), (Some("boot".to_owned()), Some(2))],
            "only the reading that may need re-dating carries its boot and boottime"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_caught_up_uploaders_acks_commit_with_the_next_reading() -> Result<(), String> {
        let (_dir, config, store, thread) = started(Duration::from_millis(20))?;
        store.enqueue(captured(0)).map_err(|e| e.to_string())?;
        store.new_readings.notified().await;
        let mut frames = Vec::new();
        for ms in 1..=2 {
            // The uploader reads to the end of the queue: it has caught up.
            let batch = store.peek(0, 64).await?;
            assert_eq!(batch.len(), 1);
            let before = wal_frames(&config);
            let settled = store.settle(Settlement {
                acked: vec![batch[0].id],
                dead: vec![],
            });
            store.enqueue(captured(ms)).map_err(|e| e.to_string())?;
            settled.await?;
            frames.push(wal_frames(&config) - before);
        }
        // The second time (the first creates the counter's row and its index entry): one
        // commit, the table's page (one reading in, one out) and the uploaded count.
        // Committed on their own, the acks would have taken two frames and the reading one.
        assert_eq!(frames[1], 2, "{frames:?}");
        let stats = store.stats().await?;
        assert_eq!((stats.pending, stats.uploaded_total), (1, 2));
        stopped(store, thread)?;
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_ack_commit_blocks_new_drains_until_it_is_on_disk() -> Result<(), String> {
        let (_dir, config, store, thread) = started_contended()?;
        for ms in 0..10 {
            store.enqueue(captured(ms)).map_err(|e| e.to_string())?;
        }
        store.new_readings.notified().await;
        let batch = store.peek(0, 100).await?;
        assert_eq!(batch.len(), 10);
        // Another writer holds the write lock: commits fail, as on a full disk.
        let blocker = rusqlite::Connection::open(&config.path).map_err(|e| e.to_string())?;
        blocker
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| e.to_string())?;
        let acked: Vec<i64> = batch[..5].iter().map(|s| s.id).collect();
        let settled = store
            .settle(Settlement {
                acked,
                dead: vec![],
            })
            .await;
        assert!(settled.is_err(), "the failed commit is reported");
        // A new drain would send the five acked readings again: refused while the acks
        // are not on disk.
        let again = store.peek(0, 100).await;
        assert!(
            again.as_ref().is_err_and(|e| e.contains("not on disk")),
            "{again:?}"
        );
        blocker
            .execute_batch("ROLLBACK")
            .map_err(|e| e.to_string())?;
        let rest = store.peek(0, 100).await?;
        assert_eq!(rest.len(), 5, "the kept acks were committed first");
        assert_eq!(store.stats().await?.uploaded_total, 5);
        stopped(store, thread)?;
        Ok(())
    }

    #[tokio::test]
    async fn the_heartbeat_stops_while_commits_fail_and_beats_again_once_they_work(
    ) -> Result<(), String> {
        let (_dir, config, store, thread) = started_contended()?;
        let silence = || store.heartbeat.since_last_beat(tokio::time::Instant::now());
        let poll = |want: &'static str, ok: &dyn Fn() -> bool| {
            let t0 = Instant::now();
            while !ok() {
                assert!(t0.elapsed() < Duration::from_secs(20), "never {want}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        poll("beats while idle", &|| {
            silence() < Duration::from_millis(1500)
        });
        // Another writer holds the lock: every commit fails (not a full disk).
        let blocker = rusqlite::Connection::open(&config.path).map_err(|e| e.to_string())?;
        blocker
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| e.to_string())?;
        store.enqueue(captured(1)).map_err(|e| e.to_string())?;
        poll("silent while commits fail", &|| {
            store.enqueue(captured(2)).is_ok() && silence() > Duration::from_secs(3)
        });
        blocker
            .execute_batch("ROLLBACK")
            .map_err(|e| e.to_string())?;
        poll("beats again", &|| silence() < Duration::from_millis(1500));
        let pending = store.stats().await?.pending;
        assert!(pending >= 2, "kept in memory, then written: {pending}");
        stopped(store, thread)?;
        Ok(())
    }

    #[tokio::test]
    async fn held_readings_are_dated_once_the_server_vouches_though_nothing_else_is_written(
    ) -> Result<(), String> {
        // A Pi booted offline: the kernel says unsynchronised, the server has not spoken.
        let clock = Clock::unsynchronised();
        let (_dir, _config, store, thread) =
            started_with(Duration::from_millis(20), clock.clone())?;
        // Taken 5 s ago (boot time), stamped by a clock two hours early.
        let taken_boot_ms = crate::clock::boottime_ms() - 5_000;
        let mut held = captured(clock.now_ms() - 7_200_000);
        held.monotonic_ms = taken_boot_ms;
        held.clock_synced = false;
        store.enqueue(held).map_err(|e| e.to_string())?;
        store.new_readings.notified().await;
        assert_eq!(store.stats().await?.pending, 1, "committed");
        assert!(store.peek(0, 10).await?.is_empty(), "held, not uploadable");

        // The login's token: the server's clock agrees with ours. No reading, ack or
        // status follows (sampling every hour, nothing uploadable): the dating is a write
        // of its own.
        let now_ms = clock.now_ms();
        clock
            .trust()
            .note_server_clock(now_ms / 1000, now_ms - 10, now_ms);
        // Nothing is asked of the queue meanwhile: the uploader waits for this notice.
        tokio::time::timeout(Duration::from_secs(20), store.new_readings.notified())
            .await
            .map_err(|_| "the held reading was never dated after the server vouched".to_string())?;
        let batch = store.peek(0, 10).await?;
        let dated = batch
            .first()
            .ok_or("dated, yet still held")?
            .reading
            .captured_at_ms;
        let expected = clock.now_ms() - (crate::clock::boottime_ms() - taken_boot_ms);
        assert!(
            (dated - expected).abs() < 60_000,
            "dated {dated} ms, expected about {expected} ms (from its boot time)"
        );
        stopped(store, thread)?;
        Ok(())
    }

    #[test]
    fn drops_are_summed_and_logged_at_most_once_a_minute() {
        let mut log = DropLog::default();
        let t0 = Instant::now();
        assert_eq!(log.due(t0), None, "nothing dropped, nothing to say");
        log.add(3);
        assert_eq!(log.due(t0), Some(3), "the first loss is told at once");
        for s in 1..60 {
            log.add(2);
            assert_eq!(log.due(t0 + Duration::from_secs(s)), None);
        }
        log.add(1);
        assert_eq!(log.due(t0 + Duration::from_secs(60)), Some(119));
        assert_eq!(log.due(t0 + Duration::from_secs(200)), None);
    }

    #[tokio::test]
    async fn an_unpaced_burst_is_committed_in_groups_and_nothing_dropped() -> Result<(), String> {
        let (_dir, config, store, thread) = started(Duration::from_secs(5))?;
        for ms in 0..30_000 {
            store.enqueue(captured(ms)).map_err(|e| e.to_string())?;
        }
        // Groups are committed while the channel is still busy, well before the 5 s window.
        let started = Instant::now();
        loop {
            let stats = store.stats().await?;
            if stats.pending >= 28_000 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "only {} committed",
                stats.pending
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stopped(store, thread)?;
        let q = Queue::open_read_only(&config.path).map_err(|e| e.to_string())?;
        let stats = q.stats().map_err(|e| e.to_string())?;
        assert_eq!((stats.pending, stats.dropped_total), (30_000, 0));
        Ok(())
    }
}
