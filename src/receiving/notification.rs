//! The Intercom notification envelope, parsed tolerantly: unknown fields are ignored and `data` is kept
//! as raw JSON until a handler asks for its typed model.

use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The topic Intercom uses to validate a subscription; it carries no id and is never queued.
pub const PING_TOPIC: &str = "ping";

macro_rules! non_empty_string {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Rejects an empty or whitespace-only value.
            pub fn parse(value: impl Into<String>) -> Result<Self, EnvelopeError> {
                let value = value.into();
                if value.trim().is_empty() {
                    Err(EnvelopeError::Empty($what))
                } else {
                    Ok(Self(value))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

non_empty_string!(
    /// A notification's `id` (`notif_…`): the idempotency key.
    NotificationId,
    "id"
);
non_empty_string!(
    /// A notification's `topic`, such as `conversation.user.created`.
    Topic,
    "topic"
);
non_empty_string!(
    /// The Intercom workspace (app) a notification comes from.
    AppId,
    "app_id"
);

impl Topic {
    pub fn is_ping(&self) -> bool {
        self.0 == PING_TOPIC
    }
}

/// A parsed notification envelope. `id` is absent only for `ping`.
#[derive(Clone, Debug)]
pub struct Envelope {
    pub kind: Option<String>,
    pub id: Option<NotificationId>,
    pub topic: Topic,
    pub app_id: Option<AppId>,
    pub created_at: Option<i64>,
    pub delivery_attempts: Option<u32>,
    pub first_sent_at: Option<i64>,
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    app_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    created_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient_u32")]
    delivery_attempts: Option<u32>,
    #[serde(default, deserialize_with = "lenient_i64")]
    first_sent_at: Option<i64>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

impl Envelope {
    /// Parses the raw body of a delivery. Fails on invalid JSON, a missing or empty `topic`, and a
    /// missing `id` on any topic but `ping`.
    pub fn parse(body: &[u8]) -> Result<Self, EnvelopeError> {
        let wire: Wire = serde_json::from_slice(body).map_err(|e| {
            if !e.is_data() {
                return EnvelopeError::InvalidJson(e.to_string());
            }
            // A type error can hide a syntax error further on (`[1,2` fails at its first element,
            // before the missing bracket): report invalid JSON as such. Only on this error path.
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Err(syntax) if !syntax.is_data() => EnvelopeError::InvalidJson(syntax.to_string()),
                _ => EnvelopeError::NotAnObject(e.to_string()),
            }
        })?;
        let topic = Topic::parse(wire.topic.ok_or(EnvelopeError::Missing("topic"))?)?;
        let id = match wire.id {
            Some(id) => Some(NotificationId::parse(id)?),
            None if topic.is_ping() => None,
            None => return Err(EnvelopeError::Missing("id")),
        };
        let app_id = wire.app_id.filter(|a| !a.trim().is_empty()).map(AppId);
        Ok(Self {
            kind: wire.kind,
            id,
            topic,
            app_id,
            created_at: wire.created_at,
            delivery_attempts: wire.delivery_attempts,
            first_sent_at: wire.first_sent_at,
            data: wire.data,
        })
    }

    pub fn is_ping(&self) -> bool {
        self.topic.is_ping()
    }

    /// The raw `data` object (`{"type": "notification_event_data", "item": {…}}`), if present.
    pub fn data_raw(&self) -> Option<&str> {
        self.data.as_deref().map(RawValue::get)
    }

    /// `data` as JSON (`null` when absent).
    pub fn data(&self) -> serde_json::Value {
        self.data_raw()
            .and_then(|raw| serde_json::from_str(raw).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// `data.item` as JSON (`null` when absent).
    pub fn item(&self) -> serde_json::Value {
        match self.data() {
            serde_json::Value::Object(mut map) => map.remove("item").unwrap_or_default(),
            _ => serde_json::Value::Null,
        }
    }
}

/// A notification ready for handlers: an envelope with an id, and its `data` parsed.
#[derive(Clone, Debug)]
pub struct Notification {
    pub envelope: Envelope,
    pub id: NotificationId,
    /// The whole `data` object (`{"type": …, "item": {…}}`).
    pub data: serde_json::Value,
    /// The body exactly as Intercom sent it (what its signature covers).
    pub raw: bytes::Bytes,
}

impl Notification {
    /// Parses a queued body. Fails like [`Envelope::parse`], and also on a `ping` (never queued).
    pub fn parse(body: &[u8]) -> Result<Self, EnvelopeError> {
        let envelope = Envelope::parse(body)?;
        let id = envelope.id.clone().ok_or(EnvelopeError::Missing("id"))?;
        let data = envelope.data();
        Ok(Self {
            envelope,
            id,
            data,
            raw: bytes::Bytes::copy_from_slice(body),
        })
    }

    pub fn topic(&self) -> &Topic {
        &self.envelope.topic
    }

    pub fn app_id(&self) -> Option<&AppId> {
        self.envelope.app_id.as_ref()
    }

    /// `data.item` (`null` when absent).
    pub fn item(&self) -> &serde_json::Value {
        self.data.get("item").unwrap_or(&serde_json::Value::Null)
    }

    /// `data.item` as a typed model.
    pub fn typed_item(&self) -> crate::processing::models::Item {
        crate::processing::models::Item::parse(self.item())
    }
}

/// Why a body cannot be given another id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenameError {
    #[error("it is not JSON: {0}")]
    NotJson(String),
    #[error("it is not a JSON object")]
    NotAnObject,
}

/// The notification with `id` as its id, pretty-printed as Intercom sends it (`send --fresh-id`, a replay
/// with a fresh id). A `ping` keeps its null id.
pub fn with_id(body: &[u8], id: &str) -> Result<Vec<u8>, RenameError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| RenameError::NotJson(e.to_string()))?;
    let object = value.as_object_mut().ok_or(RenameError::NotAnObject)?;
    if object.get("topic").and_then(|t| t.as_str()) != Some("ping") {
        object.insert("id".into(), id.into());
    }
    Ok(serde_json::to_vec_pretty(&value).expect("a JSON value always serialises"))
}

/// What can be read of a body that is not a notification (no id, a topic of the wrong type, …): its
/// `topic`, `id` and `app_id` where they are non-empty strings, so that its dead letter can still be found
/// by topic. Empty when the body is not a JSON object.
pub fn salvage(body: &[u8]) -> Vec<(&'static str, String)> {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    [
        ("topic", crate::receiving::queue::attr::TOPIC),
        ("id", crate::receiving::queue::attr::NOTIFICATION_ID),
        ("app_id", crate::receiving::queue::attr::APP_ID),
    ]
    .into_iter()
    .filter_map(|(field, attribute)| {
        let value = object.get(field)?.as_str()?.trim();
        (!value.is_empty()).then(|| (attribute, value.to_owned()))
    })
    .collect()
}

/// Timestamps and counters arrive as numbers; tolerate strings and nulls rather than refuse a delivery.
fn lenient_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

fn lenient_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Ok(lenient_i64(d)?.and_then(|n| u32::try_from(n).ok()))
}

/// Why a body is not a notification. Never retryable: the same bytes will fail the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the body is not a notification object: {0}")]
    NotAnObject(String),
    #[error("the notification has no `{0}`")]
    Missing(&'static str),
    #[error("the notification's `{0}` is empty")]
    Empty(&'static str),
}

impl EnvelopeError {
    /// A short stable code, for message attributes and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            EnvelopeError::InvalidJson(_) => "invalid_json",
            EnvelopeError::NotAnObject(_) => "not_a_notification",
            EnvelopeError::Missing(_) => "missing_field",
            EnvelopeError::Empty(_) => "empty_field",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/events/notifications/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn every_fixture_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/events/notifications");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let body = std::fs::read(&path).unwrap();
            let env = Envelope::parse(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                env.kind.as_deref(),
                Some("notification_event"),
                "{}",
                path.display()
            );
            assert!(env.item().is_object(), "{}", path.display());
            if env.is_ping() {
                assert!(env.id.is_none());
            } else {
                assert!(env.id.as_ref().unwrap().as_str().starts_with("notif_"));
            }
            seen += 1;
        }
        assert_eq!(seen, 10);
    }

    #[test]
    fn envelope_fields() {
        let env = Envelope::parse(&fixture("conversation_user_created.json")).unwrap();
        assert_eq!(
            env.id.unwrap().as_str(),
            "notif_3ac27816-d27c-45fd-a65a-bbaf021cf780"
        );
        assert_eq!(env.topic.as_str(), "conversation.user.created");
        assert_eq!(env.app_id.unwrap().as_str(), "i6wc9ipe");
        assert_eq!(env.created_at, Some(1553290198));
        assert_eq!(env.first_sent_at, Some(1553290198));
        assert_eq!(env.delivery_attempts, Some(1));

        let ping = Envelope::parse(&fixture("ping.json")).unwrap();
        assert!(ping.is_ping());
        assert_eq!(ping.item()["type"], "ping");
    }

    #[test]
    fn tolerant_of_unknown_fields_and_odd_types() {
        let env = Envelope::parse(
            br#"{"id":"notif_1","topic":"x.y","new_field":{"a":1},"created_at":"17","delivery_attempts":null}"#,
        )
        .unwrap();
        assert_eq!(env.created_at, Some(17));
        assert_eq!(env.delivery_attempts, None);
        assert_eq!(env.data(), serde_json::Value::Null);
    }

    #[test]
    fn rejections() {
        let err = |b: &[u8]| Envelope::parse(b).unwrap_err();
        assert!(matches!(err(b"{not json"), EnvelopeError::InvalidJson(_)));
        assert!(matches!(err(b""), EnvelopeError::InvalidJson(_)));
        assert!(matches!(err(b"[1,2]"), EnvelopeError::NotAnObject(_)));
        for truncated in [&b"[1,2"[..], b"{\"topic\": 5, \"id\"", b"[\"a\", {"] {
            assert!(
                matches!(err(truncated), EnvelopeError::InvalidJson(_)),
                "{:?}: {:?}",
                String::from_utf8_lossy(truncated),
                err(truncated)
            );
        }
        assert!(matches!(
            err(br#"{"topic":5,"id":"a"}"#),
            EnvelopeError::NotAnObject(_)
        ));
        assert_eq!(err(br#"{"id":"notif_1"}"#), EnvelopeError::Missing("topic"));
        assert_eq!(
            err(br#"{"id":"notif_1","topic":" "}"#),
            EnvelopeError::Empty("topic")
        );
        assert_eq!(
            err(br#"{"topic":"contact.created"}"#),
            EnvelopeError::Missing("id")
        );
        assert_eq!(
            err(br#"{"topic":"contact.created","id":""}"#),
            EnvelopeError::Empty("id")
        );
        // A ping may carry an id or not.
        assert!(Envelope::parse(br#"{"topic":"ping","id":"notif_9"}"#)
            .unwrap()
            .is_ping());
    }

    #[test]
    fn a_body_that_is_not_a_notification_keeps_what_can_be_read_of_it() {
        assert_eq!(
            salvage(br#"{"topic": "contact.created", "app_id": "abc", "id": null}"#),
            [
                ("topic", "contact.created".to_owned()),
                ("app_id", "abc".to_owned())
            ]
        );
        assert_eq!(
            salvage(br#"{"topic": " ", "id": "notif_1"}"#),
            [("notification_id", "notif_1".to_owned())]
        );
        assert!(salvage(b"[1,2").is_empty());
        assert!(salvage(b"[1,2]").is_empty());
    }

    #[test]
    fn newtypes_reject_empty() {
        assert!(NotificationId::parse("").is_err());
        assert!(Topic::parse("\t").is_err());
        assert_eq!(Topic::parse("a.b").unwrap().to_string(), "a.b");
    }
}
