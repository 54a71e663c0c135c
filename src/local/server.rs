//! `serve`: the receiver's HTTP application and the worker's batch function on one machine, with the
//! queue and the idempotency store in one SQLite file.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::background::Background;
pub use super::background::DEFAULT_NICE as DEFAULT_WORKER_NICE;
use super::inspector::access::Access;
use super::inspector::{Inspector, InspectorOptions};
use super::poller::Poller;
use super::{Db, Retention, SqliteQueue, SqliteStore};
use crate::local::SqliteMirror;
use crate::plumbing::clock::{Clock, SystemClock};
use crate::plumbing::metrics::Metrics;
use crate::processing::mirror::{MirrorHandler, MIRROR_TOPICS};
use crate::processing::router::Router as TopicRouter;
use crate::processing::worker::{Worker, WorkerSettings};
use crate::receiving::intake::Intake;
use crate::receiving::queue::Queue;
use crate::receiving::signature::ClientSecrets;

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub db: PathBuf,
    pub secrets: ClientSecrets,
    pub max_body_bytes: usize,
    pub max_receives: u32,
    /// Record batches processed at the same time.
    pub pollers: usize,
    /// How much lower the worker's CPU priority is than the intake's (a nice value, 0 to 19; Linux only).
    pub worker_nice: u8,
    pub worker: WorkerSettings,
    pub routes: TopicRouter,
    /// Keep the mirror in the database file, with its handler routed ahead of `routes`.
    pub mirror: bool,
    pub limits: ConnectionLimits,
    pub retention: Retention,
    /// The inspector page at `/`; `None` turns it off.
    pub inspector: Option<InspectorOptions>,
}

/// What a slow, stalled or greedy client may cost `serve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A connection that has not sent a whole request head within this is closed (also an idle
    /// keep-alive connection waiting for its next request).
    pub header_read_timeout: Duration,
    /// A request whose body has not arrived within this is answered 408.
    pub body_read_timeout: Duration,
    /// A delivery not stored within this is answered 503 (Intercom retries).
    pub store_timeout: Duration,
    /// Connections open at once; further ones wait in the listen backlog until one closes. While one
    /// waits, the keep-alive connection idle for longest is closed to make room (see `connections`).
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: crate::receiving::intake::DEFAULT_BODY_READ_TIMEOUT,
            store_timeout: crate::receiving::intake::DEFAULT_STORE_TIMEOUT,
            max_connections: 512,
        }
    }
}

/// The local queue, with a wake-up for idle pollers whenever a message is stored.
struct WakingQueue {
    inner: SqliteQueue,
    wake: Arc<Notify>,
}

#[async_trait::async_trait]
impl crate::receiving::queue::DeadLetterQueue for WakingQueue {
    async fn dead_letter(
        &self,
        message: &crate::receiving::queue::Message,
        reason: &str,
    ) -> Result<(), crate::receiving::queue::QueueError> {
        self.inner.dead_letter(message, reason).await
    }
}

#[async_trait::async_trait]
impl Queue for WakingQueue {
    async fn send(
        &self,
        message: &crate::receiving::queue::Message,
    ) -> Result<(), crate::receiving::queue::QueueError> {
        self.inner.send(message).await?;
        self.wake.notify_one();
        Ok(())
    }
}

/// Runs until `shutdown` resolves: then stops accepting, finishes in-flight requests and batches, and
/// returns.
pub async fn serve(
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The port first, then the file: a server that cannot listen leaves no database behind, and a
    // second server on the same file (two pollers on one queue) is refused.
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", options.listen))?;
    let _lock = ServerLock::take(&options.db)?;
    let db = Db::open(&options.db)
        .map_err(|e| anyhow::anyhow!("cannot open the database {}: {e}", options.db.display()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let queue = SqliteQueue::new(db.clone(), options.max_receives).with_clock(clock.clone());
    let wake = Arc::new(Notify::new());
    let metrics = Arc::new(Metrics::new());
    let routes = if options.mirror {
        let mirror =
            MirrorHandler::new(Arc::new(SqliteMirror::new(db.clone()))).with_metrics(metrics.clone());
        TopicRouter::new()
            .route_all(MIRROR_TOPICS, Arc::new(mirror))?
            .then(options.routes)
    } else {
        options.routes
    };
    let waking: Arc<WakingQueue> = Arc::new(WakingQueue {
        inner: queue.clone(),
        wake: wake.clone(),
    });
    let address = listener.local_addr()?;
    // Turns true when serve stops accepting: the inspector's live streams end then.
    let (closing, closed) = watch::channel(false);
    let inspector = match options.inspector {
        Some(settings) => {
            let access = Access::for_listener(address, settings.token.clone());
            let (inspector, recorder) = Inspector::start(
                settings,
                access,
                queue.clone(),
                waking.clone(),
                clock.clone(),
                closed,
            )
            .await?;
            Some((inspector, recorder))
        }
        None => None,
    };
    let mut worker = Worker::new(
        Arc::new(SqliteStore::new(db.clone()).with_clock(clock.clone())),
        Arc::new(queue.clone()),
        routes,
        clock.clone(),
        metrics.clone(),
        options.worker,
    );
    let mut intake = Intake::new(options.secrets, waking.clone(), options.max_body_bytes)
        .with_metrics(metrics.clone())
        .with_store_timeout(options.limits.store_timeout)
        .with_body_read_timeout(options.limits.body_read_timeout);
    let mut extra = extra_routes(queue.clone(), metrics.clone());
    if let Some((inspector, _)) = &inspector {
        // Off (a non-loopback listener without a token): the page answers why, and nothing is recorded.
        if !matches!(inspector.access(), Access::Off { .. }) {
            worker = worker.with_observer(inspector.worker_observer());
            intake = intake.with_observer(inspector.intake_observer());
        }
        let page = inspector.routes();
        intake = intake.with_page(page.clone());
        extra = extra.route_service("/inspector/{*rest}", page);
    }
    let worker = Arc::new(worker);
    let app = intake.router_with(extra);

    print_banner(
        address,
        &options.db,
        &worker,
        inspector.as_ref().map(|(i, _)| i.access()),
    );
    info!(%address, db = %options.db.display(), "serving");

    let (stop, stopped) = watch::channel(false);
    let background = Background::start(options.worker_nice)?;
    let pollers: Vec<_> = (0..options.pollers.max(1))
        .map(|_| {
            let poller = Poller {
                queue: queue.clone(),
                worker: worker.clone(),
                wake: wake.clone(),
                visibility: options.worker.visibility_timeout,
                clock: clock.clone(),
            };
            background.spawn(poller.run(stopped.clone()))
        })
        .collect();

    let purger = background.spawn(purge_periodically(
        db.clone(),
        options.retention,
        clock,
        stopped.clone(),
    ));

    let shutdown = async move {
        shutdown.await;
        let _ = closing.send(true);
    };
    let served = super::connections::serve_http(listener, app, options.limits, shutdown).await;
    info!("no longer accepting deliveries; finishing in-flight batches");
    let _ = stop.send(true);
    wake.notify_waiters();
    for poller in pollers {
        let _ = poller.await;
    }
    let _ = purger.await;
    if let Some((inspector, recorder)) = inspector {
        // What the last batches did, written before the file is closed.
        inspector.close().await;
        if tokio::time::timeout(Duration::from_secs(5), recorder)
            .await
            .is_err()
        {
            warn!("the inspector's journal did not finish writing within 5 s");
        }
    }
    // The last acknowledgements and journal rows were deferred writes: on disk before the process ends.
    if let Err(error) = db.sync().await {
        warn!(%error, "the last writes may not be on disk");
    }
    // Every batch has finished; what is left (idle connections of handlers' HTTP clients) can go.
    drop(background);
    served.map_err(|e| anyhow::anyhow!("the server failed: {e}"))?;
    info!("stopped");
    Ok(())
}

/// An exclusive lock on `<database>.lock`, which holds the PID of the `serve` that holds it, for as long as
/// that server runs. Commands that write to the file beside a server (`dlq redrive --db`) take no lock.
struct ServerLock {
    _file: std::fs::File,
}

impl ServerLock {
    fn take(db: &std::path::Path) -> anyhow::Result<Self> {
        use std::io::{Read, Seek, Write};
        let path = PathBuf::from(format!("{}.lock", db.display()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open the lock file {}: {e}", path.display()))?;
        if let Err(error) = file.try_lock() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(match error {
                std::fs::TryLockError::WouldBlock => anyhow::anyhow!(
                    "another serve{} is using {}: stop it first, or give this one another --db",
                    if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" (PID {holder})")
                    },
                    db.display()
                ),
                std::fs::TryLockError::Error(e) => {
                    anyhow::anyhow!("cannot lock {}: {e}", path.display())
                }
            });
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(Self { _file: file })
    }
}

/// Purges the file every `retention.interval` until `stop`.
async fn purge_periodically(
    db: Db,
    retention: Retention,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(retention.interval) => {}
            _ = stop.changed() => return,
        }
        match super::purge(&db, clock.now_ms(), retention.dead_letters).await {
            Ok(purged) if purged != Default::default() => info!(
                idempotency_records = purged.idempotency_records,
                dead_letters = purged.dead_letters,
                pages = purged.pages,
                "purged the database"
            ),
            Ok(_) => {}
            Err(error) => warn!(%error, "could not purge the database"),
        }
    }
}

fn extra_routes(queue: SqliteQueue, metrics: Arc<Metrics>) -> Router<Arc<Intake>> {
    let db = queue.db().clone();
    Router::new()
        .route(
            "/healthz",
            get(move || {
                let queue = queue.clone();
                async move {
                    match queue.stats().await {
                        Ok(stats) => (
                            StatusCode::OK,
                            Json(serde_json::json!({
                                "status": "ok",
                                "queued": stats.queued,
                                "in_flight": stats.in_flight,
                                "dead_letters": stats.dead_letters,
                            })),
                        )
                            .into_response(),
                        Err(error) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            Json(serde_json::json!({"status": "unavailable", "error": error.to_string()})),
                        )
                            .into_response(),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                let db = db.clone();
                async move {
                    // The database thread counts its syncs of the WAL itself.
                    let text = metrics.render_prometheus_with(&[("wal_syncs", db.wal_syncs())]);
                    ([("content-type", "text/plain; version=0.0.4")], text)
                }
            }),
        )
}

fn print_banner(address: SocketAddr, db: &std::path::Path, worker: &Worker, inspector: Option<&Access>) {
    let handlers: Vec<String> = worker
        .router()
        .by_handler()
        .into_iter()
        .map(|(name, patterns)| format!("{name}: {}", patterns.join(", ")))
        .collect();
    eprintln!("intercom-webhooks is receiving deliveries");
    eprintln!("  webhook URL:  http://{address}/webhooks/intercom");
    eprintln!("                (give Intercom an HTTPS URL that forwards here, e.g. through a tunnel or a reverse proxy)");
    match inspector {
        Some(access) => eprintln!("  inspector:    {}", access.describe(address)),
        None => eprintln!("  inspector:    off (--no-inspector)"),
    }
    eprintln!("  health:       http://{address}/healthz    metrics: http://{address}/metrics");
    eprintln!("  database:     {}", db.display());
    eprintln!("  handlers:");
    for line in handlers {
        eprintln!("    {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_a_running_serve_future_shuts_the_worker_down_without_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let options = ServeOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            db: dir.path().join("serve.db"),
            secrets: ClientSecrets::parse("s3cret").unwrap(),
            max_body_bytes: 1024,
            max_receives: 5,
            pollers: 2,
            worker_nice: DEFAULT_WORKER_NICE,
            worker: WorkerSettings::default(),
            routes: TopicRouter::new(),
            mirror: true,
            limits: ConnectionLimits::default(),
            retention: Retention::default(),
            inspector: Some(InspectorOptions::default()),
        };
        let running = tokio::spawn(serve(options, std::future::pending()));
        // Up and polling (the database file exists once it is open), then dropped mid-run.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(dir.path().join("serve.db").exists());
        running.abort();
        let ended = running.await.unwrap_err();
        assert!(ended.is_cancelled(), "{ended}");
    }
}
