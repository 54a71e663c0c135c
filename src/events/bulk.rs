//! Sending many events: as many requests in flight as the rate limit allows, paced by the limit headers
//! Intercom returns (see [`super::pacer`]), every event accounted for as sent or failed.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, Stream, StreamExt};

use super::client::{encode, Attempt, EventsClient};
use super::error::{ErrorKind, TrackError};
use super::event::DataEvent;
use super::pacer::{Gate, Pacer};
use super::retry::{RateLimit, Retry};

/// How a bulk send behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BulkOptions {
    /// The most requests awaiting an answer at once; the rate limit usually binds first.
    pub max_in_flight: usize,
}

/// Intercom answers in about 100 to 200 ms; its per-app limit of 10,000 a minute (1,667 per 10-second
/// window, about 167 a second) needs some 17 to 33 requests in flight to be spent.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;

impl Default for BulkOptions {
    fn default() -> Self {
        Self {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// Where a bulk send stands; given to the progress callback after every answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Events taken from the stream so far.
    pub taken: u64,
    /// Events Intercom accepted.
    pub sent: u64,
    /// Events given up.
    pub failed: u64,
    /// Requests that repeated an earlier one after a 429, a 5xx or a network failure.
    pub retried: u64,
    /// 429 answers received.
    pub rate_limited: u64,
    pub in_flight: usize,
    pub elapsed: Duration,
    /// The rate-limit headers of the latest answer.
    pub rate_limit: RateLimit,
}

/// An event that was given up, with its position in the stream (0-based) and the last error.
#[derive(Debug)]
pub struct FailedEvent {
    pub index: usize,
    pub event: DataEvent,
    pub error: TrackError,
}

/// The outcome of [`EventsClient::track_all`].
#[derive(Debug, Default)]
pub struct BulkSummary {
    pub sent: u64,
    /// Events given up, by the kind of their last error.
    pub failed: BTreeMap<ErrorKind, u64>,
    /// Requests that repeated an earlier one.
    pub retried: u64,
    /// 429 answers received.
    pub rate_limited: u64,
    /// Requests made in all.
    pub requests: u64,
    /// The most requests that awaited an answer at once.
    pub peak_in_flight: usize,
    pub elapsed: Duration,
    /// Every event given up, in stream order.
    pub failures: Vec<FailedEvent>,
}

impl BulkSummary {
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// One event on its way, with the encoded body reused by every attempt.
struct Item {
    index: usize,
    event: DataEvent,
    body: Bytes,
    /// The pacer's number for the request in flight.
    seq: u64,
    attempts: u32,
    failures: u32,
    rate_limited: u32,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().try_into().unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn instant_at(unix_ms_then: u64) -> Instant {
    Instant::now() + Duration::from_millis(unix_ms_then.saturating_sub(unix_ms()))
}

async fn launch(client: &EventsClient, item: Item) -> (Item, Attempt) {
    let attempt = client.send(&item.body).await;
    (item, attempt)
}

impl EventsClient {
    /// Sends every event of `events`, keeping as many requests in flight as the rate limit and
    /// `options.max_in_flight` allow. Retries follow the client's [`super::RetryPolicy`]: a 429 puts the
    /// event back until the window resets, a 5xx or network failure backs off, anything else is final.
    /// `on_progress` is called after every answer. Never fails as a whole: each event ends up sent or in
    /// [`BulkSummary::failures`].
    pub async fn track_all<S, F>(&self, events: S, options: &BulkOptions, mut on_progress: F) -> BulkSummary
    where
        S: Stream<Item = DataEvent>,
        F: FnMut(&Progress),
    {
        let started = Instant::now();
        let max_in_flight = options.max_in_flight.max(1);
        let policy = self.retry_policy().clone();
        let mut pacer = Pacer::new(policy.max_rate_limit_wait);
        let mut events = std::pin::pin!(events.fuse());
        let mut stream_done = false;
        let mut queued: VecDeque<Item> = VecDeque::new();
        // Events waiting to be sent again, with the moment they may go.
        let mut retries: Vec<(Instant, Item)> = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        let mut summary = BulkSummary::default();
        let mut progress = Progress::default();

        loop {
            // Send what the limit allows.
            let mut pacer_wake = None;
            while in_flight.len() < max_in_flight {
                let now = Instant::now();
                let ready_retry = retries
                    .iter()
                    .enumerate()
                    .filter(|(_, (at, _))| *at <= now)
                    .min_by_key(|(_, (at, item))| (*at, item.index))
                    .map(|(position, _)| position);
                if ready_retry.is_none() && queued.is_empty() {
                    break;
                }
                match pacer.gate(unix_ms()) {
                    Gate::Open => {}
                    Gate::WaitUntil(at) => {
                        pacer_wake = Some(instant_at(at));
                        break;
                    }
                    Gate::WaitForAnswers => break,
                }
                let mut item = match ready_retry {
                    Some(position) => retries.swap_remove(position).1,
                    None => queued.pop_front().expect("checked non-empty"),
                };
                if item.attempts > 0 {
                    summary.retried += 1;
                }
                item.attempts += 1;
                summary.requests += 1;
                item.seq = pacer.on_send();
                in_flight.push(launch(self, item));
                summary.peak_in_flight = summary.peak_in_flight.max(in_flight.len());
            }

            if stream_done && queued.is_empty() && retries.is_empty() && in_flight.is_empty() {
                break;
            }

            let now = Instant::now();
            let retry_wake = retries.iter().map(|(at, _)| *at).filter(|at| *at > now).min();
            let wake = match (pacer_wake, retry_wake) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let want_more = !stream_done && queued.len() < max_in_flight;

            tokio::select! {
                biased;
                Some((item, attempt)) = in_flight.next(), if !in_flight.is_empty() => {
                    progress.rate_limit = attempt.rate_limit;
                    let rate_limited = matches!(attempt.result, Err(TrackError::RateLimited { .. }));
                    pacer.observe(
                        item.seq,
                        attempt.rate_limit,
                        rate_limited,
                        unix_ms(),
                        policy.backoff(1),
                    );
                    self.settle(item, attempt.result, &mut summary, &mut retries);
                    progress.sent = summary.sent;
                    progress.failed = summary.failed_total();
                    progress.retried = summary.retried;
                    progress.rate_limited = summary.rate_limited;
                    progress.in_flight = in_flight.len();
                    progress.elapsed = started.elapsed();
                    on_progress(&progress);
                }
                next = events.next(), if want_more => match next {
                    Some(event) => {
                        queued.push_back(Item {
                            index: progress.taken as usize,
                            body: encode(&event),
                            event,
                            seq: 0,
                            attempts: 0,
                            failures: 0,
                            rate_limited: 0,
                        });
                        progress.taken += 1;
                    }
                    None => stream_done = true,
                },
                _ = tokio::time::sleep_until(wake.unwrap_or(now).into()), if wake.is_some() => {}
                // Every branch disabled cannot happen (something is queued, waiting or in flight, and
                // each of those enables a branch); pause briefly rather than spin if it ever does.
                else => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }

        summary.failures.sort_by_key(|f| f.index);
        summary.elapsed = started.elapsed();
        summary
    }

    /// Counts an answer, and puts the event back for another attempt if the policy allows one.
    fn settle(
        &self,
        mut item: Item,
        result: Result<(), TrackError>,
        summary: &mut BulkSummary,
        retries: &mut Vec<(Instant, Item)>,
    ) {
        let error = match result {
            Ok(()) => {
                summary.sent += 1;
                return;
            }
            Err(error) => error,
        };
        let policy = self.retry_policy();
        let retry_at = match error.retry() {
            Retry::Never => None,
            Retry::AfterReset(_) => {
                summary.rate_limited += 1;
                item.rate_limited += 1;
                // The pacer holds every request back until the window resets.
                (item.rate_limited <= policy.max_rate_limited).then(Instant::now)
            }
            Retry::Backoff => {
                item.failures += 1;
                (item.failures < policy.max_attempts).then(|| Instant::now() + policy.backoff(item.failures))
            }
        };
        match retry_at {
            Some(at) => {
                tracing::debug!(index = item.index, error = %error, "data event will be retried");
                retries.push((at, item));
            }
            None => {
                let error = error.after_attempts(item.attempts);
                *summary.failed.entry(error.kind()).or_default() += 1;
                summary.failures.push(FailedEvent {
                    index: item.index,
                    event: item.event,
                    error,
                });
            }
        }
    }
}
