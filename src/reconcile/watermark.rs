//! Watermarks: per (app, type), the end of the last complete reconcile pass, so that `--since last`
//! continues from it. Kept in the idempotency store (the SQLite file, or the DynamoDB table as an item
//! without an expiration). An interrupted pass does not advance it.

use async_trait::async_trait;

use super::ObjectType;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("watermark store unavailable: {0}")]
pub struct WatermarkError(pub String);

#[async_trait]
pub trait Watermarks: Send + Sync {
    /// The end of the last complete pass (Unix ms), if any.
    async fn get(&self, app_id: &str, kind: ObjectType) -> Result<Option<i64>, WatermarkError>;
    /// Records a complete pass up to `until_ms`; never moves a watermark back.
    async fn advance(&self, app_id: &str, kind: ObjectType, until_ms: i64) -> Result<(), WatermarkError>;
}

/// The key a watermark is stored under: `watermark#<app>#<type>`.
pub fn key(app_id: &str, kind: ObjectType) -> String {
    format!("watermark#{app_id}#{}", kind.plural())
}
