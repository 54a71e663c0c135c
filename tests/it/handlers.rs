//! Built-in handlers: routing of every real fixture, the notify handler against a mock chat webhook
//! (escaping, pacing, `Retry-After`), and the Lambda SQS event translation.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{create_queue, create_table, fixture, fixtures, record, unique};
use intercom_webhooks::aws::dynamodb::DynamoStore;
use intercom_webhooks::aws::lambda_sqs;
use intercom_webhooks::aws::sqs::SqsDeadLetterQueue;
use intercom_webhooks::local::{Db, SqliteQueue, SqliteStore};
use intercom_webhooks::plumbing::clock::{unix_ms_now, SystemClock};
use intercom_webhooks::plumbing::metrics::Metrics;
use intercom_webhooks::processing::handler::{Handler, HandlerContext, HandlerError};
use intercom_webhooks::processing::handlers::{
    default_router, Builtins, NotifyHandler, NotifySettings, DEFAULT_NOTIFY_TOPICS,
};
use intercom_webhooks::processing::router::Router;
use intercom_webhooks::processing::worker::{Outcome, Worker, WorkerSettings};
use intercom_webhooks::receiving::notification::Notification;
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

fn settings(url: String) -> NotifySettings {
    NotifySettings {
        url: url.into(),
        topics: DEFAULT_NOTIFY_TOPICS.iter().map(|t| t.to_string()).collect(),
        timeout: Duration::from_secs(2),
        // Pacing has its own tests; elsewhere it should not slow the suite down.
        rate_per_second: 100.0,
    }
}

fn context() -> HandlerContext {
    HandlerContext {
        receive_count: 1,
        deadline_ms: i64::MAX,
    }
}

#[test]
fn every_fixture_routes_to_the_right_builtin_handlers() {
    let router = default_router(Builtins {
        notify: Some(settings("http://127.0.0.1:9/hook".into())),
        ..Builtins::default()
    })
    .unwrap();
    let expected: &[(&str, &[&str])] = &[
        ("contact_deleted.json", &["summary"]),
        ("contact_user_created.json", &["summary"]),
        ("contact_user_tag_created.json", &["summary"]),
        ("conversation_admin_closed.json", &["summary"]),
        ("conversation_admin_replied.json", &["summary"]),
        ("conversation_user_created.json", &["summary", "notify"]),
        ("conversation_user_replied.json", &["summary", "notify"]),
        ("ping.json", &[]),
        ("ticket_created.json", &["summary"]),
        ("visitor_signed_up.json", &["summary"]),
    ];
    let all = fixtures();
    assert_eq!(all.len(), expected.len());
    for ((file, body), (name, handlers)) in all.iter().zip(expected) {
        assert_eq!(file, name);
        let topic: serde_json::Value = serde_json::from_slice(body).unwrap();
        let names: Vec<String> = router
            .handlers_for(topic["topic"].as_str().unwrap())
            .iter()
            .map(|h| h.name().to_owned())
            .collect();
        assert_eq!(names, *handlers, "{file}");
    }
    // Without a notify URL there is no notify handler.
    let plain = default_router(Default::default()).unwrap();
    assert_eq!(plain.handlers_for("conversation.user.created").len(), 1);
}

#[tokio::test]
async fn the_worker_runs_every_fixture_through_the_builtin_handlers() {
    let chat = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&chat)
        .await;
    let sdk = crate::support::aws_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let table = unique("idem");
    create_table(&dynamo, &table).await;
    let dlq = create_queue(&sqs, &unique("dlq")).await;
    let metrics = Arc::new(Metrics::new());
    let clock = Arc::new(SystemClock);
    let worker = Worker::new(
        Arc::new(DynamoStore::new(dynamo.clone(), &table, clock.clone())),
        Arc::new(SqsDeadLetterQueue::new(sqs.clone(), &dlq)),
        default_router(Builtins {
            notify: Some(settings(format!("{}/hook", chat.uri()))),
            ..Builtins::default()
        })
        .unwrap(),
        clock,
        metrics.clone(),
        WorkerSettings::default(),
    );
    let notifications: Vec<(String, Vec<u8>)> = fixtures()
        .into_iter()
        .filter(|(name, _)| name != "ping.json")
        .collect();
    assert_eq!(notifications.len(), 9);
    let records = notifications
        .iter()
        .map(|(name, body)| record(name, body))
        .collect();
    let result = worker.process_batch(records, i64::MAX).await;

    // Each record processed exactly once, and nothing else: no retry, no dead letter, no duplicate.
    let mut outcomes = result.outcomes.clone();
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    let expected: Vec<(String, Outcome)> = notifications
        .iter()
        .map(|(name, _)| (name.clone(), Outcome::Processed))
        .collect();
    assert_eq!(outcomes, expected);
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    assert!(result.failures().is_empty());
    let mut counters: Vec<(String, u64)> = metrics
        .snapshot()
        .into_iter()
        .filter(|((name, _), _)| name != "handler_latency_ms_sum")
        .map(|((name, labels), value)| {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (format!("{name}{{{}}}", labels.join(",")), value)
        })
        .collect();
    counters.sort();
    let mut expected: Vec<(String, u64)> = notifications
        .iter()
        .map(|(_, body)| {
            let topic = serde_json::from_slice::<Value>(body).unwrap()["topic"]
                .as_str()
                .unwrap()
                .to_owned();
            (format!("processed{{outcome=processed,topic={topic}}}"), 1)
        })
        .collect();
    expected.push(("handler_latency_ms_count{}".to_owned(), 9));
    expected.sort();
    assert_eq!(counters, expected);
    let items = crate::support::scan_items(&dynamo, &table).await;
    assert_eq!(items.len(), 9, "{items:?}");
    assert!(
        items
            .iter()
            .all(|item| item["status"].as_s().is_ok_and(|s| s == "COMPLETED")),
        "{items:?}"
    );
    assert!(crate::support::drain(&sqs, &dlq).await.is_empty());
    let posts = chat.received_requests().await.unwrap();
    let mut texts: Vec<String> = posts
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    texts.sort();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert_eq!(
        texts[0],
        "conversation.user.created: Rose Poodle from St. John's, conversation 21321941764: \"Hello everyone!\""
    );
    assert!(
        texts[1].starts_with("conversation.user.replied: "),
        "{}",
        texts[1]
    );
    assert!(posts
        .iter()
        .all(|r| r.headers["content-type"] == "application/json"));
}

#[tokio::test]
async fn notify_classes_webhook_answers() {
    let notification = Notification::parse(&fixture("conversation_user_created.json")).unwrap();
    for (status, expected) in [
        (200, None),
        (204, None),
        (500, Some(true)),
        (503, Some(true)),
        (400, Some(false)),
        (403, Some(false)),
        (404, Some(false)),
    ] {
        let chat = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status))
            .expect(1)
            .mount(&chat)
            .await;
        let handler = NotifyHandler::new(settings(format!("{}/hook", chat.uri())));
        let result = handler.handle(&notification, &context()).await;
        match expected {
            None => assert_eq!(result, Ok(()), "{status}"),
            Some(retryable) => {
                let error = result.unwrap_err();
                assert_eq!(error.is_retryable(), retryable, "{status}: {error}");
            }
        }
    }
}

#[tokio::test]
async fn notify_timeouts_and_unreachable_hooks_are_retryable_and_never_leak_the_url() {
    let notification = Notification::parse(&fixture("conversation_user_created.json")).unwrap();
    let chat = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&chat)
        .await;
    let mut slow = settings(format!("{}/hook/SECRET-TOKEN", chat.uri()));
    slow.timeout = Duration::from_millis(300);
    let error = NotifyHandler::new(slow)
        .handle(&notification, &context())
        .await
        .unwrap_err();
    assert!(matches!(error, HandlerError::Retryable { .. }), "{error}");
    assert!(!error.to_string().contains("SECRET-TOKEN"), "{error}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = NotifyHandler::new(settings(format!("http://{closed}/hook/SECRET-TOKEN")))
        .handle(&notification, &context())
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(!error.to_string().contains("SECRET-TOKEN"), "{error}");
}

#[test]
fn lambda_sqs_events_become_records_and_failures_become_a_partial_batch_response() {
    let event: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_value(serde_json::json!({
        "Records": [{
            "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
            "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a",
            "body": "{\"id\":\"notif_1\"}",
            "attributes": {"ApproximateReceiveCount": "3", "SentTimestamp": "1545082649183"},
            "messageAttributes": {
                "topic": {"stringValue": "contact.created", "stringListValues": [], "binaryListValues": [], "dataType": "String"}
            },
            "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:notifications",
            "awsRegion": "us-east-1"
        }]
    }))
    .unwrap();
    let records = lambda_sqs::records(event);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].message_id, "059f36b4-87a3-44ab-83d2-661975830a7d");
    assert_eq!(records[0].receive_count, 3);
    assert_eq!(records[0].message.attribute("topic"), Some("contact.created"));
    assert_eq!(records[0].message.body, "{\"id\":\"notif_1\"}");

    let result = intercom_webhooks::processing::worker::BatchResult {
        outcomes: vec![
            ("a".into(), Outcome::Processed),
            ("b".into(), Outcome::Retry),
            ("c".into(), Outcome::InFlight),
            ("d".into(), Outcome::DeadLettered),
        ],
        ..Default::default()
    };
    let response = serde_json::to_value(lambda_sqs::batch_response(&result)).unwrap();
    assert_eq!(
        response,
        serde_json::json!({"batchItemFailures": [{"itemIdentifier": "b"}, {"itemIdentifier": "c"}]})
    );
}

/// What a visitor can type to make Slack ping a channel or show a disguised link.
const HOSTILE: &str = "<!channel> <!here> <!everyone> <@U123> <https://x|y> &amp;";
/// The same, as Intercom stores it in an HTML message body (plus one raw tag, which is markup).
const HOSTILE_HTML: &str =
    "<p>&lt;!channel&gt; &lt;!here&gt; &lt;!everyone&gt; &lt;@U123&gt; &lt;https://x|y&gt; &amp;amp; <!channel></p>";
/// How Slack must receive them to show them as typed.
const SHOWN: &[&str] = &[
    "&lt;!channel&gt;",
    "&lt;!here&gt;",
    "&lt;!everyone&gt;",
    "&lt;@U123&gt;",
    "&lt;https://x|y&gt;",
    "&amp;amp;",
];

/// A real fixture with every message body replaced by [`HOSTILE_HTML`] and every name (`by_name`) or, with
/// the names removed, every e-mail address (`!by_name`) replaced by [`HOSTILE`].
fn hostile(name: &str, by_name: bool) -> Notification {
    fn walk(value: &mut Value, by_name: bool) {
        match value {
            Value::Object(map) => {
                if map.contains_key("body") {
                    map.insert("body".into(), HOSTILE_HTML.into());
                }
                if map.contains_key("name") {
                    if by_name {
                        map.insert("name".into(), HOSTILE.into());
                    } else {
                        map.insert("name".into(), Value::Null);
                        map.insert("email".into(), HOSTILE.into());
                    }
                }
                map.values_mut().for_each(|v| walk(v, by_name));
            }
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, by_name)),
            _ => {}
        }
    }
    let mut json: Value = serde_json::from_slice(&fixture(name)).unwrap();
    walk(&mut json["data"]["item"], by_name);
    Notification::parse(&serde_json::to_vec_pretty(&json).unwrap()).unwrap()
}

fn posted_texts(requests: &[Request]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn customer_text_reaches_slack_escaped_never_as_a_mention_or_a_link() {
    let chat = MockServer::start().await;
    let handler = NotifyHandler::new(settings(format!("{}/hook", chat.uri())));
    let cases = [
        ("conversation_user_created.json", true),
        ("conversation_user_created.json", false),
        ("conversation_admin_replied.json", true),
        ("conversation_admin_replied.json", false),
        ("contact_user_created.json", true),
        ("contact_user_created.json", false),
        ("contact_user_tag_created.json", true),
        ("contact_user_tag_created.json", false),
    ];
    for (name, by_name) in cases {
        chat.reset().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
            .mount(&chat)
            .await;
        handler.handle(&hostile(name, by_name), &context()).await.unwrap();
        let texts = posted_texts(&chat.received_requests().await.unwrap());
        assert_eq!(texts.len(), 1, "{name}");
        let text = &texts[0];
        let case = format!(
            "{name} (hostile {}): {text}",
            if by_name { "name" } else { "e-mail" }
        );
        assert!(!text.contains(['<', '>']), "{case}");
        // Every `&` starts one of Slack's three escapes: nothing the customer wrote is read as markup.
        for (at, _) in text.match_indices('&') {
            let rest = &text[at..];
            assert!(
                ["&amp;", "&lt;", "&gt;"].iter().any(|e| rest.starts_with(e)),
                "{case}"
            );
        }
        for shown in SHOWN {
            assert!(text.contains(shown), "{shown} missing in {case}");
        }
    }
}

/// A Slack incoming webhook that is over its rate limit for the first post: 429 with `Retry-After: 1`,
/// then 200 `ok`. Records when each post arrived and what it answered.
#[derive(Clone, Default)]
struct ThrottledOnce {
    arrivals: Arc<Mutex<Vec<(Instant, u16, String)>>>,
}

impl Respond for ThrottledOnce {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let text = posted_texts(std::slice::from_ref(request)).remove(0);
        let mut arrivals = self.arrivals.lock().unwrap();
        if arrivals.is_empty() {
            arrivals.push((Instant::now(), 429, text));
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_string("rate_limited")
        } else {
            arrivals.push((Instant::now(), 200, text));
            ResponseTemplate::new(200).set_body_string("ok")
        }
    }
}

/// A conversation notification with its own id, so that each post's text is distinct.
fn conversation(id: usize) -> Notification {
    let mut json: Value = serde_json::from_slice(&fixture("conversation_user_created.json")).unwrap();
    json["id"] = format!("notif_burst_{id}").into();
    json["data"]["item"]["id"] = format!("{id}").into();
    Notification::parse(&serde_json::to_vec(&json).unwrap()).unwrap()
}

#[tokio::test]
async fn a_burst_is_paced_and_a_429_holds_every_post_for_its_retry_after() {
    let chat = MockServer::start().await;
    let webhook = ThrottledOnce::default();
    Mock::given(method("POST"))
        .respond_with(webhook.clone())
        .mount(&chat)
        .await;
    let rate = 5.0;
    let handler = NotifyHandler::new(NotifySettings {
        rate_per_second: rate,
        ..settings(format!("{}/hook", chat.uri()))
    });
    let burst: Vec<Notification> = (1..=8).map(conversation).collect();
    let context = context();
    let results = futures::future::join_all(burst.iter().map(|n| handler.handle(n, &context))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let arrivals = webhook.arrivals.lock().unwrap().clone();
    let (throttled_at, status, _) = arrivals[0].clone();
    assert_eq!(status, 429);
    let posted: Vec<&(Instant, u16, String)> = arrivals[1..].iter().collect();
    assert!(posted.iter().all(|(_, status, _)| *status == 200), "{arrivals:?}");
    // Each notification was posted successfully exactly once.
    let mut texts: Vec<&str> = posted.iter().map(|(_, _, t)| t.as_str()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!((texts.len(), posted.len()), (8, 8), "{texts:?}");
    // Nothing went out while the Retry-After held.
    let first_after = posted[0].0.duration_since(throttled_at);
    assert!(
        first_after >= Duration::from_millis(950),
        "first post {first_after:?} after the 429"
    );
    // One post per 1/rate, at most.
    let interval = Duration::from_secs_f64(1.0 / rate) - Duration::from_millis(20);
    for pair in posted.windows(2) {
        let gap = pair[1].0.duration_since(pair[0].0);
        assert!(gap >= interval, "posts {gap:?} apart");
    }
}

#[tokio::test]
async fn a_retry_after_past_the_deadline_returns_at_once_with_the_delay_and_holds_later_posts() {
    let chat = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "30")
                .set_body_string("rate_limited"),
        )
        .mount(&chat)
        .await;
    let handler = Arc::new(NotifyHandler::new(settings(format!("{}/hook", chat.uri()))));
    let notification = Notification::parse(&fixture("conversation_user_created.json")).unwrap();
    let soon = HandlerContext {
        receive_count: 1,
        deadline_ms: unix_ms_now() + 4_000,
    };
    let started = Instant::now();
    let error = handler.handle(&notification, &soon).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(error.is_retryable(), "{error}");
    let delay = error.delay().expect("the error carries the Retry-After");
    assert!(
        delay > Duration::from_secs(29) && delay <= Duration::from_secs(30),
        "{delay:?}"
    );
    // While the Retry-After holds, another notification posts nothing and says how long is left.
    let error = handler.handle(&conversation(2), &soon).await.unwrap_err();
    assert!(error.delay().unwrap() > Duration::from_secs(28), "{error}");
    assert_eq!(chat.received_requests().await.unwrap().len(), 1);

    // The worker carries the delay to the queue, by message id.
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("w.db")).unwrap();
    let worker = Worker::new(
        Arc::new(SqliteStore::new(db.clone())),
        Arc::new(SqliteQueue::new(db, 5)),
        Router::new().route("conversation.*", handler.clone()).unwrap(),
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
        WorkerSettings::default(),
    );
    let result = worker
        .process_batch(
            vec![record("m1", &fixture("conversation_user_created.json"))],
            unix_ms_now() + 6_000,
        )
        .await;
    assert_eq!(result.failures(), ["m1"]);
    assert!(
        result.retry_after("m1").unwrap() > Duration::from_secs(27),
        "{result:?}"
    );
    assert_eq!(chat.received_requests().await.unwrap().len(), 1);
}
