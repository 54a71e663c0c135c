//! `intercom-webhooks events` run as a child process against a mock Intercom over HTTP.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::events_api::{WindowLimiter, TOKEN};

/// Runs the command with only the given token in the environment (none of the INTERCOM_* variables of
/// the calling shell).
async fn run(args: &[&str], token: Option<&str>) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let token = token.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_intercom-webhooks"));
        command
            .args(&args)
            .env_remove("INTERCOM_ACCESS_TOKEN")
            .env_remove("INTERCOM_REGION")
            .env_remove("INTERCOM_VERSION");
        if let Some(token) = token {
            command.env("INTERCOM_ACCESS_TOKEN", token);
        }
        command.output().expect("the binary runs")
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn bodies(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

fn write(dir: &Path, name: &str, lines: &[String]) -> String {
    let file = dir.join(name);
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    file.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_sends_one_event_and_prints_the_result() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/events"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("intercom-version", "2.15"))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&server)
        .await;
    let uri = server.uri();
    let output = run(
        &[
            "events",
            "track",
            "--name",
            "upgraded-plan",
            "--user-id",
            "314159",
            "--meta",
            "plan=pro",
            "--meta",
            "seats=3",
            "--meta",
            "zip=02134",
            "--meta",
            r#"price={"amount":34999,"currency":"eur"}"#,
            "--created-at",
            "1700000000",
            "--base-url",
            &uri,
        ],
        Some(TOKEN),
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("accepted after 1 attempt: "),
        "{}",
        stdout(&output)
    );
    assert_eq!(
        bodies(&server).await,
        [json!({
            "event_name": "upgraded-plan",
            "created_at": 1_700_000_000,
            "user_id": "314159",
            "metadata": {
                "plan": "pro",
                "seats": 3,
                "zip": "02134",
                "price": {"amount": 34999, "currency": "eur"}
            }
        })]
    );
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_reports_an_unknown_contact() {
    let server = MockServer::start().await;
    let body = json!({"type": "error.list", "errors": [{"code": "not_found", "message": "User Not Found"}]});
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404).set_body_json(body))
        .expect(1)
        .mount(&server)
        .await;
    let uri = server.uri();
    let output = run(
        &[
            "events",
            "track",
            "--name",
            "a",
            "--email",
            "nobody@example.com",
            "--base-url",
            &uri,
        ],
        Some(TOKEN),
    )
    .await;
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("contact not found (404)"), "{err}");
    assert!(err.contains("email=nobody@example.com"), "{err}");
    assert!(!err.contains(TOKEN), "{err}");
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_refuses_an_invalid_event_before_sending() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .expect(0)
        .mount(&server)
        .await;
    let uri = server.uri();
    let output = run(
        &[
            "events",
            "track",
            "--name",
            "paid",
            "--id",
            "c1",
            "--meta",
            "paid_date=yesterday",
            "--base-url",
            &uri,
        ],
        Some(TOKEN),
    )
    .await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("metadata.paid_date: keys ending in _date"),
        "{}",
        stderr(&output)
    );

    // Two identifiers are refused by the argument parser already.
    let output = run(
        &[
            "events",
            "track",
            "--name",
            "a",
            "--id",
            "c1",
            "--email",
            "a@example.com",
            "--base-url",
            &uri,
        ],
        Some(TOKEN),
    )
    .await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("cannot be used with"),
        "{}",
        stderr(&output)
    );

    // And nothing is sent without a token.
    let output = run(
        &["events", "track", "--name", "a", "--id", "c1", "--base-url", &uri],
        None,
    )
    .await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("INTERCOM_ACCESS_TOKEN is not set"),
        "{}",
        stderr(&output)
    );
    assert!(server.received_requests().await.unwrap().is_empty());
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_reports_bad_lines_by_number_and_sends_nothing() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .expect(0)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "events.jsonl",
        &[
            r#"{"event_name":"a","user_id":"1","created_at":1700000000}"#.into(),
            r#"{"event_name":"a","created_at":1700000000}"#.into(),
            String::new(),
            r#"{"event_name":"a","user_id":"2","created_at":1700000000"#.into(),
            r#"{"event_name":"a","user_id":"3","created_at":1700000000,"metadata":{"tags":["x"]}}"#.into(),
            r#"{"event_name":"a","user_id":"4","created_at":1700000000}"#.into(),
        ],
    );
    let uri = server.uri();
    let output = run(&["events", "bulk", &file, "--base-url", &uri], Some(TOKEN)).await;
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("line 2: no contact: give exactly one of user_id, id or email"),
        "{err}"
    );
    assert!(err.contains("line 4: not JSON"), "{err}");
    assert!(
        err.contains("line 5: metadata.tags: arrays are not accepted"),
        "{err}"
    );
    assert!(
        !err.contains("line 1:") && !err.contains("line 3:") && !err.contains("line 6:"),
        "{err}"
    );
    assert!(
        err.contains("3 of 5 events are invalid; nothing was sent"),
        "{err}"
    );
    assert!(server.received_requests().await.unwrap().is_empty());
    server.verify().await;
}

/// A mock that accepts every event and expects none.
async fn server_expecting_nothing() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .expect(0)
        .mount(&server)
        .await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_refuses_a_line_without_created_at_and_sends_nothing() {
    let server = server_expecting_nothing().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "events.jsonl",
        &[
            r#"{"event_name":"ordered","user_id":"1","created_at":1700000000}"#.into(),
            r#"{"event_name":"ordered","user_id":"1"}"#.into(),
            r#"{"event_name":"ordered","user_id":"1","created_at":null}"#.into(),
            r#"{"event_name":"ordered","user_id":"2","created_at":1700000001}"#.into(),
        ],
    );
    let uri = server.uri();
    for dry_run in [false, true] {
        let mut args = vec!["events", "bulk", &file, "--base-url", &uri];
        if dry_run {
            args.push("--dry-run");
        }
        let output = run(&args, Some(TOKEN)).await;
        assert_eq!(output.status.code(), Some(1), "dry run {dry_run}");
        let err = stderr(&output);
        for line in [2, 3] {
            assert!(
                err.contains(&format!(
                    "line {line}: no created_at: every event of a bulk file needs its time, in Unix seconds"
                )),
                "{err}"
            );
        }
        let reported: Vec<&str> = err
            .lines()
            .filter_map(|l| l.strip_prefix("line ")?.split(':').next())
            .collect();
        assert_eq!(reported, ["2", "3"], "{err}");
        assert!(
            err.contains("2 of 4 events are invalid; nothing was sent"),
            "{err}"
        );
        assert_eq!(stdout(&output), "", "dry run {dry_run}");
    }
    assert!(server.received_requests().await.unwrap().is_empty());
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_refuses_the_same_event_twice_and_sends_nothing() {
    let server = server_expecting_nothing().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "events.jsonl",
        &[
            r#"{"event_name":"ordered","user_id":"42","created_at":1700000000,"metadata":{"order":"A-1"}}"#
                .into(),
            // Differs in one of contact, name and time: all distinct events.
            r#"{"event_name":"ordered","user_id":"42","created_at":1700000001}"#.into(),
            r#"{"event_name":"ordered","user_id":"43","created_at":1700000000}"#.into(),
            r#"{"event_name":"viewed","user_id":"42","created_at":1700000000}"#.into(),
            r#"{"event_name":"ordered","email":"u42@example.com","created_at":1700000000}"#.into(),
            String::new(),
            // Same contact, name and time as line 1 (other metadata): Intercom would ignore it.
            r#"{"event_name":"ordered","user_id":"42","created_at":1700000000,"metadata":{"order":"A-2"}}"#
                .into(),
            r#"{"event_name":"viewed","user_id":"42","created_at":1700000000}"#.into(),
        ],
    );
    let uri = server.uri();
    let output = run(&["events", "bulk", &file, "--base-url", &uri], Some(TOKEN)).await;
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains(
            "line 7: the same contact, event_name and created_at as line 1: Intercom would keep only \
             one of them; give each event its own created_at"
        ),
        "{err}"
    );
    assert!(
        err.contains("line 8: the same contact, event_name and created_at as line 4:"),
        "{err}"
    );
    let reported: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("line ")?.split(':').next())
        .collect();
    assert_eq!(reported, ["7", "8"], "{err}");
    assert!(
        err.contains("2 of 7 events are invalid; nothing was sent"),
        "{err}"
    );
    assert_eq!(stdout(&output), "");
    assert!(server.received_requests().await.unwrap().is_empty());
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_dry_run_checks_and_sends_nothing() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .expect(0)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..3)
        .map(|i| format!(r#"{{"event_name":"a","user_id":"{i}","created_at":1700000000}}"#))
        .collect();
    let file = write(dir.path(), "events.jsonl", &lines);
    let uri = server.uri();
    // No token needed for a dry run.
    let output = run(&["events", "bulk", &file, "--dry-run", "--base-url", &uri], None).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "3 events valid; dry run, nothing sent");
    assert!(server.received_requests().await.unwrap().is_empty());
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_writes_failed_events_that_can_be_sent_again() {
    // Unknown contacts answer 404, `rejected-` ones 422; the rest are accepted.
    let limiter = WindowLimiter::new(Duration::from_secs(10), 1000, Duration::ZERO).with_script(Arc::new(
        |user_id: &str, _| {
            if user_id.starts_with("missing-") {
                404
            } else if user_id.starts_with("rejected-") {
                422
            } else {
                202
            }
        },
    ));
    let server = limiter.start().await;
    let dir = tempfile::tempdir().unwrap();
    let event = |id: &str, at: u64| {
        json!({"event_name": "imported", "created_at": at, "user_id": id, "metadata": {"batch": 7}})
            .to_string()
    };
    let file = write(
        dir.path(),
        "events.jsonl",
        &[
            event("ok-1", 1_700_000_001),
            event("missing-1", 1_700_000_002),
            event("ok-2", 1_700_000_003),
            event("rejected-1", 1_700_000_004),
        ],
    );
    let failed = dir.path().join("failed.jsonl");
    let failed_path = failed.to_str().unwrap();
    let uri = server.uri();
    let output = run(
        &[
            "events",
            "bulk",
            &file,
            "--failed-out",
            failed_path,
            "--concurrency",
            "2",
            "--base-url",
            &uri,
        ],
        Some(TOKEN),
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.starts_with("sent 2 of 4 events"), "{out}");
    assert!(out.contains("failed 2 (contact_not_found 1, invalid 1)"), "{out}");
    let err = stderr(&output);
    assert!(err.contains("line 2: contact not found (404)"), "{err}");
    assert!(err.contains("line 4: invalid event (422)"), "{err}");
    {
        let log = limiter.log.lock().unwrap();
        assert_eq!(log.requests.len(), 4, "404 and 422 are not retried");
        assert_eq!(log.accepted().len(), 2);
    }

    // The failed-events file: the events as sent, each with its error.
    let text = std::fs::read_to_string(&failed).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["user_id"], "missing-1");
    assert_eq!(lines[0]["created_at"], 1_700_000_002);
    assert_eq!(lines[0]["metadata"], json!({"batch": 7}));
    assert_eq!(lines[0]["error"]["kind"], "contact_not_found");
    assert_eq!(lines[0]["error"]["status"], 404);
    assert_eq!(lines[0]["error"]["line"], 2);
    assert_eq!(lines[1]["user_id"], "rejected-1");
    assert_eq!(lines[1]["error"]["kind"], "invalid");
    assert_eq!(lines[1]["error"]["line"], 4);

    // Fed back as it is, to an API that now accepts them: the same events, same created_at.
    let retry_server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/events"))
        .respond_with(ResponseTemplate::new(202))
        .expect(2)
        .mount(&retry_server)
        .await;
    let retry_uri = retry_server.uri();
    let again = dir.path().join("failed-again.jsonl");
    let output = run(
        &[
            "events",
            "bulk",
            failed_path,
            "--failed-out",
            again.to_str().unwrap(),
            "--base-url",
            &retry_uri,
        ],
        Some(TOKEN),
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("sent 2 of 2 events"),
        "{}",
        stdout(&output)
    );
    let mut resent = bodies(&retry_server).await;
    resent.sort_by_key(|b| b["user_id"].as_str().unwrap().to_string());
    let mut expected: Vec<Value> = lines
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l.as_object_mut().unwrap().remove("error");
            l
        })
        .collect();
    expected.sort_by_key(|b| b["user_id"].as_str().unwrap().to_string());
    assert_eq!(resent, expected);
    assert_eq!(
        std::fs::read_to_string(&again).unwrap(),
        "",
        "nothing failed the second time"
    );
    retry_server.verify().await;
}
