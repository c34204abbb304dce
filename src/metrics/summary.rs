//! The daemon's line a minute for a person at a terminal (and the journal): readings
//! taken, uploaded and pending since the last line, the upload rate and the time to an
//! empty queue. The figures come from the queue's stats, as `queue stats` shows them.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::rate::Progress;
use crate::queue::writer::StoreHandle;

/// How often the summary line is logged.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Logs [`Progress::summary_line`] every `every` until `cancel` fires.
pub async fn summary_loop(store: StoreHandle, every: Duration, cancel: CancellationToken) {
    let mut before = match store.stats().await {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut at = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Ok(now) = store.stats().await else {
            return;
        };
        let p = Progress::between(&before, &now, at.elapsed());
        tracing::info!(
            taken = p.taken,
            uploaded = p.uploaded,
            pending = p.pending,
            "{}",
            p.summary_line()
        );
        before = now;
        at = Instant::now();
    }
}
