//! A handler that posts a Slack-compatible `{"text": …}` message for chosen topics (any incoming-webhook
//! URL that takes that shape: Slack, Mattermost, Rocket.Chat, Google Chat via a bridge…).
//!
//! Posts are paced (Slack's incoming webhooks take about one message a second) and a 429's `Retry-After`
//! holds every post of the process, not only the one that was refused.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::plumbing::clock::unix_ms_now;
use crate::processing::handler::{Handler, HandlerContext, HandlerError};
use crate::receiving::notification::Notification;

use super::summary::summarize;

/// New conversations and customer replies.
pub const DEFAULT_NOTIFY_TOPICS: &[&str] = &["conversation.user.created", "conversation.user.replied"];

/// Slack's incoming webhooks accept about one message a second.
pub const DEFAULT_NOTIFY_RATE_PER_SECOND: f64 = 1.0;

/// Posts per notification while the webhook answers 429 and the waits fit before the deadline.
const MAX_POSTS: usize = 3;

/// The pause after a 429 that names no usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The longest `Retry-After` honoured: a webhook cannot park notifications for days.
const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(900);

#[derive(Clone, Debug)]
pub struct NotifySettings {
    /// Incoming-webhook URLs are credentials: whoever has one can post to the channel.
    pub url: SecretString,
    pub topics: Vec<String>,
    pub timeout: Duration,
    /// Posts per second from this process, at most (decimals allowed: 0.5 is one post every 2 s).
    pub rate_per_second: f64,
}

pub struct NotifyHandler {
    settings: NotifySettings,
    client: reqwest::Client,
    /// One post per interval, shared by every record this process handles.
    pace: DefaultDirectRateLimiter,
    /// Set by a 429: no post leaves this process before it.
    not_before: Mutex<Option<Instant>>,
}

impl NotifyHandler {
    /// `settings.rate_per_second` must be positive and finite (the configuration checks it).
    pub fn new(settings: NotifySettings) -> Self {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(3)))
            .build()
            .expect("an HTTP client with rustls builds");
        let interval = Duration::from_secs_f64(1.0 / settings.rate_per_second).max(Duration::from_micros(1));
        let quota = Quota::with_period(interval).expect("a positive interval");
        Self {
            settings,
            client,
            pace: RateLimiter::direct(quota),
            not_before: Mutex::new(None),
        }
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

    async fn post(&self, text: &str) -> Result<reqwest::Response, HandlerError> {
        self.client
            .post(self.settings.url.expose_secret())
            .json(&serde_json::json!({ "text": text }))
            .send()
            .await
            .map_err(|e| HandlerError::retryable(format!("notify webhook unreachable: {}", without_url(e))))
    }
}

#[async_trait]
impl Handler for NotifyHandler {
    fn name(&self) -> &str {
        "notify"
    }

    async fn handle(
        &self,
        notification: &Notification,
        context: &HandlerContext,
    ) -> Result<(), HandlerError> {
        let text = escape_for_slack(&summarize(notification));
        // A wait is worth it only if the post can still finish (within its timeout) before the deadline.
        let deadline = instant_at(context.deadline_ms);
        let latest_start = deadline
            .checked_sub(self.settings.timeout)
            .unwrap_or_else(Instant::now);
        let mut posts = 0;
        loop {
            if let Some(held) = self.held_for() {
                if Instant::now() + held > latest_start {
                    return Err(HandlerError::retry_after(
                        "notify webhook is rate limited (429) past the deadline",
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
                return Err(HandlerError::retryable(
                    "no turn to post to the notify webhook before the deadline",
                ));
            }
            if self.held_for().is_some() {
                continue;
            }
            posts += 1;
            let response = self.post(&text).await?;
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
                        format!("notify webhook answered {status} {posts} times"),
                        delay,
                    ));
                }
                continue;
            }
            return Err(if status.is_server_error() {
                HandlerError::retryable(format!("notify webhook answered {status}"))
            } else {
                HandlerError::permanent(format!("notify webhook answered {status}"))
            });
        }
    }
}

/// Slack's escaping for message text: with `&`, `<` and `>` escaped, customer text cannot mention
/// (`<!channel>`, `<@U…>`) or disguise a link (`<https://…|label>`); it shows as typed.
pub fn escape_for_slack(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `Retry-After` in seconds (the form Slack sends).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The instant of a Unix-ms deadline (a day away at most, so that "no deadline" does not overflow).
fn instant_at(deadline_ms: i64) -> Instant {
    let left = deadline_ms.saturating_sub(unix_ms_now()).clamp(0, 86_400_000);
    Instant::now() + Duration::from_millis(left as u64)
}

/// reqwest errors name the URL, which for incoming webhooks is a secret.
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
    fn slack_escaping_turns_mentions_and_links_into_literal_text() {
        assert_eq!(
            escape_for_slack("<!channel> <@U123> <https://evil.example|Reset password> a & b &amp; \"q\" 'x'"),
            "&lt;!channel&gt; &lt;@U123&gt; &lt;https://evil.example|Reset password&gt; a &amp; b &amp;amp; \"q\" 'x'"
        );
        assert_eq!(escape_for_slack("plain"), "plain");
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, " 7 ".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }
}
