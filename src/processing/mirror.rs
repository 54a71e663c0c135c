//! The mirror: per object (app, type, id), the newest version Intercom ever delivered, kept by one
//! conditional write that refuses to go backwards. Intercom neither orders nor deduplicates deliveries,
//! retries a failed one a minute later and delays deliveries by up to two hours after a 429, so an older
//! version of an object regularly arrives after a newer one; writing what arrives would go back in time.
//!
//! A version is the item's `updated_at` as an instant (Unix seconds in conversations and tickets,
//! ISO-8601 with milliseconds in newer contacts and companies), ties broken by the notification's
//! `created_at`. A deletion leaves a tombstone versioned by the deletion notification's `created_at`, so
//! an older update never resurrects the object. An item without `updated_at` is not a version and never
//! overwrites one; an item that is not a whole object of a mirrored type (a `contact_tag` on the tag
//! topics, a `user` on `visitor.signed_up`) is not mirrored.
//!
//! The [`Mirror`] port has a SQLite adapter (`serve`) and a DynamoDB one (the worker Lambda). The
//! [`MirrorHandler`] applies each notification; its verdict also decides whether the state handlers
//! ([`crate::processing::handler::Wants::Newest`]) run.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::plumbing::metrics::Metrics;
use crate::processing::handler::{Freshness, Handler, HandlerContext, HandlerError, Versions, Wants};
use crate::receiving::notification::Notification;

/// The object types the mirror keeps (`contact` covers users and leads).
pub const MIRRORED_TYPES: [&str; 4] = ["conversation", "contact", "ticket", "company"];

/// The topics the mirror handler is routed: every topic of a mirrored type, whatever its action.
pub const MIRROR_TOPICS: [&str; 4] = ["conversation.*", "contact.*", "ticket.*", "company.*"];

/// The topics of reconciled notifications end so (`conversation.reconciled`).
pub const RECONCILED_SUFFIX: &str = ".reconciled";

/// The most a stored item may take, compressed. DynamoDB limits an item to 400 KB with its key and
/// attribute names; this leaves room for them.
pub const MAX_STORED_ITEM_BYTES: usize = 350_000;

/// The first bytes of a gzip member (RFC 1952, deflate): how a stored item starts.
const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];

/// The most JSON a stored item may inflate to; more means the stored bytes are not an item of ours.
const MAX_ITEM_JSON_BYTES: u64 = 64 << 20;

/// An object's identity: the app it belongs to (empty when the notification names none), its type, its id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct MirrorKey {
    pub app_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

impl fmt::Display for MirrorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.app_id, self.kind, self.id)
    }
}

/// Which of two deliveries of an object is newer: the object's own time (`updated_at`, or the deletion's
/// time for a tombstone) in Unix ms, then the notification's `created_at` in Unix ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Version {
    pub at_ms: i64,
    pub tiebreak_ms: i64,
}

/// What a notification asks of the mirror.
#[derive(Clone, Debug, PartialEq)]
pub enum Extracted {
    /// A version (or a tombstone) to apply.
    Write(MirrorWrite),
    /// A whole object of a mirrored type without `updated_at`: not a version, never written.
    Unversioned(MirrorKey),
    /// Not a whole object of a mirrored type.
    NotMirrored,
}

/// One conditional write: the object's newest version if `version` is newer than the stored one.
#[derive(Clone, Debug, PartialEq)]
pub struct MirrorWrite {
    pub key: MirrorKey,
    pub version: Version,
    pub deleted: bool,
    /// The notification that carried it.
    pub notification_id: String,
    /// The item as JSON, compressed by the store's [`ItemCodec`] (`None` for a tombstone).
    pub item: Option<Vec<u8>>,
    /// The item did not fit in [`MAX_STORED_ITEM_BYTES`]: only its identity, version and the fields
    /// that fit are kept.
    pub truncated: bool,
}

/// What a conditional write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The version was newer (or the object new): stored.
    Written,
    /// The stored version is the same: nothing changed.
    Unchanged,
    /// The stored version is newer: refused.
    Stale,
}

/// One mirrored object as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct MirrorEntry {
    pub key: MirrorKey,
    pub version: Version,
    pub deleted: bool,
    pub truncated: bool,
    pub notification_id: String,
    /// The item (`null` for a tombstone).
    pub item: Value,
}

impl MirrorEntry {
    /// What `mirror get` and `mirror list` print.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "type": self.key.kind,
            "id": self.key.id,
            "app_id": self.key.app_id,
            "updated_at": rfc3339(self.version.at_ms),
            "deleted": self.deleted,
            "truncated": self.truncated,
            "notification_id": self.notification_id,
            "item": self.item,
        })
    }
}

/// Objects and tombstones per type, and how many stale deliveries were refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MirrorStats {
    pub types: BTreeMap<String, TypeStats>,
    pub stale_refused: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TypeStats {
    /// Objects kept, tombstones included.
    pub objects: u64,
    pub tombstones: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    #[error("mirror unavailable: {0}")]
    Unavailable(String),
    #[error("stored mirror entry {0} cannot be read: {1}")]
    Corrupt(String, String),
}

/// Where the mirror is kept.
#[async_trait]
pub trait Mirror: Send + Sync {
    /// Stores `write` if its version is newer than the stored one (or nothing is stored), in one
    /// conditional write; counts a refusal as a stale delivery.
    async fn apply(&self, write: &MirrorWrite) -> Result<Applied, MirrorError>;
    /// The object of `kind` and `id`, in every app that has one.
    async fn get(&self, kind: &str, id: &str) -> Result<Vec<MirrorEntry>, MirrorError>;
    /// Objects of `kind`, newest first, with a version at or after `since_ms`, at most `limit`.
    async fn list(
        &self,
        kind: &str,
        since_ms: Option<i64>,
        limit: usize,
    ) -> Result<Vec<MirrorEntry>, MirrorError>;
    async fn stats(&self) -> Result<MirrorStats, MirrorError>;
    /// How this store wants items compressed ([`ItemCodec::Gzip`] unless it says otherwise).
    fn codec(&self) -> ItemCodec {
        ItemCodec::Gzip
    }
}

/// How a stored item is compressed. [`decode_item`] reads either, whichever wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemCodec {
    /// One gzip member (deflate at the default level, no file name, time 0), which any gzip reader
    /// opens: the smaller, for a store that bills by the KB (DynamoDB).
    Gzip,
    /// An LZ4 block with its length in front: ten times faster to make, about 40 % larger; for a store
    /// that does not bill by size (`serve`'s SQLite file).
    Lz4,
}

impl ItemCodec {
    pub fn encode(self, json: &[u8]) -> Vec<u8> {
        match self {
            ItemCodec::Gzip => gzip(json),
            ItemCodec::Lz4 => lz4_flex::compress_prepend_size(json),
        }
    }
}

/// What the notification asks of the mirror: a write, an unversioned object, or nothing. The item is
/// compressed as gzip ([`extract_as`] for another codec).
pub fn extract(notification: &Notification) -> Extracted {
    extract_as(notification, ItemCodec::Gzip)
}

/// [`extract`], the item compressed with `codec`.
pub fn extract_as(notification: &Notification, codec: ItemCodec) -> Extracted {
    let item = notification.item();
    let topic = notification.topic().as_str();
    let kind = match item.get("type").and_then(Value::as_str) {
        Some(kind) if MIRRORED_TYPES.contains(&kind) => kind,
        _ => return Extracted::NotMirrored,
    };
    let created_ms = notification.envelope.created_at.map(|s| s.saturating_mul(1000));
    let deletion = topic.ends_with(".deleted") || item.get("deleted").and_then(Value::as_bool) == Some(true);
    // `conversation.deleted` names its object `conversation_id` only; a ticket's `ticket_id` is its
    // number shown to people, not its id.
    let id = ["id".to_owned(), format!("{kind}_id")]
        .iter()
        .find_map(|field| item.get(field.as_str()).and_then(id_text));
    let Some(id) = id else {
        return Extracted::NotMirrored;
    };
    let key = MirrorKey {
        app_id: notification
            .app_id()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default(),
        kind: kind.to_owned(),
        id,
    };
    let notification_id = notification.id.as_str().to_owned();
    if deletion {
        // A tombstone is as new as the deletion; without a time there is nothing to compare. The
        // notification's `created_at` is whole seconds: the deletion may come late in that second, and an
        // update made earlier in it (a contact's `updated_at` has milliseconds) must not outrank it.
        let Some(at_ms) = created_ms.map(|ms| ms + 999) else {
            return Extracted::Unversioned(key);
        };
        return Extracted::Write(MirrorWrite {
            key,
            version: Version {
                at_ms,
                tiebreak_ms: at_ms,
            },
            deleted: true,
            notification_id,
            item: None,
            truncated: false,
        });
    }
    let Some(at_ms) = item.get("updated_at").and_then(instant_ms) else {
        return Extracted::Unversioned(key);
    };
    let (stored, truncated) = stored_item(item, codec);
    // A reconciled copy (`<type>.reconciled`, made from the search API) of a version the mirror already
    // holds from a webhook loses the tie: the delivered copy is kept (with its conversation parts and
    // original shapes) and the state handlers do not run again for it.
    let tiebreak_ms = if topic.ends_with(RECONCILED_SUFFIX) {
        0
    } else {
        created_ms.unwrap_or(0)
    };
    Extracted::Write(MirrorWrite {
        key,
        version: Version { at_ms, tiebreak_ms },
        deleted: false,
        notification_id,
        item: Some(stored),
        truncated,
    })
}

/// An object id: a non-empty string, or a number as text.
pub fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An `updated_at` as Unix ms: whole or fractional Unix seconds, or an RFC 3339 time with any offset.
pub fn instant_ms(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => {
            if let Some(seconds) = n.as_i64() {
                seconds.checked_mul(1000)
            } else {
                n.as_f64()
                    .filter(|s| s.is_finite() && s.abs() < 1e14)
                    .map(|s| (s * 1000.0).round() as i64)
            }
        }
        Value::String(text) => {
            let text = text.trim();
            if let Ok(seconds) = text.parse::<i64>() {
                return seconds.checked_mul(1000);
            }
            text.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond())
        }
        _ => None,
    }
}

/// Unix ms as an RFC 3339 time in UTC (`2026-01-10T04:22:28.238Z`).
pub fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// The item compressed, and whether it had to be cut to fit [`MAX_STORED_ITEM_BYTES`].
fn stored_item(item: &Value, codec: ItemCodec) -> (Vec<u8>, bool) {
    let whole = serde_json::to_vec(item).unwrap_or_default();
    let compressed = codec.encode(&whole);
    if compressed.len() <= MAX_STORED_ITEM_BYTES {
        return (compressed, false);
    }
    (codec.encode(&truncate(item, MAX_STORED_ITEM_BYTES)), true)
}

/// [`ItemCodec::Gzip`]. DynamoDB bills a write per started KB of the item: Intercom's objects shrink to a
/// third to a half, so a typical conversation or contact with its keys is one write unit with a few
/// hundred bytes to spare (LZ4, used before, left conversations a few dozen bytes under the second unit
/// and a contact over it).
fn gzip(json: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::GzBuilder::new().write(
        Vec::with_capacity(json.len() / 2 + 32),
        flate2::Compression::default(),
    );
    encoder
        .write_all(json)
        .and_then(|()| encoder.finish())
        .expect("a Vec takes every write")
}

/// The fields that identify and version the object, then the others smallest first while the JSON stays
/// within `budget` bytes uncompressed (so compressed too), marked `"truncated": true`.
fn truncate(item: &Value, budget: usize) -> Vec<u8> {
    const KEEP: [&str; 6] = [
        "type",
        "id",
        "conversation_id",
        "updated_at",
        "created_at",
        "state",
    ];
    let Value::Object(fields) = item else {
        return b"{\"truncated\":true}".to_vec();
    };
    let mut kept = Map::new();
    kept.insert("truncated".into(), Value::Bool(true));
    for name in KEEP {
        if let Some(value) = fields.get(name) {
            kept.insert(name.into(), value.clone());
        }
    }
    let mut size = serde_json::to_vec(&kept).map(|v| v.len()).unwrap_or(0);
    let mut rest: Vec<(&String, &Value, usize)> = fields
        .iter()
        .filter(|(name, _)| !kept.contains_key(name.as_str()))
        .map(|(name, value)| {
            let bytes = serde_json::to_vec(value)
                .map(|v| v.len())
                .unwrap_or(usize::MAX / 2);
            (name, value, bytes + name.len() + 4)
        })
        .collect();
    rest.sort_by_key(|(_, _, bytes)| *bytes);
    for (name, value, bytes) in rest {
        if size + bytes > budget {
            break;
        }
        size += bytes;
        kept.insert(name.clone(), value.clone());
    }
    serde_json::to_vec(&Value::Object(kept)).unwrap_or_default()
}

/// A stored item back as JSON, in either [`ItemCodec`]: a gzip member, or an LZ4 block with its size in
/// front (what `serve` writes, and what the DynamoDB mirror held before gzip). An LZ4 item whose size
/// happens to begin with gzip's magic bytes fails gzip's checks (CRC-32 and length) and is read as LZ4.
pub fn decode_item(key: &MirrorKey, stored: &[u8]) -> Result<Value, MirrorError> {
    let corrupt = |why: String| MirrorError::Corrupt(key.to_string(), why);
    let json = if stored.starts_with(&GZIP_MAGIC) {
        match gunzip(stored) {
            Ok(json) => json,
            Err(gzip) => unlz4(stored).map_err(|_| corrupt(gzip))?,
        }
    } else {
        unlz4(stored).map_err(corrupt)?
    };
    serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))
}

/// An LZ4 block with its length in front, at most [`MAX_ITEM_JSON_BYTES`]: a damaged length is refused
/// before anything is allocated for it.
fn unlz4(stored: &[u8]) -> Result<Vec<u8>, String> {
    let length = stored
        .first_chunk::<4>()
        .map(|prefix| u32::from_le_bytes(*prefix) as u64)
        .ok_or("lz4: shorter than its length")?;
    if length > MAX_ITEM_JSON_BYTES {
        return Err(format!(
            "lz4: a length of {length} bytes, past {MAX_ITEM_JSON_BYTES}"
        ));
    }
    lz4_flex::decompress_size_prepended(stored).map_err(|e| format!("lz4: {e}"))
}

/// One gzip member inflated, at most [`MAX_ITEM_JSON_BYTES`].
fn gunzip(stored: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut json = Vec::with_capacity(stored.len() * 3);
    flate2::read::GzDecoder::new(stored)
        .take(MAX_ITEM_JSON_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(|e| format!("gzip: {e}"))?;
    if json.len() as u64 > MAX_ITEM_JSON_BYTES {
        return Err(format!("gzip: inflates past {MAX_ITEM_JSON_BYTES} bytes"));
    }
    Ok(json)
}

/// The built-in state handler: applies each notification to the mirror. The worker runs it before the
/// other handlers; its verdict skips the state handlers for a stale notification.
pub struct MirrorHandler {
    mirror: Arc<dyn Mirror>,
    metrics: Option<Arc<Metrics>>,
}

impl MirrorHandler {
    pub fn new(mirror: Arc<dyn Mirror>) -> Self {
        Self {
            mirror,
            metrics: None,
        }
    }

    /// Counts writes by result (`mirror_writes{result=written|unchanged|stale}`) and truncated items.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        Self {
            metrics: Some(metrics),
            ..self
        }
    }

    fn count(&self, name: &str, labels: &[(&str, &str)]) {
        if let Some(metrics) = &self.metrics {
            metrics.incr(name, labels);
        }
    }
}

#[async_trait]
impl Versions for MirrorHandler {
    async fn record(&self, notification: &Notification) -> Result<Freshness, HandlerError> {
        let write = match extract_as(notification, self.mirror.codec()) {
            Extracted::Write(write) => write,
            Extracted::Unversioned(_) | Extracted::NotMirrored => return Ok(Freshness::Unversioned),
        };
        let applied = self
            .mirror
            .apply(&write)
            .await
            .map_err(|e| HandlerError::retryable(e.to_string()))?;
        let result = match applied {
            Applied::Written => "written",
            Applied::Unchanged => "unchanged",
            Applied::Stale => "stale",
        };
        self.count("mirror_writes", &[("type", &write.key.kind), ("result", result)]);
        if write.truncated && applied == Applied::Written {
            self.count("mirror_truncated", &[("type", &write.key.kind)]);
            tracing::warn!(key = %write.key, "item too large for the mirror: kept its identity, version and the fields that fit");
        }
        Ok(match applied {
            Applied::Written | Applied::Unchanged => Freshness::Newest,
            Applied::Stale => Freshness::Stale,
        })
    }
}

#[async_trait]
impl Handler for MirrorHandler {
    fn name(&self) -> &str {
        "mirror"
    }

    fn wants(&self) -> Wants {
        Wants::Newest
    }

    fn versions(&self) -> Option<&dyn Versions> {
        Some(self)
    }

    async fn handle(&self, notification: &Notification, _: &HandlerContext) -> Result<(), HandlerError> {
        self.record(notification).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(topic: &str, created_at: i64, item: Value) -> Notification {
        let body = serde_json::json!({
            "type": "notification_event", "app_id": "abc", "id": "notif_1", "topic": topic,
            "created_at": created_at, "data": {"type": "notification_event_data", "item": item},
        });
        Notification::parse(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    fn write(n: &Notification) -> MirrorWrite {
        match extract(n) {
            Extracted::Write(w) => w,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn versions_in_either_shape_compare_as_instants() {
        assert_eq!(
            instant_ms(&serde_json::json!(1553291389)),
            Some(1_553_291_389_000)
        );
        assert_eq!(
            instant_ms(&serde_json::json!(1553291389.5)),
            Some(1_553_291_389_500)
        );
        assert_eq!(
            instant_ms(&serde_json::json!("1553291389")),
            Some(1_553_291_389_000)
        );
        assert_eq!(
            instant_ms(&serde_json::json!("2026-01-10T04:22:28.238+00:00")),
            Some(1_768_018_948_238)
        );
        assert_eq!(
            instant_ms(&serde_json::json!("2026-01-10T05:22:28.238+01:00")),
            Some(1_768_018_948_238)
        );
        assert_eq!(
            instant_ms(&serde_json::json!("2026-01-10T04:22:28Z")),
            Some(1_768_018_948_000)
        );
        for bad in [
            serde_json::json!("yesterday"),
            serde_json::json!(null),
            serde_json::json!(true),
        ] {
            assert_eq!(instant_ms(&bad), None, "{bad}");
        }
        assert_eq!(rfc3339(1_768_018_948_238), "2026-01-10T04:22:28.238Z");
    }

    #[test]
    fn a_conversation_is_versioned_by_updated_at_then_created_at() {
        let n = notification(
            "conversation.admin.replied",
            1553291112,
            serde_json::json!({"type": "conversation", "id": "215", "updated_at": 1553291111}),
        );
        let w = write(&n);
        assert_eq!(
            w.key,
            MirrorKey {
                app_id: "abc".into(),
                kind: "conversation".into(),
                id: "215".into()
            }
        );
        assert_eq!(
            w.version,
            Version {
                at_ms: 1_553_291_111_000,
                tiebreak_ms: 1_553_291_112_000
            }
        );
        assert!(!w.deleted && !w.truncated);
        let item = decode_item(&w.key, w.item.as_ref().unwrap()).unwrap();
        assert_eq!(item["id"], "215");
    }

    #[test]
    fn deletions_leave_tombstones_at_the_deletion_time() {
        let contact = notification(
            "contact.deleted",
            1768019869,
            serde_json::json!({"type": "contact", "id": "6961", "external_id": "1", "deleted": true}),
        );
        let w = write(&contact);
        assert!(w.deleted && w.item.is_none());
        assert_eq!(w.key.id, "6961");
        assert_eq!(
            w.version.at_ms, 1_768_019_869_999,
            "the end of the deletion's second"
        );
        // An update made in the same second, delivered late, does not resurrect the contact.
        let same_second = notification(
            "contact.updated",
            1768019870,
            serde_json::json!({"type": "contact", "id": "6961", "updated_at": "2026-01-10T04:37:49.500Z"}),
        );
        assert!(write(&same_second).version < w.version);
        let conversation = notification(
            "conversation.deleted",
            1768019869,
            serde_json::json!({"type": "conversation", "conversation_id": "215"}),
        );
        let w = write(&conversation);
        assert!(w.deleted);
        assert_eq!((w.key.kind.as_str(), w.key.id.as_str()), ("conversation", "215"));
    }

    #[test]
    fn what_is_not_a_whole_versioned_object_is_not_written() {
        let tag = notification(
            "contact.lead.tag.created",
            1,
            serde_json::json!({"type": "contact_tag", "contact": {"type": "contact", "id": "1"}}),
        );
        assert_eq!(extract(&tag), Extracted::NotMirrored);
        let visitor = notification(
            "visitor.signed_up",
            1,
            serde_json::json!({"type": "user", "id": "9", "updated_at": 5}),
        );
        assert_eq!(extract(&visitor), Extracted::NotMirrored);
        let ticket = notification(
            "ticket.created",
            1,
            serde_json::json!({"type": "ticket", "id": "215", "ticket_id": "3", "updated_at": 5}),
        );
        assert_eq!(write(&ticket).key.id, "215", "the id, not the ticket number");
        let unversioned = notification(
            "ticket.created",
            1,
            serde_json::json!({"type": "ticket", "id": "7"}),
        );
        assert!(matches!(extract(&unversioned), Extracted::Unversioned(k) if k.id == "7"));
    }

    #[test]
    fn an_item_too_large_keeps_its_identity_version_and_what_fits() {
        // Random hex, which deflate shrinks to about half: about 960 KB in 500 parts.
        let parts: Vec<Value> = (0..500)
            .map(|_| {
                let text: String = (0..60)
                    .map(|_| uuid::Uuid::new_v4().simple().to_string())
                    .collect();
                serde_json::json!({"type": "conversation_part", "body": text})
            })
            .collect();
        let item = serde_json::json!({
            "type": "conversation", "id": "big", "updated_at": 1700000000, "state": "open",
            "title": "small field", "conversation_parts": {"conversation_parts": parts},
        });
        let w = write(&notification("conversation.user.replied", 1700000001, item));
        assert!(w.truncated);
        assert!(w.item.as_ref().unwrap().len() <= MAX_STORED_ITEM_BYTES);
        let kept = decode_item(&w.key, w.item.as_ref().unwrap()).unwrap();
        assert_eq!(kept["id"], "big");
        assert_eq!(kept["updated_at"], 1700000000);
        assert_eq!(kept["title"], "small field");
        assert_eq!(kept["truncated"], true);
        assert!(kept.get("conversation_parts").is_none());
    }

    #[test]
    fn items_are_stored_as_gzip_any_reader_opens() {
        use std::io::Read;
        let item =
            serde_json::json!({"type": "contact", "id": "c1", "updated_at": 1_700_000_000, "name": "Zoë"});
        let w = write(&notification("contact.user.created", 1_700_000_001, item.clone()));
        let stored = w.item.as_ref().unwrap();
        assert!(stored.starts_with(&GZIP_MAGIC));
        let mut json = String::new();
        flate2::read::GzDecoder::new(stored.as_slice())
            .read_to_string(&mut json)
            .unwrap();
        assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), item);
        assert_eq!(decode_item(&w.key, stored).unwrap(), item);

        // Items small and large, compressible or not (random bytes grow a little).
        let random: Vec<u8> = (0..20_000)
            .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
            .collect();
        for input in [b"{}".to_vec(), random, br#"{"a":"b"}"#.repeat(10_000), Vec::new()] {
            let stored = ItemCodec::Gzip.encode(&input);
            let mut inflated = Vec::new();
            flate2::read::GzDecoder::new(stored.as_slice())
                .read_to_end(&mut inflated)
                .unwrap();
            assert_eq!(inflated, input);
        }
    }

    #[test]
    fn items_written_as_lz4_before_are_still_read() {
        let key = MirrorKey {
            app_id: "abc".into(),
            kind: "contact".into(),
            id: "c1".into(),
        };
        let item = serde_json::json!({"type": "contact", "id": "c1", "updated_at": 1_700_000_000});
        let old = lz4_flex::compress_prepend_size(&serde_json::to_vec(&item).unwrap());
        assert_eq!(decode_item(&key, &old).unwrap(), item);
        // An LZ4 item of 0x088b1f bytes begins with gzip's magic (1f 8b 08): gzip's checks refuse it, and it
        // is read as LZ4.
        let filler = "x".repeat(0x08_8b1f - r#"{"a":""}"#.len());
        let json = format!(r#"{{"a":"{filler}"}}"#);
        assert_eq!(json.len(), 0x08_8b1f);
        let lookalike = lz4_flex::compress_prepend_size(json.as_bytes());
        assert!(lookalike.starts_with(&GZIP_MAGIC));
        assert_eq!(
            decode_item(&key, &lookalike).unwrap()["a"]
                .as_str()
                .unwrap()
                .len(),
            filler.len()
        );
    }

    #[test]
    fn a_damaged_item_is_an_error_naming_the_object() {
        let key = MirrorKey {
            app_id: "abc".into(),
            kind: "contact".into(),
            id: "c1".into(),
        };
        let mut stored = ItemCodec::Gzip.encode(br#"{"type":"contact","id":"c1"}"#);
        let last = stored.len() - 5;
        stored[last] ^= 0xff; // the CRC-32
        let error = decode_item(&key, &stored).unwrap_err().to_string();
        assert!(
            error.contains("abc/contact/c1") && error.contains("gzip"),
            "{error}"
        );
        assert!(decode_item(&key, b"\x01\x02").is_err());
        // An LZ4 item whose length says 4 GiB is refused before anything is allocated for it.
        let mut huge = ItemCodec::Lz4.encode(br#"{"type":"contact","id":"c1"}"#);
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let error = decode_item(&key, &huge).unwrap_err().to_string();
        assert!(
            error.contains("abc/contact/c1") && error.contains("past"),
            "{error}"
        );
    }

    #[test]
    fn a_reconciled_copy_loses_the_tie_with_a_delivered_one() {
        let item = serde_json::json!({"type": "ticket", "id": "7", "updated_at": 1_700_000_000});
        let delivered = write(&notification("ticket.state.updated", 1_700_000_001, item.clone()));
        let reconciled = write(&notification("ticket.reconciled", 1_800_000_000, item.clone()));
        assert!(reconciled.version < delivered.version);
        let newer = serde_json::json!({"type": "ticket", "id": "7", "updated_at": 1_700_000_002});
        assert!(write(&notification("ticket.reconciled", 1_800_000_000, newer)).version > delivered.version);
    }

    #[test]
    fn versions_order_by_time_then_notification() {
        let older = Version {
            at_ms: 1000,
            tiebreak_ms: 5000,
        };
        let newer = Version {
            at_ms: 2000,
            tiebreak_ms: 0,
        };
        let tie_later = Version {
            at_ms: 1000,
            tiebreak_ms: 6000,
        };
        assert!(older < newer && older < tie_later && tie_later < newer);
    }
}
