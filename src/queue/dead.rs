//! Dead letters: readings the server refused for good, kept with its status and answer
//! until `queue retry-dead` or `queue purge`; and the quarantine of rows that cannot be
//! read back, so that one damaged row never blocks the readings behind it.

use std::time::SystemTime;

use rusqlite::params;
use serde::Serialize;

use super::{capture_time_text, Queue, QueueError};
use crate::reading::unix_ms;

/// A reading the server refused for good.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub reading_id: i64,
    pub captured_at: String,
    pub fields: serde_json::Value,
    pub status: u16,
    pub response: String,
    pub failed_at: String,
}

impl Queue {
    /// Moves an unreadable row out of the way of the others (see `peek`).
    pub(super) fn quarantine(&self, id: i64, detail: &str) {
        if !self.writable {
            tracing::warn!(
                reading_id = id,
                "stored reading is unreadable ({detail}); skipped"
            );
            return;
        }
        let reason = format!(
            "unreadable in the queue, never sent: {detail} (fix it and `queue retry-dead --id N`, or purge it)"
        );
        match self.dead_letter(id, 0, &reason) {
            Ok(_) => tracing::warn!(
                reading_id = id,
                "stored reading is unreadable ({detail}); moved to the dead letters with status 0"
            ),
            // Skipped this time; the next read tries again. Not fatal: the rows behind it
            // are still sent.
            Err(e) => tracing::error!(
                reading_id = id,
                "stored reading is unreadable ({detail}) and cannot be moved to the dead letters: {e}"
            ),
        }
    }

    /// The server refused this reading for good: keep it with the answer, out of the way.
    pub fn dead_letter(&self, id: i64, status: u16, response: &str) -> Result<bool, QueueError> {
        self.atomically(|conn| {
            // Dead letters keep the fields as a JSON object, whatever the row's layout.
            let fields = self.fields_object_json(conn, id)?;
            let moved = conn.execute(
                "INSERT INTO dead_letters (reading_id, captured_at_ms, fields, status, response, failed_at_ms)
                 SELECT id, captured_at_ms, ?5, ?2, ?3, ?4 FROM readings WHERE id = ?1",
                params![
                    id,
                    status,
                    truncate(response, 4096),
                    unix_ms(SystemTime::now()),
                    fields
                ],
            )?;
            if let Some(size) = self.delete_reading(conn, id)? {
                self.bytes_removed(size);
            }
            Ok(moved > 0)
        })
    }

    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, reading_id, captured_at_ms, fields, status, response, failed_at_ms
             FROM dead_letters ORDER BY id LIMIT ?1",
        )?;
        // Dead letters include rows quarantined because they were unreadable: every
        // column but the ids is read leniently, so that they can still be listed.
        let rows = stmt.query_map([limit as i64], |r| {
            let fields = lenient_text(r.get(3)?);
            Ok(DeadLetter {
                id: r.get(0)?,
                reading_id: r.get(1)?,
                captured_at: match r.get(2)? {
                    rusqlite::types::Value::Integer(ms) => capture_time_text(ms),
                    other => lenient_text(other),
                },
                fields: serde_json::from_str(&fields).unwrap_or(serde_json::Value::String(fields)),
                status: r.get(4)?,
                response: r.get(5)?,
                failed_at: capture_time_text(r.get(6)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Puts dead letters (one, or all) back into the pending queue; returns how many.
    pub fn retry_dead(&self, id: Option<i64>) -> Result<u64, QueueError> {
        self.atomically(|conn| {
            // `?1 IS NULL` selects every row when no id is given.
            let filter = if id.is_some() {
                "WHERE id = ?1"
            } else {
                "WHERE ?1 IS NULL"
            };
            let n = conn.execute(
                &format!(
                    "INSERT INTO readings (captured_at_ms, fields, clock_synced)
                     SELECT captured_at_ms, fields, 1 FROM dead_letters {filter} ORDER BY id"
                ),
                [id],
            )?;
            conn.execute(&format!("DELETE FROM dead_letters {filter}"), [id])?;
            self.bytes_unknown();
            Ok(n as u64)
        })
    }

    /// Deletes dead letters, and with `all` the pending readings too; returns how many.
    pub fn purge(&self, all: bool) -> Result<u64, QueueError> {
        self.atomically(|conn| {
            let mut n = conn.execute("DELETE FROM dead_letters", [])? as u64;
            if all {
                n += conn.execute("DELETE FROM readings", [])? as u64;
                self.bytes_unknown();
            }
            Ok(n)
        })
    }
}

/// Any stored value as text, for listing rows whose types are not what they should be.
pub(super) fn lenient_text(v: rusqlite::types::Value) -> String {
    use rusqlite::types::Value;
    match v {
        Value::Null => "null".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(t) => t,
        Value::Blob(b) => String::from_utf8_lossy(&b).into_owned(),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OverflowPolicy;
    use crate::queue::testing::*;

    #[test]
    fn dead_letters_keep_status_and_answer_and_can_be_retried() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        q.enqueue(&[reading(1), reading(2)])?;
        let first = q.peek(0, 1)?[0].id;
        assert!(q.dead_letter(first, 400, r#"{"temperature":["bad"]}"#)?);
        let dead = q.dead_letters(10)?;
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].status, 400);
        assert!(dead[0].response.contains("bad"));
        assert_eq!(q.stats()?.pending, 1);
        assert_eq!(q.retry_dead(Some(dead[0].id))?, 1);
        let stats = q.stats()?;
        assert_eq!((stats.pending, stats.dead), (2, 0));
        q.dead_letter(q.peek(0, 1)?[0].id, 422, "x")?;
        assert_eq!(q.purge(false)?, 1);
        assert_eq!(q.purge(true)?, 1);
        assert_eq!(q.stats()?.pending, 0);
        Ok(())
    }

    #[test]
    fn an_unreadable_row_is_quarantined_and_the_rest_is_read() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let q = open(dir.path(), 100, OverflowPolicy::DropOldest);
        q.enqueue(&[reading(1), reading(2), reading(3), reading(4)])?;
        q.conn.execute(
            r#"UPDATE readings SET fields = '{"temperature":null}' WHERE id = 2"#,
            [],
        )?;
        q.conn.execute(
            "UPDATE readings SET captured_at_ms = 'soon' WHERE id = 3",
            [],
        )?;
        // The read-only view (CLI) skips it without moving it.
        let ro = Queue::open_read_only(&dir.path().join("q.db"))?;
        let ids: Vec<i64> = ro.peek(0, 10)?.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![1, 4]);
        // A page of one row that is unreadable does not end the read.
        let ids: Vec<i64> = q.peek(1, 1)?.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![4]);
        let dead = q.dead_letters(10)?;
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0].status, 0);
        assert!(
            dead[0].response.contains("unreadable"),
            "{}",
            dead[0].response
        );
        assert_eq!(q.pending()?, 2);
        Ok(())
    }
}
