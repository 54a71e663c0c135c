//! The local dead-letter table: messages that can never be processed, kept with the reason for an
//! operator, who can list, show and redrive them (`dlq --db`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use rusqlite::{params, Connection};
use serde::Serialize;

use super::codec::{decode, encode, Storable};
use super::db::{new_id, DbError};
use super::queue::{unavailable, SqliteQueue};
use crate::processing::dead_letters::{DeadLetter, DeadLetters, Filter, RedriveReport, Scanned};
use crate::receiving::queue::{attr, DeadLetterQueue, Message, QueueError};

/// A message in the dead-letter table.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetterRow {
    pub seq: i64,
    pub message_id: String,
    pub body: String,
    pub attributes: BTreeMap<String, String>,
    pub reason: String,
    pub receive_count: u32,
    pub enqueued_at_ms: i64,
    pub dead_lettered_at_ms: i64,
}

pub(super) fn insert_dead_letter(
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
    /// Every dead letter, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetterRow>, QueueError> {
        self.db()
            .call(|c| {
                let mut statement = c.prepare(
                    "SELECT seq, message_id, body, attributes, reason, receive_count, enqueued_at, dead_lettered_at
                     FROM dead_letters ORDER BY seq",
                )?;
                let rows = statement.query_map([], |r| {
                    Ok(DeadLetterRow {
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
impl DeadLetterQueue for SqliteQueue {
    async fn dead_letter(&self, message: &Message, reason: &str) -> Result<(), QueueError> {
        let message = message.clone();
        let reason = reason.to_owned();
        let now = self.now_ms();
        self.db()
            .call_single_write(move |c| {
                let receive_count = message
                    .attribute(attr::RECEIVE_COUNT)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                insert_dead_letter(c, &new_id(), &message, &reason, receive_count, now, now)
            })
            .await
            .map_err(unavailable)
    }
}

fn entry(d: DeadLetterRow) -> DeadLetter {
    DeadLetter {
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
impl DeadLetters for SqliteQueue {
    async fn list(&self, filter: &Filter, limit: usize) -> Result<Scanned<Vec<DeadLetter>>, QueueError> {
        Ok(Scanned::looked_up(
            self.dead_letters()
                .await?
                .into_iter()
                .map(entry)
                .filter(|e| filter.matches(e))
                .take(limit)
                .collect(),
        ))
    }

    async fn show(&self, id: &str) -> Result<Scanned<Option<DeadLetter>>, QueueError> {
        Ok(Scanned::looked_up(
            self.dead_letters()
                .await?
                .into_iter()
                .map(entry)
                .find(|e| e.id == id),
        ))
    }

    async fn redrive(
        &self,
        filter: &Filter,
        max: usize,
        dry_run: bool,
    ) -> Result<Scanned<RedriveReport>, QueueError> {
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
            return Ok(Scanned::looked_up(report));
        }
        // One transaction: the message is back on the queue and gone from the dead letters, or neither.
        let now = self.now_ms();
        let moved = self
            .db()
            .call(move |c| {
                let mut moved = 0;
                for (seq, message) in chosen {
                    let removed = c
                        .prepare_cached("DELETE FROM dead_letters WHERE seq = ?1")?
                        .execute([seq])?;
                    if removed == 1 {
                        Storable::new(&message).insert(c, now)?;
                        moved += 1;
                    }
                }
                Ok(moved)
            })
            .await
            .map_err(unavailable)?;
        report.moved = moved;
        Ok(Scanned::looked_up(report))
    }
}
