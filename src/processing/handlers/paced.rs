//! Posting to someone else's HTTP endpoint from a handler: paced (one process never exceeds the rate the
//! endpoint takes), held by a 429's `Retry-After` (every post of the process waits, not only the refused
//! one), and classed the way the worker retries: 2xx done; 429, 5xx, timeouts and connection errors
//! retryable; any other answer permanent. Shared by the notify and forward handlers, each with its own
//! pace, so that one slow endpoint never holds up another.

use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use crate::plumbing::clock::unix_ms_now;
use crate::processing::handler::{HandlerContext, HandlerError};

/// Posts per notification while the endpoint answers 429 and the waits fit before the deadline.
const MAX_POSTS: usize = 3;

/// The pause after a 429 that names no usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The longest `Retry-After` honoured: an endpoint cannot park notifications for days.
const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(900);

/// The least time a post is given: one that cannot have it before the deadline is not started.
const LEAST_POST_TIME: Duration = Duration::from_secs(1);

pub struct PacedPoster {
    /// What the endpoint is called in errors (`notify webhook`, `forward target 2`); never its URL.
    what: String,
    client: reqwest::Client,
    timeout: Duration,
    /// One post per interval, shared by every record this process handles.
    pace: DefaultDirectRateLimiter,
    /// Set by a 429: no post leaves this process before it.
    not_before: Mutex<Option<Instant>>,
}

impl PacedPoster {
    /// `rate_per_second` must be positive and finite (the configuration checks it).
    pub fn new(what: impl Into<String>, timeout: Duration, rate_per_second: f64) -> Self {
        let client = crate::plumbing::tls::client_builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .user_agent(concat!("intercom-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with rustls builds");
        let interval = Duration::from_secs_f64(1.0 / rate_per_second).max(Duration::from_micros(1));
        let quota = Quota::with_period(interval).expect("a positive interval");
        Self {
            what: what.into(),
            client,
            timeout,
            pace: RateLimiter::direct(quota),
            not_before: Mutex::new(None),
        }
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// How long posts are still held by a 429, if they are.
    fn held_for(&self) -> Option<Duration> {
        let not_before = (*self.not_before.lock().expect("not poisoned"))?;
        let left = not_before.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    fn hold_for(&self, delay: Duration) {
        let until = Instant::now() + delay;
        let mut not_before = self.not_before.lock().expect("not poisoned");
        *not_before = Some(not_before.map_or(until, |held| held.max(until)));
    }

    /// Sends the request `build` makes (again for each post), waiting for its turn and for any hold.
    pub async fn post(
        &self,
        context: &HandlerContext,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(), HandlerError> {
        // A wait is worth it only if the post still has time before the deadline: its timeout, or what
        // is left of the record's time when that is shorter (but never less than a second).
        let deadline = instant_at(context.deadline_ms);
        let least = self.timeout.min(LEAST_POST_TIME);
        let latest_start = deadline.checked_sub(least).unwrap_or_else(Instant::now);
        let what = &self.what;
        let mut posts = 0;
        loop {
            if let Some(held) = self.held_for() {
                if Instant::now() + held > latest_start {
                    return Err(HandlerError::retry_after(
                        format!("{what} is rate limited (429) past the deadline"),
                        held,
                    ));
                }
                tokio::time::sleep(held).await;
                // Another post may have met a 429 in the meantime.
                continue;
            }
            if tokio::time::timeout_at(latest_start, self.pace.until_ready())
                .await
                .is_err()
            {
                return Err(HandlerError::retryable(format!(
                    "no turn to post to the {what} before the deadline"
                )));
            }
            if self.held_for().is_some() {
                continue;
            }
            posts += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let response = build()
                .timeout(self.timeout.min(left.max(least)))
                .send()
                .await
                .map_err(|e| HandlerError::retryable(format!("{what} unreachable: {}", without_url(e))))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                let delay = retry_after(response.headers())
                    .unwrap_or(DEFAULT_RETRY_AFTER)
                    .min(LONGEST_RETRY_AFTER);
                self.hold_for(delay);
                if posts >= MAX_POSTS {
                    return Err(HandlerError::retry_after(
                        format!("{what} answered {status} {posts} times"),
                        delay,
                    ));
                }
                continue;
            }
            return Err(
                if status.is_server_error() || status == reqwest::StatusCode::REQUEST_TIMEOUT {
                    HandlerError::retryable(format!("{what} answered {status}"))
                } else {
                    HandlerError::permanent(format!("{what} answered {status}"))
                },
            );
        }
    }
}

/// `Retry-After` in seconds, or as an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The instant of a Unix-ms deadline (a day away at most, so that "no deadline" does not overflow).
fn instant_at(deadline_ms: i64) -> Instant {
    let left = deadline_ms.saturating_sub(unix_ms_now()).clamp(0, 86_400_000);
    Instant::now() + Duration::from_millis(left as u64)
}

/// reqwest errors name the URL, which may be a secret (incoming webhooks, tokens in a query).
fn without_url(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    error
        .without_url()
        .to_string()
        .replace("error sending request", kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_an_http_date() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, " 7 ".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let in_a_minute = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(61));
        headers.insert(reqwest::header::RETRY_AFTER, in_a_minute.parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(61),
            "{wait:?}"
        );
        headers.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&headers),
            Some(Duration::ZERO),
            "a date past means now"
        );
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }
}
