//! Where reconciled notifications go: `serve`'s SQLite queue (safe while `serve` runs on the file), SQS
//! in batches of 10, or a receiver's URL, signed with the client secret as Intercom signs a delivery.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::synthetic::Reconciled;
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

#[async_trait]
impl Target for SqsTarget {
    async fn enqueue(&self, batch: &[Reconciled]) -> Vec<Result<(), String>> {
        let messages: Vec<Message> = batch.iter().map(message).collect();
        crate::aws::sqs::send_batch(&self.client, &self.queue_url, &messages)
            .await
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }
}

/// A receiver (the Lambda's Function URL, or `serve`): each notification POSTed with `X-Hub-Signature`,
/// as Intercom would. A 200 is taken; anything else is a failure named by its status.
pub struct ReceiverTarget {
    http: reqwest::Client,
    url: reqwest::Url,
    secret: ClientSecret,
}

impl ReceiverTarget {
    pub fn new(url: reqwest::Url, secret: ClientSecret) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self { http, url, secret })
    }
}

#[async_trait]
impl Target for ReceiverTarget {
    async fn enqueue(&self, batch: &[Reconciled]) -> Vec<Result<(), String>> {
        let posts = batch.iter().map(|n| async move {
            let answer = self
                .http
                .post(self.url.clone())
                .header("content-type", "application/json")
                .header("x-hub-signature", self.secret.sign(&n.body))
                .body(n.body.clone())
                .send()
                .await
                .map_err(|e| e.without_url().to_string())?;
            match answer.status().as_u16() {
                200..=299 => Ok(()),
                status => Err(format!("the receiver answered {status}")),
            }
        });
        futures::future::join_all(posts).await
    }
}
