//! TOML errors told without the source line: it may hold a password.

use super::ConfigError;

/// A TOML error as message, line, column and key. toml's own `Display` quotes the source
/// line, which may be a `password = "..."` typed under `[api]`: it would land on stderr and
/// in the journal.
pub(super) fn parse_error(origin: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let (line, column, key) = match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            (Some(line), Some(column), key_at(text, line))
        }
        None => (None, None, None),
    };
    ConfigError::Parse {
        path: origin.to_owned(),
        message,
        key,
        line,
        column,
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// The dotted key defined on 1-based `line` (`api.password`, `sensors[1].address`), or the
/// table its header names: read from the text, as toml does not expose the key it knows.
pub(super) fn key_at(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    let mut arrays: Vec<(String, usize)> = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let l = raw.trim();
        let is_here = number + 1 == line;
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split_once("]]")) {
            let name = name.0.trim().to_owned();
            let index = match arrays.iter_mut().find(|(n, _)| *n == name) {
                Some((_, i)) => {
                    *i += 1;
                    *i
                }
                None => {
                    arrays.push((name.clone(), 0));
                    0
                }
            };
            table = format!("{name}[{index}]");
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split_once(']')) {
            table = name.0.trim().to_owned();
        } else if is_here {
            let key = l.split_once('=')?.0.trim().trim_matches(['"', '\'']);
            return Some(if table.is_empty() {
                key.to_owned()
            } else {
                format!("{table}.{key}")
            });
        }
        if is_here {
            return (!table.is_empty()).then_some(table);
        }
    }
    None
}
