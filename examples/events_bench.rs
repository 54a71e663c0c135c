//! Bulk-send benchmark for Data Events: a local mock Intercom that enforces a rate limit per window (as
//! Intercom does: windows aligned to the clock, `X-RateLimit-*` headers, 429 past the limit), fed by
//!
//! - the paced sender, `EventsClient::track_all`, and
//! - a sequential baseline: one request at a time, a 500 ms pause after every 50 events (a 429 waits for
//!   the reset, as `track` does).
//!
//! Prints, for each, the throughput as a fraction of the limit, the share of requests answered 429, and
//! the events lost or delivered twice. Run it with `bench/events.sh` (see there for the options).

// The example uses part of the mock the tests share.
#[allow(dead_code)]
#[path = "../tests/it/support/events_api.rs"]
mod events_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::stream;
use intercom_webhooks::events::{AccessToken, BulkOptions, DataEvent, Endpoint, EventsClient};

use events_support::{unix_ms, WindowLimiter, TOKEN};

#[derive(Parser, Debug)]
#[command(about = "Bulk-send Data Events to a rate-limited local mock and report the figures.")]
struct Args {
    /// Events per sender.
    #[arg(long, default_value_t = 2000)]
    events: usize,
    /// The rate-limit window in whole seconds (Intercom's is 10).
    #[arg(long, default_value_t = 2)]
    window_secs: u64,
    /// Requests allowed per window (default: Intercom's per-app 10,000 a minute, scaled to the window).
    #[arg(long)]
    limit: Option<u32>,
    /// Time the mock takes to answer each request, in milliseconds.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Requests in flight for the paced sender.
    #[arg(long, default_value_t = intercom_webhooks::events::DEFAULT_MAX_IN_FLIGHT)]
    concurrency: usize,
    /// Events for the sequential baseline (default: --events).
    #[arg(long)]
    baseline_events: Option<usize>,
    /// Skip the sequential baseline.
    #[arg(long)]
    no_baseline: bool,
}

/// What one sender achieved.
struct Figures {
    name: String,
    events: usize,
    elapsed: Duration,
    /// Requests counted in windows the sender used whole (all but the last), per window.
    full_window_counted: Vec<u32>,
    requests: usize,
    rate_limited: usize,
    lost: usize,
    duplicates: usize,
}

impl Figures {
    fn throughput_fraction(&self, limit: u32) -> f64 {
        if self.full_window_counted.is_empty() {
            return f64::NAN;
        }
        let counted: u64 = self.full_window_counted.iter().map(|n| u64::from(*n)).sum();
        counted as f64 / (f64::from(limit) * self.full_window_counted.len() as f64)
    }
}

fn events(prefix: &str, n: usize) -> Vec<DataEvent> {
    (0..n)
        .map(|i| {
            DataEvent::builder("benchmarked")
                .user_id(format!("{prefix}-{i}"))
                .metadata("index", i as u64)
                .build()
                .expect("a valid event")
        })
        .collect()
}

/// Waits for the start of the next window, so that the first window a sender uses is a whole one.
async fn next_window(window: Duration) {
    let ms = window.as_millis() as u64;
    let left = ms - unix_ms() % ms;
    tokio::time::sleep(Duration::from_millis(left + 5)).await;
}

fn figures(name: &str, limiter: &WindowLimiter, events: usize, elapsed: Duration) -> Figures {
    let log = limiter.log.lock().unwrap();
    let first = log.requests.iter().map(|r| r.window).min().unwrap_or(0);
    let last = log.requests.iter().map(|r| r.window).max().unwrap_or(0);
    let full_window_counted = (first..last)
        .map(|w| log.counted.get(&w).copied().unwrap_or(0))
        .collect();
    let accepted_total = log.count_status(202);
    let distinct: HashSet<&str> = log
        .requests
        .iter()
        .filter(|r| r.status == 202)
        .map(|r| r.user_id.as_str())
        .collect();
    Figures {
        name: name.into(),
        events,
        elapsed,
        full_window_counted,
        requests: log.requests.len(),
        rate_limited: log.count_status(429),
        lost: events - distinct.len(),
        duplicates: accepted_total - distinct.len(),
    }
}

fn client(limiter_uri: &str) -> EventsClient {
    EventsClient::builder(
        AccessToken::new(TOKEN).expect("a token"),
        Endpoint::base_url(limiter_uri).expect("the mock's URL"),
    )
    .build()
    .expect("a client")
}

async fn paced(args: &Args, window: Duration, limit: u32, latency: Duration) -> Figures {
    let limiter = WindowLimiter::new(window, limit, latency);
    let server = limiter.start().await;
    let client = client(&server.uri());
    let options = BulkOptions {
        max_in_flight: args.concurrency,
    };
    next_window(window).await;
    let started = Instant::now();
    let summary = client
        .track_all(stream::iter(events("paced", args.events)), &options, |_| {})
        .await;
    let elapsed = started.elapsed();
    assert_eq!(summary.failed_total(), 0, "failures: {:?}", summary.failures);
    figures(
        &format!("paced `track_all` ({} in flight)", args.concurrency),
        &limiter,
        args.events,
        elapsed,
    )
}

async fn sequential(n: usize, window: Duration, limit: u32, latency: Duration) -> Figures {
    let limiter = WindowLimiter::new(window, limit, latency);
    let server = limiter.start().await;
    let client = client(&server.uri());
    next_window(window).await;
    let started = Instant::now();
    for (i, event) in events("sequential", n).iter().enumerate() {
        if let Err(error) = client.track(event).await {
            eprintln!("baseline: event {i} failed: {error}");
        }
        if (i + 1) % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let elapsed = started.elapsed();
    figures("sequential, 500 ms pause every 50", &limiter, n, elapsed)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert!(args.window_secs > 0, "--window-secs must be at least 1");
    let window = Duration::from_secs(args.window_secs);
    // 10,000 a minute is 1,666.7 per 10 s.
    let limit = args
        .limit
        .unwrap_or_else(|| (10_000.0 * args.window_secs as f64 / 60.0).round() as u32);
    let latency = Duration::from_millis(args.latency_ms);
    let per_second = f64::from(limit) / window.as_secs_f64();

    println!(
        "mock limit {limit} per {}-second window ({per_second:.1}/s), answer latency {} ms",
        args.window_secs, args.latency_ms
    );
    let mut results = vec![paced(&args, window, limit, latency).await];
    if !args.no_baseline {
        let n = args.baseline_events.unwrap_or(args.events);
        results.push(sequential(n, window, limit, latency).await);
    }

    println!();
    println!(
        "| sender | events | elapsed | events/s | throughput / limit (whole windows) | 429 share | lost \
         | delivered twice |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for f in &results {
        let seconds = f.elapsed.as_secs_f64();
        println!(
            "| {} | {} | {:.1} s | {:.1} | {:.1} % ({} windows) | {:.2} % ({} of {}) | {} | {} |",
            f.name,
            f.events,
            seconds,
            f.events as f64 / seconds,
            100.0 * f.throughput_fraction(limit),
            f.full_window_counted.len(),
            100.0 * f.rate_limited as f64 / f.requests.max(1) as f64,
            f.rate_limited,
            f.requests,
            f.lost,
            f.duplicates,
        );
    }
    println!();
    for f in &results {
        println!(
            "{}: requests per whole window {:?}",
            f.name, f.full_window_counted
        );
    }
}
