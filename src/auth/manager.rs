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

/// Counters for `login` output, logs and tests.
#[derive(Debug, Default)]
pub struct AuthCounters {
    pub logins: AtomicU64,
    pub login_failures: AtomicU64,
    pub refreshes: AtomicU64,
    pub refresh_failures: AtomicU64,
}

struct State {
    access: Option<Token>,
    refresh: Option<Token>,
    /// Server clock minus device clock, in ms, measured from the last fresh token's `iat`.
    offset_ms: i64,
    login_backoff: Backoff,
    next_login_at: Option<Instant>,
    /// The last failure that was logged, so an unchanged one is not logged again.
    last_failure: Option<String>,
}

pub struct TokenManager {
    api: Api,
    username: Option<String>,
    passwords: Option<PasswordSources>,
    clock: Clock,
    settings: AuthSettings,
    state: Mutex<State>,
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

impl TokenManager {
    pub fn new(
        api: Api,
        username: Option<String>,
        passwords: Option<PasswordSources>,
        clock: Clock,
        settings: AuthSettings,
    ) -> Self {
        let login_backoff = Backoff::new(settings.login_backoff_base, settings.login_backoff_max);
        TokenManager {
            api,
            username,
            passwords,
            clock,
            settings,
            state: Mutex::new(State {
                access: None,
                refresh: None,
                offset_ms: 0,
                login_backoff,
                next_login_at: None,
                last_failure: None,
            }),
            counters: AuthCounters::default(),
        }
    }

    /// A valid access token, renewing it first when it is about to expire.
    pub async fn access_token(&self) -> Result<SecretString, AuthError> {
        let mut st = self.state.lock().await;
        if let Some(access) = &st.access {
            if self.is_fresh(access, st.offset_ms) {
                return Ok(access.secret.clone());
            }
        }
        self.renew(&mut st).await
    }

    /// A protected call answered 401 with `used`: that token is dead. Only the token that
    /// failed is dropped, so many uploads failing with the same token cause one renewal.
    pub async fn reject(&self, used: &SecretString) {
        let mut st = self.state.lock().await;
        if st
            .access
            .as_ref()
            .is_some_and(|a| a.secret.expose_secret() == used.expose_secret())
        {
            tracing::info!("server refused the access token (401): renewing it");
            st.access = None;
        }
    }

    /// How long until the access token should be renewed (zero when there is none).
    pub async fn renew_in(&self) -> Duration {
        let st = self.state.lock().await;
        match &st.access {
            Some(a) => {
                let due_ms = a.claims.exp * 1000 - self.margin(a).as_millis() as i64;
                let server_now = self.clock.now_ms() + st.offset_ms;
                Duration::from_millis(due_ms.saturating_sub(server_now).max(0) as u64)
            }
            None => st
                .next_login_at
                .map(|at| at.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::ZERO),
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
                Ok(_) => self.renew_in().await.max(Duration::from_millis(100)),
                Err(AuthError::Waiting { until, .. }) => until
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(100)),
                Err(AuthError::NoUsername) => return,
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    pub async fn session_info(&self) -> Option<SessionInfo> {
        let st = self.state.lock().await;
        let access = st.access.as_ref()?;
        Some(SessionInfo {
            access_expires_at: crate::reading::format_rfc3339_ms(access.claims.exp * 1000),
            refresh_expires_at: st
                .refresh
                .as_ref()
                .map(|r| crate::reading::format_rfc3339_ms(r.claims.exp * 1000)),
            clock_offset_secs: st.offset_ms as f64 / 1000.0,
        })
    }

    fn margin(&self, token: &Token) -> Duration {
        if let Some(m) = self.settings.refresh_margin {
            return m;
        }
        let lifetime = Duration::from_secs(token.lifetime_secs().unwrap_or(0).max(0) as u64);
        (lifetime / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// The refresh token is renewed by a login well before it expires (a tenth of its
    /// lifetime, at most an hour), so an idle device never holds a dead one.
    fn refresh_margin(&self, token: &Token) -> Duration {
        let lifetime = Duration::from_secs(token.lifetime_secs().unwrap_or(0).max(0) as u64);
        (lifetime / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }

    fn is_fresh(&self, token: &Token, offset_ms: i64) -> bool {
        let server_now = self.clock.now_ms() + offset_ms;
        token.claims.exp * 1000 - self.margin(token).as_millis() as i64 > server_now
    }

    fn refresh_usable(&self, token: &Token, offset_ms: i64) -> bool {
        let server_now = self.clock.now_ms() + offset_ms;
        token.claims.exp * 1000 - self.refresh_margin(token).as_millis() as i64 > server_now
    }

    async fn renew(&self, st: &mut State) -> Result<SecretString, AuthError> {
        let Some(username) = self.username.clone() else {
            return Err(AuthError::NoUsername);
        };
        if let Some(refresh) = st.refresh.clone() {
            if self.refresh_usable(&refresh, st.offset_ms) {
                match self.api.refresh(&refresh.secret).await {
                    Ok(tokens) => {
                        self.counters.refreshes.fetch_add(1, Ordering::Relaxed);
                        match self.install(st, tokens, false) {
                            Ok(access) => {
                                tracing::debug!("access token refreshed");
                                return Ok(access);
                            }
                            Err(e) => {
                                tracing::warn!("refresh answer unusable ({e}); logging in again")
                            }
                        }
                    }
                    Err(CallError::Transient {
                        detail,
                        retry_after,
                        ..
                    }) => {
                        // The old token may already be blacklisted if the answer was lost; the
                        // next attempt will find out (401) and log in.
                        self.counters
                            .refresh_failures
                            .fetch_add(1, Ordering::Relaxed);
                        let wait = retry_after.unwrap_or(self.settings.login_backoff_base);
                        return Err(self.fail(st, format!("token refresh failed: {detail}"), wait));
                    }
                    Err(e) => {
                        self.counters
                            .refresh_failures
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::info!("refresh token refused ({e}); logging in again");
                    }
                }
            } else {
                tracing::info!("refresh token is about to expire; logging in again");
            }
            st.refresh = None;
            st.access = None;
        }
        self.login(st, &username).await
    }

    async fn login(&self, st: &mut State, username: &str) -> Result<SecretString, AuthError> {
        if let Some(at) = st.next_login_at {
            if Instant::now() < at {
                return Err(AuthError::Waiting {
                    until: at,
                    reason: st
                        .last_failure
                        .clone()
                        .unwrap_or_else(|| "login backing off".into()),
                });
            }
        }
        let password = match self.passwords.as_ref().map(|p| p.read()) {
            Some(Ok((password, _source))) => password,
            Some(Err(e)) => {
                let wait = self.login_wait(st);
                return Err(self.fail(st, e.to_string(), wait));
            }
            None => {
                let wait = self.login_wait(st);
                return Err(self.fail(st, PasswordError::None.to_string(), wait));
            }
        };
        match self.api.login(username, &password).await {
            Ok(tokens) => match self.install(st, tokens, true) {
                Ok(access) => {
                    self.counters.logins.fetch_add(1, Ordering::Relaxed);
                    st.login_backoff.reset();
                    st.next_login_at = None;
                    if st.last_failure.take().is_some() {
                        tracing::info!(user = %username, "logged in: recovered");
                    } else {
                        tracing::info!(user = %username, "logged in");
                    }
                    Ok(access)
                }
                Err(e) => {
                    self.counters.login_failures.fetch_add(1, Ordering::Relaxed);
                    let wait = self.login_wait(st);
                    Err(self.fail(st, format!("login answer unusable: {e}"), wait))
                }
            },
            Err(e) => {
                self.counters.login_failures.fetch_add(1, Ordering::Relaxed);
                let reason = match &e {
                    CallError::Unauthorized { detail, .. } => format!(
                        "login refused for user {username:?}: {detail} (check the password and that the account is active)"
                    ),
                    CallError::Refused { status, detail } => {
                        format!("login refused ({status}) for user {username:?}: {detail}")
                    }
                    CallError::Transient { detail, .. } => format!("login failed: {detail}"),
                };
                let mut wait = self.login_wait(st);
                if let CallError::Transient {
                    retry_after: Some(ra),
                    ..
                } = e
                {
                    wait = wait.max(ra);
                }
                Err(self.fail(st, reason, wait))
            }
        }
    }

    /// Equal jitter: at least half the ceiling, so failed logins stay a few a minute at most.
    fn login_wait(&self, st: &mut State) -> Duration {
        let ceiling = st.login_backoff.ceiling();
        let jitter = st.login_backoff.next_wait(None);
        ceiling / 2 + jitter / 2
    }

    /// Records a failure: logged when it differs from the previous one, not at every attempt.
    fn fail(&self, st: &mut State, reason: String, wait: Duration) -> AuthError {
        if st.last_failure.as_deref() != Some(reason.as_str()) {
            tracing::warn!(retry_in = %humantime::format_duration(round_secs(wait)), "{reason}");
            st.last_failure = Some(reason.clone());
        } else {
            tracing::debug!("{reason}");
        }
        let until = Instant::now() + wait;
        st.next_login_at = Some(until);
        AuthError::Waiting { until, reason }
    }

    fn install(
        &self,
        st: &mut State,
        tokens: RawTokens,
        is_login: bool,
    ) -> Result<SecretString, String> {
        let access = Token::parse(tokens.access).map_err(|e| format!("access token: {e}"))?;
        let refresh = match tokens.refresh {
            Some(r) => Some(Token::parse(r).map_err(|e| format!("refresh token: {e}"))?),
            None if is_login => return Err("no refresh token in the login answer".into()),
            // Without rotation the server sends no new refresh token: the old one stays valid.
            None => st.refresh.take(),
        };
        if let Some(iat) = access.claims.iat {
            // iat has one-second resolution: +500 ms centres the estimate.
            let offset = iat * 1000 + 500 - self.clock.now_ms();
            if (offset - st.offset_ms).abs() > 5_000 {
                tracing::info!(
                    offset_secs = offset / 1000,
                    "device clock differs from the server's; token expiry is judged in server time"
                );
            }
            st.offset_ms = offset;
        }
        let secret = access.secret.clone();
        st.access = Some(access);
        st.refresh = refresh;
        st.next_login_at = None;
        Ok(secret)
    }
}
