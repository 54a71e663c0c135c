//! The SQS adapter of [`DeadLetters`]. SQS cannot be browsed, so every command scans: it receives
//! every message of the dead-letter queue, keeps them hidden while it works, and makes them visible again
//! at the end; redrive sends each chosen message to the main queue first and deletes it from the
//! dead-letter queue second.
//!
//! A receive may answer empty while messages exist (SQS samples a subset of its servers), so the scan
//! long-polls and stops only after several empty answers in a row; and it renews the hold of what it has
//! received before the hold runs out, so that no message shows up twice or slips to another reader.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, MessageSystemAttributeName};
use tokio::time::Instant;

use super::sqs::SqsQueue;
use crate::processing::dead_letters::{
    DeadLetter, DeadLetters, Filter, RedriveReport, Scanned, MAX_RECEIVES_REASON,
};
use crate::receiving::queue::{attr, Queue, QueueError};

/// How a command goes through the dead-letter queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanSettings {
    /// How long received messages stay hidden (whole seconds). The scan renews the holds once one has
    /// less than half of it left, or less than two receives' `wait`.
    pub hold: Duration,
    /// How long each receive waits for a message (long polling; whole seconds, at most 20, and under the
    /// SDK's attempt timeout).
    pub wait: Duration,
    /// How many empty receives in a row end the scan.
    pub empty_receives: u32,
}

impl Default for ScanSettings {
    fn default() -> Self {
        Self {
            hold: Duration::from_secs(60),
            wait: Duration::from_secs(1),
            empty_receives: 3,
        }
    }
}

/// The most messages one command reads.
const SCAN_LIMIT: usize = 10_000;
/// The most entries SQS takes in one batch request.
const BATCH: usize = 10;

struct Held {
    entry: DeadLetter,
    receipt: String,
    /// When SQS makes the message visible again unless the hold is renewed.
    hold_ends: Instant,
    /// Deleted (redriven): no longer held.
    gone: bool,
}

/// What a scan asks of the queue. SQS in production; a fake in the unit tests of the scan loop.
#[async_trait]
trait HoldingQueue: Sync {
    /// Up to 10 messages, waiting up to `wait` for one, each hidden for `hold`. `hold_ends` is for the
    /// caller to set.
    async fn receive(&self, wait: Duration, hold: Duration) -> Result<Vec<Held>, QueueError>;
    /// Hides up to 10 held messages for `visibility` from now; zero makes them visible at once. A
    /// message whose hold has already run out may not change: it is then received again, with a new
    /// receipt, and the scan keeps that one.
    async fn set_visibility(&self, receipts: &[&str], visibility: Duration) -> Result<(), QueueError>;
}

/// The messages a command holds, oldest dead letter first.
struct Scan<'q, Q: HoldingQueue> {
    queue: &'q Q,
    settings: ScanSettings,
    held: Vec<Held>,
}

impl<'q, Q: HoldingQueue> Scan<'q, Q> {
    /// Receives every message of the queue (up to [`SCAN_LIMIT`]). On failure, releases what it held.
    async fn run(queue: &'q Q, settings: ScanSettings) -> Result<Self, QueueError> {
        let mut scan = Self {
            queue,
            settings,
            held: Vec::new(),
        };
        let mut position: HashMap<String, usize> = HashMap::new();
        let mut empty_in_a_row = 0;
        while empty_in_a_row < settings.empty_receives && scan.held.len() < SCAN_LIMIT {
            scan.renew().await;
            let asked = Instant::now();
            let batch = match queue.receive(settings.wait, settings.hold).await {
                Ok(batch) => batch,
                Err(error) => {
                    scan.release().await;
                    return Err(error);
                }
            };
            let mut new = 0;
            for mut h in batch {
                h.hold_ends = asked + settings.hold;
                match position.get(&h.entry.id) {
                    // Received again (its hold ran out): only the newest receipt is valid.
                    Some(&i) => scan.held[i] = h,
                    None => {
                        position.insert(h.entry.id.clone(), scan.held.len());
                        scan.held.push(h);
                        new += 1;
                    }
                }
            }
            empty_in_a_row = if new == 0 { empty_in_a_row + 1 } else { 0 };
        }
        scan.held.sort_by_key(|h| h.entry.dead_lettered_at_ms);
        Ok(scan)
    }

    /// How many messages the scan saw.
    fn len(&self) -> usize {
        self.held.len()
    }

    fn entries(&self) -> impl Iterator<Item = &DeadLetter> {
        self.held.iter().map(|h| &h.entry)
    }

    /// Once a held message has less than half of its hold left (or less than two receives' wait),
    /// renews the hold of all, soonest ending first: the renewals then stay in step, one round per half
    /// hold, and a round that takes a while still reaches each message before its hold ends.
    async fn renew(&mut self) {
        let margin = (self.settings.hold / 2).max(self.settings.wait * 2);
        let mut due: Vec<usize> = (0..self.held.len()).filter(|&i| !self.held[i].gone).collect();
        due.sort_by_key(|&i| self.held[i].hold_ends);
        match due.first() {
            Some(&i) if self.held[i].hold_ends < Instant::now() + margin => {}
            _ => return,
        }
        for chunk in due.chunks(BATCH) {
            let receipts: Vec<&str> = chunk.iter().map(|&i| self.held[i].receipt.as_str()).collect();
            let asked = Instant::now();
            match self.queue.set_visibility(&receipts, self.settings.hold).await {
                Ok(()) => {
                    for &i in chunk {
                        self.held[i].hold_ends = asked + self.settings.hold;
                    }
                }
                // Not fatal: a message that becomes visible is received again or released anyway.
                Err(error) => tracing::warn!(%error, "could not renew the hold on dead letters"),
            }
        }
    }

    /// Makes every message still held visible again.
    async fn release(&mut self) {
        let receipts: Vec<&str> = self
            .held
            .iter()
            .filter(|h| !h.gone)
            .map(|h| h.receipt.as_str())
            .collect();
        for chunk in receipts.chunks(BATCH) {
            if let Err(error) = self.queue.set_visibility(chunk, Duration::ZERO).await {
                tracing::warn!(%error, "could not release dead letters; they become visible when their hold ends");
            }
        }
    }
}

#[async_trait]
impl HoldingQueue for SqsQueue {
    async fn receive(&self, wait: Duration, hold: Duration) -> Result<Vec<Held>, QueueError> {
        let out = self
            .client()
            .receive_message()
            .queue_url(self.dead_letter_queue_url())
            .max_number_of_messages(BATCH as i32)
            .wait_time_seconds(wait.as_secs() as i32)
            .visibility_timeout(hold.as_secs() as i32)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(super::sqs::queue_error)?;
        Ok(out.messages.unwrap_or_default().into_iter().map(held).collect())
    }

    async fn set_visibility(&self, receipts: &[&str], visibility: Duration) -> Result<(), QueueError> {
        let entries = receipts
            .iter()
            .enumerate()
            .map(|(i, receipt)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(*receipt)
                    .visibility_timeout(visibility.as_secs() as i32)
                    .build()
                    .map_err(|e| QueueError::Rejected(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client()
            .change_message_visibility_batch()
            .queue_url(self.dead_letter_queue_url())
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(super::sqs::queue_error)?;
        for failed in out.failed {
            tracing::warn!(code = %failed.code, message = ?failed.message, "could not change a dead letter's visibility");
        }
        Ok(())
    }
}

fn held(m: aws_sdk_sqs::types::Message) -> Held {
    let system = m.attributes.clone().unwrap_or_default();
    let attributes: BTreeMap<String, String> = super::sqs::string_attributes(m.message_attributes);
    let sqs_count: u32 = system
        .get(&MessageSystemAttributeName::ApproximateReceiveCount)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let dead_lettered_at_ms = attributes
        .get(attr::DEAD_LETTERED_AT)
        .and_then(|ms| ms.parse::<i64>().ok())
        .or_else(|| {
            system
                .get(&MessageSystemAttributeName::SentTimestamp)
                .and_then(|t| t.parse().ok())
        });
    Held {
        entry: DeadLetter {
            id: m.message_id.unwrap_or_default(),
            notification_id: attributes.get(attr::NOTIFICATION_ID).cloned(),
            topic: attributes.get(attr::TOPIC).cloned(),
            reason: attributes
                .get(attr::REASON)
                .cloned()
                .unwrap_or_else(|| MAX_RECEIVES_REASON.to_owned()),
            // Our own receive is not one of the failures.
            receive_count: attributes
                .get(attr::RECEIVE_COUNT)
                .and_then(|n| n.parse().ok())
                .unwrap_or(sqs_count.saturating_sub(1)),
            dead_lettered_at_ms,
            body: m.body.unwrap_or_default(),
            attributes,
        },
        receipt: m.receipt_handle.unwrap_or_default(),
        hold_ends: Instant::now(),
        gone: false,
    }
}

#[async_trait]
impl DeadLetters for SqsQueue {
    async fn list(&self, filter: &Filter, limit: usize) -> Result<Scanned<Vec<DeadLetter>>, QueueError> {
        let mut scan = Scan::run(self, self.dead_letter_scan()).await?;
        scan.release().await;
        let found = scan
            .entries()
            .filter(|e| filter.matches(e))
            .take(limit)
            .cloned()
            .collect();
        Ok(Scanned {
            found,
            scanned: Some(scan.len()),
        })
    }

    async fn show(&self, id: &str) -> Result<Scanned<Option<DeadLetter>>, QueueError> {
        let mut scan = Scan::run(self, self.dead_letter_scan()).await?;
        scan.release().await;
        let found = scan.entries().find(|e| e.id == id).cloned();
        Ok(Scanned {
            found,
            scanned: Some(scan.len()),
        })
    }

    async fn redrive(
        &self,
        filter: &Filter,
        max: usize,
        dry_run: bool,
    ) -> Result<Scanned<RedriveReport>, QueueError> {
        let mut scan = Scan::run(self, self.dead_letter_scan()).await?;
        let mut report = RedriveReport::default();
        for i in 0..scan.held.len() {
            let h = &scan.held[i];
            let chosen = filter.matches(&h.entry) && report.moved + report.would_move + report.failed < max;
            if !chosen {
                report.skipped += 1;
                continue;
            }
            if dry_run {
                report.would_move += 1;
                continue;
            }
            scan.renew().await;
            let h = &scan.held[i];
            // Send first: if the delete then fails, the message exists twice, which the worker dedupes.
            if let Err(error) = self.send(&h.entry.redriven()).await {
                tracing::warn!(%error, id = %h.entry.id, "could not send a dead letter back");
                report.failed += 1;
                continue;
            }
            let deleted = self
                .client()
                .delete_message()
                .queue_url(self.dead_letter_queue_url())
                .receipt_handle(&h.receipt)
                .send()
                .await;
            match deleted {
                Ok(_) => {
                    report.moved += 1;
                    scan.held[i].gone = true;
                }
                Err(error) => {
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), id = %h.entry.id, "sent back, but not deleted from the dead-letter queue");
                    report.failed += 1;
                }
            }
        }
        scan.release().await;
        Ok(Scanned {
            found: report,
            scanned: Some(scan.len()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    struct FakeMessage {
        id: String,
        visible_at: Instant,
        receipt: String,
        receives: u32,
    }

    /// A queue that behaves as SQS documents: a receive hides what it returns for the given time; it may
    /// answer empty while messages are visible (it sampled servers that hold none: scripted in
    /// `misses`); a visibility change applies only to a message still in flight under that receipt.
    struct SampledQueue {
        messages: Mutex<Vec<FakeMessage>>,
        misses: Mutex<VecDeque<bool>>,
        per_receive: usize,
        latency: Duration,
        receipts: Mutex<u64>,
    }

    impl SampledQueue {
        fn new(count: usize, per_receive: usize, latency: Duration, misses: &[bool]) -> Self {
            let now = Instant::now();
            Self {
                messages: Mutex::new(
                    (0..count)
                        .map(|i| FakeMessage {
                            id: format!("m{i}"),
                            visible_at: now,
                            receipt: String::new(),
                            receives: 0,
                        })
                        .collect(),
                ),
                misses: Mutex::new(misses.iter().copied().collect()),
                per_receive,
                latency,
                receipts: Mutex::new(0),
            }
        }

        fn receives(&self) -> Vec<u32> {
            self.messages.lock().unwrap().iter().map(|m| m.receives).collect()
        }

        fn all_visible(&self) -> bool {
            let now = Instant::now();
            self.messages.lock().unwrap().iter().all(|m| m.visible_at <= now)
        }
    }

    #[async_trait]
    impl HoldingQueue for SampledQueue {
        async fn receive(&self, wait: Duration, hold: Duration) -> Result<Vec<Held>, QueueError> {
            tokio::time::sleep(self.latency).await;
            let miss = self.misses.lock().unwrap().pop_front().unwrap_or(false);
            let now = Instant::now();
            let mut batch = Vec::new();
            if !miss {
                for m in self.messages.lock().unwrap().iter_mut() {
                    if batch.len() == self.per_receive {
                        break;
                    }
                    if m.visible_at <= now {
                        let mut next = self.receipts.lock().unwrap();
                        *next += 1;
                        m.receipt = format!("r{next}");
                        m.visible_at = now + hold;
                        m.receives += 1;
                        batch.push(Held {
                            entry: DeadLetter {
                                id: m.id.clone(),
                                notification_id: None,
                                topic: None,
                                reason: MAX_RECEIVES_REASON.into(),
                                receive_count: m.receives - 1,
                                dead_lettered_at_ms: Some(m.id[1..].parse().unwrap()),
                                body: "{}".into(),
                                attributes: BTreeMap::new(),
                            },
                            receipt: m.receipt.clone(),
                            hold_ends: now,
                            gone: false,
                        });
                    }
                }
            }
            if batch.is_empty() {
                tokio::time::sleep(wait).await;
            }
            Ok(batch)
        }

        async fn set_visibility(&self, receipts: &[&str], visibility: Duration) -> Result<(), QueueError> {
            assert!(receipts.len() <= BATCH);
            tokio::time::sleep(self.latency).await;
            let now = Instant::now();
            for m in self.messages.lock().unwrap().iter_mut() {
                if receipts.contains(&m.receipt.as_str()) && m.visible_at > now {
                    m.visible_at = now + visibility;
                }
            }
            Ok(())
        }
    }

    fn ids(scan: &Scan<'_, SampledQueue>) -> Vec<String> {
        let mut ids: Vec<String> = scan.entries().map(|e| e.id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    #[tokio::test(start_paused = true)]
    async fn empty_answers_while_messages_exist_do_not_end_the_scan() {
        // Empty first, then a batch, then two more empty answers before the rest.
        let queue = SampledQueue::new(25, 10, Duration::from_millis(20), &[true, false, true, true]);
        let mut scan = Scan::run(&queue, ScanSettings::default()).await.unwrap();
        assert_eq!(scan.len(), 25);
        assert_eq!(ids(&scan).len(), 25, "each message once");
        assert!(queue.receives().iter().all(|&n| n == 1), "{:?}", queue.receives());
        let order: Vec<i64> = scan.entries().filter_map(|e| e.dead_lettered_at_ms).collect();
        assert!(order.is_sorted(), "oldest first");
        scan.release().await;
        assert!(queue.all_visible(), "released at the end");
    }

    #[tokio::test(start_paused = true)]
    async fn holds_are_renewed_while_a_long_scan_runs() {
        // One message per receive, 300 ms a call: the scan takes far longer than the 4 s hold.
        let queue = SampledQueue::new(30, 1, Duration::from_millis(300), &[]);
        let settings = ScanSettings {
            hold: Duration::from_secs(4),
            ..ScanSettings::default()
        };
        let started = Instant::now();
        let mut scan = Scan::run(&queue, settings).await.unwrap();
        assert!(started.elapsed() > 2 * settings.hold);
        assert_eq!(scan.len(), 30);
        assert_eq!(
            queue.receives(),
            vec![1; 30],
            "no hold ran out: no message was received twice"
        );
        scan.release().await;
        assert!(queue.all_visible());
    }
}
