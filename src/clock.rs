//! The device's wall clock, with an optional skew for tests: `PROFILO_GATEWAY_CLOCK_SKEW`
//! (e.g. `+365d`, `-8760h`) shifts what the whole process believes the time is, which is
//! how the tests reproduce a Pi that booted without a real-time clock, without touching
//! the machine's clock.

use std::time::{Duration, SystemTime};

pub const SKEW_ENV: &str = "PROFILO_GATEWAY_CLOCK_SKEW";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    /// Milliseconds added to the real clock.
    skew_ms: i64,
}

impl Clock {
    pub fn system() -> Self {
        Clock { skew_ms: 0 }
    }

    pub fn with_skew_ms(skew_ms: i64) -> Self {
        Clock { skew_ms }
    }

    /// The clock the daemon uses: the system clock, skewed when `PROFILO_GATEWAY_CLOCK_SKEW` is set.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(SKEW_ENV) {
            Ok(v) if !v.trim().is_empty() => {
                parse_skew(&v).map(Clock::with_skew_ms).ok_or_else(|| {
                    format!("{SKEW_ENV}={v:?}: expected a signed duration like +365d or -2h")
                })
            }
            _ => Ok(Clock::system()),
        }
    }

    pub fn now(&self) -> SystemTime {
        let real = SystemTime::now();
        let shift = Duration::from_millis(self.skew_ms.unsigned_abs());
        if self.skew_ms >= 0 {
            real + shift
        } else {
            real.checked_sub(shift).unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }

    pub fn now_ms(&self) -> i64 {
        crate::reading::unix_ms(self.now())
    }
}

fn parse_skew(v: &str) -> Option<i64> {
    let v = v.trim();
    let (sign, rest) = match v.as_bytes().first()? {
        b'-' => (-1, &v[1..]),
        b'+' => (1, &v[1..]),
        _ => (1, v),
    };
    let d = humantime::parse_duration(rest.trim()).ok()?;
    Some(sign * i64::try_from(d.as_millis()).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signed_skews() {
        assert_eq!(parse_skew("+365d"), Some(365 * 86_400_000));
        assert_eq!(parse_skew("-1h"), Some(-3_600_000));
        assert_eq!(parse_skew("90s"), Some(90_000));
        assert_eq!(parse_skew("later"), None);
    }

    #[test]
    fn skew_shifts_now() {
        let real = Clock::system().now_ms();
        let ahead = Clock::with_skew_ms(86_400_000).now_ms();
        assert!((ahead - real - 86_400_000).abs() < 1000);
    }
}
