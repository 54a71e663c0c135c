//! The ceiling for `bench/intake.sh`: the least a Rust receiver can do per delivery on this machine. It
//! reads the body, verifies `X-Hub-Signature` with the same code as `serve` (`ClientSecrets`, HMAC-SHA1
//! over the raw bytes), and answers 200, on the same crates (tokio, hyper's HTTP/1 server through axum);
//! it runs no worker. `serve`'s requests/s as a share of this one's is what durability and processing
//! cost.
//!
//! `--store` adds the least durable work, to say where between the two the limit of a durable receiver
//! is on this machine:
//! - `none` (default): stores nothing.
//! - `append`: appends each body to a file and answers once `fdatasync` has returned, with the writes of
//!   the requests waiting meanwhile synced together (group commit): the simplest receiver that keeps its
//!   promise, without a queue's bookkeeping.
//! - `append-parallel`: the same with four appending threads, each with its own file, taking the groups in
//!   turn, so that one group's `fdatasync` does not wait for the previous group's: whether the syncs, one
//!   at a time, are what limits `append`.
//! - `log`: like `append`, but into a file written in full beforehand (256 MiB of zeros), overwritten in
//!   place from its start and from its start again when full, each group padded to whole 4 KiB blocks:
//!   `fdatasync` then has data to write and no metadata (no new size, no newly allocated blocks), as in a
//!   log whose segments are reused once their records are processed (a database's WAL). This ceiling
//!   keeps the last 256 MiB of bodies only.
//! - `log-direct`: `log` with `O_DIRECT` (its only difference): each group goes from the thread's buffer
//!   to the disk without the page cache (no copy, no write-back), then `fdatasync` flushes the disk's
//!   cache.
//! - `sqlite`: `serve`'s own queue (`SqliteQueue::send` on the same `Db`: one database thread, group
//!   commit, the WAL synced before the answer) without its worker, its inspector or its other routes.
//!
//!   INTERCOM_CLIENT_SECRET=… cargo run --release --example ceiling_receiver -- 127.0.0.1:8090 [--store append DIR]

/// The appending threads of `append-parallel`.
const PARALLEL_APPENDERS: usize = 4;

/// The size of the `log` store's file, written in full before the first request.
const LOG_BYTES: u64 = 256 << 20;

/// The `log` store's block: what `O_DIRECT` needs its offsets, lengths and buffer addresses aligned to.
const BLOCK: usize = 4096;

/// The most bodies a store thread takes as one group.
const GROUP_LIMIT: usize = 512;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use intercom_webhooks::local::{Db, SqliteQueue};
use intercom_webhooks::receiving::queue::{Message, Queue};
use intercom_webhooks::receiving::signature::{ClientSecrets, SIGNATURE_HEADER};
use tokio::sync::oneshot;

/// A body to store, with where to say whether it is on disk.
type Job = (Bytes, oneshot::Sender<bool>);

/// Where the request handlers send the bodies to store.
type Appender = mpsc::Sender<Job>;

/// Where a verified body goes before the 200.
enum Store {
    None,
    Append(Appender),
    Sqlite(SqliteQueue),
}

struct Receiver {
    secrets: ClientSecrets,
    store: Store,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8090".into());
    let store = match (args.next().as_deref(), args.next(), args.next()) {
        (None, ..) => Store::None,
        (Some("--store"), Some(kind), dir) => {
            let dir = PathBuf::from(dir.unwrap_or_else(|| ".".into()));
            match kind.as_str() {
                "none" => Store::None,
                "append" => Store::Append(start_appenders(&dir, 1)?),
                "append-parallel" => Store::Append(start_appenders(&dir, PARALLEL_APPENDERS)?),
                "log" => Store::Append(start_log(&dir, false)?),
                "log-direct" => Store::Append(start_log(&dir, true)?),
                "sqlite" => Store::Sqlite(SqliteQueue::new(Db::open(dir.join("ceiling.db"))?, 5)),
                other => anyhow::bail!("--store none|append|append-parallel|log|log-direct|sqlite, not {other}"),
            }
        }
        _ => anyhow::bail!(
            "usage: ceiling_receiver ADDRESS [--store none|append|append-parallel|log|log-direct|sqlite [DIR]]"
        ),
    };
    let secret =
        std::env::var("INTERCOM_CLIENT_SECRET").map_err(|_| anyhow::anyhow!("set INTERCOM_CLIENT_SECRET"))?;
    let receiver = Arc::new(Receiver {
        secrets: ClientSecrets::parse(&secret)?,
        store,
    });
    let app = Router::new()
        .route("/webhooks/intercom", post(receive))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind(&address).await?;
    eprintln!("ceiling receiver on http://{address}/webhooks/intercom");
    axum::serve(
        listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        }),
        app,
    )
    .await?;
    Ok(())
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let signature = headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes());
    if receiver.secrets.verify(signature, &body).is_err() {
        return (StatusCode::UNAUTHORIZED, r#"{"error":"signature"}"#);
    }
    let stored = match &receiver.store {
        Store::None => true,
        Store::Append(appender) => {
            let (done, synced) = oneshot::channel();
            appender.send((body, done)).is_ok() && synced.await == Ok(true)
        }
        Store::Sqlite(queue) => queue.send(&Message::from_bytes(&body)).await.is_ok(),
    };
    if stored {
        (StatusCode::OK, r#"{"status":"ok"}"#)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"unavailable"}"#)
    }
}

/// `threads` threads that append bodies (length-prefixed), each to its own file in `dir`. A free thread
/// takes the bodies waiting as one group, writes them, and answers each after the group's `fdatasync`.
fn start_appenders(dir: &Path, threads: usize) -> anyhow::Result<Appender> {
    let (jobs, queue): (Appender, _) = mpsc::channel();
    let queue = Arc::new(Mutex::new(queue));
    for n in 0..threads {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("ceiling-{n}.log")))?;
        let queue = queue.clone();
        std::thread::Builder::new()
            .name(format!("append-{n}"))
            .spawn(move || {
                let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
                loop {
                    let group = {
                        let Ok(queue) = queue.lock() else { return };
                        let Some(group) = next_group(&queue) else { return };
                        group
                    };
                    let result = group
                        .iter()
                        .try_for_each(|(body, _)| {
                            file.write_all(&(body.len() as u32).to_le_bytes())?;
                            file.write_all(body)
                        })
                        .and_then(|()| file.flush())
                        .and_then(|()| file.get_ref().sync_data());
                    answer(group, result.is_ok());
                }
            })?;
    }
    Ok(jobs)
}

/// The bodies waiting, as one group (at least one: waits for it); `None` once every sender is gone.
fn next_group(queue: &mpsc::Receiver<Job>) -> Option<Vec<Job>> {
    let first = queue.recv().ok()?;
    let mut group = vec![first];
    group.extend(queue.try_iter().take(GROUP_LIMIT - 1));
    Some(group)
}

/// Tells each request of `group` whether its body is on disk.
fn answer(group: Vec<Job>, stored: bool) {
    for (_, done) in group {
        let _ = done.send(stored);
    }
}

/// One thread that writes the bodies waiting (length-prefixed) as one group, padded to whole blocks, into
/// a file written in full beforehand, from its start and from its start again when the next group does
/// not fit, and answers each after the group's `fdatasync`. With `direct`, the file is opened with
/// `O_DIRECT`.
fn start_log(dir: &Path, direct: bool) -> anyhow::Result<Appender> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("ceiling-log.bin");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    // Written, not `fallocate`d: blocks allocated but never written are marked unwritten, and the first
    // write to each would change metadata again.
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..LOG_BYTES / zeros.len() as u64 {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    if direct {
        file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
    }
    let (jobs, queue) = mpsc::channel();
    std::thread::Builder::new().name("log".into()).spawn(move || {
        // A group is laid out in a window of this buffer that starts on a block's address.
        let mut buffer = Vec::new();
        let mut offset = 0u64;
        while let Some(group) = next_group(&queue) {
            let len: usize = group.iter().map(|(body, _)| 4 + body.len()).sum();
            let padded = len.next_multiple_of(BLOCK);
            if padded as u64 > LOG_BYTES {
                answer(group, false);
                continue;
            }
            if buffer.len() < padded + BLOCK {
                buffer.resize(padded + BLOCK, 0);
            }
            let start = (BLOCK - buffer.as_ptr().addr() % BLOCK) % BLOCK;
            let window = &mut buffer[start..start + padded];
            let mut at = 0;
            for (body, _) in &group {
                window[at..at + 4].copy_from_slice(&(body.len() as u32).to_le_bytes());
                window[at + 4..at + 4 + body.len()].copy_from_slice(body);
                at += 4 + body.len();
            }
            if offset + padded as u64 > LOG_BYTES {
                offset = 0;
            }
            let result = file.write_all_at(window, offset).and_then(|()| file.sync_data());
            offset += padded as u64;
            answer(group, result.is_ok());
        }
    })?;
    Ok(jobs)
}
