//! A handler that posts a Slack-compatible `{"text": …}` message for chosen topics (any incoming-webhook
//! URL that takes that shape: Slack, Mattermost, Rocket.Chat, Google Chat via a bridge…).

use std::time::Duration;

use async_trait::async_trait;

use crate::handler::{Handler, HandlerContext, HandlerError};
use crate::notification::Notification;

use super::summary::summarize;

/// New conversations and customer replies.
pub const DEFAULT_NOTIFY_TOPICS: &[&str] = &["conversation.user.created", "conversation.user.replied"];

#[derive(Clone)]
pub struct NotifySettings {
    pub url: String,
    pub topics: Vec<String>,
    pub timeout: Duration,
}

impl std::fmt::Debug for NotifySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Incoming-webhook URLs are credentials.
        f.debug_struct("NotifySettings")
            .field("url", &"<redacted>")
            .field("topics", &self.topics)
            .field("timeout", &self.timeout)
            .finish()
    }
}

pub struct NotifyHandler {
    settings: NotifySettings,
    client: reqwest::Client,
}

impl NotifyHandler {
    pub fn new(settings: NotifySettings) -> Self {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(3)))
            .build()
            .expect("an HTTP client with rustls builds");
        Self { settings, client }
    }
}

#[async_trait]
impl Handler for NotifyHandler {
    fn name(&self) -> &str {
        "notify"
    }

    async fn handle(&self, notification: &Notification, _: &HandlerContext) -> Result<(), HandlerError> {
        let text = escape_for_slack(&summarize(notification));
        let response = self
            .client
            .post(&self.settings.url)
            .json(&serde_json::json!({ "text": text }))
            .send()
            .await
            .map_err(|e| {
                HandlerError::retryable(format!("notify webhook unreachable: {}", without_url(e)))
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Err(HandlerError::retryable(format!(
                "notify webhook answered {status}"
            )))
        } else {
            Err(HandlerError::permanent(format!(
                "notify webhook answered {status}"
            )))
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
}
