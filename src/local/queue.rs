//! The SQLite adapter of the queue ports: messages, receives with a visibility timeout and receive
//! counts. A message is a row in `payloads` (written once, in the form `codec.rs` gives it) and one in
//! `queue` (its delivery state); see the schema in `db.rs`. A message received more than `max_receives`
//! times is moved to the dead-letter table (`dead_letters.rs`) with its last error when it would next be
//! handed out (as SQS's redrive does). Times come from the queue's [`Clock`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection};
use serde::Serialize;

use super::codec::{decode, Storable, StoredBody, Unreadable};
use super::db::{new_id, Db, DbError};
use super::dead_letters::insert_dead_letter;
use crate::plumbing::clock::{Clock, SystemClock};
use crate::processing::dead_letters::{max_receives_reason, receives_exhausted};
use crate::receiving::queue::{Delivery, Message, Queue, QueueConsumer, QueueError, Record};

#[derive(Clone)]
pub struct SqliteQueue {
    db: Db,
    max_receives: u32,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteQueue")
            .field("db", &self.db)
            .field("max_receives", &self.max_receives)
            .finish_non_exhaustive()
    }
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

pub(super) fn unavailable(e: DbError) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

/// A message leased by [`SqliteQueue::receive`]; its body and attributes are decoded after the
/// transaction, off the database thread.
struct Leased {
    seq: i64,
    message_id: String,
    receive_count: u32,
    enqueued_at: i64,
    receipt: String,
}

/// A receipt names the queue row it leases, so that settling it needs no index: `<seq>.<token>`, with a
/// new token at every receive.
fn new_receipt(seq: i64) -> String {
    format!("{seq}.{}", new_id())
}

/// The row a receipt names; `None` for a receipt this queue did not hand out (it then settles nothing).
fn receipt_seq(receipt: &str) -> Option<i64> {
    receipt.split_once('.')?.0.parse().ok()
}

/// Deletes the payloads that no queue row precedes: every message before the oldest one still queued
/// has been settled (acknowledged, or moved to the dead letters). They go as a range, from the front of
/// the table, so whole pages are freed rather than rewritten.
fn delete_settled_payloads(conn: &Connection) -> Result<(), DbError> {
    conn.prepare_cached(
        "DELETE FROM payloads WHERE seq < coalesce((SELECT min(seq) FROM queue), (SELECT max(seq) + 1 FROM payloads))",
    )?
    .execute([])?;
    Ok(())
}

impl SqliteQueue {
    /// A queue on the real time.
    pub fn new(db: Db, max_receives: u32) -> Self {
        Self {
            db,
            max_receives: max_receives.max(1),
            clock: Arc::new(SystemClock),
        }
    }

    /// This queue with visibility, receive and dead-letter times from `clock`.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self { clock, ..self }
    }

    pub(super) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Receives after which a failing message moves to the dead letters.
    pub fn max_receives(&self) -> u32 {
        self.max_receives
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Moves a received message whose stored body cannot be decompressed to the dead-letter table, with
    /// the bytes as stored. Only while its receipt still holds it.
    async fn bury_unreadable(&self, lease: Leased, unreadable: Unreadable) -> Result<(), QueueError> {
        let now = self.now_ms();
        self.db
            .call(move |c| {
                let removed = c
                    .prepare_cached("DELETE FROM queue WHERE seq = ?1 AND receipt = ?2")?
                    .execute(params![lease.seq, lease.receipt])?;
                if removed == 1 {
                    insert_dead_letter(
                        c,
                        &lease.message_id,
                        &unreadable.message,
                        &unreadable.reason,
                        lease.receive_count,
                        lease.enqueued_at,
                        now,
                    )?;
                }
                Ok(())
            })
            .await
            .map_err(unavailable)
    }

    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        let now = self.now_ms();
        self.db
            .call(move |c| {
                let (queued, in_flight): (i64, i64) = c.query_row(
                    "SELECT count(*), coalesce(sum(visible_at > ?1 AND receive_count > 0), 0) FROM queue",
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
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn send(&self, message: &Message) -> Result<(), QueueError> {
        let stored = Storable::new(message);
        let now = self.now_ms();
        self.db
            .call_single_write(move |c| stored.insert(c, now))
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl QueueConsumer for SqliteQueue {
    async fn receive(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        let max_receives = self.max_receives;
        let visibility_ms = visibility.as_millis() as i64;
        let now = self.now_ms();
        let leased = self
            .db
            .call_deferred(move |c| {
                delete_settled_payloads(c)?;
                let mut out = Vec::new();
                // Messages past their receive limit are moved aside; keep looking until `max` are found,
                // each row once (a zero visibility timeout leaves a leased row visible).
                let mut after = i64::MIN;
                while out.len() < max {
                    let mut statement = c.prepare_cached(
                        "SELECT q.seq, p.message_id, p.body, p.attributes, q.receive_count, q.last_error, p.enqueued_at
                         FROM queue q JOIN payloads p ON p.seq = q.seq
                         WHERE q.visible_at <= ?1 AND q.seq > ?3 ORDER BY q.seq LIMIT ?2",
                    )?;
                    #[allow(clippy::type_complexity)]
                    let rows: Vec<(i64, String, StoredBody, String, u32, Option<String>, i64)> = statement
                        .query_map(params![now, (max - out.len()) as i64, after], |r| {
                            Ok((r.get(0)?, r.get(1)?, StoredBody::read(r, 2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
                        })?
                        .collect::<Result<_, _>>()?;
                    if rows.is_empty() {
                        break;
                    }
                    for (seq, message_id, body, attributes, count, last_error, enqueued_at) in rows {
                        after = seq;
                        if receives_exhausted(count, max_receives) {
                            let reason = max_receives_reason(count, last_error.as_deref());
                            let message = body
                                .into_message(decode(&attributes))
                                .unwrap_or_else(|unreadable| unreadable.message);
                            insert_dead_letter(c, &message_id, &message, &reason, count, enqueued_at, now)?;
                            c.prepare_cached("DELETE FROM queue WHERE seq = ?1")?.execute([seq])?;
                            continue;
                        }
                        let receipt = new_receipt(seq);
                        c.prepare_cached(
                            "UPDATE queue SET receive_count = receive_count + 1, visible_at = ?1, receipt = ?2 WHERE seq = ?3",
                        )?
                        .execute(params![now + visibility_ms, receipt, seq])?;
                        let lease = Leased {
                            seq,
                            message_id,
                            receive_count: count + 1,
                            enqueued_at,
                            receipt,
                        };
                        out.push((lease, body, attributes));
                    }
                }
                Ok(out)
            })
            .await
            .map_err(unavailable)?;
        // Bodies are decompressed here, off the database thread.
        let mut deliveries = Vec::with_capacity(leased.len());
        for (lease, body, attributes) in leased {
            match body.into_message(decode(&attributes)) {
                Ok(message) => deliveries.push(Delivery {
                    record: Record {
                        message_id: lease.message_id,
                        message,
                        receive_count: lease.receive_count,
                    },
                    receipt: lease.receipt,
                }),
                Err(unreadable) => {
                    let message_id = lease.message_id.clone();
                    if let Err(error) = self.bury_unreadable(lease, unreadable).await {
                        // Still leased: handed out again after the visibility timeout, and buried then.
                        tracing::warn!(%error, %message_id, "could not dead-letter an unreadable stored body");
                    }
                }
            }
        }
        Ok(deliveries)
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        let receipt = receipt.to_owned();
        self.db
            .call_single_write_deferred(move |c| {
                c.prepare_cached("DELETE FROM queue WHERE seq = ?1 AND receipt = ?2")?
                    .execute(params![receipt_seq(&receipt), receipt])?;
                Ok(())
            })
            .await
            .map_err(unavailable)
    }

    async fn retry(&self, receipt: &str, error: &str, delay: Duration) -> Result<(), QueueError> {
        let receipt = receipt.to_owned();
        let error = error.to_owned();
        let visible_at = self.now_ms() + delay.as_millis() as i64;
        self.db
            .call_single_write_deferred(move |c| {
                c.prepare_cached(
                    "UPDATE queue SET visible_at = ?1, last_error = ?2 WHERE seq = ?3 AND receipt = ?4",
                )?
                .execute(params![visible_at, error, receipt_seq(&receipt), receipt])?;
                Ok(())
            })
            .await
            .map_err(unavailable)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::local::codec::STORED_BODY;
    use base64::Engine;

    pub(crate) const VISIBILITY: Duration = Duration::from_secs(30);

    pub(crate) fn open() -> (tempfile::TempDir, SqliteQueue) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("q.db")).unwrap();
        (dir, SqliteQueue::new(db, 5))
    }

    /// Writes a row as given, bypassing `send`: what an older version or a damaged file holds.
    pub(crate) async fn insert_raw(queue: &SqliteQueue, body: rusqlite::types::Value) {
        queue
            .db()
            .call(move |c| {
                c.execute(
                    "INSERT INTO payloads (message_id, body, attributes, enqueued_at)
                     VALUES ('m-raw', ?1, '{\"topic\":\"ping\"}', 0)",
                    [body],
                )?;
                c.execute(
                    "INSERT INTO queue (seq, visible_at) VALUES (?1, 0)",
                    [c.last_insert_rowid()],
                )?;
                Ok(())
            })
            .await
            .unwrap();
    }

    async fn count(queue: &SqliteQueue, table: &'static str) -> i64 {
        queue
            .db()
            .call(move |c| Ok(c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?))
            .await
            .unwrap()
    }

    fn message(n: usize) -> Message {
        Message::from_bytes(format!("{{\"type\":\"notification_event\",\"id\":\"notif_{n}\"}}").as_bytes())
    }

    #[tokio::test]
    async fn settled_payloads_are_deleted_once_no_unsettled_message_precedes_them() {
        let (_dir, queue) = open();
        for n in 0..6 {
            queue.send(&message(n)).await.unwrap();
        }
        let first = queue.receive(2, VISIBILITY).await.unwrap();
        let rest = queue.receive(10, VISIBILITY).await.unwrap();
        assert_eq!((first.len(), rest.len()), (2, 4));
        for delivery in &rest {
            queue.ack(&delivery.receipt).await.unwrap();
        }
        // Messages 2..5 are settled, but message 0 precedes them and is still leased: all payloads stay.
        assert!(queue.receive(10, VISIBILITY).await.unwrap().is_empty());
        assert_eq!(
            (count(&queue, "queue").await, count(&queue, "payloads").await),
            (2, 6)
        );

        queue.ack(&first[0].receipt).await.unwrap();
        queue.receive(10, VISIBILITY).await.unwrap();
        assert_eq!(
            (count(&queue, "queue").await, count(&queue, "payloads").await),
            (1, 5)
        );
        queue.ack(&first[1].receipt).await.unwrap();
        queue.receive(10, VISIBILITY).await.unwrap();
        assert_eq!(
            (count(&queue, "queue").await, count(&queue, "payloads").await),
            (0, 0)
        );

        // A later message still gets a payload of its own and is received whole.
        queue.send(&message(7)).await.unwrap();
        let again = queue.receive(10, VISIBILITY).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].record.message, message(7));
    }

    #[tokio::test]
    async fn only_the_current_receipt_settles_a_message() {
        let (_dir, queue) = open();
        queue.send(&message(1)).await.unwrap();
        let first = queue.receive(10, Duration::ZERO).await.unwrap();
        let second = queue.receive(10, VISIBILITY).await.unwrap();
        assert_eq!((first.len(), second.len()), (1, 1));
        assert_ne!(first[0].receipt, second[0].receipt);

        // The expired lease's receipt, and receipts this queue never handed out, settle nothing.
        for stale in [first[0].receipt.as_str(), "not-a-receipt", "1.", ""] {
            queue.ack(stale).await.unwrap();
            queue.retry(stale, "late", Duration::ZERO).await.unwrap();
        }
        let stats = queue.stats().await.unwrap();
        assert_eq!((stats.queued, stats.in_flight), (1, 1));

        queue.ack(&second[0].receipt).await.unwrap();
        assert_eq!(queue.stats().await.unwrap().queued, 0);
    }

    #[tokio::test]
    async fn a_single_table_queue_of_an_earlier_version_is_moved_over_with_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let future = crate::plumbing::clock::unix_ms_now() + 60_000;
        let compressed = lz4_flex::compress_prepend_size(b"{\"id\":\"notif_c\"}");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE messages (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL,
                     attributes TEXT NOT NULL, enqueued_at INTEGER NOT NULL, visible_at INTEGER NOT NULL,
                     receive_count INTEGER NOT NULL DEFAULT 0, receipt TEXT, last_error TEXT);
                 CREATE INDEX messages_by_visibility ON messages (visible_at, seq);
                 CREATE INDEX messages_by_receipt ON messages (receipt);
                 CREATE TABLE dead_letters (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, body TEXT NOT NULL,
                     attributes TEXT NOT NULL, reason TEXT NOT NULL, receive_count INTEGER NOT NULL,
                     enqueued_at INTEGER NOT NULL, dead_lettered_at INTEGER NOT NULL);
                 INSERT INTO dead_letters VALUES (1, 'm-dead', '{}', '{}', 'handler failed', 5, 1, 2);",
            )
            .unwrap();
            let mut insert = old
                .prepare(
                    "INSERT INTO messages (seq, message_id, body, attributes, enqueued_at, visible_at, receive_count, receipt, last_error)
                     VALUES (?1, ?2, ?3, '{\"topic\":\"t\"}', 5, ?4, ?5, ?6, ?7)",
                )
                .unwrap();
            let text = rusqlite::types::Value::Text("{\"id\":\"notif_a\"}".into());
            let blob = rusqlite::types::Value::Blob(compressed);
            insert
                .execute(params![3, "m-a", text, 0, 0, None::<String>, None::<String>])
                .unwrap();
            insert
                .execute(params![8, "m-leased", text, future, 1, "r-old", None::<String>])
                .unwrap();
            insert
                .execute(params![9, "m-c", blob, 0, 2, None::<String>, "timeout"])
                .unwrap();
        }

        let queue = SqliteQueue::new(Db::open(&path).unwrap(), 5);
        let tables: Vec<String> = queue
            .db()
            .column("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .await;
        assert!(!tables.contains(&"messages".to_owned()), "{tables:?}");
        let stats = queue.stats().await.unwrap();
        assert_eq!((stats.queued, stats.in_flight, stats.dead_letters), (3, 1, 1));

        // The visible ones come in their old order with their receive counts; the leased one stays hidden.
        let received = queue.receive(10, VISIBILITY).await.unwrap();
        let got: Vec<(&str, &str, u32)> = received
            .iter()
            .map(|d| {
                (
                    d.record.message_id.as_str(),
                    d.record.message.body.as_str(),
                    d.record.receive_count,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("m-a", "{\"id\":\"notif_a\"}", 1),
                ("m-c", "{\"id\":\"notif_c\"}", 3)
            ]
        );
        assert_eq!(received[0].record.message.attribute("topic"), Some("t"));

        // New messages are numbered after the old ones, and reopening migrates nothing twice.
        queue.send(&message(1)).await.unwrap();
        drop(queue);
        let queue = SqliteQueue::new(Db::open(&path).unwrap(), 5);
        let seqs: Vec<i64> = queue.db().column("SELECT seq FROM queue ORDER BY seq").await;
        assert_eq!(seqs, [3, 8, 9, 10]);
    }

    #[tokio::test]
    async fn an_unreadable_stored_body_is_dead_lettered_with_the_bytes_as_stored() {
        let (_dir, queue) = open();
        // A size prefix of 1000 bytes, then a match that refers to bytes before the start of the output.
        let damaged = vec![0xe8, 0x03, 0x00, 0x00, 0x04, 0x05, 0x00];
        insert_raw(&queue, rusqlite::types::Value::Blob(damaged.clone())).await;

        assert!(queue.receive(10, VISIBILITY).await.unwrap().is_empty());
        let stats = queue.stats().await.unwrap();
        assert_eq!((stats.queued, stats.dead_letters), (0, 1));
        let dead = queue.dead_letters().await.unwrap();
        assert_eq!(dead[0].message_id, "m-raw");
        assert!(
            dead[0]
                .reason
                .starts_with("the stored body could not be decompressed"),
            "{}",
            dead[0].reason
        );
        assert_eq!(
            dead[0].attributes.get(STORED_BODY).map(String::as_str),
            Some("lz4-base64")
        );
        assert_eq!(dead[0].attributes.get("topic").map(String::as_str), Some("ping"));
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&dead[0].body)
                .unwrap(),
            damaged
        );
        assert_eq!(dead[0].receive_count, 1);
    }
}
