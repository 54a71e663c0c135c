//! Soak test of `intercom-webhooks serve`: steady signed load for minutes while the server is killed with
//! SIGKILL at a fixed interval and restarted on the same database; then a final drain. Reports the
//! notifications sent, acknowledged (answered 200), processed, duplicates suppressed, and lost: an
//! acknowledged notification with no `processed` outcome line (across every restart) and no COMPLETED
//! idempotency record after the drain. Lost must be 0, and so must "processed twice".
//!
//! A share of the requests re-deliver an id that was already acknowledged, byte for byte, as Intercom
//! does sometimes: those must come out as `duplicate`. Run it with `bench/soak.sh`; `--help` lists the
//! options.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "support/load.rs"]
mod load;
#[path = "support/serve.rs"]
mod serve;
#[path = "support/template.rs"]
mod template;

use clap::Parser;
use load::{open_loop, signed_post};
use serve::{free_port, scratch_dir, sigterm_and_wait, wait_healthy, ServeCommand};
use template::Template;

#[derive(Parser, Debug)]
#[command(
    about = "Steady load on `serve` with periodic kill -9 and restart; counts lost and duplicated notifications."
)]
struct Args {
    /// The `intercom-webhooks` binary to run.
    #[arg(long, default_value = "target/release/intercom-webhooks")]
    bin: PathBuf,
    /// The fixture posted (its id is replaced per notification; the rest is sent byte for byte).
    #[arg(long, default_value = "events/notifications/conversation_user_replied.json")]
    fixture: PathBuf,
    /// Offered rate, requests per second (open loop).
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 120)]
    duration: u64,
    /// Seconds between two SIGKILLs (0: never kill).
    #[arg(long, default_value_t = 20)]
    kill_every: u64,
    /// Percentage of requests that re-deliver an already acknowledged notification.
    #[arg(long, default_value_t = 2)]
    redeliver_pct: u32,
    /// `serve --visibility-timeout`: how soon a message received by a killed server is handed out again.
    #[arg(long, default_value_t = 5)]
    visibility_timeout: u64,
    /// `serve --pollers` (default: serve's own default).
    #[arg(long)]
    pollers: Option<u32>,
    /// Seconds allowed for the final drain.
    #[arg(long, default_value_t = 60)]
    drain_secs: u64,
    /// Requests in flight at most; a request due while this many are unanswered is counted as skipped.
    #[arg(long, default_value_t = 2048)]
    max_in_flight: usize,
    /// Folder in which a scratch folder (the database, the servers' stderr) is made and removed at the
    /// end (default: the system's temporary folder).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const SECRET: &str = "soak-secret";

/// Every outcome line of every server run: (notification id, outcome).
type Outcomes = Arc<Mutex<Vec<(String, String)>>>;

fn start_server(args: &Args, db: &Path, port: u16, outcomes: &Outcomes, err: &Path) -> anyhow::Result<Child> {
    let sink = outcomes.clone();
    ServeCommand {
        bin: &args.bin,
        port,
        db,
        secret: SECRET,
        pollers: args.pollers,
        extra: vec!["--visibility-timeout".into(), args.visibility_timeout.to_string()],
        stderr: std::fs::OpenOptions::new().create(true).append(true).open(err)?,
    }
    .spawn(move |(id, outcome, _)| {
        sink.lock().unwrap().push((id, outcome));
        true
    })
}

/// What the sender saw.
#[derive(Default)]
struct Load {
    sent_fresh: usize,
    /// Fresh ids answered 200, in order.
    acked: Vec<String>,
    acked_set: HashSet<String>,
    redelivered: usize,
    redelivered_acked: usize,
    /// Requests not answered 200: connection refused or reset (the server was down), timeouts, 5xx.
    failed: usize,
    failed_status: HashMap<u16, usize>,
    skipped: usize,
}

async fn load(args: Arc<Args>, port: u16, template: Arc<Template>, state: Arc<Mutex<Load>>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a client builds");
    let url = format!("http://127.0.0.1:{port}/webhooks/intercom");
    let every = if args.redeliver_pct == 0 {
        u64::MAX
    } else {
        (100 / args.redeliver_pct.min(100)).max(1) as u64
    };
    let skipped = open_loop(args.rate, args.duration, args.max_in_flight, |n| {
        let redelivery = if n.is_multiple_of(every) {
            let s = state.lock().unwrap();
            (!s.acked.is_empty()).then(|| s.acked[(n as usize * 7919) % s.acked.len()].clone())
        } else {
            None
        };
        let (fresh, id) = match redelivery {
            Some(id) => (false, id),
            None => (true, format!("notif_soak_{n}")),
        };
        let (client, url, template, state) = (client.clone(), url.clone(), template.clone(), state.clone());
        async move {
            let answer = signed_post(&client, &url, &template, &id, None).send().await;
            let mut s = state.lock().unwrap();
            if fresh {
                s.sent_fresh += 1;
            } else {
                s.redelivered += 1;
            }
            match answer {
                Ok(r) if r.status() == 200 => {
                    if fresh {
                        s.acked_set.insert(id.clone());
                        s.acked.push(id);
                    } else {
                        s.redelivered_acked += 1;
                    }
                }
                Ok(r) => {
                    s.failed += 1;
                    *s.failed_status.entry(r.status().as_u16()).or_default() += 1;
                }
                Err(_) => s.failed += 1,
            }
        }
    })
    .await;
    state.lock().unwrap().skipped = skipped;
}

fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let template = Arc::new(Template::load(&args.fixture, SECRET)?);
    let dir = scratch_dir(args.dir.as_ref(), "soak")?;
    let result = run(args, template, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(args: Arc<Args>, template: Arc<Template>, dir: &Path) -> anyhow::Result<()> {
    let db = dir.join("soak.db");
    let err = dir.join("serve.err");
    let port = free_port()?;
    let outcomes: Outcomes = Arc::new(Mutex::new(Vec::new()));
    let mut child = start_server(&args, &db, port, &outcomes, &err)?;
    let guard = ChildGuard(Arc::new(Mutex::new(None)));
    wait_healthy(port, &mut child, Duration::from_secs(30))?;
    *guard.0.lock().unwrap() = Some(child.id());

    let state = Arc::new(Mutex::new(Load::default()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    eprintln!(
        "soak: {}/s for {} s, SIGKILL every {} s, {} % re-deliveries...",
        args.rate, args.duration, args.kill_every, args.redeliver_pct
    );
    let sender = runtime.spawn(load(args.clone(), port, template.clone(), state.clone()));

    // Kill and restart on schedule while the load runs.
    let start = Instant::now();
    let mut downtimes = Vec::new();
    let mut next_kill = args.kill_every;
    while start.elapsed() < Duration::from_secs(args.duration) {
        std::thread::sleep(Duration::from_millis(50));
        if args.kill_every == 0 || start.elapsed() < Duration::from_secs(next_kill) {
            continue;
        }
        if start.elapsed() + Duration::from_secs(1) >= Duration::from_secs(args.duration) {
            break;
        }
        next_kill += args.kill_every;
        let killed_at = Instant::now();
        child.kill()?; // SIGKILL
        child.wait()?;
        child = start_server(&args, &db, port, &outcomes, &err)?;
        *guard.0.lock().unwrap() = Some(child.id());
        wait_healthy(port, &mut child, Duration::from_secs(30))?;
        let down = killed_at.elapsed();
        eprintln!(
            "  SIGKILL at {:.1} s, serving again after {:.0} ms",
            killed_at.duration_since(start).as_secs_f64(),
            down.as_secs_f64() * 1000.0
        );
        downtimes.push(down);
    }
    runtime.block_on(sender)?;
    let load_secs = start.elapsed().as_secs_f64();

    // Final drain: until the queue is empty and every acknowledged id has a settling outcome line
    // (`processed`, or `duplicate` when a server was killed between the completion write and the line),
    // or the time is up.
    let acked: HashSet<String> = state.lock().unwrap().acked_set.clone();
    let drain_start = Instant::now();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut health;
    loop {
        health = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .and_then(|r| r.json())
            .unwrap_or(serde_json::Value::Null);
        let settled: HashSet<String> = outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, o)| o == "processed" || o == "duplicate")
            .map(|(id, _)| id.clone())
            .collect();
        let done = health["queued"] == 0 && acked.iter().all(|id| settled.contains(id));
        if done || drain_start.elapsed() > Duration::from_secs(args.drain_secs) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let drained_after = drain_start.elapsed();
    let exit = sigterm_and_wait(&mut child, Duration::from_secs(30));
    *guard.0.lock().unwrap() = None;
    std::thread::sleep(Duration::from_millis(200)); // the reader thread reads the last lines

    // Tally.
    let outcomes = outcomes.lock().unwrap().clone();
    let mut by_outcome: HashMap<String, usize> = HashMap::new();
    let mut processed_count: HashMap<String, usize> = HashMap::new();
    for (id, outcome) in &outcomes {
        *by_outcome.entry(outcome.clone()).or_default() += 1;
        if outcome == "processed" {
            *processed_count.entry(id.clone()).or_default() += 1;
        }
    }
    let twice = processed_count.values().filter(|&&n| n > 1).count();
    let no_line: Vec<&String> = acked
        .iter()
        .filter(|id| !processed_count.contains_key(*id))
        .collect();
    let completed = completed_ids(&db, &template.app_id)?;
    let completed_without_line = no_line.iter().filter(|id| completed.contains(**id)).count();
    let lost = no_line.len() - completed_without_line;
    let unacked_processed = processed_count.keys().filter(|id| !acked.contains(*id)).count();
    let s = state.lock().unwrap();
    let count = |o: &str| by_outcome.get(o).copied().unwrap_or(0);
    let others: usize = by_outcome
        .iter()
        .filter(|(o, _)| !["processed", "duplicate", "in_flight", "retry"].contains(&o.as_str()))
        .map(|(_, n)| n)
        .sum();

    println!("### Soak: steady load with kill -9 and restart");
    println!();
    println!(
        "`serve --visibility-timeout {} --pollers {}`, {} requests/s for {} s (open loop; {} % re-deliver an acknowledged id), SIGKILL every {} s and an immediate restart on the same database ({} kills); then a drain of at most {} s and SIGTERM. Fixture `{}`.",
        args.visibility_timeout,
        args.pollers.map_or_else(|| "default (4)".into(), |p| p.to_string()),
        args.rate,
        args.duration,
        args.redeliver_pct,
        args.kill_every,
        downtimes.len(),
        args.drain_secs,
        args.fixture.display()
    );
    println!();
    println!("| figure | value |");
    println!("|---|---:|");
    println!("| notifications sent (fresh ids) | {} |", s.sent_fresh);
    println!("| acknowledged (answered 200) | {} |", acked.len());
    println!(
        "| not acknowledged (server down, reset, timeout, non-200) | {} |",
        s.failed
    );
    println!(
        "| re-deliveries of acknowledged ids sent / answered 200 | {} / {} |",
        s.redelivered, s.redelivered_acked
    );
    println!("| skipped (in-flight cap) | {} |", s.skipped);
    println!(
        "| processed (outcome lines, every run) | {} |",
        count("processed")
    );
    println!("| distinct ids processed | {} |", processed_count.len());
    println!("| of them not acknowledged (stored, answer lost in a kill) | {unacked_processed} |");
    println!(
        "| duplicates suppressed (`duplicate` outcome lines) | {} |",
        count("duplicate")
    );
    println!(
        "| `in_flight` / `retry` outcomes (handed out again) | {} / {} |",
        count("in_flight"),
        count("retry")
    );
    println!("| other outcomes | {others} |");
    println!("| ids processed more than once (must be 0) | **{twice}** |");
    println!("| acknowledged, completed, but killed before the outcome line | {completed_without_line} |");
    println!("| **lost**: acknowledged, never processed (must be 0) | **{lost}** |");
    println!(
        "| queue after the drain: queued / dead letters | {} / {} |",
        health["queued"], health["dead_letters"]
    );
    println!("| drain after the load | {:.1} s |", drained_after.as_secs_f64());
    println!(
        "| final SIGTERM | {} |",
        exit.map_or_else(|| "did not stop within 30 s".to_owned(), |e| e.to_string())
    );
    if !downtimes.is_empty() {
        let mut ms: Vec<f64> = downtimes.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "| SIGKILL → serving again (min / median / max) | {:.0} / {:.0} / {:.0} ms |",
            ms[0],
            ms[ms.len() / 2],
            ms[ms.len() - 1]
        );
    }
    println!("| load phase | {load_secs:.1} s |");
    if !s.failed_status.is_empty() {
        println!();
        println!("Non-200 answers by status: {:?}", s.failed_status);
    }
    println!();
    println!(
        "Lost: {} (goal 0). Processed twice: {}.",
        if lost == 0 { "0, met" } else { "MISSED" },
        if twice == 0 { "0" } else { "NOT 0" }
    );
    if lost > 0 || twice > 0 {
        anyhow::bail!("{lost} acknowledged notifications lost, {twice} processed more than once");
    }
    Ok(())
}

/// The notification ids whose idempotency record is COMPLETED.
fn completed_ids(db: &Path, app_id: &str) -> anyhow::Result<HashSet<String>> {
    let conn = rusqlite::Connection::open(db)?;
    let mut statement = conn.prepare("SELECT pk FROM idempotency WHERE status = 'COMPLETED'")?;
    let prefix = format!("{app_id}#");
    let ids = statement
        .query_map([], |r| r.get::<_, String>(0))?
        .filter_map(Result::ok)
        .map(|pk| pk.strip_prefix(&prefix).map(str::to_owned).unwrap_or(pk))
        .collect();
    Ok(ids)
}

/// Kills the current server if `run` returns early (an error or a panic).
struct ChildGuard(Arc<Mutex<Option<u32>>>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.lock().ok().and_then(|g| *g) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}
