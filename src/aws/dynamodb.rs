//! The DynamoDB adapter of the [`IdempotencyStore`] port. Record shape (Powertools-compatible when each
//! record is completed on its own): `pk`, `status`, `expiration` (Unix s, the table's TTL attribute),
//! `in_progress_expiration` (Unix ms, the lease), `lease_token`, `payload_hash`, `claimed_at` /
//! `completed_at` (Unix ms).
//!
//! Completing by batch ([`DynamoStore::with_batch_completion`], the worker Lambda's default): a claim
//! also carries `batch` (the batch's id) and `slot` (its index in the batch) and stays IN_PROGRESS; the
//! batch's completion is one item, `pk` = `batch#<id>`, with `slots` (a number set of the completed
//! slots), `expiration` and `completed_at`. One write completes up to a whole batch instead of one per
//! record. A refused claim on such a record reads the batch's item to tell a completed record from one in
//! flight or abandoned; a claim never takes over a record of a batch without that read, since the write's
//! condition cannot look at another item. (A reader that knows only Powertools' shape would take such a
//! record, IN_PROGRESS with a lapsed lease, for an abandoned one.) The takeover is that read and then a
//! write conditional on the lease token read: a batch completion landing between the two, which only a
//! completion written after its own lease ended can do, is not seen.

use std::collections::{BTreeMap, HashMap};
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
    BatchSlot, Claim, ClaimOutcome, IdempotencyStore, Lease, StoreError, StoredRecord, COMPLETED, IN_PROGRESS,
};
use crate::reconcile::watermark::{self, WatermarkError, Watermarks};
use crate::reconcile::ObjectType;

/// Absent, expired, or abandoned (an expired lease) by a holder that completes on its own: a record of a
/// batch is only taken over after its batch's completion was read ([`TAKEOVER_CONDITION`]).
const CLAIM_CONDITION: &str = "attribute_not_exists(pk) OR #exp < :now \
     OR (#status = :in_progress AND #lease < :now_ms AND attribute_not_exists(#batch))";
/// Still the abandoned record that was read: the same holder, its lease expired.
const TAKEOVER_CONDITION: &str = "#status = :in_progress AND lease_token = :old_token AND #lease < :now_ms";
const HOLDER_CONDITION: &str = "#status = :in_progress AND lease_token = :token";
/// The key prefix of a batch's completion item.
const BATCH_PREFIX: &str = "batch#";

#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    clock: Arc<dyn Clock>,
    batch_completion: bool,
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
    /// Each record is completed on its own (one write each).
    pub fn new(client: Client, table: impl Into<String>, clock: Arc<dyn Clock>) -> Self {
        Self {
            client,
            table: table.into(),
            clock,
            batch_completion: false,
        }
    }

    /// This store, completing a batch's records with one write when `on` (see the module's comment).
    pub fn with_batch_completion(self, on: bool) -> Self {
        Self {
            batch_completion: on,
            ..self
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Reads a record (consistently). Used when a refused claim came back without the old item.
    async fn read(&self, key: &str) -> Result<Option<Refused>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        Ok(out.item.as_ref().map(refused_from))
    }

    /// Writes `claim` as held by `lease`: a new claim, or, with `from`, a takeover of the abandoned record
    /// whose holder had that lease token.
    async fn put_claim(
        &self,
        claim: &Claim,
        lease: &Lease,
        from: Option<&str>,
    ) -> Result<(), SdkError<PutItemError, HttpResponse>> {
        let mut put = self
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
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#lease", "in_progress_expiration")
            .expression_attribute_values(":now_ms", n(claim.now_ms))
            .expression_attribute_values(":in_progress", s(IN_PROGRESS))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some(slot) = &lease.batch {
            put = put
                .item("batch", s(&slot.batch))
                .item("slot", n(i64::from(slot.slot)));
        }
        put = match from {
            Some(token) => put
                .condition_expression(TAKEOVER_CONDITION)
                .expression_attribute_values(":old_token", s(token)),
            None => put
                .condition_expression(CLAIM_CONDITION)
                .expression_attribute_names("#exp", "expiration")
                .expression_attribute_names("#batch", "batch")
                .expression_attribute_values(":now", n(claim.now_secs())),
        };
        put.send().await.map(|_| ())
    }

    /// Whether the batch's completion lists `slot` (read consistently).
    async fn batch_completed(&self, slot: &BatchSlot) -> Result<bool, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("{BATCH_PREFIX}{}", slot.batch)))
            .projection_expression("#slots")
            .expression_attribute_names("#slots", "slots")
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        let wanted = slot.slot.to_string();
        Ok(out
            .item
            .as_ref()
            .and_then(|item| item.get("slots"))
            .and_then(|slots| slots.as_ns().ok())
            .is_some_and(|slots| slots.contains(&wanted)))
    }

    /// Completes one batch's `leases` with one write: their slots are added to the batch's item.
    async fn complete_slots(
        &self,
        batch: &str,
        leases: &[&Lease],
        expiration: i64,
    ) -> Result<(), StoreError> {
        let mut slots: Vec<u32> = leases
            .iter()
            .filter_map(|lease| lease.batch.as_ref())
            .map(|slot| slot.slot)
            .collect();
        // A number set holds each number once; DynamoDB refuses a set given with duplicates.
        slots.sort_unstable();
        slots.dedup();
        let slots = slots.iter().map(u32::to_string).collect();
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("{BATCH_PREFIX}{batch}")))
            .update_expression("ADD #slots :slots SET #exp = :exp, completed_at = :now_ms")
            .expression_attribute_names("#slots", "slots")
            .expression_attribute_names("#exp", "expiration")
            .expression_attribute_values(":slots", AttributeValue::Ns(slots))
            .expression_attribute_values(":exp", n(expiration))
            .expression_attribute_values(":now_ms", n(self.clock.now_ms()))
            .send()
            .await
            .map(|_| ())
            .map_err(store_error)
    }

    /// Completes one record on its own, if `lease` still holds it.
    async fn complete_record(&self, lease: &Lease, expiration: i64) -> Result<(), StoreError> {
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

    /// The record behind a claim's failed condition (`None` when it has gone since); any other error is
    /// the store's.
    async fn refusing(
        &self,
        error: SdkError<PutItemError, HttpResponse>,
        claim: &Claim,
    ) -> Result<Option<Refused>, StoreError> {
        let old = match &error {
            SdkError::ServiceError(c) => match c.err() {
                PutItemError::ConditionalCheckFailedException(e) => Some(e.item().map(refused_from)),
                _ => None,
            },
            _ => None,
        };
        match old {
            None => Err(store_error(error)),
            Some(Some(record)) => Ok(Some(record)),
            Some(None) => self.read(claim.key.as_str()).await,
        }
    }
}

/// A record that refused a claim, with what a takeover needs.
struct Refused {
    record: StoredRecord,
    lease_token: Option<String>,
    /// The batch that completes it, when its holder completes by batch.
    batch: Option<BatchSlot>,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn refused_from(item: &HashMap<String, AttributeValue>) -> Refused {
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
    let number = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<i64>().ok())
    };
    Refused {
        record: StoredRecord {
            status: text("status").unwrap_or_default(),
            payload_hash: text("payload_hash"),
            expiration: number("expiration").unwrap_or(0),
            in_progress_expiration: number("in_progress_expiration").unwrap_or(0),
        },
        lease_token: text("lease_token"),
        batch: text("batch").map(|batch| BatchSlot {
            batch,
            slot: number("slot")
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(u32::MAX),
        }),
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
            let lease = Lease::new(claim.key.clone()).in_batch(claim.batch.clone());
            let error = match self.put_claim(claim, &lease, None).await {
                Ok(()) => return Ok(ClaimOutcome::Claimed(lease)),
                Err(error) => error,
            };
            let Some(old) = self.refusing(error, claim).await? else {
                continue;
            };
            let refusal = old.record.refusal(claim);
            // Only an unexpired IN_PROGRESS record of a batch needs its batch's completion read.
            let slot = old
                .batch
                .as_ref()
                .filter(|_| old.record.status == IN_PROGRESS && old.record.expiration >= claim.now_secs());
            let Some(slot) = slot else {
                match refusal {
                    Some(refusal) => return Ok(refusal),
                    None => continue,
                }
            };
            if self.batch_completed(slot).await? {
                return Ok(old.record.completed(claim));
            }
            if let Some(in_flight) = refusal {
                return Ok(in_flight);
            }
            // Abandoned: its lease expired and its batch never completed it. Take it over from that
            // holder, unless another worker did first.
            let Some(token) = old.lease_token else {
                // Not a record this store wrote: no takeover can be conditional on its holder.
                return Err(StoreError::Rejected(format!(
                    "the record for {} is IN_PROGRESS without a lease token",
                    claim.key
                )));
            };
            match self.put_claim(claim, &lease, Some(&token)).await {
                Ok(()) => return Ok(ClaimOutcome::Claimed(lease)),
                // Another worker changed the record first: look again.
                Err(error) if error.code() == Some("ConditionalCheckFailedException") => {}
                Err(error) => return Err(store_error(error)),
            }
        }
        Err(StoreError::Unavailable(format!(
            "the record for {} kept changing during the claim",
            claim.key
        )))
    }

    async fn complete(&self, lease: &Lease, expiration: i64) -> Result<(), StoreError> {
        match &lease.batch {
            Some(slot) => self.complete_slots(&slot.batch, &[lease], expiration).await,
            None => self.complete_record(lease, expiration).await,
        }
    }

    fn completes_by_batch(&self) -> bool {
        self.batch_completion
    }

    /// One write per batch among `leases` (its item's `slots` gain theirs), one per lease without one.
    async fn complete_batch(&self, leases: &[Lease], expiration: i64) -> Vec<Result<(), StoreError>> {
        let mut batches: BTreeMap<&str, Vec<&Lease>> = BTreeMap::new();
        for lease in leases {
            if let Some(slot) = &lease.batch {
                batches.entry(slot.batch.as_str()).or_default().push(lease);
            }
        }
        let mut written = HashMap::new();
        for (batch, members) in batches {
            written.insert(batch, self.complete_slots(batch, &members, expiration).await);
        }
        let mut results = Vec::with_capacity(leases.len());
        for lease in leases {
            results.push(match &lease.batch {
                Some(slot) => written[slot.batch.as_str()].clone(),
                None => self.complete_record(lease, expiration).await,
            });
        }
        results
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
