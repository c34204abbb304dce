//! The token manager: one access token shared by every upload, renewed before it expires
//! (judged in server time), refreshed with the rotated refresh token, and replaced by a
//! fresh login when the server refuses a refresh. One mutex held across the HTTP call makes
//! renewal single-flight: a refresh token is never sent twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::jwt::Token;
use super::password::{PasswordError, PasswordSources};
use crate::api::{Api, CallError, RawTokens};
use crate::backoff::Backoff;
use crate::clock::Clock;

#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Renew this long before the access token expires; derived from its lifetime when `None`.
    pub refresh_margin: Option<Duration>,
    pub login_backoff_base: Duration,
    pub login_backoff_max: Duration,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("api.username is not set: readings stay queued until it is")]
    NoUsername,
    /// No usable token right now; the caller should wait until `until` before asking again.
    #[error("not logged in ({reason}); next attempt in {}", humantime::format_duration(round_secs(.until.saturating_duration_since(Instant::now()))))]
    Waiting { until: Instant, reason: String },
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// Token activity since start, shown by `queue stats` (the guide: monitor refreshes).
#[derive(Debug, Default)]
pub struct AuthCounters {
    pub logins: AtomicU64,
    pub login_failures: AtomicU64,
    pub refreshes: AtomicU64,
    pub refresh_failures: AtomicU64,
}

/// A token as held, with the moments (monotonic) at which it is due for renewal and at
/// which it dies. They are computed once, when the token arrives, from its own lifetime
/// (`exp - iat`): a later step of the wall clock (NTP syncing a Pi that booted offline)
/// cannot make a held token look fresher or staler than it is.
struct Held {
    token: Token,
    renew_at: Instant,
    expires_at: Instant,
}

/// Why a renewal failed, as the backoff and the log need it.
struct Failure {
    reason: String,
    /// The server's `Retry-After`, when it sent one.
    retry_after: Option<Duration>,
    /// The server's HTTP status when it answered (journal field `STATUS`).
    status: Option<u16>,
}

impl Failure {
    /// A failure the server said nothing about (not sent, or its answer unusable).
    fn local(reason: String) -> Failure {
        Failure {
            reason,
            retry_after: None,
            status: None,
        }
    }
}

struct State {
    access: Option<Held>,
    refresh: Option<Held>,
    /// Server clock minus device clock, in ms, measured from the last fresh token's `iat`.
    /// Shown by `login` and logged; no deadline depends on it after a token is installed.
    offset_ms: i64,
    /// One backoff for every renewal, refresh or login: failures of either kind grow it.
    backoff: Backoff,
    /// No renewal (refresh or login) starts before this.
    next_attempt_at: Option<Instant>,
    /// The last failure that was logged, so an unchanged one is not logged again.
    last_failure: Option<String>,
    /// Whether a token due for renewal on arrival was reported (once is enough).
    told_due_on_arrival: bool,
}

pub struct TokenManager {
    api: Api,
    username: Option<String>,
    /// Replaced on SIGHUP (`set_passwords`); read at every login.
    passwords: std::sync::Mutex<Option<PasswordSources>>,
    clock: Clock,
    settings: AuthSettings,
    state: Mutex<State>,
    /// Woken when a login may now succeed sooner than its backoff said (new passwords),
    /// so callers told to wait can ask again.
    retry_now: tokio::sync::Notify,
    pub counters: AuthCounters,
}

/// What `login` prints: expiry times in the server's clock and the measured offset.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    pub access_expires_at: String,
    pub refresh_expires_at: Option<String>,
    /// Server clock minus device clock, in seconds (±1 s: `iat` has a one-second resolution).
    pub clock_offset_secs: f64,
}

impl AuthCounters {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "logins": self.logins.load(Ordering::Relaxed),
            "login_failures": self.login_failures.load(Ordering::Relaxed),
            "refreshes": self.refreshes.load(Ordering::Relaxed),
            "refresh_failures": self.refresh_failures.load(Ordering::Relaxed),
        })
    }
}

/// `iat` has a one-second resolution: a token was issued on average half a second after
/// it, so its remaining life on arrival is taken as `exp - iat - 0.5 s`.
const IAT_CENTRE: Duration = Duration::from_millis(500);
/// A token is not sent in its last second: it could expire on the way.
const EXPIRY_SLACK: Duration = Duration::from_secs(1);
/// Bound on a measured clock offset (a thousand years): `iat` may hold any value.
const MAX_OFFSET_MS: i64 = 1000 * 365 * 86_400_000;

impl TokenManager {
    pub fn new(
        api: Api,
        username: Option<String>,
        passwords: Option<PasswordSources>,
        clock: Clock,
        settings: AuthSettings,
    ) -> Self {
        let backoff = Backoff::new(settings.login_backoff_base, settings.login_backoff_max);
        TokenManager {
            api,
            username,
            passwords: std::sync::Mutex::new(passwords),
            clock,
            settings,
            state: Mutex::new(State {
                access: None,
                refresh: None,
                offset_ms: 0,
                backoff,
                next_attempt_at: None,
                last_failure: None,
                told_due_on_arrival: false,
            }),
            retry_now: tokio::sync::Notify::new(),
            counters: AuthCounters::default(),
        }
    }

    /// A valid access token, renewing it first when it is about to expire.
    pub async fn access_token(&self) -> Result<SecretString, AuthError> {
        let mut st = self.state.lock().await;
        if let Some(access) = &st.access {
            if Instant::now() < access.renew_at {
                return Ok(access.token.secret.clone());
            }
        }
        let renewed = self.renew(&mut st).await;
        match (&renewed, &st.access) {
            // Renewal failed or waits for its backoff: a due token is not dead, so uploads
            // go on with it meanwhile.
            (Err(_), Some(access)) if Instant::now() < access.expires_at => {
                Ok(access.token.secret.clone())
            }
            _ => renewed,
        }
    }

    /// New password sources (SIGHUP). After failed renewals the next one starts at once,
    /// not at the end of the backoff the old password earned: a corrected password is
    /// used at the next login.
    pub async fn set_passwords(&self, passwords: Option<PasswordSources>) {
        *self
            .passwords
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = passwords;
        let mut st = self.state.lock().await;
        if st.last_failure.is_some() {
            st.backoff.reset();
            st.next_attempt_at = None;
            self.retry_now.notify_waiters();
        }
    }

    /// Completes when a wait this manager asked for ([`AuthError::Waiting`]) is over
    /// early: the password sources were replaced after a failed login.
    pub async fn retry_now(&self) {
        self.retry_now.notified().await;
    }

    /// A protected call answered 401 with `used`: that token is dead. Only the token that
    /// failed is dropped, so many uploads failing with the same token cause one renewal.
    pub async fn reject(&self, used: &SecretString) {
        let mut st = self.state.lock().await;
        if st
            .access
            .as_ref()
            .is_some_and(|a| a.token.secret.expose_secret() == used.expose_secret())
        {
            tracing::info!(
                status = 401,
                "server refused the access token (401): renewing it"
            );
            st.access = None;
        }
    }

    /// How long until the access token should be renewed and a renewal may start (zero
    /// when there is no token and no backoff).
    pub async fn renew_in(&self) -> Duration {
        let st = self.state.lock().await;
        let now = Instant::now();
        let backoff = st
            .next_attempt_at
            .map(|at| at.saturating_duration_since(now))
            .unwrap_or(Duration::ZERO);
        match &st.access {
            Some(a) => a.renew_at.saturating_duration_since(now).max(backoff),
            None => backoff,
        }
    }

    /// Keeps the access token fresh while idle, so an upload after a quiet hour does not
    /// start with a refresh. Runs until `cancel`.
    pub async fn keep_fresh(&self, cancel: tokio_util::sync::CancellationToken) {
        if self.username.is_none() {
            return;
        }
        loop {
            let wait = match self.access_token().await {
                Ok(_) => self.renew_in().await,
                Err(AuthError::Waiting { until, .. }) => {
                    until.saturating_duration_since(Instant::now())
                }
                Err(AuthError::NoUsername) => return,
            };
            // Never sleep past one token lifetime, whatever a deadline says: a plan that
            // went wrong is corrected within a lifetime.
            let wait = wait
                .min(self.access_lifetime().await)
                .max(Duration::from_millis(100));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The held access token's lifetime as issued; a minute when unknown.
    async fn access_lifetime(&self) -> Duration {
        let st = self.state.lock().await;
        st.access
            .as_ref()
            .and_then(|a| a.token.lifetime())
            .filter(|l| !l.is_zero())
            .unwrap_or(Duration::from_secs(60))
    }

    pub async fn session_info(&self) -> Option<SessionInfo> {
        let st = self.state.lock().await;
        let access = st.access.as_ref()?;
        Some(SessionInfo {
            access_expires_at: crate::reading::format_rfc3339_ms(access.token.expires_at_ms()),
            refresh_expires_at: st
                .refresh
                .as_ref()
                .map(|r| crate::reading::format_rfc3339_ms(r.token.expires_at_ms())),
            clock_offset_secs: st.offset_ms as f64 / 1000.0,
        })
    }

    fn margin(&self, token: &Token) -> Duration {
        let lifetime = token.lifetime().unwrap_or_default();
        let margin = self.settings.refresh_margin.unwrap_or_else(|| {
            (lifetime / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
        });
        // A margin as long as the lifetime would renew at every call: a refresh storm.
        if lifetime.is_zero() {
            margin
        } else {
            margin.min(lifetime / 2)
        }
    }

    /// The refresh token is renewed by a login well before it expires (a tenth of its
    /// lifetime, at most an hour), so an idle device never holds a dead one.
    fn refresh_margin(&self, token: &Token) -> Duration {
        let lifetime = token.lifetime().unwrap_or_default();
        (lifetime / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }

    /// Plans a token that has just arrived: due `margin` before its end, dead a second
    /// before it. Its remaining life is its own lifetime when it carries `iat` (no clock
    /// involved); otherwise `exp` against the device clock corrected by the offset.
    fn hold(&self, token: Token, margin: Duration, offset_ms: i64) -> Held {
        let now = Instant::now();
        // Both are at most a year (jwt::MAX_PLANNED_LIFE): the additions cannot overflow.
        let remaining = match token.lifetime() {
            Some(l) => l.saturating_sub(IAT_CENTRE),
            None => token.remaining_at(self.clock.now_ms().saturating_add(offset_ms)),
        };
        let at = |d: Duration| now.checked_add(d).unwrap_or(now);
        Held {
            token,
            renew_at: at(remaining.saturating_sub(margin)),
            expires_at: at(remaining.saturating_sub(EXPIRY_SLACK)),
        }
    }

    async fn renew(&self, st: &mut State) -> Result<SecretString, AuthError> {
        let Some(username) = self.username.as_deref() else {
            return Err(AuthError::NoUsername);
        };
        // Every renewal, refresh or login, waits for the one backoff deadline: callers
        // queued on the lock behind a failure do not each try again.
        if let Some(at) = st.next_attempt_at {
            if Instant::now() < at {
                return Err(AuthError::Waiting {
                    until: at,
                    reason: st
                        .last_failure
                        .clone()
                        .unwrap_or_else(|| "token renewal backing off".into()),
                });
            }
        }
        // Taken out of the state before it is sent: whatever happens to this call (an
        // error, or this future dropped by a caller that gave up), the token is not sent
        // again unless the request provably never left.
        if let Some(refresh) = st.refresh.take() {
            if Instant::now() < refresh.renew_at {
                let sent_ms = self.clock.now_ms();
                return match self.api.refresh(&refresh.token.secret).await {
                    Ok(tokens) => match self.install(st, tokens, Some(refresh), sent_ms) {
                        Ok(access) => {
                            let n = self.counters.refreshes.fetch_add(1, Ordering::Relaxed) + 1;
                            if st.last_failure.take().is_some() {
                                tracing::info!(refreshes = n, "access token refreshed: recovered");
                            } else {
                                tracing::debug!(refreshes = n, "access token refreshed");
                            }
                            Ok(access)
                        }
                        // The server answered 2xx: it rotated (and blacklisted) the token.
                        Err(e) => Err(self.refresh_failed(
                            st,
                            Failure::local(format!(
                                "token refresh answer unusable ({e}); logging in next"
                            )),
                        )),
                    },
                    Err(CallError::NotSent { detail }) => {
                        // Never reached the server: still unused, kept for the next try.
                        st.refresh = Some(refresh);
                        Err(self.refresh_failed(
                            st,
                            Failure::local(format!("token refresh failed: {detail}")),
                        ))
                    }
                    Err(CallError::Transient {
                        detail,
                        retry_after,
                        status,
                    }) => {
                        // The request may have reached the server, which then blacklisted the
                        // token: it is dropped, and the next renewal is a login (always safe).
                        Err(self.refresh_failed(
                            st,
                            Failure {
                                reason: format!("token refresh failed: {detail}; logging in next"),
                                retry_after,
                                status,
                            },
                        ))
                    }
                    Err(e @ (CallError::Unauthorized { .. } | CallError::Refused { .. })) => {
                        self.counters
                            .refresh_failures
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::info!("refresh token refused ({e}); logging in again");
                        st.access = None;
                        self.login(st, username).await
                    }
                };
            }
            tracing::info!("refresh token is about to expire; logging in again");
        }
        self.login(st, username).await
    }

    fn refresh_failed(&self, st: &mut State, failure: Failure) -> AuthError {
        self.counters
            .refresh_failures
            .fetch_add(1, Ordering::Relaxed);
        self.fail(st, failure)
    }

    async fn login(&self, st: &mut State, username: &str) -> Result<SecretString, AuthError> {
        let sources = self
            .passwords
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let password = match sources.as_ref().map(|p| p.read()) {
            Some(Ok((password, _source))) => password,
            Some(Err(e)) => return Err(self.fail(st, Failure::local(e.to_string()))),
            None => return Err(self.fail(st, Failure::local(PasswordError::None.to_string()))),
        };
        let sent_ms = self.clock.now_ms();
        match self.api.login(username, &password).await {
            Ok(tokens) => match self.install(st, tokens, None, sent_ms) {
                Ok(access) => {
                    self.counters.logins.fetch_add(1, Ordering::Relaxed);
                    if st.last_failure.take().is_some() {
                        tracing::info!(user = %username, "logged in: recovered");
                    } else {
                        tracing::info!(user = %username, "logged in");
                    }
                    Ok(access)
                }
                Err(e) => {
                    self.counters.login_failures.fetch_add(1, Ordering::Relaxed);
                    Err(self.fail(st, Failure::local(format!("login answer unusable: {e}"))))
                }
            },
            Err(e) => {
                self.counters.login_failures.fetch_add(1, Ordering::Relaxed);
                let failure = match e {
                    CallError::Unauthorized { detail, .. } => Failure {
                        reason: format!(
                            "login refused for user {username:?}: {detail} (check the password \
                             and that the account is active)"
                        ),
                        retry_after: None,
                        status: Some(401),
                    },
                    CallError::Refused { status, detail } => Failure {
                        reason: format!("login refused ({status}) for user {username:?}: {detail}"),
                        retry_after: None,
                        status: Some(status),
                    },
                    CallError::Transient {
                        detail,
                        retry_after,
                        status,
                    } => Failure {
                        reason: format!("login failed: {detail}"),
                        retry_after,
                        status,
                    },
                    CallError::NotSent { detail } => {
                        Failure::local(format!("login failed: {detail}"))
                    }
                };
                Err(self.fail(st, failure))
            }
        }
    }

    /// The wait after a failed renewal: the backoff's ceiling with equal jitter (at least
    /// half the ceiling, so failed logins stay a few a minute at most), and at least the
    /// server's `Retry-After` capped at `login_backoff_max` (a proxy asking for an hour
    /// must not park the gateway for an hour).
    fn backoff_wait(&self, st: &mut State, retry_after: Option<Duration>) -> Duration {
        let ceiling = st.backoff.ceiling();
        let jitter = st.backoff.next_wait(None);
        let wait = ceiling / 2 + jitter / 2;
        match retry_after {
            Some(ra) => wait.max(ra.min(self.settings.login_backoff_max)),
            None => wait,
        }
    }

    /// Records a failed renewal: sets the backoff deadline every renewal waits for, and
    /// logs the failure when it differs from the previous one, not at every attempt.
    fn fail(&self, st: &mut State, failure: Failure) -> AuthError {
        let Failure {
            reason,
            retry_after,
            status,
        } = failure;
        let wait = self.backoff_wait(st, retry_after);
        if st.last_failure.as_deref() != Some(reason.as_str()) {
            tracing::warn!(
                retry_in = %humantime::format_duration(round_secs(wait)),
                status,
                "{reason}"
            );
            st.last_failure = Some(reason.clone());
        } else {
            tracing::debug!("{reason}");
        }
        let until = Instant::now() + wait;
        st.next_attempt_at = Some(until);
        AuthError::Waiting { until, reason }
    }

    /// Installs the tokens of a login (`used_refresh` None) or of a refresh whose request
    /// left at `sent_ms` (wall clock), measures the clock offset, and ends any backoff.
    fn install(
        &self,
        st: &mut State,
        tokens: RawTokens,
        used_refresh: Option<Held>,
        sent_ms: i64,
    ) -> Result<SecretString, String> {
        let access = Token::parse(tokens.access).map_err(|e| format!("access token: {e}"))?;
        let refresh = match (tokens.refresh, used_refresh) {
            (Some(r), _) => Some(Token::parse(r).map_err(|e| format!("refresh token: {e}"))?),
            (None, None) => return Err("no refresh token in the login answer".into()),
            // Without rotation the server sends no new refresh token: the old one stays
            // valid (it was not blacklisted), with the deadlines planned when it arrived.
            (None, Some(old)) => {
                st.refresh = Some(old);
                None
            }
        };
        if let Some(iat) = access.claims.iat {
            // iat has one-second resolution: +500 ms centres the estimate. The server's
            // claims may hold any value: saturated, then kept within a thousand years.
            let received_ms = self.clock.now_ms();
            let offset = iat
                .saturating_mul(1000)
                .saturating_add(IAT_CENTRE.as_millis() as i64)
                .saturating_sub(received_ms)
                .clamp(-MAX_OFFSET_MS, MAX_OFFSET_MS);
            if (offset - st.offset_ms).abs() > 5_000 {
                tracing::info!(
                    offset_secs = offset / 1000,
                    "device clock differs from the server's; token expiry is judged in server time"
                );
            }
            st.offset_ms = offset;
            // The server's clock vouches for ours (or not): readings held because the
            // kernel has not synchronised the clock yet may then be dated (clock.rs).
            // Judged against the whole round trip: a slow answer is no wrong clock.
            self.clock
                .trust()
                .note_server_clock(iat, sent_ms, received_ms);
        }
        if let Some(r) = refresh {
            let margin = self.refresh_margin(&r);
            st.refresh = Some(self.hold(r, margin, st.offset_ms));
        }
        let margin = self.margin(&access);
        let lifetime = access.lifetime_secs();
        let held = self.hold(access, margin, st.offset_ms);
        let now = Instant::now();
        // A token dead on arrival (`exp <= iat`, a lifetime of a second, an `exp` already
        // past) is an unusable answer: the caller backs off, rather than renewing at
        // every upload.
        if held.expires_at <= now {
            return Err(format!(
                "the access token is dead on arrival (exp - iat = {}); check the server's \
                 ACCESS_TOKEN_LIFETIME (minutes, not seconds) and clock",
                lifetime.map_or("unknown".into(), |l| format!("{l} s"))
            ));
        }
        let secret = held.token.secret.clone();
        let due_on_arrival = held.renew_at <= now;
        st.access = Some(held);
        if due_on_arrival {
            // Usable but already due (a refresh_margin longer than its life): renewals
            // wait for the growing backoff instead of going out at every call.
            let wait = self.backoff_wait(st, None);
            if !std::mem::replace(&mut st.told_due_on_arrival, true) {
                tracing::warn!(
                    retry_in = %humantime::format_duration(round_secs(wait)),
                    "the access token is due for renewal on arrival (api.refresh_margin \
                     exceeds its life): renewing at the login backoff's pace"
                );
            }
            st.next_attempt_at = Some(now + wait);
        } else {
            st.backoff.reset();
            st.next_attempt_at = None;
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI64;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the fake server does to the next refresh (after consuming its token, as a
    /// real server whose answer is lost would) or to the next login.
    #[derive(Clone, Copy, Debug)]
    enum Fault {
        /// 503 with `Retry-After: <secs>`.
        Unavailable(u64),
        /// 200 with a proxy's HTML page.
        BadBody,
        /// Answers after this long (longer than the client's timeout).
        Slow(Duration),
    }

    /// A tiny SimpleJWT stand-in: issues tokens in ITS clock, rotates refresh tokens and
    /// refuses a refresh token used twice, counting every call.
    #[derive(Default)]
    struct FakeServer {
        logins: AtomicU64,
        refreshes: AtomicU64,
        refused: AtomicU64,
        serial: AtomicU64,
        /// The refresh token currently valid (rotation: only the newest).
        valid_refresh: std::sync::Mutex<String>,
        /// Every refresh token received, in order.
        received_refresh: std::sync::Mutex<Vec<String>>,
        refresh_fault: std::sync::Mutex<Option<Fault>>,
        login_fault: std::sync::Mutex<Option<Fault>>,
        access_lifetime_s: AtomicI64,
        /// The payload of every access token when set (claims of any value).
        access_claims: std::sync::Mutex<Option<serde_json::Value>>,
        requests: AtomicU64,
    }

    impl FakeServer {
        fn issue(&self, kind: &str, lifetime: i64) -> String {
            let now = crate::reading::unix_ms(std::time::SystemTime::now()) / 1000;
            let jti = self.serial.fetch_add(1, Ordering::SeqCst).to_string();
            secrecy::ExposeSecret::expose_secret(&super::super::jwt::make_token(
                now + lifetime,
                now,
                kind,
                &jti,
            ))
            .to_owned()
        }

        /// Every refresh token received more than once.
        fn reused_refresh(&self) -> Vec<String> {
            let received = lock(&self.received_refresh);
            let mut seen = std::collections::HashSet::new();
            received
                .iter()
                .filter(|t| !seen.insert(t.as_str()))
                .cloned()
                .collect()
        }

        /// Status, extra header lines, body, and a delay before answering.
        fn answer(&self, path: &str, body: &str) -> (u16, String, String, Duration) {
            self.requests.fetch_add(1, Ordering::SeqCst);
            let access = match lock(&self.access_claims).clone() {
                Some(claims) => {
                    use base64::Engine;
                    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
                    format!(
                        "{}.{}.c2ln",
                        b64(br#"{"alg":"HS256"}"#),
                        b64(claims.to_string().as_bytes())
                    )
                }
                None => self.issue("access", self.access_lifetime_s.load(Ordering::SeqCst)),
            };
            let refresh = self.issue("refresh", 3600);
            let mut valid = lock(&self.valid_refresh);
            let fault = if path == "/api/token/" {
                let fault = lock(&self.login_fault).take();
                if fault.is_none() {
                    self.logins.fetch_add(1, Ordering::SeqCst);
                }
                fault
            } else {
                let sent = serde_json::from_str::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v["refresh"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                lock(&self.received_refresh).push(sent.clone());
                if valid.is_empty() || sent != *valid {
                    self.refused.fetch_add(1, Ordering::SeqCst);
                    let refusal = r#"{"detail":"Token is blacklisted","code":"token_not_valid"}"#;
                    return (401, String::new(), refusal.into(), Duration::ZERO);
                }
                // Rotation + blacklist: the token is spent before anything can go wrong.
                valid.clear();
                let fault = lock(&self.refresh_fault).take();
                if fault.is_none() {
                    self.refreshes.fetch_add(1, Ordering::SeqCst);
                }
                fault
            };
            let ok = format!(r#"{{"access":"{access}","refresh":"{refresh}"}}"#);
            match fault {
                None => {
                    *valid = refresh;
                    (200, String::new(), ok, Duration::ZERO)
                }
                Some(Fault::Unavailable(secs)) => (
                    503,
                    format!("retry-after: {secs}\r\n"),
                    "<html>503</html>".into(),
                    Duration::ZERO,
                ),
                Some(Fault::BadBody) => {
                    (200, String::new(), "<html>ok</html>".into(), Duration::ZERO)
                }
                Some(Fault::Slow(d)) => {
                    *valid = refresh;
                    (200, String::new(), ok, d)
                }
            }
        }
    }

    fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn serve(server: Arc<FakeServer>) -> String {
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let url = format!(
            "http://{}",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some(head_end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let len = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() < head_end + 4 + len {
                            continue;
                        }
                        let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                        let body = text[head_end + 4..].to_owned();
                        // Slow answers widen the window in which callers could race.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let (status, headers, answer, delay) = server.answer(&path, &body);
                        tokio::time::sleep(delay).await;
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        let _ = sock.write_all(reply.as_bytes()).await;
                        buf.clear();
                    }
                });
            }
        });
        url
    }

    /// A fake server serving access tokens of `access_lifetime_s`, its URL, and a
    /// directory for the manager's password file.
    struct Fixture {
        server: Arc<FakeServer>,
        url: String,
        dir: tempfile::TempDir,
    }

    async fn fixture(access_lifetime_s: i64) -> Fixture {
        let server = Arc::new(FakeServer::default());
        server
            .access_lifetime_s
            .store(access_lifetime_s, Ordering::SeqCst);
        let url = serve(server.clone()).await;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        Fixture { server, url, dir }
    }

    /// `n` callers asking for a token at once: whether each got one.
    async fn concurrent_access(m: &Arc<TokenManager>, n: usize) -> Vec<bool> {
        let calls: Vec<_> = (0..n)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move { m.access_token().await.is_ok() })
            })
            .collect();
        let mut got = Vec::with_capacity(n);
        for c in calls {
            got.push(c.await.unwrap_or_else(|e| panic!("caller panicked: {e}")));
        }
        got
    }

    fn manager(url: &str, clock: Clock, dir: &std::path::Path) -> TokenManager {
        manager_with(
            url,
            clock,
            dir,
            Duration::from_millis(100),
            Duration::from_secs(1),
        )
    }

    fn manager_with(
        url: &str,
        clock: Clock,
        dir: &std::path::Path,
        backoff_base: Duration,
        backoff_max: Duration,
    ) -> TokenManager {
        let pw = dir.join("pw");
        let _ = std::fs::write(&pw, "secret");
        let _ = std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600));
        let mut sources = PasswordSources::new("dev", Some(pw));
        sources.credentials_dir = None;
        sources.use_keyring = false;
        TokenManager::new(
            api(url, Duration::from_secs(5)),
            Some("dev".into()),
            Some(sources),
            clock,
            AuthSettings {
                refresh_margin: None,
                login_backoff_base: backoff_base,
                login_backoff_max: backoff_max,
            },
        )
    }

    fn api(url: &str, timeout: Duration) -> Api {
        match Api::new(url, timeout) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    /// A URL nothing listens on: connections are refused.
    async fn closed_port_url() -> String {
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let addr = listener.local_addr().map(|a| a.to_string());
        drop(listener);
        format!("http://{}", addr.unwrap_or_default())
    }

    /// Logs in, then drops the access token so that the next call renews.
    async fn logged_in_and_due(m: &TokenManager) {
        let first = m.access_token().await.unwrap_or_else(|e| panic!("{e}"));
        m.reject(&first).await;
    }

    /// Waits out the backoff deadline of the last failure.
    async fn wait_backoff(m: &TokenManager) {
        let at = m.state.lock().await.next_attempt_at;
        if let Some(at) = at {
            tokio::time::sleep_until(at + Duration::from_millis(10)).await;
        }
    }

    /// Log lines written while the guard lives (this thread only).
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn install(&self) -> tracing::subscriber::DefaultGuard {
            let writer = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .finish();
            tracing::subscriber::set_default(subscriber)
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&lock(&self.0)).into_owned()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_at_expiry_cause_one_refresh() {
        let Fixture { server, url, dir } = fixture(2).await;
        let m = Arc::new(manager(&url, Clock::system(), dir.path()));
        assert!(m.access_token().await.is_ok());
        // Lifetime 2 s, margin 1 s: after 1.1 s every caller finds the token due.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(concurrent_access(&m, 50).await, vec![true; 50]);
        assert_eq!(server.logins.load(Ordering::SeqCst), 1);
        assert_eq!(server.refreshes.load(Ordering::SeqCst), 1);
        assert_eq!(server.refused.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn access_tokens_with_any_times_neither_panic_nor_renew_at_every_call() {
        let now = crate::reading::unix_ms(std::time::SystemTime::now()) / 1000;
        let claims = |exp: i64, iat: Option<i64>| match iat {
            Some(iat) => serde_json::json!({"token_type": "access", "exp": exp, "iat": iat}),
            None => serde_json::json!({"token_type": "access", "exp": exp}),
        };
        for (payload, margin) in [
            // exp - iat overflows; a lifetime near i64::MAX (Instant + Duration overflow).
            (claims(i64::MAX, Some(i64::MIN)), None),
            (claims(i64::MIN, Some(i64::MAX)), None),
            (claims(i64::MAX, Some(0)), None),
            (claims(i64::MAX, Some(now)), None),
            (claims(i64::MAX, None), None),
            // Dead on arrival: exp <= iat, a one-second life, an exp long past.
            (claims(now, Some(now)), None),
            (claims(now - 60, Some(now)), None),
            (claims(now + 1, Some(now)), None),
            (claims(now - 60, None), None),
            // Usable but due on arrival: a margin longer than a life with no iat.
            (claims(now + 3, None), Some(Duration::from_secs(3600))),
        ] {
            let Fixture { server, url, dir } = fixture(0).await;
            *lock(&server.access_claims) = Some(payload.clone());
            let mut m = manager(&url, Clock::system(), dir.path());
            m.settings.refresh_margin = margin;
            for _ in 0..50 {
                let _ = m.access_token().await;
            }
            let _ = m.session_info().await;
            let _ = m.renew_in().await;
            assert_eq!(
                server.requests.load(Ordering::SeqCst),
                1,
                "{payload}: a request per call"
            );
        }
    }

    #[tokio::test]
    async fn a_device_clock_years_off_neither_loops_nor_uses_expired_tokens() {
        let year_ms = 365 * 86_400_000;
        for skew in [year_ms, -year_ms] {
            let Fixture { server, url, dir } = fixture(60).await;
            let m = manager(&url, Clock::with_skew_ms(skew), dir.path());
            for _ in 0..100 {
                assert!(m.access_token().await.is_ok());
            }
            assert_eq!(server.logins.load(Ordering::SeqCst), 1, "skew {skew}");
            assert_eq!(
                server.refreshes.load(Ordering::SeqCst),
                0,
                "skew {skew}: refresh storm"
            );
            let offset = m
                .session_info()
                .await
                .map(|s| s.clock_offset_secs)
                .unwrap_or(0.0);
            assert!(
                (offset + skew as f64 / 1000.0).abs() < 5.0,
                "offset {offset} for skew {skew}"
            );
            // Renewal is planned in server time: due in about lifetime - margin.
            let due = m.renew_in().await;
            assert!(
                due > Duration::from_secs(40) && due <= Duration::from_secs(60),
                "{due:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_refused_refresh_leads_to_a_fresh_login_and_a_rejected_token_is_renewed_once() {
        let Fixture { server, url, dir } = fixture(60).await;
        let m = manager(&url, Clock::system(), dir.path());
        let first = m.access_token().await.unwrap_or_else(|e| panic!("{e}"));
        // The server blacklists everything (logout, admin action).
        lock(&server.valid_refresh).clear();
        m.reject(&first).await;
        m.reject(&first).await;
        assert!(m.access_token().await.is_ok());
        assert_eq!(server.refused.load(Ordering::SeqCst), 1);
        assert_eq!(server.logins.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refresh_that_may_have_reached_the_server_is_never_sent_again() {
        // A 5xx, a 2xx that is not the contract's JSON, and a timeout: each time the
        // server already spent (blacklisted) the token.
        for fault in [
            Fault::Unavailable(0),
            Fault::BadBody,
            Fault::Slow(Duration::from_secs(2)),
        ] {
            let Fixture { server, url, dir } = fixture(60).await;
            let mut m = manager(&url, Clock::system(), dir.path());
            logged_in_and_due(&m).await;
            // Only the faulty refresh gets a short timeout: the logins around it must not
            // depend on the machine answering within it (qemu-user on a loaded box).
            let generous = std::mem::replace(&mut m.api, api(&url, Duration::from_millis(500)));
            *lock(&server.refresh_fault) = Some(fault);
            assert!(m.access_token().await.is_err(), "{fault:?}");
            assert!(
                m.state.lock().await.refresh.is_none(),
                "{fault:?}: token kept"
            );
            m.api = generous;
            wait_backoff(&m).await;
            assert!(m.access_token().await.is_ok(), "{fault:?}");
            assert_eq!(server.reused_refresh(), Vec::<String>::new(), "{fault:?}");
            assert_eq!(server.refused.load(Ordering::SeqCst), 0, "{fault:?}");
            assert_eq!(server.logins.load(Ordering::SeqCst), 2, "{fault:?}");
        }
    }

    #[tokio::test]
    async fn a_refresh_that_never_left_keeps_its_token_and_its_success_ends_the_failure() {
        let Fixture { server, url, dir } = fixture(60).await;
        let mut m = manager(&url, Clock::system(), dir.path());
        let log = Captured::default();
        let _guard = log.install();
        logged_in_and_due(&m).await;
        m.api = api(&closed_port_url().await, Duration::from_secs(5));
        assert!(m.access_token().await.is_err());
        {
            let st = m.state.lock().await;
            assert!(st.refresh.is_some(), "an unsent refresh token was dropped");
            assert!(st.last_failure.is_some());
        }
        m.api = api(&url, Duration::from_secs(5));
        wait_backoff(&m).await;
        assert!(m.access_token().await.is_ok());
        assert_eq!(server.refreshes.load(Ordering::SeqCst), 1);
        assert_eq!(server.logins.load(Ordering::SeqCst), 1);
        let st = m.state.lock().await;
        assert!(
            st.last_failure.is_none(),
            "a refresh did not clear the failure"
        );
        assert!(st.next_attempt_at.is_none());
        drop(st);
        let text = log.text();
        assert!(text.contains("access token refreshed: recovered"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_queued_behind_a_failed_refresh_wait_for_the_backoff() {
        let Fixture { server, url, dir } = fixture(60).await;
        // A first wait of 2-4 s: every caller below arrives within it.
        let m = Arc::new(manager_with(
            &url,
            Clock::system(),
            dir.path(),
            Duration::from_secs(4),
            Duration::from_secs(8),
        ));
        logged_in_and_due(&m).await;
        *lock(&server.refresh_fault) = Some(Fault::Unavailable(0));
        assert_eq!(concurrent_access(&m, 20).await, vec![false; 20]);
        // One refresh went out (and failed); nobody refreshed or logged in after it.
        assert_eq!(server.requests.load(Ordering::SeqCst), 2);
        assert!(m.renew_in().await >= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn renewal_failures_back_off_with_growth_and_retry_after_is_capped() {
        let Fixture { server, url, dir } = fixture(60).await;
        let m = manager(&url, Clock::system(), dir.path());
        logged_in_and_due(&m).await;
        // A failed refresh, then failed logins: one backoff, growing (base 100 ms, cap 1 s,
        // equal jitter: the k-th wait lies in [c/2, c] with c = min(100 ms * 2^k, 1 s)).
        *lock(&server.refresh_fault) = Some(Fault::Unavailable(0));
        let mut ceiling = Duration::from_millis(100);
        for k in 0..6 {
            if k > 0 {
                *lock(&server.login_fault) = Some(Fault::Unavailable(0));
            }
            let before = Instant::now();
            let wait = match m.access_token().await {
                Err(AuthError::Waiting { until, .. }) => until - before,
                other => panic!("attempt {k}: {other:?}"),
            };
            // The request itself takes a few ms (the fake answers after 20 ms).
            assert!(
                wait >= ceiling / 2 && wait <= ceiling + Duration::from_millis(500),
                "attempt {k}: waits {wait:?}, ceiling {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(Duration::from_secs(1));
            wait_backoff(&m).await;
        }
        // A server asking for an hour is heard for at most login_backoff_max.
        *lock(&server.login_fault) = Some(Fault::Unavailable(3600));
        let before = Instant::now();
        match m.access_token().await {
            Err(AuthError::Waiting { until, .. }) => {
                assert!(
                    until - before <= Duration::from_millis(1500),
                    "{:?}",
                    until - before
                )
            }
            other => panic!("{other:?}"),
        }
        wait_backoff(&m).await;
        assert!(m.access_token().await.is_ok());
        assert_eq!(server.reused_refresh(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_wall_clock_step_after_install_changes_no_deadline() {
        // Forward: NTP sets a clock that was an hour behind. The token is as fresh as it
        // was; the old wall-clock judgement saw it expired and refreshed at once.
        let Fixture { server, url, dir } = fixture(60).await;
        let mut m = manager(&url, Clock::system(), dir.path());
        assert!(m.access_token().await.is_ok());
        m.clock = Clock::with_skew_ms(3_600_000);
        for _ in 0..20 {
            assert!(m.access_token().await.is_ok());
        }
        assert_eq!(
            server.refreshes.load(Ordering::SeqCst),
            0,
            "refreshed after a step"
        );
        assert!(m.renew_in().await <= Duration::from_secs(60));

        // Backward: the token still ages; the old judgement thought it fresh for an hour.
        let Fixture { server, url, .. } = fixture(2).await;
        let mut m = manager(&url, Clock::system(), dir.path());
        assert!(m.access_token().await.is_ok());
        m.clock = Clock::with_skew_ms(-3_600_000);
        assert!(m.renew_in().await <= Duration::from_secs(2));
        // Lifetime 2 s, margin 1 s: due 0.5 s after arrival.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(m.access_token().await.is_ok());
        assert_eq!(
            server.refreshes.load(Ordering::SeqCst),
            1,
            "an aged token was used"
        );
        assert_eq!(server.logins.load(Ordering::SeqCst), 1);
    }
}
