//! Reading a JWT's claims. The tokens are signed by the server with a key we do not have;
//! we only need `exp` and `iat` to plan refreshes, so the payload is decoded, not verified.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Claims {
    /// Expiry, seconds since the epoch, in the server's clock.
    pub exp: i64,
    /// Issued at, seconds since the epoch, in the server's clock.
    pub iat: Option<i64>,
    pub token_type: Option<String>,
    pub jti: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JwtError {
    #[error("token is not a JWT (expected three dot-separated parts)")]
    Shape,
    #[error("token payload is not base64url: {0}")]
    Base64(String),
    #[error("token payload is not the expected JSON: {0}")]
    Json(String),
}

pub fn decode_claims(token: &SecretString) -> Result<Claims, JwtError> {
    let mut parts = token.expose_secret().split('.');
    let (Some(_header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Shape);
    };
    // Some encoders pad; base64url without padding is the JWT norm.
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| JwtError::Base64(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| JwtError::Json(e.to_string()))
}

/// A token with its decoded claims. `Debug` shows the claims, never the token.
#[derive(Clone)]
pub struct Token {
    pub secret: SecretString,
    pub claims: Claims,
}

impl Token {
    pub fn parse(secret: SecretString) -> Result<Token, JwtError> {
        let claims = decode_claims(&secret)?;
        Ok(Token { secret, claims })
    }

    /// Lifetime as issued (`exp - iat`), in seconds; the claims are the server's, of any
    /// value, so the subtraction saturates.
    pub fn lifetime_secs(&self) -> Option<i64> {
        self.claims
            .iat
            .map(|iat| self.claims.exp.saturating_sub(iat))
    }

    /// Lifetime as issued, between zero (`exp <= iat`) and [`MAX_PLANNED_LIFE`].
    pub fn lifetime(&self) -> Option<Duration> {
        self.lifetime_secs()
            .map(|l| Duration::from_secs(l.clamp(0, MAX_PLANNED_LIFE.as_secs() as i64) as u64))
    }

    /// Time left until `exp` when the server's clock reads `server_now_ms`, between zero
    /// and [`MAX_PLANNED_LIFE`].
    pub fn remaining_at(&self, server_now_ms: i64) -> Duration {
        let left = self.expires_at_ms().saturating_sub(server_now_ms);
        Duration::from_millis(left.clamp(0, MAX_PLANNED_LIFE.as_millis() as i64) as u64)
    }

    /// `exp` in milliseconds since the epoch (saturated).
    pub fn expires_at_ms(&self) -> i64 {
        self.claims.exp.saturating_mul(1000)
    }
}

/// A token said to live longer is planned as living this long: renewing it after a year
/// costs one request, and no deadline computed from it can overflow an `Instant`.
pub const MAX_PLANNED_LIFE: Duration = Duration::from_secs(365 * 86_400);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("secret", &"[REDACTED]")
            .field("claims", &self.claims)
            .finish()
    }
}

#[cfg(test)]
pub(crate) fn make_token(exp: i64, iat: i64, token_type: &str, jti: &str) -> SecretString {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"token_type": token_type, "exp": exp, "iat": iat, "jti": jti, "user_id": "1"})
            .to_string(),
    );
    format!("{header}.{payload}.c2lnbmF0dXJl").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_simplejwt_claims() {
        let t = make_token(1_795_475_029, 1_795_474_129, "access", "abc");
        let c = decode_claims(&t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.exp, 1_795_475_029);
        assert_eq!(c.iat, Some(1_795_474_129));
        assert_eq!(c.token_type.as_deref(), Some("access"));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(
            decode_claims(&"abc".to_owned().into()),
            Err(JwtError::Shape)
        );
        assert!(matches!(
            decode_claims(&"a.!!!.c".to_owned().into()),
            Err(JwtError::Base64(_))
        ));
        let not_json = format!("a.{}.c", URL_SAFE_NO_PAD.encode(b"[1]"));
        assert!(matches!(
            decode_claims(&not_json.into()),
            Err(JwtError::Json(_))
        ));
    }

    #[test]
    fn claims_of_any_value_give_bounded_times() {
        let token = |exp, iat| Token::parse(make_token(exp, iat, "access", "x")).ok();
        for (exp, iat, life) in [
            (i64::MAX, i64::MIN, MAX_PLANNED_LIFE),
            (i64::MIN, i64::MAX, Duration::ZERO),
            (i64::MAX, 0, MAX_PLANNED_LIFE),
            (100, 100, Duration::ZERO),
            (160, 100, Duration::from_secs(60)),
        ] {
            let t = token(exp, iat).unwrap_or_else(|| panic!("{exp} {iat}"));
            assert_eq!(t.lifetime(), Some(life), "{exp} {iat}");
            assert!(t.remaining_at(i64::MIN) <= MAX_PLANNED_LIFE);
            assert_eq!(t.remaining_at(i64::MAX), Duration::ZERO);
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let raw = make_token(2, 1, "access", "x");
        let t = Token::parse(raw.clone()).unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{t:?}");
        assert!(!shown.contains(raw.expose_secret()));
        assert!(shown.contains("REDACTED"));
    }
}
