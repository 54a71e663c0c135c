//! The SQLite adapter of the [`IdempotencyStore`] port, with the same semantics as the DynamoDB one. The
//! file holds completed records only: a claim in progress lives in this store's memory until it is
//! completed (one conditional upsert) or released (nothing written). Only one process claims in a file,
//! since `serve` holds the file's lock (`local::server`), and a claim in progress means nothing after
//! that process ends: its lease would have lapsed by the time the queue delivers its message again. So
//! a notification costs the file one write, its completion, instead of a claim and then an update.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::db::{Db, DbError};
use crate::plumbing::clock::{Clock, SystemClock};
use crate::processing::idempotency::{
    Claim, ClaimOutcome, IdempotencyStore, Lease, StoreError, StoredRecord, COMPLETED,
};
use crate::reconcile::watermark::{self, WatermarkError, Watermarks};
use crate::reconcile::ObjectType;

#[derive(Clone)]
pub struct SqliteStore {
    db: Db,
    clock: Arc<dyn Clock>,
    held: Arc<Mutex<Held>>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// The claims in progress, by key.
struct Held {
    claims: HashMap<String, InProgress>,
    /// When `claims` reaches this size, claims whose lease lapsed [`PRUNE_AFTER_LAPSE_MS`] ago or more
    /// (cut off at a deadline, never completed or released) are dropped.
    prune_at: usize,
}

/// Claims held at once are bounded by the worker's batches in flight; lapsed ones are dropped past this.
const PRUNE_AT_LEAST: usize = 1024;

/// A hold whose lease ended this long ago is dropped when holds are pruned. Until then its holder may
/// still complete or release it, as a store that writes claims allows until a claim takes the record
/// over; the worker's completions come within its deadline margin of the lease's end, well inside this.
const PRUNE_AFTER_LAPSE_MS: i64 = 60_000;

impl Default for Held {
    fn default() -> Self {
        Self {
            claims: HashMap::new(),
            prune_at: PRUNE_AT_LEAST,
        }
    }
}

/// A claim in progress: what its record holds once completed.
struct InProgress {
    token: String,
    lease_until_ms: i64,
    expiration: i64,
    payload_hash: String,
    claimed_at: i64,
}

impl SqliteStore {
    /// A store on the real time.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            clock: Arc::new(SystemClock),
            held: Arc::default(),
        }
    }

    /// This store with completion times from `clock` (claims carry their own times).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self { clock, ..self }
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        lock(&self.held)
    }

    /// Whether another claim holds `key` with a lease unexpired at `now_ms`: its lease's end.
    fn held_by_another(held: &Held, key: &str, now_ms: i64) -> Option<i64> {
        held.claims
            .get(key)
            .map(|c| c.lease_until_ms)
            .filter(|&until| until >= now_ms)
    }

    /// Holds `claim` for `lease`, dropping lapsed holds first when many are held.
    fn hold(held: &mut Held, claim: &Claim, lease: &Lease) {
        if held.claims.len() >= held.prune_at {
            held.claims
                .retain(|_, c| c.lease_until_ms + PRUNE_AFTER_LAPSE_MS >= claim.now_ms);
            held.prune_at = PRUNE_AT_LEAST.max(2 * held.claims.len());
        }
        held.claims.insert(
            claim.key.as_str().to_owned(),
            InProgress {
                token: lease.token.clone(),
                lease_until_ms: claim.lease_until_ms,
                expiration: claim.expiration,
                payload_hash: claim.payload_hash.clone(),
                claimed_at: claim.now_ms,
            },
        );
    }

    /// Ends the claim `lease` holds; whether it held one.
    fn let_go(&self, lease: &Lease) -> bool {
        let mut held = self.held();
        let holds = held
            .claims
            .get(lease.key.as_str())
            .is_some_and(|c| c.token == lease.token);
        if holds {
            held.claims.remove(lease.key.as_str());
        }
        holds
    }
}

fn lock(held: &Mutex<Held>) -> MutexGuard<'_, Held> {
    held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unavailable(e: DbError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[async_trait]
impl IdempotencyStore for SqliteStore {
    /// Decided on the database thread, where completions write their records: the file's record refuses
    /// the claim when it is completed (or left IN_PROGRESS by an earlier version, with its lease
    /// running); otherwise a claim held in memory does; otherwise this claim is held. Concurrent claims of
    /// one key are decided one after the other, and a completed record is seen from its completion's
    /// write on, even before its hold ends. A hold taken by a group whose commit then fails is let go.
    async fn claim(&self, claim: &Claim) -> Result<ClaimOutcome, StoreError> {
        let claim = claim.clone();
        let lease = Lease::new(claim.key.clone());
        let taking = lease.clone();
        let held = self.held.clone();
        // The operation writes nothing to the file; the hold it takes is let go below if its group's
        // commit fails, which a rollback would not undo.
        let decided = self
            .db
            .call_single_write_deferred(move |c| {
                let stored = c
                    .prepare_cached(
                        "SELECT status, payload_hash, expiration, in_progress_expiration FROM idempotency WHERE pk = ?1",
                    )?
                    .query_row([claim.key.as_str()], |r| {
                        Ok(StoredRecord {
                            status: r.get(0)?,
                            payload_hash: r.get(1)?,
                            expiration: r.get(2)?,
                            in_progress_expiration: r.get(3)?,
                        })
                    })
                    .optional()?;
                if let Some(refused) = stored.and_then(|record| record.refusal(&claim)) {
                    return Ok(refused);
                }
                let mut held = lock(&held);
                if let Some(lease_until_ms) = Self::held_by_another(&held, claim.key.as_str(), claim.now_ms) {
                    return Ok(ClaimOutcome::InFlight { lease_until_ms });
                }
                Self::hold(&mut held, &claim, &taking);
                Ok(ClaimOutcome::Claimed(taking))
            })
            .await;
        decided.map_err(|error| {
            self.let_go(&lease);
            unavailable(error)
        })
    }

    /// Writes the completed record, keeping the later of its claim's expiration and `expiration`, then
    /// ends the hold. The hold is checked on the database thread, with the write, so that no claim takes
    /// the key over in between; it ends once the write is committed (claims read the record first, so
    /// they find it completed meanwhile). A claim whose completion failed, the commit included, stays
    /// held until its lease lapses, as its record would stay IN_PROGRESS in a store that writes claims.
    async fn complete(&self, lease: &Lease, expiration: i64) -> Result<(), StoreError> {
        let (key, token) = (lease.key.as_str().to_owned(), lease.token.clone());
        let now_ms = self.clock.now_ms();
        let held = self.held.clone();
        let written = self
            .db
            .call_single_write(move |c| {
                let held = lock(&held);
                let Some(claim) = held.claims.get(&key).filter(|c| c.token == token) else {
                    return Ok(false);
                };
                // Never over a completed record still kept: only an expired one, or one an earlier
                // version left IN_PROGRESS.
                let written = c
                    .prepare_cached(
                        "INSERT INTO idempotency
                             (pk, status, expiration, in_progress_expiration, lease_token, payload_hash, claimed_at, completed_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT (pk) DO UPDATE SET
                             status = excluded.status, expiration = excluded.expiration,
                             in_progress_expiration = excluded.in_progress_expiration, lease_token = excluded.lease_token,
                             payload_hash = excluded.payload_hash, claimed_at = excluded.claimed_at,
                             completed_at = excluded.completed_at
                         WHERE idempotency.status <> ?2 OR idempotency.expiration < ?9",
                    )?
                    .execute(params![
                        key,
                        COMPLETED,
                        claim.expiration.max(expiration),
                        claim.lease_until_ms,
                        token,
                        claim.payload_hash,
                        claim.claimed_at,
                        now_ms,
                        now_ms.div_euclid(1000),
                    ])?;
                Ok(written == 1)
            })
            .await
            .map_err(unavailable)?;
        self.let_go(lease);
        if written {
            Ok(())
        } else {
            Err(StoreError::LeaseLost(lease.key.clone()))
        }
    }

    /// Nothing was written for the claim, so nothing is deleted.
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        if self.let_go(lease) {
            Ok(())
        } else {
            Err(StoreError::LeaseLost(lease.key.clone()))
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processing::idempotency::{IdempotencyKey, IN_PROGRESS};

    fn claim(key: &str, now_ms: i64, lease_ms: i64) -> Claim {
        Claim {
            key: IdempotencyKey::from_stored(key),
            payload_hash: "h".into(),
            now_ms,
            lease_until_ms: now_ms + lease_ms,
            expiration: now_ms / 1000 + 3600,
            batch: None,
        }
    }

    async fn open() -> (tempfile::TempDir, Db, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("s.db")).unwrap();
        let store = SqliteStore::new(db.clone());
        (dir, db, store)
    }

    /// (pk, status, lease_token) of every record in the file.
    async fn records(db: &Db) -> Vec<(String, String, Option<String>)> {
        db.call(|c| {
            let mut rows = c.prepare("SELECT pk, status, lease_token FROM idempotency ORDER BY pk")?;
            let all = rows
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            Ok(all)
        })
        .await
        .unwrap()
    }

    fn lease(outcome: ClaimOutcome) -> Lease {
        match outcome {
            ClaimOutcome::Claimed(lease) => lease,
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_claim_writes_nothing_and_its_completion_writes_the_one_record() {
        let (_dir, db, store) = open().await;
        let now = 1_800_000_000_000;
        let held = lease(store.claim(&claim("a", now, 30_000)).await.unwrap());
        let released = lease(store.claim(&claim("b", now, 30_000)).await.unwrap());
        assert_eq!(
            records(&db).await,
            vec![],
            "claims in progress are not in the file"
        );

        store.complete(&held, now / 1000 + 7200).await.unwrap();
        store.release(&released).await.unwrap();
        assert_eq!(
            records(&db).await,
            vec![("a".into(), COMPLETED.into(), Some(held.token.clone()))]
        );
        let (expiration, claimed_at): (i64, i64) = db
            .call(|c| {
                Ok(
                    c.query_row("SELECT expiration, claimed_at FROM idempotency", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?,
                )
            })
            .await
            .unwrap();
        assert_eq!((expiration, claimed_at), (now / 1000 + 7200, now));
        assert!(store.held().claims.is_empty());
    }

    #[tokio::test]
    async fn a_record_left_in_progress_by_an_earlier_version_is_respected_until_its_lease_lapses() {
        let (_dir, db, store) = open().await;
        let now = 1_800_000_000_000_i64;
        db.call(move |c| {
            c.execute(
                "INSERT INTO idempotency (pk, status, expiration, in_progress_expiration, lease_token, payload_hash, claimed_at)
                 VALUES ('old', ?1, ?2, ?3, 'old-token', 'h', ?4)",
                params![IN_PROGRESS, now / 1000 + 3600, now + 5_000, now - 1_000],
            )?;
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(
            store.claim(&claim("old", now, 30_000)).await.unwrap(),
            ClaimOutcome::InFlight {
                lease_until_ms: now + 5_000
            }
        );
        assert!(store.held().claims.is_empty(), "a refused claim holds nothing");

        let later = now + 6_000;
        let taken = lease(store.claim(&claim("old", later, 30_000)).await.unwrap());
        store.complete(&taken, later / 1000 + 3600).await.unwrap();
        assert_eq!(
            records(&db).await,
            vec![("old".into(), COMPLETED.into(), Some(taken.token))]
        );
    }

    #[tokio::test]
    async fn claims_whose_lease_lapsed_a_minute_ago_are_dropped_once_many_are_held() {
        let (_dir, _db, store) = open().await;
        let now = 1_800_000_000_000_i64;
        // Cut off at a deadline: claimed, then neither completed nor released.
        for i in 0..PRUNE_AT_LEAST {
            let cut = claim(&format!("cut-{i}"), now, 1_000);
            lease(store.claim(&cut).await.unwrap());
        }
        // Soon after their leases ended, their holders may still complete them: kept.
        let soon = lease(store.claim(&claim("soon", now + 2_000, 30_000)).await.unwrap());
        assert_eq!(store.held().claims.len(), PRUNE_AT_LEAST + 1);
        store.release(&soon).await.unwrap();
        let late = lease(store.claim(&claim("cut-0", now + 2_000, 30_000)).await.unwrap());
        store.complete(&late, now / 1000 + 3600).await.unwrap();
        // A minute after, they are dropped the next time as many are held as pruning waits for.
        let n = {
            let held = store.held();
            held.prune_at - held.claims.len() + 1
        };
        for i in 0..n {
            let more = claim(&format!("more-{i}"), now + 62_000, 1_000);
            lease(store.claim(&more).await.unwrap());
        }
        let held = store.held();
        assert_eq!(
            held.claims.len(),
            n,
            "only the claims whose leases ended lately are kept"
        );
        assert!(held.claims.keys().all(|k| k.starts_with("more-")));
    }
}
