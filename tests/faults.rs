//! Faults: the queue or the idempotency store failing for a while loses nothing and processes nothing
//! twice. (Handler errors and panics, and a worker dying between claim and complete, are in
//! tests/worker.rs; `serve` killed under load is in tests/serve.rs.)

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{fixture, notification_body, sign, TEST_SECRET};
use intercom_webhooks::clock::SystemClock;
use intercom_webhooks::handler::{Handler, HandlerContext, HandlerError};
use intercom_webhooks::idempotency::{Claim, ClaimOutcome, IdempotencyStore, Lease, StoreError};
use intercom_webhooks::intake::{Intake, DEFAULT_MAX_BODY_BYTES};
use intercom_webhooks::local::{Db, SqliteQueue, SqliteStore};
use intercom_webhooks::metrics::Metrics;
use intercom_webhooks::notification::{Envelope, Notification};
use intercom_webhooks::queue::{DeadLetterQueue, Message, Queue, QueueConsumer, QueueError};
use intercom_webhooks::router::Router;
use intercom_webhooks::signature::ClientSecrets;
use intercom_webhooks::worker::{Worker, WorkerSettings};
use serde_json::json;
use tower::ServiceExt;

/// A queue that is down until told otherwise.
struct Flaky {
    inner: SqliteQueue,
    down: Mutex<bool>,
}

#[async_trait]
impl DeadLetterQueue for Flaky {
    async fn dead_letter(&self, m: &Message, reason: &str) -> Result<(), QueueError> {
        if *self.down.lock().unwrap() {
            return Err(QueueError::Unavailable("connection refused".into()));
        }
        self.inner.dead_letter(m, reason).await
    }
}

#[async_trait]
impl Queue for Flaky {
    async fn send(&self, m: &Message) -> Result<(), QueueError> {
        if *self.down.lock().unwrap() {
            return Err(QueueError::Unavailable("connection refused".into()));
        }
        self.inner.send(m).await
    }
}

#[tokio::test]
async fn a_queue_outage_is_503_acknowledges_nothing_and_the_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let inner = SqliteQueue::new(Db::open(dir.path().join("q.db")).unwrap(), 5);
    let queue = Arc::new(Flaky {
        inner: inner.clone(),
        down: Mutex::new(true),
    });
    let app = Intake::new(
        ClientSecrets::parse(TEST_SECRET).unwrap(),
        queue.clone(),
        DEFAULT_MAX_BODY_BYTES,
    )
    .router();
    let body = fixture("conversation_user_replied.json");
    let post = || {
        Request::post("/")
            .header("x-hub-signature", sign(&body))
            .body(Body::from(body.clone()))
            .unwrap()
    };
    assert_eq!(
        app.clone().oneshot(post()).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let bad = b"not json".to_vec();
    let bad_request = Request::post("/")
        .header("x-hub-signature", sign(&bad))
        .body(Body::from(bad))
        .unwrap();
    assert_eq!(
        app.clone().oneshot(bad_request).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(inner.stats().await.unwrap().queued, 0);
    // Intercom retries a minute later; the queue is back.
    *queue.down.lock().unwrap() = false;
    assert_eq!(
        app.clone().oneshot(post()).await.unwrap().status(),
        StatusCode::OK
    );
    let delivered = inner.receive(10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].record.message.body.as_bytes(), &body[..]);
}

/// An idempotency store whose first `failures` calls fail.
struct Unreliable {
    inner: SqliteStore,
    failures: AtomicUsize,
}

impl Unreliable {
    fn fail(&self) -> Result<(), StoreError> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0
            && self
                .failures
                .compare_exchange(left, left - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return Err(StoreError::Unavailable("throttled".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl IdempotencyStore for Unreliable {
    async fn claim(&self, claim: &Claim) -> Result<ClaimOutcome, StoreError> {
        self.fail()?;
        self.inner.claim(claim).await
    }
    async fn complete(&self, lease: &Lease, expiration: i64) -> Result<(), StoreError> {
        self.inner.complete(lease, expiration).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release(lease).await
    }
}

#[derive(Default)]
struct Counting(Mutex<HashMap<String, usize>>);

#[async_trait]
impl Handler for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    async fn handle(&self, n: &Notification, _: &HandlerContext) -> Result<(), HandlerError> {
        *self.0.lock().unwrap().entry(n.id.to_string()).or_default() += 1;
        Ok(())
    }
}

#[tokio::test]
async fn an_idempotency_store_outage_retries_records_and_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("w.db")).unwrap();
    let queue = SqliteQueue::new(db.clone(), 10);
    let handler = Arc::new(Counting::default());
    let worker = Worker::new(
        Arc::new(Unreliable {
            inner: SqliteStore::new(db),
            failures: AtomicUsize::new(15),
        }),
        Arc::new(queue.clone()),
        Router::new().route("*", handler.clone()).unwrap(),
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
        WorkerSettings::default(),
    );
    for i in 0..20 {
        let body = notification_body(
            &format!("notif_f{i}"),
            "contact.created",
            json!({"type": "contact"}),
        );
        queue
            .send(&Message::for_notification(
                &body,
                &Envelope::parse(&body).unwrap(),
            ))
            .await
            .unwrap();
    }
    // Drive the worker like the local server does, retrying failures at once.
    for _ in 0..20 {
        let deliveries = queue.receive(10, Duration::from_secs(30)).await.unwrap();
        if deliveries.is_empty() {
            break;
        }
        let result = worker
            .process_batch(deliveries.iter().map(|d| d.record.clone()).collect(), i64::MAX)
            .await;
        let failures = result.failures();
        for d in deliveries {
            if failures.contains(&d.record.message_id) {
                queue
                    .retry(&d.receipt, "store down", Duration::ZERO)
                    .await
                    .unwrap();
            } else {
                queue.ack(&d.receipt).await.unwrap();
            }
        }
    }
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.dead_letters), (0, 0));
    let counts = handler.0.lock().unwrap().clone();
    assert_eq!(counts.len(), 20, "none lost");
    assert!(counts.values().all(|&c| c == 1), "none twice: {counts:?}");
}

#[tokio::test]
async fn a_stalled_database_is_503_within_the_store_timeout_and_what_was_acknowledged_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let queue = SqliteQueue::new(Db::open(&path).unwrap(), 5);
    let app = Intake::new(
        ClientSecrets::parse(TEST_SECRET).unwrap(),
        Arc::new(queue.clone()),
        DEFAULT_MAX_BODY_BYTES,
    )
    .with_store_timeout(Duration::from_millis(500))
    .router();
    let post = |id: &str| {
        let body = notification_body(id, "contact.created", json!({"type": "contact"}));
        Request::post("/")
            .header("x-hub-signature", sign(&body))
            .body(Body::from(body))
            .unwrap()
    };
    assert_eq!(
        app.clone().oneshot(post("notif_before")).await.unwrap().status(),
        StatusCode::OK
    );

    // Another process takes the write lock and holds it: the disk "hangs".
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = std::time::Instant::now();
    let stalled = app.clone().oneshot(post("notif_during")).await.unwrap();
    assert_eq!(stalled.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    blocker.execute_batch("ROLLBACK").unwrap();

    // Intercom's retry is stored; what was acknowledged before the stall is still there.
    assert_eq!(
        app.clone().oneshot(post("notif_during")).await.unwrap().status(),
        StatusCode::OK
    );
    let received = queue.receive(10, Duration::from_secs(30)).await.unwrap();
    let ids: Vec<String> = received
        .iter()
        .filter_map(|d| d.record.message.attribute("notification_id").map(str::to_owned))
        .collect();
    assert!(ids.contains(&"notif_before".to_owned()), "{ids:?}");
    assert!(ids.contains(&"notif_during".to_owned()), "{ids:?}");
}
