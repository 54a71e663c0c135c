//! Faults: the queue, the idempotency store or the notify webhook failing for a while loses nothing and
//! processes nothing twice. (Handler errors and panics, and a worker dying between claim and complete, are in
//! tests/worker.rs; `serve` killed under load is in tests/serve.rs.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{fixture, notification_body, sign, TEST_SECRET};
use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use intercom_webhooks::local::{Db, SqliteQueue, SqliteStore};
use intercom_webhooks::plumbing::clock::{unix_ms_now, SystemClock};
use intercom_webhooks::plumbing::metrics::Metrics;
use intercom_webhooks::processing::handler::{Handler, HandlerContext, HandlerError};
use intercom_webhooks::processing::handlers::{NotifyHandler, NotifySettings};
use intercom_webhooks::processing::idempotency::{Claim, ClaimOutcome, IdempotencyStore, Lease, StoreError};
use intercom_webhooks::processing::router::Router;
use intercom_webhooks::processing::worker::{Worker, WorkerSettings};
use intercom_webhooks::receiving::intake::{Intake, DEFAULT_MAX_BODY_BYTES};
use intercom_webhooks::receiving::notification::{Envelope, Notification};
use intercom_webhooks::receiving::queue::{DeadLetterQueue, Message, Queue, QueueConsumer, QueueError};
use intercom_webhooks::receiving::signature::ClientSecrets;
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

    // Intercom's retry is stored; what was acknowledged before the stall is still there. The stalled
    // insert may still be finishing (SQLite's busy handler sleeps between tries), and on a loaded machine
    // that can outlast the first retry's 500 ms: retry as Intercom does, within a bound.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = app.clone().oneshot(post("notif_during")).await.unwrap().status();
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(std::time::Instant::now() < deadline, "the retry was never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = queue.receive(10, Duration::from_secs(30)).await.unwrap();
    let ids: Vec<String> = received
        .iter()
        .filter_map(|d| d.record.message.attribute("notification_id").map(str::to_owned))
        .collect();
    assert!(ids.contains(&"notif_before".to_owned()), "{ids:?}");
    assert!(ids.contains(&"notif_during".to_owned()), "{ids:?}");
}

/// A Slack incoming webhook that is down (503) until told otherwise, then over its rate limit for one post
/// (429, `Retry-After: 2`), then up (200 `ok`). Records each post's arrival, answer and text.
#[derive(Clone, Default)]
struct ChatWebhook {
    up: Arc<Mutex<bool>>,
    posts: Arc<Mutex<Vec<(Instant, u16, String)>>>,
}

impl wiremock::Respond for ChatWebhook {
    fn respond(&self, request: &wiremock::Request) -> wiremock::ResponseTemplate {
        let text = serde_json::from_slice::<serde_json::Value>(&request.body).unwrap()["text"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut posts = self.posts.lock().unwrap();
        let throttled = posts.iter().any(|(_, status, _)| *status == 429);
        let (status, template) = if !*self.up.lock().unwrap() {
            (503, wiremock::ResponseTemplate::new(503))
        } else if !throttled {
            (
                429,
                wiremock::ResponseTemplate::new(429)
                    .insert_header("retry-after", "2")
                    .set_body_string("rate_limited"),
            )
        } else {
            (200, wiremock::ResponseTemplate::new(200).set_body_string("ok"))
        };
        posts.push((Instant::now(), status, text));
        template
    }
}

#[tokio::test]
async fn a_notify_webhook_down_then_rate_limited_then_up_posts_each_notification_once() {
    let chat = wiremock::MockServer::start().await;
    let webhook = ChatWebhook::default();
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(webhook.clone())
        .mount(&chat)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("n.db")).unwrap();
    let queue = SqliteQueue::new(db.clone(), 10);
    let notify = Arc::new(NotifyHandler::new(NotifySettings {
        url: format!("{}/hook", chat.uri()).into(),
        topics: vec!["conversation.user.created".into()],
        timeout: Duration::from_millis(500),
        rate_per_second: 10.0,
    }));
    let worker = Worker::new(
        Arc::new(SqliteStore::new(db)),
        Arc::new(queue.clone()),
        Router::new().route("conversation.user.created", notify).unwrap(),
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
        WorkerSettings {
            deadline_margin: Duration::from_millis(500),
            ..WorkerSettings::default()
        },
    );
    for i in 0..5 {
        let body = notification_body(
            &format!("notif_n{i}"),
            "conversation.user.created",
            json!({"type": "conversation", "id": format!("{i}")}),
        );
        queue
            .send(&Message::for_notification(
                &body,
                &Envelope::parse(&body).unwrap(),
            ))
            .await
            .unwrap();
    }
    // Drive the worker like the local server does: each batch gets 2.5 s, too short to wait out the
    // Retry-After (with the 500 ms margin and the post's 500 ms, a wait must end within 1.5 s), and a
    // retry waits for the delay the handler asked for.
    let mut receives: HashMap<String, u32> = HashMap::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let deliveries = queue.receive(10, Duration::from_secs(30)).await.unwrap();
        if deliveries.is_empty() {
            if queue.stats().await.unwrap().queued == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        for d in &deliveries {
            receives.insert(d.record.message_id.clone(), d.record.receive_count);
        }
        let result = worker
            .process_batch(
                deliveries.iter().map(|d| d.record.clone()).collect(),
                unix_ms_now() + 2_500,
            )
            .await;
        let failures = result.failures();
        for d in deliveries {
            let id = &d.record.message_id;
            if failures.contains(id) {
                let delay = result.retry_after(id).unwrap_or_default();
                queue.retry(&d.receipt, "notify", delay).await.unwrap();
            } else {
                queue.ack(&d.receipt).await.unwrap();
            }
        }
        // The first round meets the webhook down; it is up from the second.
        *webhook.up.lock().unwrap() = true;
    }
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.dead_letters), (0, 0), "none lost");
    let posts = webhook.posts.lock().unwrap().clone();
    let mut delivered: Vec<&str> = posts
        .iter()
        .filter(|(_, status, _)| *status == 200)
        .map(|(_, _, text)| text.as_str())
        .collect();
    delivered.sort();
    let count = delivered.len();
    delivered.dedup();
    assert_eq!((delivered.len(), count), (5, 5), "each posted once: {posts:?}");
    let statuses: Vec<u16> = posts.iter().map(|(_, status, _)| *status).collect();
    assert_eq!(statuses[..5], [503; 5], "{statuses:?}");
    assert_eq!(statuses[5], 429, "{statuses:?}");
    // Nothing was posted while the Retry-After held…
    let throttled_at = posts[5].0;
    for (at, _, _) in &posts[6..] {
        let after = at.duration_since(throttled_at);
        assert!(
            after >= Duration::from_millis(1_950),
            "posted {after:?} after the 429"
        );
    }
    // …and the queue kept the records back as long: three receives each (down, held, posted).
    assert_eq!(receives.len(), 5);
    assert!(receives.values().all(|&n| n == 3), "{receives:?}");
}
