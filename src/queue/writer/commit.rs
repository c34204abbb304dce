//! One write of the queue thread: everything waiting in memory (readings, acks, dead
//! letters, the status, corrected capture times) in one transaction, and the summed log
//! lines of what the bounds dropped.

use std::time::Instant;

use super::{Writer, FAILURE_LOG_EVERY};
use crate::queue::{CaptureClock, QueueError};
use crate::reading::Reading;

impl Writer {
    /// Logs the drops (and evictions) of the last minute, if due.
    pub(super) fn log_drops(&mut self) {
        let now = Instant::now();
        if let Some(dropped) = self.drops.due(now) {
            tracing::warn!(
                dropped,
                "queue full: dropped readings since the last report (see queue.max_readings, queue.max_bytes, queue.overflow)"
            );
        }
        if let Some(evicted) = self.evictions.due(now) {
            tracing::warn!(
                evicted,
                "queue over queue.max_bytes: deleted the oldest dead letters since the last report (see `queue dead`)"
            );
        }
    }

    /// Corrects this boot's unsynchronised timestamps once the wall clock can be trusted
    /// (`Clock::trusted`: past the build date, and synchronised or vouched for by the server).
    fn fix_timestamps(&mut self) -> Result<u64, QueueError> {
        if !self.maybe_unsynced {
            return Ok(0);
        }
        let now = self.clock.now_ms();
        if !self.clock.trusted(now) {
            return Ok(0);
        }
        let fixed = self
            .queue
            .fix_unsynced(&self.boot_id, now, crate::clock::boottime_ms())?;
        if fixed == 0 {
            self.maybe_unsynced = false;
        }
        Ok(fixed)
    }

    pub(super) fn write_all(&mut self) -> Result<Written, QueueError> {
        self.queue.begin()?;
        let mut inserted = 0;
        let (mut dropped, mut dead_evicted) = (0, 0);
        if !self.readings.is_empty() {
            let readings: Vec<Reading> = self.readings.iter().map(|c| c.reading.clone()).collect();
            let clocks: Vec<CaptureClock> = self
                .readings
                .iter()
                .map(|c| CaptureClock {
                    monotonic_ms: c.monotonic_ms,
                    synced: c.clock_synced,
                })
                .collect();
            self.maybe_unsynced |= clocks.iter().any(|c| !c.synced);
            // The boot id and boottime only serve to re-date readings captured before the
            // clock was synchronised, from their own boot's synced readings: stored while
            // this boot has such readings, left out otherwise (42 bytes less a row, the
            // most of what a reading at 1 kHz costs the card).
            let origin = self
                .maybe_unsynced
                .then_some((self.boot_id.as_str(), clocks.as_slice()));
            let result = self.queue.enqueue_with_origin(&readings, origin)?;
            inserted = result.inserted;
            // Logged once committed, at most once a minute (`log_drops`).
            dropped = result.dropped;
            dead_evicted = result.dead_evicted;
        }
        if self.dropped_in_memory > 0 {
            self.queue.add_dropped(self.dropped_in_memory)?;
        }
        let settlements = self
            .unsaved
            .iter()
            .chain(self.settlements.iter().map(|(s, _)| s));
        for settlement in settlements {
            self.queue.ack(&settlement.acked)?;
            for (id, status, body) in &settlement.dead {
                self.queue.dead_letter(*id, *status, body)?;
            }
        }
        let status_saved = self.status_due();
        if status_saved {
            for (key, value) in &self.status {
                self.queue.set_status(key, value)?;
            }
        }
        let corrected = self.fix_timestamps()?;
        self.queue.commit()?;
        if corrected > 0 {
            self.maybe_unsynced = false;
            tracing::info!(
                corrected,
                "wall clock is synchronised now: corrected the capture time of readings taken before"
            );
            inserted += corrected;
        }
        Ok(Written {
            inserted,
            dropped,
            dead_evicted,
            status_saved,
        })
    }
}

/// What one successful write did.
pub(super) struct Written {
    pub(super) inserted: u64,
    pub(super) dropped: u64,
    pub(super) dead_evicted: u64,
    /// The status went into the queue file.
    pub(super) status_saved: bool,
}

/// Sums losses between two log lines: at a high sampling rate a full queue drops at every
/// commit (20 a second), and one line each time would flood the journal and the SD card.
#[derive(Debug, Default)]
pub(super) struct DropLog {
    unlogged: u64,
    last: Option<Instant>,
}

impl DropLog {
    pub(super) fn add(&mut self, n: u64) {
        self.unlogged += n;
    }

    /// The total to log now, if there is one and the last line is a minute old.
    pub(super) fn due(&mut self, now: Instant) -> Option<u64> {
        if self.unlogged == 0
            || self
                .last
                .is_some_and(|t| now.duration_since(t) < FAILURE_LOG_EVERY)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}
