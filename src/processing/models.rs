//! Typed, tolerant models of the `data.item` objects handlers most often need. Every field is optional
//! and unknown fields are ignored: Intercom's shapes differ by topic and by the app's API version
//! (1.x conversations carry `user` / `conversation_message`, 2.x carry `source` / `contacts`; contact
//! timestamps are ISO strings in webhooks but integers in the REST API).

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A timestamp that arrives as Unix seconds or as an ISO-8601 string.
#[derive(Clone, Debug, PartialEq)]
pub enum Timestamp {
    Unix(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Number(n) => {
                Timestamp::Unix(n.as_i64().unwrap_or_else(|| n.as_f64().unwrap_or(0.0) as i64))
            }
            Value::String(s) => Timestamp::Text(s),
            other => Timestamp::Text(other.to_string()),
        })
    }
}

/// An id that arrives as a string or a number.
fn lenient_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// A person or bot referenced by an item: user, lead, contact, admin, visitor.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Party {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(deserialize_with = "lenient_id")]
    pub id: Option<String>,
    pub user_id: Option<String>,
    pub external_id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
}

impl Party {
    /// The best human-readable label: name, else e-mail, else id.
    pub fn label(&self) -> Option<String> {
        [
            &self.name,
            &self.email,
            &self.external_id,
            &self.user_id,
            &self.id,
        ]
        .into_iter()
        .flatten()
        .find(|s| !s.trim().is_empty())
        .cloned()
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ConversationMessage {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(deserialize_with = "lenient_id")]
    pub id: Option<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    pub author: Option<Party>,
    pub delivered_as: Option<String>,
    pub url: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ConversationPart {
    #[serde(deserialize_with = "lenient_id")]
    pub id: Option<String>,
    pub part_type: Option<String>,
    pub body: Option<String>,
    pub author: Option<Party>,
    pub created_at: Option<Timestamp>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ConversationParts {
    pub conversation_parts: Vec<ConversationPart>,
    pub total_count: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ContactList {
    pub contacts: Vec<Party>,
}

/// A conversation, in either API generation's shape.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Conversation {
    #[serde(deserialize_with = "lenient_id")]
    pub id: Option<String>,
    pub title: Option<String>,
    pub created_at: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
    /// `open`, `closed` or `snoozed`.
    pub state: Option<String>,
    pub open: Option<bool>,
    #[serde(deserialize_with = "lenient_id")]
    pub admin_assignee_id: Option<String>,
    #[serde(deserialize_with = "lenient_id")]
    pub team_assignee_id: Option<String>,
    /// 2.x: the message that started the conversation.
    pub source: Option<ConversationMessage>,
    /// 2.x: the contacts in the conversation.
    pub contacts: Option<ContactList>,
    /// 1.x: the user or lead.
    pub user: Option<Party>,
    /// 1.x: the assignee.
    pub assignee: Option<Party>,
    /// 1.x: the first message.
    pub conversation_message: Option<ConversationMessage>,
    pub conversation_parts: Option<ConversationParts>,
    pub links: Option<Value>,
}

impl Conversation {
    /// The customer: the first contact (2.x) or the user (1.x).
    pub fn customer(&self) -> Option<&Party> {
        self.contacts
            .as_ref()
            .and_then(|c| c.contacts.first())
            .or(self.user.as_ref())
    }

    /// The opening message: `source` (2.x) or `conversation_message` (1.x).
    pub fn opening_message(&self) -> Option<&ConversationMessage> {
        self.source.as_ref().or(self.conversation_message.as_ref())
    }

    /// The newest part (a reply, a note, a close…), if the notification carries parts.
    pub fn latest_part(&self) -> Option<&ConversationPart> {
        self.conversation_parts.as_ref()?.conversation_parts.last()
    }

    /// The assigned admin's id, in either shape.
    pub fn assignee_id(&self) -> Option<&str> {
        self.admin_assignee_id
            .as_deref()
            .or_else(|| self.assignee.as_ref().and_then(|a| a.id.as_deref()))
    }
}

/// A contact (user or lead).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Contact {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(deserialize_with = "lenient_id")]
    pub id: Option<String>,
    pub external_id: Option<String>,
    pub user_id: Option<String>,
    /// `user` or `lead`.
    pub role: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub name: Option<String>,
    pub created_at: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
    pub signed_up_at: Option<Timestamp>,
    pub last_seen_at: Option<Timestamp>,
}

impl Contact {
    pub fn as_party(&self) -> Party {
        Party {
            kind: self.role.clone().or_else(|| self.kind.clone()),
            id: self.id.clone(),
            user_id: self.user_id.clone(),
            external_id: self.external_id.clone(),
            name: self.name.clone(),
            email: self.email.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Tag {
    #[serde(deserialize_with = "lenient_id")]
    pub id: Option<String>,
    pub name: Option<String>,
}

/// A tag added to or removed from a contact.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ContactTag {
    pub tag: Option<Tag>,
    pub contact: Option<Contact>,
    pub created_at: Option<Timestamp>,
}

/// `ticket_state` is a string in some versions and an object in others.
#[derive(Clone, Debug, PartialEq)]
pub struct TicketState(pub Option<String>);

impl<'de> Deserialize<'de> for TicketState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(TicketState(match Value::deserialize(d)? {
            Value::String(s) => Some(s),
            Value::Object(map) => ["internal_label", "external_label", "category", "name"]
                .iter()
                .find_map(|k| map.get(*k).and_then(Value::as_str).map(str::to_owned)),
            _ => None,
        }))
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct TicketType {
    #[serde(deserialize_with = "lenient_id")]
    pub id: Option<String>,
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Ticket {
    #[serde(deserialize_with = "lenient_id")]
    pub id: Option<String>,
    #[serde(deserialize_with = "lenient_id")]
    pub ticket_id: Option<String>,
    pub ticket_state: Option<TicketState>,
    pub ticket_type: Option<TicketType>,
    pub ticket_attributes: Option<Value>,
    pub contacts: Option<ContactList>,
    #[serde(deserialize_with = "lenient_id")]
    pub admin_assignee_id: Option<String>,
    pub created_at: Option<Timestamp>,
}

impl Ticket {
    pub fn title(&self) -> Option<String> {
        self.ticket_attributes
            .as_ref()?
            .get("_default_title_")?
            .as_str()
            .map(str::to_owned)
    }
}

/// The typed item of a notification, chosen by `data.item.type`.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Conversation(Box<Conversation>),
    Contact(Box<Contact>),
    ContactTag(Box<ContactTag>),
    Ticket(Box<Ticket>),
    /// `visitor`, `user` and `lead` items of the older topics.
    Visitor(Box<Contact>),
    /// Anything else (kept as JSON).
    Other(Value),
}

impl Item {
    /// Parses `data.item`. Never fails: an item whose shape is not understood is `Other`.
    pub fn parse(item: &Value) -> Item {
        // Read from the value in place: the models copy only the fields they keep.
        let kind = item.get("type").and_then(Value::as_str).unwrap_or_default();
        let typed = match kind {
            "conversation" => Conversation::deserialize(item).map(|c| Item::Conversation(Box::new(c))),
            "contact" => Contact::deserialize(item).map(|c| Item::Contact(Box::new(c))),
            "contact_tag" => ContactTag::deserialize(item).map(|c| Item::ContactTag(Box::new(c))),
            "ticket" => Ticket::deserialize(item).map(|t| Item::Ticket(Box::new(t))),
            "visitor" | "user" | "lead" => Contact::deserialize(item).map(|c| Item::Visitor(Box::new(c))),
            _ => return Item::Other(item.clone()),
        };
        typed.unwrap_or_else(|_| Item::Other(item.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiving::notification::Envelope;

    fn item(name: &str) -> Item {
        let body = std::fs::read(format!(
            "{}/events/notifications/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        Item::parse(&Envelope::parse(&body).unwrap().item())
    }

    #[test]
    fn every_fixture_parses_into_its_model() {
        let expect = [
            ("contact_deleted.json", "Contact"),
            ("contact_user_created.json", "Contact"),
            ("contact_user_tag_created.json", "ContactTag"),
            ("conversation_admin_closed.json", "Conversation"),
            ("conversation_admin_replied.json", "Conversation"),
            ("conversation_user_created.json", "Conversation"),
            ("conversation_user_replied.json", "Conversation"),
            ("ticket_created.json", "Ticket"),
            ("visitor_signed_up.json", "Visitor"),
        ];
        for (file, kind) in expect {
            let parsed = item(file);
            let actual = match &parsed {
                Item::Conversation(_) => "Conversation",
                Item::Contact(_) => "Contact",
                Item::ContactTag(_) => "ContactTag",
                Item::Ticket(_) => "Ticket",
                Item::Visitor(_) => "Visitor",
                Item::Other(v) => panic!("{file} fell back to Other: {}", v["type"]),
            };
            assert_eq!(actual, kind, "{file}");
        }
    }

    #[test]
    fn conversation_1x_shape() {
        let Item::Conversation(c) = item("conversation_user_created.json") else {
            panic!()
        };
        assert_eq!(c.id.as_deref(), Some("21321941764"));
        assert_eq!(
            c.customer().unwrap().label().as_deref(),
            Some("Rose Poodle from St. John's")
        );
        assert_eq!(
            c.opening_message().unwrap().body.as_deref(),
            Some("<p>Hello everyone!</p>")
        );
        assert_eq!(c.state.as_deref(), Some("open"));
        assert_eq!(c.created_at, Some(Timestamp::Unix(1553290198)));
    }

    #[test]
    fn conversation_2x_shape() {
        let json = serde_json::json!({
            "type": "conversation", "id": 42, "state": "open", "admin_assignee_id": 7,
            "source": {"type": "conversation", "id": "1", "body": "<p>Hi</p>", "author": {"type": "user", "id": "u", "name": "Ann"}},
            "contacts": {"type": "contact.list", "contacts": [{"type": "contact", "id": "c1", "external_id": "e1"}]},
            "conversation_parts": {"conversation_parts": [{"part_type": "comment", "body": "<b>later</b>"}], "total_count": 1},
            "brand_new_field": [1, 2, 3]
        });
        let Item::Conversation(c) = Item::parse(&json) else {
            panic!()
        };
        assert_eq!(c.id.as_deref(), Some("42"));
        assert_eq!(c.assignee_id(), Some("7"));
        assert_eq!(c.customer().unwrap().id.as_deref(), Some("c1"));
        assert_eq!(
            c.opening_message()
                .unwrap()
                .author
                .as_ref()
                .unwrap()
                .name
                .as_deref(),
            Some("Ann")
        );
        assert_eq!(c.latest_part().unwrap().body.as_deref(), Some("<b>later</b>"));
    }

    #[test]
    fn contact_timestamps_iso_or_integer() {
        let Item::ContactTag(t) = item("contact_user_tag_created.json") else {
            panic!()
        };
        assert_eq!(t.tag.unwrap().name.as_deref(), Some("Feature Request"));
        let contact = t.contact.unwrap();
        assert_eq!(
            contact.created_at,
            Some(Timestamp::Text("2026-01-10T04:41:59.251+00:00".into()))
        );
        let Item::Contact(c) =
            Item::parse(&serde_json::json!({"type": "contact", "id": "x", "created_at": 1700000000}))
        else {
            panic!()
        };
        assert_eq!(c.created_at, Some(Timestamp::Unix(1700000000)));
    }

    #[test]
    fn ticket_state_string_or_object() {
        for state in [
            serde_json::json!("submitted"),
            serde_json::json!({"internal_label": "submitted", "id": 1}),
        ] {
            let Item::Ticket(t) = Item::parse(&serde_json::json!({"type": "ticket", "ticket_state": state}))
            else {
                panic!()
            };
            assert_eq!(t.ticket_state.unwrap().0.as_deref(), Some("submitted"));
        }
        let Item::Ticket(t) = item("ticket_created.json") else {
            panic!()
        };
        assert!(t.ticket_state.is_some());
    }
}
