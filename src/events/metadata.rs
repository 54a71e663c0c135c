//! Event metadata: at most ten flat keys, each value in one of the shapes Intercom documents.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{Map, Number, Value};

use super::timestamp::{parse_unix_seconds, TimestampProblem};

/// Intercom keeps the first 10 metadata keys of an event and drops the rest without an error.
pub const MAX_METADATA_KEYS: usize = 10;

/// One metadata value, in one of the shapes Intercom documents.
#[derive(Clone, Debug, PartialEq)]
pub enum MetadataValue {
    /// A string (a plain `http(s)` URL is a string too; Intercom shows it as a link).
    String(String),
    /// A JSON number.
    Number(Number),
    /// The value of a key ending in `_date`: Unix seconds.
    Date(u64),
    /// `{"url": …, "value": …}`.
    RichLink { url: String, value: String },
    /// `{"amount": …, "currency": …}`: a positive amount in cents and a currency code.
    Money { amount: u64, currency: String },
}

impl MetadataValue {
    fn to_json(&self) -> Value {
        match self {
            MetadataValue::String(s) => Value::String(s.clone()),
            MetadataValue::Number(n) => Value::Number(n.clone()),
            MetadataValue::Date(t) => Value::from(*t),
            MetadataValue::RichLink { url, value } => serde_json::json!({ "url": url, "value": value }),
            MetadataValue::Money { amount, currency } => {
                serde_json::json!({ "amount": amount, "currency": currency })
            }
        }
    }
}

impl Serialize for MetadataValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

/// At most [`MAX_METADATA_KEYS`] keys, each with a valid value, in the order given.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata(pub(super) Vec<(String, MetadataValue)>);

impl Metadata {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetadataValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// One value checked against the shapes Intercom documents; keys ending in `_date` hold Unix seconds.
pub(super) fn parse_value(key: &str, value: Value) -> Result<MetadataValue, MetadataProblem> {
    if key.trim().is_empty() {
        return Err(MetadataProblem::EmptyKey);
    }
    if key.ends_with("_date") {
        return parse_unix_seconds(&value)
            .map(MetadataValue::Date)
            .map_err(|problem| MetadataProblem::Date { problem });
    }
    match value {
        Value::String(s) => Ok(MetadataValue::String(s)),
        Value::Number(n) => Ok(MetadataValue::Number(n)),
        Value::Object(object) => parse_object(object),
        Value::Null => Err(MetadataProblem::Null),
        Value::Bool(_) => Err(MetadataProblem::Boolean),
        Value::Array(_) => Err(MetadataProblem::Array),
    }
}

/// The two objects Intercom accepts as a metadata value; anything else would be nesting.
fn parse_object(object: Map<String, Value>) -> Result<MetadataValue, MetadataProblem> {
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    match keys.as_slice() {
        ["url", "value"] => {
            let url = match &object["url"] {
                Value::String(url) if is_http_url(url) => url.clone(),
                _ => return Err(MetadataProblem::RichLinkUrl),
            };
            let value = match &object["value"] {
                Value::String(value) => value.clone(),
                _ => return Err(MetadataProblem::RichLinkValue),
            };
            Ok(MetadataValue::RichLink { url, value })
        }
        ["amount", "currency"] => {
            let amount = match object["amount"].as_u64() {
                Some(amount) if amount > 0 => amount,
                _ => return Err(MetadataProblem::MoneyAmount),
            };
            let currency = match &object["currency"] {
                Value::String(c) if c.len() == 3 && c.chars().all(|ch| ch.is_ascii_alphabetic()) => c.clone(),
                _ => return Err(MetadataProblem::MoneyCurrency),
            };
            Ok(MetadataValue::Money { amount, currency })
        }
        _ => Err(MetadataProblem::Nested {
            keys: keys.join(", "),
        }),
    }
}

fn is_http_url(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    ["http://", "https://"]
        .iter()
        .any(|scheme| lower.starts_with(scheme) && lower.len() > scheme.len())
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetadataProblem {
    #[error("the key must not be empty")]
    EmptyKey,
    #[error("null is not a metadata value; leave the key out")]
    Null,
    #[error("booleans are not a metadata type Intercom documents; send a string such as \"true\"")]
    Boolean,
    #[error("arrays are not accepted: Intercom does not support nested metadata")]
    Array,
    #[error(
        "an object with the keys [{keys}] is nested metadata; only a rich link {{url, value}} or a \
         monetary amount {{amount, currency}} is accepted"
    )]
    Nested { keys: String },
    #[error("a rich link's url must be an http or https URL")]
    RichLinkUrl,
    #[error("a rich link's value must be a string")]
    RichLinkValue,
    #[error("a monetary amount must be a positive whole number of cents")]
    MoneyAmount,
    #[error("a monetary amount's currency must be a three-letter code such as \"eur\"")]
    MoneyCurrency,
    #[error("keys ending in _date hold a date: {problem}")]
    Date { problem: TimestampProblem },
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::events::{DataEvent, EventError};

    #[test]
    fn metadata_values_follow_intercoms_types() {
        let check = |key: &str, v: Value| DataEvent::builder("a").user_id("u").metadata(key, v).build();
        let problem = |key: &str, v: Value| match check(key, v).unwrap_err() {
            EventError::Metadata { key: k, problem } => {
                assert_eq!(k, key);
                problem
            }
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(
            problem("x", json!({"a": {"b": 1}})),
            MetadataProblem::Nested { keys: "a".into() }
        );
        assert_eq!(
            problem("x", json!({"url": "https://a.example", "value": "v", "extra": 1})),
            MetadataProblem::Nested {
                keys: "extra, url, value".into()
            }
        );
        assert_eq!(problem("x", json!([1, 2])), MetadataProblem::Array);
        assert_eq!(problem("x", json!(null)), MetadataProblem::Null);
        assert_eq!(problem("x", json!(true)), MetadataProblem::Boolean);
        assert_eq!(problem("", json!("v")), MetadataProblem::EmptyKey);
        assert_eq!(
            problem("x", json!({"url": "ftp://a.example", "value": "v"})),
            MetadataProblem::RichLinkUrl
        );
        assert_eq!(
            problem("x", json!({"url": "https://a.example", "value": 3})),
            MetadataProblem::RichLinkValue
        );
        for amount in [json!(0), json!(-5), json!(12.5), json!("100")] {
            assert_eq!(
                problem("price", json!({"amount": amount, "currency": "eur"})),
                MetadataProblem::MoneyAmount,
                "{amount}"
            );
        }
        assert_eq!(
            problem("price", json!({"amount": 100, "currency": "euro"})),
            MetadataProblem::MoneyCurrency
        );
        assert_eq!(
            problem("paid_date", json!("2024-01-01")),
            MetadataProblem::Date {
                problem: TimestampProblem::NotANumber
            }
        );
        assert_eq!(
            problem("paid_date", json!(1_700_000_000_000u64)),
            MetadataProblem::Date {
                problem: TimestampProblem::Milliseconds {
                    value: 1_700_000_000_000
                }
            }
        );
        let err = check("paid_date", json!(1.5)).unwrap_err();
        assert_eq!(err.field(), "metadata.paid_date");
        assert!(
            err.to_string()
                .starts_with("metadata.paid_date: keys ending in _date"),
            "{err}"
        );
        // Accepted shapes.
        assert!(check("site", json!("https://example.org")).is_ok());
        assert!(check("load", json!(3.67)).is_ok());
        assert!(check("contact_date", json!(1_392_036_272)).is_ok());
    }
}
