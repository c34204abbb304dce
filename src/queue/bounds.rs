//! The queue's bounds: `max_readings` and `max_bytes` with the overflow policy, and the
//! byte accounting behind `max_bytes` (an estimate of the pending readings kept in
//! memory, so that no write needs a scan and no write touches a page of its own for it).
//! Pending readings come before dead letters: the dead letters only get the room the
//! readings leave.

use std::ops::Range;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::{count_pending, Queue, QueueError};
use crate::config::OverflowPolicy;
use crate::reading::Reading;

/// What a reading row costs beyond its `fields` and `boot_id` text: rowid, capture time,
/// boottime, flags, record header and cell pointer. An estimate, on the safe side.
const ROW_OVERHEAD: i64 = 32;
/// The same for a dead letter, beyond its `fields` and `response`.
const DEAD_ROW_OVERHEAD: i64 = 48;

/// The estimated bytes of the pending readings, as this connection knows them: counted at
/// the first need (a scan), then kept up by this connection's own inserts and deletes.
/// Other processes (`queue retry-dead`, `purge`) change the file unseen, so the count is
/// scanned again before it makes the queue drop anything, at most once a minute.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PendingBytes {
    bytes: Option<u64>,
    scanned_at: Option<Instant>,
}

/// A count over the bound is checked by a scan at most this often.
const RESCAN_EVERY: Duration = Duration::from_secs(60);

/// The estimated size of a reading row (see `ROW_OVERHEAD`).
pub(super) fn row_size(fields: &str, boot_id: Option<&str>) -> u64 {
    (fields.len() + boot_id.map_or(0, str::len)) as u64 + ROW_OVERHEAD as u64
}

impl Queue {
    /// Readings of `n` bytes were stored.
    pub(super) fn bytes_added(&self, n: u64) {
        let mut p = self.pending_bytes.get();
        p.bytes = p.bytes.map(|b| b + n);
        self.pending_bytes.set(p);
    }

    /// Readings of `n` bytes left `readings`.
    pub(super) fn bytes_removed(&self, n: u64) {
        let mut p = self.pending_bytes.get();
        p.bytes = p.bytes.map(|b| b.saturating_sub(n));
        self.pending_bytes.set(p);
    }

    /// Another change of unknown size: the next need scans.
    pub(super) fn bytes_unknown(&self) {
        self.pending_bytes.set(PendingBytes::default());
    }

    /// The pending readings' estimated bytes; scanned when unknown, or when over `bound`
    /// and the last scan is a minute old.
    fn pending_bytes(&self, conn: &Connection, bound: u64) -> Result<u64, QueueError> {
        let p = self.pending_bytes.get();
        let stale = p.scanned_at.is_none_or(|t| t.elapsed() >= RESCAN_EVERY);
        match p.bytes {
            Some(b) if b <= bound || !stale => Ok(b),
            _ => {
                let b: i64 = conn.query_row(
                    &format!(
                        "SELECT coalesce(sum({}), 0) FROM readings",
                        reading_size_sql()
                    ),
                    [],
                    |r| r.get(0),
                )?;
                let b = b.max(0) as u64;
                self.pending_bytes.set(PendingBytes {
                    bytes: Some(b),
                    scanned_at: Some(Instant::now()),
                });
                Ok(b)
            }
        }
    }

    /// Makes room for `readings` within `max_readings` as the overflow policy says: deletes
    /// the oldest pending readings, or keeps only the part of the batch that fits. Returns
    /// the indices of the readings to insert (so that what travels beside them, their
    /// capture clocks, is cut the same way) and how many readings were dropped.
    pub(super) fn make_room(
        &self,
        conn: &Connection,
        readings: &[Reading],
    ) -> Result<(Range<usize>, u64), QueueError> {
        let incoming = readings.len() as u64;
        // An exact count scans the table; the id span bounds it from above in O(1),
        // so the scan only happens when the queue may actually be near its bound.
        let pending = match id_span(conn)? {
            span if span.saturating_add(incoming) <= self.max_readings => span,
            _ => count_pending(conn)?,
        };
        let room = self.max_readings.saturating_sub(pending);
        Ok(match self.overflow {
            OverflowPolicy::DropOldest => {
                let excess = (pending + incoming).saturating_sub(self.max_readings);
                let from_old = excess.min(pending);
                let freed = delete_oldest(conn, from_old)?;
                self.bytes_removed(freed);
                // A single batch larger than the bound keeps only its newest part.
                let skip = (excess - from_old) as usize;
                (skip..readings.len(), excess)
            }
            OverflowPolicy::DropNewest => {
                let keep = room.min(incoming) as usize;
                (0..keep, incoming - keep as u64)
            }
        })
    }

    /// Keeps the queue within `max_bytes`; returns (readings dropped, dead letters evicted).
    ///
    /// The pending readings are measured on their own (the `pending_bytes` estimate), so
    /// dead letters can never make the queue drop every new reading. Dead letters are
    /// bounded by what room is left: while the file's live pages exceed `max_bytes`, the
    /// oldest dead letters go first (counted in `dead_evicted_total`). Pending readings
    /// are the data the gateway exists to deliver; a dead letter was already refused.
    pub(super) fn enforce_max_bytes(&self, conn: &Connection) -> Result<(u64, u64), QueueError> {
        let used = self.pending_bytes(conn, self.max_bytes)?;
        let dropped = if used > self.max_bytes {
            let newest = self.overflow == OverflowPolicy::DropNewest;
            let (n, freed) = delete_covering(
                conn,
                "readings",
                &reading_size_sql(),
                used - self.max_bytes,
                newest,
            )?;
            self.bytes_removed(freed);
            n
        } else {
            0
        };
        let live = live_bytes(conn)?;
        let evicted = if live > self.max_bytes {
            delete_covering(
                conn,
                "dead_letters",
                &format!("length(fields) + length(response) + {DEAD_ROW_OVERHEAD}"),
                live - self.max_bytes,
                false,
            )?
            .0
        } else {
            0
        };
        Ok((dropped, evicted))
    }
}

/// SQL for the estimated size of a `readings` row (see `ROW_OVERHEAD`).
pub(super) fn reading_size_sql() -> String {
    format!("length(fields) + coalesce(length(boot_id), 0) + {ROW_OVERHEAD}")
}

/// Deletes the oldest (or newest) rows of `table` whose `size` adds up to `bytes` at
/// least; returns how many and their size. Reads only the rows it deletes, and one more.
fn delete_covering(
    conn: &Connection,
    table: &str,
    size: &str,
    bytes: u64,
    newest: bool,
) -> Result<(u64, u64), QueueError> {
    let order = if newest { "DESC" } else { "ASC" };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, {size} FROM {table} ORDER BY id {order}"
    ))?;
    let mut rows = stmt.query([])?;
    let (mut covered, mut last) = (0u64, None);
    while let Some(row) = rows.next()? {
        last = Some(row.get::<_, i64>(0)?);
        covered += row.get::<_, Option<i64>>(1)?.unwrap_or(0).max(1) as u64;
        if covered >= bytes {
            break;
        }
    }
    drop(rows);
    let Some(last) = last else { return Ok((0, 0)) };
    let cmp = if newest { ">=" } else { "<=" };
    let n = conn.execute(&format!("DELETE FROM {table} WHERE id {cmp} ?1"), [last])? as u64;
    Ok((n, covered))
}

/// `max(id) - min(id) + 1`: at least the number of pending readings, read from the rowid index.
fn id_span(conn: &Connection) -> Result<u64, QueueError> {
    let (min, max): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(id), max(id) FROM readings", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    Ok(match (min, max) {
        (Some(min), Some(max)) => (max - min + 1) as u64,
        _ => 0,
    })
}

/// Deletes the `n` oldest pending readings; returns their estimated size.
fn delete_oldest(conn: &Connection, n: u64) -> Result<u64, QueueError> {
    if n == 0 {
        return Ok(0);
    }
    let mut stmt = conn.prepare_cached(&format!(
        "DELETE FROM readings WHERE id IN (SELECT id FROM readings ORDER BY id LIMIT ?1)
         RETURNING {}",
        reading_size_sql()
    ))?;
    let sizes = stmt.query_map([n as i64], |r| r.get::<_, i64>(0))?;
    let mut freed = 0;
    for size in sizes {
        freed += size?.max(0) as u64;
    }
    Ok(freed)
}

fn live_bytes(conn: &Connection) -> Result<u64, QueueError> {
    let pages: u64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: u64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(pages.saturating_sub(free) * size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::testing::*;
    use crate::queue::CaptureClock;

    #[test]
    fn drop_oldest_keeps_the_newest_and_counts() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let q = open(dir.path(), 3, OverflowPolicy::DropOldest);
        q.enqueue(&[reading(1), reading(2)])?;
        let r = q.enqueue(&[reading(3), reading(4), reading(5)])?;
        assert_eq!((r.inserted, r.dropped, r.dead_evicted), (3, 2, 0));
        assert_eq!(kept(&q)?, vec![3, 4, 5]);
        // One batch larger than the bound keeps only its newest part.
        let r = q.enqueue(&[reading(6), reading(7), reading(8), reading(9)])?;
        assert_eq!((r.inserted, r.dropped, r.dead_evicted), (3, 4, 0));
        assert_eq!(kept(&q)?, vec![7, 8, 9]);
        assert_eq!(q.stats()?.dropped_total, 6);
        Ok(())
    }

    #[test]
    fn an_oversized_batch_keeps_the_boot_times_of_the_readings_it_keeps() -> Result<(), QueueError>
    {
        let dir = tempdir()?;
        let q = open(dir.path(), 2, OverflowPolicy::DropOldest);
        let batch = [reading(1), reading(2), reading(3), reading(4)];
        let clocks: Vec<CaptureClock> = batch
            .iter()
            .map(|r| CaptureClock {
                monotonic_ms: r.captured_at_ms * 1000,
                synced: true,
            })
            .collect();
        q.enqueue_with_origin(&batch, Some(("boot", &clocks)))?;
        let stored: Vec<(i64, i64)> = q
            .conn
            .prepare("SELECT captured_at_ms, monotonic_ms FROM readings ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        assert_eq!(stored, vec![(3, 3000), (4, 4000)]);
        Ok(())
    }

    #[test]
    fn drop_newest_keeps_what_is_queued() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let q = open(dir.path(), 3, OverflowPolicy::DropNewest);
        let r = q.enqueue(&[reading(1), reading(2), reading(3), reading(4)])?;
        assert_eq!((r.inserted, r.dropped, r.dead_evicted), (3, 1, 0));
        assert_eq!(kept(&q)?, vec![1, 2, 3]);
        assert_eq!(q.stats()?.dropped_total, 1);
        Ok(())
    }

    #[test]
    fn max_bytes_bounds_the_live_pages() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let mut cfg = config(dir.path(), 1_000_000, OverflowPolicy::DropOldest);
        cfg.max_bytes = 64 * 1024;
        let q = Queue::open(&cfg)?;
        for chunk in 0..50 {
            let batch: Vec<Reading> = (0..100).map(|i| reading(chunk * 100 + i)).collect();
            q.enqueue(&batch)?;
        }
        let stats = q.stats()?;
        assert!(stats.dropped_total > 0);
        assert_eq!(stats.pending + stats.dropped_total, 5000);
        assert!(q.pending_bytes(&q.conn, u64::MAX)? <= 64 * 1024);
        // The estimate errs on the large side: the file's live pages stay near the bound.
        assert!(
            live_bytes(&q.conn)? <= 64 * 1024 * 5 / 4,
            "{}",
            live_bytes(&q.conn)?
        );
        // The running count is the sum of the rows.
        let scanned: i64 = q.conn.query_row(
            &format!("SELECT sum({}) FROM readings", reading_size_sql()),
            [],
            |r| r.get(0),
        )?;
        assert_eq!(q.pending_bytes(&q.conn, u64::MAX)?, scanned as u64);
        // The newest reading is always kept under drop_oldest.
        assert_eq!(
            stats.newest_captured_at.as_deref(),
            Some("1970-01-01T00:00:04.999Z")
        );
        Ok(())
    }

    #[test]
    fn dead_letters_past_max_bytes_do_not_drop_new_readings() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let mut cfg = config(dir.path(), 1_000_000, OverflowPolicy::DropOldest);
        cfg.max_bytes = 64 * 1024;
        let q = Queue::open(&cfg)?;
        let batch: Vec<Reading> = (0..40).map(reading).collect();
        q.enqueue(&batch)?;
        let answer = "x".repeat(4000);
        for s in q.peek(0, 100)? {
            q.dead_letter(s.id, 400, &answer)?;
        }
        assert!(
            live_bytes(&q.conn)? > 64 * 1024,
            "dead letters fill the file"
        );
        let r = q.enqueue(&[reading(100), reading(101)])?;
        assert_eq!((r.inserted, r.dropped), (2, 0), "{r:?}");
        assert!(r.dead_evicted > 0, "{r:?}");
        let stats = q.stats()?;
        assert_eq!(stats.pending, 2);
        assert_eq!(stats.dropped_total, 0);
        assert_eq!(stats.dead_evicted_total, r.dead_evicted);
        assert_eq!(stats.dead, 40 - r.dead_evicted);
        // The oldest dead letters went first.
        let first_left = q.dead_letters(1)?;
        assert_eq!(first_left[0].reading_id, 1 + r.dead_evicted as i64);
        Ok(())
    }
}
