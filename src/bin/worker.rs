//! The worker Lambda: processes SQS batches of notifications once each in effect, answering with
//! partial batch failures.

use std::sync::Arc;

use anyhow::Context;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use intercom_webhooks::aws::dynamodb::DynamoStore;
use intercom_webhooks::aws::eventbridge::{EventBridgeHandler, EventBridgeSettings};
use intercom_webhooks::aws::mirror::DynamoMirror;
use intercom_webhooks::aws::sqs::SqsDeadLetterQueue;
use intercom_webhooks::aws::ssm::SsmParameters;
use intercom_webhooks::aws::{emf, lambda_config, lambda_sqs, CallBudget};
use intercom_webhooks::plumbing::clock::{Clock, SystemClock};
use intercom_webhooks::plumbing::config::{worker_secrets, Env, WorkerLambdaConfig};
use intercom_webhooks::plumbing::{metrics::Metrics, telemetry};
use intercom_webhooks::processing::mirror::MirrorHandler;
use intercom_webhooks::processing::{handlers, worker::Worker};
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_lambda();
    let sdk = lambda_config(CallBudget::WORKER);
    let parameters = SsmParameters::from_config(&sdk);
    let config = Env::process()
        .resolve(&worker_secrets(), &parameters)
        .await
        .and_then(|env| env.parse(WorkerLambdaConfig::from_env))
        .context("the worker cannot start")?;
    let metrics = Arc::new(Metrics::new());
    // One client per service: each client made builds a TLS connector, parsing the root certificates.
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let mirror = match config.mirror_table {
        Some(table) => Some(
            MirrorHandler::new(Arc::new(DynamoMirror::new(dynamodb.clone(), table)))
                .with_metrics(metrics.clone()),
        ),
        None => {
            tracing::info!("MIRROR_TABLE is not set: the mirror is off, and state handlers run for every notification, stale ones included");
            None
        }
    };
    let others: Vec<(
        Vec<String>,
        Arc<dyn intercom_webhooks::processing::handler::Handler>,
    )> = match config.eventbridge {
        Some(eb) => vec![(
            eb.topics.clone(),
            Arc::new(
                EventBridgeHandler::new(
                    aws_sdk_eventbridge::Client::new(&sdk),
                    EventBridgeSettings {
                        bus: eb.bus,
                        source: eb.source,
                        topics: eb.topics,
                    },
                )
                .with_metrics(metrics.clone()),
            ),
        )],
        None => Vec::new(),
    };
    let router = handlers::default_router(handlers::Builtins {
        notify: config.worker.notify,
        forwards: config.worker.forwards,
        mirror,
        others,
    })
    .context("invalid handler routes")?;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = Arc::new(config.queue_url);
    if queue_url.is_none() {
        tracing::warn!("QUEUE_URL is not set: a record to retry comes back after the queue's visibility timeout, even when a handler asked for another delay");
    }
    let routes = router.describe();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let worker = Arc::new(Worker::new(
        Arc::new(
            DynamoStore::new(dynamodb, config.table, clock.clone())
                .with_batch_completion(config.batch_completion),
        ),
        Arc::new(SqsDeadLetterQueue::new(sqs.clone(), config.dead_letter_queue_url)),
        router,
        clock,
        metrics,
        config.worker.settings,
    ));
    tracing::info!(?routes, "worker ready");
    let handler = service_fn(move |event: LambdaEvent<SqsEvent>| {
        let (worker, sqs, queue_url) = (worker.clone(), sqs.clone(), queue_url.clone());
        async move {
            let deadline_ms = event.context.deadline as i64;
            let receipts = lambda_sqs::receipts(&event.payload);
            let result = worker
                .process_batch(lambda_sqs::records(event.payload), deadline_ms)
                .await;
            if let Some(queue_url) = queue_url.as_deref() {
                lambda_sqs::delay_retries(&sqs, queue_url, &receipts, &result).await;
            }
            emf::flush(worker.metrics(), "worker");
            Ok::<SqsBatchResponse, lambda_runtime::Error>(lambda_sqs::batch_response(&result))
        }
    });
    lambda_runtime::run(handler)
        .await
        .map_err(|e| anyhow::anyhow!("the Lambda runtime stopped: {e}"))
}
