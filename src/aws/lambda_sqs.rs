//! Translation between the SQS Lambda event and the worker's [`Record`]s and batch result.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};

use crate::queue::Message;
use crate::worker::{BatchResult, Record};

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
