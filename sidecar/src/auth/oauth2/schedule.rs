//! When to renew a token and how long to wait after a failure. Pure
//! functions of durations, so the policy is tested without clocks.

use std::time::Duration;

/// Renewal starts this far before expiry at most (when the lifetime allows).
const MAX_MARGIN: Duration = Duration::from_secs(30);
/// First wait after a failed token request; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Longest lifetime believed: a token is renewed at least yearly, and an
/// absurd `expires_in` cannot overflow the clock arithmetic.
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// The lifetime of a token: what the endpoint announced, else the
/// datasource's default, at most a year.
pub fn lifetime(announced: Option<Duration>, default: Duration) -> Duration {
    announced.unwrap_or(default).min(MAX_LIFETIME)
}

/// How long after issue a token of `lifetime` is renewed: at 80% of its
/// lifetime, or earlier so that at least 30 s remain, but never before
/// half of it has passed.
pub fn renew_after(lifetime: Duration) -> Duration {
    let margin = (lifetime / 5).max(MAX_MARGIN.min(lifetime / 2));
    lifetime - margin
}

/// How much before its announced expiry a token stops being used, against
/// clock skew and the time a request takes to arrive: a tenth of its
/// lifetime, at most one second.
pub fn skew(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(1))
}

/// Wait before retry number `failures` (1 for the first), with jitter
/// `unit` in [0, 1): between half and all of the exponential step, so many
/// sidecars do not retry in step.
pub fn backoff(failures: u32, unit: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let step = FIRST_BACKOFF.saturating_mul(1 << exponent).min(MAX_BACKOFF);
    step.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn hour_long_token_renews_at_eighty_percent() {
        assert_eq!(renew_after(s(3600)), s(2880));
    }

    #[test]
    fn minute_long_token_keeps_thirty_seconds_of_margin() {
        assert_eq!(renew_after(s(60)), s(30));
        assert_eq!(renew_after(s(100)), s(70));
    }

    #[test]
    fn short_token_renews_at_half_its_life() {
        assert_eq!(renew_after(s(2)), s(1));
        assert_eq!(renew_after(s(3)), Duration::from_millis(1500));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        assert_eq!(backoff(1, 0.999_999).as_millis(), 999);
        assert_eq!(backoff(1, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(3, 0.0), s(2));
        assert_eq!(backoff(30, 0.0), s(30));
        assert!(backoff(30, 1.0) <= s(60));
    }

    #[test]
    fn an_absurd_lifetime_is_capped_at_a_year() {
        let year = s(365 * 24 * 3600);
        assert_eq!(lifetime(Some(Duration::MAX), s(3600)), year);
        assert_eq!(lifetime(Some(s(u64::MAX)), s(3600)), year);
        assert_eq!(lifetime(None, s(3600)), s(3600));
        assert_eq!(lifetime(Some(s(60)), s(3600)), s(60));
        // The deadlines of a capped token are computable.
        let now = std::time::Instant::now();
        let l = lifetime(Some(Duration::MAX), s(1));
        assert!(now.checked_add(l).is_some());
        assert!(renew_after(l) < l);
    }

    #[test]
    fn skew_is_small() {
        assert_eq!(skew(s(3600)), s(1));
        assert_eq!(skew(s(2)), Duration::from_millis(200));
    }
}
