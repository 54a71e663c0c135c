//! Counts the AWS requests the Lambda path makes per notification, against the AWS emulator, and prices
//! them. Run with `bench/aws-calls.sh` (it starts moto_server), or with AWS_ENDPOINT_URL set:
//! `cargo run --release --example aws_calls -- 200` (add `--no-mirror` for a stack with
//! `EnableMirror=false`, `--eventbridge` to publish to a bus as with an `EventBus`). With the mirror,
//! every notification is about a new conversation (one mirror insert each); `--updates` makes every one a newer version of one conversation instead (its `updated_at`
//! moves on; processed ten at a time, some arrive after a newer one and are refused as stale). The mirror
//! table has no index unless `--index` (a stack with `MirrorIndex=true`: the `by_type` index's writes are
//! priced too). The worker completes each batch's records with one write, as the worker Lambda does by
//! default; `--record-completion` completes each record on its own (`IDEMPOTENCY_COMPLETION=record`).
//!
//! The receiver's intake and the worker's batch function run in-process with SDK clients whose every
//! HTTP request is counted by an interceptor. The SQS event source mapping (AWS's side of the worker: one
//! ReceiveMessage per batch of 10, one DeleteMessageBatch for the acknowledged records) is emulated with
//! counted calls too, so the SQS figure includes it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use intercom_webhooks::aws::dynamodb::DynamoStore;
use intercom_webhooks::aws::eventbridge::{EventBridgeHandler, EventBridgeSettings};
use intercom_webhooks::aws::mirror::{billed_size, DynamoMirror};
use intercom_webhooks::aws::sqs::{SqsDeadLetterQueue, SqsQueue};
use intercom_webhooks::aws::{load_config, CallBudget};
use intercom_webhooks::plumbing::clock::SystemClock;
use intercom_webhooks::plumbing::metrics::Metrics;
use intercom_webhooks::processing::handlers::Builtins;
use intercom_webhooks::processing::mirror::{extract, Extracted, MirrorHandler};
use intercom_webhooks::processing::worker::{Worker, WorkerSettings};
use intercom_webhooks::receiving::intake::{Intake, Verdict, DEFAULT_MAX_BODY_BYTES};
use intercom_webhooks::receiving::notification::Notification;
use intercom_webhooks::receiving::queue::{Delivery, QueueConsumer};
use intercom_webhooks::receiving::signature::ClientSecrets;

/// Counts requests by `X-Amz-Target` (the operation), per phase.
#[derive(Debug, Clone, Default)]
struct Counter {
    phase: Arc<Mutex<&'static str>>,
    counts: Arc<Mutex<BTreeMap<(&'static str, String), u64>>>,
}

impl Intercept for Counter {
    fn name(&self) -> &'static str {
        "request-counter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("unknown")
            .to_owned();
        let phase = *self.phase.lock().unwrap();
        *self.counts.lock().unwrap().entry((phase, operation)).or_default() += 1;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mirror_on = !args.iter().any(|a| a == "--no-mirror");
    let updates = args.iter().any(|a| a == "--updates");
    let eventbridge_on = args.iter().any(|a| a == "--eventbridge");
    // The mirror table's `by_type` index (`MirrorIndex=true`; the template's default is without).
    let type_index = args.iter().any(|a| a == "--index");
    let record_completion = args.iter().any(|a| a == "--record-completion");
    let n: usize = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200);
    anyhow::ensure!(
        std::env::var("AWS_ENDPOINT_URL").is_ok(),
        "AWS_ENDPOINT_URL is not set: run bench/aws-calls.sh, which starts moto_server"
    );
    let sdk = load_config(CallBudget::WORKER).await;
    let counter = Counter::default();
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&sdk)
            .interceptor(counter.clone())
            .build(),
    );
    let dynamo = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .interceptor(counter.clone())
            .build(),
    );
    let events = aws_sdk_eventbridge::Client::from_conf(
        aws_sdk_eventbridge::config::Builder::from(&sdk)
            .interceptor(counter.clone())
            .build(),
    );
    let run = uuid::Uuid::new_v4().simple().to_string();
    *counter.phase.lock().unwrap() = "setup";
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("calls-{run}"))
        .send()
        .await?
        .queue_url
        .unwrap();
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("calls-dlq-{run}"))
        .send()
        .await?
        .queue_url
        .unwrap();
    let table = format!("calls-{run}");
    {
        use aws_sdk_dynamodb::types::*;
        dynamo
            .create_table()
            .table_name(&table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()?,
            )
            .send()
            .await?;
    }

    let mirror_table = format!("calls-mirror-{run}");
    if mirror_on {
        DynamoMirror::create_table(&dynamo, &mirror_table, type_index).await?;
    }

    // Receiver: every notification a fresh id, signed, through the intake.
    let secrets = ClientSecrets::parse("bench-secret")?;
    let queue = SqsQueue::new(sqs.clone(), &queue_url, &dlq_url);
    let intake = Intake::new(secrets.clone(), Arc::new(queue.clone()), DEFAULT_MAX_BODY_BYTES);
    let template: serde_json::Value = serde_json::from_slice(&std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/events/notifications/conversation_user_replied.json"
    ))?)?;
    *counter.phase.lock().unwrap() = "receiver";
    let mut item_bytes = Vec::with_capacity(n);
    for i in 0..n {
        let mut body = template.clone();
        body["id"] = format!("notif_calls_{run}_{i}").into();
        if updates {
            let updated_at = body["data"]["item"]["updated_at"].as_i64().unwrap_or(0) + i as i64;
            body["data"]["item"]["updated_at"] = updated_at.into();
        } else {
            body["data"]["item"]["id"] = format!("calls-{run}-{i}").into();
        }
        let bytes = serde_json::to_vec_pretty(&body)?;
        if let Extracted::Write(write) = extract(&Notification::parse(&bytes)?) {
            item_bytes.push((write.item.as_ref().map_or(0, Vec::len), billed_size(&write)));
        }
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-hub-signature", secrets.primary().sign(&bytes).parse()?);
        let outcome = intake.handle(&headers, &bytes).await;
        anyhow::ensure!(
            matches!(outcome, Verdict::Queued { .. }),
            "not queued: {outcome:?}"
        );
    }

    // Worker: batches of 10, as the event source mapping delivers them.
    let clock = Arc::new(SystemClock);
    let metrics = Arc::new(Metrics::new());
    let bus = format!("calls-{run}");
    let mut others: Vec<(
        Vec<String>,
        Arc<dyn intercom_webhooks::processing::handler::Handler>,
    )> = Vec::new();
    if eventbridge_on {
        *counter.phase.lock().unwrap() = "setup";
        events.create_event_bus().name(&bus).send().await?;
        let settings = EventBridgeSettings {
            bus: bus.clone(),
            source: "intercom".into(),
            topics: vec!["*".into()],
        };
        others.push((
            vec!["*".into()],
            Arc::new(EventBridgeHandler::new(events.clone(), settings).with_metrics(metrics.clone())),
        ));
    }
    let worker = Worker::new(
        Arc::new(
            DynamoStore::new(dynamo.clone(), &table, clock.clone()).with_batch_completion(!record_completion),
        ),
        Arc::new(SqsDeadLetterQueue::new(sqs.clone(), &dlq_url)),
        intercom_webhooks::processing::handlers::default_router(Builtins {
            mirror: mirror_on.then(|| {
                MirrorHandler::new(Arc::new(DynamoMirror::new(dynamo.clone(), &mirror_table)))
                    .with_metrics(metrics.clone())
            }),
            others,
            ..Builtins::default()
        })?,
        clock,
        metrics.clone(),
        WorkerSettings::default(),
    );
    let mut processed = 0;
    let mut batches = 0;
    let mut worker_time = std::time::Duration::ZERO;
    while processed < n && batches < n {
        *counter.phase.lock().unwrap() = "event source mapping";
        let deliveries: Vec<Delivery> = queue.receive(10, std::time::Duration::from_secs(60)).await?;
        if deliveries.is_empty() {
            continue;
        }
        batches += 1;
        *counter.phase.lock().unwrap() = "worker";
        let deadline = intercom_webhooks::plumbing::clock::unix_ms_now() + 30_000;
        let started = std::time::Instant::now();
        let result = worker
            .process_batch(deliveries.iter().map(|d| d.record.clone()).collect(), deadline)
            .await;
        worker_time += started.elapsed();
        anyhow::ensure!(
            result.failures().is_empty(),
            "failures on the happy path: {result:?}"
        );
        processed += deliveries.len();
        *counter.phase.lock().unwrap() = "event source mapping";
        let mut delete = sqs.delete_message_batch().queue_url(&queue_url);
        for (i, d) in deliveries.iter().enumerate() {
            delete = delete.entries(
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&d.receipt)
                    .build()?,
            );
        }
        delete.send().await?;
    }

    let counts = counter.counts.lock().unwrap().clone();
    println!("notifications: {n}, worker batches: {batches}");
    println!(
        "{:<22} {:<40} {:>8} {:>14}",
        "phase", "operation", "calls", "per notif."
    );
    let mut sqs_total = 0;
    let mut put_events = 0;
    let mut dynamo_writes = 0;
    let mut dynamo_total = 0;
    for ((phase, operation), calls) in &counts {
        if *phase == "setup" {
            continue;
        }
        println!(
            "{phase:<22} {operation:<40} {calls:>8} {:>14.3}",
            *calls as f64 / n as f64
        );
        if operation.starts_with("AmazonSQS.") {
            sqs_total += calls;
        }
        if operation.ends_with("PutEvents") {
            put_events += calls;
        }
        if operation.starts_with("DynamoDB_") {
            dynamo_total += calls;
            if ["PutItem", "UpdateItem", "DeleteItem"]
                .iter()
                .any(|w| operation.ends_with(w))
            {
                dynamo_writes += calls;
            }
        }
    }
    let per = |x: u64| x as f64 / n as f64;
    println!();
    println!(
        "SQS requests per notification:      {:.3}  (goal <= 1.3)",
        per(sqs_total)
    );
    // The claim, the completion (one per record, or one per batch), and the mirror's put.
    let completions = if record_completion {
        "1 per record".to_owned()
    } else {
        format!("1 per batch of {:.1}", n as f64 / batches.max(1) as f64)
    };
    println!(
        "DynamoDB writes per notification:   {:.3}  (expected: claim 1, completion {completions}{})",
        per(dynamo_writes),
        if !mirror_on {
            ""
        } else if updates {
            ", mirror 1, plus a counter update per stale one"
        } else {
            ", mirror 1"
        }
    );
    println!("DynamoDB requests per notification: {:.3}", per(dynamo_total));

    // Write units. The idempotency claim and completion (a record's, or a batch's item of slot numbers)
    // are small items: 1 unit each. A mirror write is
    // billed per started KB of its item (the compressed object with its keys and attributes, sized by
    // DynamoDB's rules: `billed_size`), applied or refused; an applied one also writes the `by_type`
    // index entry (1 unit for a new object, 2 when a newer version moves it); a stale one adds the 1-unit
    // counter update, which is among the UpdateItem calls counted above.
    let results =
        |result: &str| metrics.get("mirror_writes", &[("type", "conversation"), ("result", result)]);
    let (written, unchanged, stale) = (results("written"), results("unchanged"), results("stale"));
    let average_kb = |sizes: usize| sizes as f64 / item_bytes.len().max(1) as f64 / 1024.0;
    let item_kb = average_kb(item_bytes.iter().map(|(compressed, _)| compressed).sum());
    let billed_kb = average_kb(item_bytes.iter().map(|(_, billed)| billed).sum());
    let put_units = item_bytes
        .iter()
        .map(|(_, billed)| billed.div_ceil(1024) as f64)
        .sum::<f64>()
        / n as f64;
    let index_units = if !type_index {
        0.0
    } else if updates {
        // The first write is a new object; every later applied one moves its entry.
        (1 + 2 * written.saturating_sub(1)) as f64 / n as f64
    } else {
        per(written)
    };
    let mirror_units = if mirror_on { put_units + index_units } else { 0.0 };
    let other_writes = per(dynamo_writes) - if mirror_on { 1.0 } else { 0.0 };
    let write_units = other_writes + mirror_units;
    if mirror_on {
        println!(
            "Mirror: {} ({written} applied, {unchanged} unchanged, {stale} stale); compressed item {item_kb:.2} KB, \
             {billed_kb:.2} KB with its keys and attributes on average: {put_units:.2} units per put and \
             {index_units:.2} for its index ({}), per notification",
            if updates { "versions of one conversation (--updates)" } else { "a new conversation each" },
            if type_index { "by_type, --index" } else { "none" }
        );
    } else {
        println!("Mirror: off (--no-mirror)");
    }

    let published = metrics.get("eventbridge_entries", &[("result", "published")]);
    if eventbridge_on {
        println!(
            "EventBridge: {published} entries in {put_events} PutEvents calls ({:.2} entries a call)",
            published as f64 / put_events.max(1) as f64
        );
    }
    println!(
        "Worker: {processed} notifications in {:.2} s of batch processing against the emulator: {:.0}/s",
        worker_time.as_secs_f64(),
        processed as f64 / worker_time.as_secs_f64().max(1e-9)
    );

    // List prices, us-east-1, standard SQS queue, DynamoDB on-demand, Lambda arm64 (check current prices).
    const SQS_PER_MILLION: f64 = 0.40;
    // Custom events: each 64 KB chunk of an entry is one (these notifications are one chunk each).
    const EVENTS_PER_MILLION: f64 = 1.00;
    const WRU_PER_MILLION: f64 = 0.625;
    const RRU_PER_MILLION: f64 = 0.125;
    let sqs_cost = per(sqs_total) * SQS_PER_MILLION;
    let dynamo_cost = write_units * WRU_PER_MILLION + per(dynamo_total - dynamo_writes) * RRU_PER_MILLION;
    println!();
    println!("Cost per million notifications (list prices, us-east-1; messages < 64 KB):");
    println!(
        "  SQS      {:.2} M requests x $0.40/M      = ${sqs_cost:.2}",
        per(sqs_total)
    );
    println!("  DynamoDB {write_units:.2} M write units x $0.625/M = ${dynamo_cost:.2}");
    let events_cost = per(published) * EVENTS_PER_MILLION;
    if eventbridge_on {
        println!(
            "  EventBridge {:.2} M entries x $1.00/M    = ${events_cost:.2}",
            per(published)
        );
    }
    println!(
        "  total for queue, store{}      = ${:.2}",
        if eventbridge_on { " and bus" } else { "        " },
        sqs_cost + dynamo_cost + events_cost
    );
    Ok(())
}
