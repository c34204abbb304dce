//! Authentication: the token manager, JWT payload decoding, password sources.

pub mod jwt;
pub mod manager;
pub mod password;

pub use manager::{AuthError, AuthSettings, TokenManager};
