//! The least SQLite can cost per notification on this machine, whatever design is built on it: the floor
//! under `serve`'s database thread, for goal 2 of issue #21 (and the queue alone, for goal 1).
//!
//! Each configuration runs on one thread that owns the connection (SQLite has one writer), on a fresh
//! database in its own folder, and does one of two stories:
//! - `queue`: each group of bodies inserted into a one-table queue, committed, then the WAL synced
//!   (`fdatasync`): a durable intake and nothing else.
//! - `story`: a notification's whole story in the fewest writes a design with SQLite as its queue and its
//!   store could make. Each cycle commits, in one transaction, the next group's bodies (the intake) and the
//!   previous group's processing (a claim row per notification id; a mirror row for a new object, as
//!   `latency_probe --fresh-objects` sends; the deletion of its queue rows), then syncs the WAL once.
//!   Ids are as Intercom's by default: notification ids random, each claim landing on its own index
//!   page, and new objects numbered one after another, as Intercom numbers new conversations. `--keys`
//!   makes both random, or both counted (neighbours sharing pages). `serve` writes more than this (a
//!   receive, a claim and a completion in commits of their own, so that a handler's effects are never
//!   repeated after a crash), so this is a bound, not a design.
//!
//! Rows are the sizes `serve` stores: the fixture's body and its item LZ4-compressed (once, here: the CPU
//! measured is SQLite's and the kernel's, not LZ4's). The writing thread's CPU is read from
//! `/proc/thread-self/schedstat`; with `--checkpoints apart`, SQLite's automatic checkpoints are off and a
//! second thread, with its own connection, checkpoints the WAL (`PRAGMA wal_checkpoint(PASSIVE)`) every
//! few milliseconds, its CPU counted apart. The machine's CPU (`/proc/stat`) includes the kernel's
//! write-back, which no thread of this process pays for.
//!
//! Run it with `bench/sqlite-floor.sh` (which builds it first); `--help` lists the options.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rusqlite::{params, Connection};

#[path = "support/work.rs"]
mod work;

#[derive(Parser, Debug)]
#[command(about = "The least SQLite costs per notification on this machine (one writer thread).")]
struct Args {
    /// Notifications per configuration.
    #[arg(long, default_value_t = 100_000)]
    notifications: usize,
    /// Notifications per group (one commit and one sync each), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
    groups: Vec<usize>,
    /// Stories to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "queue,story")]
    stories: Vec<Story>,
    /// Where checkpoints run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "writer,apart")]
    checkpoints: Vec<Checkpoint>,
    /// Notification and object ids: as Intercom's (`notif_<uuid>`, random; objects numbered one after
    /// another), both random (the object `obj-notif_<uuid>`), or both counted (`notif_<run>_<n>`, the
    /// object `obj-notif_<run>_<n>`), whose neighbours land on the same index pages.
    #[arg(long, value_enum, default_value_t = Keys::Intercom)]
    keys: Keys,
    /// SQLite page sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4096")]
    page_sizes: Vec<u32>,
    /// The notification whose body is stored (its item is the mirror's row).
    #[arg(long, default_value = "events/notifications/conversation_user_created.json")]
    fixture: PathBuf,
    /// The rate the summary measures the writer thread against, notifications per second.
    #[arg(long, default_value_t = 20_000)]
    rate: u32,
    /// Folder in which each configuration's database is made and removed (default: the system's
    /// temporary folder).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Story {
    Queue,
    Story,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Keys {
    /// Notification ids random as Intercom's; new objects' ids counted, as Intercom numbers new
    /// conversations.
    Intercom,
    /// Notification and object ids random.
    Random,
    /// Notification and object ids counted.
    Counted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Checkpoint {
    /// SQLite's automatic checkpoint (every 1,000 pages of WAL), on the writing thread.
    Writer,
    /// No automatic checkpoint; a second thread and connection checkpoint the WAL.
    Apart,
}

/// One configuration measured.
#[derive(Clone, Copy)]
struct Config {
    story: Story,
    page: u32,
    checkpoint: Checkpoint,
    group: usize,
    keys: Keys,
}

/// A notification's id and the id of the new object it is about.
struct Ids {
    notification: String,
    object: String,
}

/// What one configuration cost, per notification.
struct Cost {
    writer_us: f64,
    checkpointer_us: f64,
    machine_us: f64,
    wall_us: f64,
    written_bytes: f64,
}

/// The first new object's id with `--keys intercom`: a conversation id of the fixture's size, as
/// Intercom numbers new conversations one after another.
const FIRST_OBJECT: u64 = 21_400_000_000;

/// How often the checkpointing thread checkpoints.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(5);

const SCHEMA: &str = "
CREATE TABLE queue (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE claims (id TEXT PRIMARY KEY, status INTEGER NOT NULL, expiration INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE mirror (id TEXT NOT NULL UNIQUE, version_ms INTEGER NOT NULL, item BLOB NOT NULL);
";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fixture = std::fs::read(&args.fixture)?;
    let parsed: serde_json::Value = serde_json::from_slice(&fixture)?;
    let item = serde_json::to_vec(&parsed["data"]["item"])?;
    let body = lz4_flex::compress_prepend_size(&fixture);
    let item = lz4_flex::compress_prepend_size(&item);
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);

    println!("### SQLite's floor per notification (one writer thread)\n");
    println!(
        "{} notifications per configuration on a fresh database, {} ids; rows as `serve` stores them: body {} B and \
         item {} B after LZ4 (from {}). CPU per notification: the writing thread, the checkpointing thread \
         (`apart` only), the whole machine (kernel write-back included). `writer at {}/s`: the share of one \
         thread the writer would need at that rate. The story's cost grows with its tables: compare at \
         the number of notifications a run at that rate leaves.\n",
        args.notifications,
        name(args.keys),
        body.len(),
        item.len(),
        args.fixture.display(),
        args.rate
    );
    println!(
        "| story | page | checkpoint | group | writer CPU | checkpointer CPU | machine CPU | wall | written | writer at {}/s |",
        args.rate
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut best: Vec<(Story, f64)> = Vec::new();
    for &story in &args.stories {
        for &page in &args.page_sizes {
            for &checkpoint in &args.checkpoints {
                for &group in &args.groups {
                    let dir = tempfile::Builder::new()
                        .prefix("sqlite-floor.")
                        .tempdir_in(&base)?;
                    let config = Config {
                        story,
                        page,
                        checkpoint,
                        group: group.max(1),
                        keys: args.keys,
                    };
                    let cost = run(dir.path(), config, args.notifications, &body, &item)?;
                    let at_rate = cost.writer_us * f64::from(args.rate) / 1e6;
                    println!(
                        "| {} | {page} | {} | {group} | {:.1} µs | {} | {:.1} µs | {:.1} µs | {:.1} KB | {:.0} % |",
                        name(story),
                        name(checkpoint),
                        cost.writer_us,
                        if checkpoint == Checkpoint::Apart { format!("{:.1} µs", cost.checkpointer_us) } else { "–".into() },
                        cost.machine_us,
                        cost.wall_us,
                        cost.written_bytes / 1000.0,
                        at_rate * 100.0
                    );
                    match best.iter_mut().find(|(s, _)| *s == story) {
                        Some((_, low)) => *low = low.min(cost.writer_us),
                        None => best.push((story, cost.writer_us)),
                    }
                }
            }
        }
    }
    println!();
    for (story, low) in best {
        let max_rate = 1e6 / low;
        println!(
            "- `{}`: at the least {low:.1} µs of the writing thread per notification, so one writer thread \
             handles at most {max_rate:.0} notifications/s with nothing else to do ({:.0} % of it at {}/s).",
            name(story),
            low * f64::from(args.rate) / 1e4,
            args.rate
        );
    }
    Ok(())
}

fn run(dir: &Path, config: Config, notifications: usize, body: &[u8], item: &[u8]) -> anyhow::Result<Cost> {
    let Config {
        story,
        page,
        checkpoint,
        group,
        keys,
    } = config;
    let path = dir.join("floor.db");
    let conn = Connection::open(&path)?;
    conn.pragma_update(None, "page_size", page)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    anyhow::ensure!(mode == "wal", "SQLite would not use a WAL here ({mode})");
    // Synced by this thread after each commit, as `serve`'s database thread does.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Every page the run touches stays in SQLite's cache.
    conn.pragma_update(None, "cache_size", -(512 << 10))?;
    conn.execute_batch(SCHEMA)?;
    let wal = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("floor.db-wal"))?;
    if checkpoint == Checkpoint::Apart {
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let checkpointer = (checkpoint == Checkpoint::Apart).then(|| {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let conn = Connection::open(&path)?;
            let start = thread_cpu_ns()?;
            while !stop.load(Ordering::Relaxed) {
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
                std::thread::sleep(CHECKPOINT_EVERY);
            }
            Ok(thread_cpu_ns()? - start)
        })
    });

    // Made before the clock starts: the writer's CPU is SQLite's and the kernel's only.
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let ids: Vec<Ids> = (1..=notifications)
        .map(|n| {
            let notification = match keys {
                Keys::Intercom | Keys::Random => format!("notif_{}", uuid::Uuid::new_v4()),
                Keys::Counted => format!("notif_{}_{n}", &run_id[..8]),
            };
            let object = match keys {
                Keys::Intercom => format!("{}", FIRST_OBJECT + n as u64),
                Keys::Random | Keys::Counted => format!("obj-{notification}"),
            };
            Ids { notification, object }
        })
        .collect();
    let (machine_start, wrote_start, wall_start) = (machine_busy_s()?, written_bytes()?, Instant::now());
    let cpu_start = thread_cpu_ns()?;
    let mut previous: Option<(&[Ids], Vec<i64>)> = None;
    for chunk in ids.chunks(group) {
        let tx = conn.unchecked_transaction()?;
        let mut seqs = Vec::with_capacity(chunk.len());
        {
            let mut insert = tx.prepare_cached("INSERT INTO queue (body) VALUES (?1)")?;
            for _ in chunk {
                insert.execute([body])?;
                seqs.push(tx.last_insert_rowid());
            }
        }
        if story == Story::Story {
            if let Some((ids, seqs)) = previous.take() {
                process(&tx, ids, &seqs, item)?;
            }
            previous = Some((chunk, seqs));
        }
        tx.commit()?;
        wal.sync_data()?;
    }
    if let Some((ids, seqs)) = previous {
        let tx = conn.unchecked_transaction()?;
        process(&tx, ids, &seqs, item)?;
        tx.commit()?;
        wal.sync_data()?;
    }
    let writer_ns = thread_cpu_ns()? - cpu_start;
    let wall = wall_start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let checkpointer_ns = match checkpointer {
        Some(thread) => thread
            .join()
            .map_err(|_| anyhow::anyhow!("the checkpointing thread panicked"))??,
        None => 0,
    };
    let (machine, wrote) = (machine_busy_s()? - machine_start, written_bytes()? - wrote_start);
    let n = notifications as f64;
    Ok(Cost {
        writer_us: writer_ns as f64 / 1e3 / n,
        checkpointer_us: checkpointer_ns as f64 / 1e3 / n,
        machine_us: machine * 1e6 / n,
        wall_us: wall.as_secs_f64() * 1e6 / n,
        written_bytes: wrote as f64 / n,
    })
}

/// A group's processing: its claims, its mirror rows, its queue rows deleted.
fn process(tx: &rusqlite::Transaction<'_>, ids: &[Ids], seqs: &[i64], item: &[u8]) -> rusqlite::Result<()> {
    let mut claim = tx.prepare_cached("INSERT INTO claims (id, status, expiration) VALUES (?1, 1, 0)")?;
    let mut mirror = tx.prepare_cached(
        "INSERT INTO mirror (id, version_ms, item) VALUES (?1, 1, ?2)
         ON CONFLICT (id) DO UPDATE SET version_ms = excluded.version_ms, item = excluded.item
         WHERE excluded.version_ms > mirror.version_ms",
    )?;
    let mut delete = tx.prepare_cached("DELETE FROM queue WHERE seq = ?1")?;
    for (id, seq) in ids.iter().zip(seqs) {
        claim.execute([&id.notification])?;
        mirror.execute(params![id.object, item])?;
        delete.execute([seq])?;
    }
    Ok(())
}

/// An option's value as it is written on the command line.
fn name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

/// Nanoseconds the calling thread has run on a CPU (user and kernel).
fn thread_cpu_ns() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    Ok(stat.split_whitespace().next().unwrap_or_default().parse()?)
}

/// Seconds of CPU the whole machine has been busy (every core, every process, the kernel).
fn machine_busy_s() -> anyhow::Result<f64> {
    work::machine_busy_s()
        .ok_or_else(|| anyhow::anyhow!("cannot read the machine's CPU time from /proc/stat"))
}

/// Bytes this process has passed to `write` and its kin so far.
fn written_bytes() -> anyhow::Result<u64> {
    let io = std::fs::read_to_string("/proc/self/io")?;
    let line = io.lines().find(|l| l.starts_with("wchar:")).unwrap_or("wchar: 0");
    Ok(line.trim_start_matches("wchar:").trim().parse()?)
}
