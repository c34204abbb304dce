//! Validation of a loaded configuration: every bound and every refusal, with why.

use std::time::Duration;

use super::{Config, ConfigError, UploadConcurrency};

impl Config {
    pub(super) fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        self.validate_base_url(origin)?;
        // ---- TLS and proxy (issue 15) ----
        crate::tls::check(&self.api.tls_files()).map_err(|e| invalid(e.key, e.message))?;
        if let Some(proxy) = &self.api.proxy {
            // Never quoted: it may hold credentials.
            check_proxy(proxy).map_err(|m| invalid("api.proxy", m))?;
        }
        if self
            .api
            .username
            .as_deref()
            .is_some_and(|u| u.trim().is_empty())
        {
            return Err(invalid("api.username", "is empty".into()));
        }
        for (key, d, min, max) in self.durations() {
            if d < min {
                return Err(invalid(
                    key,
                    format!("must be at least {}", humantime::format_duration(min)),
                ));
            }
            if d > max.limit {
                return Err(invalid(
                    key,
                    format!(
                        "must be at most {} ({})",
                        humantime::format_duration(max.limit),
                        max.why
                    ),
                ));
            }
        }
        if self.api.login_backoff_max < self.api.login_backoff_base {
            return Err(invalid(
                "api.login_backoff_max",
                "must not be below api.login_backoff_base".into(),
            ));
        }
        if self.upload.backoff_max < self.upload.backoff_base {
            return Err(invalid(
                "upload.backoff_max",
                "must not be below upload.backoff_base".into(),
            ));
        }
        if let UploadConcurrency::Fixed(n) = self.upload.concurrency {
            if !(1..=64).contains(&n) {
                return Err(invalid(
                    "upload.concurrency",
                    "must be \"auto\" or between 1 and 64".into(),
                ));
            }
        }
        if !(1..=256).contains(&self.upload.max_concurrency) {
            return Err(invalid(
                "upload.max_concurrency",
                "must be between 1 and 256".into(),
            ));
        }
        if !(1..=10_000).contains(&self.upload.batch_size) {
            return Err(invalid(
                "upload.batch_size",
                "must be between 1 and 10000".into(),
            ));
        }
        if let UploadConcurrency::Fixed(n) = self.upload.concurrency {
            if self.upload.batch_size < n {
                return Err(invalid(
                    "upload.batch_size",
                    "must be at least upload.concurrency".into(),
                ));
            }
        }
        if self.queue.max_readings == 0 {
            return Err(invalid("queue.max_readings", "must be at least 1".into()));
        }
        if self.queue.path.as_os_str().is_empty() {
            return Err(invalid("queue.path", "is empty".into()));
        }
        crate::sensors::validate(&self.sensors).map_err(|e| invalid("sensors", e.to_string()))?;
        Ok(())
    }

    /// Every duration key with its bounds. The upper bounds keep deadline arithmetic far
    /// from overflow (`sampling.interval = "300000000000y"` would panic at the first tick)
    /// and the watchdog meaningful (its stall limit follows `api.request_timeout`).
    pub(super) fn durations(&self) -> [(&'static str, Duration, Duration, Max); 8] {
        const MS: Duration = Duration::from_millis(1);
        const HOUR: Duration = Duration::from_secs(3600);
        let backoff = Max {
            limit: HOUR,
            why: "a fixed fault is noticed within the hour",
        };
        [
            (
                "api.request_timeout",
                self.api.request_timeout,
                MS,
                Max {
                    limit: Duration::from_secs(120),
                    why: "the watchdog's stall limit follows it",
                },
            ),
            (
                "api.refresh_margin",
                self.api.refresh_margin.unwrap_or_default(),
                Duration::ZERO,
                Max {
                    limit: HOUR,
                    why: "it is capped at half the token's lifetime anyway",
                },
            ),
            (
                "api.login_backoff_base",
                self.api.login_backoff_base,
                MS,
                backoff,
            ),
            (
                "api.login_backoff_max",
                self.api.login_backoff_max,
                MS,
                backoff,
            ),
            (
                "sampling.interval",
                self.sampling.interval,
                MS,
                Max {
                    limit: Duration::from_secs(86_400),
                    why: "at least one reading a day",
                },
            ),
            ("upload.backoff_base", self.upload.backoff_base, MS, backoff),
            ("upload.backoff_max", self.upload.backoff_max, MS, backoff),
            (
                "queue.commit_interval",
                self.queue.commit_interval,
                Duration::ZERO,
                Max {
                    limit: Duration::from_secs(10),
                    why: "a crash loses up to this window",
                },
            ),
        ]
    }

    /// An http(s) URL with a host, no credentials in it, and TLS unless the server is this
    /// machine or `api.insecure_http` says otherwise. The URL is not quoted when it may
    /// hold a `user:password@`.
    fn validate_base_url(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: "api.base_url".to_owned(),
            message,
        };
        let raw = &self.api.base_url;
        let shown = if raw.contains('@') {
            "the URL".to_owned()
        } else {
            format!("{raw:?}")
        };
        let url =
            reqwest::Url::parse(raw).map_err(|e| invalid(format!("{shown} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(invalid(format!(
                "{shown} must be an http:// or https:// URL"
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "must not hold a user name or password (`user:password@`): remove it; the \
                 gateway logs in with api.username and the password file"
                    .into(),
            ));
        }
        if url.scheme() == "http" && !is_loopback(&url) && !self.api.insecure_http {
            return Err(invalid(format!(
                "{shown} is plain http to another machine: the password and the tokens would \
                 cross the network in clear; use https://, or set api.insecure_http = true"
            )));
        }
        Ok(())
    }
}

/// An upper bound of a duration key and why it is there.
#[derive(Clone, Copy)]
pub(super) struct Max {
    pub(super) limit: Duration,
    pub(super) why: &'static str,
}

/// This machine: `localhost`, 127.0.0.0/8 or `::1`. Plain http there never leaves it.
pub(super) fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An http(s) proxy URL without credentials: the configuration is printed by `config check`,
/// the environment is not.
fn check_proxy(proxy: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(proxy).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an http://host:port or https://host:port URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not hold credentials (`config check` prints the configuration): \
                    leave api.proxy unset and set HTTPS_PROXY=http://user:password@host:port \
                    in the service's environment instead"
                .into(),
        );
    }
    Ok(())
}
