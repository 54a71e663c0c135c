//! The SQS adapter of the [`Queue`] port.

use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::MessageAttributeValue;
use aws_sdk_sqs::Client;

use crate::queue::{unix_now, Message, Queue, QueueError};

/// The main queue and its dead-letter queue.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dead_letter_queue_url: String,
}

impl SqsQueue {
    pub fn new(
        client: Client,
        queue_url: impl Into<String>,
        dead_letter_queue_url: impl Into<String>,
    ) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
            dead_letter_queue_url: dead_letter_queue_url.into(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    pub fn dead_letter_queue_url(&self) -> &str {
        &self.dead_letter_queue_url
    }

    async fn send_to(&self, url: &str, message: &Message) -> Result<(), QueueError> {
        let mut request = self
            .client
            .send_message()
            .queue_url(url)
            .message_body(&message.body);
        for (name, value) in &message.attributes {
            // SQS refuses empty attribute values; an empty attribute carries nothing anyway.
            if value.is_empty() {
                continue;
            }
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| QueueError::Rejected(e.to_string()))?;
            request = request.message_attributes(name, value);
        }
        request.send().await.map(|_| ()).map_err(|error| {
            let text = DisplayErrorContext(&error).to_string();
            if super::is_transient(&error) {
                QueueError::Unavailable(text)
            } else {
                QueueError::Rejected(text)
            }
        })
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, message: &Message) -> Result<(), QueueError> {
        self.send_to(&self.queue_url, message).await
    }

    async fn dead_letter(&self, message: &Message, reason: &str) -> Result<(), QueueError> {
        self.send_to(
            &self.dead_letter_queue_url,
            &message.with_reason(reason, unix_now()),
        )
        .await
    }
}
