//! The inspector's journal: the last N deliveries with their bodies, in the `deliveries` table of the
//! `serve` database. The intake and the worker hand what they saw to a channel and go on; one recorder
//! task writes it in batches (one database operation every [`FLUSH_EVERY`] at most), so recording stays
//! off the acknowledgement path. Past a burst, at most [`ROWS_PER_SECOND`] deliveries are recorded; the
//! rest, and whatever arrives while the channel is full, are left out and counted, never waited for.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::local::{Db, DbError};
use crate::processing::handlers::summary::summarize;
use crate::processing::router::TopicPattern;
use crate::processing::worker::HandlerRun;
use crate::receiving::notification::{Envelope, Notification};
use crate::receiving::queue::truncate;

/// Events waiting for the recorder at most; more are left out (and counted).
const CHANNEL_CAPACITY: usize = 8_192;

/// Body bytes waiting for the recorder at most (a body may be up to 1 MiB): more are left out.
const PENDING_BYTES_LIMIT: usize = 64 << 20;

/// The recorder writes at most this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// How long a worker's outcome waits for its delivery to be recorded (the intake tells the recorder after
/// the queue has stored the message, so the worker may be faster) before it is recorded on its own, as a
/// message that did not come through the intake (`reconcile --db`, a redrive, a queue left by an earlier
/// run).
const UNMATCHED_GRACE: Duration = Duration::from_secs(2);

/// Headers kept with a delivery: the ones that say who sent it and how.
pub const KEPT_HEADERS: [&str; 7] = [
    "content-type",
    "content-length",
    "user-agent",
    "x-hub-signature",
    "x-forwarded-for",
    "x-request-id",
    "host",
];

/// A header value is cut to this many bytes.
const HEADER_VALUE_LIMIT: usize = 512;

/// Where a delivery came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A request to the webhook URL.
    Intake,
    /// Queued again from the page.
    Replay,
    /// Found on the queue without a request: `reconcile --db`, a redrive, an earlier run's queue.
    Queue,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Intake => "intake",
            Source::Replay => "replay",
            Source::Queue => "queue",
        }
    }
}

/// What identifies a queued notification (from the queue message's attributes: nothing to parse).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Key {
    pub notification_id: String,
    pub app_id: String,
    pub topic: String,
    pub delivery_attempts: Option<u32>,
}

impl Key {
    /// The key of a queue message's attributes; `None` without a notification id.
    pub fn of(attributes: &std::collections::BTreeMap<String, String>) -> Option<Key> {
        use crate::receiving::queue::attr;
        Some(Key {
            notification_id: attributes.get(attr::NOTIFICATION_ID)?.clone(),
            app_id: attributes.get(attr::APP_ID).cloned().unwrap_or_default(),
            topic: attributes.get(attr::TOPIC).cloned().unwrap_or_default(),
            delivery_attempts: attributes
                .get(attr::DELIVERY_ATTEMPTS)
                .and_then(|n| n.parse().ok()),
        })
    }
}

/// The notifications the journal has a delivery of and whose outcome is still to come, by a hash of
/// (app, notification id): the worker's observer sends a record's body only for a notification the
/// journal has no delivery of, and nothing for one whose delivery was left out. A collision costs at most
/// a body on the page.
#[derive(Default)]
struct Expected {
    /// Per key, its deliveries in arrival order: recorded (`true`) or left out.
    entries: std::sync::Mutex<HashMap<u64, VecDeque<bool>>>,
}

/// Keys tracked at most: past this (outcomes that never came, such as those of a `serve` stopped with
/// messages queued), the map is cleared, and what was in it is treated as not recorded.
const EXPECTED_LIMIT: usize = 100_000;

/// What the journal knows of a record the worker finished.
#[derive(Debug, PartialEq, Eq)]
enum Known {
    /// Its delivery is recorded: the outcome is enough.
    Recorded,
    /// Its delivery was left out: so is its outcome.
    LeftOut,
    /// Not through the intake: the outcome comes with the body.
    Unknown,
}

impl Expected {
    fn hash(app_id: &str, notification_id: &str) -> u64 {
        use std::hash::Hasher;
        // Fixed keys: the same hash for the same pair within the process.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        hasher.write(app_id.as_bytes());
        hasher.write_u8(0);
        hasher.write(notification_id.as_bytes());
        hasher.finish()
    }

    fn add(&self, app_id: &str, notification_id: &str, recorded: bool) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= EXPECTED_LIMIT {
            entries.clear();
        }
        entries
            .entry(Self::hash(app_id, notification_id))
            .or_default()
            .push_back(recorded);
    }

    /// Looks up a finished record (the oldest delivery of its key), forgetting that delivery when the
    /// outcome is final.
    fn finish(&self, app_id: &str, notification_id: &str, is_final: bool) -> Known {
        let hash = Self::hash(app_id, notification_id);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(deliveries) = entries.get_mut(&hash) else {
            return Known::Unknown;
        };
        let recorded = if is_final {
            deliveries.pop_front()
        } else {
            deliveries.front().copied()
        };
        if deliveries.is_empty() {
            entries.remove(&hash);
        }
        match recorded {
            Some(true) => Known::Recorded,
            Some(false) => Known::LeftOut,
            None => Known::Unknown,
        }
    }
}

/// A request or a replay, as the recorder is told of it.
pub struct Received {
    pub at_ms: i64,
    pub source: Source,
    /// For a queued notification: its id, app and topic.
    pub key: Option<Key>,
    pub status: Option<u16>,
    /// `queued`, `ping`, `dead_lettered`, `rejected`, `unavailable`.
    pub verdict: &'static str,
    pub reason: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Option<Bytes>,
    pub replay_of: Option<i64>,
}

/// A worker's end of a record.
pub struct Settled {
    pub at_ms: i64,
    pub notification_id: String,
    pub app_id: String,
    pub topic: String,
    pub outcome: &'static str,
    pub error: Option<String>,
    pub receive_count: u32,
    pub handlers: Vec<HandlerRun>,
    pub duration_ms: f64,
    /// The record's body, for a record the journal has no delivery of.
    pub body: Option<String>,
}

enum Event {
    Received(Received),
    Settled(Settled),
    /// Write what is left and stop.
    Close,
    /// Nothing new: look at the waiting outcomes again.
    Flush,
}

/// Outcomes after which the worker is done with a message.
fn is_final(outcome: &str) -> bool {
    !matches!(outcome, "queued" | "retry" | "in_flight")
}

/// One row of the journal, as the page lists it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Delivery {
    pub seq: i64,
    pub received_at_ms: i64,
    pub source: String,
    /// The HTTP status answered (none for a replay or a message found on the queue).
    pub status: Option<u16>,
    pub outcome: String,
    /// The rejection, dead-letter or retry reason.
    pub reason: Option<String>,
    pub notification_id: Option<String>,
    pub topic: Option<String>,
    pub app_id: Option<String>,
    /// Intercom's `delivery_attempts`.
    pub delivery_attempts: Option<i64>,
    /// Times the worker received the message.
    pub receives: Option<i64>,
    pub handlers: Vec<HandlerTime>,
    pub duration_ms: Option<f64>,
    pub settled_at_ms: Option<i64>,
    pub summary: Option<String>,
    pub replay_of: Option<i64>,
    pub bytes: Option<i64>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct HandlerTime {
    pub name: String,
    pub ms: f64,
    pub ok: bool,
}

/// A delivery with what the list leaves out.
#[derive(Clone, Debug, Serialize)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: Delivery,
    pub headers: Vec<(String, String)>,
    /// The body as received (as text; bytes that are not UTF-8 are shown as U+FFFD).
    pub body: Option<String>,
}

/// Which deliveries to list.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub topic: Option<TopicPattern>,
    pub outcome: Option<String>,
    /// Matched against the body, ignoring ASCII case.
    pub text: Option<String>,
    /// Only deliveries older than this one (paging).
    pub before: Option<i64>,
    pub limit: usize,
}

/// Deliveries per minute by outcome.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MinuteCount {
    /// The minute's start, Unix ms.
    pub minute_ms: i64,
    pub outcome: String,
    pub count: i64,
}

/// The sending side, given to the intake and the worker.
#[derive(Clone)]
pub struct Recorder {
    events: mpsc::Sender<Event>,
    left_out: Arc<AtomicU64>,
    /// Body bytes sent and not yet taken by the writer.
    pending_bytes: Arc<AtomicUsize>,
    expected: Arc<Expected>,
    admission: Arc<governor::DefaultDirectRateLimiter>,
}

impl Recorder {
    /// Whether a delivery may be recorded now ([`ROWS_PER_SECOND`] after a burst of `keep`). Asked
    /// before anything is copied; one that may not is given to [`Recorder::leave_out`].
    pub fn admit(&self) -> bool {
        self.admission.check().is_ok()
    }

    /// Counts a delivery that is not recorded; its outcome, if it is queued (`key`), is not either.
    /// `queued` is the (app, notification id) of a queued notification.
    pub fn leave_out(&self, queued: Option<(&str, &str)>) {
        self.left_out.fetch_add(1, Ordering::Relaxed);
        if let Some((app_id, notification_id)) = queued {
            self.expected.add(app_id, notification_id, false);
        }
    }

    /// Records a delivery (when the channel or the byte bound is full, it is left out).
    pub fn received(&self, received: Received) {
        let bytes = received.body.as_ref().map_or(0, Bytes::len);
        let key = (received.verdict == "queued")
            .then(|| received.key.clone())
            .flatten();
        let sent = self.send(Event::Received(received), bytes);
        if let Some(key) = key {
            self.expected.add(&key.app_id, &key.notification_id, sent);
        }
    }

    /// A record the worker finished: `settled` makes its report, given the body when the journal has no
    /// delivery of the record (and the record is admitted as a delivery of its own); nothing is made
    /// for a record whose delivery was left out.
    pub fn settled(
        &self,
        app_id: &str,
        notification_id: &str,
        outcome: &'static str,
        body: impl FnOnce() -> String,
        settled: impl FnOnce(Option<String>) -> Settled,
    ) {
        let body = match self.expected.finish(app_id, notification_id, is_final(outcome)) {
            Known::Recorded => None,
            Known::Unknown if self.admit() => Some(body()),
            Known::LeftOut | Known::Unknown => {
                self.left_out.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let settled = settled(body);
        let bytes = settled.body.as_ref().map_or(0, String::len);
        self.send(Event::Settled(settled), bytes);
    }

    fn send(&self, event: Event, bytes: usize) -> bool {
        let before = self.pending_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > PENDING_BYTES_LIMIT || self.events.try_send(event).is_err() {
            self.pending_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.left_out.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Writes what was sent before and stops the recorder (when `serve` stops).
    pub async fn close(&self) {
        let _ = self.events.send(Event::Close).await;
    }

    /// Deliveries and outcomes left out: past the admission rate, a full channel, or too many body bytes
    /// waiting.
    pub fn left_out(&self) -> u64 {
        self.left_out.load(Ordering::Relaxed)
    }
}

/// Reads of the journal, for the page.
#[derive(Clone)]
pub struct Journal {
    path: std::path::PathBuf,
    /// Counts the journal's writes: changes whenever a row is added or updated.
    changes: watch::Receiver<u64>,
    /// A read-only connection of its own, so that reading the journal (a text search scans bodies) never
    /// waits on, nor holds up, the database thread that acknowledges deliveries.
    reader: Arc<std::sync::Mutex<Option<Connection>>>,
}

/// Creates the journal's recorder and reader, and starts the task that writes. The task ends when every
/// [`Recorder`] is dropped, after writing what it was sent.
pub async fn start(db: Db, keep: usize) -> Result<(Recorder, Journal, tokio::task::JoinHandle<()>), DbError> {
    let keep = keep.max(1);
    let (last_seq, pending) = db
        .call(move |c| {
            let last: i64 = c.query_row("SELECT coalesce(max(seq), 0) FROM deliveries", [], |r| r.get(0))?;
            // Deliveries still waiting for the worker (an earlier run's queue): its outcomes belong to them.
            let mut statement = c.prepare(
                "SELECT seq, coalesce(app_id, ''), notification_id FROM deliveries
                 WHERE outcome IN ('queued', 'retry', 'in_flight') AND notification_id IS NOT NULL ORDER BY seq",
            )?;
            let pending = statement
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((last, pending))
        })
        .await?;
    let (events, inbox) = mpsc::channel(CHANNEL_CAPACITY);
    let (changed, changes) = watch::channel(0u64);
    let pending_bytes = Arc::new(AtomicUsize::new(0));
    let left_out = Arc::new(AtomicU64::new(0));
    let mut writer = Writer {
        pending_bytes: pending_bytes.clone(),
        db: db.clone(),
        keep: keep as i64,
        next_seq: last_seq + 1,
        pending: HashMap::new(),
        waiting: Vec::new(),
        changed,
    };
    for (seq, app, id) in pending {
        writer.pending.entry((app, id)).or_default().push_back(seq);
    }
    let task = tokio::spawn(writer.run(inbox));
    Ok((
        Recorder {
            events,
            left_out,
            pending_bytes,
            expected: Arc::new(Expected::default()),
            admission: Arc::new(governor::RateLimiter::direct(
                governor::Quota::per_second(NonZeroU32::new(ROWS_PER_SECOND).unwrap_or(NonZeroU32::MIN))
                    .allow_burst(NonZeroU32::new(keep as u32).unwrap_or(NonZeroU32::MIN)),
            )),
        },
        Journal {
            reader: Arc::new(std::sync::Mutex::new(None)),
            path: db.path().to_path_buf(),
            changes,
        },
        task,
    ))
}

struct Row {
    seq: i64,
    received_at_ms: i64,
    source: Source,
    status: Option<u16>,
    outcome: String,
    reason: Option<String>,
    notification_id: Option<String>,
    topic: Option<String>,
    app_id: Option<String>,
    delivery_attempts: Option<u32>,
    headers: Vec<(String, String)>,
    body: Option<Bytes>,
    summary: Option<String>,
    replay_of: Option<i64>,
    settle: Option<Settle>,
}

/// What the worker's latest report says of a row.
#[derive(Clone)]
struct Settle {
    outcome: &'static str,
    error: Option<String>,
    receives: u32,
    handlers: String,
    duration_ms: f64,
    at_ms: i64,
}

impl From<&Settled> for Settle {
    fn from(s: &Settled) -> Self {
        let handlers: Vec<HandlerTime> = s
            .handlers
            .iter()
            .map(|h| HandlerTime {
                name: h.name.clone(),
                ms: (h.duration_ms * 1000.0).round() / 1000.0,
                ok: h.ok,
            })
            .collect();
        Settle {
            outcome: s.outcome,
            error: s.error.clone(),
            receives: s.receive_count,
            handlers: serde_json::to_string(&handlers).unwrap_or_else(|_| "[]".into()),
            duration_ms: s.duration_ms,
            at_ms: s.at_ms,
        }
    }
}

/// Deliveries recorded per second at most once a burst of `keep` is spent: recording must not take the
/// database thread (nor the cores) from the intake under load (bench/RESULTS.md has the measurements).
/// Deliveries beyond it are left out at the source, before anything is copied, and so are their outcomes.
pub const ROWS_PER_SECOND: u32 = 500;

impl Row {
    /// What the list shows that needs the body parsed: the summary line, and for a row without a key
    /// (a ping, an authentic body that is not a notification) its topic and ids. Only for rows written.
    fn describe(&mut self) {
        let Some(body) = self.body.as_deref() else {
            return;
        };
        if self.notification_id.is_none() && self.topic.is_none() {
            if let Ok(envelope) = Envelope::parse(body) {
                self.notification_id = envelope.id.map(|id| id.to_string());
                self.topic = Some(envelope.topic.to_string());
                self.app_id = envelope.app_id.map(|a| a.to_string());
                self.delivery_attempts = envelope.delivery_attempts;
            }
        }
        if self.outcome != "ping" && self.outcome != "dead_lettered" && self.outcome != "rejected" {
            self.summary = Notification::parse(body).ok().map(|n| summarize(&n));
        }
    }
}

struct Writer {
    db: Db,
    pending_bytes: Arc<AtomicUsize>,
    keep: i64,
    next_seq: i64,
    /// Rows whose message the worker has not finished with, by (app, notification id), oldest first.
    pending: HashMap<(String, String), VecDeque<i64>>,
    /// Outcomes whose delivery has not been recorded yet, with when they arrived.
    waiting: Vec<(Instant, Settled)>,
    changed: watch::Sender<u64>,
}

impl Writer {
    async fn run(mut self, mut inbox: mpsc::Receiver<Event>) {
        let mut batch = Vec::new();
        loop {
            // The first event (or, with outcomes waiting for their delivery, the flush interval)…
            let first = if self.waiting.is_empty() {
                inbox.recv().await
            } else {
                tokio::time::timeout(FLUSH_EVERY, inbox.recv())
                    .await
                    .unwrap_or_else(|_| Some(Event::Flush))
            };
            let mut open = match first {
                Some(Event::Close) | None => false,
                Some(event) => {
                    batch.push(event);
                    true
                }
            };
            // …then whatever else arrives within the flush interval goes into the same write.
            let until = tokio::time::Instant::now() + FLUSH_EVERY;
            while open && batch.len() < CHANNEL_CAPACITY {
                match tokio::time::timeout_at(until, inbox.recv()).await {
                    Ok(Some(Event::Close)) | Ok(None) => open = false,
                    Ok(Some(event)) => batch.push(event),
                    Err(_) => break,
                }
            }
            let flush = self.apply(std::mem::take(&mut batch), !open);
            if let Err(error) = self.write(flush).await {
                warn!(%error, "could not record deliveries for the inspector");
            }
            if !open {
                return;
            }
        }
    }

    /// Turns events into rows to insert and updates to rows already written. `closing`: every waiting
    /// outcome is recorded now.
    fn apply(&mut self, events: Vec<Event>, closing: bool) -> Flush {
        let mut flush = Flush::default();
        let mut settles = Vec::new();
        let taken: usize = events
            .iter()
            .map(|e| match e {
                Event::Received(r) => r.body.as_ref().map_or(0, Bytes::len),
                Event::Settled(s) => s.body.as_ref().map_or(0, String::len),
                Event::Close | Event::Flush => 0,
            })
            .sum();
        self.pending_bytes.fetch_sub(taken, Ordering::Relaxed);
        for event in events {
            match event {
                Event::Received(received) => {
                    let row = self.row_of(received);
                    if row.outcome == "queued" {
                        if let (Some(id), app) =
                            (&row.notification_id, row.app_id.clone().unwrap_or_default())
                        {
                            self.pending
                                .entry((app, id.clone()))
                                .or_default()
                                .push_back(row.seq);
                        }
                    }
                    flush.inserts.push(row);
                }
                Event::Settled(settled) => settles.push((Instant::now(), settled)),
                Event::Close | Event::Flush => {}
            }
        }
        // Older waiting outcomes first, in the order they happened.
        let mut all = std::mem::take(&mut self.waiting);
        all.extend(settles);
        for (arrived, mut settled) in all {
            let key = (settled.app_id.clone(), settled.notification_id.clone());
            let seq = self.pending.get_mut(&key).and_then(|rows| {
                let seq = *rows.front()?;
                if is_final(settled.outcome) {
                    rows.pop_front();
                }
                Some(seq)
            });
            if self.pending.get(&key).is_some_and(VecDeque::is_empty) {
                self.pending.remove(&key);
            }
            match seq {
                Some(seq) => flush.settle(seq, Settle::from(&settled)),
                None if closing
                    || arrived.elapsed() >= UNMATCHED_GRACE
                    || settled.notification_id.is_empty() =>
                {
                    let mut row = self.row_of(Received {
                        at_ms: settled.at_ms,
                        source: Source::Queue,
                        key: Some(Key {
                            notification_id: settled.notification_id.clone(),
                            app_id: settled.app_id.clone(),
                            topic: settled.topic.clone(),
                            delivery_attempts: None,
                        }),
                        status: None,
                        verdict: "queued",
                        reason: None,
                        headers: Vec::new(),
                        body: settled.body.take().map(|b| Bytes::from(b.into_bytes())),
                        replay_of: None,
                    });
                    if !is_final(settled.outcome) {
                        self.pending.entry(key).or_default().push_back(row.seq);
                    }
                    row.settle = Some(Settle::from(&settled));
                    flush.inserts.push(row);
                }
                None => self.waiting.push((arrived, settled)),
            }
        }
        // Rows that would be trimmed at once are not written (their outcomes then update nothing).
        let excess = flush.inserts.len().saturating_sub(self.keep as usize);
        flush.inserts.drain(..excess);
        for row in &mut flush.inserts {
            row.describe();
        }
        flush.newest = self.next_seq - 1;
        // Bound the bookkeeping of rows that are gone: their outcomes are then recorded on their own.
        if self.pending.len() > 4 * self.keep as usize + 1_000 {
            let oldest_kept = flush.newest - self.keep;
            self.pending.retain(|_, rows| {
                rows.retain(|&seq| seq > oldest_kept);
                !rows.is_empty()
            });
        }
        flush
    }

    fn row_of(&mut self, received: Received) -> Row {
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = received.key.unwrap_or_default();
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        Row {
            seq,
            received_at_ms: received.at_ms,
            source: received.source,
            status: received.status,
            outcome: received.verdict.to_owned(),
            reason: received.reason,
            notification_id: nonempty(key.notification_id),
            topic: nonempty(key.topic),
            app_id: nonempty(key.app_id),
            delivery_attempts: key.delivery_attempts,
            headers: received.headers,
            body: received.body,
            summary: None,
            replay_of: received.replay_of,
            settle: None,
        }
    }

    async fn write(&self, flush: Flush) -> Result<(), DbError> {
        if flush.inserts.is_empty() && flush.updates.is_empty() {
            return Ok(());
        }
        let keep = self.keep;
        let newest = flush.newest;
        self.db
            .call_deferred(move |c| {
                flush.commit(c, keep)?;
                Ok(())
            })
            .await?;
        let _ = newest;
        self.changed.send_modify(|generation| *generation += 1);
        Ok(())
    }
}

#[derive(Default)]
struct Flush {
    inserts: Vec<Row>,
    /// Outcomes of rows written by an earlier flush (the latest of each).
    updates: std::collections::BTreeMap<i64, Settle>,
    newest: i64,
}

impl Flush {
    fn settle(&mut self, seq: i64, settle: Settle) {
        // Rows are numbered as they are added, so `inserts` is in order.
        match self.inserts.binary_search_by_key(&seq, |r| r.seq) {
            Ok(i) => self.inserts[i].settle = Some(settle),
            Err(_) => {
                self.updates.insert(seq, settle);
            }
        }
    }

    fn commit(self, c: &Connection, keep: i64) -> Result<(), DbError> {
        let mut insert = c.prepare_cached(
            "INSERT OR REPLACE INTO deliveries (seq, received_at_ms, source, status, outcome, reason, notification_id,
                 topic, app_id, delivery_attempts, receives, handlers, duration_ms, settled_at_ms, headers, body,
                 summary, replay_of)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        )?;
        for row in &self.inserts {
            let (outcome, reason) = match &row.settle {
                Some(s) => (s.outcome.to_owned(), s.error.clone().or(row.reason.clone())),
                None => (row.outcome.clone(), row.reason.clone()),
            };
            insert.execute(params![
                row.seq,
                row.received_at_ms,
                row.source.as_str(),
                row.status,
                outcome,
                reason,
                row.notification_id,
                row.topic,
                row.app_id,
                row.delivery_attempts,
                row.settle.as_ref().map(|s| s.receives),
                row.settle.as_ref().map(|s| s.handlers.as_str()),
                row.settle.as_ref().map(|s| s.duration_ms),
                row.settle.as_ref().map(|s| s.at_ms),
                serde_json::to_string(&row.headers).unwrap_or_else(|_| "[]".into()),
                row.body.as_deref(),
                row.summary,
                row.replay_of,
            ])?;
        }
        let mut update = c.prepare_cached(
            "UPDATE deliveries SET outcome = ?2, reason = ?3, receives = ?4, handlers = ?5, duration_ms = ?6,
                 settled_at_ms = ?7
             WHERE seq = ?1",
        )?;
        for (seq, s) in &self.updates {
            update.execute(params![
                seq,
                s.outcome,
                s.error,
                s.receives,
                s.handlers,
                s.duration_ms,
                s.at_ms
            ])?;
        }
        c.prepare_cached("DELETE FROM deliveries WHERE seq <= ?1")?
            .execute([self.newest - keep])?;
        Ok(())
    }
}

const LIST_COLUMNS: &str =
    "seq, received_at_ms, source, status, outcome, reason, notification_id, topic, app_id,
    delivery_attempts, receives, handlers, duration_ms, settled_at_ms, summary, replay_of, length(body)";

fn delivery(r: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    let handlers: Option<String> = r.get(11)?;
    Ok(Delivery {
        seq: r.get(0)?,
        received_at_ms: r.get(1)?,
        source: r.get(2)?,
        status: r.get(3)?,
        outcome: r.get(4)?,
        reason: r.get(5)?,
        notification_id: r.get(6)?,
        topic: r.get(7)?,
        app_id: r.get(8)?,
        delivery_attempts: r.get(9)?,
        receives: r.get(10)?,
        handlers: handlers
            .and_then(|h| serde_json::from_str(&h).ok())
            .unwrap_or_default(),
        duration_ms: r.get(12)?,
        settled_at_ms: r.get(13)?,
        summary: r.get(14)?,
        replay_of: r.get(15)?,
        bytes: r.get(16)?,
    })
}

/// `text` for a LIKE pattern matching it anywhere, with `\` as the escape.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl Journal {
    /// The number of writes so far, changing whenever the journal does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Runs `f` on the journal's read-only connection (opened on first use), on a blocking thread.
    async fn read<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let reader = self.reader.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = reader.lock().unwrap_or_else(|e| e.into_inner());
            let connection = match reader.take() {
                Some(connection) => connection,
                None => {
                    let connection = Connection::open_with_flags(
                        &path,
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )?;
                    connection.busy_timeout(Duration::from_secs(2))?;
                    connection
                }
            };
            let result = f(&connection);
            *reader = Some(connection);
            result
        })
        .await
        .map_err(|e| DbError::Sqlite(format!("the journal's reader stopped: {e}")))?
    }

    /// Matching deliveries, newest first.
    pub async fn list(&self, query: Query) -> Result<Vec<Delivery>, DbError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {LIST_COLUMNS} FROM deliveries
                     WHERE (?1 IS NULL OR seq < ?1) AND (?2 IS NULL OR outcome = ?2)
                       AND (?3 IS NULL OR CAST(body AS TEXT) LIKE ?3 ESCAPE '\\')
                     ORDER BY seq DESC"
            );
            let mut statement = c.prepare_cached(&sql)?;
            let text = query
                .text
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(contains_pattern);
            let mut rows = statement.query(params![query.before, query.outcome, text])?;
            let mut found = Vec::new();
            while let Some(row) = rows.next()? {
                let d = delivery(row)?;
                if let Some(pattern) = &query.topic {
                    if !d.topic.as_deref().is_some_and(|t| pattern.matches(t)) {
                        continue;
                    }
                }
                found.push(d);
                if found.len() >= query.limit {
                    break;
                }
            }
            Ok(found)
        })
        .await
    }

    /// One delivery with its headers and body.
    pub async fn get(&self, seq: i64) -> Result<Option<DeliveryDetail>, DbError> {
        self.read(move |c| {
            let sql = format!("SELECT {LIST_COLUMNS}, headers, body FROM deliveries WHERE seq = ?1");
            Ok(c.query_row(&sql, [seq], |r| {
                let headers: String = r.get(17)?;
                let body: Option<Vec<u8>> = r.get(18)?;
                Ok(DeliveryDetail {
                    delivery: delivery(r)?,
                    headers: serde_json::from_str(&headers).unwrap_or_default(),
                    body: body.map(|b| String::from_utf8_lossy(&b).into_owned()),
                })
            })
            .optional()?)
        })
        .await
    }

    /// The body of one delivery, as received.
    pub async fn body(&self, seq: i64) -> Result<Option<Vec<u8>>, DbError> {
        self.read(move |c| {
            Ok(
                c.query_row("SELECT body FROM deliveries WHERE seq = ?1", [seq], |r| {
                    r.get::<_, Option<Vec<u8>>>(0)
                })
                .optional()?
                .flatten(),
            )
        })
        .await
    }

    /// Deliveries per minute by outcome, from `since_ms` on.
    pub async fn per_minute(&self, since_ms: i64) -> Result<Vec<MinuteCount>, DbError> {
        self.read(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT (received_at_ms / 60000) * 60000 AS minute, outcome, count(*) FROM deliveries
                     WHERE received_at_ms >= ?1 GROUP BY minute, outcome ORDER BY minute",
            )?;
            let counts = statement
                .query_map([since_ms], |r| {
                    Ok(MinuteCount {
                        minute_ms: r.get(0)?,
                        outcome: r.get(1)?,
                        count: r.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(counts)
        })
        .await
    }
}

/// The headers worth showing, values cut to a bound and without control characters.
pub fn kept_headers(headers: &axum::http::HeaderMap) -> Vec<(String, String)> {
    KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?;
            let text = String::from_utf8_lossy(value.as_bytes());
            let text: String = text.chars().filter(|c| !c.is_control()).collect();
            Some(((*name).to_owned(), truncate(&text, HEADER_VALUE_LIMIT)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(id: &str, topic: &str) -> Bytes {
        Bytes::from(format!(
            r#"{{"type":"notification_event","id":"{id}","topic":"{topic}","app_id":"app1","delivery_attempts":1,"created_at":1,"data":{{"item":{{"type":"contact","id":"c-{id}","name":"N {id}"}}}}}}"#
        ))
    }

    fn received(id: &str, at_ms: i64) -> Received {
        Received {
            at_ms,
            source: Source::Intake,
            key: Some(Key {
                notification_id: id.into(),
                app_id: "app1".into(),
                topic: "contact.created".into(),
                delivery_attempts: Some(1),
            }),
            status: Some(200),
            verdict: "queued",
            reason: None,
            headers: vec![("user-agent".into(), "Intercom-Webhooks".into())],
            body: Some(notification(id, "contact.created")),
            replay_of: None,
        }
    }

    fn settled(id: &str, outcome: &'static str) -> Settled {
        Settled {
            at_ms: 5,
            notification_id: id.into(),
            app_id: "app1".into(),
            topic: "contact.created".into(),
            outcome,
            error: (outcome == "retry").then(|| "handler x: timed out".into()),
            receive_count: 1,
            handlers: vec![HandlerRun {
                name: "summary".into(),
                duration_ms: 0.25,
                ok: outcome != "retry",
            }],
            duration_ms: 1.5,
            body: None,
        }
    }

    fn settle(recorder: &Recorder, id: &str, outcome: &'static str, body: impl FnOnce() -> String) {
        recorder.settled("app1", id, outcome, body, |body| Settled {
            body,
            ..settled(id, outcome)
        });
    }

    fn body_of(id: &str) -> impl FnOnce() -> String + '_ {
        move || String::from_utf8(notification(id, "contact.created").to_vec()).unwrap()
    }

    async fn journal(keep: usize) -> (tempfile::TempDir, Recorder, Journal, tokio::task::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("j.db")).unwrap();
        let (recorder, journal, task) = start(db, keep).await.unwrap();
        (dir, recorder, journal, task)
    }

    fn all() -> Query {
        Query {
            limit: 1_000,
            ..Query::default()
        }
    }

    #[tokio::test]
    async fn outcomes_land_on_their_delivery_whichever_arrives_first() {
        let (_dir, recorder, journal, task) = journal(100).await;
        // The worker may finish before the intake's report reaches the recorder.
        settle(&recorder, "n1", "processed", body_of("n1"));
        recorder.received(received("n1", 1));
        recorder.received(received("n2", 2));
        settle(&recorder, "n2", "retry", body_of("n2"));
        settle(&recorder, "n2", "processed", body_of("n2"));
        // The same id delivered again: the second delivery gets the second outcome.
        recorder.received(received("n1", 3));
        settle(&recorder, "n1", "duplicate", body_of("n1"));
        recorder.close().await;
        task.await.unwrap();

        let rows = journal.list(all()).await.unwrap();
        let seen: Vec<(Option<&str>, &str, &str)> = rows
            .iter()
            .map(|d| {
                (
                    d.notification_id.as_deref(),
                    d.outcome.as_str(),
                    d.source.as_str(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (Some("n1"), "duplicate", "intake"),
                (Some("n2"), "processed", "intake"),
                (Some("n1"), "processed", "intake"),
            ]
        );
        let n2 = &rows[1];
        assert_eq!(
            n2.handlers,
            [HandlerTime {
                name: "summary".into(),
                ms: 0.25,
                ok: true
            }]
        );
        assert_eq!(n2.reason, None, "a later success clears the retry's error");
        assert_eq!(n2.summary.as_deref(), Some("contact.created: contact N n2"));
        let detail = journal.get(n2.seq).await.unwrap().unwrap();
        assert_eq!(
            detail.body.as_deref().map(str::as_bytes),
            Some(&notification("n2", "contact.created")[..])
        );
        assert_eq!(
            detail.headers,
            [("user-agent".to_owned(), "Intercom-Webhooks".to_owned())]
        );
    }

    #[tokio::test]
    async fn an_outcome_without_a_delivery_is_recorded_as_found_on_the_queue() {
        let (_dir, recorder, journal, task) = journal(100).await;
        settle(
            &recorder,
            "from-reconcile",
            "processed",
            body_of("from-reconcile"),
        );
        recorder.close().await;
        task.await.unwrap();
        let rows = journal.list(all()).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].source.as_str(), rows[0].outcome.as_str(), rows[0].status),
            ("queue", "processed", None)
        );
        assert!(journal.body(rows[0].seq).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn the_journal_keeps_the_last_n_and_filters_by_topic_outcome_and_text() {
        let (_dir, recorder, journal, task) = journal(25).await;
        for n in 0..60 {
            let mut r = received(&format!("n{n}"), n);
            if n % 2 == 0 {
                r.body = Some(notification(&format!("n{n}"), "conversation.user.created"));
                if let Some(key) = &mut r.key {
                    key.topic = "conversation.user.created".into();
                }
            }
            recorder.received(r);
            if n % 3 == 0 {
                settle(
                    &recorder,
                    &format!("n{n}"),
                    "processed",
                    body_of(&format!("n{n}")),
                );
            }
        }
        recorder.received(Received {
            at_ms: 61,
            source: Source::Intake,
            key: None,
            status: Some(401),
            verdict: "rejected",
            reason: Some("signature_mismatch".into()),
            headers: Vec::new(),
            body: None,
            replay_of: None,
        });
        recorder.close().await;
        task.await.unwrap();
        let rows = journal.list(all()).await.unwrap();
        assert_eq!(rows.len(), 25);
        assert_eq!(rows[0].outcome, "rejected");
        assert_eq!(rows[24].notification_id.as_deref(), Some("n36"));

        let topic = TopicPattern::parse("conversation.*").unwrap();
        let conversations = journal
            .list(Query {
                topic: Some(topic),
                ..all()
            })
            .await
            .unwrap();
        assert_eq!(conversations.len(), 12);
        assert!(conversations
            .iter()
            .all(|d| d.topic.as_deref() == Some("conversation.user.created")));
        let processed = journal
            .list(Query {
                outcome: Some("processed".into()),
                ..all()
            })
            .await
            .unwrap();
        assert_eq!(
            processed
                .iter()
                .filter_map(|d| d.notification_id.clone())
                .collect::<Vec<_>>(),
            ["n57", "n54", "n51", "n48", "n45", "n42", "n39", "n36"]
        );
        // Text matches the body, ignoring case; LIKE's wildcards are taken literally.
        let text = |t: &str| Query {
            text: Some(t.into()),
            ..all()
        };
        assert_eq!(journal.list(text("c-N41\"")).await.unwrap().len(), 1);
        assert_eq!(journal.list(text("c-n4_")).await.unwrap().len(), 0);
        assert_eq!(journal.list(text("%")).await.unwrap().len(), 0);
        // Paging: older than a given row.
        let older = journal
            .list(Query {
                before: Some(rows[10].seq),
                limit: 5,
                ..all()
            })
            .await
            .unwrap();
        assert_eq!(older.len(), 5);
        assert_eq!(older[0].seq, rows[11].seq);
        // Per minute: every kept row counted once.
        let counted: i64 = journal.per_minute(0).await.unwrap().iter().map(|c| c.count).sum();
        assert_eq!(counted, 25);
    }

    #[tokio::test]
    async fn a_new_recorder_on_the_same_file_goes_on_numbering_and_settles_the_earlier_run_s_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        {
            let (recorder, _, task) = start(Db::open(&path).unwrap(), 100).await.unwrap();
            recorder.received(received("left-queued", 1));
            recorder.close().await;
            task.await.unwrap();
        }
        let (recorder, journal, task) = start(Db::open(&path).unwrap(), 100).await.unwrap();
        settle(&recorder, "left-queued", "processed", body_of("left-queued"));
        recorder.received(received("next", 2));
        recorder.close().await;
        task.await.unwrap();
        let rows = journal.list(all()).await.unwrap();
        let seen: Vec<(i64, &str)> = rows.iter().map(|d| (d.seq, d.outcome.as_str())).collect();
        assert_eq!(seen, [(2, "queued"), (1, "processed")]);
    }

    #[tokio::test]
    async fn the_worker_sends_a_body_only_for_a_record_the_journal_has_no_delivery_of() {
        let (_dir, recorder, journal, task) = journal(100).await;
        recorder.received(received("known", 1));
        settle(&recorder, "known", "retry", || {
            panic!("a recorded delivery's body is not copied")
        });
        settle(&recorder, "known", "processed", || {
            panic!("a recorded delivery's body is not copied")
        });
        let asked = std::cell::Cell::new(0);
        settle(&recorder, "unknown", "processed", || {
            asked.set(asked.get() + 1);
            body_of("unknown")()
        });
        recorder.close().await;
        task.await.unwrap();
        assert_eq!(asked.get(), 1);
        let rows = journal.list(all()).await.unwrap();
        let seen: Vec<(&str, &str)> = rows
            .iter()
            .map(|d| (d.source.as_str(), d.outcome.as_str()))
            .collect();
        assert_eq!(seen, [("queue", "processed"), ("intake", "processed")]);
    }

    #[tokio::test]
    async fn past_a_burst_of_keep_deliveries_are_admitted_at_the_rate_and_the_rest_left_out_with_their_outcomes(
    ) {
        let (_dir, recorder, journal, task) = journal(5).await;
        let admitted = (0..50).filter(|_| recorder.admit()).count();
        // The burst, and what the rate added while the loop ran (nothing at 500/s within microseconds).
        assert!((5..=6).contains(&admitted), "{admitted}");
        recorder.leave_out(Some(("app1", "left")));
        settle(&recorder, "left", "processed", || {
            panic!("a left-out delivery's body is not copied")
        });
        recorder.close().await;
        task.await.unwrap();
        assert!(journal.list(all()).await.unwrap().is_empty());
        assert_eq!(recorder.left_out(), 2);
    }

    #[test]
    fn kept_headers_are_bounded_and_printable() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("user-agent", "a\tb".parse().unwrap());
        headers.insert("x-hub-signature", "x".repeat(2_000).parse().unwrap());
        headers.insert("authorization", "Bearer secret".parse().unwrap());
        headers.insert("cookie", "a=b".parse().unwrap());
        let kept = kept_headers(&headers);
        assert_eq!(kept[0], ("user-agent".into(), "ab".into()));
        assert_eq!(kept[1].1.len(), HEADER_VALUE_LIMIT + '…'.len_utf8());
        assert_eq!(kept.len(), 2, "credentials are not kept");
    }
}
