//! When a failed request is sent again, and what Intercom's rate-limit headers say.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngExt;
use reqwest::header::HeaderMap;

const LIMIT_HEADER: &str = "x-ratelimit-limit";
const REMAINING_HEADER: &str = "x-ratelimit-remaining";
const RESET_HEADER: &str = "x-ratelimit-reset";

/// When and how often a failed request is sent again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (the first included) when the answer is a 5xx, a timeout or a network error.
    pub max_attempts: u32,
    /// The first backoff; it doubles per failure up to `max_backoff`, with jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How many 429 answers one event may receive before it is given up.
    pub max_rate_limited: u32,
    /// The longest wait for `X-RateLimit-Reset` (Intercom's windows are 10 s long).
    pub max_rate_limit_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_rate_limited: 10,
            max_rate_limit_wait: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th transient failure (1-based): exponential, capped, with "equal
    /// jitter" (half fixed, half random) so that many senders do not retry in step.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        let full = self
            .initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff);
        let half = full / 2;
        let jitter_nanos = rand::rng().random_range(0..=half.as_nanos().min(u64::MAX as u128) as u64);
        half + Duration::from_nanos(jitter_nanos)
    }

    /// The wait after a 429: until `reset` (Unix seconds) plus a little jitter, at most
    /// `max_rate_limit_wait`; without a reset time, the backoff for `rate_limited` failures.
    pub fn rate_limit_wait(&self, reset: Option<u64>, rate_limited: u32) -> Duration {
        let Some(reset) = reset else {
            return self.backoff(rate_limited).min(self.max_rate_limit_wait);
        };
        let jitter = Duration::from_millis(rand::rng().random_range(0..=100));
        (until_unix(reset) + jitter).min(self.max_rate_limit_wait)
    }
}

/// The time from now until a Unix time in seconds; zero if it has passed.
pub(crate) fn until_unix(seconds: u64) -> Duration {
    (UNIX_EPOCH + Duration::from_secs(seconds))
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

/// Intercom's rate-limit headers on one response; absent or unparsable headers are `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// `X-RateLimit-Limit`: requests allowed per window.
    pub limit: Option<u32>,
    /// `X-RateLimit-Remaining`: requests left in the current window.
    pub remaining: Option<u32>,
    /// `X-RateLimit-Reset`: when the window ends, in Unix seconds.
    pub reset: Option<u64>,
}

impl RateLimit {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        fn number<T: FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
            headers.get(name)?.to_str().ok()?.trim().parse().ok()
        }
        Self {
            limit: number(headers, LIMIT_HEADER),
            remaining: number(headers, REMAINING_HEADER),
            reset: number(headers, RESET_HEADER),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    Never,
    /// A 429: wait for the window to reset (Unix seconds, if the answer said).
    AfterReset(Option<u64>),
    /// A 5xx or a network failure: back off and try again.
    Backoff,
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for _ in 0..50 {
            let first = policy.backoff(1);
            assert!(Duration::from_millis(50) <= first && first <= Duration::from_millis(100));
            let third = policy.backoff(3);
            assert!(Duration::from_millis(200) <= third && third <= Duration::from_millis(400));
            let capped = policy.backoff(30);
            assert!(Duration::from_millis(500) <= capped && capped <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn rate_limit_wait_is_bounded() {
        let policy = RetryPolicy {
            max_rate_limit_wait: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
        let far = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
        assert_eq!(policy.rate_limit_wait(Some(far), 1), Duration::from_secs(2));
        // A reset in the past (clock skew) waits only the jitter.
        assert!(policy.rate_limit_wait(Some(1), 1) <= Duration::from_millis(100));
    }

    #[test]
    fn rate_limit_headers_parse() {
        let mut headers = HeaderMap::new();
        headers.insert(LIMIT_HEADER, HeaderValue::from_static("1667"));
        headers.insert(REMAINING_HEADER, HeaderValue::from_static("12"));
        headers.insert(RESET_HEADER, HeaderValue::from_static("1700000010"));
        assert_eq!(
            RateLimit::from_headers(&headers),
            RateLimit {
                limit: Some(1667),
                remaining: Some(12),
                reset: Some(1_700_000_010)
            }
        );
        headers.insert(RESET_HEADER, HeaderValue::from_static("soon"));
        assert_eq!(RateLimit::from_headers(&headers).reset, None);
    }
}
