//! One behavioural suite per port, run against every adapter: in memory, SQLite, and SQS / DynamoDB on
//! the AWS emulator. A difference found here is a bug in one adapter.

use std::sync::Arc;
use std::time::Duration;

use crate::support::{create_table, drain, unique};
use async_trait::async_trait;
use intercom_webhooks::aws::dynamodb::DynamoStore;
use intercom_webhooks::aws::sqs::SqsQueue;
use intercom_webhooks::local::{Db, SqliteQueue, SqliteStore};
use intercom_webhooks::memory::{MemoryQueue, MemoryStore};
use intercom_webhooks::plumbing::clock::{unix_ms_now, ShiftedClock, SystemClock};
use intercom_webhooks::processing::idempotency::{
    Claim, ClaimOutcome, IdempotencyKey, IdempotencyStore, Lease, StoreError,
};
use intercom_webhooks::receiving::queue::{attr, Message, Queue, QueueConsumer};

// ---------------------------------------------------------------- idempotency store

fn claim(key: &str, hash: &str, now_ms: i64, lease_ms: i64) -> Claim {
    Claim {
        key: IdempotencyKey::from_stored(key),
        payload_hash: hash.into(),
        now_ms,
        lease_until_ms: now_ms + lease_ms,
        expiration: now_ms / 1000 + 3600,
        batch: None,
    }
}

/// A claim made at `now_ms` that asks to be kept for `secs` only.
fn short_claim(key: &str, now_ms: i64, secs: i64) -> Claim {
    Claim {
        expiration: now_ms / 1000 + secs,
        ..claim(key, "h", now_ms, 30_000)
    }
}

async fn claimed(store: &dyn IdempotencyStore, c: &Claim) -> Lease {
    match store.claim(c).await.unwrap() {
        ClaimOutcome::Claimed(lease) => lease,
        other => panic!("expected a claim, got {other:?}"),
    }
}

async fn idempotency_contract(store: Arc<dyn IdempotencyStore>) {
    let store = store.as_ref();
    let now = unix_ms_now();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let key = |name: &str| format!("{run}-{name}");

    // Claim, then a second claim sees it in flight until the lease ends.
    let a = claim(&key("a"), "h1", now, 30_000);
    let lease = claimed(store, &a).await;
    assert_eq!(
        store.claim(&a).await.unwrap(),
        ClaimOutcome::InFlight {
            lease_until_ms: now + 30_000
        }
    );
    // Complete by the holder; afterwards the record reports completion and compares payloads.
    store.complete(&lease, now / 1000 + 3600).await.unwrap();
    assert_eq!(
        store.claim(&a).await.unwrap(),
        ClaimOutcome::Completed { same_payload: true }
    );
    assert_eq!(
        store.claim(&claim(&key("a"), "h2", now, 30_000)).await.unwrap(),
        ClaimOutcome::Completed { same_payload: false }
    );
    // Copies claimed at once after the completion all find it completed, none in flight.
    let copies = futures::future::join_all((0..12).map(|_| store.claim(&a))).await;
    assert!(
        copies
            .iter()
            .all(|r| r == &Ok(ClaimOutcome::Completed { same_payload: true })),
        "{copies:?}"
    );
    // Completing or releasing a completed record is refused.
    assert_eq!(
        store.complete(&lease, now / 1000 + 3600).await,
        Err(StoreError::LeaseLost(lease.key.clone()))
    );
    assert_eq!(
        store.release(&lease).await,
        Err(StoreError::LeaseLost(lease.key.clone()))
    );

    // Claim races: exactly one winner.
    let race = claim(&key("race"), "h", now, 30_000);
    let results = futures::future::join_all((0..12).map(|_| store.claim(&race))).await;
    let winners = results
        .iter()
        .filter(|r| matches!(r, Ok(ClaimOutcome::Claimed(_))))
        .count();
    assert_eq!(winners, 1, "{results:?}");
    assert!(results.iter().all(|r| r.is_ok()));

    // Lease expiry: taken over; the old holder can neither complete nor release.
    let first = claimed(store, &claim(&key("lease"), "h", now, 1_000)).await;
    let second = claimed(store, &claim(&key("lease"), "h", now + 2_000, 30_000)).await;
    assert_ne!(first.token, second.token);
    assert_eq!(
        store.complete(&first, now / 1000 + 3600).await,
        Err(StoreError::LeaseLost(first.key.clone()))
    );
    assert_eq!(
        store.release(&first).await,
        Err(StoreError::LeaseLost(first.key.clone()))
    );
    store.complete(&second, now / 1000 + 3600).await.unwrap();

    // Release by the holder frees the key.
    let rel = claim(&key("release"), "h", now, 30_000);
    let lease = claimed(store, &rel).await;
    store.release(&lease).await.unwrap();
    claimed(store, &rel).await;

    // Retention: a completed record past its expiration is absent to a claim.
    let short = short_claim(&key("retention"), now, 10);
    let lease = claimed(store, &short).await;
    store.complete(&lease, now / 1000 + 10).await.unwrap();
    assert_eq!(
        store.claim(&short).await.unwrap(),
        ClaimOutcome::Completed { same_payload: true }
    );
    claimed(store, &claim(&key("retention"), "h", now + 11_000, 30_000)).await;

    // A completion with a later expiration than its claim's keeps the record until then.
    let lease = claimed(store, &short_claim(&key("extended"), now, 10)).await;
    store.complete(&lease, now / 1000 + 3600).await.unwrap();
    assert_eq!(
        store
            .claim(&claim(&key("extended"), "h", now + 11_000, 30_000))
            .await
            .unwrap(),
        ClaimOutcome::Completed { same_payload: true }
    );
}

#[tokio::test]
async fn idempotency_contract_memory() {
    idempotency_contract(Arc::new(MemoryStore::new(Arc::new(SystemClock)))).await;
}

#[tokio::test]
async fn idempotency_contract_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("contract.db")).unwrap();
    idempotency_contract(Arc::new(SqliteStore::new(db))).await;
}

#[tokio::test]
async fn idempotency_contract_dynamodb() {
    let sdk = crate::support::aws_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let table = unique("contract");
    create_table(&dynamo, &table).await;
    idempotency_contract(Arc::new(DynamoStore::new(dynamo, table, Arc::new(SystemClock)))).await;
}

// ---------------------------------------------------------------- queue

/// Reads what a dead-letter queue holds: (body, reason attribute if any).
#[async_trait]
trait DeadLetters: Send + Sync {
    async fn all(&self) -> Vec<(String, Option<String>)>;
}

struct SqliteDeadLetters(SqliteQueue);

#[async_trait]
impl DeadLetters for SqliteDeadLetters {
    async fn all(&self) -> Vec<(String, Option<String>)> {
        self.0
            .dead_letters()
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.body, Some(d.reason)))
            .collect()
    }
}

struct MemoryDeadLetters(Arc<MemoryQueue>);

#[async_trait]
impl DeadLetters for MemoryDeadLetters {
    async fn all(&self) -> Vec<(String, Option<String>)> {
        self.0
            .dead_letters()
            .into_iter()
            .map(|d| (d.body, Some(d.reason)))
            .collect()
    }
}

struct SqsDeadLetterReader(aws_sdk_sqs::Client, String);

#[async_trait]
impl DeadLetters for SqsDeadLetterReader {
    async fn all(&self) -> Vec<(String, Option<String>)> {
        drain(&self.0, &self.1)
            .await
            .into_iter()
            .map(|m| {
                (
                    m.body.clone().unwrap_or_default(),
                    crate::support::string_attribute(&m, attr::REASON),
                )
            })
            .collect()
    }
}

fn message(body: &str) -> Message {
    let mut m = Message::from_bytes(body.as_bytes());
    m.attributes.insert(attr::TOPIC.into(), "contract.test".into());
    m
}

/// How the suite lets a visibility timeout pass: by moving the adapter's clock, or, for a queue that keeps
/// its own time (SQS), by waiting.
enum Time {
    Shifted(Arc<ShiftedClock>),
    Real,
}

impl Time {
    async fn pass(&self, span: Duration) {
        match self {
            Time::Shifted(clock) => clock.advance(span.as_millis() as i64),
            Time::Real => tokio::time::sleep(span).await,
        }
    }
}

async fn queue_contract<Q>(queue: Arc<Q>, dead: Arc<dyn DeadLetters>, max_receives: u32, time: Time)
where
    Q: Queue + QueueConsumer + 'static,
{
    let visibility = Duration::from_secs(1);
    for body in ["one", "two", "three"] {
        queue.send(&message(body)).await.unwrap();
    }
    let mut got = queue.receive(10, visibility).await.unwrap();
    got.sort_by(|a, b| a.record.message.body.cmp(&b.record.message.body));
    let bodies: Vec<&str> = got.iter().map(|d| d.record.message.body.as_str()).collect();
    assert_eq!(bodies, ["one", "three", "two"]);
    assert!(got.iter().all(|d| d.record.receive_count == 1));
    assert!(got
        .iter()
        .all(|d| d.record.message.attribute(attr::TOPIC) == Some("contract.test")));
    // Received messages are invisible.
    assert!(queue.receive(10, visibility).await.unwrap().is_empty());

    // Acknowledged: gone. Retried at once: back with a higher receive count. Left alone: back after the
    // visibility timeout.
    queue.ack(&got[0].receipt).await.unwrap();
    queue
        .retry(&got[1].receipt, "try later", Duration::ZERO)
        .await
        .unwrap();
    let again = queue.receive(10, visibility).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].record.message.body, "three");
    assert_eq!(again[0].record.receive_count, 2);
    queue.ack(&again[0].receipt).await.unwrap();
    time.pass(Duration::from_millis(1300)).await;
    let late = queue.receive(10, visibility).await.unwrap();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].record.message.body, "two");
    assert_eq!(late[0].record.receive_count, 2);
    queue.ack(&late[0].receipt).await.unwrap();

    // Dead-lettering: after max_receives receives the message moves to the dead-letter queue.
    queue.send(&message("stuck")).await.unwrap();
    for n in 1..=max_receives {
        let got = queue.receive(10, visibility).await.unwrap();
        assert_eq!(got.len(), 1, "receive {n}");
        assert_eq!(got[0].record.receive_count, n);
        queue
            .retry(&got[0].receipt, "always failing", Duration::ZERO)
            .await
            .unwrap();
    }
    assert!(queue.receive(10, visibility).await.unwrap().is_empty());
    // Explicit dead-lettering keeps the reason.
    queue
        .dead_letter(&message("refused"), "handler x: permanent")
        .await
        .unwrap();
    let mut dead = dead.all().await;
    dead.sort();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].0, "refused");
    assert_eq!(dead[0].1.as_deref(), Some("handler x: permanent"));
    assert_eq!(dead[1].0, "stuck");
}

#[tokio::test]
async fn queue_contract_memory() {
    let clock = Arc::new(ShiftedClock::default());
    let queue = Arc::new(MemoryQueue::new(3, clock.clone()));
    let dead = Arc::new(MemoryDeadLetters(queue.clone()));
    queue_contract(queue.clone(), dead, 3, Time::Shifted(clock)).await;
    let stored = queue.dead_letters();
    let stuck = stored.iter().find(|d| d.body == "stuck").unwrap();
    assert_eq!(stuck.reason, "max receives exceeded (3): always failing");
    assert_eq!(stuck.receive_count, 3);
    assert!(queue.is_empty());
}

#[tokio::test]
async fn queue_contract_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ShiftedClock::default());
    let queue = SqliteQueue::new(Db::open(dir.path().join("queue.db")).unwrap(), 3).with_clock(clock.clone());
    let dead = Arc::new(SqliteDeadLetters(queue.clone()));
    queue_contract(Arc::new(queue.clone()), dead, 3, Time::Shifted(clock)).await;
    let stored = queue.dead_letters().await.unwrap();
    let stuck = stored.iter().find(|d| d.body == "stuck").unwrap();
    assert_eq!(stuck.reason, "max receives exceeded (3): always failing");
    assert_eq!(stuck.receive_count, 3);
}

#[tokio::test]
async fn queue_contract_sqs() {
    let sdk = crate::support::aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (main, dlq) = crate::support::create_queue_with_dlq(&sqs, "contract", 3).await;
    let queue = Arc::new(SqsQueue::new(sqs.clone(), &main, &dlq));
    queue_contract(queue, Arc::new(SqsDeadLetterReader(sqs, dlq)), 3, Time::Real).await;
}
