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
//! - `sqlite`: `serve`'s own queue (`SqliteQueue::send` on the same `Db`: one database thread, group
//!   commit, synchronous = FULL) without its worker, its inspector or its other routes.
//!
//!   INTERCOM_CLIENT_SECRET=… cargo run --release --example ceiling_receiver -- 127.0.0.1:8090 [--store append DIR]

/// The appending threads of `append-parallel`.
const PARALLEL_APPENDERS: usize = 4;

use std::io::Write;
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

/// Bodies to append, each with where to say whether it is on disk.
type Appender = mpsc::Sender<(Bytes, oneshot::Sender<bool>)>;

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
                "sqlite" => Store::Sqlite(SqliteQueue::new(Db::open(dir.join("ceiling.db"))?, 5)),
                other => anyhow::bail!("--store none|append|append-parallel|sqlite, not {other}"),
            }
        }
        _ => anyhow::bail!(
            "usage: ceiling_receiver ADDRESS [--store none|append|append-parallel|sqlite [DIR]]"
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
                        let Ok(first) = queue.recv() else { return };
                        let mut group = vec![first];
                        group.extend(queue.try_iter().take(511));
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
                    for (_, done) in group {
                        let _ = done.send(result.is_ok());
                    }
                }
            })?;
    }
    Ok(jobs)
}
