//! How the local queue stores a message: the body LZ4-compressed in a BLOB, the attributes as JSON; and
//! how it reads one back, including plain-text bodies written before bodies were compressed and bodies
//! whose stored bytes cannot be decompressed.

use std::collections::BTreeMap;

use base64::Engine;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection};

use super::db::{new_id, DbError};
use crate::receiving::queue::Message;

pub(super) fn encode(attributes: &BTreeMap<String, String>) -> String {
    serde_json::to_string(attributes).expect("string maps serialise")
}

pub(super) fn decode(attributes: &str) -> BTreeMap<String, String> {
    serde_json::from_str(attributes).unwrap_or_default()
}

/// A message ready to store: its body LZ4-compressed (a BLOB: notification JSON shrinks to a quarter to
/// a half, and with it the pages written per message) and its attributes encoded. Prepared by the caller,
/// so that the database thread only writes.
pub(super) struct Storable {
    body: Vec<u8>,
    attributes: String,
}

impl Storable {
    pub(super) fn new(message: &Message) -> Self {
        Self {
            body: compress(message.body.as_bytes()),
            attributes: encode(&message.attributes),
        }
    }

    /// The payload, then its queue row, visible at once. Should the second insert fail, the payload
    /// is left without a queue row: invisible, and deleted with the next range of settled payloads.
    pub(super) fn insert(&self, conn: &Connection, now: i64) -> Result<(), DbError> {
        conn.prepare_cached(
            "INSERT INTO payloads (message_id, body, attributes, enqueued_at) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![new_id(), self.body, self.attributes, now])?;
        conn.prepare_cached("INSERT INTO queue (seq, visible_at) VALUES (?1, ?2)")?
            .execute(params![conn.last_insert_rowid(), now])?;
        Ok(())
    }
}

/// Bodies up to this size are compressed with a hash table and an output buffer kept by the thread;
/// larger ones, rare, allocate their own, so that a thread keeps no more than this much.
const REUSED_COMPRESSION_BYTES: usize = 64 * 1024;

/// `body` in LZ4 with its length prepended, as `lz4_flex::compress_prepend_size` writes it. LZ4 needs a
/// cleared 4,096-entry hash table for every body; reusing the thread's table and output buffer saves
/// allocating both for each message, and shrinking the result.
fn compress(body: &[u8]) -> Vec<u8> {
    use lz4_flex::block::{compress_into_with_table, get_maximum_output_size, CompressTable};
    use std::cell::RefCell;
    thread_local! {
        static SCRATCH: RefCell<(CompressTable, Vec<u8>)> = RefCell::new((CompressTable::small(), Vec::new()));
    }
    let largest = get_maximum_output_size(body.len());
    if largest > REUSED_COMPRESSION_BYTES {
        return lz4_flex::compress_prepend_size(body);
    }
    SCRATCH.with_borrow_mut(|(table, output)| {
        if output.len() < largest {
            output.resize(largest, 0);
        }
        let written = compress_into_with_table(body, &mut output[..largest], table)
            .expect("the output holds the largest compressed size");
        let mut stored = Vec::with_capacity(4 + written);
        stored.extend_from_slice(&(body.len() as u32).to_le_bytes());
        stored.extend_from_slice(&output[..written]);
        stored
    })
}

/// A message body as stored: LZ4 (a BLOB, written by [`Storable`]) or plain text (written before bodies
/// were compressed; such files still open and drain).
pub(super) enum StoredBody {
    Text(String),
    Compressed(Vec<u8>),
}

impl StoredBody {
    pub(super) fn read(row: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<Self> {
        Ok(match row.get_ref(column)? {
            ValueRef::Blob(bytes) => StoredBody::Compressed(bytes.to_vec()),
            _ => StoredBody::Text(row.get(column)?),
        })
    }

    /// The message, or, when the stored bytes cannot be decompressed, what goes to the dead letters.
    pub(super) fn into_message(
        self,
        mut attributes: BTreeMap<String, String>,
    ) -> Result<Message, Unreadable> {
        let bytes = match self {
            StoredBody::Text(body) => return Ok(Message { body, attributes }),
            StoredBody::Compressed(bytes) => bytes,
        };
        let text = lz4_flex::decompress_size_prepended(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|raw| String::from_utf8(raw).map_err(|e| e.to_string()));
        match text {
            Ok(body) => Ok(Message { body, attributes }),
            Err(why) => {
                attributes.insert(STORED_BODY.into(), "lz4-base64".into());
                let body = base64::engine::general_purpose::STANDARD.encode(bytes);
                Err(Unreadable {
                    message: Message { body, attributes },
                    reason: format!("the stored body could not be decompressed: {why}"),
                })
            }
        }
    }
}

/// A stored body that cannot be decompressed, kept as it was stored (in base64, marked by the
/// `stored_body` attribute) for the dead-letter table: nothing stored is dropped.
pub(super) struct Unreadable {
    pub(super) message: Message,
    pub(super) reason: String,
}

/// The attribute that marks a dead letter whose body is the stored bytes, not the notification.
pub(super) const STORED_BODY: &str = "stored_body";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::queue::tests::{insert_raw, open, VISIBILITY};
    use crate::receiving::queue::{Queue, QueueConsumer};

    #[tokio::test]
    async fn bodies_are_stored_compressed_and_received_byte_for_byte() {
        let (_dir, queue) = open();
        let body = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/events/notifications/ticket_created.json"
        ))
        .unwrap();
        let mut message = Message::from_bytes(body.as_bytes());
        message.attributes.insert("topic".into(), "ticket.created".into());
        queue.send(&message).await.unwrap();

        let (kind, stored): (String, i64) = queue
            .db()
            .call(|c| {
                Ok(
                    c.query_row("SELECT typeof(body), length(body) FROM payloads", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?,
                )
            })
            .await
            .unwrap();
        assert_eq!(kind, "blob");
        assert!(
            (stored as usize) < body.len() / 2,
            "{stored} stored bytes for a {}-byte body",
            body.len()
        );

        let received = queue.receive(10, VISIBILITY).await.unwrap();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].record.message, message);
        assert_eq!(received[0].record.message.raw_body(), body.as_bytes());
    }

    #[test]
    fn compression_with_the_threads_table_writes_what_lz4_flex_writes() {
        let fixture = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/events/notifications/ticket_created.json"
        ))
        .unwrap();
        // One after another on this thread, so each body finds the table and buffer the last one left;
        // the last body is past the reused size and takes lz4_flex's own path.
        let large: Vec<u8> = fixture
            .iter()
            .copied()
            .cycle()
            .take(REUSED_COMPRESSION_BYTES * 2)
            .collect();
        let bodies: [&[u8]; 6] = [&fixture, b"", b"{}", &fixture[..100], &fixture, &large];
        for body in bodies {
            let stored = compress(body);
            assert_eq!(
                stored,
                lz4_flex::compress_prepend_size(body),
                "a {}-byte body",
                body.len()
            );
            assert_eq!(lz4_flex::decompress_size_prepended(&stored).unwrap(), body);
        }
    }

    #[tokio::test]
    async fn plain_text_bodies_written_by_earlier_versions_are_received() {
        let (_dir, queue) = open();
        insert_raw(
            &queue,
            rusqlite::types::Value::Text("{\"type\":\"notification_event\"}".into()),
        )
        .await;
        let received = queue.receive(10, VISIBILITY).await.unwrap();
        assert_eq!(received.len(), 1);
        assert_eq!(
            received[0].record.message.body,
            "{\"type\":\"notification_event\"}"
        );
        assert_eq!(received[0].record.message.attribute("topic"), Some("ping"));
    }
}
