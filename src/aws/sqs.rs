//! The SQS adapters of the [`Queue`] and [`DeadLetterQueue`] ports.

use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;

use super::sqs_dlq::ScanSettings;
use crate::plumbing::clock::unix_ms_now;
use crate::receiving::queue::{DeadLetterQueue, Delivery, Message, Queue, QueueConsumer, QueueError, Record};

/// One SQS queue used as a dead-letter queue (the worker needs only this).
#[derive(Clone, Debug)]
pub struct SqsDeadLetterQueue {
    client: Client,
    url: String,
}

impl SqsDeadLetterQueue {
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
impl DeadLetterQueue for SqsDeadLetterQueue {
    async fn dead_letter(&self, message: &Message, reason: &str) -> Result<(), QueueError> {
        send_message(
            &self.client,
            &self.url,
            &message.with_reason(reason, unix_ms_now()),
        )
        .await
    }
}

/// The main queue and its dead-letter queue (the receiver needs both).
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dead_letters: SqsDeadLetterQueue,
    dead_letter_scan: ScanSettings,
}

impl SqsQueue {
    pub fn new(
        client: Client,
        queue_url: impl Into<String>,
        dead_letter_queue_url: impl Into<String>,
    ) -> Self {
        Self {
            dead_letters: SqsDeadLetterQueue::new(client.clone(), dead_letter_queue_url),
            client,
            queue_url: queue_url.into(),
            dead_letter_scan: ScanSettings::default(),
        }
    }

    /// How `dlq` commands go through the dead-letter queue (tests make the hold short).
    pub fn with_dead_letter_scan(mut self, scan: ScanSettings) -> Self {
        self.dead_letter_scan = scan;
        self
    }

    pub(crate) fn dead_letter_scan(&self) -> ScanSettings {
        self.dead_letter_scan
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

#[async_trait]
impl QueueConsumer for SqsQueue {
    async fn receive(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .visibility_timeout(visibility.as_secs() as i32)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(queue_error)?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let receive_count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                let attributes = string_attributes(m.message_attributes);
                Delivery {
                    record: Record {
                        message_id: m.message_id.unwrap_or_default(),
                        message: Message {
                            body: m.body.unwrap_or_default(),
                            attributes,
                        },
                        receive_count,
                    },
                    receipt: m.receipt_handle.unwrap_or_default(),
                }
            })
            .collect())
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map(|_| ())
            .map_err(queue_error)
    }

    /// SQS keeps no per-message error; the delay becomes the message's new visibility timeout.
    async fn retry(&self, receipt: &str, _error: &str, delay: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(delay.as_secs() as i32)
            .send()
            .await
            .map(|_| ())
            .map_err(queue_error)
    }
}

/// A received message's attributes as the queue port sees them: every one is a string (we only send
/// strings; others are dropped).
pub fn string_attributes(
    attributes: Option<std::collections::HashMap<String, MessageAttributeValue>>,
) -> std::collections::BTreeMap<String, String> {
    attributes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, value)| value.string_value.map(|v| (name, v)))
        .collect()
}

pub(crate) fn queue_error<E>(
    error: aws_smithy_runtime_api::client::result::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> QueueError
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let text = DisplayErrorContext(&error).to_string();
    if super::is_transient(&error) {
        QueueError::Unavailable(text)
    } else {
        QueueError::Rejected(text)
    }
}

/// A message's attributes as SQS takes them. SQS refuses empty values; an empty attribute carries nothing
/// anyway.
fn sqs_attributes(message: &Message) -> Result<HashMap<String, MessageAttributeValue>, QueueError> {
    message
        .attributes
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map(|v| (name.clone(), v))
                .map_err(|e| QueueError::Rejected(e.to_string()))
        })
        .collect()
}

async fn send_message(client: &Client, url: &str, message: &Message) -> Result<(), QueueError> {
    client
        .send_message()
        .queue_url(url)
        .message_body(&message.body)
        .set_message_attributes(Some(sqs_attributes(message)?))
        .send()
        .await
        .map(|_| ())
        .map_err(queue_error)
}

/// Sends up to 10 messages in one `SendMessageBatch` call: for each message, in order, whether SQS took
/// it.
pub async fn send_batch(client: &Client, url: &str, messages: &[Message]) -> Vec<Result<(), QueueError>> {
    let mut results: Vec<Result<(), QueueError>> = vec![Ok(()); messages.len()];
    let mut request = client.send_message_batch().queue_url(url);
    for (i, message) in messages.iter().enumerate() {
        let entry = sqs_attributes(message).and_then(|attributes| {
            SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(&message.body)
                .set_message_attributes(Some(attributes))
                .build()
                .map_err(|e| QueueError::Rejected(e.to_string()))
        });
        match entry {
            Ok(entry) => request = request.entries(entry),
            Err(error) => results[i] = Err(error),
        }
    }
    if results.iter().all(Result::is_err) {
        return results;
    }
    match request.send().await {
        Ok(out) => {
            for failed in out.failed {
                if let Ok(i) = failed.id.parse::<usize>() {
                    if let Some(slot) = results.get_mut(i) {
                        let text = format!("{}: {}", failed.code, failed.message.unwrap_or_default());
                        *slot = Err(if failed.sender_fault {
                            QueueError::Rejected(text)
                        } else {
                            QueueError::Unavailable(text)
                        });
                    }
                }
            }
        }
        Err(error) => {
            let error = queue_error(error);
            for slot in results.iter_mut().filter(|r| r.is_ok()) {
                *slot = Err(error.clone());
            }
        }
    }
    results
}
