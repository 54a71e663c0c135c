//! The EventBridge publisher on the AWS emulator: a bus, a rule matching two topics with an SQS queue as
//! its target; the worker processes every fixture in one batch and exactly the matching notifications
//! arrive in the queue, with the topic as `detail-type` and the notification as `detail`.

use std::sync::Arc;

use intercom_webhooks::aws::eventbridge::{EventBridgeHandler, EventBridgeSettings};
use intercom_webhooks::memory::{MemoryQueue, MemoryStore};
use intercom_webhooks::plumbing::clock::{unix_ms_now, SystemClock};
use intercom_webhooks::plumbing::metrics::Metrics;
use intercom_webhooks::processing::handlers::{default_router, Builtins};
use intercom_webhooks::processing::worker::{Outcome, Record, Worker, WorkerSettings};
use intercom_webhooks::receiving::queue::Message;
use serde_json::{json, Value};

use crate::support::{create_queue, drain, fixtures, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_matching_notifications_reach_a_rules_target() {
    let sdk = crate::support::aws_config().await;
    let events = aws_sdk_eventbridge::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (bus, target) = bus_with_rule_to_queue(
        &sdk,
        json!({
            "source": ["intercom"],
            "detail-type": ["conversation.user.created", "conversation.user.replied"],
        }),
    )
    .await;

    let metrics = Arc::new(Metrics::new());
    let publisher = EventBridgeHandler::new(
        events.clone(),
        EventBridgeSettings {
            bus: bus.clone(),
            source: "intercom".into(),
            topics: vec!["*".into()],
        },
    )
    .with_metrics(metrics.clone());
    let clock = Arc::new(SystemClock);
    let worker = Worker::new(
        Arc::new(MemoryStore::new(clock.clone())),
        Arc::new(MemoryQueue::new(5, clock.clone())),
        default_router(Builtins {
            others: vec![(vec!["*".into()], Arc::new(publisher))],
            ..Builtins::default()
        })
        .unwrap(),
        clock,
        metrics.clone(),
        WorkerSettings::default(),
    );
    let all: Vec<(String, Vec<u8>)> = fixtures().into_iter().filter(|(n, _)| n != "ping.json").collect();
    let records: Vec<Record> = all
        .iter()
        .map(|(name, body)| Record {
            message_id: name.clone(),
            message: Message::from_bytes(body),
            receive_count: 1,
        })
        .collect();
    let result = worker.process_batch(records, unix_ms_now() + 30_000).await;
    assert!(
        result.outcomes.iter().all(|(_, o)| *o == Outcome::Processed),
        "{result:?}"
    );
    assert_eq!(metrics.get("eventbridge_entries", &[("result", "published")]), 9);

    let arrived = drain(&sqs, &target).await;
    let mut got: Vec<(String, Value)> = arrived
        .iter()
        .map(|m| {
            let event: Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
            (event["detail-type"].as_str().unwrap().to_owned(), event)
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let types: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["conversation.user.created", "conversation.user.replied"]);
    for (topic, event) in &got {
        assert_eq!(event["source"], "intercom");
        let (_, body) = all
            .iter()
            .find(|(_, body)| serde_json::from_slice::<Value>(body).unwrap()["topic"] == topic.as_str())
            .unwrap();
        let sent: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["detail"], sent, "{topic}: the notification whole");
        let created = sent["created_at"].as_i64().unwrap();
        let time = jiff::Timestamp::from_second(created).unwrap().to_string();
        assert_eq!(
            event["time"].as_str(),
            Some(time.as_str()),
            "Time is the notification's created_at"
        );
    }
}

/// A new bus with one rule (`pattern`) delivering to a new SQS queue: (bus name, queue URL).
pub async fn bus_with_rule_to_queue(sdk: &aws_config::SdkConfig, pattern: Value) -> (String, String) {
    let events = aws_sdk_eventbridge::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let bus = unique("intercom-bus");
    events.create_event_bus().name(&bus).send().await.unwrap();
    let target = create_queue(&sqs, &unique("bus-target")).await;
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&target)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    events
        .put_rule()
        .name("subscriber")
        .event_bus_name(&bus)
        .event_pattern(pattern.to_string())
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .rule("subscriber")
        .event_bus_name(&bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    (bus, target)
}
