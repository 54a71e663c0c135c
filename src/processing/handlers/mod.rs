//! Built-in handlers, and the default routing the worker starts with.
//!
//! To add your own: write a type that implements [`crate::processing::handler::Handler`] (one file under
//! `src/processing/handlers/`), then register it in [`default_router`] with one `route` line.

pub mod forward;
pub mod notify;
mod paced;
pub mod summary;

use std::sync::Arc;

use crate::processing::handler::Handler;
use crate::processing::mirror::{MirrorHandler, MIRROR_TOPICS};
use crate::processing::router::{PatternError, Router};

pub use forward::{
    ForwardHandler, ForwardSettings, DEFAULT_FORWARD_RATE_PER_SECOND, MAX_FORWARD_TARGETS,
    NOTIFICATION_ID_HEADER, TOPIC_HEADER,
};
pub use notify::{
    escape_for_slack, NotifyHandler, NotifySettings, DEFAULT_NOTIFY_RATE_PER_SECOND, DEFAULT_NOTIFY_TOPICS,
};
pub use summary::{printable_line, summarize, SummaryHandler, SUMMARY_TOPICS};

/// The built-in handlers that need configuration; the summary line needs none.
#[derive(Default)]
pub struct Builtins {
    /// The chat notification (`NOTIFY_WEBHOOK_URL`).
    pub notify: Option<NotifySettings>,
    /// HTTP forward targets (`FORWARD_1_URL` …).
    pub forwards: Vec<ForwardSettings>,
    /// The mirror (`serve`'s file, or `MIRROR_TABLE`).
    pub mirror: Option<MirrorHandler>,
    /// Handlers of the adapters (the EventBridge publisher on Lambda), with their topic patterns.
    pub others: Vec<(Vec<String>, Arc<dyn Handler>)>,
}

/// The router with the built-in handlers: the mirror when one is configured (its verdict decides whether
/// state handlers run), the summary log line for the common topics, the chat notification when it is
/// configured, and each forward target for its topics.
pub fn default_router(builtins: Builtins) -> Result<Router, PatternError> {
    let mut router = Router::new();
    if let Some(mirror) = builtins.mirror {
        router = router.route_all(MIRROR_TOPICS, Arc::new(mirror))?;
    }
    router = router.route_all(SUMMARY_TOPICS.iter().copied(), Arc::new(SummaryHandler))?;
    if let Some(settings) = builtins.notify {
        let topics = settings.topics.clone();
        let handler = Arc::new(NotifyHandler::new(settings));
        router = router.route_all(topics.iter().map(String::as_str), handler)?;
    }
    for settings in builtins.forwards {
        let topics = settings.topics.clone();
        let handler = Arc::new(ForwardHandler::new(settings));
        router = router.route_all(topics.iter().map(String::as_str), handler)?;
    }
    for (topics, handler) in builtins.others {
        router = router.route_all(topics.iter().map(String::as_str), handler)?;
    }
    // Register your own handlers here, e.g.:
    // router = router.route("contact.*", Arc::new(MyCrmSync::new(...)))?;
    // A handler that keeps state elsewhere (a CRM sync) returns `Wants::Newest` from `wants()`: the
    // worker then skips it for a notification the mirror finds stale.
    Ok(router)
}
