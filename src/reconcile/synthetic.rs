//! The synthetic notification for one object found by a search: Intercom's own envelope, topic
//! `<type>.reconciled`, `data.item` the object as the search returned it, and an id derived from (app,
//! type, object id, `updated_at`), so that the same version reconciled twice is one notification to the
//! worker (the second is a duplicate).

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::ObjectType;
use crate::receiving::notification::{Envelope, EnvelopeError};

/// A notification ready to enqueue.
#[derive(Clone, Debug)]
pub struct Reconciled {
    pub id: String,
    pub object_id: String,
    pub updated_at_ms: i64,
    /// The body as a receiver would store it.
    pub body: Vec<u8>,
    pub envelope: Envelope,
}

/// `notif_reconciled_<32 hex>`: the same for the same (app, type, object id, version).
pub fn notification_id(app_id: &str, kind: ObjectType, object_id: &str, updated_at_ms: i64) -> String {
    let mut hash = Sha256::new();
    for part in [app_id, kind.item_type(), object_id, &updated_at_ms.to_string()] {
        // Length-prefixed, so that no two different tuples hash the same bytes.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    format!("notif_reconciled_{}", hex::encode(&digest[..16]))
}

/// The notification for `object` (which must carry `id` and `updated_at`), created at `now_s`.
pub fn notification(
    app_id: &str,
    kind: ObjectType,
    object_id: &str,
    updated_at_ms: i64,
    object: &Value,
    now_s: i64,
) -> Result<Reconciled, EnvelopeError> {
    let id = notification_id(app_id, kind, object_id, updated_at_ms);
    let body = json!({
        "type": "notification_event",
        "app_id": app_id,
        "data": {"type": "notification_event_data", "item": object},
        "links": {},
        "id": id,
        "topic": kind.topic(),
        "delivery_status": "pending",
        "delivery_attempts": 1,
        "delivered_at": 0,
        "first_sent_at": now_s,
        "created_at": now_s,
        "self": null,
    });
    let body = serde_json::to_vec(&body).expect("JSON values serialize");
    let envelope = Envelope::parse(&body)?;
    Ok(Reconciled {
        id,
        object_id: object_id.to_owned(),
        updated_at_ms,
        body,
        envelope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processing::mirror::{extract, Extracted};
    use crate::receiving::notification::Notification;

    #[test]
    fn ids_are_deterministic_and_distinct_per_version() {
        let a = notification_id("app", ObjectType::Conversation, "1", 1_000);
        assert_eq!(a, notification_id("app", ObjectType::Conversation, "1", 1_000));
        assert!(a.starts_with("notif_reconciled_") && a.len() == "notif_reconciled_".len() + 32);
        for other in [
            notification_id("app", ObjectType::Conversation, "1", 2_000),
            notification_id("app", ObjectType::Contact, "1", 1_000),
            notification_id("ap", ObjectType::Conversation, "p1", 1_000),
            notification_id("app2", ObjectType::Conversation, "1", 1_000),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn the_notification_is_a_real_envelope_the_mirror_takes() {
        let object = json!({"type": "contact", "id": "c1", "updated_at": 1_700_000_000, "name": "Ada"});
        let n = notification(
            "abc",
            ObjectType::Contact,
            "c1",
            1_700_000_000_000,
            &object,
            1_700_000_100,
        )
        .unwrap();
        let parsed = Notification::parse(&n.body).unwrap();
        assert_eq!(parsed.topic().as_str(), "contact.reconciled");
        assert_eq!(parsed.app_id().unwrap().as_str(), "abc");
        assert_eq!(parsed.item(), &object);
        assert_eq!(parsed.id.as_str(), n.id);
        let Extracted::Write(write) = extract(&parsed) else {
            panic!("the mirror writes a reconciled contact")
        };
        assert_eq!(write.version.at_ms, 1_700_000_000_000);
    }
}
