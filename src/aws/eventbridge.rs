//! The `eventbridge` handler: each processed notification becomes one entry on an EventBridge bus
//! (`Source` configurable, `DetailType` the topic, `Detail` the notification, `Time` its `created_at`),
//! so that any rule, queue or Step Function can subscribe with a pattern instead of code in this crate.
//!
//! Entries of the records processed together (a worker batch) go out together: a batcher collects what
//! arrives within a few milliseconds, up to 10 entries per `PutEvents`, and hands each record its own
//! entry's result, so that a failed entry fails only its record (throttling and internal errors
//! retryable, the rest permanent). An entry over EventBridge's limit is trimmed by the rule in
//! [`fit`], marked `"truncated": true` and counted, never dropped.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_eventbridge::primitives::DateTime;
use aws_sdk_eventbridge::types::{PutEventsRequestEntry, PutEventsResultEntry};
use aws_sdk_eventbridge::Client;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::plumbing::metrics::Metrics;
use crate::processing::handler::{Handler, HandlerContext, HandlerError};
use crate::receiving::notification::Notification;

/// The largest `PutEvents` entry (and request), in bytes: 1 MB since 2026-01-29 (256 KB before).
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// Entries per `PutEvents` call, at most.
pub const MAX_BATCH_ENTRIES: usize = 10;

/// How long the batcher waits for another entry after the latest one, and at most after the first. The
/// records of a worker batch reach the publisher spread by their claims and mirror writes; waiting while
/// they keep coming gathers a batch into one call, at the cost of at most `LONGEST_WAIT` per record.
const LINGER: Duration = Duration::from_millis(15);
const LONGEST_WAIT: Duration = Duration::from_millis(60);

/// The default `Source` of the entries.
pub const DEFAULT_SOURCE: &str = "intercom";

#[derive(Clone, Debug)]
pub struct EventBridgeSettings {
    /// The bus's name or ARN (`default` for the account's default bus).
    pub bus: String,
    pub source: String,
    pub topics: Vec<String>,
}

/// What became of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryResult {
    Published,
    Retryable(String),
    Permanent(String),
}

/// A failed entry's `ErrorCode`: throttling and EventBridge's own failures can pass on another try; any
/// other code (a malformed or refused entry) will not.
pub fn classify(code: &str, message: Option<&str>) -> EntryResult {
    let text = match message {
        Some(message) => format!("{code}: {message}"),
        None => code.to_owned(),
    };
    match code {
        "ThrottlingException" | "InternalFailure" | "InternalException" | "ServiceUnavailable" => {
            EntryResult::Retryable(text)
        }
        _ => EntryResult::Permanent(text),
    }
}

/// The result of each entry of a `PutEvents` answer, in order (`entries` answers the request's entries
/// one to one).
pub fn results(entries: &[PutEventsResultEntry], sent: usize) -> Vec<EntryResult> {
    (0..sent)
        .map(|i| match entries.get(i) {
            Some(e) => match e.error_code() {
                Some(code) => classify(code, e.error_message()),
                None => EntryResult::Published,
            },
            None => EntryResult::Retryable("EventBridge answered no result for the entry".into()),
        })
        .collect()
}

/// The entry's size as EventBridge counts it: `Time` 14 bytes, then `Source`, `DetailType` and `Detail`
/// in UTF-8.
pub fn entry_size(source: &str, detail_type: &str, detail: &str) -> usize {
    14 + source.len() + detail_type.len() + detail.len()
}

/// `detail` cut to fit `limit` (with `source` and `detail_type`), and whether it had to be. First the
/// bodies of the conversation parts go (a conversation's bulk: every message ever written in it); then,
/// if still too large, the item keeps only its identity and version (`type`, `id`, `updated_at`,
/// `created_at`, `state`). The envelope stays whole. A cut detail carries `"truncated": true`.
pub fn fit(mut detail: Value, source: &str, detail_type: &str, limit: usize) -> (String, bool) {
    let text = detail.to_string();
    if entry_size(source, detail_type, &text) <= limit {
        return (text, false);
    }
    cut(&mut detail);
    if entry_size(source, detail_type, &detail.to_string()) <= limit {
        return (detail.to_string(), true);
    }
    keep_identity(&mut detail);
    (detail.to_string(), true)
}

/// The first cut of [`fit`]: marked, and the conversation parts without their bodies.
fn cut(detail: &mut Value) {
    detail["truncated"] = Value::Bool(true);
    if let Some(parts) = detail
        .pointer_mut("/data/item/conversation_parts/conversation_parts")
        .and_then(Value::as_array_mut)
    {
        for part in parts {
            if let Some(body) = part.get_mut("body") {
                *body = Value::Null;
            }
        }
    }
}

/// The second cut of [`fit`]: the item keeps only its identity and version.
fn keep_identity(detail: &mut Value) {
    if let Some(Value::Object(item)) = detail.pointer_mut("/data/item") {
        let kept: Map<String, Value> = ["type", "id", "updated_at", "created_at", "state"]
            .iter()
            .filter_map(|k| item.get(*k).map(|v| ((*k).to_owned(), v.clone())))
            .collect();
        *item = kept;
    }
}

struct Pending {
    entry: PutEventsRequestEntry,
    size: usize,
    reply: oneshot::Sender<EntryResult>,
}

pub struct EventBridgeHandler {
    settings: EventBridgeSettings,
    client: Client,
    metrics: Option<Arc<Metrics>>,
    /// Started on first use, inside the runtime that runs the handlers.
    batcher: OnceLock<mpsc::UnboundedSender<Pending>>,
}

impl EventBridgeHandler {
    pub fn new(client: Client, settings: EventBridgeSettings) -> Self {
        Self {
            settings,
            client,
            metrics: None,
            batcher: OnceLock::new(),
        }
    }

    /// Counts entries by result (`eventbridge_entries{result=published|retryable|permanent}`) and trimmed
    /// ones (`eventbridge_truncated`).
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        Self {
            metrics: Some(metrics),
            ..self
        }
    }

    pub fn topics(&self) -> &[String] {
        &self.settings.topics
    }

    fn count(&self, name: &str, labels: &[(&str, &str)]) {
        if let Some(metrics) = &self.metrics {
            metrics.incr(name, labels);
        }
    }

    fn batcher(&self) -> &mpsc::UnboundedSender<Pending> {
        self.batcher.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(collect(self.client.clone(), rx));
            tx
        })
    }
}

/// Gathers entries into `PutEvents` calls of at most 10 entries and 1 MB, each sent on its own task.
async fn collect(client: Client, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match rx.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut bytes = first.size;
        let mut batch = vec![first];
        let latest = tokio::time::Instant::now() + LONGEST_WAIT;
        while batch.len() < MAX_BATCH_ENTRIES {
            let until = (tokio::time::Instant::now() + LINGER).min(latest);
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(next)) if bytes + next.size > MAX_ENTRY_BYTES => {
                    carried = Some(next);
                    break;
                }
                Ok(Some(next)) => {
                    bytes += next.size;
                    batch.push(next);
                }
                _ => break,
            }
        }
        tokio::spawn(send(client.clone(), batch));
    }
}

async fn send(client: Client, batch: Vec<Pending>) {
    let (entries, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.entry, p.reply)).unzip();
    let sent = entries.len();
    let outcome = client.put_events().set_entries(Some(entries)).send().await;
    let results = match outcome {
        Ok(out) => results(out.entries(), sent),
        Err(error) => {
            let text = aws_sdk_eventbridge::error::DisplayErrorContext(&error).to_string();
            let result = if super::is_transient(&error) {
                EntryResult::Retryable(text)
            } else {
                EntryResult::Permanent(text)
            };
            vec![result; sent]
        }
    };
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

#[async_trait]
impl Handler for EventBridgeHandler {
    fn name(&self) -> &str {
        "eventbridge"
    }

    async fn handle(&self, notification: &Notification, _: &HandlerContext) -> Result<(), HandlerError> {
        let topic = notification.topic().as_str();
        // The body as Intercom sent it is the detail (JSON, parsed when it was received); it is parsed
        // again only to be cut, for the rare notification over the limit.
        let raw = std::str::from_utf8(&notification.raw).ok();
        let (detail, truncated) = match raw {
            Some(text) if entry_size(&self.settings.source, topic, text) <= MAX_ENTRY_BYTES => {
                (text.to_owned(), false)
            }
            _ => {
                let detail: Value = serde_json::from_slice(&notification.raw)
                    .unwrap_or_else(|_| json!({"id": notification.id.as_str(), "data": notification.data}));
                fit(detail, &self.settings.source, topic, MAX_ENTRY_BYTES)
            }
        };
        if truncated {
            self.count("eventbridge_truncated", &[]);
            tracing::warn!(
                "notification over EventBridge's entry limit: published trimmed, marked truncated"
            );
        }
        let size = entry_size(&self.settings.source, topic, &detail);
        let mut entry = PutEventsRequestEntry::builder()
            .event_bus_name(&self.settings.bus)
            .source(&self.settings.source)
            .detail_type(topic)
            .detail(detail);
        if let Some(created_at) = notification.envelope.created_at {
            entry = entry.time(DateTime::from_secs(created_at));
        }
        let (reply, answer) = oneshot::channel();
        self.batcher()
            .send(Pending {
                entry: entry.build(),
                size,
                reply,
            })
            .map_err(|_| HandlerError::retryable("the EventBridge batcher stopped"))?;
        let result = answer
            .await
            .unwrap_or_else(|_| EntryResult::Retryable("the EventBridge call was abandoned".into()));
        match result {
            EntryResult::Published => {
                self.count("eventbridge_entries", &[("result", "published")]);
                Ok(())
            }
            EntryResult::Retryable(why) => {
                self.count("eventbridge_entries", &[("result", "retryable")]);
                Err(HandlerError::retryable(format!("EventBridge: {why}")))
            }
            EntryResult::Permanent(why) => {
                self.count("eventbridge_entries", &[("result", "permanent")]);
                Err(HandlerError::permanent(format!("EventBridge: {why}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_entries_are_classed_by_their_code() {
        assert!(matches!(
            classify("ThrottlingException", None),
            EntryResult::Retryable(_)
        ));
        assert!(matches!(
            classify("InternalFailure", Some("x")),
            EntryResult::Retryable(_)
        ));
        assert_eq!(
            classify("MalformedDetail", Some("Detail is malformed.")),
            EntryResult::Permanent("MalformedDetail: Detail is malformed.".into())
        );
        let answer = vec![
            PutEventsResultEntry::builder().event_id("e1").build(),
            PutEventsResultEntry::builder()
                .error_code("ThrottlingException")
                .error_message("slow down")
                .build(),
            PutEventsResultEntry::builder()
                .error_code("InvalidArgument")
                .build(),
        ];
        let got = results(&answer, 4);
        assert_eq!(got[0], EntryResult::Published);
        assert!(matches!(&got[1], EntryResult::Retryable(t) if t.contains("slow down")));
        assert!(matches!(got[2], EntryResult::Permanent(_)));
        assert!(
            matches!(got[3], EntryResult::Retryable(_)),
            "an entry without a result is tried again"
        );
    }

    #[test]
    fn oversized_details_drop_part_bodies_then_all_but_the_identity() {
        let part =
            |i: usize| json!({"type": "conversation_part", "id": i.to_string(), "body": "x".repeat(400)});
        let detail = json!({
            "id": "notif_1", "topic": "conversation.admin.replied", "app_id": "abc", "created_at": 5,
            "data": {"type": "notification_event_data", "item": {
                "type": "conversation", "id": "215", "updated_at": 4, "state": "open", "title": "t",
                "conversation_parts": {"type": "conversation_part.list",
                    "conversation_parts": (0..20).map(part).collect::<Vec<_>>()}}},
        });
        let whole = detail.to_string();
        let (same, cut) = fit(
            detail.clone(),
            "intercom",
            "conversation.admin.replied",
            MAX_ENTRY_BYTES,
        );
        assert!(!cut);
        assert_eq!(same, whole);
        // Too large with the bodies, fits without them.
        let (text, cut) = fit(detail.clone(), "intercom", "conversation.admin.replied", 4_000);
        assert!(cut && entry_size("intercom", "conversation.admin.replied", &text) <= 4_000);
        let trimmed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(trimmed["truncated"], true);
        assert_eq!(trimmed["id"], "notif_1");
        assert_eq!(
            trimmed["data"]["item"]["conversation_parts"]["conversation_parts"][3]["body"],
            Value::Null
        );
        assert_eq!(
            trimmed["data"]["item"]["conversation_parts"]["conversation_parts"][3]["id"],
            "3"
        );
        // Too large even then: the item keeps its identity and version.
        let (text, cut) = fit(detail, "intercom", "conversation.admin.replied", 600);
        let trimmed: Value = serde_json::from_str(&text).unwrap();
        assert!(cut);
        assert_eq!(
            trimmed["data"]["item"],
            json!({"type": "conversation", "id": "215", "updated_at": 4, "state": "open"})
        );
        assert_eq!(
            (trimmed["topic"].as_str(), trimmed["app_id"].as_str()),
            (Some("conversation.admin.replied"), Some("abc"))
        );
    }
}
