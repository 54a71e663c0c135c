//! A handler that logs one human-readable line per notification: who, what, which conversation, and the
//! first 200 characters of the message text without HTML. Everything in the line but its wording comes
//! from the payload, so the line holds no control characters: it reaches logs and terminals.

use async_trait::async_trait;
use tracing::info;

use crate::processing::handler::{Handler, HandlerContext, HandlerError};
use crate::processing::models::{Conversation, Item, Party};
use crate::receiving::notification::Notification;

/// The topics Intercom users most often act on.
pub const SUMMARY_TOPICS: &[&str] = &[
    "conversation.user.created",
    "conversation.user.replied",
    "conversation.admin.replied",
    "conversation.admin.closed",
    "conversation.admin.opened",
    "conversation.admin.snoozed",
    "conversation.admin.assigned",
    "contact.created",
    "contact.user.created",
    "contact.lead.created",
    "contact.signed_up",
    "contact.deleted",
    "contact.tag.created",
    "contact.tag.deleted",
    "contact.user.tag.created",
    "contact.user.tag.deleted",
    "contact.lead.tag.created",
    "contact.lead.tag.deleted",
    "visitor.signed_up",
    "ticket.created",
];

const TEXT_LIMIT: usize = 200;

pub struct SummaryHandler;

#[async_trait]
impl Handler for SummaryHandler {
    fn name(&self) -> &str {
        "summary"
    }

    async fn handle(&self, notification: &Notification, _: &HandlerContext) -> Result<(), HandlerError> {
        info!(summary = %summarize(notification), "summary");
        Ok(())
    }
}

/// One line describing the notification, without control characters.
pub fn summarize(notification: &Notification) -> String {
    printable_line(&describe(notification))
}

fn describe(notification: &Notification) -> String {
    let topic = notification.topic().as_str();
    match notification.typed_item() {
        Item::Conversation(c) => conversation_summary(topic, &c),
        Item::Contact(c) => {
            let who = label(Some(c.as_party())).unwrap_or_else(|| "unknown contact".into());
            let role = c.role.as_deref().unwrap_or("contact");
            format!("{topic}: {role} {who}")
        }
        Item::ContactTag(t) => {
            let tag = t
                .tag
                .as_ref()
                .and_then(|t| t.name.as_deref().map(printable_line))
                .unwrap_or_else(|| "?".into());
            let who =
                label(t.contact.as_ref().map(|c| c.as_party())).unwrap_or_else(|| "unknown contact".into());
            let verb = if topic.ends_with(".deleted") {
                "removed from"
            } else {
                "added to"
            };
            format!("{topic}: tag \"{tag}\" {verb} {who}")
        }
        Item::Ticket(t) => {
            let id = t.ticket_id.clone().or(t.id.clone()).unwrap_or_else(|| "?".into());
            let title = t.title().map(|s| clip(&strip_html(&s))).unwrap_or_default();
            let state = t
                .ticket_state
                .as_ref()
                .and_then(|s| s.0.clone())
                .unwrap_or_default();
            format!("{topic}: ticket {id} \"{title}\" ({state})")
        }
        Item::Visitor(v) => {
            let who = label(Some(v.as_party())).unwrap_or_else(|| "a visitor".into());
            format!("{topic}: {who}")
        }
        Item::Other(value) => {
            let kind = value.get("type").and_then(|t| t.as_str()).unwrap_or("item");
            format!("{topic}: {kind}")
        }
    }
}

fn conversation_summary(topic: &str, c: &Conversation) -> String {
    let id = c.id.as_deref().unwrap_or("?");
    let part = c.latest_part();
    let by_admin = topic.starts_with("conversation.admin.");
    let who = if by_admin {
        label(part.and_then(|p| p.author.clone())).unwrap_or_else(|| "an admin".into())
    } else {
        label(c.customer().cloned()).unwrap_or_else(|| "a customer".into())
    };
    let text = part
        .and_then(|p| p.body.as_deref())
        .or_else(|| c.opening_message().and_then(|m| m.body.as_deref()))
        .map(|b| clip(&strip_html(b)))
        .unwrap_or_default();
    if text.is_empty() {
        format!("{topic}: {who}, conversation {id}")
    } else {
        format!("{topic}: {who}, conversation {id}: \"{text}\"")
    }
}

/// A party's label as it is shown: on one line, without control characters.
fn label(party: Option<Party>) -> Option<String> {
    party
        .and_then(|p| p.label())
        .map(|l| printable_line(&l))
        .filter(|l| !l.is_empty())
}

/// Text without tags, with common entities decoded, control characters removed and whitespace collapsed.
pub fn strip_html(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' if in_tag => in_tag = false,
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    let decoded = text
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    printable_line(&decoded)
}

/// The text on one line: control characters (C0, DEL, C1: an escape sequence could rewrite a terminal)
/// and line breaks become spaces, and runs of whitespace collapse.
pub fn printable_line(text: &str) -> String {
    text.split(|c: char| c.is_control() || c.is_whitespace())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first 200 characters, with an ellipsis when cut.
fn clip(text: &str) -> String {
    match text.char_indices().nth(TEXT_LIMIT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary_of(name: &str) -> String {
        let body = std::fs::read(format!(
            "{}/events/notifications/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        summarize(&Notification::parse(&body).unwrap())
    }

    #[test]
    fn strips_html_and_clips() {
        assert_eq!(
            strip_html("<p>Hello&nbsp;<b>you</b> &amp; me</p>"),
            "Hello you & me"
        );
        assert_eq!(clip(&"é".repeat(250)).chars().count(), 201);
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn control_characters_and_line_breaks_never_reach_the_line() {
        assert_eq!(
            printable_line("Rose\u{1b}[2J\u{1b}]0;pwned\u{7}\r\nPoodle\u{85}\u{2028}x\u{9b}31m\u{7f} y\t z"),
            "Rose [2J ]0;pwned Poodle x 31m y z"
        );
        assert_eq!(printable_line("plain words"), "plain words");

        let mut item: serde_json::Value = serde_json::from_slice(
            &std::fs::read(format!(
                "{}/events/notifications/conversation_user_created.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
        )
        .unwrap();
        item["data"]["item"]["user"]["name"] = "Rose\u{1b}[31m\nPoodle".into();
        item["data"]["item"]["conversation_message"]["body"] =
            "<p>line one</p>\r\n<p>line\u{0}two\u{9b}</p>".into();
        let line = summarize(&Notification::parse(&serde_json::to_vec(&item).unwrap()).unwrap());
        assert_eq!(
            line,
            "conversation.user.created: Rose [31m Poodle, conversation 21321941764: \"line one line two\""
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }

    #[test]
    fn fixtures_summarise_with_who_and_what() {
        assert_eq!(
            summary_of("conversation_user_created.json"),
            "conversation.user.created: Rose Poodle from St. John's, conversation 21321941764: \"Hello everyone!\""
        );
        let replied = summary_of("conversation_admin_replied.json");
        assert!(replied.starts_with("conversation.admin.replied: "), "{replied}");
        assert!(!replied.contains('<'), "{replied}");
        assert_eq!(
            summary_of("contact_user_tag_created.json"),
            "contact.lead.tag.created: tag \"Feature Request\" added to Sample User"
        );
        let ticket = summary_of("ticket_created.json");
        assert!(
            ticket.starts_with("ticket.created: ticket 66040342 \"Unclear user message"),
            "{ticket}"
        );
        assert!(summary_of("visitor_signed_up.json").starts_with("visitor.signed_up: "));
    }

    #[test]
    fn every_summary_topic_is_a_valid_pattern() {
        for t in SUMMARY_TOPICS {
            crate::processing::router::TopicPattern::parse(t).unwrap();
        }
    }
}
