//! Forwarding to HTTP endpoints: every matching notification POSTed with its exact bytes and a signature
//! the target verifies as it would Intercom's; 5xx, 429 (with its `Retry-After`), timeouts and refused
//! connections retryable, other 4xx permanent; each target paced on its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use intercom_webhooks::memory::{MemoryQueue, MemoryStore};
use intercom_webhooks::plumbing::clock::{unix_ms_now, SystemClock};
use intercom_webhooks::plumbing::metrics::Metrics;
use intercom_webhooks::processing::handler::{Handler, HandlerContext, HandlerError};
use intercom_webhooks::processing::handlers::{
    default_router, Builtins, ForwardHandler, ForwardSettings, NOTIFICATION_ID_HEADER, TOPIC_HEADER,
};
use intercom_webhooks::processing::worker::{Outcome, Record, Worker, WorkerSettings};
use intercom_webhooks::receiving::notification::Notification;
use intercom_webhooks::receiving::queue::Message;
use intercom_webhooks::receiving::signature::ClientSecret;
use secrecy::SecretString;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::support::{fixture, fixtures, free_port};

/// What a target received: (notification id header, topic header, body, whether the signature verified).
pub type Received = Arc<Mutex<Vec<(String, String, Vec<u8>, bool, Instant)>>>;

/// A target that verifies each POST with `secret` exactly as a receiver of Intercom's webhooks would.
struct Verifying {
    secret: String,
    got: Received,
}

impl Respond for Verifying {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let secrets = intercom_webhooks::receiving::signature::ClientSecrets::parse(&self.secret).unwrap();
        let header_value = request.headers.get("x-hub-signature").map(|v| v.as_bytes());
        let verified = secrets.verify(header_value, &request.body).is_ok();
        self.got.lock().unwrap().push((
            header(NOTIFICATION_ID_HEADER),
            header(TOPIC_HEADER),
            request.body.clone(),
            verified,
            Instant::now(),
        ));
        ResponseTemplate::new(if verified { 200 } else { 401 })
    }
}

pub async fn verifying_target(secret: &str) -> (MockServer, Received) {
    let server = MockServer::start().await;
    let got: Received = Arc::default();
    Mock::given(method("POST"))
        .respond_with(Verifying {
            secret: secret.to_owned(),
            got: got.clone(),
        })
        .mount(&server)
        .await;
    (server, got)
}

fn settings(index: usize, url: String, topics: &[&str], secret: &str, rate: f64) -> ForwardSettings {
    ForwardSettings {
        index,
        url: SecretString::from(url),
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        secret: ClientSecret::new(secret).unwrap(),
        timeout: Duration::from_millis(800),
        rate_per_second: rate,
    }
}

fn context() -> HandlerContext {
    HandlerContext {
        receive_count: 1,
        deadline_ms: unix_ms_now() + 20_000,
    }
}

fn record(name: &str, body: &[u8]) -> Record {
    Record {
        message_id: format!("m-{name}"),
        message: Message::from_bytes(body),
        receive_count: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_matching_notification_arrives_byte_for_byte_and_verifies_with_its_targets_secret() {
    let (conversations, got_conversations) = verifying_target("secret-one").await;
    let (everything, got_everything) = verifying_target("secret-two").await;
    let clock = Arc::new(SystemClock);
    let worker = Worker::new(
        Arc::new(MemoryStore::new(clock.clone())),
        Arc::new(MemoryQueue::new(5, clock.clone())),
        default_router(Builtins {
            forwards: vec![
                settings(
                    1,
                    format!("{}/in", conversations.uri()),
                    &["conversation.*"],
                    "secret-one",
                    50.0,
                ),
                settings(2, everything.uri(), &["*"], "secret-two", 50.0),
            ],
            ..Builtins::default()
        })
        .unwrap(),
        clock,
        Arc::new(Metrics::new()),
        WorkerSettings::default(),
    );
    let all: Vec<(String, Vec<u8>)> = fixtures()
        .into_iter()
        .filter(|(name, _)| name != "ping.json")
        .collect();
    let records: Vec<Record> = all.iter().map(|(name, body)| record(name, body)).collect();
    let result = worker.process_batch(records, unix_ms_now() + 30_000).await;
    assert!(
        result.outcomes.iter().all(|(_, o)| *o == Outcome::Processed),
        "{result:?}"
    );

    for (got, expect_topics) in [(&got_conversations, "conversation."), (&got_everything, "")] {
        let got = got.lock().unwrap();
        let expected: Vec<&(String, Vec<u8>)> = all
            .iter()
            .filter(|(_, body)| {
                let n = Notification::parse(body).unwrap();
                n.topic().as_str().starts_with(expect_topics)
            })
            .collect();
        assert_eq!(got.len(), expected.len(), "each matching notification once");
        for (_, body) in expected {
            let n = Notification::parse(body).unwrap();
            let arrived = got
                .iter()
                .find(|(id, _, _, _, _)| id == n.id.as_str())
                .unwrap_or_else(|| panic!("{} not forwarded", n.id.as_str()));
            assert_eq!(arrived.1, n.topic().as_str());
            assert_eq!(&arrived.2, body, "the exact bytes Intercom sent");
            assert!(arrived.3, "the signature verifies with the target's secret");
        }
    }
}

/// Answers the statuses in order, then 200.
struct Scripted(Mutex<Vec<ResponseTemplate>>);

impl Respond for Scripted {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let mut left = self.0.lock().unwrap();
        if left.is_empty() {
            ResponseTemplate::new(200)
        } else {
            left.remove(0)
        }
    }
}

async fn answering(responses: Vec<ResponseTemplate>) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Scripted(Mutex::new(responses)))
        .mount(&server)
        .await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_classed_as_the_worker_retries_them() {
    let handle = |url: String| async move {
        let n = Notification::parse(&fixture("conversation_user_created.json")).unwrap();
        ForwardHandler::new(settings(3, url, &["*"], "s", 100.0))
            .handle(&n, &context())
            .await
    };

    // 2xx: done.
    let ok = answering(vec![ResponseTemplate::new(204)]).await;
    assert_eq!(handle(ok.uri()).await, Ok(()));
    // 5xx and 408: retryable; the reason names the target, never its URL.
    for status in [500, 503, 408] {
        let server = answering(vec![ResponseTemplate::new(status)]).await;
        let error = handle(format!("{}/secret-path?token=abc", server.uri()))
            .await
            .unwrap_err();
        assert!(error.is_retryable(), "{status}: {error}");
        let text = error.to_string();
        assert!(
            text.contains("forward target 3") && !text.contains("token=abc"),
            "{text}"
        );
    }
    // Other 4xx: permanent.
    for status in [400, 401, 404, 410] {
        let server = answering(vec![ResponseTemplate::new(status)]).await;
        let error = handle(server.uri()).await.unwrap_err();
        assert!(matches!(error, HandlerError::Permanent(_)), "{status}: {error}");
    }
    // 429 with Retry-After: held that long, then sent again and accepted.
    let limited = answering(vec![ResponseTemplate::new(429).insert_header("retry-after", "1")]).await;
    let started = Instant::now();
    assert_eq!(handle(limited.uri()).await, Ok(()));
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(limited.received_requests().await.unwrap().len(), 2);
    // A timeout and a refused connection: retryable.
    let slow = answering(vec![ResponseTemplate::new(200).set_delay(Duration::from_secs(3))]).await;
    let error = handle(slow.uri()).await.unwrap_err();
    assert!(
        error.is_retryable() && error.to_string().contains("timed out"),
        "{error}"
    );
    let error = handle(format!("http://127.0.0.1:{}/", free_port()))
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_target_does_not_hold_up_another() {
    let (slow, got_slow) = verifying_target("a").await;
    let (fast, got_fast) = verifying_target("b").await;
    let slow = Arc::new(ForwardHandler::new(settings(1, slow.uri(), &["*"], "a", 2.0)));
    let fast = Arc::new(ForwardHandler::new(settings(2, fast.uri(), &["*"], "b", 200.0)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let mut body: serde_json::Value = serde_json::from_slice(&fixture("ping.json")).unwrap();
        body["topic"] = "conversation.user.created".into();
        body["id"] = format!("notif_pace_{i}").into();
        let n = Notification::parse(&serde_json::to_vec(&body).unwrap()).unwrap();
        for handler in [slow.clone(), fast.clone()] {
            let n = n.clone();
            tasks.push(tokio::spawn(async move { handler.handle(&n, &context()).await }));
        }
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let last = |got: &Received| got.lock().unwrap().iter().map(|r| r.4).max().unwrap() - started;
    // Two a second: six posts take at least 2.5 s; the other target's six are not queued behind them.
    assert!(
        last(&got_slow) >= Duration::from_millis(2400),
        "{:?}",
        last(&got_slow)
    );
    assert!(
        last(&got_fast) < Duration::from_millis(1000),
        "{:?}",
        last(&got_fast)
    );
    assert_eq!(got_fast.lock().unwrap().len(), 6);
}
