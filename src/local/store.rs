//! The SQLite adapter of the [`IdempotencyStore`] port, with the same semantics as the DynamoDB one: the
//! claim is one conditional upsert, complete and release are conditional on the lease token.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::db::{Db, DbError};
use crate::plumbing::clock::{Clock, SystemClock};
use crate::processing::idempotency::{
    Claim, ClaimOutcome, IdempotencyStore, Lease, StoreError, StoredRecord, COMPLETED, IN_PROGRESS,
};
use crate::reconcile::watermark::{self, WatermarkError, Watermarks};
use crate::reconcile::ObjectType;

#[derive(Clone)]
pub struct SqliteStore {
    db: Db,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// A store on the real time.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            clock: Arc::new(SystemClock),
        }
    }

    /// This store with completion times from `clock` (claims carry their own times).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self { clock, ..self }
    }
}

fn unavailable(e: DbError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn claim(&self, claim: &Claim) -> Result<ClaimOutcome, StoreError> {
        let claim = claim.clone();
        self.db
            .call_single_write_deferred(move |c| {
                let lease = Lease::new(claim.key.clone());
                let taken = c.prepare_cached(
                    "INSERT INTO idempotency (pk, status, expiration, in_progress_expiration, lease_token, payload_hash, claimed_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (pk) DO UPDATE SET
                         status = excluded.status, expiration = excluded.expiration,
                         in_progress_expiration = excluded.in_progress_expiration, lease_token = excluded.lease_token,
                         payload_hash = excluded.payload_hash, claimed_at = excluded.claimed_at, completed_at = NULL
                     WHERE idempotency.expiration < ?8
                        OR (idempotency.status = ?2 AND idempotency.in_progress_expiration < ?7)",
                )?
                .execute(params![
                        claim.key.as_str(),
                        IN_PROGRESS,
                        claim.expiration,
                        claim.lease_until_ms,
                        lease.token,
                        claim.payload_hash,
                        claim.now_ms,
                        claim.now_secs(),
                    ])?;
                if taken == 1 {
                    return Ok(Ok(ClaimOutcome::Claimed(lease)));
                }
                let old = c
                    .prepare_cached(
                        "SELECT status, payload_hash, expiration, in_progress_expiration FROM idempotency WHERE pk = ?1",
                    )?
                    .query_row(
                        [claim.key.as_str()],
                        |r| {
                            Ok(StoredRecord {
                                status: r.get(0)?,
                                payload_hash: r.get(1)?,
                                expiration: r.get(2)?,
                                in_progress_expiration: r.get(3)?,
                            })
                        },
                    )
                    .optional()?;
                // In one transaction the record cannot change between the two statements.
                Ok(old
                    .and_then(|record| record.refusal(&claim))
                    .ok_or_else(|| StoreError::Unavailable("the claim was refused for no visible reason".into())))
            })
            .await
            .map_err(unavailable)?
    }

    /// The record keeps the later of its claim's expiration and `expiration`. A completion in the same
    /// second as its claim asks for the expiration the claim already set, and then leaves the column,
    /// and so `idempotency_by_expiration`, untouched: otherwise every completion's commit rewrites a leaf
    /// of that index (bench/RESULTS.md).
    async fn complete(&self, lease: &Lease, expiration: i64) -> Result<(), StoreError> {
        let (key, token) = (lease.key.as_str().to_owned(), lease.token.clone());
        let now_ms = self.clock.now_ms();
        let changed = self
            .db
            // The first statement writes nothing when it changes no row, so the second alone may write.
            .call_single_write(move |c| {
                let kept = c
                    .prepare_cached(
                        "UPDATE idempotency SET status = ?1, completed_at = ?2
                         WHERE pk = ?3 AND status = ?4 AND lease_token = ?5 AND expiration >= ?6",
                    )?
                    .execute(params![COMPLETED, now_ms, key, IN_PROGRESS, token, expiration])?;
                if kept > 0 {
                    return Ok(kept);
                }
                Ok(c.prepare_cached(
                    "UPDATE idempotency SET status = ?1, expiration = ?2, completed_at = ?3
                     WHERE pk = ?4 AND status = ?5 AND lease_token = ?6",
                )?
                .execute(params![COMPLETED, expiration, now_ms, key, IN_PROGRESS, token])?)
            })
            .await
            .map_err(unavailable)?;
        held(changed, lease)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let (key, token) = (lease.key.as_str().to_owned(), lease.token.clone());
        let changed = self
            .db
            .call_single_write_deferred(move |c| {
                Ok(c.prepare_cached(
                    "DELETE FROM idempotency WHERE pk = ?1 AND status = ?2 AND lease_token = ?3",
                )?
                .execute(params![key, IN_PROGRESS, token])?)
            })
            .await
            .map_err(unavailable)?;
        held(changed, lease)
    }
}

/// A holder-only write changed its row, or the lease was lost.
fn held(changed: usize, lease: &Lease) -> Result<(), StoreError> {
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost(lease.key.clone()))
    }
}

/// Watermarks live beside the idempotency records, in their own table of the same file.
#[async_trait]
impl Watermarks for SqliteStore {
    async fn get(&self, app_id: &str, kind: ObjectType) -> Result<Option<i64>, WatermarkError> {
        let key = watermark::key(app_id, kind);
        self.db
            .call(move |c| {
                Ok(
                    c.prepare_cached("SELECT until_ms FROM watermarks WHERE key = ?1")?
                        .query_row([key], |r| r.get(0))
                        .optional()?,
                )
            })
            .await
            .map_err(|e| WatermarkError(e.to_string()))
    }

    async fn advance(&self, app_id: &str, kind: ObjectType, until_ms: i64) -> Result<(), WatermarkError> {
        let key = watermark::key(app_id, kind);
        self.db
            .call_single_write(move |c| {
                c.prepare_cached(
                    "INSERT INTO watermarks (key, until_ms) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET until_ms = max(until_ms, excluded.until_ms)",
                )?
                .execute(params![key, until_ms])?;
                Ok(())
            })
            .await
            .map_err(|e| WatermarkError(e.to_string()))
    }
}
