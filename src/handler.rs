//! The `Handler` port: what the worker runs for each notification, chosen by topic.

use async_trait::async_trait;

use crate::notification::Notification;

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
    /// Try again later (a dependency is down, a rate limit, a timeout).
    #[error("retryable: {0}")]
    Retryable(String),
    /// This notification can never be handled; it goes to the dead-letter queue.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl HandlerError {
    pub fn retryable(reason: impl Into<String>) -> Self {
        HandlerError::Retryable(reason.into())
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        HandlerError::Permanent(reason.into())
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, HandlerError::Retryable(_))
    }
}

/// Acts on notifications. Handlers must tolerate being called again for the same notification after a
/// failure (the claim is released and the message retried); a completed notification is never handed
/// to them twice within the retention window.
#[async_trait]
pub trait Handler: Send + Sync {
    /// A short name for logs and metrics.
    fn name(&self) -> &str;

    async fn handle(&self, notification: &Notification, context: &HandlerContext)
        -> Result<(), HandlerError>;
}
