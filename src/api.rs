//! The HTTP client for the Profilometre endpoints (shared/API.md), classifying every answer
//! into what the caller should do: accept, refresh, give up on the reading, or retry later.
//! Knows nothing of SQLite or of how tokens are kept.

use std::time::{Duration, SystemTime};

use reqwest::{header, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// The longest piece of a server answer kept for logs and dead letters.
const MAX_BODY_KEPT: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("api.base_url {0:?} cannot be used: {1}")]
    BadBaseUrl(String, String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Why a call did not give what was asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// 401: credentials refused (login) or token dead (refresh, protected call).
    #[error("401 unauthorized: {detail}")]
    Unauthorized {
        detail: String,
        code: Option<String>,
    },
    /// Another 4xx the same request will always get (400, 403, 404, 413, 415, 422, ...).
    #[error("{status} refused: {detail}")]
    Refused { status: u16, detail: String },
    /// Worth retrying later: timeout, a connection lost after the request was written, 408,
    /// 429, 5xx, or a 2xx whose body is not what the contract says (a proxy's page, a
    /// truncated answer). The server may have acted on the request.
    #[error("{detail}")]
    Transient {
        status: Option<u16>,
        retry_after: Option<Duration>,
        detail: String,
    },
    /// The request provably never left: no connection could be made (refused, DNS, connect
    /// timeout, TLS handshake). Unlike `Transient`, the server cannot have acted on it, so a
    /// single-use token sent with it is still unused.
    #[error("{detail}")]
    NotSent { detail: String },
}

/// What became of one reading sent to `/api/send/data/`.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    Accepted,
    Unauthorized,
    /// The server will never accept this reading; keep it as a dead letter.
    Rejected {
        status: u16,
        body: String,
    },
    Transient {
        status: Option<u16>,
        retry_after: Option<Duration>,
        detail: String,
    },
}

/// The two tokens of a login or a refresh, still raw.
pub struct RawTokens {
    pub access: SecretString,
    /// Present on login, and on refresh when the server rotates refresh tokens.
    pub refresh: Option<SecretString>,
}

/// A token answer as parsed. Its strings are moved into `SecretString`s at once; whatever
/// is left when it drops (on an error path) is wiped.
#[derive(Deserialize)]
struct TokenBody {
    access: String,
    refresh: Option<String>,
}

impl Drop for TokenBody {
    fn drop(&mut self) {
        self.access.zeroize();
        self.refresh.zeroize();
    }
}

/// `POST /api/token/` body, borrowing the password instead of copying it into a
/// `serde_json::Value`.
#[derive(Serialize)]
struct LoginBody<'a> {
    username: &'a str,
    password: &'a str,
}

#[derive(Serialize)]
struct RefreshBody<'a> {
    refresh: &'a str,
}

#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: Url,
    server_certificate: crate::tls::SeenCertificate,
}

/// How the client reaches the server besides its URL: TLS settings, proxy, clock.
struct Transport<'a> {
    tls: crate::tls::TlsFiles<'a>,
    proxy: Option<&'a str>,
    clock: crate::clock::Clock,
}

impl Api {
    /// A client with the system store and the proxy of the environment (tests, tools).
    pub fn new(base_url: &str, timeout: Duration) -> Result<Api, ApiError> {
        let tls = crate::tls::TlsFiles {
            ca_file: None,
            system_roots: true,
            client_cert: None,
            client_key: None,
        };
        let clock = crate::clock::Clock::system();
        Api::build(
            base_url,
            timeout,
            Transport {
                tls,
                proxy: None,
                clock,
            },
        )
    }

    /// The client the configuration describes (`[api]`: URL, timeout, TLS, proxy).
    pub fn from_config(
        config: &crate::config::ApiConfig,
        clock: crate::clock::Clock,
    ) -> Result<Api, ApiError> {
        let transport = Transport {
            tls: config.tls_files(),
            proxy: config.proxy.as_deref(),
            clock,
        };
        Api::build(&config.base_url, config.request_timeout, transport)
    }

    fn build(base_url: &str, timeout: Duration, transport: Transport<'_>) -> Result<Api, ApiError> {
        let mut base = Url::parse(base_url)
            .map_err(|e| ApiError::BadBaseUrl(base_url.into(), e.to_string()))?;
        // Endpoints are joined relative to the base, which keeps a path prefix like /profilo/.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(concat!("profilo-gateway/", env!("CARGO_PKG_VERSION")));
        // Reading the system's CA certificates costs ~300 KiB of heap for good: no TLS
        // set-up at all when neither the server nor the proxy is https (a LAN, a test bench).
        let https =
            base.scheme() == "https" || transport.proxy.is_some_and(|p| p.starts_with("https:"));
        let mut server_certificate = crate::tls::SeenCertificate::default();
        if https {
            let (tls, seen) =
                crate::tls::client_config(&transport.tls, std::sync::Arc::new(transport.clock))
                    .map_err(|e| ApiError::Client(e.to_string()))?;
            builder = builder.use_preconfigured_tls(tls);
            server_certificate = seen;
        } else {
            builder = builder.tls_built_in_root_certs(false);
        }
        if let Some(proxy) = transport.proxy {
            // Set, it replaces the environment's proxy settings (NO_PROXY included: there is
            // one server).
            let proxy = reqwest::Proxy::all(proxy)
                .map_err(|e| ApiError::Client(format!("api.proxy: {e}")))?;
            builder = builder.proxy(proxy);
        }
        let client = builder
            .build()
            .map_err(|e| ApiError::Client(e.to_string()))?;
        Ok(Api {
            client,
            base,
            server_certificate,
        })
    }

    /// The certificate of the last TLS handshake with the server, once there was one.
    pub fn server_certificate(&self) -> Option<crate::tls::CertSummary> {
        self.server_certificate.summary()
    }

    fn url(&self, path: &str) -> Url {
        // `path` is one of our constant relative paths, which always join.
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    /// `POST /api/token/`.
    pub async fn login(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<RawTokens, CallError> {
        let body = secret_json(&LoginBody {
            username,
            password: password.expose_secret(),
        })?;
        self.token_call("api/token/", body).await
    }

    /// `POST /api/token/refresh/`.
    pub async fn refresh(&self, refresh: &SecretString) -> Result<RawTokens, CallError> {
        let body = secret_json(&RefreshBody {
            refresh: refresh.expose_secret(),
        })?;
        self.token_call("api/token/refresh/", body).await
    }

    async fn token_call(
        &self,
        path: &str,
        body: Zeroizing<Vec<u8>>,
    ) -> Result<RawTokens, CallError> {
        // reqwest takes ownership of the bytes it sends and hyper/rustls keep their own
        // buffers (and the kernel its socket buffers): none of them is wiped, and nothing
        // here can reach them. What this code owns (the serialised body, the answer's text,
        // the parsed strings) is wiped when dropped.
        let request = self
            .client
            .post(self.url(path))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        drop(body);
        let (status, text) = self.call_text(request).await?;
        // A token answer's body is never quoted in an error: it holds tokens.
        let mut tokens: TokenBody =
            serde_json::from_str(&text).map_err(|e| CallError::Transient {
                status: Some(status.as_u16()),
                retry_after: None,
                detail: format!("{status} with an unexpected body ({e})"),
            })?;
        // `take` moves the strings out (no copy); the emptied body is wiped on drop anyway.
        Ok(RawTokens {
            access: std::mem::take(&mut tokens.access).into(),
            refresh: tokens.refresh.take().map(Into::into),
        })
    }

    /// `GET /api/auth/profile/`.
    pub async fn profile(&self, access: &SecretString) -> Result<serde_json::Value, CallError> {
        let request = self
            .client
            .get(self.url("api/auth/profile/"))
            .bearer_auth(access.expose_secret());
        self.call_json(request, true).await
    }

    /// Sends a request whose 2xx answer is JSON of type `T`; a 2xx with another body is
    /// transient (a proxy's page, a truncated answer).
    async fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        quote_body: bool,
    ) -> Result<T, CallError> {
        let (status, text) = self.call_text(request).await?;
        serde_json::from_str(&text).map_err(|e| CallError::Transient {
            status: Some(status.as_u16()),
            retry_after: None,
            detail: if quote_body {
                format!("{status} with an unexpected body ({e}): {}", snippet(&text))
            } else {
                format!("{status} with an unexpected body ({e})")
            },
        })
    }

    /// Sends a request and returns a 2xx answer's status and text (wiped when dropped:
    /// a token answer holds tokens); any other answer is classified into an error.
    async fn call_text(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Zeroizing<String>), CallError> {
        let response = request.send().await.map_err(network_error)?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        // The answer has arrived: whatever goes wrong from here, the server acted on the
        // request, so a failure to read the body is never `NotSent`.
        let text = Zeroizing::new(response.text().await.map_err(|e| match network_error(e) {
            CallError::NotSent { detail } => CallError::Transient {
                status: Some(status.as_u16()),
                retry_after: None,
                detail,
            },
            other => other,
        })?);
        if !status.is_success() {
            return Err(classify_failure(status, retry_after, &text));
        }
        Ok((status, text))
    }

    /// `POST /api/send/data/` with one reading's wire JSON.
    pub async fn send_reading(
        &self,
        access: &SecretString,
        reading: &serde_json::Value,
    ) -> SendOutcome {
        let response = match self
            .client
            .post(self.url("api/send/data/"))
            .bearer_auth(access.expose_secret())
            .json(reading)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return transient(network_error(e)),
        };
        let status = response.status();
        if status.is_success() {
            // Any 2xx acknowledges; the body is not needed, but reading it lets the
            // connection go back to the pool.
            let _ = response.bytes().await;
            return SendOutcome::Accepted;
        }
        let retry_after = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        match classify_failure(status, retry_after, &text) {
            CallError::Unauthorized { .. } => SendOutcome::Unauthorized,
            CallError::Refused { status, .. } => SendOutcome::Rejected {
                status,
                body: snippet(&text),
            },
            e @ (CallError::Transient { .. } | CallError::NotSent { .. }) => transient(e),
        }
    }
}

fn transient(e: CallError) -> SendOutcome {
    match e {
        CallError::Transient {
            status,
            retry_after,
            detail,
        } => SendOutcome::Transient {
            status,
            retry_after,
            detail,
        },
        other => SendOutcome::Transient {
            status: None,
            retry_after: None,
            detail: other.to_string(),
        },
    }
}

/// Maps a non-2xx answer to what to do about it. HTML pages from a proxy count by their status.
pub fn classify_failure(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &str,
) -> CallError {
    let (detail, code) = error_detail(body);
    let detail = detail.unwrap_or_else(|| format!("{status}: {}", snippet(body)));
    match status.as_u16() {
        401 => CallError::Unauthorized { detail, code },
        408 | 425 | 429 | 500..=599 => CallError::Transient {
            status: Some(status.as_u16()),
            retry_after,
            detail: format!("server answered {status}: {detail}"),
        },
        s @ 400..=499 => CallError::Refused { status: s, detail },
        // 1xx/3xx are not part of the contract: something in between misbehaves.
        s => CallError::Transient {
            status: Some(s),
            retry_after,
            detail: format!("unexpected {status}: {detail}"),
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

/// Serialises a body holding a secret into a buffer that is wiped when dropped. A first pass
/// only measures the output, so the buffer is allocated once at its final size: growing it
/// would free the old allocation unwiped.
fn secret_json<T: Serialize>(body: &T) -> Result<Zeroizing<Vec<u8>>, CallError> {
    let mut sized = SizeOnly(0);
    let _ = serde_json::to_writer(&mut sized, body);
    let mut buf = Zeroizing::new(Vec::with_capacity(sized.0));
    serde_json::to_writer(&mut *buf, body).map_err(|e| CallError::NotSent {
        detail: format!("cannot serialise the request body: {e}"),
    })?;
    Ok(buf)
}

/// A writer that only counts (to size `secret_json`'s buffer without a copy of the secret).
struct SizeOnly(usize);

impl std::io::Write for SizeOnly {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn network_error(e: reqwest::Error) -> CallError {
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

fn error_chain(e: &dyn std::error::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_contract() {
        let s = |n| StatusCode::from_u16(n).unwrap_or(StatusCode::IM_A_TEAPOT);
        assert!(matches!(
            classify_failure(s(401), None, r#"{"detail":"Token is blacklisted","code":"token_not_valid"}"#),
            CallError::Unauthorized { ref detail, ref code } if detail == "Token is blacklisted" && code.as_deref() == Some("token_not_valid")
        ));
        for permanent in [400, 413, 415, 422] {
            assert!(matches!(
                classify_failure(s(permanent), None, "{}"),
                CallError::Refused { .. }
            ));
        }
        for transient in [429, 500, 502, 503, 504] {
            assert!(matches!(
                classify_failure(s(transient), None, "<html>"),
                CallError::Transient { .. }
            ));
        }
        assert!(matches!(
            classify_failure(s(302), None, ""),
            CallError::Transient { .. }
        ));
    }

    #[test]
    fn html_error_pages_count_by_their_status() {
        let html = "<html><body><h1>502 Bad Gateway</h1>\n<hr>nginx</body></html>";
        match classify_failure(StatusCode::BAD_GATEWAY, Some(Duration::from_secs(3)), html) {
            CallError::Transient {
                status,
                retry_after,
                detail,
            } => {
                assert_eq!(status, Some(502));
                assert_eq!(retry_after, Some(Duration::from_secs(3)));
                assert!(detail.contains("502 Bad Gateway"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = httpdate::parse_http_date("Wed, 25 Nov 2026 10:00:00 GMT")
            .unwrap_or(SystemTime::UNIX_EPOCH);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 25 Nov 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 25 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn base_url_with_a_path_prefix_keeps_it() {
        let api = match Api::new("https://example.com/profilo", Duration::from_secs(1)) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            api.url("api/token/").as_str(),
            "https://example.com/profilo/api/token/"
        );
    }

    #[test]
    fn snippet_is_bounded_and_on_one_line() {
        let long = "é".repeat(5000);
        assert!(snippet(&long).len() <= MAX_BODY_KEPT);
        assert_eq!(snippet("a\n  b\tc"), "a b c");
    }

    #[tokio::test]
    async fn only_a_request_that_never_left_is_not_sent() {
        // Connection refused: the server cannot have seen the token.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let closed = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        drop(listener);
        let api = Api::new(&format!("http://{closed}"), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = api.refresh(&"a.b.c".to_owned().into()).await.err();
        assert!(matches!(err, Some(CallError::NotSent { .. })), "{err:?}");

        // Connected and sent, then no answer: the server may have acted on it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        let api = Api::new(&format!("http://{addr}"), Duration::from_millis(300))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = api.refresh(&"a.b.c".to_owned().into()).await.err();
        assert!(
            matches!(err, Some(CallError::Transient { status: None, .. })),
            "{err:?}"
        );
        silent.abort();
    }

    #[test]
    fn a_secret_body_is_written_once_into_a_buffer_of_its_final_size() {
        let password = "p\"w\\\u{1}é".to_owned();
        let body = secret_json(&LoginBody {
            username: "dev",
            password: &password,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        // No reallocation: a grown buffer would leave an unwiped copy in freed memory.
        assert_eq!(body.len(), body.capacity());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["password"].as_str(), Some(password.as_str()));
        assert_eq!(v["username"].as_str(), Some("dev"));
    }
}
