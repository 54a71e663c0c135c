//! Completing by batch (the worker Lambda's default, `IDEMPOTENCY_COMPLETION=batch`) against the AWS
//! emulator: a batch's handled records are completed with one write, and every way a record can end or
//! be found again (a duplicate, a copy in flight, a failure, an abandoned claim, a late completion, the
//! retention's end) keeps each notification handled once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::support::moto_worker::MotoWorker;
use crate::support::{notification_body, record};
use intercom_webhooks::aws::dynamodb::DynamoStore;
use intercom_webhooks::plumbing::clock::Clock;
use intercom_webhooks::processing::handler::HandlerError;
use intercom_webhooks::processing::idempotency::{
    BatchSlot, Claim, ClaimOutcome, IdempotencyKey, IdempotencyStore, Lease, StoreError,
};
use intercom_webhooks::processing::router::Router;
use intercom_webhooks::processing::worker::{Outcome, Record, Worker, WorkerSettings};
use intercom_webhooks::receiving::queue::{DeadLetterQueue, Message, QueueError};

/// The worker completing by batch.
type Setup = MotoWorker;

async fn setup() -> Setup {
    MotoWorker::start(true).await
}

fn body(id: &str) -> Vec<u8> {
    notification_body(
        id,
        "conversation.user.created",
        json!({"type": "conversation", "id": "1"}),
    )
}

impl Setup {
    fn deadline(&self) -> i64 {
        self.clock.now_ms() + 60_000
    }

    /// How one delivery of `body`, alone in its batch, ends.
    async fn deliver(&self, message_id: &str, body: &[u8]) -> Outcome {
        let result = self
            .worker
            .process_batch(vec![record(message_id, body)], self.deadline())
            .await;
        result.outcomes[0].1
    }

    /// The batch and slot a record names.
    async fn slot_of(&self, id: &str) -> (String, u32) {
        let item = self.item(&format!("testapp#{id}")).await.expect("a record");
        assert_eq!(item["status"].as_s().unwrap(), "IN_PROGRESS", "{item:?}");
        (
            item["batch"].as_s().unwrap().clone(),
            item["slot"].as_n().unwrap().parse().unwrap(),
        )
    }

    /// The slots a batch's completion lists, sorted (empty when it has none).
    async fn completed_slots(&self, batch: &str) -> Vec<u32> {
        let mut slots: Vec<u32> = match self.item(&format!("batch#{batch}")).await {
            Some(item) => item["slots"]
                .as_ns()
                .unwrap()
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            None => Vec::new(),
        };
        slots.sort();
        slots
    }

    /// How many of each operation the store sent since the last call.
    fn sent(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for operation in self.operations.take() {
            *counts.entry(operation).or_default() += 1;
        }
        counts
    }

    /// A claim of `id` as a batch's worker makes it, held for `lease_ms`.
    fn claim(&self, id: &str, batch: &str, slot: u32, lease_ms: i64) -> Claim {
        let now = self.clock.now_ms();
        Claim {
            key: IdempotencyKey::from_stored(format!("testapp#{id}")),
            payload_hash: intercom_webhooks::processing::idempotency::payload_hash(
                &intercom_webhooks::receiving::notification::Notification::parse(&body(id))
                    .unwrap()
                    .data,
            ),
            now_ms: now,
            lease_until_ms: now + lease_ms,
            expiration: now / 1000 + 3600,
            batch: Some(BatchSlot {
                batch: batch.into(),
                slot,
            }),
        }
    }

    async fn claimed(&self, claim: &Claim) -> Lease {
        match self.store.claim(claim).await.unwrap() {
            ClaimOutcome::Claimed(lease) => lease,
            other => panic!("expected a claim, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_batch_is_completed_with_one_write_and_every_later_copy_is_a_duplicate() {
    let s = setup().await;
    let ids: Vec<String> = (0..9).map(|i| format!("notif_b{i}")).collect();
    // Nine notifications and a second copy of the first, in one batch of ten.
    let mut records: Vec<Record> = ids
        .iter()
        .map(|id| record(&format!("m-{id}"), &body(id)))
        .collect();
    records.push(record("m-copy", &body(&ids[0])));
    let result = s.worker.process_batch(records.clone(), s.deadline()).await;
    for id in &ids {
        assert_eq!(s.handler.calls(id), 1, "{id}");
    }
    assert_eq!(result.count(Outcome::Processed), 9, "{result:?}");
    // The copy met its twin's claim in flight: retried later, as SQS would.
    assert_eq!(result.count(Outcome::InFlight), 1, "{result:?}");
    assert_eq!(result.failures().len(), 1, "{result:?}");
    let sent = s.sent();
    assert_eq!(sent.get("PutItem"), Some(&10), "ten claims: {sent:?}");
    assert_eq!(
        sent.get("UpdateItem"),
        Some(&1),
        "one completion for the batch: {sent:?}"
    );
    assert_eq!(
        sent.get("GetItem"),
        Some(&1),
        "the copy read its twin's batch: {sent:?}"
    );

    // Every record names the batch and its own slot; the batch's item lists exactly those slots.
    let mut slots = Vec::new();
    let mut batches = std::collections::BTreeSet::new();
    for id in &ids {
        let (batch, slot) = s.slot_of(id).await;
        batches.insert(batch);
        slots.push(slot);
    }
    assert_eq!(batches.len(), 1, "{batches:?}");
    let batch = batches.into_iter().next().unwrap();
    assert_eq!(batch.len(), 32);
    slots.sort();
    assert_eq!(s.completed_slots(&batch).await, slots);
    let item = s.item(&format!("batch#{batch}")).await.unwrap();
    let expiration: i64 = item["expiration"].as_n().unwrap().parse().unwrap();
    assert!(
        (expiration - s.clock.now_ms() / 1000 - 7 * 86_400).abs() < 60,
        "retention of 7 days by default: {item:?}"
    );

    // All ten again, in the order of another batch: duplicates, found through the batch's item.
    let mut again = records.clone();
    again.reverse();
    let result = s.worker.process_batch(again, s.deadline()).await;
    assert_eq!(result.count(Outcome::Duplicate), 10, "{result:?}");
    assert!(result.failures().is_empty());
    for id in &ids {
        assert_eq!(s.handler.calls(id), 1, "{id}: the effect happened once");
    }
    let sent = s.sent();
    assert_eq!(sent.get("UpdateItem"), None, "nothing new to complete: {sent:?}");
    assert_eq!((sent.get("PutItem"), sent.get("GetItem")), (Some(&10), Some(&10)));

    // Once the batch's leases have ended (the records stay IN_PROGRESS, with lapsed leases), a copy is
    // still a duplicate: a claim never takes over a record of a batch without reading the batch's item.
    s.clock.advance(120_000);
    assert_eq!(s.deliver("m-after", &body(&ids[3])).await, Outcome::Duplicate);
    assert_eq!(s.handler.calls(&ids[3]), 1);

    // The id with another payload is a duplicate too, counted as a reused key.
    let reused = notification_body(
        &ids[1],
        "conversation.user.created",
        json!({"type": "conversation", "id": "2"}),
    );
    assert_eq!(s.deliver("m-reused", &reused).await, Outcome::Duplicate);
    assert_eq!(s.metrics.get("duplicate_payload_mismatch", &[]), 1);

    // After the retention (7 days; moto never deletes by TTL, the claim's condition does) it is new again.
    s.clock.advance(8 * 86_400 * 1000);
    assert_eq!(s.deliver("m-late", &body(&ids[2])).await, Outcome::Processed);
    assert_eq!(s.handler.calls(&ids[2]), 2);
}

#[tokio::test]
async fn only_the_handled_records_of_a_batch_are_completed() {
    let s = setup().await;
    s.handler
        .fail("notif_down", 1, HandlerError::retryable("CRM down"));
    s.handler
        .fail("notif_bad", 1, HandlerError::permanent("contact has no e-mail"));
    let records = vec![
        record("ok1", &body("notif_ok1")),
        record("down", &body("notif_down")),
        record("bad", &body("notif_bad")),
        record("ok2", &body("notif_ok2")),
    ];
    let result = s.worker.process_batch(records, s.deadline()).await;
    assert_eq!(
        result.outcomes,
        [
            ("ok1".to_owned(), Outcome::Processed),
            ("down".to_owned(), Outcome::Retry),
            ("bad".to_owned(), Outcome::DeadLettered),
            ("ok2".to_owned(), Outcome::Processed),
        ]
    );
    let (batch, first) = s.slot_of("notif_ok1").await;
    let (same, last) = s.slot_of("notif_ok2").await;
    assert_eq!((batch.as_str(), first, last), (same.as_str(), 0, 3));
    assert_eq!(s.completed_slots(&batch).await, [0, 3]);
    for released in ["notif_down", "notif_bad"] {
        assert!(
            s.item(&format!("testapp#{released}")).await.is_none(),
            "{released}: claim released"
        );
    }
    // The retried one is processed by its next delivery, once.
    assert_eq!(s.deliver("down", &body("notif_down")).await, Outcome::Processed);
    assert_eq!(s.deliver("down2", &body("notif_down")).await, Outcome::Duplicate);
    assert_eq!(s.handler.calls("notif_down"), 2, "failed once, then handled once");
}

#[tokio::test]
async fn an_abandoned_claim_is_taken_over_after_its_lease_and_a_late_batch_completion_marks_nothing() {
    let s = setup().await;
    // A worker's batch claims with a 1-second lease, then dies before completing this record; another of
    // its records was completed, so the batch's item exists without this record's slot.
    let dead = s.claimed(&s.claim("notif_gone", "deadbatch", 4, 1_000)).await;
    assert_eq!(dead.batch.as_ref().map(|b| b.slot), Some(4));
    let finished = s.claimed(&s.claim("notif_done", "deadbatch", 1, 1_000)).await;
    s.store
        .complete(&finished, s.clock.now_ms() / 1000 + 3600)
        .await
        .unwrap();
    assert_eq!(s.completed_slots("deadbatch").await, [1]);

    // While the lease holds, another delivery finds it in flight (its batch never completed it).
    assert_eq!(s.deliver("m1", &body("notif_gone")).await, Outcome::InFlight);
    assert_eq!(s.handler.calls("notif_gone"), 0);

    // Once it has lapsed, the next claim takes the record over from that holder.
    s.clock.advance(2_000);
    let successor_claim = s.claim("notif_gone", "nextbatch", 0, 30_000);
    let successor = s.claimed(&successor_claim).await;
    // Its completed neighbour stays completed, lease lapsed or not.
    assert_eq!(
        s.store
            .claim(&s.claim("notif_done", "nextbatch", 1, 30_000))
            .await
            .unwrap(),
        ClaimOutcome::Completed { same_payload: true }
    );
    assert_ne!(successor.token, dead.token);
    assert_eq!(s.slot_of("notif_gone").await, ("nextbatch".to_owned(), 0));

    // The dead worker wakes up: its release is refused, and its late completion (a batch's completion is
    // not conditional on the record) marks nothing, since the record names another batch now.
    assert_eq!(
        s.store.release(&dead).await,
        Err(StoreError::LeaseLost(dead.key.clone()))
    );
    s.store
        .complete(&dead, s.clock.now_ms() / 1000 + 3600)
        .await
        .unwrap();
    assert_eq!(s.completed_slots("deadbatch").await, [1, 4]);
    assert_eq!(
        s.store
            .claim(&s.claim("notif_gone", "third", 0, 30_000))
            .await
            .unwrap(),
        ClaimOutcome::InFlight {
            lease_until_ms: successor_claim.lease_until_ms
        },
        "the successor still holds it"
    );

    // The successor dies too; after its lease the worker takes over, handles it, and completes it.
    s.clock.advance(31_000);
    assert_eq!(s.deliver("m2", &body("notif_gone")).await, Outcome::Processed);
    assert_eq!(s.handler.calls("notif_gone"), 1);
    let (batch, slot) = s.slot_of("notif_gone").await;
    assert_eq!(s.completed_slots(&batch).await, [slot]);
    assert_eq!(s.deliver("m3", &body("notif_gone")).await, Outcome::Duplicate);
    assert_eq!(s.handler.calls("notif_gone"), 1);
}

#[tokio::test]
async fn a_released_record_is_claimed_afresh_even_when_its_old_batch_completes_late() {
    let s = setup().await;
    let dead = s.claimed(&s.claim("notif_rel", "oldbatch", 2, 1_000)).await;
    s.clock.advance(2_000);
    // Taken over by a worker whose handler fails: the claim is released (the record deleted).
    s.handler
        .fail("notif_rel", 1, HandlerError::retryable("CRM down"));
    assert_eq!(s.deliver("m1", &body("notif_rel")).await, Outcome::Retry);
    assert!(s.item("testapp#notif_rel").await.is_none());
    // The first holder's completion arrives late: the next delivery is still handled.
    s.store
        .complete(&dead, s.clock.now_ms() / 1000 + 3600)
        .await
        .unwrap();
    assert_eq!(s.deliver("m2", &body("notif_rel")).await, Outcome::Processed);
    assert_eq!(s.handler.calls("notif_rel"), 2, "failed once, then handled once");
}

#[tokio::test]
async fn records_completed_one_by_one_and_by_batch_are_both_recognised() {
    // A table used first with IDEMPOTENCY_COMPLETION=record, then with batch (or the other way round).
    let s = setup().await;
    let by_record = DynamoStore::new(s.dynamo.clone(), &s.table, s.clock.clone());
    assert!(!by_record.completes_by_batch());
    assert!(s.store.completes_by_batch());
    let mut claim = s.claim("notif_rec", "unused", 0, 30_000);
    claim.batch = None;
    let lease = match by_record.claim(&claim).await.unwrap() {
        ClaimOutcome::Claimed(lease) => lease,
        other => panic!("{other:?}"),
    };
    assert_eq!(lease.batch, None);
    by_record.complete(&lease, claim.expiration).await.unwrap();
    assert_eq!(s.deliver("m1", &body("notif_rec")).await, Outcome::Duplicate);

    assert_eq!(s.deliver("m2", &body("notif_bat")).await, Outcome::Processed);
    assert_eq!(
        by_record
            .claim(&s.claim("notif_bat", "x", 0, 30_000))
            .await
            .unwrap(),
        ClaimOutcome::Completed { same_payload: true }
    );
}

#[tokio::test]
async fn concurrent_takeovers_of_an_abandoned_claim_have_exactly_one_winner() {
    let s = setup().await;
    s.claimed(&s.claim("notif_race", "deadbatch", 0, 1_000)).await;
    s.clock.advance(2_000);
    let claims: Vec<Claim> = (0..12)
        .map(|i| s.claim("notif_race", &format!("batch{i}"), i, 30_000))
        .collect();
    let results = futures::future::join_all(claims.iter().map(|c| s.store.claim(c))).await;
    let winners: Vec<&Lease> = results
        .iter()
        .filter_map(|r| match r {
            Ok(ClaimOutcome::Claimed(lease)) => Some(lease),
            _ => None,
        })
        .collect();
    let in_flight = results
        .iter()
        .filter(|r| matches!(r, Ok(ClaimOutcome::InFlight { .. })))
        .count();
    assert_eq!((winners.len(), in_flight), (1, 11), "{results:?}");
    let slot = winners[0].batch.clone().unwrap();
    assert_eq!(s.slot_of("notif_race").await, (slot.batch, slot.slot));
}

#[tokio::test]
async fn an_abandoned_record_without_a_lease_token_is_refused_not_taken_over() {
    let s = setup().await;
    s.claimed(&s.claim("notif_tokenless", "deadbatch", 0, 1_000))
        .await;
    s.dynamo
        .update_item()
        .table_name(&s.table)
        .key("pk", AttributeValue::S("testapp#notif_tokenless".into()))
        .update_expression("REMOVE lease_token")
        .send()
        .await
        .unwrap();
    s.clock.advance(2_000);
    let refused = s
        .store
        .claim(&s.claim("notif_tokenless", "newbatch", 0, 30_000))
        .await;
    match refused {
        Err(StoreError::Rejected(reason)) => assert!(reason.contains("without a lease token"), "{reason}"),
        other => panic!("expected the store to refuse, got {other:?}"),
    }
    assert_eq!(s.slot_of("notif_tokenless").await, ("deadbatch".to_owned(), 0));
}

#[tokio::test]
async fn one_write_per_batch_among_the_leases_and_one_per_lease_without_a_batch() {
    let s = setup().await;
    let mut leases = Vec::new();
    for (id, batch, slot) in [
        ("notif_p", "one", 0),
        ("notif_q", "two", 0),
        ("notif_r", "one", 1),
    ] {
        leases.push(s.claimed(&s.claim(id, batch, slot, 30_000)).await);
    }
    let mut alone = s.claim("notif_s", "unused", 0, 30_000);
    alone.batch = None;
    leases.push(s.claimed(&alone).await);
    // The same lease twice adds its slot once (a number set holds each number once).
    leases.push(leases[0].clone());
    s.sent();
    let results = s
        .store
        .complete_batch(&leases, s.clock.now_ms() / 1000 + 3600)
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(results.len(), 5);
    let sent = s.sent();
    assert_eq!(
        sent.get("UpdateItem"),
        Some(&3),
        "batches one and two, and notif_s: {sent:?}"
    );
    assert_eq!(s.completed_slots("one").await, [0, 1]);
    assert_eq!(s.completed_slots("two").await, [0]);
    assert_eq!(
        s.item("testapp#notif_s").await.unwrap()["status"].as_s().unwrap(),
        "COMPLETED"
    );
    for id in ["notif_p", "notif_q", "notif_r", "notif_s"] {
        assert_eq!(
            s.store.claim(&s.claim(id, "later", 0, 30_000)).await.unwrap(),
            ClaimOutcome::Completed { same_payload: true },
            "{id}"
        );
    }
}

/// A dead-letter queue that says when it was called and answers only when released.
#[derive(Default)]
struct HeldDeadLetters {
    called: tokio::sync::Notify,
    released: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl DeadLetterQueue for HeldDeadLetters {
    async fn dead_letter(&self, _: &Message, _: &str) -> Result<(), QueueError> {
        self.called.notify_one();
        self.released.notified().await;
        Ok(())
    }
}

#[tokio::test]
async fn the_batch_is_completed_before_a_slow_dead_letter_send_ends() {
    let s = setup().await;
    let dead_letters = Arc::new(HeldDeadLetters::default());
    let worker = Worker::new(
        s.store.clone(),
        dead_letters.clone(),
        Router::new().route("*", s.handler.clone()).unwrap(),
        s.clock.clone(),
        s.metrics.clone(),
        WorkerSettings::default(),
    );
    s.handler
        .fail("notif_perm", 1, HandlerError::permanent("contact has no e-mail"));
    let records = vec![
        record("ok", &body("notif_fine")),
        record("perm", &body("notif_perm")),
    ];
    let deadline = s.deadline();
    s.sent();
    let batch = tokio::spawn(async move { worker.process_batch(records, deadline).await });
    dead_letters.called.notified().await;
    // While the dead-letter send is held, the handled record is completed (a generous bound: only a
    // hang would take this long).
    let started = std::time::Instant::now();
    let (batch_id, slot) = loop {
        if let Some(item) = s.item("testapp#notif_fine").await {
            let (batch_id, slot) = s.slot_of("notif_fine").await;
            if !s.completed_slots(&batch_id).await.is_empty() {
                break (batch_id, slot);
            }
            assert!(item.contains_key("batch"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not completed while the dead-letter send was held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!batch.is_finished(), "the dead-letter send is still held");
    assert_eq!(s.completed_slots(&batch_id).await, [slot]);
    dead_letters.released.notify_one();
    let result = batch.await.unwrap();
    assert_eq!(
        result.outcomes,
        [
            ("ok".to_owned(), Outcome::Processed),
            ("perm".to_owned(), Outcome::DeadLettered),
        ]
    );
    assert_eq!(s.completed_slots(&batch_id).await, [0], "the handled slot");
    assert_eq!(
        s.sent().get("UpdateItem"),
        Some(&1),
        "one completion write, not another after the dead-letter send"
    );
}
