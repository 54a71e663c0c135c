//! The query language of Intercom's search endpoints (`search_request` in the OpenAPI description):
//! parsed and checked against the documented shape and limits, then matched against stored objects.
//!
//! Date fields are matched by calendar day in the workspace's timezone, as `/contacts/search` documents:
//! `=` the whole day, `>` from the start of the next day, `<` before the start of that day. Which
//! operators a date field accepts differs per endpoint and follows each endpoint's table.

use serde_json::Value;

use super::Kind;

const SECONDS_PER_DAY: i64 = 86_400;
/// "There's a limit of max 2 nested filters".
const MAX_NESTING: usize = 2;
/// "There's a limit of max 15 filters for each AND or OR group".
const MAX_GROUP: usize = 15;

/// A parsed `query`: a single filter or an AND/OR group of queries.
#[derive(Debug)]
pub enum Query {
    Filter(Filter),
    All(Vec<Query>),
    Any(Vec<Query>),
}

#[derive(Debug)]
pub struct Filter {
    /// A dotted path into the object (`source.author.id`).
    field: String,
    operator: Operator,
    operand: Operand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operator {
    Eq,
    Ne,
    In,
    Nin,
    Lt,
    Gt,
    Le,
    Ge,
    Contains,
    NotContains,
    StartsWith,
    EndsWith,
}

#[derive(Debug)]
enum Operand {
    /// `value: null`: the field is absent or null.
    Null,
    /// The start of each calendar day named (a date field), as a Unix time.
    Days(Vec<i64>),
    /// Anything else, compared as JSON scalars.
    Scalars(Vec<Value>),
}

impl Operator {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "=" => Self::Eq,
            "!=" => Self::Ne,
            "IN" => Self::In,
            "NIN" => Self::Nin,
            "<" => Self::Lt,
            ">" => Self::Gt,
            "<=" => Self::Le,
            ">=" => Self::Ge,
            "~" => Self::Contains,
            "!~" => Self::NotContains,
            "^" => Self::StartsWith,
            "$" => Self::EndsWith,
            _ => return None,
        })
    }

    fn takes_array(self) -> bool {
        matches!(self, Self::In | Self::Nin)
    }

    fn is_ordering(self) -> bool {
        matches!(self, Self::Lt | Self::Gt | Self::Le | Self::Ge)
    }

    fn is_text(self) -> bool {
        matches!(
            self,
            Self::Contains | Self::NotContains | Self::StartsWith | Self::EndsWith
        )
    }
}

/// The Date fields of each endpoint's "Accepted Fields" table.
fn is_date_field(kind: Kind, field: &str) -> bool {
    const CONTACT: &[&str] = &[
        "created_at",
        "signed_up_at",
        "updated_at",
        "last_seen_at",
        "last_contacted_at",
        "last_replied_at",
        "last_email_opened_at",
        "last_email_clicked_at",
        "ios_last_seen_at",
        "android_last_seen_at",
    ];
    const CONVERSATION: &[&str] = &[
        "created_at",
        "updated_at",
        "waiting_since",
        "snoozed_until",
        "statistics.first_contact_reply_at",
        "statistics.first_assignment_at",
        "statistics.first_admin_reply_at",
        "statistics.first_close_at",
        "statistics.last_assignment_at",
        "statistics.last_assignment_admin_reply_at",
        "statistics.last_contact_reply_at",
        "statistics.last_admin_reply_at",
        "statistics.last_close_at",
        "conversation_rating.requested_at",
        "conversation_rating.replied_at",
    ];
    const TICKET: &[&str] = &["created_at", "updated_at", "snoozed_until"];
    let fields = match kind {
        Kind::Contact => CONTACT,
        Kind::Conversation => CONVERSATION,
        Kind::Ticket => TICKET,
    };
    fields.contains(&field)
}

/// The operators a date field accepts. Contacts: `=`, `<`, `>` only. Conversations and tickets: their
/// tables allow `=`, `!=`, `IN`, `NIN`, `<`, `>` on every type that has them, and tickets add `<=`
/// and `>=` on `created_at`.
fn date_operator_allowed(kind: Kind, field: &str, operator: Operator) -> bool {
    use Operator::*;
    match kind {
        Kind::Contact => matches!(operator, Eq | Lt | Gt),
        Kind::Conversation => matches!(operator, Eq | Ne | In | Nin | Lt | Gt),
        Kind::Ticket => {
            matches!(operator, Eq | Ne | In | Nin | Lt | Gt)
                || (field == "created_at" && matches!(operator, Le | Ge))
        }
    }
}

/// The Unix time at which the workspace's calendar day holding `t` starts.
fn day_start(t: i64, utc_offset_minutes: i32) -> i64 {
    let offset = i64::from(utc_offset_minutes) * 60;
    (t + offset).div_euclid(SECONDS_PER_DAY) * SECONDS_PER_DAY - offset
}

impl Query {
    /// Parses the `query` of a search request on `kind`; the error is the message of a 400 answer.
    pub fn parse(kind: Kind, query: &Value, utc_offset_minutes: i32) -> Result<Self, String> {
        Self::parse_at(kind, query, utc_offset_minutes, 0)
    }

    /// `groups_above`: how many AND/OR groups enclose this query.
    fn parse_at(kind: Kind, query: &Value, offset: i32, groups_above: usize) -> Result<Self, String> {
        let Some(object) = query.as_object() else {
            return Err("query must be an object".into());
        };
        if object.contains_key("field") {
            return Filter::parse(kind, object, offset).map(Self::Filter);
        }
        let all = match object.get("operator").and_then(Value::as_str) {
            Some("AND") => true,
            Some("OR") => false,
            _ => return Err(
                "query must be a filter {field, operator, value} or a group {operator: AND|OR, value: [...]}"
                    .into(),
            ),
        };
        if groups_above >= MAX_NESTING {
            return Err(format!("a query can nest at most {MAX_NESTING} AND/OR groups"));
        }
        let Some(members) = object.get("value").and_then(Value::as_array) else {
            return Err("the value of an AND/OR group must be an array of filters".into());
        };
        if members.is_empty() {
            return Err("an AND/OR group must hold at least one filter".into());
        }
        if members.len() > MAX_GROUP {
            return Err(format!(
                "an AND/OR group can hold at most {MAX_GROUP} filters, not {}",
                members.len()
            ));
        }
        let members = members
            .iter()
            .map(|m| Self::parse_at(kind, m, offset, groups_above + 1))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(if all {
            Self::All(members)
        } else {
            Self::Any(members)
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        match self {
            Self::Filter(f) => f.matches(object),
            Self::All(members) => members.iter().all(|m| m.matches(object)),
            Self::Any(members) => members.iter().any(|m| m.matches(object)),
        }
    }
}

impl Filter {
    fn parse(kind: Kind, object: &serde_json::Map<String, Value>, offset: i32) -> Result<Self, String> {
        let Some(field) = object.get("field").and_then(Value::as_str) else {
            return Err("field must be a string".into());
        };
        let Some(operator_text) = object.get("operator").and_then(Value::as_str) else {
            return Err(format!("the filter on {field} has no operator"));
        };
        let Some(operator) = Operator::parse(operator_text) else {
            return Err(format!("{operator_text} is not a valid operator"));
        };
        let Some(value) = object.get("value") else {
            return Err(format!("the filter on {field} has no value"));
        };
        let values: Vec<&Value> = match value {
            Value::Array(items) if operator.takes_array() => items.iter().collect(),
            _ if operator.takes_array() => {
                return Err(format!("{operator_text} needs an array of values"));
            }
            Value::Array(_) => return Err(format!("{operator_text} takes a single value, not an array")),
            Value::Null if matches!(operator, Operator::Eq | Operator::Ne) => {
                return Ok(Self {
                    field: field.into(),
                    operator,
                    operand: Operand::Null,
                })
            }
            Value::Object(_) | Value::Null => return Err(format!("invalid value for {field}")),
            scalar => vec![scalar],
        };
        if values
            .iter()
            .any(|v| v.is_array() || v.is_object() || v.is_null())
        {
            return Err(format!("invalid value for {field}"));
        }

        let operand = if is_date_field(kind, field) {
            if !date_operator_allowed(kind, field, operator) {
                return Err(format!(
                    "the {operator_text} operator is not supported on the date field {field}"
                ));
            }
            let days = values
                .iter()
                .map(|v| {
                    timestamp(v)
                        .map(|t| day_start(t, offset))
                        .ok_or_else(|| format!("{field} is a date and needs a Unix timestamp, not {v}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Operand::Days(days)
        } else {
            // `id` is documented as a String; other fields take their type from the value searched for.
            let text_field = field == "id";
            if operator.is_ordering() && (text_field || values.iter().any(|v| timestamp(v).is_none())) {
                return Err(format!("{operator_text} needs an integer field and value"));
            }
            if operator.is_text() && !values.iter().all(|v| v.is_string()) {
                return Err(format!("{operator_text} needs a string value"));
            }
            Operand::Scalars(values.into_iter().cloned().collect())
        };
        Ok(Self {
            field: field.into(),
            operator,
            operand,
        })
    }

    fn matches(&self, object: &Value) -> bool {
        let found = self
            .field
            .split('.')
            .try_fold(object, |v, key| v.get(key))
            .filter(|v| !v.is_null());
        match &self.operand {
            Operand::Null => (self.operator == Operator::Eq) == found.is_none(),
            Operand::Days(days) => found
                .and_then(Value::as_i64)
                .is_some_and(|t| self.matches_day(t, days)),
            Operand::Scalars(values) => found.is_some_and(|found| self.matches_scalar(found, values)),
        }
    }

    /// `days` are the starts of the days named; each day is `[start, start + 1 day)`.
    fn matches_day(&self, t: i64, days: &[i64]) -> bool {
        let on = |start: &i64| (*start..start + SECONDS_PER_DAY).contains(&t);
        let first = days.first();
        match self.operator {
            Operator::Eq | Operator::In => days.iter().any(on),
            Operator::Ne | Operator::Nin => !days.iter().any(on),
            Operator::Gt => first.is_some_and(|s| t >= s + SECONDS_PER_DAY),
            Operator::Ge => first.is_some_and(|s| t >= *s),
            Operator::Lt => first.is_some_and(|s| t < *s),
            Operator::Le => first.is_some_and(|s| t < s + SECONDS_PER_DAY),
            _ => false,
        }
    }

    /// A field holding an array (`contact_ids`, `tag_ids`) matches when one of its elements does.
    fn matches_scalar(&self, found: &Value, values: &[Value]) -> bool {
        let candidates: Vec<&Value> = match found {
            Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        let equal = || {
            candidates
                .iter()
                .any(|c| values.iter().any(|v| same_scalar(c, v)))
        };
        let text = |test: fn(&str, &str) -> bool| {
            let wanted = values[0].as_str().unwrap_or_default();
            candidates
                .iter()
                .any(|c| c.as_str().is_some_and(|c| test(c, wanted)))
        };
        let ordered = |test: fn(i64, i64) -> bool| {
            let wanted = timestamp(&values[0]).unwrap_or_default();
            candidates
                .iter()
                .any(|c| c.as_i64().is_some_and(|c| test(c, wanted)))
        };
        match self.operator {
            Operator::Eq | Operator::In => equal(),
            Operator::Ne | Operator::Nin => !equal(),
            Operator::Lt => ordered(|a, b| a < b),
            Operator::Gt => ordered(|a, b| a > b),
            Operator::Le => ordered(|a, b| a <= b),
            Operator::Ge => ordered(|a, b| a >= b),
            Operator::Contains => text(|a, b| a.contains(b)),
            Operator::NotContains => !text(|a, b| a.contains(b)),
            Operator::StartsWith => text(|a, b| a.starts_with(b)),
            Operator::EndsWith => text(|a, b| a.ends_with(b)),
        }
    }
}

/// An integer, or a string of digits: the documented examples send timestamps as strings (`'1306054154'`).
fn timestamp(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Equality across JSON types the way a search does it: `"515"` finds the id `515` and the other way round.
fn same_scalar(found: &Value, wanted: &Value) -> bool {
    match (found, wanted) {
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Number(_), _) | (_, Value::Number(_)) => {
            timestamp(found).is_some() && timestamp(found) == timestamp(wanted)
        }
        _ => false,
    }
}
