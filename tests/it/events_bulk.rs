//! `track_all` against a mock Intercom that enforces a rate limit per 10-second window and answers 429
//! past it: every event delivered once, failures reported, the limit and the concurrency respected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream;
use intercom_webhooks::events::{
    AccessToken, BulkOptions, DataEvent, Endpoint, ErrorKind, EventsClient, Progress, RetryPolicy,
};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::support::events_api::{unix_ms, Log, Received, WindowLimiter, TOKEN};

const WINDOW: Duration = Duration::from_secs(10);

fn client(server: &MockServer) -> EventsClient {
    EventsClient::builder(
        AccessToken::new(TOKEN).unwrap(),
        Endpoint::base_url(&server.uri()).unwrap(),
    )
    .retry(RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_rate_limited: 5,
        max_rate_limit_wait: Duration::from_secs(15),
    })
    .build()
    .unwrap()
}

fn events(user_ids: &[String]) -> Vec<DataEvent> {
    user_ids
        .iter()
        .map(|id| {
            DataEvent::builder("imported-order")
                .user_id(id.as_str())
                .metadata("source", "bulk-test")
                .build()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_delivered_once_within_the_window_limit() {
    let limit = 40;
    let latency = Duration::from_millis(50);
    let max_in_flight = 8;
    let limiter = WindowLimiter::new(WINDOW, limit, latency);
    let server = limiter.start().await;

    // 40 accepted at once, 4 unknown contacts, 4 failing once with a 500, 2 always failing with a 503:
    // 40 + 4 + 8 + 6 = 58 requests, more than one window allows.
    let mut user_ids: Vec<String> = (0..40).map(|i| format!("ok-{i}")).collect();
    for (position, id) in [
        (5, "missing-0"),
        (15, "missing-1"),
        (25, "missing-2"),
        (35, "missing-3"),
        (8, "flaky-0"),
        (18, "flaky-1"),
        (28, "flaky-2"),
        (38, "flaky-3"),
        (12, "broken-0"),
        (30, "broken-1"),
    ] {
        user_ids.insert(position, id.to_string());
    }
    let position: HashMap<&str, usize> = user_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();

    let mut updates: Vec<Progress> = Vec::new();
    let summary = client(&server)
        .track_all(
            stream::iter(events(&user_ids)),
            &BulkOptions { max_in_flight },
            |p| updates.push(p.clone()),
        )
        .await;
    let log = limiter.log.lock().unwrap();

    // The summary.
    assert_eq!(summary.sent, 44, "{summary:?}");
    assert_eq!(summary.failed.get(&ErrorKind::ContactNotFound), Some(&4));
    assert_eq!(summary.failed.get(&ErrorKind::Server), Some(&2));
    assert_eq!(summary.failed_total(), 6);
    assert_eq!(summary.requests, log.requests.len() as u64);
    assert_eq!(summary.requests, 58);
    // Retries: one per flaky event, two per broken one.
    assert_eq!(summary.retried, 4 + 2 * 2);

    // Every failure is reported with its event, its position in the stream and its error.
    assert_eq!(summary.failures.len(), 6);
    for failure in &summary.failures {
        let id = failure.event.contact().value();
        assert_eq!(failure.index, position[id], "{id}");
        let expected = if id.starts_with("missing-") {
            ErrorKind::ContactNotFound
        } else {
            assert!(id.starts_with("broken-"), "{id}");
            ErrorKind::Server
        };
        assert_eq!(failure.error.kind(), expected, "{id}: {}", failure.error);
    }
    assert!(summary.failures.windows(2).all(|w| w[0].index < w[1].index));

    // The server's view: each accepted event got exactly one 202; the failed ones none.
    let accepted = log.accepted();
    for id in &user_ids {
        let expected = usize::from(id.starts_with("ok-") || id.starts_with("flaky-"));
        assert_eq!(accepted.get(id).copied().unwrap_or(0), expected, "{id}");
    }
    let attempts = |id: &str| log.requests.iter().filter(|r| r.user_id == id).count();
    assert_eq!(attempts("missing-0"), 1, "a 404 is not retried");
    assert_eq!(attempts("broken-0"), 3, "a 503 is retried up to max_attempts");

    // The limit was binding (two windows at least), and never exceeded: no 429 was needed.
    assert!(log.counted.len() >= 2, "windows used: {:?}", log.counted);
    assert!(log.counted.values().all(|n| *n <= limit));
    assert_eq!(log.count_status(429), 0, "the pacer went over the limit");
    assert_eq!(summary.rate_limited, 0);

    // Never more in flight than allowed, seen from both sides.
    assert!(summary.peak_in_flight <= max_in_flight);
    assert!(
        log.max_concurrent(latency) <= max_in_flight,
        "{}",
        log.max_concurrent(latency)
    );

    // Progress after every answer, ending at the summary's figures.
    assert_eq!(updates.len() as u64, summary.requests);
    assert!(updates.windows(2).all(|w| w[0].sent <= w[1].sent));
    let last = updates.last().unwrap();
    assert_eq!((last.sent, last.failed, last.taken), (44, 6, 50));
    assert_eq!(last.rate_limit.limit, Some(limit));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_spent_by_someone_else_is_waited_out() {
    let limit = 20;
    let limiter = WindowLimiter::new(WINDOW, limit, Duration::from_millis(20));
    let server = limiter.start().await;
    // Stay clear of a window boundary so that the budget spent below is in the window the first
    // request lands in.
    if limiter.time_left_in_window() < Duration::from_secs(3) {
        tokio::time::sleep(limiter.time_left_in_window() + Duration::from_millis(50)).await;
    }
    let spent_window = limiter.spend(limit);
    let user_ids: Vec<String> = (0..10).map(|i| format!("ok-{i}")).collect();
    let summary = client(&server)
        .track_all(stream::iter(events(&user_ids)), &BulkOptions::default(), |_| {})
        .await;
    let log = limiter.log.lock().unwrap();

    assert_eq!(summary.sent, 10);
    assert!(summary.failures.is_empty());
    // One request learns that the window is spent; everything waits for its reset.
    assert_eq!(log.count_status(429), 1);
    assert_eq!(summary.rate_limited, 1);
    assert_eq!(summary.retried, 1);
    let reset_ms = (spent_window + 1) * WINDOW.as_millis() as u64;
    for r in log.requests.iter().filter(|r| r.status == 202) {
        assert!(
            r.at_unix_ms >= reset_ms,
            "{} sent before the reset {reset_ms}",
            r.user_id
        );
    }
    assert!(log.accepted().values().all(|n| *n == 1));
    assert_eq!(log.accepted().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rate_limit_headers_concurrency_is_the_bound() {
    let latency = Duration::from_millis(30);
    let log = Arc::new(Mutex::new(Log::default()));
    let server = MockServer::start().await;
    let responder = {
        let log = log.clone();
        move |request: &Request| {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
            log.lock().unwrap().requests.push(Received {
                at: Instant::now(),
                at_unix_ms: unix_ms(),
                user_id: body["user_id"].as_str().unwrap().to_string(),
                status: 202,
                window: 0,
            });
            ResponseTemplate::new(202).set_delay(latency)
        }
    };
    Mock::given(method("POST"))
        .respond_with(responder)
        .mount(&server)
        .await;
    let user_ids: Vec<String> = (0..30).map(|i| format!("ok-{i}")).collect();
    let summary = client(&server)
        .track_all(
            stream::iter(events(&user_ids)),
            &BulkOptions { max_in_flight: 4 },
            |_| {},
        )
        .await;
    let log = log.lock().unwrap();
    assert_eq!(summary.sent, 30);
    assert_eq!(log.accepted().len(), 30);
    assert_eq!(summary.peak_in_flight, 4);
    assert!(log.max_concurrent(latency) <= 4);
}
