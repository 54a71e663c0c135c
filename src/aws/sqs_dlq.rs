//! The SQS adapter of [`DeadLetterStore`]: listing receives every message of the dead-letter queue and
//! makes it visible again at once, so it is a best-effort view on a busy queue; redrive sends each chosen
//! message to the main queue first and deletes it from the dead-letter queue second.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::MessageSystemAttributeName;

use super::sqs::SqsQueue;
use crate::dlq::{DeadLetterEntry, DeadLetterStore, Filter, RedriveReport, MAX_RECEIVES_REASON};
use crate::queue::{attr, Queue, QueueError};

/// How long messages stay hidden while a command goes through the queue.
const HOLD: Duration = Duration::from_secs(60);
/// The most messages one command reads.
const SCAN_LIMIT: usize = 10_000;

struct Held {
    entry: DeadLetterEntry,
    receipt: String,
}

impl SqsQueue {
    /// Receives every message of the dead-letter queue, hiding each for [`HOLD`].
    async fn hold_all(&self) -> Result<Vec<Held>, QueueError> {
        let mut held = Vec::new();
        while held.len() < SCAN_LIMIT {
            let out = self
                .client()
                .receive_message()
                .queue_url(self.dead_letter_queue_url())
                .max_number_of_messages(10)
                .visibility_timeout(HOLD.as_secs() as i32)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .map_err(super::sqs::queue_error)?;
            let batch = out.messages.unwrap_or_default();
            if batch.is_empty() {
                break;
            }
            for m in batch {
                let system = m.attributes.clone().unwrap_or_default();
                let attributes: BTreeMap<String, String> = m
                    .message_attributes
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| v.string_value.map(|v| (k, v)))
                    .collect();
                let sqs_count: u32 = system
                    .get(&MessageSystemAttributeName::ApproximateReceiveCount)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                let dead_lettered_at_ms = attributes
                    .get(attr::DEAD_LETTERED_AT)
                    .and_then(|ms| ms.parse::<i64>().ok())
                    .or_else(|| {
                        system
                            .get(&MessageSystemAttributeName::SentTimestamp)
                            .and_then(|t| t.parse().ok())
                    });
                held.push(Held {
                    entry: DeadLetterEntry {
                        id: m.message_id.unwrap_or_default(),
                        notification_id: attributes.get(attr::NOTIFICATION_ID).cloned(),
                        topic: attributes.get(attr::TOPIC).cloned(),
                        reason: attributes
                            .get(attr::REASON)
                            .cloned()
                            .unwrap_or_else(|| MAX_RECEIVES_REASON.to_owned()),
                        // Our own receive is not one of the failures.
                        receive_count: attributes
                            .get("receive_count")
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(sqs_count.saturating_sub(1)),
                        dead_lettered_at_ms,
                        body: m.body.unwrap_or_default(),
                        attributes,
                    },
                    receipt: m.receipt_handle.unwrap_or_default(),
                });
            }
        }
        held.sort_by_key(|h| h.entry.dead_lettered_at_ms);
        Ok(held)
    }

    /// Makes held messages visible again.
    async fn unhold(&self, held: &[Held]) {
        for h in held {
            let _ = self
                .client()
                .change_message_visibility()
                .queue_url(self.dead_letter_queue_url())
                .receipt_handle(&h.receipt)
                .visibility_timeout(0)
                .send()
                .await;
        }
    }
}

#[async_trait]
impl DeadLetterStore for SqsQueue {
    async fn list(&self, filter: &Filter, limit: usize) -> Result<Vec<DeadLetterEntry>, QueueError> {
        let held = self.hold_all().await?;
        self.unhold(&held).await;
        Ok(held
            .into_iter()
            .map(|h| h.entry)
            .filter(|e| filter.matches(e))
            .take(limit)
            .collect())
    }

    async fn show(&self, id: &str) -> Result<Option<DeadLetterEntry>, QueueError> {
        let held = self.hold_all().await?;
        self.unhold(&held).await;
        Ok(held.into_iter().map(|h| h.entry).find(|e| e.id == id))
    }

    async fn redrive(&self, filter: &Filter, max: usize, dry_run: bool) -> Result<RedriveReport, QueueError> {
        let held = self.hold_all().await?;
        let mut report = RedriveReport::default();
        let mut release = Vec::new();
        for h in held {
            let chosen = filter.matches(&h.entry) && report.moved + report.would_move + report.failed < max;
            if !chosen {
                report.skipped += 1;
                release.push(h);
                continue;
            }
            if dry_run {
                report.would_move += 1;
                release.push(h);
                continue;
            }
            // Send first: if the delete then fails, the message exists twice, which the worker dedupes.
            if let Err(error) = self.send(&h.entry.redriven()).await {
                tracing::warn!(%error, id = %h.entry.id, "could not send a dead letter back");
                report.failed += 1;
                release.push(h);
                continue;
            }
            let deleted = self
                .client()
                .delete_message()
                .queue_url(self.dead_letter_queue_url())
                .receipt_handle(&h.receipt)
                .send()
                .await;
            match deleted {
                Ok(_) => report.moved += 1,
                Err(error) => {
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), id = %h.entry.id, "sent back, but not deleted from the dead-letter queue");
                    report.failed += 1;
                }
            }
        }
        self.unhold(&release).await;
        Ok(report)
    }
}
