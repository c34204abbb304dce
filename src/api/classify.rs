//! What a server answer or a failed request means: the classes of shared/API.md, the
//! `Retry-After` header, and the pieces of an answer kept for logs.

use std::time::{Duration, SystemTime};

use reqwest::{header, StatusCode, Url};
use serde::Deserialize;

use super::{summarize, CallError, MAX_BODY_KEPT};

/// What an answer means, for any endpoint.
pub(super) enum Class {
    Success,
    Unauthorized {
        detail: String,
        code: Option<String>,
    },
    /// 400, 413, 415, 422.
    Refused {
        status: u16,
        detail: String,
    },
    /// Another 4xx but 401, 408, 429.
    Misdirected {
        status: u16,
        detail: String,
    },
    Transient {
        status: u16,
        retry_after: Option<Duration>,
        detail: String,
        back_pressure: bool,
    },
}

pub(super) fn location(headers: &header::HeaderMap) -> Option<String> {
    let value = headers.get(header::LOCATION)?;
    Some(
        String::from_utf8_lossy(value.as_bytes())
            .chars()
            .take(300)
            .collect(),
    )
}

/// What an answer means (shared/API.md): only 400, 413, 415 and 422 refuse one request;
/// another 4xx (but 401, 408, 429) says the endpoint or the account is wrong; 408, 425,
/// 429, 5xx, 1xx and 3xx are transient. A redirect is never followed. HTML pages from a
/// proxy count by their status and are said by their title.
pub(super) fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    location: Option<&str>,
    body: &str,
    url: &Url,
) -> Class {
    let code = status.as_u16();
    if status.is_success() {
        return Class::Success;
    }
    let summary = summarize(body);
    // The status said once: a proxy's page title often repeats it.
    let said = if summary.starts_with(status.as_str()) {
        summary
    } else {
        format!("{status}: {summary}")
    };
    match code {
        401 => {
            let (detail, code) = error_detail(body);
            Class::Unauthorized {
                detail: detail.unwrap_or(said),
                code,
            }
        }
        400 | 413 | 415 | 422 => Class::Refused {
            status: code,
            detail: said,
        },
        408 | 425 | 429 | 500..=599 => Class::Transient {
            status: code,
            retry_after,
            back_pressure: matches!(code, 429 | 503),
            detail: format!("{url} answered {said}"),
        },
        402..=499 => Class::Misdirected {
            status: code,
            detail: format!(
                "{url} answered {said}: {}",
                match code {
                    403 => "the account is not allowed to use it (check its permissions on the server) or api.base_url points at another site",
                    404 | 405 | 410 => "the endpoint is not there (check api.base_url: the server's root, with its path prefix if any)",
                    _ => "the endpoint or the account is wrong (check api.base_url and the account's permissions)",
                }
            ),
        },
        300..=399 => Class::Transient {
            status: code,
            retry_after,
            back_pressure: false,
            detail: format!(
                "{url} answered {status} redirecting to {}: not an answer of the Profilometre API \
                 (a maintenance page, a captive portal, http to https?); redirects are never followed: \
                 check api.base_url",
                location.unwrap_or("nowhere")
            ),
        },
        _ => Class::Transient {
            status: code,
            retry_after,
            back_pressure: false,
            detail: format!("{url} answered an unexpected {said}"),
        },
    }
}

/// SimpleJWT's `{"detail": ..., "code": ...}`, when the body is that.
fn error_detail(body: &str) -> (Option<String>, Option<String>) {
    #[derive(Deserialize)]
    struct Detail {
        detail: Option<serde_json::Value>,
        code: Option<String>,
    }
    match serde_json::from_str::<Detail>(body) {
        Ok(d) => (
            d.detail.map(|v| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            }),
            d.code,
        ),
        Err(_) => (None, None),
    }
}

pub(super) fn network_error(e: reqwest::Error) -> CallError {
    if let Some(tls) = crate::tls::explain(&e) {
        // A failed handshake: the server never read the request, even when (TLS 1.3, a
        // refused client certificate) its alert comes after the request was written.
        if e.is_connect() || tls.in_handshake {
            return CallError::NotSent {
                detail: format!("cannot connect to {}: {}", origin(&e), tls.message),
            };
        }
        return CallError::Transient {
            status: None,
            retry_after: None,
            detail: format!("request to {} failed: {}", origin(&e), tls.message),
        };
    }
    // reqwest's Display names the URL, never the headers or body, so no secret leaks here.
    if e.is_connect() {
        // No connection was made (refused, DNS, connect timeout, TLS handshake): hyper
        // writes nothing before that, so the server never saw the request.
        return CallError::NotSent {
            detail: format!("cannot connect: {}", error_chain(&e)),
        };
    }
    let what = if e.is_timeout() {
        "no answer within api.request_timeout"
    } else {
        "request failed"
    };
    CallError::Transient {
        status: None,
        retry_after: None,
        detail: format!("{what}: {}", error_chain(&e)),
    }
}

/// `https://host:port` of the request that failed.
fn origin(e: &reqwest::Error) -> String {
    e.url()
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|| "the server".into())
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    parse_retry_after(value, SystemTime::now())
}

pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The start of a body, on one line, for logs and dead letters.
pub fn snippet(body: &str) -> String {
    let mut end = body.len().min(MAX_BODY_KEPT);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    body[..end].split_whitespace().collect::<Vec<_>>().join(" ")
}
