//! The bad-input battery: every kind of malformed, unauthenticated or odd request, through the real HTTP
//! application storing into a real SQLite queue. Each case checks the status, that nothing
//! unauthenticated was stored, that authentic-but-bad bodies went to the dead-letter table, and that the
//! application still answers afterwards.

use std::sync::Arc;

use crate::support::{fixture, sign, TEST_SECRET};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use intercom_webhooks::local::{Db, QueueStats, SqliteQueue};
use intercom_webhooks::receiving::intake::{Intake, DEFAULT_MAX_BODY_BYTES};
use intercom_webhooks::receiving::signature::ClientSecrets;
use tower::ServiceExt;

/// What a case should leave behind.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stored {
    Nothing,
    Queued,
    DeadLettered,
}

struct Case {
    name: &'static str,
    request: Request<Body>,
    status: StatusCode,
    stored: Stored,
}

fn post(body: Vec<u8>, headers: &[(&str, String)]) -> Request<Body> {
    let mut r = Request::post("/webhooks/intercom");
    for (k, v) in headers {
        r = r.header(*k, v.as_str());
    }
    r.body(Body::from(body)).unwrap()
}

fn signed(body: Vec<u8>) -> Request<Body> {
    let s = sign(&body);
    post(
        body,
        &[
            ("content-type", "application/json".into()),
            ("x-hub-signature", s),
        ],
    )
}

fn cases() -> Vec<Case> {
    let good = fixture("conversation_user_created.json");
    let sig = sign(&good);
    let hex = sig.trim_start_matches("sha1=").to_string();
    let ping = fixture("ping.json");
    let mut ping_with_id: serde_json::Value = serde_json::from_slice(&ping).unwrap();
    ping_with_id["id"] = "notif_ping".into();
    let mut unknown: serde_json::Value = serde_json::from_slice(&good).unwrap();
    unknown["topic"] = "brand.new.topic".into();
    unknown["id"] = "notif_unknown_topic".into();
    let mut huge: serde_json::Value = serde_json::from_slice(&good).unwrap();
    huge["id"] = "notif_huge".into();
    huge["data"]["item"]["padding"] = "x".repeat(900_000).into();
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let mut compact: serde_json::Value = serde_json::from_slice(&good).unwrap();
    compact["id"] = "notif_compact".into();
    let compact = serde_json::to_vec(&compact).unwrap();
    let mut one_more = good.clone();
    one_more.push(b' ');
    let one_less = good[..good.len() - 1].to_vec();
    // Stored as received: escaping is the job of each sink (chat, logs, pages), never of the intake.
    let mut markup: serde_json::Value = serde_json::from_slice(&good).unwrap();
    markup["id"] = "notif_markup".into();
    markup["data"]["item"]["source"]["body"] =
        "<p><!channel> <https://evil.example|Reset password> \u{1b}[31mred</p>".into();
    markup["data"]["item"]["source"]["author"]["name"] = "<!everyone> <script>alert(1)</script>".into();
    let markup = serde_json::to_vec_pretty(&markup).unwrap();
    let with = |name, request, status, stored| Case {
        name,
        request,
        status,
        stored,
    };
    vec![
        with(
            "missing signature",
            post(good.clone(), &[]),
            StatusCode::UNAUTHORIZED,
            Stored::Nothing,
        ),
        with(
            "empty signature",
            post(good.clone(), &[("x-hub-signature", String::new())]),
            StatusCode::UNAUTHORIZED,
            Stored::Nothing,
        ),
        with(
            "duplicated signature header",
            post(
                good.clone(),
                &[("x-hub-signature", sig.clone()), ("x-hub-signature", sig.clone())],
            ),
            StatusCode::UNAUTHORIZED,
            Stored::Nothing,
        ),
        with(
            "sha256= prefix",
            post(good.clone(), &[("x-hub-signature", format!("sha256={hex}"))]),
            StatusCode::UNAUTHORIZED,
            Stored::Nothing,
        ),
        with(
            "no prefix",
            post(good.clone(), &[("x-hub-signature", hex.clone())]),
            StatusCode::UNAUTHORIZED,
            Stored::Nothing,
        ),
        with(
            "odd length",
            post(
                good.clone(),
                &[("x-hub-signature", format!("sha1={}", &hex[1..]))],
            ),
            StatusCode::UNAUTHORIZED,
            Stored::Nothing,
        ),
        with(
            "non-hex",
            post(
                good.clone(),
                &[("x-hub-signature", format!("sha1=g{}", &hex[1..]))],
            ),
            StatusCode::UNAUTHORIZED,
            Stored::Nothing,
        ),
        with(
            "too long digest",
            post(good.clone(), &[("x-hub-signature", format!("{sig}00"))]),
            StatusCode::UNAUTHORIZED,
            Stored::Nothing,
        ),
        with(
            "correct MAC for a different body",
            post(good.clone(), &[("x-hub-signature", sign(b"{}"))]),
            StatusCode::UNAUTHORIZED,
            Stored::Nothing,
        ),
        with(
            "signed with another secret",
            post(
                good.clone(),
                &[(
                    "x-hub-signature",
                    intercom_webhooks::receiving::signature::ClientSecret::new("other")
                        .unwrap()
                        .sign(&good),
                )],
            ),
            StatusCode::UNAUTHORIZED,
            Stored::Nothing,
        ),
        with(
            "one byte added",
            post(one_more, &[("x-hub-signature", sig.clone())]),
            StatusCode::UNAUTHORIZED,
            Stored::Nothing,
        ),
        with(
            "one byte removed",
            post(one_less, &[("x-hub-signature", sig.clone())]),
            StatusCode::UNAUTHORIZED,
            Stored::Nothing,
        ),
        with(
            "upper-case hex",
            post(
                good.clone(),
                &[("x-hub-signature", format!("sha1={}", hex.to_uppercase()))],
            ),
            StatusCode::OK,
            Stored::Queued,
        ),
        with(
            "surrounding whitespace",
            post(good.clone(), &[("x-hub-signature", format!("  {sig}\t"))]),
            StatusCode::OK,
            Stored::Queued,
        ),
        with(
            "upper-case scheme",
            post(good.clone(), &[("x-hub-signature", sig.replace("sha1", "SHA1"))]),
            StatusCode::OK,
            Stored::Queued,
        ),
        with(
            "empty body, signed",
            signed(Vec::new()),
            StatusCode::OK,
            Stored::DeadLettered,
        ),
        with(
            "empty body, unsigned",
            post(Vec::new(), &[]),
            StatusCode::UNAUTHORIZED,
            Stored::Nothing,
        ),
        with(
            "non-UTF-8 body, signed",
            signed(vec![0xff, 0xfe, 0x00, 0x80]),
            StatusCode::OK,
            Stored::DeadLettered,
        ),
        with(
            "2 MiB body",
            signed(vec![b'a'; 2 * 1024 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            Stored::Nothing,
        ),
        with(
            "2 MiB body, unsigned",
            post(vec![b'a'; 2 * 1024 * 1024], &[]),
            StatusCode::PAYLOAD_TOO_LARGE,
            Stored::Nothing,
        ),
        with(
            "signed invalid JSON",
            signed(b"{\"topic\": ".to_vec()),
            StatusCode::OK,
            Stored::DeadLettered,
        ),
        with(
            "signed JSON array",
            signed(b"[1, 2, 3]".to_vec()),
            StatusCode::OK,
            Stored::DeadLettered,
        ),
        with(
            "signed JSON without topic",
            signed(br#"{"id": "notif_1", "data": {}}"#.to_vec()),
            StatusCode::OK,
            Stored::DeadLettered,
        ),
        with(
            "signed JSON without id",
            signed(br#"{"topic": "contact.created"}"#.to_vec()),
            StatusCode::OK,
            Stored::DeadLettered,
        ),
        with(
            "signed JSON string",
            signed(b"\"notification\"".to_vec()),
            StatusCode::OK,
            Stored::DeadLettered,
        ),
        with(
            "deeply nested JSON",
            signed(deep.into_bytes()),
            StatusCode::OK,
            Stored::DeadLettered,
        ),
        with(
            "ping without id",
            signed(ping.clone()),
            StatusCode::OK,
            Stored::Nothing,
        ),
        with(
            "ping with id",
            signed(serde_json::to_vec(&ping_with_id).unwrap()),
            StatusCode::OK,
            Stored::Nothing,
        ),
        with(
            "unknown topic",
            signed(serde_json::to_vec(&unknown).unwrap()),
            StatusCode::OK,
            Stored::Queued,
        ),
        with(
            "huge data.item",
            signed(serde_json::to_vec(&huge).unwrap()),
            StatusCode::OK,
            Stored::Queued,
        ),
        with("compact JSON", signed(compact), StatusCode::OK, Stored::Queued),
        with(
            "wrong content type",
            post(
                good.clone(),
                &[
                    ("content-type", "text/plain".into()),
                    ("x-hub-signature", sig.clone()),
                ],
            ),
            StatusCode::OK,
            Stored::Queued,
        ),
        with(
            "GET",
            Request::get("/webhooks/intercom").body(Body::empty()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            Stored::Nothing,
        ),
        with(
            "PUT",
            Request::put("/")
                .header("x-hub-signature", sig.clone())
                .body(Body::from(good.clone()))
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            Stored::Nothing,
        ),
        with(
            "DELETE",
            Request::delete("/").body(Body::empty()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            Stored::Nothing,
        ),
        with(
            "unknown path",
            Request::post("/admin")
                .header("x-hub-signature", sig.clone())
                .body(Body::from(good.clone()))
                .unwrap(),
            StatusCode::NOT_FOUND,
            Stored::Nothing,
        ),
        with(
            "HEAD",
            Request::head("/").body(Body::empty()).unwrap(),
            StatusCode::OK,
            Stored::Nothing,
        ),
        with(
            "signed body that stops half way",
            stalled_body(&good, good.len() / 2),
            StatusCode::REQUEST_TIMEOUT,
            Stored::Nothing,
        ),
        with(
            "signed body that never starts",
            stalled_body(&good, 0),
            StatusCode::REQUEST_TIMEOUT,
            Stored::Nothing,
        ),
        with(
            "authentic notification full of chat markup and terminal escapes",
            signed(markup.clone()),
            StatusCode::OK,
            Stored::Queued,
        ),
    ]
}

/// A signed request whose body sends its first `sent` bytes and then nothing, never ending.
fn stalled_body(body: &[u8], sent: usize) -> Request<Body> {
    use futures::StreamExt;
    let first = bytes::Bytes::copy_from_slice(&body[..sent]);
    let stream = futures::stream::iter([Ok::<_, std::io::Error>(first)]).chain(futures::stream::pending());
    Request::post("/webhooks/intercom")
        .header("x-hub-signature", sign(body))
        .header("content-length", body.len().to_string())
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn stats(queue: &SqliteQueue) -> QueueStats {
    queue.stats().await.unwrap()
}

#[tokio::test]
async fn the_bad_input_battery() {
    let dir = tempfile::tempdir().unwrap();
    let queue = SqliteQueue::new(Db::open(dir.path().join("battery.db")).unwrap(), 5);
    let app: Router = Intake::new(
        ClientSecrets::parse(TEST_SECRET).unwrap(),
        Arc::new(queue.clone()),
        DEFAULT_MAX_BODY_BYTES,
    )
    .with_body_read_timeout(std::time::Duration::from_millis(300))
    .router();
    let cases = cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let good = fixture("contact_deleted.json");
    for case in cases {
        let before = stats(&queue).await;
        let response = app.clone().oneshot(case.request).await.unwrap();
        assert_eq!(response.status(), case.status, "{}", case.name);
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        if case.name != "HEAD" {
            assert_eq!(content_type.as_deref(), Some("application/json"), "{}", case.name);
            serde_json::from_slice::<serde_json::Value>(&body)
                .unwrap_or_else(|_| panic!("{}: not JSON", case.name));
        }
        let after = stats(&queue).await;
        let stored = match (
            after.queued - before.queued,
            after.dead_letters - before.dead_letters,
        ) {
            (0, 0) => Stored::Nothing,
            (1, 0) => Stored::Queued,
            (0, 1) => Stored::DeadLettered,
            other => panic!("{}: stored {other:?}", case.name),
        };
        assert_eq!(stored, case.stored, "{}", case.name);
        // And the application still answers a good delivery.
        let ok = app.clone().oneshot(signed(good.clone())).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK, "after {}", case.name);
    }
}
