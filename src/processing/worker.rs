//! Processing a batch of queued notifications, once each in effect: claim the id, run the topic's
//! handlers, then complete (or release and retry, or dead-letter). The worker Lambda and the local
//! server's background loop both call [`Worker::process_batch`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::time::Instant;
use tracing::{field, info, warn, Instrument};

use crate::plumbing::clock::Clock;
use crate::plumbing::metrics::Metrics;
use crate::processing::handler::{Freshness, HandlerContext, HandlerError, Wants};
use crate::processing::idempotency::{
    payload_hash, BatchSlot, Claim, ClaimOutcome, IdempotencyKey, IdempotencyStore, Lease, StoreError,
};
use crate::processing::router::Router;
use crate::receiving::notification::{EnvelopeError, Notification};
pub use crate::receiving::queue::Record;
use crate::receiving::queue::{attr, DeadLetterQueue};

/// How one record ended. Exactly one INFO line per record reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Handlers succeeded; the record is completed on its own, or with its batch when the batch's
    /// records are all decided (a completion that fails is logged; the message is acknowledged).
    Processed,
    /// Already completed earlier: acknowledged without running handlers.
    Duplicate,
    /// Another worker holds the claim: retried later.
    InFlight,
    /// A retryable failure: the claim was released and the message will be delivered again.
    Retry,
    /// A permanent failure: stored on the dead-letter queue with its reason and acknowledged.
    DeadLettered,
    /// No handler matches the topic: acknowledged and counted.
    Ignored,
    /// The mirror holds a newer version of the object (or its deletion): the event handlers ran, the
    /// state handlers were skipped; the record is completed.
    Stale,
}

/// Why a record did not end `processed`, `duplicate` or `ignored`. Typed until the edge: the outcome
/// line, the batch response, the dead-letter reason, the local queue's last error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The body is not a notification: dead-lettered.
    #[error("malformed: {0}")]
    Malformed(#[from] EnvelopeError),
    /// Another worker holds the claim.
    #[error("claimed by another worker")]
    InFlight,
    /// The idempotency store failed: the record is retried.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A handler failed, retryably or permanently.
    #[error("handler {handler}: {}", reason(.error))]
    Handler { handler: String, error: HandlerError },
    /// The invocation's deadline (less the margin) came first: the record is retried.
    #[error("{PAST_DEADLINE}")]
    PastDeadline,
}

/// The reason a handler gave, without the retryable / permanent prefix its `Display` has.
fn reason(error: &HandlerError) -> &str {
    match error {
        HandlerError::Retryable { reason, .. } | HandlerError::Permanent(reason) => reason,
    }
}

impl RecordError {
    /// The earliest a new try can help, when the failure said (a 429's `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RecordError::Handler { error, .. } => error.delay(),
            _ => None,
        }
    }
}

/// The text of [`RecordError::PastDeadline`].
pub const PAST_DEADLINE: &str = "the invocation's deadline came before the record finished";

/// The claim's lease ends at the invocation's deadline, never later than the visibility timeout (after
/// which the queue hands the message to someone else). A deadline already past (a clock skew, an emulator
/// that sends none) must not make the lease expire at once, which would let a duplicate in the same batch
/// take the claim over: then the visibility timeout bounds it alone.
pub fn lease_end(now_ms: i64, deadline_ms: i64, visibility_ms: i64) -> i64 {
    let longest = now_ms + visibility_ms;
    if deadline_ms > now_ms {
        deadline_ms.min(longest)
    } else {
        longest
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Processed => "processed",
            Outcome::Duplicate => "duplicate",
            Outcome::InFlight => "in_flight",
            Outcome::Retry => "retry",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Ignored => "ignored",
            Outcome::Stale => "stale",
        }
    }

    /// Whether the queue must deliver the message again.
    pub fn needs_retry(self) -> bool {
        matches!(self, Outcome::InFlight | Outcome::Retry)
    }
}

/// The outcome of every record of a batch, in the batch's order.
#[derive(Clone, Debug, Default)]
pub struct BatchResult {
    pub outcomes: Vec<(String, Outcome)>,
    /// The failure behind each `retry`, `in_flight` and `dead_lettered` outcome, by message id.
    pub errors: std::collections::BTreeMap<String, RecordError>,
}

impl BatchResult {
    /// The earliest a retry of this message can help, when its failure said so.
    pub fn retry_after(&self, message_id: &str) -> Option<Duration> {
        self.errors.get(message_id).and_then(RecordError::retry_after)
    }

    /// Message ids to report as batch item failures.
    pub fn failures(&self) -> Vec<String> {
        self.outcomes
            .iter()
            .filter(|(_, o)| o.needs_retry())
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.outcomes.iter().filter(|(_, o)| *o == outcome).count()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct WorkerSettings {
    /// How long a completed record is remembered (duplicates within it are suppressed).
    pub retention: Duration,
    /// The queue's visibility timeout: a claim's lease never outlasts it.
    pub visibility_timeout: Duration,
    /// Records of one batch processed at the same time.
    pub concurrency: usize,
    /// Kept back from the invocation's deadline (at most a quarter of the time a batch has): a record still being claimed or handled then is cut off
    /// and retried, and this is the time left for what must finish (completion writes, dead-letter sends).
    pub deadline_margin: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            visibility_timeout: Duration::from_secs(180),
            concurrency: 10,
            deadline_margin: Duration::from_secs(2),
        }
    }
}

/// How one record ended, and why.
struct RecordEnd {
    outcome: Outcome,
    error: Option<RecordError>,
    /// The handlers that ran, when an observer wants them.
    handlers: Vec<HandlerRun>,
}

impl RecordEnd {
    fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            error: None,
            handlers: Vec::new(),
        }
    }

    fn because(outcome: Outcome, error: RecordError) -> Self {
        Self {
            outcome,
            error: Some(error),
            handlers: Vec::new(),
        }
    }

    fn with_handlers(mut self, handlers: Vec<HandlerRun>) -> Self {
        self.handlers = handlers;
        self
    }

    fn past_deadline() -> Self {
        warn!("{PAST_DEADLINE}; it will be retried");
        Self::because(Outcome::Retry, RecordError::PastDeadline)
    }
}

/// When a batch's records stop being worked on, fixed when the batch starts (so waiting for a
/// concurrency slot counts too).
#[derive(Clone, Copy, Debug)]
struct Cutoff {
    /// The lease's end less the safety margin, as Unix ms (what handlers are told)…
    at_ms: i64,
    /// …and as an instant for timers.
    at: Instant,
    /// The lease's end: a best-effort release after a cut-off is abandoned then.
    lease_end: Instant,
}

impl Cutoff {
    fn passed(&self) -> bool {
        Instant::now() >= self.at
    }
}

/// One handler's run on one record.
#[derive(Clone, Debug, PartialEq)]
pub struct HandlerRun {
    pub name: String,
    pub duration_ms: f64,
    /// `false` when it failed (the record's error says how).
    pub ok: bool,
}

/// What became of one record, for an observer.
pub struct RecordReport<'a> {
    pub record: &'a Record,
    /// The notification's id and topic (from the queue's attributes when the body is not a notification).
    pub notification_id: &'a str,
    pub topic: &'a str,
    pub outcome: Outcome,
    pub error: Option<&'a RecordError>,
    /// In the order they ran; empty when none ran.
    pub handlers: &'a [HandlerRun],
    pub duration_ms: f64,
}

/// Told of every record's end (the local inspector). Called on the worker's path: an implementation
/// hands the report on and returns at once.
pub trait RecordObserver: Send + Sync {
    fn finished(&self, report: &RecordReport<'_>);
}

/// A batch whose handled claims are completed together (a store that completes by batch): its id, the
/// leases handled so far (and whether their completion has been taken), and how many records may still
/// add one.
struct BatchCompletion {
    id: String,
    handled: std::sync::Mutex<Handled>,
    undecided: std::sync::atomic::AtomicUsize,
    all_decided: tokio::sync::Notify,
}

impl BatchCompletion {
    fn new(records: usize) -> Self {
        Self {
            id: BatchSlot::new_batch_id(),
            handled: std::sync::Mutex::new(Handled::default()),
            undecided: std::sync::atomic::AtomicUsize::new(records),
            all_decided: tokio::sync::Notify::new(),
        }
    }

    /// One record can add no lease any more.
    fn decided(&self) {
        if self.undecided.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            // A stored permit: the waiter sees it even if it starts waiting later.
            self.all_decided.notify_one();
        }
    }

    /// Until no record can add a lease.
    async fn all_decided(&self) {
        while self.undecided.load(std::sync::atomic::Ordering::Acquire) > 0 {
            self.all_decided.notified().await;
        }
    }

    /// The leases handled so far, for the batch's completion. A lease handled later is not the batch's
    /// to complete any more: its record completes it at once.
    fn close(&self) -> Vec<Lease> {
        let mut handled = self.handled.lock().unwrap_or_else(|e| e.into_inner());
        handled.closed = true;
        std::mem::take(&mut handled.leases)
    }

    /// Hands a handled lease to the batch; returns it if the batch's completion was already taken.
    fn add(&self, lease: Lease) -> Option<Lease> {
        let mut handled = self.handled.lock().unwrap_or_else(|e| e.into_inner());
        if handled.closed {
            return Some(lease);
        }
        handled.leases.push(lease);
        None
    }
}

#[derive(Default)]
struct Handled {
    leases: Vec<Lease>,
    closed: bool,
}

/// One record's part in its batch's completion: decided once it has been handled (its lease handed to
/// the batch) or cannot be any more (a failure, a duplicate, a cut-off). Dropping it decides.
struct Decision<'a> {
    batch: Option<&'a BatchCompletion>,
    slot: u32,
    made: bool,
}

impl<'a> Decision<'a> {
    /// The part of the record at `slot` in `batch`, when the store completes by batch.
    fn new(batch: Option<&'a BatchCompletion>, slot: u32) -> Self {
        Self {
            batch,
            slot,
            made: false,
        }
    }

    /// The claim's slot in its batch, when the batch completes its claims.
    fn slot(&self) -> Option<BatchSlot> {
        self.batch.map(|batch| BatchSlot {
            batch: batch.id.clone(),
            slot: self.slot,
        })
    }

    /// The record was handled: a lease in a batch is handed to it (`None`); any other, or one handled
    /// after the batch's completion was taken (at the cut-off), is returned for the caller to complete.
    fn handled(&mut self, lease: Lease) -> Option<Lease> {
        let Some(batch) = self.batch.filter(|_| lease.batch.is_some()) else {
            return Some(lease);
        };
        let late = batch.add(lease);
        self.made();
        late
    }

    /// The record will hand no lease to the batch.
    fn made(&mut self) {
        if !self.made {
            self.made = true;
            if let Some(batch) = self.batch {
                batch.decided();
            }
        }
    }
}

impl Drop for Decision<'_> {
    fn drop(&mut self) {
        self.made();
    }
}

pub struct Worker {
    store: Arc<dyn IdempotencyStore>,
    dead_letters: Arc<dyn DeadLetterQueue>,
    router: Router,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    settings: WorkerSettings,
    observer: Option<Arc<dyn RecordObserver>>,
}

impl Worker {
    pub fn new(
        store: Arc<dyn IdempotencyStore>,
        dead_letters: Arc<dyn DeadLetterQueue>,
        router: Router,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        settings: WorkerSettings,
    ) -> Self {
        Self {
            store,
            dead_letters,
            router,
            clock,
            metrics,
            settings,
            observer: None,
        }
    }

    /// Tells `observer` how every record ended, with the handlers that ran and how long each took.
    pub fn with_observer(mut self, observer: Arc<dyn RecordObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Processes every record (concurrently, bounded) and never fails as a whole: each record's outcome
    /// says whether it must be retried. `deadline_ms` is when the invocation must end (Unix ms).
    ///
    /// Records still being claimed or handled `deadline_margin` before the deadline are cut off and
    /// retried; a completion write or a dead-letter send that has started is never cut off.
    ///
    /// With a store that completes by batch, each claim names its slot in this batch, and the handled
    /// records are completed with one write as soon as every record has either been handled or cannot be
    /// (a failure, a duplicate, a cut-off), or at the cut-off at the latest, without waiting for the
    /// releases and dead-letter sends of the failed ones, so that those cannot delay it past the deadline.
    pub async fn process_batch(&self, records: Vec<Record>, deadline_ms: i64) -> BatchResult {
        let concurrency = self.settings.concurrency.max(1);
        let cutoff = self.cutoff(deadline_ms);
        let batch = self
            .store
            .completes_by_batch()
            .then(|| BatchCompletion::new(records.len()));
        let batch = batch.as_ref();
        let processed = futures::stream::iter(records.into_iter().enumerate())
            .map(|(index, record)| async move {
                let decision = Decision::new(batch, index as u32);
                let end = self.process_record(&record, deadline_ms, cutoff, decision).await;
                (record.message_id, end)
            })
            .buffered(concurrency)
            .collect::<Vec<(String, RecordEnd)>>();
        let complete = async {
            if let Some(batch) = batch {
                let _ = tokio::time::timeout_at(cutoff.at, batch.all_decided()).await;
                self.complete_batch(batch.close()).await;
            }
        };
        let (results, ()) = futures::future::join(processed, complete).await;
        let mut result = BatchResult::default();
        for (id, end) in results {
            if let Some(error) = end.error {
                result.errors.insert(id.clone(), error);
            }
            result.outcomes.push((id, end.outcome));
        }
        result
    }

    /// Processes one record, logging its outcome line. Its claim is completed on its own.
    pub async fn process(&self, record: &Record, deadline_ms: i64) -> Outcome {
        let cutoff = self.cutoff(deadline_ms);
        self.process_record(record, deadline_ms, cutoff, Decision::new(None, 0))
            .await
            .outcome
    }

    /// Completes the handled claims of a batch. A failure is logged: the effects happened, and
    /// acknowledging keeps them from happening again for these messages.
    async fn complete_batch(&self, leases: Vec<Lease>) {
        if leases.is_empty() {
            return;
        }
        let results = self
            .store
            .complete_batch(&leases, self.expiration_at(self.clock.now_ms()))
            .await;
        let failed: Vec<(&Lease, &StoreError)> = leases
            .iter()
            .zip(&results)
            .filter_map(|(lease, result)| result.as_ref().err().map(|error| (lease, error)))
            .collect();
        if let Some((_, error)) = failed.first() {
            // The keys (app and notification ids, at most a batch's) say which ones a later copy may
            // handle again once their leases lapse.
            let keys: Vec<&str> = failed.iter().map(|(lease, _)| lease.key.as_str()).collect();
            warn!(
                failed = failed.len(),
                handled = leases.len(),
                keys = keys.join(" "),
                %error,
                "handled, but the batch's records could not all be marked completed"
            );
        }
    }

    /// When a record completed at `now_ms` may be forgotten (Unix s).
    fn expiration_at(&self, now_ms: i64) -> i64 {
        now_ms.div_euclid(1000) + self.settings.retention.as_secs() as i64
    }

    fn cutoff(&self, deadline_ms: i64) -> Cutoff {
        let now_ms = self.clock.now_ms();
        let now = Instant::now();
        let visibility_ms = self.settings.visibility_timeout.as_millis() as i64;
        let end_ms = lease_end(now_ms, deadline_ms, visibility_ms);
        // Never more than a quarter of the time the batch has: a short deadline (a small visibility
        // timeout in `serve`) must still leave the handlers most of it.
        let margin_ms = (self.settings.deadline_margin.as_millis() as i64).min((end_ms - now_ms) / 4);
        let at_ms = end_ms - margin_ms;
        let after = |ms: i64| now + Duration::from_millis((ms - now_ms).max(0) as u64);
        Cutoff {
            at_ms,
            at: after(at_ms),
            lease_end: after(end_ms),
        }
    }

    /// One record, from its body to its outcome line: parse, then [`Worker::handle_once`].
    async fn process_record(
        &self,
        record: &Record,
        deadline_ms: i64,
        cutoff: Cutoff,
        mut decision: Decision<'_>,
    ) -> RecordEnd {
        let span = tracing::info_span!(
            "notification",
            notification_id = field::Empty,
            topic = field::Empty,
            app_id = record.message.attribute(attr::APP_ID).unwrap_or_default(),
            // A number, as on the intake's lines (the attribute is a string on the queue).
            delivery_attempts = record
                .message
                .attribute(attr::DELIVERY_ATTEMPTS)
                .and_then(|n| n.parse::<u32>().ok()),
            receive_count = record.receive_count,
            message_id = %record.message_id,
        );
        let started = std::time::Instant::now();
        let parsed = Notification::parse(&record.message.raw_body());
        // What the outcome line names: the notification's own id and topic, else the queue's attributes.
        let (notification_id, topic) = match &parsed {
            Ok(n) => (n.id.as_str(), n.topic().as_str()),
            Err(_) => (
                record
                    .message
                    .attribute(attr::NOTIFICATION_ID)
                    .unwrap_or_default(),
                record.message.attribute(attr::TOPIC).unwrap_or("unknown"),
            ),
        };
        if !notification_id.is_empty() {
            span.record("notification_id", notification_id);
        }
        span.record("topic", topic);
        let end = match &parsed {
            Ok(notification) => {
                self.handle_once(record, notification, deadline_ms, cutoff, decision)
                    .instrument(span.clone())
                    .await
            }
            Err(_) if cutoff.passed() => span.in_scope(RecordEnd::past_deadline),
            Err(error) => {
                decision.made();
                let error = RecordError::Malformed(error.clone());
                let outcome = self.dead_letter(record, &error).instrument(span.clone()).await;
                RecordEnd::because(outcome, error)
            }
        };
        let outcome = end.outcome;
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.metrics
            .incr("processed", &[("topic", topic), ("outcome", outcome.as_str())]);
        self.metrics.observe("handler_latency_ms", duration_ms);
        span.in_scope(|| {
            info!(
                notification_id,
                topic,
                outcome = outcome.as_str(),
                duration_ms,
                "outcome"
            );
        });
        if let Some(observer) = &self.observer {
            observer.finished(&RecordReport {
                record,
                notification_id,
                topic,
                outcome,
                error: end.error.as_ref(),
                handlers: &end.handlers,
                duration_ms,
            });
        }
        end
    }

    /// Claims the notification, runs its handlers, then completes the claim (or releases it and retries,
    /// or dead-letters): handled once in effect. A claim in a batch is completed with its batch.
    async fn handle_once(
        &self,
        record: &Record,
        notification: &Notification,
        deadline_ms: i64,
        cutoff: Cutoff,
        mut decision: Decision<'_>,
    ) -> RecordEnd {
        let handlers = self.router.handlers_for(notification.topic().as_str());
        if handlers.is_empty() || notification.envelope.is_ping() {
            return RecordEnd::new(Outcome::Ignored);
        }
        if cutoff.passed() {
            return RecordEnd::past_deadline();
        }

        let now_ms = self.clock.now_ms();
        let key = IdempotencyKey::for_notification(&notification.id, notification.app_id());
        let visibility_ms = self.settings.visibility_timeout.as_millis() as i64;
        let claim = Claim {
            key,
            payload_hash: payload_hash(&notification.data),
            now_ms,
            lease_until_ms: lease_end(now_ms, deadline_ms, visibility_ms),
            expiration: self.expiration_at(now_ms),
            batch: decision.slot(),
        };
        // Cut off, a claim that was written holds its lease until the deadline, when it ends on its own.
        let claimed = match tokio::time::timeout_at(cutoff.at, self.store.claim(&claim)).await {
            Ok(claimed) => claimed,
            Err(_) => return RecordEnd::past_deadline(),
        };
        let lease = match claimed {
            Ok(ClaimOutcome::Claimed(lease)) => lease,
            Ok(ClaimOutcome::Completed { same_payload }) => {
                self.metrics.incr("duplicates", &[]);
                if !same_payload {
                    self.metrics.incr("duplicate_payload_mismatch", &[]);
                    warn!(
                        key = %claim.key,
                        "a completed notification id arrived with a different payload: the key was reused; not processed again"
                    );
                }
                return RecordEnd::new(Outcome::Duplicate);
            }
            Ok(ClaimOutcome::InFlight { lease_until_ms }) => {
                info!(lease_until_ms, "another worker holds the claim");
                return RecordEnd::because(Outcome::InFlight, RecordError::InFlight);
            }
            Err(error) => {
                warn!(%error, "could not claim the notification");
                return RecordEnd::because(Outcome::Retry, error.into());
            }
        };

        let context = HandlerContext {
            receive_count: record.receive_count,
            deadline_ms: cutoff.at_ms,
        };
        let timed = self.observer.is_some();
        let mut runs: Vec<HandlerRun> = Vec::new();
        let runs_ref = &mut runs;
        let run_handlers = async move {
            let mut record_run = |name: &str, started: std::time::Instant, ok: bool| {
                if timed {
                    runs_ref.push(HandlerRun {
                        name: name.to_owned(),
                        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                        ok,
                    });
                }
            };
            // The mirror first: its verdict decides whether the state handlers run.
            let mut freshness = Freshness::Unversioned;
            for handler in handlers.iter().filter(|h| h.versions().is_some()) {
                let Some(versions) = handler.versions() else {
                    continue;
                };
                let started = std::time::Instant::now();
                let run = AssertUnwindSafe(versions.record(notification)).catch_unwind();
                let result = run.await.unwrap_or_else(|panic| Err(panicked(panic)));
                record_run(handler.name(), started, result.is_ok());
                match result {
                    Ok(found) => {
                        if found != Freshness::Unversioned {
                            freshness = found;
                        }
                    }
                    Err(error) => return Err(handler_failed(handler.name(), error)),
                }
            }
            let stale = freshness == Freshness::Stale;
            if stale {
                info!("a newer version of the object was delivered before: state handlers skipped");
            }
            for handler in handlers.iter().filter(|h| h.versions().is_none()) {
                if stale && handler.wants() == Wants::Newest {
                    continue;
                }
                let started = std::time::Instant::now();
                let run = AssertUnwindSafe(handler.handle(notification, &context)).catch_unwind();
                let result = run.await.unwrap_or_else(|panic| Err(panicked(panic)));
                record_run(handler.name(), started, result.is_ok());
                if let Err(error) = result {
                    return Err(handler_failed(handler.name(), error));
                }
            }
            Ok(stale)
        };
        let ran = match tokio::time::timeout_at(cutoff.at, run_handlers).await {
            Ok(ran) => ran,
            Err(_) => {
                decision.made();
                self.release_by(&lease, cutoff.lease_end).await;
                return RecordEnd::past_deadline().with_handlers(runs);
            }
        };

        let end = match ran {
            Ok(stale) => {
                let end = RecordEnd::new(if stale { Outcome::Stale } else { Outcome::Processed });
                let Some(lease) = decision.handled(lease) else {
                    return end.with_handlers(runs);
                };
                match self
                    .store
                    .complete(&lease, self.expiration_at(self.clock.now_ms()))
                    .await
                {
                    Ok(()) => {}
                    Err(StoreError::LeaseLost(_)) => {
                        warn!("handled, but the lease expired and another worker took the claim over")
                    }
                    // The effects happened; acknowledging keeps them from happening again for this message.
                    Err(error) => warn!(%error, "handled, but the record could not be marked completed"),
                }
                end
            }
            Err(
                error @ RecordError::Handler {
                    error: HandlerError::Permanent(_),
                    ..
                },
            ) => {
                // Not cut off once started: a record that began dead-lettering finishes, so it is never
                // dead-lettered twice.
                decision.made();
                let outcome = self.dead_letter(record, &error).await;
                self.release(&lease).await;
                RecordEnd::because(outcome, error)
            }
            Err(error) => {
                decision.made();
                self.release_by(&lease, cutoff.lease_end).await;
                RecordEnd::because(Outcome::Retry, error)
            }
        };
        end.with_handlers(runs)
    }

    /// Releases, giving up at `by` (the lease's end, when the claim lapses anyway).
    async fn release_by(&self, lease: &Lease, by: Instant) {
        if tokio::time::timeout_at(by, self.release(lease)).await.is_err() {
            warn!("could not release the claim before its lease ends; it lapses then");
        }
    }

    async fn release(&self, lease: &Lease) {
        if let Err(error) = self.store.release(lease).await {
            // The lease expires on its own; a later delivery can then claim the record.
            warn!(%error, "could not release the claim");
        }
    }

    /// Dead-letters the record with `error` as its reason; `retry` when the dead-letter queue fails.
    async fn dead_letter(&self, record: &Record, error: &RecordError) -> Outcome {
        let mut message = record.message.clone();
        message
            .attributes
            .insert(attr::RECEIVE_COUNT.into(), record.receive_count.to_string());
        let reason = error.to_string();
        let reason = reason.as_str();
        match self.dead_letters.dead_letter(&message, reason).await {
            Ok(()) => {
                self.metrics.incr("dead_lettered", &[]);
                warn!(reason, "dead-lettered");
                Outcome::DeadLettered
            }
            Err(error) => {
                warn!(%error, reason, "could not dead-letter; the message will be retried");
                Outcome::Retry
            }
        }
    }
}

/// A handler's panic as a retryable failure.
fn panicked(panic: Box<dyn std::any::Any + Send>) -> HandlerError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned());
    HandlerError::retryable(format!("handler panicked: {what}"))
}

fn handler_failed(handler: &str, error: HandlerError) -> RecordError {
    warn!(handler, %error, "handler failed");
    RecordError::Handler {
        handler: handler.to_owned(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::{lease_end, BatchCompletion, Decision};
    use crate::processing::idempotency::{IdempotencyKey, Lease};

    fn decision(batch: &BatchCompletion, slot: u32) -> Decision<'_> {
        Decision::new(Some(batch), slot)
    }

    fn lease(decision: &Decision<'_>) -> Lease {
        Lease::new(IdempotencyKey::from_stored("k")).in_batch(decision.slot())
    }

    #[tokio::test]
    async fn a_batch_collects_its_handled_leases_until_its_completion_is_taken() {
        let batch = BatchCompletion::new(3);
        let (mut first, mut second, third) = (decision(&batch, 0), decision(&batch, 1), decision(&batch, 2));
        let handled = lease(&first);
        assert_eq!(
            handled.batch.as_ref().map(|s| (s.batch.as_str(), s.slot)),
            Some((batch.id.as_str(), 0))
        );
        assert_eq!(first.handled(handled), None, "handed to the batch");
        second.made();
        second.made();
        drop(third);
        // Every record decided (the second only once, however often it says so): the wait ends.
        tokio::time::timeout(std::time::Duration::from_secs(5), batch.all_decided())
            .await
            .expect("all decided");
        let taken = batch.close();
        assert_eq!(taken.len(), 1);
        // A record handled after the completion was taken (at the cut-off) completes its lease itself.
        let late_batch = BatchCompletion::new(1);
        let mut late = decision(&late_batch, 0);
        assert!(late_batch.close().is_empty());
        let handled = lease(&late);
        assert_eq!(late.handled(handled.clone()), Some(handled));
        assert!(late_batch.close().is_empty());
    }

    #[test]
    fn leases_end_at_the_deadline_within_the_visibility_timeout() {
        assert_eq!(lease_end(1_000, 5_000, 180_000), 5_000);
        assert_eq!(lease_end(1_000, 900_000, 180_000), 181_000);
        assert_eq!(
            lease_end(1_000, 0, 180_000),
            181_000,
            "a past deadline falls back to the visibility timeout"
        );
        assert_eq!(lease_end(1_000, 1_000, 180_000), 181_000);
    }
}

#[cfg(test)]
mod log_tests {
    use super::*;
    use crate::local::{Db, SqliteQueue, SqliteStore};
    use crate::plumbing::clock::{unix_ms_now, SystemClock};
    use crate::receiving::queue::Message;

    #[test]
    fn a_deadline_shorter_than_the_margin_still_leaves_the_handlers_most_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("w.db")).unwrap();
        let worker = Worker::new(
            Arc::new(SqliteStore::new(db.clone())),
            Arc::new(SqliteQueue::new(db, 5)),
            crate::processing::handlers::default_router(Default::default()).unwrap(),
            Arc::new(SystemClock),
            Arc::new(Metrics::new()),
            WorkerSettings::default(),
        );
        assert_eq!(worker.settings.deadline_margin, Duration::from_secs(2));
        let body = br#"{"type":"notification_event","id":"notif_2","topic":"contact.deleted","app_id":"abc","data":{"item":{"type":"contact","id":"c2","deleted":true}}}"#;
        let (record, runtime) = (queued("m2", body), runtime());
        // One second to the deadline, less than the 2 s margin: a quarter of it is kept back. (Run with a
        // subscriber of its own, as the other log test here is: the two share call sites.)
        let mut outcome = None;
        crate::plumbing::telemetry::captured_json_lines("info", || {
            outcome = Some(runtime.block_on(worker.process(&record, unix_ms_now() + 1_000)));
        });
        assert_eq!(outcome, Some(Outcome::Processed));
    }

    /// A queued notification, as the intake stores it.
    fn queued(message_id: &str, body: &[u8]) -> Record {
        let envelope = crate::receiving::notification::Envelope::parse(body).unwrap();
        Record {
            message_id: message_id.into(),
            message: Message::for_notification(body, &envelope),
            receive_count: 1,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn the_outcome_line_carries_delivery_attempts_as_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("w.db")).unwrap();
        let router = crate::processing::handlers::default_router(Default::default()).unwrap();
        let worker = Worker::new(
            Arc::new(SqliteStore::new(db.clone())),
            Arc::new(SqliteQueue::new(db, 5)),
            router,
            Arc::new(SystemClock),
            Arc::new(Metrics::new()),
            WorkerSettings::default(),
        );
        let body = br#"{"type":"notification_event","id":"notif_1","topic":"contact.deleted","app_id":"abc","delivery_attempts":2,"data":{"item":{"type":"contact","id":"c1","deleted":true}}}"#;
        let (record, runtime) = (queued("m1", body), runtime());
        let lines = crate::plumbing::telemetry::captured_json_lines("info", || {
            runtime.block_on(worker.process(&record, unix_ms_now() + 30_000));
        });
        let outcome = lines
            .iter()
            .find(|l| l["message"] == "outcome")
            .expect("an outcome line");
        assert_eq!(
            outcome["span"]["delivery_attempts"],
            serde_json::json!(2),
            "{outcome}"
        );
        assert_eq!(outcome["outcome"], "processed");
    }
}
