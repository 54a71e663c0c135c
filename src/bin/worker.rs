//! The worker Lambda: processes SQS batches of notifications once each in effect, answering with
//! partial batch failures.

use std::sync::Arc;

use anyhow::Context;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use intercom_webhooks::aws::dynamodb::DynamoStore;
use intercom_webhooks::aws::sqs::SqsDeadLetters;
use intercom_webhooks::aws::ssm::SsmParameters;
use intercom_webhooks::aws::{emf, lambda_sqs, load_config, CallBudget};
use intercom_webhooks::clock::{Clock, SystemClock};
use intercom_webhooks::config::{Env, WorkerLambdaConfig, NOTIFY_WEBHOOK_URL};
use intercom_webhooks::{handlers, metrics::Metrics, telemetry, worker::Worker};
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_lambda();
    let sdk = load_config(CallBudget::WORKER).await;
    let parameters = SsmParameters::new(aws_sdk_ssm::Client::new(&sdk));
    let config = Env::process()
        .resolve(&[NOTIFY_WEBHOOK_URL], &parameters)
        .await
        .and_then(|env| env.parse(WorkerLambdaConfig::from_env))
        .context("the worker cannot start")?;
    let router = handlers::default_router(config.worker.notify).context("invalid handler routes")?;
    tracing::info!(routes = ?router.describe(), "worker ready");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let worker = Arc::new(Worker::new(
        Arc::new(DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            config.table,
            clock.clone(),
        )),
        Arc::new(SqsDeadLetters::new(
            aws_sdk_sqs::Client::new(&sdk),
            config.dead_letter_queue_url,
        )),
        router,
        clock,
        Arc::new(Metrics::new()),
        config.worker.settings,
    ));
    let handler = service_fn(move |event: LambdaEvent<SqsEvent>| {
        let worker = worker.clone();
        async move {
            let deadline_ms = event.context.deadline as i64;
            let result = worker
                .process_batch(lambda_sqs::records(event.payload), deadline_ms)
                .await;
            emf::flush(worker.metrics(), "worker");
            Ok::<SqsBatchResponse, lambda_runtime::Error>(lambda_sqs::batch_response(&result))
        }
    });
    lambda_runtime::run(handler)
        .await
        .map_err(|e| anyhow::anyhow!("the Lambda runtime stopped: {e}"))
}
