//! The SQS adapters of the [`Queue`] and [`DeadLetterQueue`] ports.

use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::MessageAttributeValue;
use aws_sdk_sqs::Client;

use crate::queue::{unix_now, DeadLetterQueue, Message, Queue, QueueError};

/// One SQS queue used as a dead-letter queue (the worker needs only this).
#[derive(Clone, Debug)]
pub struct SqsDeadLetters {
    client: Client,
    url: String,
}

impl SqsDeadLetters {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

#[async_trait]
impl DeadLetterQueue for SqsDeadLetters {
    async fn dead_letter(&self, message: &Message, reason: &str) -> Result<(), QueueError> {
        send_message(&self.client, &self.url, &message.with_reason(reason, unix_now())).await
    }
}

/// The main queue and its dead-letter queue (the receiver needs both).
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dead_letters: SqsDeadLetters,
}

impl SqsQueue {
    pub fn new(
        client: Client,
        queue_url: impl Into<String>,
        dead_letter_queue_url: impl Into<String>,
    ) -> Self {
        Self {
            dead_letters: SqsDeadLetters::new(client.clone(), dead_letter_queue_url),
            client,
            queue_url: queue_url.into(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    pub fn dead_letter_queue_url(&self) -> &str {
        self.dead_letters.url()
    }
}

#[async_trait]
impl DeadLetterQueue for SqsQueue {
    async fn dead_letter(&self, message: &Message, reason: &str) -> Result<(), QueueError> {
        self.dead_letters.dead_letter(message, reason).await
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, message: &Message) -> Result<(), QueueError> {
        send_message(&self.client, &self.queue_url, message).await
    }
}

async fn send_message(client: &Client, url: &str, message: &Message) -> Result<(), QueueError> {
    let mut request = client.send_message().queue_url(url).message_body(&message.body);
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
