//! Authentication: the token manager, JWT payload decoding, password sources.

pub mod jwt;
pub mod manager;
pub mod password;

pub use manager::{AuthError, AuthSettings, TokenManager};

impl AuthSettings {
    /// The token manager's settings from `[api]`: one place for the daemon and `login`.
    pub fn from_config(config: &crate::config::Config) -> Self {
        AuthSettings {
            refresh_margin: config.api.refresh_margin,
            login_backoff_base: config.api.login_backoff_base,
            login_backoff_max: config.api.login_backoff_max,
        }
    }
}
