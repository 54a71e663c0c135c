//! The idempotency state machine: a notification is claimed (IN_PROGRESS, with a lease), then completed
//! (COMPLETED until the retention ends) or released (deleted) by whoever holds the lease. Every move is
//! one conditional write in the store, except around batches (below).
//!
//! A store may also complete a whole batch with one write ([`IdempotencyStore::completes_by_batch`]): each
//! claim then names its [`BatchSlot`], the worker completes the batch's handled claims together when the
//! batch ends, and a record still IN_PROGRESS counts as completed when its batch's completion lists its
//! slot. A record taken over or released names another batch or none, so a late batch completion never
//! marks it. Deciding on such a record reads the batch's completion first, so taking it over is a read,
//! then a write conditional on the lease token that was read: a batch completion written between the
//! two is not seen, and the record is handled again (the DynamoDB store's comment says when).

use std::fmt;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::receiving::notification::{AppId, NotificationId};

/// The record key: the notification id, qualified by the app id when there is one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn for_notification(id: &NotificationId, app: Option<&AppId>) -> Self {
        match app {
            Some(app) => Self(format!("{app}#{id}")),
            None => Self(id.to_string()),
        }
    }

    /// A key read back from a store.
    pub fn from_stored(raw: impl Into<String>) -> Self {
        Self(raw.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 (hex) of the canonical JSON of a notification's `data`: object keys sorted, no whitespace.
pub fn payload_hash(data: &serde_json::Value) -> String {
    // serde_json's map is ordered by key unless `preserve_order` is on, which makes this canonical.
    let canonical = serde_json::to_vec(data).expect("a JSON value always serialises");
    hex::encode(Sha256::digest(&canonical))
}

/// Record states, as stored.
pub const IN_PROGRESS: &str = "IN_PROGRESS";
pub const COMPLETED: &str = "COMPLETED";

/// What a claim asks for. Times come from the caller's clock so every adapter agrees on them.
#[derive(Clone, Debug)]
pub struct Claim {
    pub key: IdempotencyKey,
    pub payload_hash: String,
    /// Now, Unix milliseconds.
    pub now_ms: i64,
    /// The lease: until when (Unix ms) this worker may hold the claim.
    pub lease_until_ms: i64,
    /// When the record may be forgotten (Unix seconds; the table's TTL attribute).
    pub expiration: i64,
    /// The claim's place in its batch, when the store completes by batch; `None` otherwise.
    pub batch: Option<BatchSlot>,
}

/// Where a claim's completion will be written: the batch (a random 128-bit id, one per batch the worker
/// processes) and the claim's slot in it (its record's index in the batch).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BatchSlot {
    pub batch: String,
    pub slot: u32,
}

impl BatchSlot {
    /// A new batch's id.
    pub fn new_batch_id() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }
}

impl Claim {
    pub fn now_secs(&self) -> i64 {
        self.now_ms.div_euclid(1000)
    }
}

/// A held claim. Only its holder can complete or release the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub key: IdempotencyKey,
    pub token: String,
    /// The batch whose completion completes this claim, when the store completes by batch.
    pub batch: Option<BatchSlot>,
}

impl Lease {
    pub fn new(key: IdempotencyKey) -> Self {
        Self {
            key,
            token: uuid::Uuid::new_v4().simple().to_string(),
            batch: None,
        }
    }

    /// This lease, completed with the batch `slot` names.
    pub fn in_batch(self, slot: Option<BatchSlot>) -> Self {
        Self { batch: slot, ..self }
    }
}

/// The answer to a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This worker holds the record now and must complete or release it.
    Claimed(Lease),
    /// Already processed; `same_payload` is false when the stored payload hash differs (a reused key).
    Completed { same_payload: bool },
    /// Another worker holds an unexpired lease until `lease_until_ms`.
    InFlight { lease_until_ms: i64 },
}

/// A stored record as the state machine sees it (used by adapters to explain a refused claim).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub status: String,
    pub payload_hash: Option<String>,
    pub expiration: i64,
    pub in_progress_expiration: i64,
}

impl StoredRecord {
    /// This record, found completed, as the answer to `claim`: the payloads compared.
    pub fn completed(&self, claim: &Claim) -> ClaimOutcome {
        ClaimOutcome::Completed {
            same_payload: self.payload_hash.as_deref() == Some(claim.payload_hash.as_str()),
        }
    }

    /// Why `claim` could not take this record. `None` if the record should not have blocked the claim
    /// (expired or an expired lease): the adapter may then retry the claim.
    pub fn refusal(&self, claim: &Claim) -> Option<ClaimOutcome> {
        if self.expiration < claim.now_secs() {
            return None;
        }
        if self.status == COMPLETED {
            return Some(self.completed(claim));
        }
        if self.in_progress_expiration < claim.now_ms {
            return None;
        }
        Some(ClaimOutcome::InFlight {
            lease_until_ms: self.in_progress_expiration,
        })
    }
}

/// The idempotency port.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Takes the record if it is absent, expired, or IN_PROGRESS with an expired lease (and, for a record
    /// of a batch, not listed by its batch's completion); otherwise says why not. One conditional write,
    /// plus a read of the batch's completion when the record is a batch's (the SQLite store holds a claim
    /// in memory instead and only reads the file).
    async fn claim(&self, claim: &Claim) -> Result<ClaimOutcome, StoreError>;
    /// Marks the record COMPLETED until `expiration` (Unix s) at least (a store may keep the later one
    /// its claim set), if `lease` still holds it. A lease in a batch is completed through its batch
    /// instead, without that check: the batch's completion only counts for a record that still names
    /// the lease's slot.
    async fn complete(&self, lease: &Lease, expiration: i64) -> Result<(), StoreError>;
    /// Deletes the record (the SQLite store forgets its hold), if `lease` still holds it, so a later
    /// delivery can claim it.
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Whether claims should name their [`BatchSlot`] and be completed together with
    /// [`IdempotencyStore::complete_batch`] when their batch ends (one write per batch instead of one
    /// per record). `false` unless the store says otherwise.
    fn completes_by_batch(&self) -> bool {
        false
    }

    /// Marks every lease completed until `expiration` (Unix s), one result per lease in order. By
    /// default one [`IdempotencyStore::complete`] each; a store that completes by batch writes each
    /// batch's completion once.
    async fn complete_batch(&self, leases: &[Lease], expiration: i64) -> Vec<Result<(), StoreError>> {
        let mut results = Vec::with_capacity(leases.len());
        for lease in leases {
            results.push(self.complete(lease, expiration).await);
        }
        results
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or failed transiently: retry later.
    #[error("idempotency store unavailable: {0}")]
    Unavailable(String),
    /// The lease token no longer matches: another worker took the record over.
    #[error("the claim on {0} is no longer held by this worker")]
    LeaseLost(IdempotencyKey),
    /// The store refused the request itself (bad table, bad schema): retrying will not help.
    #[error("idempotency store refused the request: {0}")]
    Rejected(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_qualified_by_app() {
        let id = NotificationId::parse("notif_1").unwrap();
        let app = AppId::parse("abc").unwrap();
        assert_eq!(
            IdempotencyKey::for_notification(&id, Some(&app)).as_str(),
            "abc#notif_1"
        );
        assert_eq!(IdempotencyKey::for_notification(&id, None).as_str(), "notif_1");
    }

    #[test]
    fn payload_hash_is_canonical() {
        let a: serde_json::Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": "s"}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str("{\n \"a\": {\"x\":\"s\",\"y\":[1,2]},\"b\":1}").unwrap();
        assert_eq!(payload_hash(&a), payload_hash(&b));
        assert_ne!(payload_hash(&a), payload_hash(&json!({"b": 2})));
        assert_eq!(payload_hash(&a).len(), 64);
    }

    fn claim(now_ms: i64) -> Claim {
        Claim {
            key: IdempotencyKey::from_stored("k"),
            payload_hash: "h".into(),
            now_ms,
            lease_until_ms: now_ms + 1000,
            expiration: now_ms / 1000 + 60,
            batch: None,
        }
    }

    #[test]
    fn refusals() {
        let completed = StoredRecord {
            status: COMPLETED.into(),
            payload_hash: Some("h".into()),
            expiration: 100,
            in_progress_expiration: 0,
        };
        assert_eq!(
            completed.refusal(&claim(50_000)),
            Some(ClaimOutcome::Completed { same_payload: true })
        );
        let other = StoredRecord {
            payload_hash: Some("other".into()),
            ..completed.clone()
        };
        assert_eq!(
            other.refusal(&claim(50_000)),
            Some(ClaimOutcome::Completed { same_payload: false })
        );
        assert_eq!(
            completed.refusal(&claim(101_000)),
            None,
            "expired records are absent"
        );
        let in_progress = StoredRecord {
            status: IN_PROGRESS.into(),
            payload_hash: Some("h".into()),
            expiration: 100,
            in_progress_expiration: 60_000,
        };
        assert_eq!(
            in_progress.refusal(&claim(50_000)),
            Some(ClaimOutcome::InFlight {
                lease_until_ms: 60_000
            })
        );
        assert_eq!(
            in_progress.refusal(&claim(60_001)),
            None,
            "an expired lease can be taken over"
        );
    }

    #[test]
    fn a_lease_carries_its_key_and_a_random_128_bit_token() {
        let key = IdempotencyKey::from_stored("notif_1");
        let leases: Vec<Lease> = (0..10_000).map(|_| Lease::new(key.clone())).collect();
        for lease in &leases {
            assert_eq!(lease.key, key);
            assert_eq!(lease.token.len(), 32, "{}", lease.token);
            assert!(
                lease
                    .token
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{}",
                lease.token
            );
        }
        let tokens: std::collections::HashSet<&str> = leases.iter().map(|l| l.token.as_str()).collect();
        assert_eq!(tokens.len(), leases.len());
        // Random from the first character: tokens made in the same millisecond (by two workers taking
        // over one record) share no time-based prefix.
        let prefixes: std::collections::HashSet<&str> =
            leases.iter().take(1000).map(|l| &l.token[..8]).collect();
        assert!(prefixes.len() > 990, "{} distinct prefixes", prefixes.len());
    }
}
