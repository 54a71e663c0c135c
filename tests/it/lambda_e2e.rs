//! Lambda-level end to end: the real `receiver` and `worker` binaries run under the Lambda runtime
//! emulator (`cargo lambda watch`), against SQS, DynamoDB and SSM on the AWS emulator (the receiver reads
//! its client secret from a SecureString parameter, as deployed; the worker keeps the mirror in DynamoDB).
//! Deliveries go through the emulated Function URL; the messages that land in SQS are turned into an SQS
//! event and handed to the worker with `cargo lambda invoke`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    create_mirror_table, create_queue, create_table, fixture, free_port, sign, unique, TEST_SECRET,
};
use intercom_webhooks::aws::dynamodb::DynamoStore;
use intercom_webhooks::aws::mirror::DynamoMirror;
use intercom_webhooks::plumbing::clock::{unix_ms_now, SystemClock};
use intercom_webhooks::processing::idempotency::{
    payload_hash, Claim, ClaimOutcome, IdempotencyKey, IdempotencyStore,
};
use intercom_webhooks::processing::mirror::Mirror;
use intercom_webhooks::receiving::notification::Notification;
use intercom_webhooks::receiving::queue::attr;
use serde_json::{json, Value};

/// Kills the child processes when the test ends, however it ends.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for_port(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "cargo lambda watch did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cargo lambda watch` on `port`, serving only the runtime APIs (the functions are started by the test).
fn lambda_emulator(port: u16) -> Child {
    let child = Command::new("cargo")
        .args([
            "lambda",
            "watch",
            "--only-lambda-apis",
            "-A",
            "127.0.0.1",
            "-P",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cargo lambda is installed (scripts/test puts .venv/bin on PATH)");
    wait_for_port(port);
    child
}

/// Starts one of this package's Lambda binaries against the emulator's runtime API.
fn function(name: &str, binary: &str, port: u16, env: &BTreeMap<&str, String>, log: &Path) -> Child {
    let mut command = Command::new(binary);
    command
        .env("AWS_LAMBDA_FUNCTION_NAME", name)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt/{name}"),
        )
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn().unwrap()
}

fn invoke_worker(port: u16, event: &Value, dir: &Path) -> Value {
    invoke("worker", port, event, dir)
}

/// `cargo lambda invoke FUNCTION` with `event`: the function's answer.
fn invoke(function: &str, port: u16, event: &Value, dir: &Path) -> Value {
    let file = dir.join(format!("event-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, event.to_string()).unwrap();
    let out = Command::new("cargo")
        .args(["lambda", "invoke", function, "--data-file"])
        .arg(&file)
        .args([
            "-A",
            "127.0.0.1",
            "-P",
            &port.to_string(),
            "--output-format",
            "json",
        ])
        .output()
        .expect("cargo lambda is installed (scripts/test puts .venv/bin on PATH)");
    assert!(
        out.status.success(),
        "cargo lambda invoke failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Messages received from SQS as an SQS Lambda event (what the event source mapping would send).
fn sqs_event(messages: &[aws_sdk_sqs::types::Message]) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let attributes: serde_json::Map<String, Value> = m
                .message_attributes
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| {
                    (k, json!({"stringValue": v.string_value, "stringListValues": [], "binaryListValues": [], "dataType": "String"}))
                })
                .collect();
            json!({
                "messageId": m.message_id,
                "receiptHandle": m.receipt_handle,
                "body": m.body,
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1795600800000"},
                "messageAttributes": attributes,
                "md5OfBody": m.md5_of_body,
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:notifications",
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    json!({ "Records": records })
}

#[tokio::test(flavor = "multi_thread")]
async fn receiver_and_worker_under_the_lambda_emulator() {
    let sdk = crate::support::aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let queue = create_queue(&sqs, &unique("lambda-notifications")).await;
    let dlq = create_queue(&sqs, &unique("lambda-dead-letters")).await;
    let table = unique("lambda-idempotency");
    create_table(&dynamo, &table).await;
    let mirror_table = unique("lambda-mirror");
    create_mirror_table(&dynamo, &mirror_table).await;

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut processes = Processes(Vec::new());
    processes.0.push(lambda_emulator(port));
    // The receiver reads its secret from a SecureString parameter, as deployed.
    let secret_parameter = format!("/{}/client-secret", unique("lambda"));
    aws_sdk_ssm::Client::new(&sdk)
        .put_parameter()
        .name(&secret_parameter)
        .value(TEST_SECRET)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let receiver_env = BTreeMap::from([
        ("INTERCOM_CLIENT_SECRET_PARAMETER", secret_parameter),
        ("QUEUE_URL", queue.clone()),
        ("DEAD_LETTER_QUEUE_URL", dlq.clone()),
    ]);
    // The worker publishes to a bus whose one rule delivers new conversations to a queue.
    let (bus, subscriber) = crate::eventbridge::bus_with_rule_to_queue(
        &sdk,
        json!({"source": ["intercom"], "detail-type": ["conversation.user.created"]}),
    )
    .await;
    let worker_env = BTreeMap::from([
        ("DEAD_LETTER_QUEUE_URL", dlq.clone()),
        ("IDEMPOTENCY_TABLE", table.clone()),
        ("MIRROR_TABLE", mirror_table.clone()),
        ("EVENT_BUS_NAME", bus.clone()),
    ]);
    processes.0.push(function(
        "receiver",
        env!("CARGO_BIN_EXE_receiver"),
        port,
        &receiver_env,
        &dir.path().join("receiver.log"),
    ));
    processes.0.push(function(
        "worker",
        env!("CARGO_BIN_EXE_worker"),
        port,
        &worker_env,
        &dir.path().join("worker.log"),
    ));

    // Deliveries through the emulated Function URL.
    let url = format!("http://127.0.0.1:{port}/lambda-url/receiver/");
    let client = reqwest::Client::new();
    let post = |body: Vec<u8>, signature: String| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .header("x-hub-signature", signature)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let created = fixture("conversation_user_created.json");
    let replied = fixture("conversation_user_replied.json");
    let ping = fixture("ping.json");
    let (status, answer) = post(created.clone(), sign(&created)).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("queued")),
        "{answer}"
    );
    assert_eq!(post(replied.clone(), sign(&replied)).await.0, 200);
    assert_eq!(
        post(created.clone(), sign(&created)).await.0,
        200,
        "Intercom delivers twice sometimes"
    );
    assert_eq!(post(ping.clone(), sign(&ping)).await.0, 200);
    let (status, answer) = post(created.clone(), sign(b"tampered")).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("signature_mismatch"))
    );
    let head = client.head(&url).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 200);

    // What landed in SQS: three messages, exact bytes.
    let mut messages = Vec::new();
    let start = Instant::now();
    while messages.len() < 3 && start.elapsed() < Duration::from_secs(10) {
        let out = sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        messages.extend(out.messages.unwrap_or_default());
    }
    assert_eq!(messages.len(), 3);
    for m in &messages {
        let body = m.body.as_deref().unwrap().as_bytes();
        assert!(body == &created[..] || body == &replied[..]);
    }

    // The worker, invoked with those messages plus a malformed one.
    let mut event = sqs_event(&messages);
    event["Records"].as_array_mut().unwrap().push(json!({
        "messageId": "malformed-1", "receiptHandle": "x", "body": "{\"topic\": ", "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:notifications", "awsRegion": "us-east-1"
    }));
    let answer = invoke_worker(port, &event, dir.path());
    let failures = answer["batchItemFailures"].as_array().unwrap().clone();
    // The duplicate in the same batch is either reported for retry (claim in flight) or acknowledged.
    assert!(failures.len() <= 1, "{answer}");

    // The table holds one record per notification and the batch's completion (the worker completes by
    // batch by default), and a claim of either notification now finds it completed.
    let items = crate::support::scan_items(&dynamo, &table).await;
    assert_eq!(items.len(), 3, "{items:?}");
    let mut keys: Vec<String> = items.iter().map(|i| i["pk"].as_s().unwrap().clone()).collect();
    keys.sort();
    assert!(keys[0].starts_with("batch#"), "{keys:?}");
    assert_eq!(
        keys[1..],
        [
            "i6wc9ipe#notif_2c71fff0-65ef-46be-bbfe-dbf637bbff15",
            "i6wc9ipe#notif_3ac27816-d27c-45fd-a65a-bbaf021cf780"
        ]
    );
    let store = DynamoStore::new(dynamo.clone(), &table, std::sync::Arc::new(SystemClock));
    for body in [&created, &replied] {
        let n = Notification::parse(body).unwrap();
        let now = unix_ms_now();
        let claim = Claim {
            key: IdempotencyKey::for_notification(&n.id, n.app_id()),
            payload_hash: payload_hash(&n.data),
            now_ms: now,
            lease_until_ms: now + 30_000,
            expiration: now / 1000 + 3600,
            batch: None,
        };
        assert_eq!(
            store.claim(&claim).await.unwrap(),
            ClaimOutcome::Completed { same_payload: true },
            "{}",
            n.id
        );
    }
    // The mirror holds both conversations, as delivered.
    let mirror = DynamoMirror::new(dynamo.clone(), &mirror_table);
    for (id, body) in [("21321941764", &created), ("21322009097", &replied)] {
        let found = mirror.get("conversation", id).await.unwrap();
        let delivered: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(found.len(), 1, "{id}: {found:?}");
        assert_eq!(found[0].item, delivered["data"]["item"], "{id}");
    }
    // The malformed record went to the DLQ with its reason.
    let dead = crate::support::drain(&sqs, &dlq).await;
    assert_eq!(dead.len(), 1);
    assert!(crate::support::string_attribute(&dead[0], attr::REASON)
        .unwrap()
        .starts_with("malformed: "));

    // Redelivered, the whole batch is acknowledged as duplicates: no failures, no new effects.
    let answer = invoke_worker(port, &sqs_event(&messages), dir.path());
    assert_eq!(answer, json!({"batchItemFailures": []}));
    let log = std::fs::read_to_string(dir.path().join("worker.log")).unwrap();
    let processed = log
        .lines()
        .filter(|l| l.contains("\"outcome\":\"processed\""))
        .count();
    assert_eq!(processed, 2, "each notification handled once:\n{log}");
    // On the bus: the new conversation once (its duplicate was not handled), the reply not matched.
    let published = crate::support::drain(&sqs, &subscriber).await;
    assert_eq!(published.len(), 1, "{published:?}");
    let event: Value = serde_json::from_str(published[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(event["detail-type"], "conversation.user.created");
    assert_eq!(
        event["detail"],
        serde_json::from_slice::<Value>(&created).unwrap()
    );
}

/// The scheduled reconciler: its token from a SecureString parameter, a mock of Intercom's search API,
/// notifications into SQS, watermarks in the idempotency table; a second run continues from them.
#[tokio::test(flavor = "multi_thread")]
async fn the_scheduled_reconciler_under_the_lambda_emulator() {
    use crate::support::intercom_api::{IntercomApi, Kind, Settings};
    let sdk = crate::support::aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let queue = create_queue(&sqs, &unique("reconciled")).await;
    let table = unique("reconciler-idempotency");
    create_table(&dynamo, &table).await;
    let token_parameter = format!("/{}/access-token", unique("lambda"));
    aws_sdk_ssm::Client::new(&sdk)
        .put_parameter()
        .name(&token_parameter)
        .value(crate::support::events_api::TOKEN)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let api = IntercomApi::start(Settings::default()).await;
    let now = intercom_webhooks::plumbing::clock::unix_ms_now() / 1000;
    for (kind, id, ago) in [
        (Kind::Conversation, "c1", 3600),
        (Kind::Conversation, "c2", 1800),
        (Kind::Contact, "k1", 1200),
        (Kind::Ticket, "t1", 900),
        // Before the first pass's look-back (2 h): not reconciled.
        (Kind::Ticket, "t-old", 3 * 3600),
    ] {
        api.put(kind, json!({"id": id, "updated_at": now - ago}));
    }

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut processes = Processes(vec![lambda_emulator(port)]);
    let env = BTreeMap::from([
        ("INTERCOM_ACCESS_TOKEN_PARAMETER", token_parameter),
        ("INTERCOM_BASE_URL", api.uri()),
        ("QUEUE_URL", queue.clone()),
        ("IDEMPOTENCY_TABLE", table.clone()),
        ("RECONCILE_FIRST_LOOKBACK_HOURS", "2".to_owned()),
    ]);
    processes.0.push(function(
        "reconciler",
        env!("CARGO_BIN_EXE_reconciler"),
        port,
        &env,
        &dir.path().join("reconciler.log"),
    ));
    let scheduled: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("events/reconciler-scheduled.json"),
        )
        .unwrap(),
    )
    .unwrap();

    let report = invoke("reconciler", port, &scheduled, dir.path());
    assert_eq!(report["app_id"], "mockapp1", "{report}");
    let enqueued = crate::support::reconcile_total(&report, "enqueued");
    assert_eq!(enqueued, 4, "{report}");
    let messages = crate::support::drain(&sqs, &queue).await;
    let mut topics: Vec<String> = messages
        .iter()
        .map(|m| crate::support::string_attribute(m, attr::TOPIC).unwrap())
        .collect();
    topics.sort();
    assert_eq!(
        topics,
        [
            "contact.reconciled",
            "conversation.reconciled",
            "conversation.reconciled",
            "ticket.reconciled"
        ]
    );
    let watermarks: Vec<String> = crate::support::scan_items(&dynamo, &table)
        .await
        .iter()
        .filter_map(|item| item["pk"].as_s().ok().cloned())
        .filter(|pk| pk.starts_with("watermark#"))
        .collect();
    assert_eq!(watermarks.len(), 3, "{watermarks:?}");

    // The next run starts at the watermarks (less the 10-minute overlap): nothing changed since.
    let again = invoke("reconciler", port, &scheduled, dir.path());
    let enqueued = crate::support::reconcile_total(&again, "enqueued");
    assert_eq!(enqueued, 0, "{again}");
    assert!(crate::support::drain(&sqs, &queue).await.is_empty());
    drop(processes);
}
