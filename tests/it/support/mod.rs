//! Shared helpers for the integration tests: fixtures, a recording queue, mocks of Intercom's APIs, and
//! access to the AWS emulator that the test command starts.

pub mod events_api;
pub mod intercom_api;
pub mod moto_worker;
pub mod scripted;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use intercom_webhooks::receiving::queue::{DeadLetterQueue, Message, Queue, QueueError};
use intercom_webhooks::receiving::signature::ClientSecret;

/// The secret the sample events and tests sign with. Never use it for a real app.
pub const TEST_SECRET: &str = "test-client-secret";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the captured notifications are.
pub fn fixtures_dir() -> PathBuf {
    root().join("events/notifications")
}

pub fn fixture_path(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap()
}

/// A port nothing listens on at the moment, on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every captured notification: (file name, exact bytes), sorted by name.
pub fn fixtures() -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<_> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    all.sort();
    all
}

pub fn sign(body: &[u8]) -> String {
    ClientSecret::new(TEST_SECRET).unwrap().sign(body)
}

/// A queue that records what it is given, and can be told to fail.
#[derive(Default)]
pub struct RecordingQueue {
    pub sent: Mutex<Vec<Message>>,
    pub dead: Mutex<Vec<(Message, String)>>,
    pub fail_send: Mutex<Option<QueueError>>,
    pub fail_dead_letter: Mutex<Option<QueueError>>,
}

impl RecordingQueue {
    pub fn sent(&self) -> Vec<Message> {
        self.sent.lock().unwrap().clone()
    }
    pub fn dead(&self) -> Vec<(Message, String)> {
        self.dead.lock().unwrap().clone()
    }
}

#[async_trait]
impl Queue for RecordingQueue {
    async fn send(&self, message: &Message) -> Result<(), QueueError> {
        if let Some(e) = self.fail_send.lock().unwrap().clone() {
            return Err(e);
        }
        self.sent.lock().unwrap().push(message.clone());
        Ok(())
    }
}

#[async_trait]
impl DeadLetterQueue for RecordingQueue {
    async fn dead_letter(&self, message: &Message, reason: &str) -> Result<(), QueueError> {
        if let Some(e) = self.fail_dead_letter.lock().unwrap().clone() {
            return Err(e);
        }
        self.dead
            .lock()
            .unwrap()
            .push((message.clone(), reason.to_string()));
        Ok(())
    }
}

/// A Lambda Function URL event (payload format 2.0), as AWS delivers it.
pub fn function_url_event(
    method: &str,
    path: &str,
    headers: &BTreeMap<String, String>,
    body: Option<&[u8]>,
    base64_body: bool,
) -> serde_json::Value {
    use base64::Engine as _;
    let mut all_headers = serde_json::Map::new();
    all_headers.insert(
        "host".into(),
        "abcdefghijklmnopqrstuvwxyz012345.lambda-url.us-east-1.on.aws".into(),
    );
    all_headers.insert("user-agent".into(), "Intercom-Webhooks".into());
    all_headers.insert("x-forwarded-proto".into(), "https".into());
    for (k, v) in headers {
        all_headers.insert(k.to_lowercase(), v.clone().into());
    }
    let body_value = match body {
        None => serde_json::Value::Null,
        Some(b) if base64_body => base64::engine::general_purpose::STANDARD.encode(b).into(),
        Some(b) => String::from_utf8(b.to_vec()).expect("a text body").into(),
    };
    let mut event = serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": all_headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "abcdefghijklmnopqrstuvwxyz012345",
            "domainName": "abcdefghijklmnopqrstuvwxyz012345.lambda-url.us-east-1.on.aws",
            "domainPrefix": "abcdefghijklmnopqrstuvwxyz012345",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "34.231.68.152",
                "userAgent": "Intercom-Webhooks"
            },
            "requestId": "3f6b4c1e-0c1d-4a6e-9d1a-2b7c8e9f0a1b",
            "routeKey": "$default",
            "stage": "$default",
            "time": "29/Nov/2026:10:00:00 +0000",
            "timeEpoch": 1795600800000u64
        },
        "isBase64Encoded": base64_body
    });
    if !body_value.is_null() {
        event["body"] = body_value;
    }
    event
}

/// The AWS emulator's endpoint, set by the test command. Tests that need it fail with a clear message
/// when it is missing rather than pass without testing anything.
pub fn aws_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL")
        .expect("AWS_ENDPOINT_URL is not set: run the tests with ./scripts/test, which starts moto_server")
}

pub async fn aws_config() -> aws_config::SdkConfig {
    aws_endpoint();
    intercom_webhooks::aws::load_config(intercom_webhooks::aws::CallBudget::WORKER).await
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Creates a queue in the emulator and returns its URL.
pub async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    sqs.create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap()
}

/// Creates a queue whose redrive policy moves a message to a new dead-letter queue after
/// `max_receive_count` receives. Returns (queue URL, dead-letter queue URL).
pub async fn create_queue_with_dlq(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    max_receive_count: u32,
) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let dlq = create_queue(sqs, &unique(&format!("{name}-dlq"))).await;
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let policy = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max_receive_count});
    let queue = sqs
        .create_queue()
        .queue_name(unique(name))
        .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    (queue, dlq)
}

/// Receives every message currently in `url` (waiting briefly), with all attributes, and deletes them.
pub async fn drain(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let mut all = Vec::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .wait_time_seconds(if all.is_empty() { 1 } else { 0 })
            .send()
            .await
            .unwrap();
        let batch = out.messages.unwrap_or_default();
        if batch.is_empty() {
            return all;
        }
        for m in &batch {
            sqs.delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle.clone().unwrap())
                .send()
                .await
                .unwrap();
        }
        all.extend(batch);
    }
}

pub fn string_attribute(m: &aws_sdk_sqs::types::Message, name: &str) -> Option<String> {
    m.message_attributes.as_ref()?.get(name)?.string_value.clone()
}

/// Every item of a (small) table on the emulator: one page of `Scan`, which moto does not split below 1 MB.
pub async fn scan_items(
    dynamo: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Vec<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
    dynamo
        .scan()
        .table_name(table)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default()
}

/// Creates an idempotency table in the emulator shaped like the SAM template's.
pub async fn create_table(dynamo: &aws_sdk_dynamodb::Client, name: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    dynamo
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

/// Creates a mirror table in the emulator shaped like the SAM template's `MirrorTable` by default (its
/// shape is checked by scripts/check-template.py): key `pk` + `app_id`, no index.
pub async fn create_mirror_table(dynamo: &aws_sdk_dynamodb::Client, name: &str) {
    intercom_webhooks::aws::mirror::DynamoMirror::create_table(dynamo, name, false)
        .await
        .unwrap();
}

/// The same with `MirrorIndex=true`: the keys-only index `by_type` on `type` + `version_ms` too.
pub async fn create_indexed_mirror_table(dynamo: &aws_sdk_dynamodb::Client, name: &str) {
    intercom_webhooks::aws::mirror::DynamoMirror::create_table(dynamo, name, true)
        .await
        .unwrap();
}

/// A notification body like the fixtures, with a chosen id, topic and item.
pub fn notification_body(id: &str, topic: &str, item: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "type": "notification_event",
        "app_id": "testapp",
        "data": {"type": "notification_event_data", "item": item},
        "id": id,
        "topic": topic,
        "delivery_status": "pending",
        "delivery_attempts": 1,
        "delivered_at": 0,
        "first_sent_at": 1553290198,
        "created_at": 1553290198
    }))
    .unwrap()
}

/// A worker record for `body`, as the queue would hand it out.
pub fn record(message_id: &str, body: &[u8]) -> intercom_webhooks::processing::worker::Record {
    let envelope = intercom_webhooks::receiving::notification::Envelope::parse(body);
    let message = match envelope {
        Ok(e) => Message::for_notification(body, &e),
        Err(_) => Message::from_bytes(body),
    };
    intercom_webhooks::processing::worker::Record {
        message_id: message_id.to_owned(),
        message,
        receive_count: 1,
    }
}

/// The sum of `field` over the types of a reconcile report (`reconcile --json`, the reconciler's answer).
pub fn reconcile_total(report: &serde_json::Value, field: &str) -> u64 {
    report["types"]
        .as_array()
        .expect("a report lists its types")
        .iter()
        .map(|t| t[field].as_u64().expect("a count"))
        .sum()
}

/// Records the operation (`X-Amz-Target`) of every request a client sends.
#[derive(Debug, Clone, Default)]
pub struct Operations(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl aws_smithy_runtime_api::client::interceptors::Intercept for Operations {
    fn name(&self) -> &'static str {
        "operations"
    }

    fn read_before_transmit(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<
            '_,
        >,
        _: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let target = context.request().headers().get("x-amz-target").unwrap_or("");
        let operation = target.rsplit('.').next().unwrap_or_default().to_owned();
        self.0.lock().unwrap().push(operation);
        Ok(())
    }
}

impl Operations {
    /// The operations sent since the last call.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// A DynamoDB client whose every request's operation `operations` records.
pub fn observed_dynamo(sdk: &aws_config::SdkConfig, operations: &Operations) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(sdk)
            .interceptor(operations.clone())
            .build(),
    )
}
