//! When to renew a token and how long to wait after a failure. Pure
//! functions of durations, so the policy is tested without clocks.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Renewal starts this far before expiry at most (when the lifetime allows).
const MAX_MARGIN: Duration = Duration::from_secs(30);
/// First wait after a failed token request, before jitter; doubles up to
/// [`MAX_STEP`].
const FIRST_STEP: Duration = Duration::from_millis(500);
const MAX_STEP: Duration = Duration::from_secs(30);
/// The longest wait between failed token requests: a step plus its jitter.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
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

/// The waits between failed token requests: each step (0.5 s doubling to
/// 30 s) plus a random part of it, so many sidecars do not retry in step:
/// 0.5 to 1 s, then 1 to 2 s, ..., at most 30 to 60 s.
pub fn retry_delays() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(FIRST_STEP)
        .with_max_delay(MAX_STEP)
        .with_jitter()
        .without_max_times()
        .build()
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
    fn retry_delays_double_with_jitter_and_are_capped() {
        for _ in 0..20 {
            let waits: Vec<Duration> = retry_delays().take(12).collect();
            for (i, wait) in waits.iter().enumerate() {
                let step = FIRST_STEP.saturating_mul(1 << i).min(MAX_STEP);
                assert!(
                    *wait >= step && *wait < step * 2,
                    "wait {i} is {wait:?}, not within [{step:?}, {:?})",
                    step * 2
                );
                assert!(*wait <= MAX_RETRY_DELAY);
            }
        }
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
