//! The queue thread's own health: it beats its heartbeat only while the queue works, checks
//! now and then that its file is still the one it opened, and gives up on a queue broken
//! for good.

use std::time::Instant;

use tokio::sync::watch;

use super::{Writer, VERIFY_EVERY};
use crate::queue::health::{Failures, Fault, FileIdentity};
use crate::queue::{wal_index, QueueError};
use crate::watchdog::Heartbeat;

/// The queue thread's own health: its heartbeat, the verdict on its failures, and the
/// file it opened.
pub(super) struct Health {
    pub(super) heartbeat: Heartbeat,
    pub(super) failures: Failures,
    pub(super) file: Option<FileIdentity>,
    pub(super) last_verified: Instant,
    pub(super) broken: watch::Sender<Option<String>>,
    pub(super) gave_up: bool,
    /// Another SQLite's index was seen beside the queue (said once per appearance).
    pub(super) foreign_index: bool,
}

impl Writer {
    /// Beats the heartbeat while the queue works, and checks the file now and then.
    pub(super) fn check_health(&mut self) {
        if self.health.failures.feeds_watchdog() {
            self.health.heartbeat.beat();
        }
        let Some(file) = self.health.file else { return };
        if self.health.last_verified.elapsed() < VERIFY_EVERY {
            return;
        }
        self.health.last_verified = Instant::now();
        if let Err(e) = self.queue.verify_file(file) {
            self.note_failure(&e);
        }
        self.check_foreign_index();
    }

    /// A program with another SQLite has the queue open: say so while it is still only
    /// reading (nothing can stop it writing).
    fn check_foreign_index(&mut self) {
        let foreign = wal_index::foreign_index(self.queue.path());
        if let (Some(at), false) = (&foreign, self.health.foreign_index) {
            tracing::warn!(
                wal_index = %at.display(),
                "another program (the sqlite3 shell? Python?) has the queue open with its own SQLite: it does not share the daemon's index in /dev/shm, and if it writes to the queue while the daemon runs, the queue is corrupted; close it, and use `profilo-gateway queue stats|list|export` instead"
            );
        }
        self.health.foreign_index = foreign.is_some();
    }

    /// Counts a failure of the queue; gives up on a queue that is broken for good, so that
    /// the daemon exits and systemd starts it again on a repaired or fresh queue.
    pub(super) fn note_failure(&mut self, e: &QueueError) {
        if self.health.gave_up || !self.health.failures.failed(Fault::of(e), Instant::now()) {
            return;
        }
        tracing::error!(
            lost = self.readings.len(),
            "the queue cannot be used any more: {e}; the daemon stops so that it is started again (a corrupt queue is then moved aside)"
        );
        for (_, reply) in self.settlements.drain(..) {
            let _ = reply.send(Err(e.to_string()));
        }
        self.health.gave_up = true;
        let _ = self.health.broken.send(Some(e.to_string()));
    }
}
