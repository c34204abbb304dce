//! The HTTP client for the Profilometre endpoints (shared/API.md), classifying every answer
//! into what the caller should do: accept, refresh, give up on the reading, or retry later.
//! Knows nothing of SQLite or of how tokens are kept.

use std::time::Duration;

use reqwest::{header, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

mod classify;
mod lanes;
mod summary;
use classify::{classify, error_chain, location, network_error, Class};
pub use classify::{parse_retry_after, retry_after, snippet};
pub use summary::summarize;

/// The longest piece of a server answer kept for dead letters.
const MAX_BODY_KEPT: usize = 2048;
/// The most of an answer ever read: no answer of this API is more than a few KiB, and a
/// proxy streaming a page of megabytes must not take the memory of a Pi. Past this the
/// connection is dropped.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// What a 2xx that is not a JSON object is said to be.
pub const NOT_AN_ANSWER: &str =
    "not an answer of the Profilometre API (a captive portal or proxy?)";

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
    /// Another 4xx the same request will always get: 400, 413, 415, 422 refuse the request;
    /// 403, 404, 405, 410, ... say the endpoint or the account is wrong (the detail names
    /// the URL and the likely fix).
    #[error("{detail}")]
    Refused { status: u16, detail: String },
    /// Worth retrying later: timeout, a connection lost after the request was written, 408,
    /// 429, 5xx, a redirect (never followed), or a 2xx whose body is not what the contract
    /// says (a captive portal's page, a truncated answer). The server may have acted on it.
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
    /// A 2xx whose body is a JSON object (the reading as stored): delivered.
    Accepted,
    Unauthorized,
    /// 400, 413, 415, 422: the server will never accept this reading; a dead letter.
    Rejected {
        status: u16,
        body: String,
    },
    /// Another 4xx (403, 404, 405, 410, ...): the endpoint or the account is wrong, not the
    /// reading; every reading would get it. `detail` names the URL and the likely fix.
    Misdirected {
        status: u16,
        detail: String,
    },
    Transient {
        status: Option<u16>,
        retry_after: Option<Duration>,
        detail: String,
        /// The server or a proxy asks for less load: 429, 503, or no answer in time.
        back_pressure: bool,
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
    lanes: std::sync::Arc<lanes::Lanes<reqwest::Client>>,
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
        // Reading the system's CA certificates costs ~300 KiB of heap for good: no TLS
        // set-up at all when neither the server nor the proxy is https (a LAN, a test bench).
        // The lanes share the one configuration (and so its roots and TLS sessions).
        let https =
            base.scheme() == "https" || transport.proxy.is_some_and(|p| p.starts_with("https:"));
        let mut server_certificate = crate::tls::SeenCertificate::default();
        let tls = if https {
            let (tls, seen) =
                crate::tls::client_config(&transport.tls, std::sync::Arc::new(transport.clock))
                    .map_err(|e| ApiError::Client(e.to_string()))?;
            server_certificate = seen;
            Some(tls)
        } else {
            None
        };
        let proxy = match transport.proxy {
            // Set, it replaces the environment's proxy settings (NO_PROXY included: there is
            // one server).
            Some(p) => Some(
                reqwest::Proxy::all(p).map_err(|e| ApiError::Client(format!("api.proxy: {e}")))?,
            ),
            None => None,
        };
        let recipe = move || {
            let mut builder = reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .pool_idle_timeout(Duration::from_secs(60))
                // A lane carries one request at a time (lanes.rs): one connection to keep.
                .pool_max_idle_per_host(1)
                .tcp_keepalive(Duration::from_secs(30))
                // A redirect is never an answer of this API: followed, a POST becomes a GET
                // of a maintenance page whose 200 looks like an acceptance, or a 307
                // re-sends the password, a refresh token or a reading to another place.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("profilo-gateway/", env!("CARGO_PKG_VERSION")));
            builder = match &tls {
                Some(tls) => builder.use_preconfigured_tls(tls.clone()),
                None => builder.tls_built_in_root_certs(false),
            };
            if let Some(proxy) = &proxy {
                builder = builder.proxy(proxy.clone());
            }
            builder.build().map_err(|e| e.to_string())
        };
        let lanes = lanes::Lanes::new(Box::new(recipe)).map_err(ApiError::Client)?;
        Ok(Api {
            lanes,
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
        // here can reach them. What this code owns (the serialised body, the answer's
        // bytes, the parsed strings) is wiped when dropped.
        let url = self.url(path);
        let lane = self.lanes.take();
        let request = lane
            .post(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        drop(body);
        let (status, bytes) = self.call_bytes(request, &url).await?;
        // A token answer's body is never quoted in an error: it holds tokens.
        let mut tokens: TokenBody =
            serde_json::from_slice(&bytes).map_err(|e| CallError::Transient {
                status: Some(status.as_u16()),
                retry_after: None,
                detail: if serde_json::from_slice::<JsonObject>(&bytes).is_ok() {
                    format!("{status} from {url} without the tokens expected ({e})")
                } else {
                    format!("{status} from {url}: {NOT_AN_ANSWER}")
                },
            })?;
        // `take` moves the strings out (no copy); the emptied body is wiped on drop anyway.
        Ok(RawTokens {
            access: std::mem::take(&mut tokens.access).into(),
            refresh: tokens.refresh.take().map(Into::into),
        })
    }

    /// `GET /api/auth/profile/`.
    pub async fn profile(&self, access: &SecretString) -> Result<serde_json::Value, CallError> {
        let url = self.url("api/auth/profile/");
        let lane = self.lanes.take();
        let request = lane.get(url.clone()).bearer_auth(access.expose_secret());
        let (status, bytes) = self.call_bytes(request, &url).await?;
        match serde_json::from_slice::<JsonObject>(&bytes) {
            Ok(profile) => Ok(serde_json::Value::Object(profile)),
            Err(_) => Err(CallError::Transient {
                status: Some(status.as_u16()),
                retry_after: None,
                detail: format!(
                    "{status} from {url}: {NOT_AN_ANSWER}: {}",
                    summarize(&String::from_utf8_lossy(&bytes))
                ),
            }),
        }
    }

    /// Sends a request and returns a 2xx answer's status and bytes (wiped when dropped: a
    /// token answer holds tokens); any other answer is classified into an error.
    async fn call_bytes(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<(StatusCode, Zeroizing<Vec<u8>>), CallError> {
        let response = request.send().await.map_err(network_error)?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let location = location(response.headers());
        // The answer has arrived: whatever goes wrong from here, the server acted on the
        // request, so a failure to read the body is never `NotSent`.
        let bytes = read_bounded(response)
            .await
            .map_err(|e| CallError::Transient {
                status: Some(status.as_u16()),
                retry_after: None,
                detail: format!("{status} from {url}: {e}"),
            })?;
        let text = String::from_utf8_lossy(&bytes);
        match classify(status, retry_after, location.as_deref(), &text, url) {
            Class::Success => {
                drop(text);
                Ok((status, bytes))
            }
            Class::Unauthorized { detail, code } => Err(CallError::Unauthorized { detail, code }),
            Class::Refused { status, detail } | Class::Misdirected { status, detail } => {
                Err(CallError::Refused { status, detail })
            }
            Class::Transient {
                status,
                retry_after,
                detail,
                ..
            } => Err(CallError::Transient {
                status: Some(status),
                retry_after,
                detail,
            }),
        }
    }

    /// `POST /api/send/data/` with one reading's wire JSON.
    pub async fn send_reading(
        &self,
        access: &SecretString,
        reading: &serde_json::Value,
    ) -> SendOutcome {
        let url = self.url("api/send/data/");
        // Held until the answer is read to its end, when the connection is free again.
        let lane = self.lanes.take();
        let response = match lane
            .post(url.clone())
            .bearer_auth(access.expose_secret())
            .json(reading)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let back_pressure = e.is_timeout();
                return match network_error(e) {
                    CallError::Transient { detail, .. } | CallError::NotSent { detail } => {
                        SendOutcome::Transient {
                            status: None,
                            retry_after: None,
                            detail,
                            back_pressure,
                        }
                    }
                    other => SendOutcome::Transient {
                        status: None,
                        retry_after: None,
                        detail: other.to_string(),
                        back_pressure,
                    },
                };
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let location = location(response.headers());
        let bytes = match read_bounded(response).await {
            Ok(b) => b,
            Err(e) => {
                return SendOutcome::Transient {
                    status: Some(status.as_u16()),
                    retry_after,
                    back_pressure: e.is_timeout(),
                    detail: format!("{status} from {url}: {e}"),
                }
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        match classify(status, retry_after, location.as_deref(), &text, &url) {
            // DRF answers the reading as stored: a JSON object. Anything else under a 2xx is
            // something in between (a captive portal's login page, an empty 200 of a
            // proxy) and the reading was not stored.
            Class::Success => match serde_json::from_slice::<JsonObject>(&bytes) {
                Ok(_) => SendOutcome::Accepted,
                Err(_) => SendOutcome::Transient {
                    status: Some(status.as_u16()),
                    retry_after: None,
                    detail: format!("{status} from {url}: {NOT_AN_ANSWER}: {}", summarize(&text)),
                    back_pressure: false,
                },
            },
            Class::Unauthorized { .. } => SendOutcome::Unauthorized,
            Class::Refused { status, .. } => SendOutcome::Rejected {
                status,
                body: snippet(&text),
            },
            Class::Misdirected { status, detail } => SendOutcome::Misdirected { status, detail },
            Class::Transient {
                status,
                retry_after,
                detail,
                back_pressure,
            } => SendOutcome::Transient {
                status: Some(status),
                retry_after,
                detail,
                back_pressure,
            },
        }
    }
}

type JsonObject = serde_json::Map<String, serde_json::Value>;

/// Why an answer's body was not read to its end.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("answer larger than 64 KiB ({0}): not an answer of the Profilometre API; connection dropped")]
    TooLarge(String),
    #[error("answer cut short: {0}")]
    Network(String, bool),
}

impl BodyError {
    fn is_timeout(&self) -> bool {
        matches!(self, BodyError::Network(_, true))
    }
}

/// Reads an answer's body, at most [`MAX_ANSWER_BYTES`]; a longer one is not read further
/// and its connection is dropped (the response is dropped unread, so hyper closes it). The
/// buffer is allocated once at its final size, as token answers hold secrets: growing it
/// would free an unwiped copy.
async fn read_bounded(mut response: reqwest::Response) -> Result<Zeroizing<Vec<u8>>, BodyError> {
    let announced = response.content_length();
    if let Some(n) = announced.filter(|&n| n > MAX_ANSWER_BYTES as u64) {
        return Err(BodyError::TooLarge(format!("Content-Length {n}")));
    }
    let capacity = announced.map_or(MAX_ANSWER_BYTES, |n| n as usize);
    let mut buf = Zeroizing::new(Vec::with_capacity(capacity));
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > capacity {
                    return Err(BodyError::TooLarge(format!(
                        "more than {} bytes",
                        capacity.max(MAX_ANSWER_BYTES)
                    )));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf),
            Err(e) => return Err(BodyError::Network(error_chain(&e), e.is_timeout())),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn class_of(code: u16, body: &str) -> Class {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
        let url = Url::parse("http://gw.test/api/send/data/").unwrap_or_else(|e| panic!("{e}"));
        classify(status, None, Some("/maintenance/"), body, &url)
    }

    #[test]
    fn classification_follows_the_contract() {
        assert!(matches!(
            class_of(401, r#"{"detail":"Token is blacklisted","code":"token_not_valid"}"#),
            Class::Unauthorized { ref detail, ref code } if detail == "Token is blacklisted" && code.as_deref() == Some("token_not_valid")
        ));
        for permanent in [400, 413, 415, 422] {
            assert!(matches!(class_of(permanent, "{}"), Class::Refused { .. }));
        }
        for endpoint in [403, 404, 405, 410, 451] {
            match class_of(endpoint, "<html><title>Not Found</title></html>") {
                Class::Misdirected { status, detail } => {
                    assert_eq!(status, endpoint);
                    assert!(detail.contains("http://gw.test/api/send/data/"), "{detail}");
                    assert!(detail.contains("api.base_url"), "{detail}");
                }
                _ => panic!("{endpoint} is not endpoint-level"),
            }
        }
        for (transient, pressure) in [
            (408, false),
            (429, true),
            (500, false),
            (502, false),
            (503, true),
            (504, false),
        ] {
            assert!(matches!(
                class_of(transient, "<html>"),
                Class::Transient { back_pressure, .. } if back_pressure == pressure
            ));
        }
        for redirect in [301, 302, 303, 307, 308] {
            match class_of(redirect, "") {
                Class::Transient { detail, .. } => {
                    assert!(detail.contains("/maintenance/"), "{detail}")
                }
                _ => panic!("{redirect} is not transient"),
            }
        }
    }

    #[test]
    fn html_error_pages_count_by_their_status_said_once() {
        let html = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1>\n<hr>nginx</body></html>";
        let status = StatusCode::BAD_GATEWAY;
        let url = Url::parse("http://gw.test/api/send/data/").unwrap_or_else(|e| panic!("{e}"));
        match classify(status, Some(Duration::from_secs(3)), None, html, &url) {
            Class::Transient {
                status,
                retry_after,
                detail,
                ..
            } => {
                assert_eq!(status, 502);
                assert_eq!(retry_after, Some(Duration::from_secs(3)));
                assert_eq!(
                    detail,
                    "http://gw.test/api/send/data/ answered 502 Bad Gateway"
                );
            }
            _ => panic!("502 is transient"),
        }
    }

    /// A one-connection-at-a-time HTTP server answering every request with `answer`
    /// (a canned response head and body); returns its base URL.
    async fn canned(answer: impl Fn() -> Vec<u8> + Send + Sync + 'static) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let answer = std::sync::Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let _ = sock.read(&mut buf).await;
                    let _ = sock.write_all(&answer()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn http(head: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    async fn send_to(base: &str) -> SendOutcome {
        let api = Api::new(base, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
        api.send_reading(
            &"a.b.c".to_owned().into(),
            &serde_json::json!({"temperature": 1.0}),
        )
        .await
    }

    #[tokio::test]
    async fn only_a_json_object_under_a_2xx_delivers() {
        let ok = canned(|| http("201 Created", r#"{"id":1,"temperature":1.0}"#)).await;
        assert_eq!(send_to(&ok).await, SendOutcome::Accepted);
        let ok200 = canned(|| http("200 OK", r#"{"id":1}"#)).await;
        assert_eq!(send_to(&ok200).await, SendOutcome::Accepted);
        for body in [
            "<html><head><title>Hotel Wi-Fi</title></head><body>log in</body></html>",
            "",
            "[1, 2]",
            "\"ok\"",
        ] {
            let portal = canned(move || http("200 OK", body)).await;
            match send_to(&portal).await {
                SendOutcome::Transient { detail, .. } => {
                    assert!(detail.contains(NOT_AN_ANSWER), "{detail}")
                }
                other => panic!("{body:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        let base = canned(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        })
        .await;
        match send_to(&base).await {
            SendOutcome::Transient { status, detail, .. } => {
                assert_eq!(status, Some(307));
                assert!(detail.contains("/elsewhere/"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        let api = Api::new(&base, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
        let err = api.login("dev", &"pw".to_owned().into()).await.err();
        assert!(
            matches!(
                err,
                Some(CallError::Transient {
                    status: Some(307),
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "one request each, none re-sent"
        );
    }

    #[tokio::test]
    async fn a_huge_answer_is_cut_at_the_bound() {
        // Chunked, no length announced: the bound is met while reading.
        let chunk = "x".repeat(8192);
        let base = canned(move || {
            let mut out =
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                    .to_vec();
            for _ in 0..64 {
                out.extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
            }
            out.extend_from_slice(b"0\r\n\r\n");
            out
        })
        .await;
        match send_to(&base).await {
            SendOutcome::Transient { detail, .. } => assert!(detail.contains("64 KiB"), "{detail}"),
            other => panic!("{other:?}"),
        }
        // Announced: not read at all.
        let announced = canned(|| {
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 268435456\r\nConnection: close\r\n\r\n<html>".to_vec()
        })
        .await;
        match send_to(&announced).await {
            SendOutcome::Transient { detail, .. } => {
                assert!(detail.contains("Content-Length 268435456"), "{detail}")
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

    /// A keep-alive HTTP/1.1 server answering every request with a stored reading; counts
    /// the requests of each connection it accepted, in the order accepted.
    async fn kept_alive() -> (String, std::sync::Arc<std::sync::Mutex<Vec<usize>>>) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let counts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = counts.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let n = {
                    let mut c = seen.lock().unwrap_or_else(|e| panic!("{e}"));
                    c.push(0);
                    c.len() - 1
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut sock = tokio::io::BufReader::new(sock);
                    loop {
                        let mut length = 0;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            match sock.read_line(&mut line).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) if line == "\r\n" => break,
                                Ok(_) => {}
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0u8; length];
                        if sock.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        seen.lock().unwrap_or_else(|e| panic!("{e}"))[n] += 1;
                        let body = r#"{"id":1,"temperature":1.0}"#;
                        let answer = format!(
                            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if sock.get_mut().write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), counts)
    }

    #[tokio::test]
    async fn a_reading_now_and_then_keeps_one_connection_and_readings_at_once_one_each() {
        let (base, counts) = kept_alive().await;
        let api = Api::new(&base, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
        let token: SecretString = "a.b.c".to_owned().into();
        let reading = serde_json::json!({"temperature": 1.0});
        // Far longer than a lane rests: each send finds the last one's lane and connection.
        for _ in 0..4 {
            assert_eq!(
                api.send_reading(&token, &reading).await,
                SendOutcome::Accepted
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(*counts.lock().unwrap_or_else(|e| panic!("{e}")), vec![4]);
        // Five at once: five lanes, the rested one and four new, each connection carrying
        // its request (none opened to wait idle).
        let sends: Vec<_> = (0..5).map(|_| api.send_reading(&token, &reading)).collect();
        for outcome in futures_util::future::join_all(sends).await {
            assert_eq!(outcome, SendOutcome::Accepted);
        }
        let counts = counts.lock().unwrap_or_else(|e| panic!("{e}")).clone();
        assert_eq!(counts.len(), 5, "{counts:?}");
        assert_eq!(counts.iter().sum::<usize>(), 9, "{counts:?}");
        assert!(
            counts.iter().all(|&n| n > 0),
            "a connection without a request: {counts:?}"
        );
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
