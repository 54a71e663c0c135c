//! End-to-end latency and saturation of `intercom-webhooks serve`: from the POST of a signed notification
//! to its handler's completion.
//!
//! Starts the release binary as a child process (`serve --log-format json` on a fresh database in a
//! temporary folder), posts copies of a real fixture, each with a fresh notification id, at a fixed offered
//! rate (open loop: requests are sent on schedule, never waiting for earlier answers), and records the
//! wall-clock instant each was sent. The server's `outcome` log line (printed after the handlers ran and
//! the idempotency record was marked completed) carries an RFC 3339 timestamp; latency is that minus the
//! send instant. Then a saturation run: rates stepping up, a few seconds each, to find the highest offered
//! rate the worker keeps up with.
//!
//! Run it with `bench/latency.sh` (which builds the binary first); `--help` lists the options.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Child;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

#[path = "support/load.rs"]
mod load;
#[path = "support/serve.rs"]
mod serve;
#[path = "support/template.rs"]
mod template;
#[path = "support/work.rs"]
mod work;

use clap::Parser;
use load::{open_loop, signed_post};
use serve::{free_port, scratch_dir, sigterm_and_wait, unix_us, wait_healthy, OutcomeLine, ServeCommand};
use template::Template;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Ids {
    /// As Intercom's traffic: random notification ids, new objects numbered one after another (as
    /// Intercom numbers new conversations).
    Intercom,
    /// Notification ids counted, each new object named after its notification.
    Counted,
    /// Notification ids random, each new object named after its notification (random too).
    Random,
}

#[derive(Parser, Debug)]
#[command(about = "End-to-end latency (POST to handler completion) and saturation of `serve`.")]
struct Args {
    /// The `intercom-webhooks` binary to run.
    #[arg(long, default_value = "target/release/intercom-webhooks")]
    bin: PathBuf,
    /// The fixture posted (its id is replaced by a fresh one per request; the rest is sent byte for byte).
    #[arg(long, default_value = "events/notifications/conversation_user_created.json")]
    fixture: PathBuf,
    /// Offered rate of the latency run, notifications per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Seconds of warm-up at the latency run's rate before it (not counted; 0 for none).
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Offered rates of the saturation run, comma-separated.
    #[arg(
        long,
        default_value = "1000,2000,3000,4000,5000,6000,7000,8000",
        value_delimiter = ','
    )]
    steps: Vec<u32>,
    /// Seconds per saturation step.
    #[arg(long, default_value_t = 5)]
    step_secs: u64,
    /// Seconds allowed after a step (or the latency run) for the worker to catch up.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
    /// `serve --pollers` (default: serve's own default).
    #[arg(long)]
    pollers: Option<u32>,
    /// Requests in flight at most; a request due while this many are unanswered is counted as skipped.
    #[arg(long, default_value_t = 2048)]
    max_in_flight: usize,
    /// Skip the saturation run.
    #[arg(long)]
    no_saturation: bool,
    /// Keep going after the first saturation step that does not keep up.
    #[arg(long)]
    all_steps: bool,
    /// Folder in which a scratch folder (the database, the server's stderr) is made and removed at the end
    /// (default: the system's temporary folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Every request about a new object (the item's id made unique), so that each is a new row in the
    /// mirror; by default every request is the same conversation, which the mirror finds unchanged.
    #[arg(long)]
    fresh_objects: bool,
    /// Notification and new objects' ids: `intercom` (`notif_<uuid>`, random as Intercom's, each landing
    /// on its own index page; with `--fresh-objects`, objects numbered one after another, as Intercom
    /// numbers new conversations), `counted` (`notif_<run>_<n>` and `obj-notif_<run>_<n>`: neighbours in
    /// every index, as in the figures of bench/RESULTS.md up to 2026-12-03) or `random` (`notif_<uuid>`
    /// and `obj-notif_<uuid>`: both random).
    #[arg(long, value_enum, default_value_t = Ids::Intercom)]
    ids: Ids,
    /// Run `serve --no-mirror`.
    #[arg(long)]
    no_mirror: bool,
    /// A further argument of `serve` (repeat for several), e.g. `--serve-arg=--worker-nice=5`.
    #[arg(long, allow_hyphen_values = true)]
    serve_arg: Vec<String>,
    /// Also print the latency run's p50 / p99 / max for each second of sending.
    #[arg(long)]
    per_second: bool,
}

const SECRET: &str = "latency-probe-secret";

/// How long a request may take before the probe gives up on it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle connections the probe keeps open at most.
const IDLE_CONNECTIONS: usize = 128;

/// A running `serve` whose outcome lines arrive on a channel.
struct Server {
    child: Child,
    port: u16,
    outcomes: mpsc::Receiver<OutcomeLine>,
    dir: PathBuf,
}

impl Server {
    fn start(
        bin: &PathBuf,
        pollers: Option<u32>,
        base: Option<&PathBuf>,
        extra: Vec<String>,
    ) -> anyhow::Result<Server> {
        let dir = scratch_dir(base, "latency-probe")?;
        let port = free_port()?;
        let (tx, outcomes) = mpsc::channel();
        let child = ServeCommand {
            bin,
            port,
            db: &dir.join("serve.db"),
            secret: SECRET,
            pollers,
            extra,
            stderr: std::fs::File::create(dir.join("serve.err"))?,
        }
        .spawn(move |line| tx.send(line).is_ok())?;
        let mut server = Server {
            child,
            port,
            outcomes,
            dir,
        };
        wait_healthy(port, &mut server.child, Duration::from_secs(15))?;
        Ok(server)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/webhooks/intercom", self.port)
    }

    /// The counters of the work done so far.
    fn work(&self) -> work::Snapshot {
        work::Snapshot::take(
            self.child.id(),
            &format!("http://127.0.0.1:{}/metrics", self.port),
            &self.dir,
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        sigterm_and_wait(&mut self.child, Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What happened to each id sent in one run.
#[derive(Default)]
struct Sent {
    /// id → send instant (Unix µs).
    at: HashMap<String, i64>,
    /// id → intake answer latency (µs) for answers 200.
    acked: HashMap<String, i64>,
    /// Why requests failed (the status, or the client's error), with how many and the longest one took.
    failures: BTreeMap<String, (usize, Duration)>,
    skipped: usize,
}

impl Sent {
    /// Requests not answered 200.
    fn failed(&self) -> usize {
        self.failures.values().map(|(n, _)| n).sum()
    }
}

/// "N <reason> (the longest after T s), ..." for a phase's failed requests.
fn failures_line(failures: &BTreeMap<String, (usize, Duration)>) -> String {
    failures
        .iter()
        .map(|(reason, (n, longest))| {
            format!("{n} {reason} (the longest after {:.1} s)", longest.as_secs_f64())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a request was not answered 200, in a few words: the status, or which part of the request the
/// client gave up in.
fn failure(answer: &reqwest::Result<reqwest::Response>) -> String {
    match answer {
        Ok(r) => format!("answered {}", r.status()),
        Err(e) if e.is_timeout() => format!("timed out ({} s)", CLIENT_TIMEOUT.as_secs()),
        Err(e) if e.is_connect() => "could not connect".to_owned(),
        Err(e) => {
            // The innermost cause says what happened on the connection (closed, reset).
            let mut cause: &dyn std::error::Error = e;
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            format!("error: {cause}")
        }
    }
}

/// How the requests of one phase (warm-up, latency run, a saturation step) name their notifications.
#[derive(Clone, Copy)]
struct Naming<'a> {
    phase: &'a str,
    /// The phase's place among the run's phases: its objects are numbered apart from the others'.
    index: u64,
    ids: Ids,
}

/// The first new object's number with `--ids intercom`: a conversation id of the fixture's size.
const FIRST_OBJECT: u64 = 21_400_000_000;

/// Numbers set aside for each phase's objects with `--ids intercom` (a phase sends fewer requests).
const OBJECTS_PER_PHASE: u64 = 100_000_000;

impl Naming<'_> {
    /// The ids of the phase's request `n`: the notification's, and the object's when the fixture has an
    /// object's hole (`None`: named after the notification).
    fn ids(&self, n: u64) -> (String, Option<String>) {
        match self.ids {
            Ids::Intercom => (
                format!("notif_{}", uuid::Uuid::new_v4()),
                Some((FIRST_OBJECT + self.index * OBJECTS_PER_PHASE + n).to_string()),
            ),
            Ids::Counted => (format!("notif_{}_{n}", self.phase), None),
            Ids::Random => (format!("notif_{}", uuid::Uuid::new_v4()), None),
        }
    }
}

/// Posts at `rate`/s for `secs`, open loop. Returns when the last request has been answered.
async fn offer(
    client: &reqwest::Client,
    url: &str,
    template: &Arc<Template>,
    naming: Naming<'_>,
    rate: u32,
    secs: u64,
    max_in_flight: usize,
) -> Sent {
    let sent = Arc::new(Mutex::new(Sent::default()));
    let skipped = open_loop(rate, secs, max_in_flight, |n| {
        let (id, object) = naming.ids(n);
        let (client, url, template, sent) = (client.clone(), url.to_owned(), template.clone(), sent.clone());
        async move {
            let request = signed_post(&client, &url, &template, &id, object.as_deref());
            let at = SystemTime::now();
            let clock = Instant::now();
            let answer = request.send().await;
            let elapsed = clock.elapsed();
            let mut sent = sent.lock().unwrap();
            sent.at.insert(id.clone(), unix_us(at));
            match answer {
                Ok(r) if r.status() == 200 => {
                    sent.acked.insert(id, elapsed.as_micros() as i64);
                }
                failed => {
                    let entry = sent.failures.entry(failure(&failed)).or_default();
                    entry.0 += 1;
                    entry.1 = entry.1.max(elapsed);
                }
            }
        }
    })
    .await;
    sent.lock().unwrap().skipped = skipped;
    Arc::try_unwrap(sent)
        .ok()
        .expect("every task finished")
        .into_inner()
        .unwrap()
}

/// Waits (at most `wait`) until every acknowledged id of `sent` has an outcome; returns id → (outcome,
/// timestamp µs) for the ids of this run.
fn collect(
    server: &Server,
    sent: &Sent,
    seen: &mut HashMap<String, (String, i64)>,
    wait: Duration,
) -> (usize, Duration) {
    let start = Instant::now();
    loop {
        while let Ok((id, outcome, at)) = server.outcomes.try_recv() {
            seen.insert(id, (outcome, at));
        }
        let missing = sent.acked.keys().filter(|id| !seen.contains_key(*id)).count();
        if missing == 0 || start.elapsed() >= wait {
            return (missing, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// Latencies (µs, sorted) from send to outcome, for the processed ids of `sent`.
fn latencies(sent: &Sent, seen: &HashMap<String, (String, i64)>) -> (Vec<i64>, usize) {
    let mut out = Vec::new();
    let mut processed = 0;
    for (id, at) in &sent.at {
        if let Some((outcome, done)) = seen.get(id) {
            if outcome == "processed" {
                processed += 1;
                out.push(done - at);
            }
        }
    }
    out.sort_unstable();
    (out, processed)
}

/// The latency run's figures for each second of sending.
fn per_second(sent: &Sent, seen: &HashMap<String, (String, i64)>) {
    let Some(first) = sent.at.values().min().copied() else {
        return;
    };
    let mut buckets: Vec<Vec<i64>> = Vec::new();
    for (id, at) in &sent.at {
        if let Some((outcome, done)) = seen.get(id) {
            if outcome == "processed" {
                let second = ((at - first) / 1_000_000) as usize;
                if buckets.len() <= second {
                    buckets.resize_with(second + 1, Vec::new);
                }
                buckets[second].push(done - at);
            }
        }
    }
    println!();
    println!("| second | processed | p50 | p99 | max |");
    println!("|---:|---:|---:|---:|---:|");
    for (second, mut lat) in buckets.into_iter().enumerate() {
        lat.sort_unstable();
        println!(
            "| {second} | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
            lat.len(),
            percentile(&lat, 50.0),
            percentile(&lat, 99.0),
            lat.last().copied().unwrap_or(0) as f64 / 1000.0
        );
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut template = Template::load(&args.fixture, SECRET)?;
    if args.fresh_objects {
        template = template.with_fresh_objects()?;
    }
    let template = Arc::new(template);
    let mut extra = args.serve_arg.clone();
    if args.no_mirror {
        extra.push("--no-mirror".to_owned());
    }
    let options: String = extra.iter().map(|a| format!(" {a}")).collect();
    let server = Server::start(&args.bin, args.pollers, args.dir.as_ref(), extra)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let client = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        // Fewer idle connections kept than `serve --max-connections` (512) serves at once. After a burst,
        // or a stall of the VM, the pool would otherwise keep every connection it opened: those beyond
        // the limit wait for `serve` to close idle ones, and a request sent on one as it closes fails.
        .pool_max_idle_per_host(args.max_in_flight.min(IDLE_CONNECTIONS))
        .build()?;
    let url = server.url();
    let mut seen: HashMap<String, (String, i64)> = HashMap::new();
    let pollers = args
        .pollers
        .map_or_else(|| "default (4)".to_owned(), |p| p.to_string());

    // Warm-up: connections, the database file, the page cache.
    let mut warm_line = String::from("No warm-up.");
    if args.warmup_secs > 0 {
        let warm = runtime.block_on(offer(
            &client,
            &url,
            &template,
            Naming {
                phase: "warm",
                index: 0,
                ids: args.ids,
            },
            args.rate,
            args.warmup_secs,
            args.max_in_flight,
        ));
        collect(&server, &warm, &mut seen, Duration::from_secs(10));
        let (lat, processed) = latencies(&warm, &seen);
        warm_line = format!(
            "Warm-up ({} s at {}/s, not counted): {processed} processed, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms.",
            args.warmup_secs,
            args.rate,
            percentile(&lat, 50.0),
            percentile(&lat, 99.0),
            lat.last().copied().unwrap_or(0) as f64 / 1000.0
        );
        if !warm.failures.is_empty() {
            warm_line.push_str(&format!(" Failed: {}.", failures_line(&warm.failures)));
        }
    }

    eprintln!(
        "latency run: {} notifications/s for {} s ({}, --pollers {pollers})...",
        args.rate,
        args.duration,
        args.fixture.display()
    );
    let work_before = server.work();
    let run = runtime.block_on(offer(
        &client,
        &url,
        &template,
        Naming {
            phase: "lat",
            index: 1,
            ids: args.ids,
        },
        args.rate,
        args.duration,
        args.max_in_flight,
    ));
    let (missing, _) = collect(
        &server,
        &run,
        &mut seen,
        Duration::from_secs(args.drain_secs.max(10)),
    );
    let work_after = server.work();
    let (lat, processed) = latencies(&run, &seen);
    let work = work::report(&work_before, &work_after, processed);
    let mut intake: Vec<i64> = run.acked.values().copied().collect();
    intake.sort_unstable();
    let p99 = percentile(&lat, 99.0);
    println!("### End-to-end latency at a fixed offered rate");
    println!();
    println!(
        "`serve --pollers {pollers}{}`, {} offered at {}/s for {} s (open loop, a fresh id each, {}{}), fixture `{}`.",
        options,
        run.at.len() + run.skipped,
        args.rate,
        args.duration,
        match (args.ids, args.fresh_objects) {
            (Ids::Counted, _) => "counted (`notif_<run>_<n>`)",
            (Ids::Intercom | Ids::Random, false) => "random as Intercom's (`notif_<uuid>`)",
            (Ids::Intercom, true) => "random as Intercom's (`notif_<uuid>`), objects numbered in order as Intercom numbers conversations",
            (Ids::Random, true) => "random as Intercom's (`notif_<uuid>`), new objects named after them (`obj-notif_<uuid>`)",
        },
        match (args.no_mirror, args.fresh_objects) {
            (true, _) => "",
            (false, true) => ", a new object each: one mirror insert per notification",
            (false, false) => ", one object: the mirror finds each version unchanged",
        },
        args.fixture.display()
    );
    println!(
        "Latency = the `outcome` line's timestamp − the wall-clock instant the POST was sent. After a {} s warm-up at the same rate (not counted).",
        args.warmup_secs
    );
    println!();
    println!(
        "| sent | answered 200 | failed | skipped (in-flight cap) | processed | no outcome after drain |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {} | {} |",
        run.at.len(),
        run.acked.len(),
        run.failed(),
        run.skipped,
        processed,
        missing
    );
    if !run.failures.is_empty() {
        println!();
        println!("Failed requests: {}.", failures_line(&run.failures));
    }
    println!();
    println!("| | p50 | p90 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| POST → handler done (outcome line) | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        p99,
        lat.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    println!(
        "| POST → 200 (intake answer) | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
        percentile(&intake, 50.0),
        percentile(&intake, 90.0),
        percentile(&intake, 99.0),
        intake.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    println!();
    println!("{work}");
    println!();
    println!("{warm_line}");
    println!();
    // The goals of the sustained rate of distinct notifications (bench/RESULTS.md says how they are met).
    let all_processed = missing == 0 && run.failed() == 0 && run.skipped == 0;
    for (rate, bound) in [(5_000, 10.0), (20_000, 50.0)] {
        let verdict = if args.rate < rate {
            "not measured by this run (a lower rate)"
        } else if p99 < bound && all_processed {
            "met"
        } else {
            "missed"
        };
        println!(
            "Goal p99 < {bound} ms at ≥ {rate}/s, every notification processed: {verdict} (p99 {p99:.2} ms at {}/s).",
            args.rate
        );
    }

    if args.per_second {
        per_second(&run, &seen);
    }
    if args.no_saturation || args.steps.is_empty() {
        return Ok(());
    }
    println!();
    println!("### Saturation: processed rate against offered rate");
    println!();
    println!(
        "`serve --pollers {pollers}`, {} s per step; a step keeps up when processed/s (outcomes timestamped within the step) ≥ 95 % of offered and every acknowledged notification is processed within {} s after the step. p50 / p99: POST → outcome, over the notifications processed by then.",
        args.step_secs, args.drain_secs
    );
    println!();
    println!("| offered/s | sent/s | answered 200 | processed/s in the step | caught up after | p50 | p99 | keeps up |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---|");
    let mut best = None;
    for (n, &rate) in args.steps.iter().enumerate() {
        eprintln!("saturation step: {rate}/s for {} s...", args.step_secs);
        let step_start = unix_us(SystemTime::now());
        let step = runtime.block_on(offer(
            &client,
            &url,
            &template,
            Naming {
                phase: &format!("sat{n}"),
                index: 2 + n as u64,
                ids: args.ids,
            },
            rate,
            args.step_secs,
            args.max_in_flight,
        ));
        let step_end = step_start + (args.step_secs * 1_000_000) as i64;
        let (missing, waited) = collect(&server, &step, &mut seen, Duration::from_secs(args.drain_secs));
        let in_window = step
            .at
            .keys()
            .filter_map(|id| seen.get(id))
            .filter(|(o, at)| o == "processed" && *at <= step_end)
            .count();
        let last = step
            .acked
            .keys()
            .filter_map(|id| seen.get(id))
            .map(|(_, at)| *at)
            .max()
            .unwrap_or(step_end);
        let processed_rate = in_window as f64 / args.step_secs as f64;
        let (lat, _) = latencies(&step, &seen);
        let keeps_up = missing == 0 && processed_rate >= 0.95 * rate as f64 && step.failed() == 0;
        if keeps_up {
            best = Some(rate);
        }
        let catch_up = if missing == 0 {
            format!("{:.1} s", ((last - step_end).max(0)) as f64 / 1e6)
        } else {
            format!("{missing} left after {:.0} s", waited.as_secs_f64())
        };
        println!(
            "| {rate} | {:.0} | {} | {:.0} | {catch_up} | {:.1} ms | {:.1} ms | {} |",
            step.at.len() as f64 / args.step_secs as f64,
            step.acked.len(),
            processed_rate,
            percentile(&lat, 50.0),
            percentile(&lat, 99.0),
            if keeps_up { "yes" } else { "no" }
        );
        if !keeps_up {
            if !args.all_steps {
                break;
            }
            // Let the backlog clear before the next step.
            collect(&server, &step, &mut seen, Duration::from_secs(60));
        }
    }
    println!();
    match best {
        Some(rate) => println!(
            "Highest offered rate kept up with: **{rate}/s** (goal ≥ 5,000/s sustained: {}).",
            if rate >= 5000 { "met" } else { "missed" }
        ),
        None => println!("No step kept up (goal ≥ 5,000/s sustained: missed)."),
    }
    Ok(())
}
