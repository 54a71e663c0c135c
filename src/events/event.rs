//! A Data Event that Intercom will accept as sent: parsed once, so the client never holds one that Intercom
//! would reject or silently trim.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::Value;

use super::metadata::{self, Metadata, MetadataProblem, MAX_METADATA_KEYS};
use super::timestamp::{parse_unix_seconds, TimestampProblem};

/// Longest `event_name` accepted. Intercom documents no limit; names are shown to admins in filters and
/// segments, and 255 characters is the bound its other short-text fields use.
pub const MAX_EVENT_NAME_CHARS: usize = 255;

/// The fields of the request body (`create_data_event_request`), for messages.
const FIELDS: &str = "event_name, created_at, user_id, id, email, metadata";

/// Which contact an event is about: exactly one of Intercom's three identifiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contact {
    /// Your identifier for the user (`user_id`).
    UserId(String),
    /// Intercom's identifier for the contact (`id`); the only one that works for leads.
    Id(String),
    /// The user's email address (`email`).
    Email(String),
}

impl Contact {
    /// The request field this identifier is sent in.
    pub fn field(&self) -> &'static str {
        match self {
            Contact::UserId(_) => "user_id",
            Contact::Id(_) => "id",
            Contact::Email(_) => "email",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Contact::UserId(v) | Contact::Id(v) | Contact::Email(v) => v,
        }
    }
}

impl fmt::Display for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.field(), self.value())
    }
}

/// A custom event about one contact, valid for `POST /events`. Build it with [`DataEvent::builder`] or
/// parse it from the API's JSON shape with [`DataEvent::from_json`]; both refuse what Intercom would
/// refuse or silently drop. Serializes to the request body.
#[derive(Clone, Debug, PartialEq)]
pub struct DataEvent {
    event_name: String,
    created_at: u64,
    contact: Contact,
    metadata: Metadata,
}

impl DataEvent {
    pub fn builder(event_name: impl Into<String>) -> DataEventBuilder {
        DataEventBuilder {
            event_name: Some(Value::String(event_name.into())),
            ..DataEventBuilder::default()
        }
    }

    /// Parses one event in the API's field names (`create_data_event_request`). A missing `created_at`
    /// becomes now. Unknown fields are refused, so a misspelt one is not dropped unnoticed.
    pub fn from_json(value: Value) -> Result<Self, EventError> {
        let Value::Object(object) = value else {
            return Err(EventError::NotAnObject);
        };
        let mut builder = DataEventBuilder::default();
        for (field, value) in object {
            match field.as_str() {
                "event_name" => builder.event_name = Some(value),
                "created_at" => builder.created_at = Some(value),
                "user_id" => builder.user_id = Some(value),
                "id" => builder.id = Some(value),
                "email" => builder.email = Some(value),
                "metadata" => match value {
                    Value::Object(entries) => builder.metadata = entries.into_iter().collect(),
                    Value::Null => {}
                    _ => {
                        return Err(EventError::WrongType {
                            field: "metadata".into(),
                            expected: "an object",
                        })
                    }
                },
                _ => return Err(EventError::UnknownField { field }),
            }
        }
        builder.build()
    }

    pub fn event_name(&self) -> &str {
        &self.event_name
    }

    /// When the event happened, in Unix seconds. Intercom ignores a second event with the same contact,
    /// name and `created_at`, which is what makes resending safe.
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    pub fn contact(&self) -> &Contact {
        &self.contact
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The request body as a JSON value.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a DataEvent always serializes")
    }
}

impl Serialize for DataEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let with_metadata = !self.metadata.is_empty();
        let mut map = serializer.serialize_map(Some(3 + usize::from(with_metadata)))?;
        map.serialize_entry("event_name", &self.event_name)?;
        map.serialize_entry("created_at", &self.created_at)?;
        map.serialize_entry(self.contact.field(), self.contact.value())?;
        if with_metadata {
            map.serialize_entry("metadata", &self.metadata)?;
        }
        map.end()
    }
}

impl<'de> serde::Deserialize<'de> for DataEvent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        DataEvent::from_json(value).map_err(serde::de::Error::custom)
    }
}

/// Collects an event's fields; [`DataEventBuilder::build`] checks them all at once.
#[derive(Clone, Debug, Default)]
pub struct DataEventBuilder {
    event_name: Option<Value>,
    created_at: Option<Value>,
    user_id: Option<Value>,
    id: Option<Value>,
    email: Option<Value>,
    metadata: Vec<(String, Value)>,
}

impl DataEventBuilder {
    pub fn user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(Value::String(user_id.into()));
        self
    }

    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(Value::String(id.into()));
        self
    }

    pub fn email(mut self, email: impl Into<String>) -> Self {
        self.email = Some(Value::String(email.into()));
        self
    }

    /// Unix seconds; without it the event is dated now.
    pub fn created_at(mut self, unix_seconds: u64) -> Self {
        self.created_at = Some(Value::from(unix_seconds));
        self
    }

    /// Adds a metadata key, or replaces its value if the key was already given.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        let key = key.into();
        let value = value.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    pub fn build(self) -> Result<DataEvent, EventError> {
        let event_name = parse_event_name(self.event_name)?;
        let contact = parse_contact(self.user_id, self.id, self.email)?;
        let created_at = match self.created_at {
            None | Some(Value::Null) => now_unix_seconds(),
            Some(value) => parse_unix_seconds(&value).map_err(|problem| EventError::CreatedAt { problem })?,
        };
        let metadata = parse_metadata(self.metadata)?;
        Ok(DataEvent {
            event_name,
            created_at,
            contact,
            metadata,
        })
    }
}

fn now_unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn parse_event_name(value: Option<Value>) -> Result<String, EventError> {
    let name = match value {
        None | Some(Value::Null) => return Err(EventError::EventNameEmpty),
        Some(Value::String(name)) => name,
        Some(_) => {
            return Err(EventError::WrongType {
                field: "event_name".into(),
                expected: "a string",
            })
        }
    };
    if name.trim().is_empty() {
        return Err(EventError::EventNameEmpty);
    }
    let length = name.chars().count();
    if length > MAX_EVENT_NAME_CHARS {
        return Err(EventError::EventNameTooLong { length });
    }
    Ok(name)
}

fn parse_contact(
    user_id: Option<Value>,
    id: Option<Value>,
    email: Option<Value>,
) -> Result<Contact, EventError> {
    let given: Vec<(&'static str, Value)> = [("user_id", user_id), ("id", id), ("email", email)]
        .into_iter()
        .filter_map(|(field, value)| value.filter(|v| !v.is_null()).map(|v| (field, v)))
        .collect();
    let (field, value) = match given.len() {
        0 => return Err(EventError::NoContact),
        1 => given.into_iter().next().expect("one element"),
        _ => {
            return Err(EventError::SeveralContacts {
                fields: given.iter().map(|(f, _)| *f).collect(),
            })
        }
    };
    let Value::String(value) = value else {
        return Err(EventError::WrongType {
            field: field.into(),
            expected: "a string",
        });
    };
    if value.trim().is_empty() {
        return Err(EventError::EmptyContact { field });
    }
    Ok(match field {
        "user_id" => Contact::UserId(value),
        "id" => Contact::Id(value),
        _ => {
            if !looks_like_email(&value) {
                return Err(EventError::InvalidEmail { value });
            }
            Contact::Email(value)
        }
    })
}

fn looks_like_email(value: &str) -> bool {
    match value.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && !domain.is_empty() && !value.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

fn parse_metadata(entries: Vec<(String, Value)>) -> Result<Metadata, EventError> {
    if entries.len() > MAX_METADATA_KEYS {
        return Err(EventError::TooManyMetadataKeys { count: entries.len() });
    }
    entries
        .into_iter()
        .map(|(key, value)| match metadata::parse_value(&key, value) {
            Ok(value) => Ok((key, value)),
            Err(problem) => Err(EventError::Metadata { key, problem }),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Metadata)
}

/// Why an event was refused. The message starts with the field it is about.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("an event must be a JSON object with the fields {FIELDS}")]
    NotAnObject,
    #[error("{field}: not a Data Event field (the fields are {FIELDS})")]
    UnknownField { field: String },
    #[error("{field}: must be {expected}")]
    WrongType { field: String, expected: &'static str },
    #[error("event_name: must not be empty")]
    EventNameEmpty,
    #[error("event_name: {length} characters, at most {MAX_EVENT_NAME_CHARS} are accepted")]
    EventNameTooLong { length: usize },
    #[error("no contact: give exactly one of user_id, id or email")]
    NoContact,
    #[error("{}: give exactly one of user_id, id or email, not several", fields.join(" and "))]
    SeveralContacts { fields: Vec<&'static str> },
    #[error("{field}: must not be empty")]
    EmptyContact { field: &'static str },
    #[error("email: {value:?} is not an email address")]
    InvalidEmail { value: String },
    #[error("created_at: {problem}")]
    CreatedAt { problem: TimestampProblem },
    #[error(
        "metadata: {count} keys, at most {MAX_METADATA_KEYS}; Intercom would keep the first \
         {MAX_METADATA_KEYS} and drop the rest without an error"
    )]
    TooManyMetadataKeys { count: usize },
    #[error("metadata.{key}: {problem}")]
    Metadata { key: String, problem: MetadataProblem },
}

impl EventError {
    /// The field the error is about (`metadata.<key>` for one metadata value), or `event` for the whole.
    pub fn field(&self) -> String {
        match self {
            EventError::NotAnObject => "event".into(),
            EventError::UnknownField { field } | EventError::WrongType { field, .. } => field.clone(),
            EventError::EventNameEmpty | EventError::EventNameTooLong { .. } => "event_name".into(),
            EventError::NoContact | EventError::SeveralContacts { .. } => "user_id/id/email".into(),
            EventError::EmptyContact { field } => (*field).into(),
            EventError::InvalidEmail { .. } => "email".into(),
            EventError::CreatedAt { .. } => "created_at".into(),
            EventError::TooManyMetadataKeys { .. } => "metadata".into(),
            EventError::Metadata { key, .. } => format!("metadata.{key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::events::MetadataValue;

    fn event(value: Value) -> Result<DataEvent, EventError> {
        DataEvent::from_json(value)
    }

    #[test]
    fn serializes_to_the_request_body() {
        let e = DataEvent::builder("invited-friend")
            .user_id("314159")
            .created_at(1_671_028_894)
            .metadata("invite_code", "ADDAFRIEND")
            .metadata("seats", 3)
            .metadata("price", json!({"amount": 34999, "currency": "eur"}))
            .metadata(
                "article",
                json!({"url": "https://example.org/a.html", "value": "the dude"}),
            )
            .metadata("signup_date", 1_392_036_272u64)
            .build()
            .unwrap();
        assert_eq!(
            e.to_json(),
            json!({
                "event_name": "invited-friend",
                "created_at": 1_671_028_894,
                "user_id": "314159",
                "metadata": {
                    "invite_code": "ADDAFRIEND",
                    "seats": 3,
                    "price": {"amount": 34999, "currency": "eur"},
                    "article": {"url": "https://example.org/a.html", "value": "the dude"},
                    "signup_date": 1_392_036_272u64,
                }
            })
        );
        // Keys keep the order they were given in: Intercom keeps metadata in sending order.
        let text = serde_json::to_string(&e).unwrap();
        assert!(
            text.find("invite_code").unwrap() < text.find("signup_date").unwrap(),
            "{text}"
        );
        assert_eq!(
            e.metadata().get("signup_date"),
            Some(&MetadataValue::Date(1_392_036_272))
        );
    }

    #[test]
    fn no_metadata_means_no_metadata_field() {
        let e = DataEvent::builder("a")
            .email("a@b.example")
            .created_at(5)
            .build()
            .unwrap();
        assert_eq!(
            e.to_json(),
            json!({"event_name": "a", "created_at": 5, "email": "a@b.example"})
        );
    }

    #[test]
    fn json_round_trips() {
        let body = json!({
            "event_name": "ordered", "created_at": 1_700_000_000, "id": "8a88a590",
            "metadata": {"order_id": "A-1", "total": 12.5}
        });
        let e = event(body.clone()).unwrap();
        assert_eq!(e.contact(), &Contact::Id("8a88a590".into()));
        assert_eq!(e.to_json(), body);
        let again: DataEvent = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(again, e);
    }

    #[test]
    fn created_at_defaults_to_now_in_whole_seconds() {
        let before = now_unix_seconds();
        let e = DataEvent::builder("a").user_id("u").build().unwrap();
        let after = now_unix_seconds();
        assert!(before <= e.created_at() && e.created_at() <= after);
        let parsed = event(json!({"event_name": "a", "user_id": "u"})).unwrap();
        assert!(parsed.created_at() >= before);
    }

    #[test]
    fn event_name_must_be_present_and_short() {
        assert_eq!(
            event(json!({"user_id": "u"})).unwrap_err(),
            EventError::EventNameEmpty
        );
        let blank = DataEvent::builder("  ").user_id("u").build().unwrap_err();
        assert_eq!(blank, EventError::EventNameEmpty);
        assert_eq!(blank.field(), "event_name");
        let long = "x".repeat(MAX_EVENT_NAME_CHARS + 1);
        let err = DataEvent::builder(long).user_id("u").build().unwrap_err();
        assert_eq!(err, EventError::EventNameTooLong { length: 256 });
        assert!(err.to_string().starts_with("event_name: 256 characters"), "{err}");
        let longest = "é".repeat(MAX_EVENT_NAME_CHARS);
        assert!(DataEvent::builder(longest).user_id("u").build().is_ok());
        assert_eq!(
            event(json!({"event_name": 3, "user_id": "u"})).unwrap_err(),
            EventError::WrongType {
                field: "event_name".into(),
                expected: "a string"
            }
        );
    }

    #[test]
    fn exactly_one_contact_identifier() {
        let err = DataEvent::builder("a").build().unwrap_err();
        assert_eq!(err, EventError::NoContact);
        let err = DataEvent::builder("a")
            .user_id("u")
            .email("e@x.io")
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            EventError::SeveralContacts {
                fields: vec!["user_id", "email"]
            }
        );
        assert!(
            err.to_string().starts_with("user_id and email: give exactly one"),
            "{err}"
        );
        let err = event(json!({"event_name": "a", "id": "1", "user_id": "2", "email": "a@b.c"})).unwrap_err();
        assert_eq!(
            err,
            EventError::SeveralContacts {
                fields: vec!["user_id", "id", "email"]
            }
        );
        // An explicit null is the same as leaving the field out.
        assert!(event(json!({"event_name": "a", "id": "1", "user_id": null})).is_ok());
        assert_eq!(
            DataEvent::builder("a").id(" ").build().unwrap_err(),
            EventError::EmptyContact { field: "id" }
        );
        assert_eq!(
            event(json!({"event_name": "a", "user_id": 314159})).unwrap_err(),
            EventError::WrongType {
                field: "user_id".into(),
                expected: "a string"
            }
        );
        for bad in ["frodo", "@example.com", "frodo@", "fro do@example.com"] {
            assert_eq!(
                DataEvent::builder("a").email(bad).build().unwrap_err(),
                EventError::InvalidEmail { value: bad.into() },
                "{bad}"
            );
        }
    }

    #[test]
    fn created_at_must_be_unix_seconds() {
        let check =
            |v: Value| event(json!({"event_name": "a", "user_id": "u", "created_at": v})).unwrap_err();
        assert_eq!(
            check(json!(-5)),
            EventError::CreatedAt {
                problem: TimestampProblem::Negative
            }
        );
        assert_eq!(
            check(json!(1.5)),
            EventError::CreatedAt {
                problem: TimestampProblem::NotWholeSeconds
            }
        );
        assert_eq!(
            check(json!("2024-01-01")),
            EventError::CreatedAt {
                problem: TimestampProblem::NotANumber
            }
        );
        let err = check(json!(1_700_000_000_000u64));
        assert!(err.to_string().contains("not milliseconds"), "{err}");
        assert_eq!(err.field(), "created_at");
    }

    #[test]
    fn at_most_ten_metadata_keys() {
        let mut b = DataEvent::builder("a").user_id("u");
        for i in 0..MAX_METADATA_KEYS {
            b = b.metadata(format!("k{i}"), i);
        }
        // Giving a key again replaces it rather than adding one.
        b = b.metadata("k0", "again");
        let ten = b.clone().build().unwrap();
        assert_eq!(ten.metadata().len(), 10);
        assert_eq!(
            ten.metadata().get("k0"),
            Some(&MetadataValue::String("again".into()))
        );
        let err = b.metadata("k10", 10).build().unwrap_err();
        assert_eq!(err, EventError::TooManyMetadataKeys { count: 11 });
        assert!(err.to_string().starts_with("metadata: 11 keys"), "{err}");
    }

    #[test]
    fn unknown_fields_and_wrong_shapes_are_named() {
        let err = event(json!({"event_name": "a", "user-id": "u"})).unwrap_err();
        assert_eq!(
            err,
            EventError::UnknownField {
                field: "user-id".into()
            }
        );
        assert!(
            err.to_string().starts_with("user-id: not a Data Event field"),
            "{err}"
        );
        assert_eq!(event(json!([1])).unwrap_err(), EventError::NotAnObject);
        assert_eq!(
            event(json!({"event_name": "a", "user_id": "u", "metadata": [1]})).unwrap_err(),
            EventError::WrongType {
                field: "metadata".into(),
                expected: "an object"
            }
        );
        let parsed: Result<DataEvent, _> = serde_json::from_str(r#"{"event_name":"a"}"#);
        assert!(parsed.unwrap_err().to_string().contains("no contact"));
    }
}
