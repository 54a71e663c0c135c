//! The sample Lambda events in `events/` (for `sam local invoke -e` and `cargo lambda invoke
//! --data-file`) are generated from the fixtures and signed with the test secret. This test fails when a
//! file has drifted; regenerate them all with `UPDATE_EVENTS=1 cargo test --test it
//! sample_events::`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::support::{fixture, function_url_event, root, sign, RecordingQueue, TEST_SECRET};
use axum::http::StatusCode;
use intercom_webhooks::aws::lambda_sqs;
use intercom_webhooks::local::{Db, SqliteQueue, SqliteStore};
use intercom_webhooks::plumbing::clock::SystemClock;
use intercom_webhooks::plumbing::metrics::Metrics;
use intercom_webhooks::processing::worker::{Outcome, Worker, WorkerSettings};
use intercom_webhooks::receiving::intake::{Intake, DEFAULT_MAX_BODY_BYTES};
use intercom_webhooks::receiving::signature::ClientSecrets;
use serde_json::{json, Value};
use tower::ServiceExt;

const NOTIFICATION: &str = "conversation_user_created.json";

fn headers(signature: Option<String>) -> BTreeMap<String, String> {
    let mut h = BTreeMap::from([("content-type".to_string(), "application/json".to_string())]);
    if let Some(s) = signature {
        h.insert("x-hub-signature".into(), s);
    }
    h
}

fn sqs_record(message_id: &str, body: &str, attributes: &[(&str, &str)]) -> Value {
    let attributes: serde_json::Map<String, Value> = attributes
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                json!({"stringValue": v, "stringListValues": [], "binaryListValues": [], "dataType": "String"}),
            )
        })
        .collect();
    json!({
        "messageId": message_id,
        "receiptHandle": format!("AQEB{message_id}"),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1795600800000",
            "SenderId": "AROAEXAMPLE:receiver",
            "ApproximateFirstReceiveTimestamp": "1795600800100"
        },
        "messageAttributes": attributes,
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:intercom-webhooks-notifications",
        "awsRegion": "us-east-1"
    })
}

/// Every sample event, by file name.
fn sample_events() -> Vec<(&'static str, Value)> {
    let body = fixture(NOTIFICATION);
    let ping = fixture("ping.json");
    let envelope: Value = serde_json::from_slice(&body).unwrap();
    let text = String::from_utf8(body.clone()).unwrap();
    let attrs = [
        ("topic", envelope["topic"].as_str().unwrap()),
        ("notification_id", envelope["id"].as_str().unwrap()),
        ("app_id", envelope["app_id"].as_str().unwrap()),
        ("delivery_attempts", "1"),
    ];
    vec![
        (
            "function-url-post.json",
            function_url_event("POST", "/", &headers(Some(sign(&body))), Some(&body), false),
        ),
        (
            "function-url-post-base64.json",
            function_url_event("POST", "/", &headers(Some(sign(&body))), Some(&body), true),
        ),
        (
            "function-url-post-bad-signature.json",
            function_url_event(
                "POST",
                "/",
                &headers(Some(sign(b"something else"))),
                Some(&body),
                false,
            ),
        ),
        (
            "function-url-ping.json",
            function_url_event("POST", "/", &headers(Some(sign(&ping))), Some(&ping), false),
        ),
        (
            "function-url-head.json",
            function_url_event("HEAD", "/", &BTreeMap::new(), None, false),
        ),
        (
            "sqs-batch.json",
            json!({"Records": [
                sqs_record("6f2a1c3e-0000-4000-8000-000000000001", &text, &attrs),
                sqs_record("6f2a1c3e-0000-4000-8000-000000000002", &text, &attrs),
                sqs_record("6f2a1c3e-0000-4000-8000-000000000003", "{\"topic\": \"conversation.user.created\", \"id\": ", &[]),
            ]}),
        ),
    ]
}

#[test]
fn sample_events_match_the_fixtures_and_the_test_secret() {
    let update = std::env::var_os("UPDATE_EVENTS").is_some();
    let mut stale = Vec::new();
    for (name, event) in sample_events() {
        let path = root().join("events").join(name);
        let expected = format!("{}\n", serde_json::to_string_pretty(&event).unwrap());
        if update {
            std::fs::write(&path, &expected).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(expected.as_str()) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from what the fixtures and the test secret {TEST_SECRET:?} give; \
         regenerate with UPDATE_EVENTS=1 cargo test --test it sample_events::"
    );
}

fn load(name: &str) -> String {
    std::fs::read_to_string(root().join("events").join(name)).unwrap()
}

#[tokio::test]
async fn function_url_events_get_the_documented_answers() {
    let queue = Arc::new(RecordingQueue::default());
    let app = Intake::new(
        ClientSecrets::parse(TEST_SECRET).unwrap(),
        queue.clone(),
        DEFAULT_MAX_BODY_BYTES,
    )
    .router();
    for (name, status) in [
        ("function-url-post.json", StatusCode::OK),
        ("function-url-post-base64.json", StatusCode::OK),
        ("function-url-post-bad-signature.json", StatusCode::UNAUTHORIZED),
        ("function-url-ping.json", StatusCode::OK),
        ("function-url-head.json", StatusCode::OK),
    ] {
        let request = lambda_http::request::from_str(&load(name)).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), status, "{name}");
    }
    // The two POSTs of the notification were queued with its exact bytes; ping and HEAD queue nothing.
    let sent = queue.sent();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|m| m.body.as_bytes() == fixture(NOTIFICATION)));
}

#[tokio::test]
async fn the_sqs_batch_event_holds_a_valid_record_a_duplicate_and_a_malformed_body() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("w.db")).unwrap();
    let worker = Worker::new(
        Arc::new(SqliteStore::new(db.clone())),
        Arc::new(SqliteQueue::new(db, 5)),
        intercom_webhooks::processing::handlers::default_router(Default::default()).unwrap(),
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
        WorkerSettings {
            concurrency: 1,
            ..WorkerSettings::default()
        },
    );
    let event = serde_json::from_str(&load("sqs-batch.json")).unwrap();
    let result = worker.process_batch(lambda_sqs::records(event), i64::MAX).await;
    let outcomes: Vec<Outcome> = result.outcomes.iter().map(|(_, o)| *o).collect();
    assert_eq!(
        outcomes,
        [Outcome::Processed, Outcome::Duplicate, Outcome::DeadLettered]
    );
    assert_eq!(
        serde_json::to_value(lambda_sqs::batch_response(&result)).unwrap(),
        json!({"batchItemFailures": []})
    );
}
