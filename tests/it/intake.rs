//! Component tests: the real HTTP application in-process, with a recording queue.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::support::{fixture, fixtures, sign, RecordingQueue, TEST_SECRET};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use intercom_webhooks::receiving::intake::{Intake, DEFAULT_MAX_BODY_BYTES};
use intercom_webhooks::receiving::queue::{attr, QueueError};
use intercom_webhooks::receiving::signature::ClientSecrets;
use serde_json::Value;
use tower::ServiceExt;

fn app_with(secrets: &str, max: usize) -> (Router, Arc<RecordingQueue>) {
    let queue = Arc::new(RecordingQueue::default());
    let app = Intake::new(ClientSecrets::parse(secrets).unwrap(), queue.clone(), max).router();
    (app, queue)
}

fn app() -> (Router, Arc<RecordingQueue>) {
    app_with(TEST_SECRET, DEFAULT_MAX_BODY_BYTES)
}

fn post(path: &str, body: &[u8], signature: Option<&str>) -> Request<Body> {
    let mut request = Request::post(path).header("content-type", "application/json");
    if let Some(s) = signature {
        request = request.header("x-hub-signature", s);
    }
    request.body(Body::from(body.to_vec())).unwrap()
}

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {bytes:?}"))
    };
    (status, json)
}

#[tokio::test]
async fn head_validates_the_url() {
    let (app, queue) = app();
    for path in ["/", "/webhooks/intercom"] {
        let (status, _) = call(&app, Request::head(path).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    assert!(queue.sent().is_empty());
}

#[tokio::test]
async fn every_fixture_is_queued_with_its_exact_bytes_and_attributes() {
    let (app, queue) = app();
    let mut expected = 0;
    for (name, body) in fixtures() {
        let (status, json) = call(&app, post("/", &body, Some(&sign(&body)))).await;
        assert_eq!(status, StatusCode::OK, "{name}: {json}");
        let envelope: Value = serde_json::from_slice(&body).unwrap();
        if envelope["topic"] == "ping" {
            assert_eq!(json["status"], "ok");
            continue;
        }
        expected += 1;
        assert_eq!(json["status"], "queued", "{name}");
        assert_eq!(json["notification_id"], envelope["id"]);
        let sent = queue.sent();
        let message = sent.last().unwrap();
        assert_eq!(
            message.body.as_bytes(),
            &body[..],
            "{name}: body must be the raw bytes"
        );
        assert_eq!(message.attribute(attr::TOPIC), envelope["topic"].as_str());
        assert_eq!(message.attribute(attr::NOTIFICATION_ID), envelope["id"].as_str());
        assert_eq!(message.attribute(attr::APP_ID), envelope["app_id"].as_str());
        assert_eq!(
            message.attribute(attr::DELIVERY_ATTEMPTS).map(str::to_owned),
            Some(envelope["delivery_attempts"].to_string())
        );
    }
    assert_eq!(queue.sent().len(), expected);
    assert_eq!(expected, 9);
    assert!(queue.dead().is_empty());
}

#[tokio::test]
async fn the_conventional_path_works_too() {
    let (app, queue) = app();
    let body = fixture("contact_deleted.json");
    let (status, _) = call(&app, post("/webhooks/intercom", &body, Some(&sign(&body)))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(queue.sent().len(), 1);
}

#[tokio::test]
async fn ping_is_answered_and_not_queued() {
    let (app, queue) = app();
    let body = fixture("ping.json");
    let (status, json) = call(&app, post("/", &body, Some(&sign(&body)))).await;
    assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("ok")));
    assert!(queue.sent().is_empty() && queue.dead().is_empty());
}

#[tokio::test]
async fn bad_signatures_are_401_with_the_failed_check_and_queue_nothing() {
    let (app, queue) = app();
    let body = fixture("conversation_user_created.json");
    let good = sign(&body);
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "signature_missing"),
        (Some(String::new()), "signature_malformed"),
        (Some(good.replace("sha1=", "sha256=")), "signature_malformed"),
        (Some(good[..good.len() - 1].to_string()), "signature_malformed"),
        (
            Some(format!("{}zz", &good[..good.len() - 2])),
            "signature_malformed",
        ),
        (Some(format!("sha1={}", "0".repeat(40))), "signature_mismatch"),
        (Some(sign(b"another body")), "signature_mismatch"),
    ];
    for (header, code) in cases {
        let (status, json) = call(&app, post("/", &body, header.as_deref())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{header:?}");
        assert_eq!(json["error"], code, "{header:?}");
        assert!(json["message"].as_str().unwrap().contains("X-Hub-Signature"));
    }
    // One byte more than what was signed.
    let mut longer = body.clone();
    longer.push(b'\n');
    let (status, _) = call(&app, post("/", &longer, Some(&good))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The header twice.
    let request = Request::post("/")
        .header("x-hub-signature", &good)
        .header("x-hub-signature", &good)
        .body(Body::from(body.clone()))
        .unwrap();
    let (status, json) = call(&app, request).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("signature_malformed"))
    );
    assert!(queue.sent().is_empty() && queue.dead().is_empty());
}

#[tokio::test]
async fn case_and_whitespace_variations_are_accepted() {
    let (app, queue) = app();
    let body = fixture("contact_deleted.json");
    let good = sign(&body);
    for header in [
        good.to_uppercase().replace("SHA1=", "sha1="),
        format!("  {good} "),
    ] {
        let (status, _) = call(&app, post("/", &body, Some(&header))).await;
        assert_eq!(status, StatusCode::OK, "{header}");
    }
    assert_eq!(queue.sent().len(), 2);
}

#[tokio::test]
async fn any_secret_during_rotation() {
    let (app, queue) = app_with(&format!("new-secret,{TEST_SECRET}"), DEFAULT_MAX_BODY_BYTES);
    let body = fixture("contact_deleted.json");
    let (status, _) = call(&app, post("/", &body, Some(&sign(&body)))).await;
    assert_eq!(status, StatusCode::OK);
    let new = intercom_webhooks::receiving::signature::ClientSecret::new("new-secret")
        .unwrap()
        .sign(&body);
    let (status, _) = call(&app, post("/", &body, Some(&new))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(queue.sent().len(), 2);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_declared_or_streamed() {
    let (app, queue) = app_with(TEST_SECRET, 1000);
    let body = vec![b' '; 1001];
    let (status, json) = call(&app, post("/", &body, Some(&sign(&body)))).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
    );
    // Without a Content-Length: a streamed body is cut off at the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(vec![b' '; 600]), Ok(vec![b' '; 600])];
    let request = Request::post("/")
        .header("x-hub-signature", sign(&[b' '; 1200]))
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let (status, _) = call(&app, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Exactly at the limit is fine (and, being invalid JSON, dead-lettered).
    let at = vec![b' '; 1000];
    let (status, _) = call(&app, post("/", &at, Some(&sign(&at)))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(queue.sent().is_empty());
    assert_eq!(queue.dead().len(), 1);
}

#[tokio::test]
async fn authentic_bodies_that_are_not_notifications_are_dead_lettered_and_answered_200() {
    let (app, queue) = app();
    let cases: Vec<(&[u8], &str)> = vec![
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1,2,3]", "not_a_notification"),
        (br#"{"id":"notif_1","data":{}}"#, "missing_field"),
        (br#"{"topic":"contact.created"}"#, "missing_field"),
        (&[0xff, 0x00, 0xfe], "invalid_json"),
    ];
    for (body, code) in &cases {
        let (status, json) = call(&app, post("/", body, Some(&sign(body)))).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        assert_eq!(json["status"], "dead_lettered");
        assert!(json["reason"].as_str().unwrap().starts_with(code), "{json}");
        let (message, reason) = queue.dead().pop().unwrap();
        assert_eq!(message.raw_body(), *body, "the raw body is kept");
        assert!(reason.starts_with(code));
    }
    assert!(queue.sent().is_empty());
}

#[tokio::test]
async fn queue_trouble_is_503_and_never_2xx() {
    let (app, queue) = app();
    *queue.fail_send.lock().unwrap() = Some(QueueError::Unavailable("connection refused".into()));
    let body = fixture("conversation_user_replied.json");
    let (status, json) = call(&app, post("/", &body, Some(&sign(&body)))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json["error"], "queue_unavailable");
    assert!(
        !json["message"].as_str().unwrap().contains("connection refused"),
        "internals stay in the log"
    );

    // A queue that refuses the message outright: kept in the dead-letter queue instead.
    *queue.fail_send.lock().unwrap() = Some(QueueError::Rejected("message too long".into()));
    let (status, json) = call(&app, post("/", &body, Some(&sign(&body)))).await;
    assert_eq!(
        (status, json["status"].as_str()),
        (StatusCode::OK, Some("dead_lettered"))
    );
    assert_eq!(queue.dead()[0].0.body.as_bytes(), &body[..]);

    // Neither queue takes it: 503, so Intercom retries.
    *queue.fail_dead_letter.lock().unwrap() = Some(QueueError::Unavailable("down".into()));
    let (status, _) = call(&app, post("/", &body, Some(&sign(&body)))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let bad = b"nope";
    let (status, _) = call(&app, post("/", bad, Some(&sign(bad)))).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "an unstorable bad body is not acknowledged either"
    );
}

#[tokio::test]
async fn other_methods_are_405_and_other_paths_404_all_json() {
    let (app, queue) = app();
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let request = Request::builder()
            .method(method)
            .uri("/")
            .body(Body::empty())
            .unwrap();
        let (status, json) = call(&app, request).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(json["error"], "method_not_allowed");
    }
    let body = fixture("contact_deleted.json");
    let (status, json) = call(&app, post("/elsewhere", &body, Some(&sign(&body)))).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    assert!(queue.sent().is_empty());
}

/// The receiver Lambda gets Function URL events; `lambda_http` turns them into requests for the same
/// router, decoding base64 bodies. The signature must verify over the decoded bytes.
#[tokio::test]
async fn function_url_events_plain_and_base64() {
    let (app, queue) = app();
    let body = fixture("conversation_admin_replied.json");
    for base64 in [false, true] {
        let headers = BTreeMap::from([
            ("content-type".to_string(), "application/json".to_string()),
            ("x-hub-signature".to_string(), sign(&body)),
        ]);
        let event = crate::support::function_url_event("POST", "/", &headers, Some(&body), base64);
        let request = lambda_http::request::from_str(&event.to_string()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "base64: {base64}");
        assert_eq!(queue.sent().last().unwrap().body.as_bytes(), &body[..]);
    }
    assert_eq!(queue.sent().len(), 2);
}

#[tokio::test]
async fn counters_follow_a_scripted_sequence_of_requests() {
    let metrics = Arc::new(intercom_webhooks::plumbing::metrics::Metrics::new());
    let queue = Arc::new(RecordingQueue::default());
    let app = Intake::new(
        ClientSecrets::parse(&format!("new-secret,{TEST_SECRET}")).unwrap(),
        queue.clone(),
        1_000_000,
    )
    .with_metrics(metrics.clone())
    .router();
    let body = fixture("contact_deleted.json");
    let ping = fixture("ping.json");
    // Two queued (signed with the second secret), one ping, two rejections, one dead-lettered.
    call(&app, post("/", &body, Some(&sign(&body)))).await;
    call(&app, post("/", &body, Some(&sign(&body)))).await;
    call(&app, post("/", &ping, Some(&sign(&ping)))).await;
    call(&app, post("/", &body, None)).await;
    call(&app, post("/", &body, Some(&sign(b"x")))).await;
    call(&app, post("/", b"nope", Some(&sign(b"nope")))).await;
    // One that cannot be stored.
    *queue.fail_send.lock().unwrap() = Some(QueueError::Unavailable("down".into()));
    call(&app, post("/", &body, Some(&sign(&body)))).await;

    assert_eq!(metrics.total("received"), 7);
    assert_eq!(metrics.total("enqueued"), 2);
    assert_eq!(metrics.total("pings"), 1);
    assert_eq!(metrics.get("rejected", &[("reason", "signature_missing")]), 1);
    assert_eq!(metrics.get("rejected", &[("reason", "signature_mismatch")]), 1);
    assert_eq!(metrics.get("dead_lettered", &[("stage", "receiver")]), 1);
    assert_eq!(metrics.total("enqueue_failed"), 1);
    assert_eq!(metrics.get("verified_by_secret", &[("secret_index", "1")]), 5);
    assert_eq!(metrics.get("verified_by_secret", &[("secret_index", "0")]), 0);
}
