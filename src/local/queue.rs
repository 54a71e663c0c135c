//! The SQLite adapter of the queue ports: messages, receives with a visibility timeout and receive
//! counts, and a dead-letter table. A message received more than `max_receives` times is moved to the
//! dead-letter table with its last error when it would next be handed out (as SQS's redrive does).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection};
use serde::Serialize;

use super::db::{new_id, Db, DbError};
use crate::clock::unix_ms_now;
use crate::dlq::{DeadLetterEntry, DeadLetterStore, Filter, RedriveReport};
use crate::queue::{attr, DeadLetterQueue, Delivery, Message, Queue, QueueConsumer, QueueError, Record};

#[derive(Clone, Debug)]
pub struct SqliteQueue {
    db: Db,
    max_receives: u32,
}

/// Queue depth, for `/healthz`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Messages waiting or being processed.
    pub queued: u64,
    /// Of those, received and not yet acknowledged.
    pub in_flight: u64,
    pub dead_letters: u64,
}

/// A message in the dead-letter table.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    pub seq: i64,
    pub message_id: String,
    pub body: String,
    pub attributes: BTreeMap<String, String>,
    pub reason: String,
    pub receive_count: u32,
    pub enqueued_at_ms: i64,
    pub dead_lettered_at_ms: i64,
}

fn unavailable(e: DbError) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

fn encode(attributes: &BTreeMap<String, String>) -> String {
    serde_json::to_string(attributes).expect("string maps serialise")
}

fn decode(attributes: &str) -> BTreeMap<String, String> {
    serde_json::from_str(attributes).unwrap_or_default()
}

fn insert_dead_letter(
    conn: &Connection,
    message_id: &str,
    message: &Message,
    reason: &str,
    receive_count: u32,
    enqueued_at: i64,
    now: i64,
) -> Result<(), DbError> {
    let stored = message.with_reason(reason, now);
    conn.prepare_cached(
        "INSERT INTO dead_letters (message_id, body, attributes, reason, receive_count, enqueued_at, dead_lettered_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
            message_id,
            stored.body,
            encode(&stored.attributes),
            stored.attribute(attr::REASON).unwrap_or(reason),
            receive_count,
            enqueued_at,
            now
        ])?;
    Ok(())
}

impl SqliteQueue {
    pub fn new(db: Db, max_receives: u32) -> Self {
        Self {
            db,
            max_receives: max_receives.max(1),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.db
            .call(|c| {
                let now = unix_ms_now();
                let (queued, in_flight): (i64, i64) = c.query_row(
                    "SELECT count(*), coalesce(sum(visible_at > ?1 AND receive_count > 0), 0) FROM messages",
                    [now],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                let dead: i64 = c.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))?;
                Ok(QueueStats {
                    queued: queued as u64,
                    in_flight: in_flight as u64,
                    dead_letters: dead as u64,
                })
            })
            .await
            .map_err(unavailable)
    }

    /// Every dead letter, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        self.db
            .call(|c| {
                let mut statement = c.prepare(
                    "SELECT seq, message_id, body, attributes, reason, receive_count, enqueued_at, dead_lettered_at
                     FROM dead_letters ORDER BY seq",
                )?;
                let rows = statement.query_map([], |r| {
                    Ok(DeadLetter {
                        seq: r.get(0)?,
                        message_id: r.get(1)?,
                        body: r.get(2)?,
                        attributes: decode(&r.get::<_, String>(3)?),
                        reason: r.get(4)?,
                        receive_count: r.get(5)?,
                        enqueued_at_ms: r.get(6)?,
                        dead_lettered_at_ms: r.get(7)?,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn send(&self, message: &Message) -> Result<(), QueueError> {
        let message = message.clone();
        self.db
            .call(move |c| {
                let now = unix_ms_now();
                c.prepare_cached(
                    "INSERT INTO messages (message_id, body, attributes, enqueued_at, visible_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                )?
                .execute(params![new_id(), message.body, encode(&message.attributes), now])?;
                Ok(())
            })
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl DeadLetterQueue for SqliteQueue {
    async fn dead_letter(&self, message: &Message, reason: &str) -> Result<(), QueueError> {
        let message = message.clone();
        let reason = reason.to_owned();
        self.db
            .call(move |c| {
                let now = unix_ms_now();
                let receive_count = message
                    .attribute("receive_count")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                insert_dead_letter(c, &new_id(), &message, &reason, receive_count, now, now)
            })
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl QueueConsumer for SqliteQueue {
    async fn receive(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        let max_receives = self.max_receives;
        let visibility_ms = visibility.as_millis() as i64;
        self.db
            .call(move |c| {
                let now = unix_ms_now();
                let mut out = Vec::new();
                // Messages past their receive limit are moved aside; keep looking until `max` are found.
                while out.len() < max {
                    let mut statement = c.prepare_cached(
                        "SELECT seq, message_id, body, attributes, receive_count, last_error, enqueued_at
                         FROM messages WHERE visible_at <= ?1 ORDER BY seq LIMIT ?2",
                    )?;
                    #[allow(clippy::type_complexity)]
                    let rows: Vec<(i64, String, String, String, u32, Option<String>, i64)> = statement
                        .query_map(params![now, (max - out.len()) as i64], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
                        })?
                        .collect::<Result<_, _>>()?;
                    if rows.is_empty() {
                        break;
                    }
                    for (seq, message_id, body, attributes, count, last_error, enqueued_at) in rows {
                        let message = Message {
                            body,
                            attributes: decode(&attributes),
                        };
                        if count >= max_receives {
                            let reason = format!(
                                "max receives exceeded ({count}): {}",
                                last_error.as_deref().unwrap_or("no error recorded")
                            );
                            insert_dead_letter(c, &message_id, &message, &reason, count, enqueued_at, now)?;
                            c.prepare_cached("DELETE FROM messages WHERE seq = ?1")?.execute([seq])?;
                            continue;
                        }
                        let receipt = new_id();
                        c.prepare_cached(
                            "UPDATE messages SET receive_count = receive_count + 1, visible_at = ?1, receipt = ?2 WHERE seq = ?3",
                        )?
                        .execute(params![now + visibility_ms, receipt, seq])?;
                        out.push(Delivery {
                            record: Record {
                                message_id,
                                message,
                                receive_count: count + 1,
                            },
                            receipt,
                        });
                    }
                }
                Ok(out)
            })
            .await
            .map_err(unavailable)
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        let receipt = receipt.to_owned();
        self.db
            .call(move |c| {
                c.prepare_cached("DELETE FROM messages WHERE receipt = ?1")?
                    .execute([receipt])?;
                Ok(())
            })
            .await
            .map_err(unavailable)
    }

    async fn retry(&self, receipt: &str, error: &str, delay: Duration) -> Result<(), QueueError> {
        let receipt = receipt.to_owned();
        let error = error.to_owned();
        self.db
            .call(move |c| {
                let visible_at = unix_ms_now() + delay.as_millis() as i64;
                c.prepare_cached("UPDATE messages SET visible_at = ?1, last_error = ?2 WHERE receipt = ?3")?
                    .execute(params![visible_at, error, receipt])?;
                Ok(())
            })
            .await
            .map_err(unavailable)
    }
}

fn entry(d: DeadLetter) -> DeadLetterEntry {
    DeadLetterEntry {
        id: d.message_id,
        notification_id: d.attributes.get(attr::NOTIFICATION_ID).cloned(),
        topic: d.attributes.get(attr::TOPIC).cloned(),
        reason: d.reason,
        receive_count: d.receive_count,
        dead_lettered_at_ms: Some(d.dead_lettered_at_ms),
        body: d.body,
        attributes: d.attributes,
    }
}

#[async_trait]
impl DeadLetterStore for SqliteQueue {
    async fn list(&self, filter: &Filter, limit: usize) -> Result<Vec<DeadLetterEntry>, QueueError> {
        Ok(self
            .dead_letters()
            .await?
            .into_iter()
            .map(entry)
            .filter(|e| filter.matches(e))
            .take(limit)
            .collect())
    }

    async fn show(&self, id: &str) -> Result<Option<DeadLetterEntry>, QueueError> {
        Ok(self
            .dead_letters()
            .await?
            .into_iter()
            .map(entry)
            .find(|e| e.id == id))
    }

    async fn redrive(&self, filter: &Filter, max: usize, dry_run: bool) -> Result<RedriveReport, QueueError> {
        let all = self.dead_letters().await?;
        let mut report = RedriveReport::default();
        let mut chosen = Vec::new();
        for dead in all {
            let seq = dead.seq;
            let e = entry(dead);
            if filter.matches(&e) && chosen.len() < max {
                chosen.push((seq, e.redriven()));
            } else {
                report.skipped += 1;
            }
        }
        if dry_run {
            report.would_move = chosen.len();
            return Ok(report);
        }
        // One transaction: the message is back on the queue and gone from the dead letters, or neither.
        let moved = self
            .db
            .call(move |c| {
                let now = unix_ms_now();
                let mut moved = 0;
                for (seq, message) in chosen {
                    let removed = c.prepare_cached("DELETE FROM dead_letters WHERE seq = ?1")?.execute([seq])?;
                    if removed == 1 {
                        c.prepare_cached(
                            "INSERT INTO messages (message_id, body, attributes, enqueued_at, visible_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                        )?
                        .execute(params![new_id(), message.body, encode(&message.attributes), now])?;
                        moved += 1;
                    }
                }
                Ok(moved)
            })
            .await
            .map_err(unavailable)?;
        report.moved = moved;
        Ok(report)
    }
}
