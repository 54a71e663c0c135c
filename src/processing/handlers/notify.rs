//! A handler that posts a Slack-compatible `{"text": …}` message for chosen topics (any incoming-webhook
//! URL that takes that shape: Slack, Mattermost, Rocket.Chat, Google Chat via a bridge…).
//!
//! Posts are paced (Slack's incoming webhooks take about one message a second) and a 429's `Retry-After`
//! holds every post of the process, not only the one that was refused.

use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use crate::processing::handler::{Handler, HandlerContext, HandlerError};
use crate::receiving::notification::Notification;

use super::paced::PacedPoster;
use super::summary::summarize;

/// New conversations and customer replies.
pub const DEFAULT_NOTIFY_TOPICS: &[&str] = &["conversation.user.created", "conversation.user.replied"];

/// Slack's incoming webhooks accept about one message a second.
pub const DEFAULT_NOTIFY_RATE_PER_SECOND: f64 = 1.0;

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
    url: SecretString,
    poster: PacedPoster,
}

impl NotifyHandler {
    /// `settings.rate_per_second` must be positive and finite (the configuration checks it).
    pub fn new(settings: NotifySettings) -> Self {
        Self {
            poster: PacedPoster::new("notify webhook", settings.timeout, settings.rate_per_second),
            url: settings.url,
        }
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
        let body = serde_json::json!({ "text": escape_for_slack(&summarize(notification)) });
        self.poster
            .post(context, || {
                self.poster.client().post(self.url.expose_secret()).json(&body)
            })
            .await
    }
}

/// Slack's escaping for message text: with `&`, `<` and `>` escaped, customer text cannot mention
/// (`<!channel>`, `<@U…>`) or disguise a link (`<https://…|label>`); it shows as typed.
pub fn escape_for_slack(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
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
