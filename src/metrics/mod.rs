//! What the gateway tells a fleet's monitoring: its state in the Prometheus text format
//! (version 0.0.4, read by node_exporter's textfile collector, Telegraf's `inputs.exec`
//! and Prometheus itself), the `/metrics` and `/health` listener ([`http`]), and the
//! rates a person at a terminal reads ([`rate`]).
//!
//! Everything here is made from the queue's [`Stats`], the figures of `queue stats`, so
//! the two never disagree. Metric names are a contract: extend, never rename.

pub mod http;
pub mod rate;
pub mod summary;

use std::fmt::Write;

use crate::queue::Stats;

/// A metric's kind, as its `# TYPE` line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

/// One metric family: its name, help, kind and samples (labels, value).
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn value(mut self, v: f64) -> Self {
        self.samples.push((Vec::new(), v));
        self
    }

    fn labelled(mut self, label: &'static str, value: impl Into<String>, v: f64) -> Self {
        self.samples.push((vec![(label, value.into())], v));
        self
    }
}

/// The moment and the clock state a rendering is made at (not in [`Stats`]: they belong
/// to the process that renders, not to the queue).
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub now_ms: i64,
    pub clock_synchronized: bool,
}

/// The state in the Prometheus text format. Families whose source is unknown (the daemon
/// never ran on this queue, so no upload or login counters) have HELP and TYPE but no
/// sample, which parsers accept and `absent()` alerts see.
pub fn render(stats: &Stats, ctx: Context) -> String {
    let mut out = String::new();
    for family in families(stats, ctx) {
        let kind = match family.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {kind}", family.name);
        for (labels, v) in &family.samples {
            out.push_str(family.name);
            if !labels.is_empty() {
                let inner: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = write!(out, "{{{}}}", inner.join(","));
            }
            let _ = writeln!(out, " {}", number(*v));
        }
    }
    out
}

fn families(s: &Stats, ctx: Context) -> Vec<Family> {
    use Kind::{Counter, Gauge};
    let uploads = |key: &str| json_u64(s.uploads.as_ref(), key);
    let auth = |key: &str| json_u64(s.auth.as_ref(), key);
    let count = |v: u64| Some(v as f64);
    let seconds = |t: &Option<String>| parse_ms(t.as_deref()).map(|ms| ms as f64 / 1000.0);
    let oldest_age = match (s.pending, parse_ms(s.oldest_captured_at.as_deref())) {
        (0, _) | (_, None) => 0.0,
        (_, Some(oldest)) => (ctx.now_ms.saturating_sub(oldest)).max(0) as f64 / 1000.0,
    };
    // Families of one sample, `None` when its source is unknown.
    let single: [(&'static str, Kind, &'static str, Option<f64>); 14] = [
        ("profilo_gateway_queue_pending", Gauge, "Readings queued and not yet accepted by the server.", count(s.pending)),
        ("profilo_gateway_queue_dead", Gauge, "Dead letters: readings the server refused for good (see `queue dead`).", count(s.dead)),
        ("profilo_gateway_queue_in_flight", Gauge, "Upload requests in flight.", count(s.in_flight)),
        ("profilo_gateway_upload_concurrency", Gauge, "The adaptive limit of upload requests in flight, as the uploader last set it.", s.upload_concurrency.map(|v| v as f64)),
        ("profilo_gateway_queue_bytes", Gauge, "Size of the queue's database file and its write-ahead log.", count(s.db_bytes)),
        ("profilo_gateway_oldest_pending_age_seconds", Gauge, "Age of the oldest pending reading's capture time; 0 when the queue is empty.", Some(oldest_age)),
        ("profilo_gateway_uploaded_total", Counter, "Readings accepted by the server, ever (kept in the queue file).", count(s.uploaded_total)),
        ("profilo_gateway_dropped_total", Counter, "Readings dropped, ever: queue full, or not writable.", count(s.dropped_total)),
        ("profilo_gateway_dead_evicted_total", Counter, "Dead letters deleted to keep the queue within queue.max_bytes, ever.", count(s.dead_evicted_total)),
        ("profilo_gateway_logins_total", Counter, "Successful logins (username and password) since the daemon started.", auth("logins").and_then(count)),
        ("profilo_gateway_login_failures_total", Counter, "Failed logins since the daemon started.", auth("login_failures").and_then(count)),
        ("profilo_gateway_clock_synchronized", Gauge, "1 when the wall clock is past this build's date and synchronised by NTP (or no NTP client is known), else 0.", Some(if ctx.clock_synchronized { 1.0 } else { 0.0 })),
        ("profilo_gateway_status_updated_timestamp_seconds", Gauge, "When the daemon last wrote its status (Unix time); stale when the daemon is down.", seconds(&s.daemon_updated_at)),
        ("profilo_gateway_last_upload_timestamp_seconds", Gauge, "When readings were last accepted by the server (Unix time).", seconds(&s.last_upload_at)),
    ];
    let mut out: Vec<Family> = single
        .into_iter()
        .map(|(name, kind, help, v)| {
            let f = Family::new(name, kind, help);
            match v {
                Some(v) => f.value(v),
                None => f,
            }
        })
        .collect();
    let mut failures = Family::new(
        "profilo_gateway_upload_failures_total",
        Counter,
        "Upload requests that failed since the daemon started, by kind: rejected (refused for good, now dead letters), unauthorized (token refused), transient (network or server error, retried), endpoint_refused (the endpoint refused every reading: uploads paused).",
    );
    for (kind, key) in [
        ("rejected", "rejected"),
        ("unauthorized", "unauthorized"),
        ("transient", "transient_failures"),
        ("endpoint_refused", "endpoint_refused"),
    ] {
        if let Some(v) = uploads(key) {
            failures = failures.labelled("kind", kind, v as f64);
        }
    }
    let mut refreshes = Family::new(
        "profilo_gateway_refreshes_total",
        Counter,
        "Access token refreshes since the daemon started, by result (ok, failed).",
    );
    for (result, key) in [("ok", "refreshes"), ("failed", "refresh_failures")] {
        if let Some(v) = auth(key) {
            refreshes = refreshes.labelled("result", result, v as f64);
        }
    }
    let mut sensor_up = Family::new(
        "profilo_gateway_sensor_up",
        Gauge,
        "1 while the sensor reads, 0 while it fails (as the daemon last saw it).",
    );
    for (name, up) in sensor_states(s) {
        sensor_up = sensor_up.labelled("sensor", name, if up { 1.0 } else { 0.0 });
    }
    out.extend([failures, refreshes, sensor_up]);
    out
}

/// Each sensor's name and whether it reads, from the daemon's health report.
pub fn sensor_states(s: &Stats) -> Vec<(String, bool)> {
    s.sensors
        .as_ref()
        .and_then(|v| v.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|h| {
                    let name = h.get("name")?.as_str()?.to_owned();
                    Some((name, h.get("state")?.as_str()? == "ok"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A counter of the daemon's JSON status (`uploads`, `auth`), when known.
pub fn json_u64(v: Option<&serde_json::Value>, key: &str) -> Option<u64> {
    v?.get(key)?.as_u64()
}

/// An RFC 3339 time of the stats, as Unix milliseconds.
pub fn parse_ms(t: Option<&str>) -> Option<i64> {
    let t = humantime::parse_rfc3339(t?).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// Label values escape backslash, double quote and line feed (the text format's rule).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Integers without a fraction, so counters read as they are counted.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            now_ms: 1_800_000_060_000,
            clock_synchronized: true,
        }
    }

    #[test]
    fn every_contract_name_has_help_and_type() {
        let text = render(&Stats::default(), ctx());
        for name in [
            "profilo_gateway_queue_pending",
            "profilo_gateway_queue_dead",
            "profilo_gateway_oldest_pending_age_seconds",
            "profilo_gateway_uploaded_total",
            "profilo_gateway_dropped_total",
            "profilo_gateway_upload_failures_total",
            "profilo_gateway_logins_total",
            "profilo_gateway_refreshes_total",
            "profilo_gateway_sensor_up",
            "profilo_gateway_clock_synchronized",
        ] {
            assert!(
                text.contains(&format!("\n# HELP {name} "))
                    || text.starts_with(&format!("# HELP {name} ")),
                "{name}: {text}"
            );
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}: {text}");
        }
        // Without a daemon there are no upload or login counters: no sample, no zero.
        assert!(!text.contains("\nprofilo_gateway_logins_total "), "{text}");
    }

    #[test]
    fn values_come_from_the_stats_with_labels_escaped() {
        let stats = Stats {
            pending: 3,
            dead: 1,
            uploaded_total: 42,
            oldest_captured_at: Some("2027-01-15T08:00:00.000Z".into()),
            uploads: Some(
                serde_json::json!({"accepted": 42, "rejected": 1, "unauthorized": 0, "transient_failures": 5}),
            ),
            auth: Some(
                serde_json::json!({"logins": 2, "login_failures": 0, "refreshes": 7, "refresh_failures": 1}),
            ),
            sensors: Some(serde_json::json!([
                {"name": "bme280@i2c-1:0x76", "state": "ok"},
                {"name": "odd\"name", "state": "failing"}
            ])),
            ..Stats::default()
        };
        let text = render(&stats, ctx());
        for line in [
            "profilo_gateway_queue_pending 3\n",
            "profilo_gateway_queue_dead 1\n",
            "profilo_gateway_uploaded_total 42\n",
            // 2027-01-15T08:00:00Z is 1 800 000 000 s; now is 60 s later.
            "profilo_gateway_oldest_pending_age_seconds 60\n",
            "profilo_gateway_upload_failures_total{kind=\"transient\"} 5\n",
            "profilo_gateway_logins_total 2\n",
            "profilo_gateway_refreshes_total{result=\"ok\"} 7\n",
            "profilo_gateway_refreshes_total{result=\"failed\"} 1\n",
            "profilo_gateway_sensor_up{sensor=\"bme280@i2c-1:0x76\"} 1\n",
            "profilo_gateway_sensor_up{sensor=\"odd\\\"name\"} 0\n",
            "profilo_gateway_clock_synchronized 1\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }
}
