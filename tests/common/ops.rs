//! Field-operations helpers: `doctor --json` parsed, and a real Prometheus text parser
//! (the official `prometheus_client`'s, in the test server's venv) for `metrics`.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::gateway::Gateway;
use super::queue_tools::Tmpfs;

/// `doctor --json`: its exit code and the report.
pub fn doctor(gw: &Gateway) -> (i32, Value) {
    let (status, stdout, stderr) = gw.cli(&["doctor", "--json"]);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("`doctor --json` printed no JSON ({e})\nstdout: {stdout}\nstderr: {stderr}")
    });
    (status.code().unwrap_or(-1), report)
}

/// The first check of a `doctor --json` report whose name starts with `prefix`.
pub fn doctor_check<'a>(report: &'a Value, prefix: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        })
        .unwrap_or_else(|| panic!("no {prefix:?} check in {report:#}"))
}

/// The level (`ok`, `warn`, `fail`) of that check.
pub fn doctor_level(report: &Value, prefix: &str) -> String {
    doctor_check(report, prefix)["level"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

const PARSE_PROMETHEUS: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "documentation": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
"#;

/// Parses Prometheus text with `prometheus_client.parser.text_string_to_metric_families`;
/// panics with the parser's error when the text is not valid. Families as JSON:
/// `[{"name", "type", "documentation", "samples": [{"name", "labels", "value"}]}]`
/// (a counter's family name has no `_total`; its samples do).
pub fn parse_prometheus(text: &str) -> Vec<Value> {
    let mut child = Command::new(super::server::python())
        .args(["-c", PARSE_PROMETHEUS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run the test venv's python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("cannot write to the parser");
    let out = child.wait_with_output().expect("parser");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text: {}\n--- text ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser JSON")
}

/// The value of the sample `name` with `labels` (all of them must match).
pub fn sample(families: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families
        .iter()
        .flat_map(|f| f["samples"].as_array().cloned().unwrap_or_default())
        .find(|s| {
            s["name"] == name
                && labels
                    .iter()
                    .all(|(k, v)| s["labels"][*k].as_str() == Some(*v))
        })
        .and_then(|s| s["value"].as_f64())
}

/// Moves `gw`'s queue onto a new tmpfs of `size` (mount's syntax: `2m`) under its
/// directory; panics when mounting is impossible here (the test needs root).
pub fn queue_on_tmpfs(gw: &Gateway, size: &str) -> Tmpfs {
    let fs = Tmpfs::mount(&gw.dir().join("small"), size)
        .unwrap_or_else(|e| panic!("cannot mount a {size} tmpfs (this test needs root): {e}"));
    let queue = fs.dir().join("queue.db");
    gw.set_config_key(
        "queue",
        "path",
        &format!("{:?}", queue.display().to_string()),
    );
    fs
}
