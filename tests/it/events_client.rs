//! The Data Events client against a mock Intercom over real HTTP: the request's shape checked against
//! the OpenAPI description, how each answer is handled, and what is retried.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use intercom_webhooks::events::{
    AccessToken, DataEvent, Endpoint, ErrorKind, EventsClient, RateLimit, RetryPolicy, TrackError,
    DEFAULT_INTERCOM_VERSION,
};
use serde_json::{json, Value};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::support::events_api::{unix_ms, TOKEN};

/// `components.schemas.create_data_event_request`, verbatim from Intercom's OpenAPI description
/// (`tests/fixtures/openapi/api.intercom.io.2.15.yaml`; checked against that file).
const CREATE_DATA_EVENT_REQUEST: &str = r#"    create_data_event_request:
      description: ''
      type: object
      title: Create Data Event Request
      properties:
        event_name:
          type: string
          description: The name of the event that occurred. This is presented to your
            App's admins when filtering and creating segments - a good event name
            is typically a past tense 'verb-noun' combination, to improve readability,
            for example `updated-plan`.
          example: invited-friend
        created_at:
          type: integer
          format: date-time
          description: The time the event occurred as a UTC Unix timestamp
          example: 1671028894
        user_id:
          type: string
          description: Your identifier for the user.
          example: '314159'
        id:
          type: string
          description: The unique identifier for the contact (lead or user) which
            is given by Intercom.
          example: 8a88a590-e1c3-41e2-a502-e0649dbf721c
        email:
          type: string
          description: An email address for your user. An email should only be used
            where your application uses email to uniquely identify users.
          example: frodo.baggins@example.com
        metadata:
          type: object
          description: Optional metadata about the event.
          additionalProperties:
            type: string
          example:
            invite_code: ADDAFRIEND
      anyOf:
      - title: id required
        required:
        - event_name
        - created_at
        - id
      - title: user_id required
        required:
        - event_name
        - created_at
        - user_id
      - title: email required
        required:
        - event_name
        - created_at
        - email"#;

/// The schema's properties with their types, and the `anyOf` sets of required fields.
struct Schema {
    types: BTreeMap<String, String>,
    required_sets: Vec<Vec<String>>,
}

/// Reads the excerpt above: enough YAML for this one schema (properties and anyOf/required).
fn schema() -> Schema {
    let mut types = BTreeMap::new();
    let mut required_sets: Vec<Vec<String>> = Vec::new();
    let mut section = "";
    let mut property = None;
    for line in CREATE_DATA_EVENT_REQUEST.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        match (indent, text) {
            (6, "properties:") => section = "properties",
            (6, "anyOf:") => section = "anyOf",
            (6, t) if section == "anyOf" && t.starts_with("- title:") => required_sets.push(Vec::new()),
            (8, t) if section == "properties" && t.ends_with(':') => {
                property = Some(t.trim_end_matches(':').to_string())
            }
            (10, t) if section == "properties" && t.starts_with("type:") => {
                let name = property.clone().expect("a property before its type");
                types.insert(name, t["type:".len()..].trim().to_string());
            }
            (8, t) if section == "anyOf" && t.starts_with("- ") => required_sets
                .last_mut()
                .expect("a title first")
                .push(t[2..].to_string()),
            _ => {}
        }
    }
    Schema { types, required_sets }
}

/// Checks a request body against the schema, field by field.
fn assert_matches_schema(body: &Value) {
    let schema = schema();
    assert_eq!(
        schema.types.keys().map(String::as_str).collect::<Vec<_>>(),
        ["created_at", "email", "event_name", "id", "metadata", "user_id"],
        "the excerpt was read"
    );
    let object = body.as_object().expect("the body is a JSON object");
    for (field, value) in object {
        let expected = schema
            .types
            .get(field)
            .unwrap_or_else(|| panic!("{field} is not in create_data_event_request"));
        let ok = match expected.as_str() {
            "string" => value.is_string(),
            "integer" => value.is_u64() || value.is_i64(),
            "object" => value.is_object(),
            other => panic!("unexpected schema type {other}"),
        };
        assert!(ok, "{field}: expected {expected}, got {value}");
    }
    assert!(
        schema
            .required_sets
            .iter()
            .any(|set| set.iter().all(|f| object.contains_key(f))),
        "no anyOf alternative is satisfied by {body}"
    );
    let identifiers = ["user_id", "id", "email"]
        .iter()
        .filter(|f| object.contains_key(**f))
        .count();
    assert_eq!(identifiers, 1, "exactly one contact identifier in {body}");
    // Intercom does not support nested metadata, except its two documented objects.
    if let Some(metadata) = object.get("metadata") {
        for (key, value) in metadata.as_object().unwrap() {
            if let Value::Object(inner) = value {
                let mut keys: Vec<&str> = inner.keys().map(String::as_str).collect();
                keys.sort();
                assert!(
                    keys == ["url", "value"] || keys == ["amount", "currency"],
                    "metadata.{key}: {value}"
                );
            } else {
                assert!(!value.is_array(), "metadata.{key} is an array");
            }
        }
    }
}

/// Intercom's OpenAPI description, vendored in the repository so that the schema check always runs.
fn openapi_file() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/openapi/api.intercom.io.2.15.yaml"
    );
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("Intercom's OpenAPI description {path} is missing or unreadable: {e}"))
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_rate_limited: 3,
        max_rate_limit_wait: Duration::from_secs(5),
    }
}

fn client(server: &MockServer) -> EventsClient {
    EventsClient::builder(
        AccessToken::new(TOKEN).unwrap(),
        Endpoint::base_url(&server.uri()).unwrap(),
    )
    .retry(fast_retry())
    .build()
    .unwrap()
}

fn event(user_id: &str) -> DataEvent {
    DataEvent::builder("invited-friend")
        .user_id(user_id)
        .created_at(1_671_028_894)
        .build()
        .unwrap()
}

fn error_list(code: &str, message: &str, field: Option<&str>) -> Value {
    json!({
        "type": "error.list",
        "request_id": "212c8206-e7a6-44c8-8f27-5f0ad7f1d243",
        "errors": [{"code": code, "message": message, "field": field}]
    })
}

async fn mount(server: &MockServer, template: ResponseTemplate, expected_calls: u64) {
    Mock::given(method("POST"))
        .and(path("/events"))
        .respond_with(template)
        .expect(expected_calls)
        .mount(server)
        .await;
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap()
}

#[tokio::test]
async fn the_request_matches_the_openapi_schema() {
    let file = openapi_file();
    assert!(
        file.contains(CREATE_DATA_EVENT_REQUEST),
        "the embedded schema excerpt is verbatim"
    );
    assert!(file.contains(&format!("\n  version: '{DEFAULT_INTERCOM_VERSION}'\n")));
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/events"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("intercom-version", DEFAULT_INTERCOM_VERSION))
        .and(header("content-type", "application/json"))
        .and(header("accept", "application/json"))
        .respond_with(ResponseTemplate::new(202))
        .expect(3)
        .mount(&server)
        .await;
    let client = client(&server);
    let full = DataEvent::builder("invited-friend")
        .user_id("314159")
        .created_at(1_671_028_894)
        .metadata("invite_code", "ADDAFRIEND")
        .metadata("load", 3.67)
        .metadata("contact_date", 1_392_036_272u64)
        .metadata(
            "article",
            json!({"url": "https://example.org/ab1de.html", "value": "the dude abides"}),
        )
        .metadata("price", json!({"amount": 34999, "currency": "eur"}))
        .build()
        .unwrap();
    let by_id = DataEvent::builder("lead-viewed")
        .id("8a88a590-e1c3-41e2-a502-e0649dbf721c")
        .build()
        .unwrap();
    let by_email = DataEvent::builder("ordered")
        .email("frodo.baggins@example.com")
        .build()
        .unwrap();
    for e in [&full, &by_id, &by_email] {
        assert_eq!(client.track(e).await.unwrap().attempts, 1);
    }

    let received = requests(&server).await;
    assert_eq!(received.len(), 3);
    for (request, sent) in received.iter().zip([&full, &by_id, &by_email]) {
        assert_eq!(request.method.as_str(), "POST");
        assert_eq!(request.url.path(), "/events");
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_matches_schema(&body);
        assert_eq!(body["event_name"], json!(sent.event_name()));
        assert_eq!(body["created_at"], json!(sent.created_at()));
    }
    let body: Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(
        body,
        json!({
            "event_name": "invited-friend",
            "created_at": 1_671_028_894,
            "user_id": "314159",
            "metadata": {
                "invite_code": "ADDAFRIEND",
                "load": 3.67,
                "contact_date": 1_392_036_272u64,
                "article": {"url": "https://example.org/ab1de.html", "value": "the dude abides"},
                "price": {"amount": 34999, "currency": "eur"}
            }
        })
    );
    let second: Value = serde_json::from_slice(&received[1].body).unwrap();
    assert_eq!(second["id"], json!("8a88a590-e1c3-41e2-a502-e0649dbf721c"));
    let third: Value = serde_json::from_slice(&received[2].body).unwrap();
    assert_eq!(third["email"], json!("frodo.baggins@example.com"));
    server.verify().await;
}

#[tokio::test]
async fn the_version_header_is_configurable() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("intercom-version", "2.14"))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&server)
        .await;
    let client = EventsClient::builder(
        AccessToken::new(TOKEN).unwrap(),
        Endpoint::base_url(&server.uri()).unwrap(),
    )
    .intercom_version("2.14")
    .build()
    .unwrap();
    client.track(&event("u")).await.unwrap();
    server.verify().await;
}

#[tokio::test]
async fn a_202_is_accepted_with_its_rate_limit() {
    let server = MockServer::start().await;
    let template = ResponseTemplate::new(202)
        .insert_header("X-RateLimit-Limit", "1667")
        .insert_header("X-RateLimit-Remaining", "1666")
        .insert_header("X-RateLimit-Reset", "1700000010");
    mount(&server, template, 1).await;
    let tracked = client(&server).track(&event("u")).await.unwrap();
    assert_eq!(tracked.attempts, 1);
    assert_eq!(
        tracked.rate_limit,
        RateLimit {
            limit: Some(1667),
            remaining: Some(1666),
            reset: Some(1_700_000_010)
        }
    );
    server.verify().await;
}

#[tokio::test]
async fn an_unknown_contact_is_not_retried() {
    let server = MockServer::start().await;
    let template = ResponseTemplate::new(404).set_body_json(error_list("not_found", "User Not Found", None));
    mount(&server, template, 1).await;
    let error = client(&server).track(&event("nobody")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ContactNotFound);
    assert_eq!(error.status(), Some(404));
    assert!(!error.is_retryable());
    assert_eq!(error.api_errors().unwrap().errors[0].code, "not_found");
    assert!(error.to_string().contains("User Not Found"), "{error}");
    assert_eq!(requests(&server).await.len(), 1);
    server.verify().await;
}

#[tokio::test]
async fn unauthorized_is_not_retried_and_never_shows_the_token() {
    for status in [401, 403] {
        let server = MockServer::start().await;
        let template = ResponseTemplate::new(status).set_body_json(error_list(
            "unauthorized",
            "Access Token Invalid",
            None,
        ));
        mount(&server, template, 1).await;
        let client = client(&server);
        let error = client.track(&event("u")).await.unwrap_err();
        assert!(
            matches!(error, TrackError::Unauthorized { status: s, .. } if s == status),
            "{error:?}"
        );
        for shown in [error.to_string(), format!("{error:?}"), format!("{client:?}")] {
            assert!(!shown.contains(TOKEN), "{shown}");
        }
        assert_eq!(requests(&server).await.len(), 1);
        server.verify().await;
    }
}

#[tokio::test]
async fn an_invalid_event_carries_intercoms_error_list() {
    for status in [400, 422] {
        let server = MockServer::start().await;
        let body = error_list("parameter_invalid", "Invalid created_at", Some("created_at"));
        mount(&server, ResponseTemplate::new(status).set_body_json(body), 1).await;
        let error = client(&server).track(&event("u")).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Invalid);
        assert_eq!(error.status(), Some(status));
        let errors = error.api_errors().unwrap();
        assert_eq!(errors.errors[0].field.as_deref(), Some("created_at"));
        assert!(
            error
                .to_string()
                .contains("parameter_invalid: Invalid created_at (field created_at)"),
            "{error}"
        );
        server.verify().await;
    }
}

#[tokio::test]
async fn a_429_is_retried_after_the_reset_time() {
    let server = MockServer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    // Two seconds ahead, so that the wait is real whatever the time within the second.
    let reset = unix_ms() / 1000 + 2;
    let responder = {
        let calls = calls.clone();
        let arrivals = arrivals.clone();
        move |_: &Request| {
            arrivals.lock().unwrap().push(unix_ms());
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                ResponseTemplate::new(429)
                    .insert_header("X-RateLimit-Limit", "10")
                    .insert_header("X-RateLimit-Remaining", "0")
                    .insert_header("X-RateLimit-Reset", reset.to_string())
                    .set_body_json(error_list("rate_limit_exceeded", "Exceeded rate limit", None))
            } else {
                ResponseTemplate::new(202)
            }
        }
    };
    Mock::given(method("POST"))
        .respond_with(responder)
        .mount(&server)
        .await;
    let tracked = client(&server).track(&event("u")).await.unwrap();
    assert_eq!(tracked.attempts, 2);
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 2);
    assert!(arrivals[0] < reset * 1000);
    assert!(
        arrivals[1] >= reset * 1000,
        "retried at {} before the reset {}",
        arrivals[1],
        reset * 1000
    );
}

#[tokio::test]
async fn endless_429s_are_given_up_after_the_bound() {
    let server = MockServer::start().await;
    // A reset time already past: the client waits only its jitter.
    let past = unix_ms() / 1000 - 1;
    let template = ResponseTemplate::new(429).insert_header("X-RateLimit-Reset", past.to_string());
    mount(&server, template, u64::from(fast_retry().max_rate_limited) + 1).await;
    let error = client(&server).track(&event("u")).await.unwrap_err();
    assert!(
        matches!(error, TrackError::RateLimited { reset: Some(r), attempts: 4 } if r == past),
        "{error:?}"
    );
    server.verify().await;
}

#[tokio::test]
async fn server_errors_are_retried_then_given_up() {
    let server = MockServer::start().await;
    mount(
        &server,
        ResponseTemplate::new(503).set_body_string("upstream unavailable"),
        3,
    )
    .await;
    let error = client(&server).track(&event("u")).await.unwrap_err();
    assert!(
        matches!(
            error,
            TrackError::Server {
                status: 503,
                attempts: 3,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(
        error.to_string(),
        "server error (503), gave up after 3 attempts: upstream unavailable"
    );
    server.verify().await;
}

#[tokio::test]
async fn a_server_error_then_success_is_accepted() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&server)
        .await;
    let tracked = client(&server).track(&event("u")).await.unwrap();
    assert_eq!(tracked.attempts, 2);
    // The retry is the same request: same created_at, so Intercom would keep only one.
    let received = requests(&server).await;
    assert_eq!(received[0].body, received[1].body);
    server.verify().await;
}

#[tokio::test]
async fn timeouts_are_retried_and_bounded() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202).set_delay(Duration::from_secs(3)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .mount(&server)
        .await;
    let client = EventsClient::builder(
        AccessToken::new(TOKEN).unwrap(),
        Endpoint::base_url(&server.uri()).unwrap(),
    )
    .timeout(Duration::from_millis(300))
    .retry(fast_retry())
    .build()
    .unwrap();
    assert_eq!(client.track(&event("u")).await.unwrap().attempts, 2);

    let slow = MockServer::start().await;
    mount(
        &slow,
        ResponseTemplate::new(202).set_delay(Duration::from_secs(3)),
        3,
    )
    .await;
    let client = EventsClient::builder(
        AccessToken::new(TOKEN).unwrap(),
        Endpoint::base_url(&slow.uri()).unwrap(),
    )
    .timeout(Duration::from_millis(200))
    .retry(fast_retry())
    .build()
    .unwrap();
    let error = client.track(&event("u")).await.unwrap_err();
    assert!(
        matches!(
            error,
            TrackError::Network {
                timeout: true,
                attempts: 3,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("timed out"), "{error}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_network_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = EventsClient::builder(
        AccessToken::new(TOKEN).unwrap(),
        Endpoint::base_url(&format!("http://127.0.0.1:{port}")).unwrap(),
    )
    .retry(fast_retry())
    .build()
    .unwrap();
    let error = client.track(&event("u")).await.unwrap_err();
    assert!(
        matches!(
            error,
            TrackError::Network {
                timeout: false,
                attempts: 3,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.status(), None);
}

#[tokio::test]
async fn invalid_events_are_refused_before_any_request() {
    let server = MockServer::start().await;
    mount(&server, ResponseTemplate::new(202), 0).await;
    let client = client(&server);
    let too_many: serde_json::Map<String, Value> = (0..11).map(|i| (format!("k{i}"), json!(i))).collect();
    let candidates = [
        json!({"event_name": "", "user_id": "u"}),
        json!({"event_name": "x".repeat(256), "user_id": "u"}),
        json!({"event_name": "a"}),
        json!({"event_name": "a", "user_id": "u", "email": "u@example.com"}),
        json!({"event_name": "a", "user_id": "u", "metadata": too_many}),
        json!({"event_name": "a", "user_id": "u", "metadata": {"nested": {"a": 1}}}),
        json!({"event_name": "a", "user_id": "u", "metadata": {"price": {"amount": -1, "currency": "eur"}}}),
        json!({"event_name": "a", "user_id": "u", "metadata": {"paid_date": "yesterday"}}),
        json!({"event_name": "a", "user_id": "u", "created_at": 1_700_000_000_000u64}),
    ];
    let expected_fields = [
        "event_name",
        "event_name",
        "user_id/id/email",
        "user_id/id/email",
        "metadata",
        "metadata.nested",
        "metadata.price",
        "metadata.paid_date",
        "created_at",
    ];
    for (candidate, field) in candidates.into_iter().zip(expected_fields) {
        match DataEvent::from_json(candidate.clone()) {
            Ok(event) => {
                client.track(&event).await.ok();
                panic!("accepted {candidate}");
            }
            Err(error) => assert_eq!(error.field(), field, "{candidate}: {error}"),
        }
    }
    assert!(requests(&server).await.is_empty());
    server.verify().await;
}

#[test]
fn now_is_whole_seconds() {
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let e = DataEvent::builder("a").user_id("u").build().unwrap();
    assert!(e.created_at() >= before);
    assert!(e.to_json()["created_at"].is_u64());
}
