//! The DynamoDB adapter of the [`IdempotencyStore`] port. Record shape (Powertools-compatible): `pk`,
//! `status`, `expiration` (Unix s, the table's TTL attribute), `in_progress_expiration` (Unix ms, the
//! lease), `lease_token`, `payload_hash`, `claimed_at` / `completed_at` (Unix ms).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::plumbing::clock::Clock;
use crate::processing::idempotency::{
    Claim, ClaimOutcome, IdempotencyStore, Lease, StoreError, StoredRecord, COMPLETED, IN_PROGRESS,
};
use crate::reconcile::watermark::{self, WatermarkError, Watermarks};
use crate::reconcile::ObjectType;

const CLAIM_CONDITION: &str =
    "attribute_not_exists(pk) OR #exp < :now OR (#status = :in_progress AND #lease < :now_ms)";
const HOLDER_CONDITION: &str = "#status = :in_progress AND lease_token = :token";

#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl DynamoStore {
    /// A store on `table`, with completion times from `clock` (claims carry their own times).
    pub fn new(client: Client, table: impl Into<String>, clock: Arc<dyn Clock>) -> Self {
        Self {
            client,
            table: table.into(),
            clock,
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Reads a record (consistently). Used when a refused claim came back without the old item.
    async fn read(&self, key: &str) -> Result<Option<StoredRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        Ok(out.item.as_ref().map(record_from))
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn record_from(item: &HashMap<String, AttributeValue>) -> StoredRecord {
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
    let number = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    StoredRecord {
        status: text("status").unwrap_or_default(),
        payload_hash: text("payload_hash"),
        expiration: number("expiration"),
        in_progress_expiration: number("in_progress_expiration"),
    }
}

fn store_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
    error: SdkError<E, HttpResponse>,
) -> StoreError {
    let text = DisplayErrorContext(&error).to_string();
    if super::is_transient(&error) {
        StoreError::Unavailable(text)
    } else {
        StoreError::Rejected(text)
    }
}

/// The outcome of a write conditional on holding `lease`: a failed condition means the lease was lost.
fn held<T, E>(result: Result<T, SdkError<E, HttpResponse>>, lease: &Lease) -> Result<(), StoreError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match result {
        Ok(_) => Ok(()),
        Err(SdkError::ServiceError(c)) if c.err().code() == Some("ConditionalCheckFailedException") => {
            Err(StoreError::LeaseLost(lease.key.clone()))
        }
        Err(e) => Err(store_error(e)),
    }
}

#[async_trait]
impl IdempotencyStore for DynamoStore {
    async fn claim(&self, claim: &Claim) -> Result<ClaimOutcome, StoreError> {
        // A refused claim explains itself from the old item. If the record changed between the write and
        // that explanation (it expired or was released just then), try again, a bounded number of times.
        for _ in 0..3 {
            let lease = Lease::new(claim.key.clone());
            let result = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(claim.key.as_str()))
                .item("status", s(IN_PROGRESS))
                .item("expiration", n(claim.expiration))
                .item("in_progress_expiration", n(claim.lease_until_ms))
                .item("lease_token", s(&lease.token))
                .item("payload_hash", s(&claim.payload_hash))
                .item("claimed_at", n(claim.now_ms))
                .condition_expression(CLAIM_CONDITION)
                .expression_attribute_names("#exp", "expiration")
                .expression_attribute_names("#status", "status")
                .expression_attribute_names("#lease", "in_progress_expiration")
                .expression_attribute_values(":now", n(claim.now_secs()))
                .expression_attribute_values(":now_ms", n(claim.now_ms))
                .expression_attribute_values(":in_progress", s(IN_PROGRESS))
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .send()
                .await;
            let error = match result {
                Ok(_) => return Ok(ClaimOutcome::Claimed(lease)),
                Err(error) => error,
            };
            let old = match &error {
                SdkError::ServiceError(c) => match c.err() {
                    PutItemError::ConditionalCheckFailedException(e) => Some(e.item().map(record_from)),
                    _ => None,
                },
                _ => None,
            };
            let old = match old {
                None => return Err(store_error(error)),
                Some(Some(record)) => Some(record),
                Some(None) => self.read(claim.key.as_str()).await?,
            };
            if let Some(refusal) = old.and_then(|record| record.refusal(claim)) {
                return Ok(refusal);
            }
        }
        Err(StoreError::Unavailable(format!(
            "the record for {} kept changing during the claim",
            claim.key
        )))
    }

    async fn complete(&self, lease: &Lease, expiration: i64) -> Result<(), StoreError> {
        let now_ms = self.clock.now_ms();
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(lease.key.as_str()))
            .update_expression("SET #status = :completed, #exp = :exp, completed_at = :now_ms")
            .condition_expression(HOLDER_CONDITION)
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#exp", "expiration")
            .expression_attribute_values(":completed", s(COMPLETED))
            .expression_attribute_values(":in_progress", s(IN_PROGRESS))
            .expression_attribute_values(":exp", n(expiration))
            .expression_attribute_values(":now_ms", n(now_ms))
            .expression_attribute_values(":token", s(&lease.token))
            .send()
            .await;
        held(result, lease)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(lease.key.as_str()))
            .condition_expression(HOLDER_CONDITION)
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":in_progress", s(IN_PROGRESS))
            .expression_attribute_values(":token", s(&lease.token))
            .send()
            .await;
        held(result, lease)
    }
}

/// Watermarks are items of the idempotency table (`pk` = `watermark#<app>#<type>`, `until_ms`) without
/// an `expiration`, so the table's TTL never removes them.
#[async_trait]
impl Watermarks for DynamoStore {
    async fn get(&self, app_id: &str, kind: ObjectType) -> Result<Option<i64>, WatermarkError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(watermark::key(app_id, kind)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| WatermarkError(DisplayErrorContext(&e).to_string()))?;
        Ok(out.item.and_then(|item| {
            item.get("until_ms")
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse().ok())
        }))
    }

    async fn advance(&self, app_id: &str, kind: ObjectType, until_ms: i64) -> Result<(), WatermarkError> {
        let written = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(watermark::key(app_id, kind)))
            .update_expression("SET until_ms = :until")
            .condition_expression("attribute_not_exists(until_ms) OR until_ms < :until")
            .expression_attribute_values(":until", AttributeValue::N(until_ms.to_string()))
            .send()
            .await;
        match written {
            Ok(_) => Ok(()),
            // Already at or past it: a watermark never moves back.
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(()),
            Err(e) => Err(WatermarkError(DisplayErrorContext(&e).to_string())),
        }
    }
}
