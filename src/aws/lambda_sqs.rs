//! Translation between the SQS Lambda event and the worker's [`Record`]s and batch result.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};

use std::collections::HashMap;
use std::time::Duration;

use crate::processing::worker::{BatchResult, Record};
use crate::receiving::queue::Message;

/// One record per SQS message. Nothing here can fail: a record that cannot be understood is the
/// worker's to dead-letter.
pub fn records(event: SqsEvent) -> Vec<Record> {
    event.records.into_iter().map(record).collect()
}

pub fn record(message: SqsMessage) -> Record {
    let receive_count = message
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let attributes = message
        .message_attributes
        .into_iter()
        .filter_map(|(name, value)| value.string_value.map(|v| (name, v)))
        .collect();
    Record {
        message_id: message.message_id.unwrap_or_default(),
        message: Message {
            body: message.body.unwrap_or_default(),
            attributes,
        },
        receive_count,
    }
}

/// Each record's receipt handle, by message id: what changing a record's visibility needs.
pub fn receipts(event: &SqsEvent) -> HashMap<String, String> {
    event
        .records
        .iter()
        .filter_map(|m| Some((m.message_id.clone()?, m.receipt_handle.clone()?)))
        .collect()
}

/// SQS hides a message for 12 hours at most.
const LONGEST_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

/// Where a record to retry carries a delay (a handler's `Retry-After`), hides its message that long,
/// instead of the queue's visibility timeout, so that it comes back no sooner than the dependency asked.
/// A change that fails leaves the queue's visibility timeout in force. Returns how many were changed.
pub async fn delay_retries(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    receipts: &HashMap<String, String>,
    result: &BatchResult,
) -> usize {
    let changes = result.failures().into_iter().filter_map(|id| {
        let delay = result.retry_after(&id)?.min(LONGEST_VISIBILITY);
        let receipt = receipts.get(&id)?.clone();
        Some(async move {
            let changed = client
                .change_message_visibility()
                .queue_url(queue_url)
                .receipt_handle(receipt)
                .visibility_timeout(delay.as_secs().max(1) as i32)
                .send()
                .await;
            match changed {
                Ok(_) => true,
                Err(error) => {
                    tracing::warn!(
                        message_id = %id,
                        error = %aws_sdk_sqs::error::DisplayErrorContext(&error),
                        "could not delay the retry; the queue's visibility timeout applies"
                    );
                    false
                }
            }
        })
    });
    futures::future::join_all(changes)
        .await
        .into_iter()
        .filter(|changed| *changed)
        .count()
}

/// The partial batch response: only the records to retry. Never an error, which would retry them all.
pub fn batch_response(result: &BatchResult) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = result
        .failures()
        .into_iter()
        .map(|id| {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            failure
        })
        .collect();
    response
}
