//! The receiver Lambda: verifies each Intercom delivery and puts it on SQS before answering 200.

use std::sync::Arc;

use anyhow::Context;
use axum::response::Response;
use intercom_webhooks::aws::{emf, load_config, sqs::SqsQueue, CallBudget};
use intercom_webhooks::config::{Env, ReceiverConfig};
use intercom_webhooks::intake::Intake;
use intercom_webhooks::metrics::Metrics;
use intercom_webhooks::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_lambda();
    let config = ReceiverConfig::from_env(&Env::process()).context("the receiver cannot start")?;
    let sdk = load_config(CallBudget::RECEIVER).await;
    let queue = SqsQueue::new(
        aws_sdk_sqs::Client::new(&sdk),
        config.queue_url,
        config.dead_letter_queue_url,
    );
    tracing::info!(
        secrets = config.secrets.len(),
        max_body_bytes = config.max_body_bytes,
        "receiver ready"
    );
    let metrics = Arc::new(Metrics::new());
    let app = Intake::new(config.secrets, Arc::new(queue), config.max_body_bytes)
        .with_metrics(metrics.clone())
        .router()
        .layer(axum::middleware::map_response(move |response: Response| {
            emf::flush(&metrics, "receiver");
            std::future::ready(response)
        }));
    lambda_http::run(app)
        .await
        .map_err(|e| anyhow::anyhow!("the Lambda runtime stopped: {e}"))
}
