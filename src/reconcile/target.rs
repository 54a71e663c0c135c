//! Where reconciled notifications go: `serve`'s SQLite queue (safe while `serve` runs on the file), SQS
//! in batches of 10, or a receiver's URL, signed with the client secret as Intercom signs a delivery.

use std::sync::Arc;

use async_trait::async_trait;

use super::synthetic::Reconciled;
use crate::receiving::deliver;
use crate::receiving::queue::{Message, Queue};
use crate::receiving::signature::ClientSecret;

/// The most notifications one [`Target::enqueue`] call takes.
pub const BATCH: usize = 10;

#[async_trait]
pub trait Target: Send + Sync {
    /// Enqueues up to [`BATCH`] notifications: for each, in order, `Ok` or why it was not taken.
    async fn enqueue(&self, batch: &[Reconciled]) -> Vec<Result<(), String>>;
}

fn message(n: &Reconciled) -> Message {
    Message::for_notification(&n.body, &n.envelope)
}

/// Any [`Queue`]: the local SQLite queue, one message at a time (each its own commit, grouped by the
/// database thread).
pub struct QueueTarget(pub Arc<dyn Queue>);

#[async_trait]
impl Target for QueueTarget {
    async fn enqueue(&self, batch: &[Reconciled]) -> Vec<Result<(), String>> {
        let sends = batch
            .iter()
            .map(|n| async move { self.0.send(&message(n)).await.map_err(|e| e.to_string()) });
        futures::future::join_all(sends).await
    }
}

/// An SQS queue: one `SendMessageBatch` per call.
pub struct SqsTarget {
    pub client: aws_sdk_sqs::Client,
    pub queue_url: String,
}

/// The most bytes one `SendMessageBatch` carries in all (SQS limits the sum of its messages to 1 MiB);
/// the rest of the MiB is left for the attributes.
const BATCH_BYTES: usize = 1_000_000;

#[async_trait]
impl Target for SqsTarget {
    async fn enqueue(&self, batch: &[Reconciled]) -> Vec<Result<(), String>> {
        let messages: Vec<Message> = batch.iter().map(message).collect();
        let mut results = Vec::with_capacity(messages.len());
        for group in by_size(&messages, BATCH_BYTES) {
            let sent = crate::aws::sqs::send_batch(&self.client, &self.queue_url, group).await;
            results.extend(sent.into_iter().map(|r| r.map_err(|e| e.to_string())));
        }
        results
    }
}

/// Consecutive groups of messages whose bodies add up to at most `limit` bytes (a larger message alone).
fn by_size(messages: &[Message], limit: usize) -> Vec<&[Message]> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, m) in messages.iter().enumerate() {
        let size = m.body.len() + m.attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if i > start && bytes + size > limit {
            groups.push(&messages[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < messages.len() {
        groups.push(&messages[start..]);
    }
    groups
}

/// A receiver (the Lambda's Function URL, or `serve`): each notification delivered as Intercom would
/// ([`crate::receiving::deliver`]). A 2xx is taken; anything else is a failure named by its status.
pub struct ReceiverTarget {
    http: reqwest::Client,
    url: String,
    secret: ClientSecret,
}

impl ReceiverTarget {
    pub fn new(url: String, secret: ClientSecret) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: deliver::client()?,
            url,
            secret,
        })
    }
}

#[async_trait]
impl Target for ReceiverTarget {
    async fn enqueue(&self, batch: &[Reconciled]) -> Vec<Result<(), String>> {
        let posts = batch.iter().map(|n| async move {
            let (status, _) = deliver::post_signed(&self.http, &self.url, &self.secret, n.body.clone())
                .await
                .map_err(|e| e.without_url().to_string())?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("the receiver answered {}", status.as_u16()))
            }
        });
        futures::future::join_all(posts).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqs_batches_stay_within_the_byte_limit_and_keep_the_order() {
        let message = |n: usize| Message {
            body: "x".repeat(n),
            attributes: Default::default(),
        };
        let messages: Vec<Message> = [300, 300, 300, 500, 1200, 10, 10]
            .into_iter()
            .map(message)
            .collect();
        let groups: Vec<Vec<usize>> = by_size(&messages, 1000)
            .into_iter()
            .map(|g| g.iter().map(|m| m.body.len()).collect())
            .collect();
        assert_eq!(
            groups,
            vec![vec![300, 300, 300], vec![500], vec![1200], vec![10, 10]]
        );
        assert!(by_size(&[], 1000).is_empty());
    }
}
