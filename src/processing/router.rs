//! Topic routing: patterns to handlers. A pattern is a dotted topic where `*` stands for one segment, and
//! a trailing `*` for one or more: `conversation.user.created`, `conversation.*`,
//! `contact.*.tag.created`, and `*` (everything).

use std::fmt;
use std::sync::Arc;

use crate::processing::handler::Handler;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern {
    raw: String,
    segments: Vec<String>,
}

impl TopicPattern {
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(PatternError(raw.to_owned(), "empty pattern"));
        }
        let segments: Vec<String> = raw.split('.').map(str::to_owned).collect();
        for segment in &segments {
            if segment.is_empty() {
                return Err(PatternError(raw.to_owned(), "empty segment"));
            }
            if segment != "*" && segment.contains('*') {
                return Err(PatternError(raw.to_owned(), "`*` must stand for a whole segment"));
            }
        }
        Ok(Self {
            raw: raw.to_owned(),
            segments,
        })
    }

    pub fn matches(&self, topic: &str) -> bool {
        let mut topic = topic.split('.');
        let last = self.segments.len() - 1;
        for (i, pattern) in self.segments.iter().enumerate() {
            let Some(segment) = topic.next() else {
                return false;
            };
            if i == last && pattern == "*" {
                // A trailing `*`: this segment and any after it.
                return true;
            }
            if pattern != "*" && pattern != segment {
                return false;
            }
        }
        topic.next().is_none()
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic pattern {0:?}: {1}")]
pub struct PatternError(String, &'static str);

/// Handlers by topic pattern, in registration order.
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<(TopicPattern, Arc<dyn Handler>)>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for every topic matching `pattern`.
    pub fn route(mut self, pattern: &str, handler: Arc<dyn Handler>) -> Result<Self, PatternError> {
        self.routes.push((TopicPattern::parse(pattern)?, handler));
        Ok(self)
    }

    /// Registers `handler` for each of `patterns`.
    pub fn route_all<'a>(
        mut self,
        patterns: impl IntoIterator<Item = &'a str>,
        handler: Arc<dyn Handler>,
    ) -> Result<Self, PatternError> {
        for pattern in patterns {
            self = self.route(pattern, handler.clone())?;
        }
        Ok(self)
    }

    /// These routes, then `later`'s.
    pub fn then(mut self, later: Router) -> Self {
        self.routes.extend(later.routes);
        self
    }

    /// The handlers for `topic`, in registration order, each once.
    pub fn handlers_for(&self, topic: &str) -> Vec<Arc<dyn Handler>> {
        let mut found: Vec<Arc<dyn Handler>> = Vec::new();
        for (pattern, handler) in &self.routes {
            if pattern.matches(topic) && !found.iter().any(|h| Arc::ptr_eq(h, handler)) {
                found.push(handler.clone());
            }
        }
        found
    }

    /// (pattern, handler name) for every route, for start-up logs.
    pub fn describe(&self) -> Vec<(String, String)> {
        self.routes
            .iter()
            .map(|(p, h)| (p.to_string(), h.name().to_owned()))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Each handler's name with its patterns, in registration order: for the start-up banner and the
    /// README's list of built-in handlers.
    pub fn by_handler(&self) -> Vec<(String, Vec<String>)> {
        let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
        for (pattern, handler) in &self.routes {
            match grouped.iter_mut().find(|(name, _)| name == handler.name()) {
                Some((_, patterns)) => patterns.push(pattern.to_string()),
                None => grouped.push((handler.name().to_owned(), vec![pattern.to_string()])),
            }
        }
        grouped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processing::handler::{HandlerContext, HandlerError};
    use crate::receiving::notification::Notification;

    #[test]
    fn pattern_matching() {
        let cases = [
            ("conversation.user.created", "conversation.user.created", true),
            ("conversation.user.created", "conversation.user.replied", false),
            ("conversation.*", "conversation.user.created", true),
            ("conversation.*", "conversation", false),
            ("conversation.*", "contact.created", false),
            ("contact.*.tag.created", "contact.user.tag.created", true),
            ("contact.*.tag.created", "contact.lead.tag.created", true),
            ("contact.*.tag.created", "contact.tag.created", false),
            ("contact.*.tag.created", "contact.user.tag.deleted", false),
            ("*", "ping", true),
            ("*", "ticket.admin.assigned", true),
            ("conversation.user", "conversation.user.created", false),
        ];
        for (pattern, topic, expected) in cases {
            assert_eq!(
                TopicPattern::parse(pattern).unwrap().matches(topic),
                expected,
                "{pattern} vs {topic}"
            );
        }
    }

    #[test]
    fn bad_patterns() {
        for bad in ["", "a..b", "conv*", "a.b*.c", "."] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    struct Named(&'static str);

    #[async_trait::async_trait]
    impl Handler for Named {
        fn name(&self) -> &str {
            self.0
        }
        async fn handle(&self, _: &Notification, _: &HandlerContext) -> Result<(), HandlerError> {
            Ok(())
        }
    }

    #[test]
    fn several_handlers_in_registration_order_each_once() {
        let a: Arc<dyn Handler> = Arc::new(Named("a"));
        let b: Arc<dyn Handler> = Arc::new(Named("b"));
        let router = Router::new()
            .route("conversation.*", b.clone())
            .unwrap()
            .route_all(["conversation.user.created", "*"], a.clone())
            .unwrap()
            .route("conversation.user.*", b.clone())
            .unwrap();
        let names = |t: &str| {
            router
                .handlers_for(t)
                .iter()
                .map(|h| h.name().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names("conversation.user.created"), ["b", "a"]);
        assert_eq!(names("contact.created"), ["a"]);
        assert_eq!(router.describe().len(), 4);
        assert_eq!(
            router.by_handler(),
            [
                (
                    "b".to_owned(),
                    vec!["conversation.*".to_owned(), "conversation.user.*".to_owned()]
                ),
                (
                    "a".to_owned(),
                    vec!["conversation.user.created".to_owned(), "*".to_owned()]
                ),
            ]
        );
    }
}
