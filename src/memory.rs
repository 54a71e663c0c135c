//! In-memory adapters of the queue and idempotency ports, for tests and for embedding the worker where
//! nothing has to outlive the process. They keep the SQLite adapters' semantics: a claim is taken only
//! when [`StoredRecord::refusal`] has no objection, complete and release need the lease token, a received
//! message is hidden for the visibility timeout, every receive counts, and a message received
//! `max_receives` times goes to the dead letters when it would next be handed out. All times come from
//! the injected [`Clock`], so a test moves time instead of sleeping.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::plumbing::clock::Clock;
use crate::processing::dead_letters::DeadLetter;
use crate::processing::dead_letters::{max_receives_reason, receives_exhausted};
use crate::processing::idempotency::{
    Claim, ClaimOutcome, IdempotencyStore, Lease, StoreError, StoredRecord, COMPLETED, IN_PROGRESS,
};
use crate::receiving::queue::{
    attr, DeadLetterQueue, Delivery, Message, Queue, QueueConsumer, QueueError, Record,
};

/// A queue and its dead letters in memory.
pub struct MemoryQueue {
    max_receives: u32,
    clock: Arc<dyn Clock>,
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    next_seq: u64,
    /// By sequence number: received in the order sent.
    messages: BTreeMap<u64, Queued>,
    dead_letters: Vec<DeadLetter>,
}

struct Queued {
    message_id: String,
    message: Message,
    visible_at: i64,
    receive_count: u32,
    /// The receipt of the latest receive: only it settles the message.
    receipt: Option<String>,
    last_error: Option<String>,
}

impl MemoryQueue {
    pub fn new(max_receives: u32, clock: Arc<dyn Clock>) -> Self {
        Self {
            max_receives: max_receives.max(1),
            clock,
            state: Mutex::default(),
        }
    }

    /// The dead letters, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.state().dead_letters.clone()
    }

    /// Messages not yet acknowledged or dead-lettered (received ones included).
    pub fn len(&self) -> usize {
        self.state().messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn state(&self) -> MutexGuard<'_, QueueState> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent state.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl QueueState {
    fn bury(&mut self, message_id: String, message: &Message, reason: &str, receive_count: u32, now: i64) {
        let stored = message.with_reason(reason, now);
        self.dead_letters.push(DeadLetter {
            id: message_id,
            notification_id: stored.attribute(attr::NOTIFICATION_ID).map(str::to_owned),
            topic: stored.attribute(attr::TOPIC).map(str::to_owned),
            reason: stored.attribute(attr::REASON).unwrap_or(reason).to_owned(),
            receive_count,
            dead_lettered_at_ms: Some(now),
            body: stored.body,
            attributes: stored.attributes,
        });
    }

    /// The message a receipt settles, if the receipt is still its latest one.
    fn held(&mut self, receipt: &str) -> Option<(u64, &mut Queued)> {
        let seq = receipt.split_once('.')?.0.parse().ok()?;
        let queued = self.messages.get_mut(&seq)?;
        (queued.receipt.as_deref() == Some(receipt)).then_some((seq, queued))
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn send(&self, message: &Message) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        let mut state = self.state();
        state.next_seq += 1;
        let seq = state.next_seq;
        state.messages.insert(
            seq,
            Queued {
                message_id: new_id(),
                message: message.clone(),
                visible_at: now,
                receive_count: 0,
                receipt: None,
                last_error: None,
            },
        );
        Ok(())
    }
}

#[async_trait]
impl DeadLetterQueue for MemoryQueue {
    async fn dead_letter(&self, message: &Message, reason: &str) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        let receive_count = message
            .attribute(attr::RECEIVE_COUNT)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        self.state().bury(new_id(), message, reason, receive_count, now);
        Ok(())
    }
}

#[async_trait]
impl QueueConsumer for MemoryQueue {
    async fn receive(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        let now = self.clock.now_ms();
        let mut state = self.state();
        let visible: Vec<u64> = state
            .messages
            .iter()
            .filter(|(_, q)| q.visible_at <= now)
            .map(|(&seq, _)| seq)
            .collect();
        let mut out = Vec::new();
        for seq in visible {
            if out.len() == max {
                break;
            }
            let count = state.messages[&seq].receive_count;
            if receives_exhausted(count, self.max_receives) {
                let queued = state.messages.remove(&seq).expect("listed above");
                let reason = max_receives_reason(count, queued.last_error.as_deref());
                state.bury(queued.message_id, &queued.message, &reason, count, now);
                continue;
            }
            let queued = state.messages.get_mut(&seq).expect("listed above");
            let receipt = format!("{seq}.{}", new_id());
            queued.receive_count += 1;
            queued.visible_at = now + visibility.as_millis() as i64;
            queued.receipt = Some(receipt.clone());
            out.push(Delivery {
                record: Record {
                    message_id: queued.message_id.clone(),
                    message: queued.message.clone(),
                    receive_count: queued.receive_count,
                },
                receipt,
            });
        }
        Ok(out)
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        let mut state = self.state();
        if let Some((seq, _)) = state.held(receipt) {
            state.messages.remove(&seq);
        }
        Ok(())
    }

    async fn retry(&self, receipt: &str, error: &str, delay: Duration) -> Result<(), QueueError> {
        let visible_at = self.clock.now_ms() + delay.as_millis() as i64;
        if let Some((_, queued)) = self.state().held(receipt) {
            queued.visible_at = visible_at;
            queued.last_error = Some(error.to_owned());
        }
        Ok(())
    }
}

/// An idempotency store in memory. Claims carry their own times (from the worker's clock); the store
/// stamps completions with its clock, as the SQLite and DynamoDB stores do.
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    records: Mutex<HashMap<String, Stored>>,
}

struct Stored {
    record: StoredRecord,
    lease_token: String,
    completed_at_ms: Option<i64>,
}

impl MemoryStore {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            records: Mutex::default(),
        }
    }

    /// The record stored under `key`, expired or not, as the state machine sees it.
    pub fn record(&self, key: &str) -> Option<StoredRecord> {
        self.records().get(key).map(|s| s.record.clone())
    }

    /// When the record under `key` was completed (Unix ms), if it was.
    pub fn completed_at_ms(&self, key: &str) -> Option<i64> {
        self.records().get(key).and_then(|s| s.completed_at_ms)
    }

    fn records(&self) -> MutexGuard<'_, HashMap<String, Stored>> {
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The record `lease` holds, if it still holds it.
    fn held<'a>(
        records: &'a mut HashMap<String, Stored>,
        lease: &Lease,
    ) -> Result<&'a mut Stored, StoreError> {
        records
            .get_mut(lease.key.as_str())
            .filter(|s| s.record.status == IN_PROGRESS && s.lease_token == lease.token)
            .ok_or_else(|| StoreError::LeaseLost(lease.key.clone()))
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(&self, claim: &Claim) -> Result<ClaimOutcome, StoreError> {
        let mut records = self.records();
        // The lock makes the check and the write one step, like the other stores' conditional write.
        if let Some(refusal) = records
            .get(claim.key.as_str())
            .and_then(|stored| stored.record.refusal(claim))
        {
            return Ok(refusal);
        }
        let lease = Lease::new(claim.key.clone());
        records.insert(
            claim.key.as_str().to_owned(),
            Stored {
                record: StoredRecord {
                    status: IN_PROGRESS.into(),
                    payload_hash: Some(claim.payload_hash.clone()),
                    expiration: claim.expiration,
                    in_progress_expiration: claim.lease_until_ms,
                },
                lease_token: lease.token.clone(),
                completed_at_ms: None,
            },
        );
        Ok(ClaimOutcome::Claimed(lease))
    }

    async fn complete(&self, lease: &Lease, expiration: i64) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut records = self.records();
        let stored = Self::held(&mut records, lease)?;
        stored.record.status = COMPLETED.into();
        stored.record.expiration = expiration;
        stored.completed_at_ms = Some(now);
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut records = self.records();
        Self::held(&mut records, lease)?;
        records.remove(lease.key.as_str());
        Ok(())
    }
}
