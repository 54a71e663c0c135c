//! The receiver Lambda: verifies each Intercom delivery and puts it on SQS before answering 200.

use std::sync::Arc;

use anyhow::Context;
use axum::response::Response;
use intercom_webhooks::aws::{emf, lambda_config, sqs::SqsQueue, ssm::SsmParameters, CallBudget};
use intercom_webhooks::plumbing::config::{Env, ReceiverConfig, CLIENT_SECRET};
use intercom_webhooks::plumbing::metrics::Metrics;
use intercom_webhooks::plumbing::telemetry;
use intercom_webhooks::receiving::intake::Intake;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_lambda();
    let sdk = lambda_config(CallBudget::RECEIVER);
    let parameters = SsmParameters::from_config(&sdk);
    let config = Env::process()
        .resolve(&[CLIENT_SECRET], &parameters)
        .await
        .and_then(|env| env.parse(ReceiverConfig::from_env))
        .context("the receiver cannot start")?;
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
