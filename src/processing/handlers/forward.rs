//! Forwarding: each matching notification POSTed to an endpoint of the user's own, with its original
//! raw body and an `X-Hub-Signature` computed with that target's secret, so that the endpoint verifies it
//! exactly as it would verify Intercom. Headers also carry the notification id and topic. Each target has
//! its own pace and its own 429 hold, so a slow target never holds up another.

use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use crate::processing::handler::{Handler, HandlerContext, HandlerError};
use crate::receiving::notification::Notification;
use crate::receiving::signature::ClientSecret;

use super::paced::PacedPoster;

/// The header with the notification's id.
pub const NOTIFICATION_ID_HEADER: &str = "x-intercom-notification-id";
/// The header with the notification's topic.
pub const TOPIC_HEADER: &str = "x-intercom-topic";

/// Posts per second to one target from one process, unless configured.
pub const DEFAULT_FORWARD_RATE_PER_SECOND: f64 = 50.0;

/// The most forward targets (`FORWARD_1_…` to `FORWARD_9_…`).
pub const MAX_FORWARD_TARGETS: usize = 9;

#[derive(Clone, Debug)]
pub struct ForwardSettings {
    /// 1 for `FORWARD_1_…`: the target's name in logs and errors is `forward_1`.
    pub index: usize,
    /// A URL may carry a token (in its query or path): treated as a secret, never logged.
    pub url: SecretString,
    pub topics: Vec<String>,
    pub secret: ClientSecret,
    pub timeout: Duration,
    pub rate_per_second: f64,
}

pub struct ForwardHandler {
    name: String,
    url: SecretString,
    secret: ClientSecret,
    poster: PacedPoster,
}

impl ForwardHandler {
    pub fn new(settings: ForwardSettings) -> Self {
        let name = format!("forward_{}", settings.index);
        Self {
            poster: PacedPoster::new(
                format!("forward target {}", settings.index),
                settings.timeout,
                settings.rate_per_second,
            ),
            name,
            url: settings.url,
            secret: settings.secret,
        }
    }
}

#[async_trait]
impl Handler for ForwardHandler {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(
        &self,
        notification: &Notification,
        context: &HandlerContext,
    ) -> Result<(), HandlerError> {
        let signature = self.secret.sign(&notification.raw);
        self.poster
            .post(context, || {
                self.poster
                    .client()
                    .post(self.url.expose_secret())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("x-hub-signature", &signature)
                    .header(NOTIFICATION_ID_HEADER, notification.id.as_str())
                    .header(TOPIC_HEADER, notification.topic().as_str())
                    .body(notification.raw.clone())
            })
            .await
    }
}
