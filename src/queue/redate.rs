//! Re-dating: readings captured before the wall clock was synchronised carry their boot
//! id and CLOCK_BOOTTIME, and are held (this boot) or flagged or held (earlier boots)
//! until their capture time can be rewritten from a trusted clock.

use rusqlite::{params, OptionalExtension};

use super::{Queue, QueueError};

impl Queue {
    /// Holds back this boot's readings captured before the clock was synchronised: they
    /// are sent once `fix_unsynced` has corrected their timestamps.
    pub fn set_current_boot(&mut self, boot_id: &str) {
        self.current_boot = Some(boot_id.to_owned());
    }

    /// Rewrites the capture time of this boot's unsynchronised readings from their
    /// CLOCK_BOOTTIME, now that the wall clock is right:
    /// wall(now) - (boottime(now) - boottime(capture)).
    pub fn fix_unsynced(
        &self,
        boot_id: &str,
        now_wall_ms: i64,
        now_boot_ms: i64,
    ) -> Result<u64, QueueError> {
        Ok(self.conn.execute(
            "UPDATE readings SET captured_at_ms = ?2 - (?3 - monotonic_ms), clock_synced = 1
             WHERE clock_synced = 0 AND boot_id = ?1 AND monotonic_ms IS NOT NULL",
            params![boot_id, now_wall_ms, now_boot_ms],
        )? as u64)
    }

    /// Whether readings wait for a timestamp correction.
    pub fn has_unsynced(&self) -> Result<bool, QueueError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM readings WHERE clock_synced = 0 LIMIT 1",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Corrects the unsynchronised readings of earlier boots from a reading of the same
    /// boot taken once the clock was synchronised: within one boot, wall - boottime is
    /// the same for every capture, so one synced reading dates all the others. Cheap to
    /// run at start: one scan, then one per earlier boot that has such readings.
    pub fn fix_earlier_boots(&self) -> Result<u64, QueueError> {
        let boots: Vec<String> = self
            .conn
            .prepare(
                "SELECT DISTINCT boot_id FROM readings
                 WHERE clock_synced = 0 AND boot_id IS NOT NULL AND boot_id IS NOT ?1",
            )?
            .query_map([&self.current_boot], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut fixed = 0;
        for boot in boots {
            let offset: Option<i64> = self
                .conn
                .query_row(
                    "SELECT captured_at_ms - monotonic_ms FROM readings
                     WHERE boot_id = ?1 AND clock_synced = 1 AND monotonic_ms IS NOT NULL
                     ORDER BY id LIMIT 1",
                    [&boot],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(offset) = offset {
                fixed += self.conn.execute(
                    "UPDATE readings SET captured_at_ms = monotonic_ms + ?2, clock_synced = 1
                     WHERE boot_id = ?1 AND clock_synced = 0 AND monotonic_ms IS NOT NULL",
                    params![boot, offset],
                )? as u64;
            }
        }
        Ok(fixed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OverflowPolicy, UnfixableTime};
    use crate::queue::testing::*;
    use crate::queue::CaptureClock;

    #[test]
    fn unsynced_readings_are_held_then_corrected_from_boottime() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let mut q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        q.set_current_boot("boot-b");
        let clocks = [
            CaptureClock {
                monotonic_ms: 1_000,
                synced: false,
            },
            CaptureClock {
                monotonic_ms: 2_000,
                synced: false,
            },
        ];
        // A reading of an earlier boot can no longer be corrected: it goes out flagged.
        q.enqueue_with_origin(
            &[reading(1_800_000_000_005)],
            Some(("boot-a", &clocks[..1])),
        )?;
        q.enqueue_with_origin(&[reading(10), reading(11)], Some(("boot-b", &clocks)))?;
        let visible = q.peek(0, 10)?;
        assert_eq!(visible.len(), 1);
        assert!(visible[0].clock_unsynced);
        assert!(q.has_unsynced()?);
        // Clock synchronised at wall 1_800_000_000_000 ms when boottime is 61_000 ms.
        assert_eq!(q.fix_unsynced("boot-b", 1_800_000_000_000, 61_000)?, 2);
        let all = q.peek(0, 10)?;
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].reading.captured_at_ms, 1_800_000_000_000 - 60_000);
        assert_eq!(all[2].reading.captured_at_ms, 1_800_000_000_000 - 59_000);
        assert!(!all[1].clock_unsynced);

        let mut cfg = config(dir.path(), 100, OverflowPolicy::DropOldest);
        cfg.path = dir.path().join("hold.db");
        cfg.unfixable_time = UnfixableTime::Hold;
        let mut held = Queue::open(&cfg)?;
        held.set_current_boot("boot-b");
        held.enqueue_with_origin(&[reading(5)], Some(("boot-a", &clocks[..1])))?;
        assert!(held.peek(0, 10)?.is_empty(), "hold keeps it back");
        Ok(())
    }

    #[test]
    fn earlier_boot_is_fixed_from_its_synced_readings_and_1970_is_never_sent(
    ) -> Result<(), QueueError> {
        let dir = tempdir()?;
        let mut q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        q.set_current_boot("boot-c");
        let unsynced = |ms| CaptureClock {
            monotonic_ms: ms,
            synced: false,
        };
        // Boot a: two readings at 1970 before the clock synced, then one after, at
        // boottime 70 s when the wall clock read 1_800_000_000_000.
        q.enqueue_with_origin(
            &[reading(10_000), reading(20_000), reading(1_800_000_000_000)],
            Some((
                "boot-a",
                &[
                    unsynced(10_000),
                    unsynced(20_000),
                    CaptureClock {
                        monotonic_ms: 70_000,
                        synced: true,
                    },
                ],
            )),
        )?;
        // Boot b never synced: nothing to date it from, and 1970 is below the floor.
        q.enqueue_with_origin(&[reading(30_000)], Some(("boot-b", &[unsynced(30_000)])))?;
        assert_eq!(q.fix_earlier_boots()?, 2);
        let sent = q.peek(0, 10)?;
        let times: Vec<i64> = sent.iter().map(|s| s.reading.captured_at_ms).collect();
        assert_eq!(
            times,
            vec![1_799_999_940_000, 1_799_999_950_000, 1_800_000_000_000],
            "boot b's 1970 reading is held even in flag mode"
        );
        assert!(sent.iter().all(|s| !s.clock_unsynced));
        assert_eq!(q.pending()?, 4, "held, not dropped");
        Ok(())
    }
}
