//! A server answer's body said in a few words for a log line: DRF's `detail`, an HTML
//! page's `<title>` (a proxy's error page, a captive portal), or the start of its text.
//! A whole nginx page in the journal at every failure buries what happened.

/// The most characters of text kept when a body has no better summary.
pub const TEXT_KEPT: usize = 200;

/// What `body` says, on one line, at most about `TEXT_KEPT` characters.
pub fn summarize(body: &str) -> String {
    let trimmed = body.trim_start();
    if trimmed.is_empty() {
        return "empty body".into();
    }
    if let Some(detail) = json_detail(trimmed) {
        return first_chars(&detail, TEXT_KEPT);
    }
    if trimmed.starts_with('<') {
        if let Some(title) = html_title(trimmed) {
            return first_chars(&title, TEXT_KEPT);
        }
        return first_chars(&strip_tags(trimmed), TEXT_KEPT);
    }
    first_chars(trimmed, TEXT_KEPT)
}

/// SimpleJWT's and DRF's `{"detail": ...}`, else a JSON body itself.
fn json_detail(body: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(match value.get("detail") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => value.to_string(),
    })
}

/// The text of the first `<title>`, when it has any.
fn html_title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    let title = collapse(&html[start..end]);
    (!title.is_empty()).then_some(title)
}

/// The visible text of an HTML page: tags, scripts and styles dropped.
fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        out.push(' ');
        let tag = &rest[lt..];
        let lower = tag.get(..8).unwrap_or(tag).to_ascii_lowercase();
        // A script or style element's content is not text a person reads.
        let skip_to = if lower.starts_with("<script") {
            find_ci(tag, "</script>")
        } else if lower.starts_with("<style") {
            find_ci(tag, "</style>")
        } else {
            None
        };
        let after = match skip_to {
            Some(i) => &tag[i..],
            None => tag,
        };
        match after.find('>') {
            Some(gt) => rest = &after[gt + 1..],
            None => {
                rest = "";
                break;
            }
        }
        if out.len() > TEXT_KEPT * 8 {
            break;
        }
    }
    out.push_str(rest);
    collapse(&out)
}

fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack.to_ascii_lowercase().find(needle)
}

fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The first `n` characters of `text` on one line, with an ellipsis when cut.
fn first_chars(text: &str, n: usize) -> String {
    let text = collapse(text);
    match text.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_html_page_is_said_by_its_title() {
        let page = "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n\
                    <body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n\
                    <hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
        assert_eq!(summarize(page), "503 Service Temporarily Unavailable");
    }

    #[test]
    fn an_html_page_without_title_is_said_by_its_text() {
        let page = "<!DOCTYPE html><html><head><style>body{color:red}</style>\
                    <script>var x = '<b>';</script></head><body><h1>Welcome to the hotel Wi-Fi</h1>\
                    <p>Please  log in.</p></body></html>";
        assert_eq!(summarize(page), "Welcome to the hotel Wi-Fi Please log in.");
        let long = format!("<html><body>{}</body></html>", "word ".repeat(500));
        let s = summarize(&long);
        assert!(s.chars().count() <= TEXT_KEPT + 1, "{}", s.len());
        assert!(s.ends_with('…'));
    }

    #[test]
    fn json_is_said_by_its_detail() {
        assert_eq!(
            summarize(r#"{"detail":"Not found.","code":"x"}"#),
            "Not found."
        );
        assert_eq!(
            summarize(r#"{"temperature":["too high"]}"#),
            r#"{"temperature":["too high"]}"#
        );
        assert_eq!(summarize("  \n"), "empty body");
        assert_eq!(summarize("plain\ntext"), "plain text");
    }
}
