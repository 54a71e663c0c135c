//! The reconciler Lambda: run on a schedule, it continues reconcile from each type's watermark to now,
//! sending `<type>.reconciled` notifications to the notifications queue, so that the mirror and state
//! handlers catch up on what Intercom never delivered. The access token comes from SSM Parameter Store.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use intercom_webhooks::aws::dynamodb::DynamoStore;
use intercom_webhooks::aws::ssm::SsmParameters;
use intercom_webhooks::aws::{lambda_config, CallBudget};
use intercom_webhooks::events::EventsClient;
use intercom_webhooks::plumbing::clock::{unix_ms_now, SystemClock};
use intercom_webhooks::plumbing::config::{Env, ReconcilerLambdaConfig, ACCESS_TOKEN};
use intercom_webhooks::plumbing::telemetry;
use intercom_webhooks::reconcile::run::{Plan, Reconciler, Since};
use intercom_webhooks::reconcile::search::SearchClient;
use intercom_webhooks::reconcile::target::SqsTarget;
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

/// Kept back from the invocation's deadline (at most a quarter of the time it has): a pass still running
/// then stops, incomplete (its watermark is not advanced, so the next run covers the range again).
const DEADLINE_MARGIN: Duration = Duration::from_secs(10);
/// The longest a pass may take when the invocation names no usable deadline (an emulator): Lambda's
/// longest timeout.
const LONGEST: Duration = Duration::from_secs(900);

struct Reconcile {
    config: ReconcilerLambdaConfig,
    search: SearchClient,
    target: SqsTarget,
    store: DynamoStore,
}

impl Reconcile {
    async fn run(&self, deadline: std::time::SystemTime) -> anyhow::Result<Value> {
        let now_ms = unix_ms_now();
        let plan = Plan {
            types: self.config.types.clone(),
            since: Since::LastOr(now_ms - self.config.first_lookback.as_millis() as i64),
            until_ms: now_ms,
            overlap: self.config.overlap,
            dry_run: false,
        };
        let progress = |_: &_| {};
        let reconciler = Reconciler {
            search: &self.search,
            target: &self.target,
            watermarks: Some(&self.store),
            mirror: None,
            progress: &progress,
        };
        let time = match deadline.duration_since(std::time::SystemTime::now()) {
            Ok(left) if !left.is_zero() => left - DEADLINE_MARGIN.min(left / 4),
            _ => LONGEST,
        };
        let report = tokio::time::timeout(time, reconciler.run(&plan, now_ms / 1000))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the pass did not finish before the function's deadline; watermarks were not advanced \
                     (raise the function's timeout, or reconcile the backlog once with the command line)"
                )
            })??;
        for t in &report.types {
            tracing::info!(
                kind = %t.kind,
                pages = t.pages,
                objects = t.objects,
                enqueued = t.enqueued,
                failed = t.failed.len(),
                complete = t.complete,
                watermark_advanced = t.watermark_advanced,
                "reconciled"
            );
            for (id, reason) in &t.failed {
                tracing::warn!(kind = %t.kind, id = %id, reason = %reason, "not reconciled");
            }
        }
        let summary = serde_json::to_value(&report)?;
        if report.failed() {
            anyhow::bail!("reconcile incomplete: {summary}");
        }
        Ok(summary)
    }
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    telemetry::init_lambda();
    let sdk = lambda_config(CallBudget::WORKER);
    let parameters = SsmParameters::from_config(&sdk);
    let config = Env::process()
        .resolve(&[ACCESS_TOKEN], &parameters)
        .await
        .and_then(|env| env.parse(ReconcilerLambdaConfig::from_env))
        .context("the reconciler cannot start")?;
    let settings = EventsClient::builder(config.token.clone(), config.endpoint.clone())
        .intercom_version(&config.intercom_version);
    let search = SearchClient::new(&settings).context("the reconciler cannot start")?;
    let reconcile = Arc::new(Reconcile {
        target: SqsTarget {
            client: aws_sdk_sqs::Client::new(&sdk),
            queue_url: config.queue_url.clone(),
        },
        store: DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            &config.table,
            Arc::new(SystemClock),
        ),
        search,
        config,
    });
    tracing::info!(types = ?reconcile.config.types, "reconciler ready");
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let reconcile = reconcile.clone();
        async move {
            let deadline = event.context.deadline();
            reconcile.run(deadline).await.map_err(lambda_runtime::Error::from)
        }
    }))
    .await
}
