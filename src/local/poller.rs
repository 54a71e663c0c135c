//! A poller of `serve`: receives batches from the local queue, gives them to the worker, and settles each
//! message (acknowledged, or retried after a backoff).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::warn;

use super::SqliteQueue;
use crate::plumbing::clock::Clock;
use crate::processing::worker::Worker;
use crate::receiving::queue::{Delivery, QueueConsumer};

/// Records received per poll.
const BATCH_SIZE: usize = 10;

pub(super) struct Poller {
    pub(super) queue: SqliteQueue,
    pub(super) worker: Arc<Worker>,
    pub(super) wake: Arc<Notify>,
    pub(super) visibility: Duration,
    /// The worker's clock: a batch's deadline is measured on it.
    pub(super) clock: Arc<dyn Clock>,
}

impl Poller {
    pub(super) async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let deliveries = match self.queue.receive(BATCH_SIZE, self.visibility).await {
                Ok(d) => d,
                Err(error) => {
                    warn!(%error, "could not receive from the local queue");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if deliveries.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            self.process(deliveries).await;
        }
    }

    async fn process(&self, deliveries: Vec<Delivery>) {
        let deadline_ms = self.clock.now_ms() + self.visibility.as_millis() as i64;
        let receipts: Vec<(String, String, u32)> = deliveries
            .iter()
            .map(|d| {
                (
                    d.record.message_id.clone(),
                    d.receipt.clone(),
                    d.record.receive_count,
                )
            })
            .collect();
        let records = deliveries.into_iter().map(|d| d.record).collect();
        let result = self.worker.process_batch(records, deadline_ms).await;
        let retry: std::collections::HashSet<String> = result.failures().into_iter().collect();
        // Settled together: the database thread commits concurrent operations as one transaction.
        let settles = receipts.into_iter().map(|(message_id, receipt, receive_count)| {
            let retry = retry.contains(&message_id);
            let result = &result;
            async move {
                let outcome = if retry {
                    // The queue keeps the error's text as the message's last error.
                    let error = result
                        .errors
                        .get(&message_id)
                        .map_or_else(|| "retry".to_owned(), ToString::to_string);
                    // Not before the handler's own delay (a 429's Retry-After) either.
                    let delay = backoff(receive_count, self.visibility)
                        .max(result.retry_after(&message_id).unwrap_or_default());
                    self.queue.retry(&receipt, &error, delay).await
                } else {
                    self.queue.ack(&receipt).await
                };
                if let Err(error) = outcome {
                    // The visibility timeout hands the message out again; the worker deduplicates it.
                    warn!(%error, %message_id, "could not settle a message");
                }
            }
        });
        futures::future::join_all(settles).await;
    }
}

/// 1 s, 2 s, 4 s … after each failed receive, never longer than the visibility timeout.
fn backoff(receive_count: u32, visibility: Duration) -> Duration {
    let exponent = receive_count.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(visibility)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_visibility_timeout() {
        let v = Duration::from_secs(30);
        let delays: Vec<u64> = (1..=7).map(|n| backoff(n, v).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
    }
}
