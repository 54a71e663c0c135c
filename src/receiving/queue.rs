//! The `Queue` port: where authentic notifications are put durably, and where the ones that can never be
//! processed are kept for an operator (the dead-letter queue).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;

use crate::receiving::notification::Envelope;

/// Message attribute names, shared by every adapter and by the worker.
pub mod attr {
    pub const TOPIC: &str = "topic";
    pub const NOTIFICATION_ID: &str = "notification_id";
    pub const APP_ID: &str = "app_id";
    pub const DELIVERY_ATTEMPTS: &str = "delivery_attempts";
    /// Why a message was dead-lettered.
    pub const REASON: &str = "reason";
    /// Set to `base64` when the body had to be encoded to be stored (bytes that are not valid text).
    pub const BODY_ENCODING: &str = "body_encoding";
    /// Unix milliseconds at which the message was dead-lettered.
    pub const DEAD_LETTERED_AT: &str = "dead_lettered_at";
    /// On a dead letter: how many times the queue had handed the message out.
    pub const RECEIVE_COUNT: &str = "receive_count";
}

/// A message to store: the body exactly as received and a few string attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub body: String,
    pub attributes: BTreeMap<String, String>,
}

impl Message {
    /// The queue message for an authentic notification: the raw body and the envelope's attributes.
    /// Notification bodies are JSON, so always UTF-8 when they parse.
    pub fn for_notification(body: &[u8], envelope: &Envelope) -> Self {
        let mut message = Self::from_bytes(body);
        let attributes = &mut message.attributes;
        attributes.insert(attr::TOPIC.into(), envelope.topic.to_string());
        if let Some(id) = &envelope.id {
            attributes.insert(attr::NOTIFICATION_ID.into(), id.to_string());
        }
        if let Some(app) = &envelope.app_id {
            attributes.insert(attr::APP_ID.into(), app.to_string());
        }
        if let Some(n) = envelope.delivery_attempts {
            attributes.insert(attr::DELIVERY_ATTEMPTS.into(), n.to_string());
        }
        message
    }

    /// Any bytes as a message body. Bytes a queue cannot store as text (invalid UTF-8, or characters SQS
    /// refuses) are base64-encoded and marked with the `body_encoding` attribute, so nothing is lost.
    pub fn from_bytes(body: &[u8]) -> Self {
        let mut attributes = BTreeMap::new();
        let body = match std::str::from_utf8(body) {
            Ok(text) if storable(text) => text.to_owned(),
            _ => {
                attributes.insert(attr::BODY_ENCODING.into(), "base64".into());
                base64::engine::general_purpose::STANDARD.encode(body)
            }
        };
        Self { body, attributes }
    }

    /// The body as originally received (decoding base64 when the message says so).
    pub fn raw_body(&self) -> Vec<u8> {
        if self.attributes.get(attr::BODY_ENCODING).map(String::as_str) == Some("base64") {
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&self.body) {
                return bytes;
            }
        }
        self.body.clone().into_bytes()
    }

    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }

    /// This message with a dead-letter `reason` (bounded in length) and time stamp added.
    pub fn with_reason(&self, reason: &str, now_ms: i64) -> Self {
        let mut message = self.clone();
        message
            .attributes
            .insert(attr::REASON.into(), truncate(reason, MAX_REASON_BYTES));
        message
            .attributes
            .insert(attr::DEAD_LETTERED_AT.into(), now_ms.to_string());
        message
    }
}

const MAX_REASON_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes (on a character boundary), with an ellipsis when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Characters SQS accepts in a message body: #x9 | #xA | #xD | #x20–#xD7FF | #xE000–#xFFFD | #x10000+.
#[cfg(test)]
fn storable_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Whether every character of `text` is one SQS accepts (the rule above), checked on bytes: text is
/// valid UTF-8, so it holds no surrogates, and the only refused characters are the C0 controls other than
/// tab, LF and CR, and U+FFFE and U+FFFF.
fn storable(text: &str) -> bool {
    // Chunk by chunk without an early exit inside a chunk, so that the compiler checks many bytes at
    // once. U+FFFE and U+FFFF are EF BF BE and EF BF BF in UTF-8: they are looked for only in text that
    // holds an 0xEF byte.
    let mut lead_ef = false;
    for chunk in text.as_bytes().chunks(64) {
        let (mut control, mut ef) = (false, false);
        for &b in chunk {
            control |= b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r');
            ef |= b == 0xEF;
        }
        if control {
            return false;
        }
        lead_ef |= ef;
    }
    !lead_ef || !(text.contains('\u{FFFE}') || text.contains('\u{FFFF}'))
}

/// Where messages that can never be processed are kept for an operator. Returns once durably stored.
#[async_trait]
pub trait DeadLetterQueue: Send + Sync {
    /// Puts a message on the dead-letter queue, with `reason` as an attribute.
    async fn dead_letter(&self, message: &Message, reason: &str) -> Result<(), QueueError>;
}

/// The queue port of the intake: the main queue plus its dead-letter queue. Returns once durably stored.
#[async_trait]
pub trait Queue: DeadLetterQueue {
    /// Puts a message on the main queue.
    async fn send(&self, message: &Message) -> Result<(), QueueError>;
}

/// A message handed out by a queue: its id, content and how many times it has been handed out.
#[derive(Clone, Debug)]
pub struct Record {
    /// The queue's id for the message (SQS `messageId`): what a batch failure names.
    pub message_id: String,
    pub message: Message,
    /// How many times the queue has handed out this message, this time included.
    pub receive_count: u32,
}

/// A received record and the receipt that acknowledges or retries it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub record: Record,
    pub receipt: String,
}

/// The consuming side of a queue, with SQS's semantics: a received message is invisible for the
/// visibility timeout, every receive counts, and an acknowledged message is gone.
#[async_trait]
pub trait QueueConsumer: Send + Sync {
    /// Up to `max` visible messages, each hidden for `visibility` afterwards.
    async fn receive(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>, QueueError>;
    /// Deletes a received message.
    async fn ack(&self, receipt: &str) -> Result<(), QueueError>;
    /// Makes a received message visible again after `delay`, remembering `error` as its last failure.
    async fn retry(&self, receipt: &str, error: &str, delay: Duration) -> Result<(), QueueError>;
}

/// A queue failure, classed by whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue could not be reached or answered with a transient error: try again later.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The queue refused this message (too large, invalid, no such queue): the same request will fail again.
    #[error("queue rejected the message: {0}")]
    Rejected(String),
}

impl QueueError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, QueueError::Unavailable(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_check_agrees_with_the_character_rule() {
        let edges = [
            0u32, 0x8, 0x9, 0xA, 0xB, 0xC, 0xD, 0xE, 0x1F, 0x20, 0x7E, 0x7F, 0x80, 0x7FF, 0x800, 0xD7FF,
            0xE000, 0xFFFC, 0xFFFD, 0xFFFE, 0xFFFF, 0x10000, 0x1F600, 0x10FFFF,
        ];
        for c in edges.iter().filter_map(|&n| char::from_u32(n)) {
            // Also past and across the 64-byte chunks the check works in.
            let (long, across) = ("x".repeat(130), "x".repeat(63));
            for text in [
                c.to_string(),
                format!("ab{c}cd"),
                format!("é{c}"),
                format!("{long}{c}"),
                format!("{across}{c}y"),
            ] {
                assert_eq!(storable(&text), text.chars().all(storable_char), "{:?}", text);
            }
        }
    }

    #[test]
    fn notification_message_keeps_raw_bytes_and_attributes() {
        let body = b"{\n  \"id\": \"notif_1\", \"topic\": \"contact.created\", \"app_id\": \"abc\", \"delivery_attempts\": 2\n}";
        let envelope = Envelope::parse(body).unwrap();
        let m = Message::for_notification(body, &envelope);
        assert_eq!(m.body.as_bytes(), body);
        assert_eq!(m.attribute(attr::TOPIC), Some("contact.created"));
        assert_eq!(m.attribute(attr::NOTIFICATION_ID), Some("notif_1"));
        assert_eq!(m.attribute(attr::APP_ID), Some("abc"));
        assert_eq!(m.attribute(attr::DELIVERY_ATTEMPTS), Some("2"));
        assert_eq!(m.attribute(attr::BODY_ENCODING), None);
    }

    #[test]
    fn unstorable_bytes_are_base64_and_round_trip() {
        for body in [&[0xff, 0xfe, 0x00, 0x41][..], b"nul\0inside", b"\x1b[31m"] {
            let m = Message::from_bytes(body);
            assert_eq!(m.attribute(attr::BODY_ENCODING), Some("base64"));
            assert_eq!(m.raw_body(), body);
        }
        let plain = Message::from_bytes("tab\tand ünïcode".as_bytes());
        assert_eq!(plain.attribute(attr::BODY_ENCODING), None);
        assert_eq!(plain.raw_body(), "tab\tand ünïcode".as_bytes());
    }

    #[test]
    fn reasons_are_bounded() {
        let m = Message::from_bytes(b"x").with_reason(&"é".repeat(2000), 5);
        let reason = m.attribute(attr::REASON).unwrap();
        assert!(reason.len() <= MAX_REASON_BYTES + '…'.len_utf8());
        assert!(reason.ends_with('…'));
        assert_eq!(m.attribute(attr::DEAD_LETTERED_AT), Some("5"));
    }
}
