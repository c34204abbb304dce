//! A reading: the moment it was captured and the values measured then, and its wire JSON
//! (the body of `POST /api/send/data/`, see shared/API.md).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Payload field names of the Profilometre server.
pub mod field {
    pub const TEMPERATURE: &str = "temperature";
    pub const HUMIDITY: &str = "humidite";
    pub const ACCELERATION: &str = "accelerometre";
    pub const TIMESTAMP: &str = "timestamp";
    /// Set by the uploader on a reading whose capture time could not be corrected.
    pub const CLOCK_UNSYNCED: &str = "clock_unsynced";

    /// What a payload field name is reserved for, when a sensor may not send it: the
    /// gateway adds these fields itself, and a sensor's value would be overwritten.
    pub fn reserved(name: &str) -> Option<&'static str> {
        match name {
            TIMESTAMP => Some("the capture time"),
            CLOCK_UNSYNCED => Some("flagging readings whose capture time is uncertain"),
            _ => None,
        }
    }
}

/// One reading: capture time plus the payload fields measured at that tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Capture time, milliseconds since the Unix epoch (UTC).
    pub captured_at_ms: i64,
    /// Payload field name -> value, e.g. `"temperature" -> 23.4`.
    pub fields: BTreeMap<String, f64>,
}

impl Reading {
    pub fn new(captured_at: SystemTime) -> Self {
        Reading {
            captured_at_ms: unix_ms(captured_at),
            fields: BTreeMap::new(),
        }
    }

    /// The capture time as RFC 3339 UTC with millisecond precision.
    pub fn timestamp(&self) -> String {
        format_rfc3339_ms(self.captured_at_ms)
    }

    /// The JSON body the server expects: the fields plus `timestamp` (capture time).
    pub fn to_wire_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::with_capacity(self.fields.len() + 1);
        for (name, value) in &self.fields {
            map.insert(name.clone(), json_number(*value));
        }
        map.insert(field::TIMESTAMP.to_owned(), self.timestamp().into());
        serde_json::Value::Object(map)
    }
}

impl Reading {
    /// The fields as the queue stores them. Non-finite values are left out: serde_json
    /// would write them as `null`, which no later read of the queue could parse back into
    /// a number, so one NaN would block the queue. A value that is not a number was
    /// never measured.
    pub fn stored_fields_json(&self) -> Result<String, serde_json::Error> {
        let finite: BTreeMap<&str, f64> = self
            .fields
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        serde_json::to_string(&finite)
    }
}

/// Non-finite values have no JSON form; they become `null` rather than an invalid body.
fn json_number(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

pub fn from_unix_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// `2026-11-23T22:48:49.123Z`; times before 1970 are clamped to the epoch. Any stored
/// value formats, a bit flipped on the SD card included: years past 9999 are written
/// with ISO 8601's expanded form (`+10000-01-01T00:00:00.000Z`, as chrono does), which
/// no RFC 3339 parser accepts, so such a reading is refused by the server rather than
/// sent with a made-up time. (humantime panics past 9999, and the release profile's
/// `panic = "abort"` made every command that met such a row exit 134.)
pub fn format_rfc3339_ms(ms: i64) -> String {
    const DAY_MS: i64 = 86_400_000;
    let ms = ms.max(0);
    let (year, month, day) = civil_from_days(ms / DAY_MS);
    let t = ms % DAY_MS;
    let year = if year > 9999 {
        format!("+{year}")
    } else {
        format!("{year:04}")
    };
    format!(
        "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        t / 3_600_000,
        t / 60_000 % 60,
        t / 1000 % 60,
        t % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`); exact for every `i64` millisecond time.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_json_has_server_field_names_and_capture_time() {
        let mut r = Reading::new(UNIX_EPOCH + Duration::from_millis(1_795_474_129_123));
        r.fields.insert(field::TEMPERATURE.into(), 23.4);
        r.fields.insert(field::HUMIDITY.into(), 51.2);
        r.fields.insert(field::ACCELERATION.into(), 0.98);
        let json = r.to_wire_json();
        assert_eq!(
            json,
            serde_json::json!({"temperature": 23.4, "humidite": 51.2, "accelerometre": 0.98,
                               "timestamp": "2026-11-23T22:48:49.123Z"})
        );
    }

    #[test]
    fn non_finite_values_become_null() {
        let mut r = Reading::new(UNIX_EPOCH);
        r.fields.insert("temperature".into(), f64::NAN);
        assert_eq!(r.to_wire_json()["temperature"], serde_json::Value::Null);
    }

    #[test]
    fn stored_fields_never_hold_null() -> Result<(), serde_json::Error> {
        let mut r = Reading::new(UNIX_EPOCH);
        r.fields.insert("temperature".into(), f64::NAN);
        r.fields.insert("humidite".into(), f64::INFINITY);
        r.fields.insert("accelerometre".into(), 0.5);
        assert_eq!(r.stored_fields_json()?, r#"{"accelerometre":0.5}"#);
        Ok(())
    }

    #[test]
    fn capture_times_of_any_value_format_without_panicking() {
        for (ms, want) in [
            (i64::MIN, "1970-01-01T00:00:00.000Z"),
            (-1, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
            (253_402_300_800_000, "+10000-01-01T00:00:00.000Z"),
            (i64::MAX, "+292278994-08-17T07:12:55.807Z"),
        ] {
            assert_eq!(format_rfc3339_ms(ms), want, "{ms}");
        }
        // Within humantime's range both agree, leap days and month ends included.
        let mut ms = 0i64;
        while ms < 253_402_300_800_000 {
            let theirs = humantime::format_rfc3339_millis(from_unix_ms(ms)).to_string();
            assert_eq!(format_rfc3339_ms(ms), theirs, "{ms}");
            ms += 86_399_999_937;
        }
    }

    #[test]
    fn unix_ms_round_trips() {
        for ms in [0, 1, 1_795_474_129_123, -5000] {
            assert_eq!(unix_ms(from_unix_ms(ms)), ms);
        }
    }
}
