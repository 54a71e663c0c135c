//! The `Handler` port: what the worker runs for each notification, chosen by topic.

use std::time::Duration;

use async_trait::async_trait;

use crate::receiving::notification::Notification;

/// What a handler knows about the delivery besides the notification itself.
#[derive(Clone, Debug)]
pub struct HandlerContext {
    /// How many times the queue has handed out this message (1 on the first try).
    pub receive_count: u32,
    /// When the worker stops waiting for the handlers (Unix ms): the invocation's deadline less the
    /// worker's safety margin. A handler still running then is cut off and the notification retried.
    pub deadline_ms: i64,
}

/// A handler's failure, classed by whether another try can succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Try again later (a dependency is down, a rate limit, a timeout); `retry_after` is the earliest a
    /// new try can help, when the dependency said so.
    #[error("retryable: {reason}{}", after(retry_after))]
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// This notification can never be handled; it goes to the dead-letter queue.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl HandlerError {
    pub fn retryable(reason: impl Into<String>) -> Self {
        HandlerError::Retryable {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// Retryable, but not before `delay` (e.g. a 429's `Retry-After`).
    pub fn retry_after(reason: impl Into<String>, delay: Duration) -> Self {
        HandlerError::Retryable {
            reason: reason.into(),
            retry_after: Some(delay),
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        HandlerError::Permanent(reason.into())
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, HandlerError::Retryable { .. })
    }

    /// How long a retry should wait at least, if the failure said.
    pub fn delay(&self) -> Option<Duration> {
        match self {
            HandlerError::Retryable { retry_after, .. } => *retry_after,
            HandlerError::Permanent(_) => None,
        }
    }
}

fn after(delay: &Option<Duration>) -> String {
    match delay {
        Some(delay) => format!(" (retry after {} ms)", delay.as_millis()),
        None => String::new(),
    }
}

/// Which notifications about an object a handler wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wants {
    /// Every notification, in whatever order they arrive (an event handler: a log line, a chat post).
    Every,
    /// Only the newest version of an object (a state handler: a CRM sync). The worker skips it for a
    /// notification the mirror finds stale; with no mirror configured, it runs for every notification.
    Newest,
}

/// Whether a notification carries the newest version of its object, as the mirror found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// As new as or newer than any version delivered before.
    Newest,
    /// A newer version (or the object's deletion) was delivered before.
    Stale,
    /// Not a versioned object (no `updated_at`, or not a mirrored type): nothing to compare.
    Unversioned,
}

/// The handler that decides freshness (the mirror): it records the notification's version and says
/// whether it was the newest. The worker runs it before every other handler.
#[async_trait]
pub trait Versions: Send + Sync {
    async fn record(&self, notification: &Notification) -> Result<Freshness, HandlerError>;
}

/// Acts on notifications. Handlers must tolerate being called again for the same notification after a
/// failure (the claim is released and the message retried); a completed notification is never handed
/// to them twice within the retention window.
#[async_trait]
pub trait Handler: Send + Sync {
    /// A short name for logs and metrics.
    fn name(&self) -> &str;

    /// Every notification (the default), or only the newest version of each object.
    fn wants(&self) -> Wants {
        Wants::Every
    }

    /// `Some` for the handler that decides freshness (the mirror); the worker calls its
    /// [`Versions::record`] instead of [`Handler::handle`].
    fn versions(&self) -> Option<&dyn Versions> {
        None
    }

    async fn handle(&self, notification: &Notification, context: &HandlerContext)
        -> Result<(), HandlerError>;
}
