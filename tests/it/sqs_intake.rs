//! Integration tests: the HTTP application storing into SQS on the AWS emulator (moto_server).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{create_queue, drain, fixture, sign, string_attribute, unique, TEST_SECRET};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use intercom_webhooks::aws::sqs::SqsQueue;
use intercom_webhooks::aws::{load_config, CallBudget};
use intercom_webhooks::receiving::intake::{Intake, DEFAULT_MAX_BODY_BYTES};
use intercom_webhooks::receiving::queue::attr;
use intercom_webhooks::receiving::signature::ClientSecrets;
use tower::ServiceExt;

async fn setup() -> (aws_sdk_sqs::Client, String, String, axum::Router) {
    let sdk = crate::support::aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = create_queue(&sqs, &unique("notifications")).await;
    let dlq = create_queue(&sqs, &unique("dead-letters")).await;
    let adapter = SqsQueue::new(sqs.clone(), &queue, &dlq);
    let app = Intake::new(
        ClientSecrets::parse(TEST_SECRET).unwrap(),
        Arc::new(adapter),
        DEFAULT_MAX_BODY_BYTES,
    )
    .router();
    (sqs, queue, dlq, app)
}

fn post(body: &[u8], signature: &str) -> Request<Body> {
    Request::post("/")
        .header("x-hub-signature", signature)
        .body(Body::from(body.to_vec()))
        .unwrap()
}

#[tokio::test]
async fn a_notification_lands_in_sqs_with_its_raw_body_and_four_attributes() {
    let (sqs, queue, dlq, app) = setup().await;
    let body = fixture("conversation_user_replied.json");
    let response = app.oneshot(post(&body, &sign(&body))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let messages = drain(&sqs, &queue).await;
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(
        m.body.as_deref().unwrap().as_bytes(),
        &body[..],
        "exact bytes, pretty-printing kept"
    );
    let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        string_attribute(m, attr::TOPIC).as_deref(),
        envelope["topic"].as_str()
    );
    assert_eq!(
        string_attribute(m, attr::NOTIFICATION_ID).as_deref(),
        envelope["id"].as_str()
    );
    assert_eq!(
        string_attribute(m, attr::APP_ID).as_deref(),
        envelope["app_id"].as_str()
    );
    assert_eq!(
        string_attribute(m, attr::DELIVERY_ATTEMPTS),
        Some(envelope["delivery_attempts"].to_string())
    );
    assert!(drain(&sqs, &dlq).await.is_empty());
}

#[tokio::test]
async fn an_unparsable_authentic_body_lands_in_the_dead_letter_queue_with_its_reason() {
    let (sqs, queue, dlq, app) = setup().await;
    let body = b"{\"topic\": \"contact.created\", \"id\": ";
    let response = app.clone().oneshot(post(body, &sign(body))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Bytes SQS cannot hold as text are kept too, base64-encoded.
    let binary = [0xffu8, 0x00, 0x7b];
    let response = app.oneshot(post(&binary, &sign(&binary))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    assert!(drain(&sqs, &queue).await.is_empty());
    let mut dead = drain(&sqs, &dlq).await;
    assert_eq!(dead.len(), 2);
    dead.sort_by_key(|m| string_attribute(m, "body_encoding"));
    assert_eq!(dead[0].body.as_deref().unwrap().as_bytes(), body);
    assert!(string_attribute(&dead[0], attr::REASON)
        .unwrap()
        .starts_with("invalid_json"));
    assert_eq!(
        string_attribute(&dead[1], "body_encoding").as_deref(),
        Some("base64")
    );
    assert!(string_attribute(&dead[1], attr::REASON)
        .unwrap()
        .starts_with("invalid_json"));
}

#[tokio::test]
async fn a_bad_signature_puts_nothing_anywhere() {
    let (sqs, queue, dlq, app) = setup().await;
    let body = fixture("contact_deleted.json");
    let response = app.oneshot(post(&body, &sign(b"other"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(drain(&sqs, &queue).await.is_empty());
    assert!(drain(&sqs, &dlq).await.is_empty());
}

#[tokio::test]
async fn an_unreachable_queue_is_503_within_the_budget() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sdk = load_config(CallBudget::RECEIVER).await;
    let config = aws_sdk_sqs::config::Builder::from(&sdk)
        .endpoint_url(format!("http://{closed}"))
        .build();
    let client = aws_sdk_sqs::Client::from_conf(config);
    let url = format!("http://{closed}/000000000000/q");
    let adapter = SqsQueue::new(client, &url, &url);
    let app = Intake::new(
        ClientSecrets::parse(TEST_SECRET).unwrap(),
        Arc::new(adapter),
        DEFAULT_MAX_BODY_BYTES,
    )
    .router();

    let body = fixture("contact_deleted.json");
    let started = Instant::now();
    let response = app.oneshot(post(&body, &sign(&body))).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered in {:?}",
        started.elapsed()
    );
}
