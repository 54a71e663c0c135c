//! The worker on the AWS emulator, with a scripted handler for every topic: a new idempotency table and
//! dead-letter queue, and the clients and clock the tests read them with.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use intercom_webhooks::aws::dynamodb::DynamoStore;
use intercom_webhooks::aws::sqs::SqsDeadLetterQueue;
use intercom_webhooks::plumbing::clock::ShiftedClock;
use intercom_webhooks::plumbing::metrics::Metrics;
use intercom_webhooks::processing::router::Router;
use intercom_webhooks::processing::worker::{Worker, WorkerSettings};

use super::scripted::Scripted;
use super::{create_queue, create_table, observed_dynamo, unique, Operations};

pub struct MotoWorker {
    pub worker: Worker,
    /// Every topic's handler; each call takes 20 ms, so that concurrent copies of a notification overlap.
    pub handler: Arc<Scripted>,
    pub store: Arc<DynamoStore>,
    /// The operations the store sent (the worker's claims, reads and completions).
    pub operations: Operations,
    pub dynamo: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub table: String,
    pub dlq: String,
    pub clock: Arc<ShiftedClock>,
    pub metrics: Arc<Metrics>,
}

impl MotoWorker {
    /// A worker whose store completes each record on its own, or each batch with one write.
    pub async fn start(batch_completion: bool) -> Self {
        let sdk = super::aws_config().await;
        let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let table = unique("idempotency");
        create_table(&dynamo, &table).await;
        let dlq = create_queue(&sqs, &unique("dlq")).await;
        let handler = Arc::new(Scripted::with_pause(Duration::from_millis(20)));
        let clock = Arc::new(ShiftedClock::default());
        let operations = Operations::default();
        let store = Arc::new(
            DynamoStore::new(observed_dynamo(&sdk, &operations), &table, clock.clone())
                .with_batch_completion(batch_completion),
        );
        let metrics = Arc::new(Metrics::new());
        let worker = Worker::new(
            store.clone(),
            Arc::new(SqsDeadLetterQueue::new(sqs.clone(), &dlq)),
            Router::new().route("*", handler.clone()).unwrap(),
            clock.clone(),
            metrics.clone(),
            WorkerSettings::default(),
        );
        Self {
            worker,
            handler,
            store,
            operations,
            dynamo,
            sqs,
            table,
            dlq,
            clock,
            metrics,
        }
    }

    /// The table's item with key `key`, read consistently.
    pub async fn item(&self, key: &str) -> Option<HashMap<String, AttributeValue>> {
        self.dynamo
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(key.into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
    }
}
