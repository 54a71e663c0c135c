//! Reconcile: recover what Intercom never redelivers. Intercom retries a failed delivery about once and
//! has no API to redeliver, so an outage, a wrong secret or a paused subscription leaves holes. Reconcile
//! asks the REST search API which objects changed in a time range and feeds each through the same pipeline
//! as a synthetic `<type>.reconciled` notification, so that the mirror and every state handler catch up.
//!
//! - [`search`]: `POST /{conversations,contacts,tickets}/search` paged by cursor, paced by the rate-limit
//!   headers with the Data Events client's pacer, and `GET /me` for the app's id.
//! - [`synthetic`]: the notification for one object, with an id derived from (app, type, object id,
//!   `updated_at`), so that reconciling a range twice processes nothing twice.
//! - [`target`]: where they go (`serve`'s SQLite queue, SQS in batches of 10, or a receiver URL, signed).
//! - [`watermark`]: the end of the last complete pass per (app, type), kept in the idempotency store.
//! - [`run`]: one pass over the types.

pub mod run;
pub mod search;
pub mod synthetic;
pub mod target;
pub mod watermark;

use std::fmt;
use std::str::FromStr;

/// The object types the search API can list by `updated_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectType {
    Conversation,
    Contact,
    Ticket,
}

impl ObjectType {
    pub const ALL: [ObjectType; 3] = [ObjectType::Conversation, ObjectType::Contact, ObjectType::Ticket];

    /// The item's `type` (and the mirror's).
    pub fn item_type(self) -> &'static str {
        match self {
            ObjectType::Conversation => "conversation",
            ObjectType::Contact => "contact",
            ObjectType::Ticket => "ticket",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            ObjectType::Conversation => "conversations",
            ObjectType::Contact => "contacts",
            ObjectType::Ticket => "tickets",
        }
    }

    /// The search endpoint, relative to the API's base URL.
    pub fn search_path(self) -> String {
        format!("{}/search", self.plural())
    }

    /// Where the search answer lists the objects.
    pub fn list_key(self) -> &'static str {
        match self {
            ObjectType::Conversation => "conversations",
            ObjectType::Contact => "data",
            ObjectType::Ticket => "tickets",
        }
    }

    /// The topic of the synthetic notifications: `conversation.reconciled`, …
    pub fn topic(self) -> String {
        format!("{}.reconciled", self.item_type())
    }

    /// `conversations,contacts` (singular or plural, any order, each once).
    pub fn parse_list(text: &str) -> Result<Vec<ObjectType>, String> {
        let mut types = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let kind: ObjectType = part.parse()?;
            if !types.contains(&kind) {
                types.push(kind);
            }
        }
        if types.is_empty() {
            return Err("name at least one type: conversations, contacts, tickets".into());
        }
        types.sort();
        Ok(types)
    }
}

impl FromStr for ObjectType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        ObjectType::ALL
            .into_iter()
            .find(|t| t.item_type() == text || t.plural() == text)
            .ok_or_else(|| {
                format!("{text:?} is not a type reconcile can search: conversations, contacts, tickets")
            })
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.plural())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_lists() {
        assert_eq!(
            ObjectType::parse_list("tickets, conversation,contacts,tickets").unwrap(),
            vec![ObjectType::Conversation, ObjectType::Contact, ObjectType::Ticket]
        );
        assert!(ObjectType::parse_list("companies")
            .unwrap_err()
            .contains("conversations, contacts, tickets"));
        assert!(ObjectType::parse_list(" , ").is_err());
        assert_eq!(ObjectType::Contact.search_path(), "contacts/search");
        assert_eq!(ObjectType::Ticket.topic(), "ticket.reconciled");
    }
}
