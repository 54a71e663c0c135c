//! The worker against the AWS emulator: DynamoDB idempotency, SQS dead-letter queue and redrive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::support::moto_worker::MotoWorker;
use crate::support::{create_queue, drain, notification_body, record, string_attribute, unique};
use intercom_webhooks::aws::sqs::string_attributes;
use intercom_webhooks::aws::sqs::SqsDeadLetterQueue;
use intercom_webhooks::plumbing::clock::Clock;
use intercom_webhooks::processing::handler::HandlerError;
use intercom_webhooks::processing::idempotency::{
    Claim, ClaimOutcome, IdempotencyKey, IdempotencyStore, StoreError,
};
use intercom_webhooks::processing::router::Router;
use intercom_webhooks::processing::worker::{Outcome, Record, Worker, WorkerSettings, PAST_DEADLINE};
use intercom_webhooks::receiving::notification::Notification;
use intercom_webhooks::receiving::queue::attr;
use serde_json::json;

/// The worker completing each record on its own (the store's default; `serve`'s way).
type Setup = MotoWorker;

async fn setup() -> Setup {
    MotoWorker::start(false).await
}

fn deadline() -> i64 {
    intercom_webhooks::plumbing::clock::unix_ms_now() + 60_000
}

fn body(id: &str) -> Vec<u8> {
    notification_body(
        id,
        "conversation.user.created",
        json!({"type": "conversation", "id": "1"}),
    )
}

#[tokio::test]
async fn the_same_notification_twice_in_a_batch_and_again_later_is_handled_once() {
    let s = setup().await;
    let b = body("notif_dup");
    let first = s
        .worker
        .process_batch(vec![record("m1", &b), record("m2", &b)], deadline())
        .await;
    assert_eq!(s.handler.calls("notif_dup"), 1);
    assert_eq!(first.count(Outcome::Processed), 1);
    // The other copy either saw the claim in flight (retried later) or the completed record.
    assert_eq!(
        first.count(Outcome::InFlight) + first.count(Outcome::Duplicate),
        1
    );

    let later = s
        .worker
        .process_batch(vec![record("m3", &b), record("m2", &b)], deadline())
        .await;
    assert_eq!(later.count(Outcome::Duplicate), 2);
    assert!(later.failures().is_empty());
    assert_eq!(s.handler.calls("notif_dup"), 1, "the effect happened once");

    let item = s.item("testapp#notif_dup").await.unwrap();
    assert_eq!(item["status"].as_s().unwrap(), "COMPLETED");
    let expiration: i64 = item["expiration"].as_n().unwrap().parse().unwrap();
    let now = intercom_webhooks::plumbing::clock::unix_ms_now() / 1000;
    assert!(
        (expiration - now - 7 * 86_400).abs() < 60,
        "retention of 7 days by default"
    );
    assert_eq!(item["payload_hash"].as_s().unwrap().len(), 64);
}

#[tokio::test]
async fn concurrent_claims_of_one_id_have_exactly_one_winner() {
    let s = setup().await;
    let now = s.clock.now_ms();
    let claim = Claim {
        key: IdempotencyKey::from_stored("race"),
        payload_hash: "h".into(),
        now_ms: now,
        lease_until_ms: now + 30_000,
        expiration: now / 1000 + 3600,
        batch: None,
    };
    let results = futures::future::join_all((0..16).map(|_| s.store.claim(&claim))).await;
    let winners = results
        .iter()
        .filter(|r| matches!(r, Ok(ClaimOutcome::Claimed(_))))
        .count();
    let in_flight = results
        .iter()
        .filter(|r| matches!(r, Ok(ClaimOutcome::InFlight { .. })))
        .count();
    assert_eq!((winners, in_flight), (1, 15), "{results:?}");
}

#[tokio::test]
async fn a_retryable_failure_releases_the_claim_and_the_next_delivery_processes_it() {
    let s = setup().await;
    s.handler
        .fail("notif_retry", 1, HandlerError::retryable("CRM down"));
    let b = body("notif_retry");
    let result = s.worker.process_batch(vec![record("m1", &b)], deadline()).await;
    assert_eq!(result.failures(), ["m1"]);
    assert!(s.item("testapp#notif_retry").await.is_none(), "claim released");
    let result = s.worker.process_batch(vec![record("m1", &b)], deadline()).await;
    assert_eq!(result.count(Outcome::Processed), 1);
    assert!(result.failures().is_empty());
    assert_eq!(s.handler.calls("notif_retry"), 2);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_dead_workers_late_writes_are_refused() {
    let s = setup().await;
    let b = body("notif_lease");
    let n = Notification::parse(&b).unwrap();
    let now = s.clock.now_ms();
    // A worker claims with a 1-second lease, then dies.
    let dead = match s
        .store
        .claim(&Claim {
            key: IdempotencyKey::for_notification(&n.id, n.app_id()),
            payload_hash: intercom_webhooks::processing::idempotency::payload_hash(&n.data),
            now_ms: now,
            lease_until_ms: now + 1_000,
            expiration: now / 1000 + 3600,
            batch: None,
        })
        .await
        .unwrap()
    {
        ClaimOutcome::Claimed(lease) => lease,
        other => panic!("{other:?}"),
    };
    // While the lease holds, a delivery is in flight elsewhere.
    let result = s.worker.process_batch(vec![record("m1", &b)], deadline()).await;
    assert_eq!(result.outcomes[0].1, Outcome::InFlight);
    assert_eq!(result.failures(), ["m1"]);
    // After the lease expires, the next delivery takes it over.
    s.clock.advance(2_000);
    let result = s
        .worker
        .process_batch(vec![record("m1", &b)], deadline() + 2_000)
        .await;
    assert_eq!(result.outcomes[0].1, Outcome::Processed);
    assert_eq!(s.handler.calls("notif_lease"), 1);
    // The dead worker wakes up: it can neither complete nor delete the new holder's record.
    assert_eq!(
        s.store.complete(&dead, now / 1000 + 3600).await,
        Err(StoreError::LeaseLost(dead.key.clone()))
    );
    assert_eq!(
        s.store.release(&dead).await,
        Err(StoreError::LeaseLost(dead.key.clone()))
    );
    assert_eq!(
        s.item("testapp#notif_lease").await.unwrap()["status"]
            .as_s()
            .unwrap(),
        "COMPLETED"
    );
}

#[tokio::test]
async fn expired_records_are_absent_to_a_claim() {
    let s = setup().await;
    let b = body("notif_old");
    assert_eq!(
        s.worker
            .process_batch(vec![record("m1", &b)], deadline())
            .await
            .outcomes[0]
            .1,
        Outcome::Processed
    );
    // Eight days later the 7-day retention is over; moto never deletes by TTL, the condition does.
    s.clock.advance(8 * 86_400 * 1000);
    let result = s
        .worker
        .process_batch(vec![record("m2", &b)], deadline() + 8 * 86_400 * 1000)
        .await;
    assert_eq!(result.outcomes[0].1, Outcome::Processed);
    assert_eq!(s.handler.calls("notif_old"), 2);
}

#[tokio::test]
async fn permanent_failures_and_malformed_bodies_go_to_the_dlq_with_their_reason() {
    let s = setup().await;
    s.handler
        .fail("notif_perm", 99, HandlerError::permanent("contact has no e-mail"));
    let good = body("notif_ok");
    let perm = body("notif_perm");
    let malformed = b"{\"id\": \"notif_x\", \"topic\": ".to_vec();
    let result = s
        .worker
        .process_batch(
            vec![
                record("ok", &good),
                record("perm", &perm),
                record("bad", &malformed),
            ],
            deadline(),
        )
        .await;
    assert!(result.failures().is_empty(), "all acknowledged: {result:?}");
    assert_eq!(result.count(Outcome::DeadLettered), 2);
    assert_eq!(result.count(Outcome::Processed), 1);
    assert!(s.item("testapp#notif_perm").await.is_none(), "claim released");

    let mut dead = drain(&s.sqs, &s.dlq).await;
    dead.sort_by_key(|m| string_attribute(m, attr::REASON));
    assert_eq!(dead.len(), 2);
    assert_eq!(
        string_attribute(&dead[0], attr::REASON).unwrap(),
        "handler scripted: contact has no e-mail"
    );
    assert_eq!(dead[0].body.as_deref().unwrap().as_bytes(), &perm[..]);
    assert_eq!(
        string_attribute(&dead[0], "notification_id").as_deref(),
        Some("notif_perm")
    );
    assert!(string_attribute(&dead[1], attr::REASON)
        .unwrap()
        .starts_with("malformed: "));
    assert_eq!(dead[1].body.as_deref().unwrap().as_bytes(), &malformed[..]);
    assert_eq!(s.metrics.total("dead_lettered"), 2);
}

#[tokio::test]
async fn a_duplicate_with_a_different_payload_is_not_reprocessed_but_counted() {
    let s = setup().await;
    let a = notification_body(
        "notif_reuse",
        "contact.created",
        json!({"type": "contact", "id": "1"}),
    );
    let b = notification_body(
        "notif_reuse",
        "contact.created",
        json!({"type": "contact", "id": "2"}),
    );
    s.worker.process_batch(vec![record("m1", &a)], deadline()).await;
    let result = s.worker.process_batch(vec![record("m2", &b)], deadline()).await;
    assert_eq!(result.outcomes[0].1, Outcome::Duplicate);
    assert_eq!(s.handler.calls("notif_reuse"), 1);
    assert_eq!(s.metrics.get("duplicate_payload_mismatch", &[]), 1);
    // The same payload again is a plain duplicate.
    s.worker.process_batch(vec![record("m3", &a)], deadline()).await;
    assert_eq!(s.metrics.get("duplicate_payload_mismatch", &[]), 1);
    assert_eq!(s.metrics.get("duplicates", &[]), 2);
}

#[tokio::test]
async fn a_panicking_handler_fails_only_its_record_and_a_batch_that_all_fails_reports_all() {
    let s = setup().await;
    s.handler.panic_on.lock().unwrap().push("notif_panic".into());
    let result = s
        .worker
        .process_batch(
            vec![
                record("p", &body("notif_panic")),
                record("fine", &body("notif_fine")),
            ],
            deadline(),
        )
        .await;
    assert_eq!(result.failures(), ["p"]);
    assert_eq!(result.count(Outcome::Processed), 1);
    assert!(
        s.item("testapp#notif_panic").await.is_none(),
        "claim released after the panic"
    );

    for id in ["a", "b", "c"] {
        s.handler
            .fail(&format!("notif_{id}"), 9, HandlerError::retryable("down"));
    }
    let records: Vec<Record> = ["a", "b", "c"]
        .iter()
        .map(|id| record(id, &body(&format!("notif_{id}"))))
        .collect();
    let result = s.worker.process_batch(records, deadline()).await;
    assert_eq!(result.failures(), ["a", "b", "c"]);
}

#[tokio::test]
async fn an_unknown_topic_is_acknowledged_and_counted_never_dead_lettered() {
    let s = setup().await;
    let router = Router::new().route("conversation.*", s.handler.clone()).unwrap();
    let worker = Worker::new(
        s.store.clone(),
        Arc::new(SqsDeadLetterQueue::new(s.sqs.clone(), &s.dlq)),
        router,
        s.clock.clone(),
        s.metrics.clone(),
        WorkerSettings::default(),
    );
    let b = notification_body("notif_u", "brand.new.topic", json!({"type": "thing"}));
    let result = worker.process_batch(vec![record("m", &b)], deadline()).await;
    assert_eq!(result.outcomes[0].1, Outcome::Ignored);
    assert!(result.failures().is_empty());
    assert_eq!(
        s.metrics.get(
            "processed",
            &[("topic", "brand.new.topic"), ("outcome", "ignored")]
        ),
        1
    );
    assert!(drain(&s.sqs, &s.dlq).await.is_empty());
}

/// The real redrive: a message that keeps failing is moved to the DLQ by SQS after maxReceiveCount
/// receives. The worker function is driven with messages received from moto.
#[tokio::test]
async fn a_record_that_keeps_failing_reaches_the_dlq_after_max_receive_count() {
    let s = setup().await;
    let (queue, redrive_dlq) = crate::support::create_queue_with_dlq(&s.sqs, "main", 5).await;
    s.handler
        .fail("notif_stuck", usize::MAX, HandlerError::retryable("always down"));
    let b = body("notif_stuck");
    let envelope = intercom_webhooks::receiving::notification::Envelope::parse(&b).unwrap();
    let message = intercom_webhooks::receiving::queue::Message::for_notification(&b, &envelope);
    use intercom_webhooks::receiving::queue::Queue;
    intercom_webhooks::aws::sqs::SqsQueue::new(s.sqs.clone(), &queue, &redrive_dlq)
        .send(&message)
        .await
        .unwrap();

    let mut receives = 0;
    for _ in 0..10 {
        let out = s
            .sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        receives += messages.len();
        let records: Vec<Record> = messages
            .iter()
            .map(|m| Record {
                message_id: m.message_id.clone().unwrap(),
                message: intercom_webhooks::receiving::queue::Message {
                    body: m.body.clone().unwrap(),
                    attributes: string_attributes(m.message_attributes.clone()),
                },
                receive_count: m
                    .attributes
                    .as_ref()
                    .and_then(|a| {
                        a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
                    })
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1),
            })
            .collect();
        let result = s.worker.process_batch(records, deadline()).await;
        for m in &messages {
            let handle = m.receipt_handle.clone().unwrap();
            if result.failures().contains(m.message_id.as_ref().unwrap()) {
                // What the visibility timeout does, without waiting for it.
                s.sqs
                    .change_message_visibility()
                    .queue_url(&queue)
                    .receipt_handle(handle)
                    .visibility_timeout(0)
                    .send()
                    .await
                    .unwrap();
            } else {
                s.sqs
                    .delete_message()
                    .queue_url(&queue)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
    assert_eq!(receives, 5, "received maxReceiveCount times");
    assert_eq!(s.handler.calls("notif_stuck"), 5);
    let dead = drain(&s.sqs, &redrive_dlq).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body.as_deref().unwrap().as_bytes(), &b[..]);
    assert!(
        s.item("testapp#notif_stuck").await.is_none(),
        "no claim left behind"
    );
}

/// A worker over the same store, queues and handler, with a 500 ms safety margin before the deadline.
fn worker_with_margin(s: &Setup, concurrency: usize) -> Worker {
    Worker::new(
        s.store.clone(),
        Arc::new(SqsDeadLetterQueue::new(s.sqs.clone(), &s.dlq)),
        Router::new().route("*", s.handler.clone()).unwrap(),
        s.clock.clone(),
        s.metrics.clone(),
        WorkerSettings {
            concurrency,
            deadline_margin: Duration::from_millis(500),
            ..WorkerSettings::default()
        },
    )
}

#[tokio::test]
async fn a_record_still_running_at_the_deadline_is_retried_and_the_batch_ends_in_time() {
    let s = setup().await;
    let worker = worker_with_margin(&s, 10);
    s.handler
        .stall_first
        .lock()
        .unwrap()
        .insert("notif_slow".into(), Duration::from_secs(8));
    let slow = body("notif_slow");
    let soon = intercom_webhooks::plumbing::clock::unix_ms_now() + 2_500;
    let result = worker
        .process_batch(
            vec![
                record("slow", &slow),
                record("fast1", &body("notif_fast1")),
                record("fast2", &body("notif_fast2")),
            ],
            soon,
        )
        .await;
    let ended = intercom_webhooks::plumbing::clock::unix_ms_now();
    assert!(ended < soon, "returned {} ms after the deadline", ended - soon);
    assert_eq!(
        result.outcomes,
        [
            ("slow".to_owned(), Outcome::Retry),
            ("fast1".to_owned(), Outcome::Processed),
            ("fast2".to_owned(), Outcome::Processed),
        ]
    );
    assert_eq!(result.failures(), ["slow"]);
    assert_eq!(result.errors["slow"].to_string(), PAST_DEADLINE);
    assert!(drain(&s.sqs, &s.dlq).await.is_empty(), "never dead-lettered");

    // The next delivery, once the cut-off record's lease has ended, is processed; later ones are duplicates.
    s.clock.advance(3_000);
    let next = deadline() + 3_000;
    let result = worker.process_batch(vec![record("slow", &slow)], next).await;
    assert_eq!(result.outcomes[0].1, Outcome::Processed, "{result:?}");
    let result = worker.process_batch(vec![record("slow2", &slow)], next).await;
    assert_eq!(result.outcomes[0].1, Outcome::Duplicate);
    assert_eq!(
        s.handler.calls("notif_slow"),
        2,
        "cut off once, then completed once"
    );
    assert_eq!(
        s.item("testapp#notif_slow").await.unwrap()["status"]
            .as_s()
            .unwrap(),
        "COMPLETED"
    );
}

#[tokio::test]
async fn records_waiting_for_a_concurrency_slot_at_the_deadline_are_retried_unstarted() {
    let s = setup().await;
    let worker = worker_with_margin(&s, 1);
    s.handler
        .stall_first
        .lock()
        .unwrap()
        .insert("notif_first".into(), Duration::from_secs(8));
    let soon = intercom_webhooks::plumbing::clock::unix_ms_now() + 2_000;
    let result = worker
        .process_batch(
            vec![
                record("first", &body("notif_first")),
                record("queued", &body("notif_queued")),
            ],
            soon,
        )
        .await;
    assert!(intercom_webhooks::plumbing::clock::unix_ms_now() < soon);
    assert_eq!(result.failures(), ["first", "queued"]);
    assert_eq!(result.errors["queued"].to_string(), PAST_DEADLINE);
    assert_eq!(s.handler.calls("notif_queued"), 0, "never started");
    assert!(s.item("testapp#notif_queued").await.is_none(), "never claimed");
    assert!(drain(&s.sqs, &s.dlq).await.is_empty());
}

/// Receives the one message of `queue` within `wait`, hidden for `visibility` seconds; its receipt.
async fn receive_one(sqs: &aws_sdk_sqs::Client, queue: &str, visibility: i32) -> Option<(String, String)> {
    let out = sqs
        .receive_message()
        .queue_url(queue)
        .visibility_timeout(visibility)
        .send()
        .await
        .unwrap();
    let m = out.messages.unwrap_or_default().into_iter().next()?;
    Some((m.message_id.unwrap(), m.receipt_handle.unwrap()))
}

#[tokio::test]
async fn on_lambda_a_handlers_retry_delay_hides_the_message_that_long() {
    use intercom_webhooks::aws::lambda_sqs::delay_retries;
    use intercom_webhooks::processing::worker::{BatchResult, RecordError};
    let sdk = crate::support::aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = create_queue(&sqs, &unique("delayed")).await;
    for body in ["rate-limited", "failed"] {
        sqs.send_message()
            .queue_url(&queue)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let (limited, limited_receipt) = receive_one(&sqs, &queue, 1).await.unwrap();
    let (failed, failed_receipt) = receive_one(&sqs, &queue, 1).await.unwrap();

    // One record failed with a 429's Retry-After of 4 s, the other without a delay.
    let mut result = BatchResult {
        outcomes: vec![
            (limited.clone(), Outcome::Retry),
            (failed.clone(), Outcome::Retry),
        ],
        ..BatchResult::default()
    };
    result.errors.insert(
        limited.clone(),
        RecordError::Handler {
            handler: "notify".into(),
            error: HandlerError::retry_after("429", Duration::from_secs(4)),
        },
    );
    result.errors.insert(
        failed.clone(),
        RecordError::Handler {
            handler: "notify".into(),
            error: HandlerError::retryable("503"),
        },
    );
    let receipts = HashMap::from([
        (limited.clone(), limited_receipt),
        (failed.clone(), failed_receipt),
    ]);
    assert_eq!(delay_retries(&sqs, &queue, &receipts, &result).await, 1);

    // After the receive's own 1 s, only the record without a delay is back…
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (first, _) = receive_one(&sqs, &queue, 30)
        .await
        .expect("the undelayed record is back");
    assert_eq!(first, failed);
    assert!(
        receive_one(&sqs, &queue, 30).await.is_none(),
        "the delayed record is still hidden"
    );
    // …and the delayed one once its 4 s have passed.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let (second, _) = receive_one(&sqs, &queue, 30)
        .await
        .expect("the delayed record is back");
    assert_eq!(second, limited);
}
