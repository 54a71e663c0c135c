//! Dead-letter inspection and redrive, the same for SQS and for the local SQLite file: list what failed
//! and why, show one message, and move matching messages back to the main queue (send first, delete
//! second: an interruption can duplicate a message, which the worker deduplicates, but never lose one).

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;

use crate::processing::router::TopicPattern;
use crate::receiving::queue::{attr, Message, QueueError};

/// The reason shown for messages the queue moved on its own after too many receives (SQS's redrive sets
/// no attribute).
pub const MAX_RECEIVES_REASON: &str = "max receives exceeded";

/// Whether a message handed out `receive_count` times has had its last receive: a local queue moves it
/// to the dead letters when it next comes round instead of handing it out again.
pub fn receives_exhausted(receive_count: u32, max_receives: u32) -> bool {
    receive_count >= max_receives
}

/// The reason a local queue gives a message it moves after its last receive, with its last error.
pub fn max_receives_reason(receive_count: u32, last_error: Option<&str>) -> String {
    format!(
        "{MAX_RECEIVES_REASON} ({receive_count}): {}",
        last_error.unwrap_or("no error recorded")
    )
}

/// One dead-lettered message.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    /// What `dlq show` takes: the SQS message id, or the local message id.
    pub id: String,
    pub notification_id: Option<String>,
    pub topic: Option<String>,
    pub reason: String,
    pub receive_count: u32,
    /// When it was dead-lettered (Unix ms), when known.
    pub dead_lettered_at_ms: Option<i64>,
    pub body: String,
    pub attributes: BTreeMap<String, String>,
}

impl DeadLetter {
    pub fn message(&self) -> Message {
        Message {
            body: self.body.clone(),
            attributes: self.attributes.clone(),
        }
    }

    /// The message to put back on the main queue: the original body and attributes, without the
    /// dead-letter bookkeeping.
    pub fn redriven(&self) -> Message {
        let mut message = self.message();
        for name in [attr::REASON, attr::DEAD_LETTERED_AT, attr::RECEIVE_COUNT] {
            message.attributes.remove(name);
        }
        message
    }
}

/// Which dead letters a command applies to.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub topic: Option<TopicPattern>,
    /// Dead-lettered at or after (Unix ms).
    pub since_ms: Option<i64>,
    /// Dead-lettered before (Unix ms).
    pub until_ms: Option<i64>,
}

impl Filter {
    pub fn matches(&self, entry: &DeadLetter) -> bool {
        if let Some(pattern) = &self.topic {
            if !entry.topic.as_deref().is_some_and(|t| pattern.matches(t)) {
                return false;
            }
        }
        if self.since_ms.is_some() || self.until_ms.is_some() {
            let Some(at) = entry.dead_lettered_at_ms else {
                return false;
            };
            if self.since_ms.is_some_and(|since| at < since) || self.until_ms.is_some_and(|until| at >= until)
            {
                return false;
            }
        }
        true
    }
}

/// What a redrive did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RedriveReport {
    /// Sent back to the main queue and removed from the dead letters.
    pub moved: usize,
    /// Not matching the filter, or past `--max`: left in place.
    pub skipped: usize,
    /// Could not be moved (left in the dead letters; or, if only the delete failed, also re-queued).
    pub failed: usize,
    /// With `dry_run`, what would have moved.
    pub would_move: usize,
}

/// An answer and how many messages were read to give it: SQS has no lookup, so every command reads the
/// whole dead-letter queue (`Some(count)`); the SQLite table is queried (`None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanned<T> {
    pub found: T,
    pub scanned: Option<usize>,
}

impl<T> Scanned<T> {
    /// An answer from a store that looks messages up rather than reading them all.
    pub fn looked_up(found: T) -> Self {
        Self { found, scanned: None }
    }
}

/// The dead letters an operator can inspect and redrive.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Matching dead letters, oldest first, at most `limit`. Never consumes them.
    async fn list(&self, filter: &Filter, limit: usize) -> Result<Scanned<Vec<DeadLetter>>, QueueError>;
    /// One dead letter by id.
    async fn show(&self, id: &str) -> Result<Scanned<Option<DeadLetter>>, QueueError>;
    /// Moves up to `max` matching dead letters back to the main queue.
    async fn redrive(
        &self,
        filter: &Filter,
        max: usize,
        dry_run: bool,
    ) -> Result<Scanned<RedriveReport>, QueueError>;
}

/// `3m`, `4h`, `2d`: a short age for listings.
pub fn age(now_ms: i64, at_ms: Option<i64>) -> String {
    let Some(at) = at_ms else {
        return "?".into();
    };
    let seconds = ((now_ms - at) / 1000).max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: &str, at: i64) -> DeadLetter {
        DeadLetter {
            id: "1".into(),
            notification_id: Some("notif_1".into()),
            topic: Some(topic.into()),
            reason: "r".into(),
            receive_count: 1,
            dead_lettered_at_ms: Some(at),
            body: "{}".into(),
            attributes: BTreeMap::from([
                (attr::REASON.to_string(), "r".to_string()),
                (attr::TOPIC.to_string(), topic.to_string()),
                (attr::DEAD_LETTERED_AT.to_string(), "5".to_string()),
            ]),
        }
    }

    #[test]
    fn filters_by_topic_pattern_and_time_window() {
        let f = Filter {
            topic: Some(TopicPattern::parse("conversation.*").unwrap()),
            since_ms: Some(1_000),
            until_ms: Some(2_000),
        };
        assert!(f.matches(&entry("conversation.user.created", 1_000)));
        assert!(!f.matches(&entry("conversation.user.created", 2_000)));
        assert!(!f.matches(&entry("conversation.user.created", 999)));
        assert!(!f.matches(&entry("contact.created", 1_500)));
        assert!(Filter::default().matches(&entry("anything", 0)));
    }

    #[test]
    fn redriven_messages_drop_the_dead_letter_bookkeeping() {
        let m = entry("a.b", 1).redriven();
        assert_eq!(m.attribute(attr::TOPIC), Some("a.b"));
        assert_eq!(m.attribute(attr::REASON), None);
        assert_eq!(m.attribute(attr::DEAD_LETTERED_AT), None);
    }

    #[test]
    fn ages() {
        assert_eq!(age(10_000_000, Some(10_000_000 - 90_000)), "90s");
        assert_eq!(age(10_000_000, Some(10_000_000 - 3 * 3_600_000)), "3h");
        assert_eq!(age(10_000_000, None), "?");
    }
}
