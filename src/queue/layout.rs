//! Field layouts: a reading's field names are stored once per set of names (`layouts`),
//! and each row keeps only its values, in the layout's order, and the layout's id.
//!
//! A sensor set sends the same names on every reading, and they were most of a row:
//! `{"accelerometre":29.52,"humidite":77.68,"temperature":21.63}` is 60 bytes,
//! `[29.52,77.68,21.63]` 19. At 1 kHz the rows are what reaches the card (once in the WAL,
//! once when checkpointed), so this is a third less written per reading there. Values
//! stay JSON numbers as serde_json writes them: they read back bit for bit.
//!
//! A row without a layout (`layout IS NULL`) holds a JSON object, as schema versions 1
//! and 2 wrote and as `retry-dead` puts dead letters back: both forms are read.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension};

use super::{Queue, QueueError};
use crate::reading::Reading;

/// A reading's fields as a row stores them: the names (a JSON array, the layout's key)
/// and the values in that order (a JSON array). Non-finite values are left out, as
/// `Reading::stored_fields_json` does: they have no JSON form.
pub(super) fn pack(r: &Reading) -> Result<(String, String), serde_json::Error> {
    let (names, values): (Vec<&str>, Vec<f64>) = r
        .fields
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(k, v)| (k.as_str(), *v))
        .unzip();
    Ok((
        serde_json::to_string(&names)?,
        serde_json::to_string(&values)?,
    ))
}

/// A row's fields back: `stored` is a JSON object when `names` is `None`, else the values
/// of the layout `names`.
pub(super) fn unpack(stored: &str, names: Option<&str>) -> Result<BTreeMap<String, f64>, String> {
    let Some(names) = names else {
        return serde_json::from_str(stored).map_err(|e| format!("fields {stored}: {e}"));
    };
    let names: Vec<String> =
        serde_json::from_str(names).map_err(|e| format!("layout {names}: {e}"))?;
    let values: Vec<f64> =
        serde_json::from_str(stored).map_err(|e| format!("fields {stored}: {e}"))?;
    if names.len() != values.len() {
        return Err(format!(
            "fields {stored}: {} values for the {} names of its layout",
            values.len(),
            names.len()
        ));
    }
    Ok(names.into_iter().zip(values).collect())
}

/// A row's fields as a JSON object (what dead letters keep); the stored text as it is when
/// it cannot be read, so that the dead letter still shows it.
pub(super) fn as_object_json(stored: &str, names: Option<&str>) -> String {
    match unpack(stored, names) {
        Ok(fields) => serde_json::to_string(&fields).unwrap_or_else(|_| stored.to_owned()),
        Err(_) => stored.to_owned(),
    }
}

/// The id of the layout of `names` (a JSON array), added if new. Looked up in the caller's
/// transaction every time, never cached: a cached id of a layout whose insert was rolled
/// back (a full disk) would leave rows pointing at nothing.
pub(super) fn layout_id(conn: &Connection, names: &str) -> Result<i64, QueueError> {
    let mut find = conn.prepare_cached("SELECT id FROM layouts WHERE names = ?1")?;
    if let Some(id) = find.query_row([names], |r| r.get(0)).optional()? {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO layouts (names) VALUES (?1)")?
        .execute([names])?;
    Ok(conn.last_insert_rowid())
}

impl Queue {
    /// The fields of the pending reading `id` as a JSON object, if it is there.
    pub(super) fn fields_object_json(
        &self,
        conn: &Connection,
        id: i64,
    ) -> Result<Option<String>, QueueError> {
        let sql = if self.packed {
            "SELECT r.fields, l.names FROM readings r LEFT JOIN layouts l ON l.id = r.layout
             WHERE r.id = ?1"
        } else {
            "SELECT fields, NULL FROM readings WHERE id = ?1"
        };
        let row: Option<(rusqlite::types::Value, Option<String>)> = conn
            .prepare_cached(sql)?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(row.map(|(stored, names)| match stored {
            rusqlite::types::Value::Text(t) => as_object_json(&t, names.as_deref()),
            other => super::dead::lenient_text(other),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::testing::*;

    #[test]
    fn packed_fields_read_back_bit_for_bit_and_objects_still_read() {
        let mut r = reading(1);
        r.fields.insert("humidite".into(), 0.1 + 0.2);
        r.fields.insert("accelerometre".into(), -1e-300);
        r.fields.insert("bad".into(), f64::NAN);
        let (names, values) = pack(&r).expect("pack");
        assert_eq!(names, r#"["accelerometre","humidite","temperature"]"#);
        let mut want = r.fields.clone();
        want.remove("bad");
        assert_eq!(unpack(&values, Some(&names)), Ok(want.clone()));
        let object = as_object_json(&values, Some(&names));
        assert_eq!(unpack(&object, None), Ok(want));
    }

    #[test]
    fn a_row_that_does_not_fit_its_layout_says_why() {
        let err = unpack("[1.0]", Some(r#"["a","b"]"#)).err();
        assert!(
            err.as_deref().is_some_and(|e| e.contains("1 values")),
            "{err:?}"
        );
        assert!(unpack("[1.0]", Some("not json")).is_err());
        assert_eq!(as_object_json("[1.0", Some(r#"["a"]"#)), "[1.0");
    }

    #[test]
    fn a_dead_letter_keeps_the_fields_by_name_and_comes_back_readable() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let q = open(dir.path(), 100, crate::config::OverflowPolicy::DropOldest);
        q.enqueue(&[reading(1), reading(2)])?;
        let id = q.peek(0, 1)?[0].id;
        assert!(q.dead_letter(id, 400, "no")?);
        let dead = q.dead_letters(10)?;
        assert_eq!(dead[0].fields, serde_json::json!({"temperature": 0.1}));
        assert_eq!(q.retry_dead(None)?, 1);
        let back: Vec<_> = q.peek(0, 10)?.into_iter().map(|s| s.reading).collect();
        assert_eq!(back, vec![reading(2), reading(1)]);
        Ok(())
    }

    #[test]
    fn a_layout_is_stored_once() -> Result<(), QueueError> {
        let dir = tempdir()?;
        let q = open(dir.path(), 100, crate::config::OverflowPolicy::DropOldest);
        q.enqueue(&[reading(1), reading(2)])?;
        q.enqueue(&[reading(3)])?;
        let (layouts, bytes): (i64, i64) = q.conn.query_row(
            "SELECT (SELECT count(*) FROM layouts), (SELECT max(length(fields)) FROM readings)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        assert_eq!(layouts, 1);
        assert!(bytes <= 8, "a row keeps only its values: {bytes} bytes");
        assert_eq!(kept(&q)?, vec![1, 2, 3]);
        Ok(())
    }
}
