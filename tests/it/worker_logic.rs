//! The worker's logic on the in-memory adapters, driven as `serve` drives it (receive a batch, process it,
//! acknowledge or retry each message), with time moved on a shifted clock instead of waited for. The same
//! cases against DynamoDB and SQS on the emulator are in `worker.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::notification_body;
use crate::support::scripted::Scripted;
use async_trait::async_trait;
use intercom_webhooks::memory::{MemoryQueue, MemoryStore};
use intercom_webhooks::plumbing::clock::{Clock, ShiftedClock};
use intercom_webhooks::plumbing::metrics::Metrics;
use intercom_webhooks::processing::handler::{Handler, HandlerContext, HandlerError};
use intercom_webhooks::processing::idempotency::{COMPLETED, IN_PROGRESS};
use intercom_webhooks::processing::router::Router;
use intercom_webhooks::processing::worker::{BatchResult, Outcome, Worker, WorkerSettings};
use intercom_webhooks::receiving::notification::{Envelope, Notification};
use intercom_webhooks::receiving::queue::{attr, Delivery, Message, Queue, QueueConsumer};
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};

const VISIBILITY: Duration = Duration::from_secs(30);
/// How long a retried message stays hidden in these tests.
const RETRY_DELAY: Duration = Duration::from_secs(1);
const DAY_MS: i64 = 86_400_000;

struct Setup {
    clock: Arc<ShiftedClock>,
    queue: Arc<MemoryQueue>,
    store: Arc<MemoryStore>,
    handler: Arc<Scripted>,
    metrics: Arc<Metrics>,
    worker: Worker,
}

fn setup(max_receives: u32) -> Setup {
    let clock = Arc::new(ShiftedClock::default());
    let queue = Arc::new(MemoryQueue::new(max_receives, clock.clone()));
    let store = Arc::new(MemoryStore::new(clock.clone()));
    let handler = Arc::new(Scripted::default());
    let metrics = Arc::new(Metrics::new());
    let worker = worker(
        &store,
        &queue,
        &clock,
        &metrics,
        Router::new().route("*", handler.clone()).unwrap(),
    );
    Setup {
        clock,
        queue,
        store,
        handler,
        metrics,
        worker,
    }
}

fn worker(
    store: &Arc<MemoryStore>,
    queue: &Arc<MemoryQueue>,
    clock: &Arc<ShiftedClock>,
    metrics: &Arc<Metrics>,
    router: Router,
) -> Worker {
    Worker::new(
        store.clone(),
        queue.clone(),
        router,
        clock.clone(),
        metrics.clone(),
        WorkerSettings {
            visibility_timeout: VISIBILITY,
            ..WorkerSettings::default()
        },
    )
}

impl Setup {
    async fn send(&self, body: &[u8]) {
        let message = match Envelope::parse(body) {
            Ok(envelope) => Message::for_notification(body, &envelope),
            Err(_) => Message::from_bytes(body),
        };
        self.queue.send(&message).await.unwrap();
    }

    /// A batch's deadline, on the shifted clock.
    fn deadline(&self) -> i64 {
        self.clock.now_ms() + VISIBILITY.as_millis() as i64
    }

    /// One poll: receive a batch, process it, then acknowledge each message or retry it after
    /// `RETRY_DELAY` with its error.
    async fn poll(&self) -> BatchResult {
        let deliveries = self.queue.receive(10, VISIBILITY).await.unwrap();
        let result = self
            .worker
            .process_batch(
                deliveries.iter().map(|d| d.record.clone()).collect(),
                self.deadline(),
            )
            .await;
        settle(&self.queue, &deliveries, &result).await;
        result
    }
}

async fn settle(queue: &MemoryQueue, deliveries: &[Delivery], result: &BatchResult) {
    let failures = result.failures();
    for delivery in deliveries {
        let id = &delivery.record.message_id;
        if failures.contains(id) {
            let error = result.errors.get(id).map(|e| e.to_string()).unwrap_or_default();
            queue.retry(&delivery.receipt, &error, RETRY_DELAY).await.unwrap();
        } else {
            queue.ack(&delivery.receipt).await.unwrap();
        }
    }
}

fn body(id: &str) -> Vec<u8> {
    notification_body(
        id,
        "conversation.user.created",
        json!({"type": "conversation", "id": "1"}),
    )
}

fn key(id: &str) -> String {
    format!("testapp#{id}")
}

#[tokio::test]
async fn duplicates_in_a_batch_and_across_batches_are_handled_once() {
    let s = setup(5);
    let b = body("notif_dup");
    s.send(&b).await;
    s.send(&b).await;
    let first = s.poll().await;
    assert_eq!(first.outcomes.len(), 2);
    assert_eq!(first.count(Outcome::Processed), 1);
    // The copy that ran beside it found the claim in flight and is retried.
    assert_eq!(first.count(Outcome::InFlight), 1);
    assert_eq!(s.handler.calls("notif_dup"), 1);

    // Later, that copy and a new delivery of the same notification are duplicates.
    s.clock.advance(RETRY_DELAY.as_millis() as i64);
    s.send(&b).await;
    let later = s.poll().await;
    assert_eq!(later.outcomes.len(), 2);
    assert_eq!(later.count(Outcome::Duplicate), 2);
    assert!(later.failures().is_empty());
    assert!(s.queue.is_empty(), "every copy acknowledged");
    assert_eq!(s.handler.calls("notif_dup"), 1, "the effect happened once");
    assert_eq!(s.metrics.get("duplicates", &[]), 2);

    let record = s.store.record(&key("notif_dup")).unwrap();
    assert_eq!(record.status, COMPLETED);
    let retention_s = s.clock.now_ms() / 1000 + 7 * 86_400;
    assert!((record.expiration - retention_s).abs() < 60, "kept 7 days");
}

#[tokio::test]
async fn a_retryable_failure_releases_the_claim_and_the_next_delivery_processes_it() {
    let s = setup(5);
    s.handler
        .fail("notif_retry", 1, HandlerError::retryable("CRM down"));
    s.send(&body("notif_retry")).await;
    let result = s.poll().await;
    assert_eq!(result.count(Outcome::Retry), 1);
    assert_eq!(result.failures().len(), 1);
    assert!(s.store.record(&key("notif_retry")).is_none(), "claim released");

    // Hidden until the retry delay has passed on the clock.
    assert!(s.poll().await.outcomes.is_empty());
    s.clock.advance(RETRY_DELAY.as_millis() as i64);
    let result = s.poll().await;
    assert_eq!(result.count(Outcome::Processed), 1);
    assert!(result.failures().is_empty());
    assert_eq!(s.handler.calls("notif_retry"), 2);
    assert!(s.queue.is_empty());
}

/// Enters, says so, then waits to be let through: a worker that stalls mid-handler.
struct Gated {
    entered: mpsc::UnboundedSender<usize>,
    gates: Vec<Arc<Semaphore>>,
    calls: Mutex<usize>,
}

#[async_trait]
impl Handler for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    async fn handle(&self, _: &Notification, _: &HandlerContext) -> Result<(), HandlerError> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls
        };
        self.entered.send(call).unwrap();
        let gate = self.gates[call - 1].clone();
        let _pass = gate.acquire().await.unwrap();
        Ok(())
    }
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_stalled_workers_late_complete_is_refused() {
    let s = setup(5);
    let (entered, mut entries) = mpsc::unbounded_channel();
    let gates = vec![Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0))];
    let gated = Arc::new(Gated {
        entered,
        gates: gates.clone(),
        calls: Mutex::new(0),
    });
    let router = || Router::new().route("*", gated.clone()).unwrap();
    let stalled = Arc::new(worker(&s.store, &s.queue, &s.clock, &s.metrics, router()));
    let successor = worker(&s.store, &s.queue, &s.clock, &s.metrics, router());
    s.send(&body("notif_lease")).await;

    // The first worker claims and stalls in its handler.
    let first = s.queue.receive(10, VISIBILITY).await.unwrap();
    let deadline = s.deadline();
    let records = vec![first[0].record.clone()];
    let running = tokio::spawn({
        let stalled = stalled.clone();
        async move { stalled.process_batch(records, deadline).await }
    });
    assert_eq!(entries.recv().await, Some(1), "the first worker claimed");
    assert_eq!(s.store.record(&key("notif_lease")).unwrap().status, IN_PROGRESS);

    // Past the visibility timeout the queue hands the message out again, and the lease has ended too.
    s.clock.advance(VISIBILITY.as_millis() as i64 + 1_000);
    let second = s.queue.receive(10, VISIBILITY).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].record.receive_count, 2);
    let records = vec![second[0].record.clone()];
    let deadline = s.deadline();
    let taking_over = async { successor.process_batch(records, deadline).await };
    let finish_first = async {
        let successor_entered = tokio::time::timeout(Duration::from_secs(10), entries.recv()).await;
        assert_eq!(
            successor_entered,
            Ok(Some(2)),
            "the successor took the claim over"
        );
        // The stalled worker finishes now: its completion is refused (the record stays the
        // successor's), and its receipt no longer settles the message.
        gates[0].add_permits(1);
        let late = running.await.unwrap();
        settle(&s.queue, &first, &late).await;
        assert_eq!(s.store.record(&key("notif_lease")).unwrap().status, IN_PROGRESS);
        assert_eq!(s.queue.len(), 1);
        gates[1].add_permits(1);
    };
    let (result, ()) = tokio::join!(taking_over, finish_first);
    assert_eq!(result.count(Outcome::Processed), 1);
    settle(&s.queue, &second, &result).await;
    assert_eq!(s.store.record(&key("notif_lease")).unwrap().status, COMPLETED);
    assert_eq!(
        s.store
            .completed_at_ms(&key("notif_lease"))
            .map(|at| at >= s.clock.now_ms() - 5_000),
        Some(true),
        "completed on the shifted clock"
    );
    assert!(s.queue.is_empty());
}

#[tokio::test]
async fn a_completed_notification_is_processed_again_once_its_retention_is_over() {
    let s = setup(5);
    let b = body("notif_old");
    s.send(&b).await;
    assert_eq!(s.poll().await.count(Outcome::Processed), 1);

    // Six days on, within the 7-day retention: a duplicate.
    s.clock.advance(6 * DAY_MS);
    s.send(&b).await;
    assert_eq!(s.poll().await.count(Outcome::Duplicate), 1);
    // Eight days on, the record has expired: a new delivery is processed again.
    s.clock.advance(2 * DAY_MS);
    s.send(&b).await;
    assert_eq!(s.poll().await.count(Outcome::Processed), 1);
    assert_eq!(s.handler.calls("notif_old"), 2);
}

#[tokio::test]
async fn permanent_failures_and_malformed_bodies_are_dead_lettered_with_their_reason() {
    let s = setup(5);
    s.handler
        .fail("notif_perm", 99, HandlerError::permanent("contact has no e-mail"));
    let perm = body("notif_perm");
    let malformed = b"{\"id\": \"notif_x\", \"topic\": ".to_vec();
    s.send(&body("notif_ok")).await;
    s.send(&perm).await;
    s.send(&malformed).await;
    let result = s.poll().await;
    assert!(result.failures().is_empty(), "all acknowledged: {result:?}");
    assert_eq!(result.count(Outcome::DeadLettered), 2);
    assert_eq!(result.count(Outcome::Processed), 1);
    assert!(s.store.record(&key("notif_perm")).is_none(), "claim released");
    assert!(s.queue.is_empty());

    let mut dead = s.queue.dead_letters();
    dead.sort_by(|a, b| a.reason.cmp(&b.reason));
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].reason, "handler scripted: contact has no e-mail");
    assert_eq!(dead[0].body.as_bytes(), &perm[..]);
    assert_eq!(dead[0].notification_id.as_deref(), Some("notif_perm"));
    assert_eq!(dead[0].receive_count, 1);
    assert!(dead[1].reason.starts_with("malformed: "), "{}", dead[1].reason);
    assert_eq!(dead[1].body.as_bytes(), &malformed[..]);
    assert_eq!(s.metrics.total("dead_lettered"), 2);
}

#[tokio::test]
async fn a_panic_fails_only_its_record_until_the_queue_dead_letters_it() {
    let s = setup(3);
    s.handler.panic_on.lock().unwrap().push("notif_panic".into());
    s.send(&body("notif_panic")).await;
    s.send(&body("notif_fine")).await;
    let result = s.poll().await;
    assert_eq!(result.failures().len(), 1);
    assert_eq!(result.count(Outcome::Retry), 1);
    assert_eq!(result.count(Outcome::Processed), 1);
    assert_eq!(s.handler.calls("notif_fine"), 1);
    assert!(
        s.store.record(&key("notif_panic")).is_none(),
        "claim released after the panic"
    );

    // Every delivery panics; after the third receive the queue moves it to the dead letters.
    for _ in 2..=3 {
        s.clock.advance(RETRY_DELAY.as_millis() as i64);
        assert_eq!(s.poll().await.count(Outcome::Retry), 1);
    }
    s.clock.advance(RETRY_DELAY.as_millis() as i64);
    assert!(s.poll().await.outcomes.is_empty());
    assert!(s.queue.is_empty());
    let dead = s.queue.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].notification_id.as_deref(), Some("notif_panic"));
    assert_eq!(dead[0].receive_count, 3);
    assert!(
        dead[0].reason.starts_with("max receives exceeded (3): ")
            && dead[0].reason.contains("boom in notif_panic"),
        "{}",
        dead[0].reason
    );
    assert_eq!(
        dead[0].attributes.get(attr::TOPIC).map(String::as_str),
        Some("conversation.user.created")
    );
    assert_eq!(s.handler.calls("notif_panic"), 3);
}
