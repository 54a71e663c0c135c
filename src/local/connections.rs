//! `serve`'s HTTP connections: at most `max_connections` open at once, each served as HTTP/1.1 with a
//! header read timeout. When every slot is taken and another connection has arrived, the keep-alive
//! connection idle for longest (it has answered a request and has none in progress), if idle for
//! [`IDLE_BEFORE_CLOSING`] at least, is asked to close, so that a sender keeping many idle connections does
//! not make a new one wait for `header_read_timeout`. Senders' pools reuse the connection idle for the
//! shortest time first, so the one closed is the least likely to be carrying a request at that moment.
//! Connections reading their first request, or answering one until its body is sent (a stream for as
//! long as it lasts), keep their slots: a client that is slow to send its request is bounded by the
//! header timeout, not by the others' arrivals. One connection at a time is asked to make room.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::Router;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;
use tracing::warn;

use super::server::ConnectionLimits;

/// How often, while every slot is taken and a connection waits, idle connections are looked for again.
const LOOK_AGAIN: Duration = Duration::from_millis(50);

/// How long a keep-alive connection must have been idle before it may be closed to make room.
const IDLE_BEFORE_CLOSING: Duration = Duration::from_secs(1);

/// A connection's state, as far as choosing one to close goes.
const READING_FIRST: u8 = 0;
const ANSWERING: u8 = 1;
const IDLE: u8 = 2;
/// Asked to close; not chosen again.
const CLOSING: u8 = 3;

/// What the connection's task and the accept loop share.
struct Activity {
    state: AtomicU8,
    /// When the connection last became idle, in ms since [`Connections::epoch`].
    idle_since_ms: AtomicU64,
}

struct Open {
    activity: Arc<Activity>,
    close: Arc<Notify>,
}

/// The open connections.
struct Connections {
    epoch: Instant,
    next_id: u64,
    open: HashMap<u64, Open>,
    /// The connection asked to make room, until it ends: no other is asked meanwhile.
    making_room: Option<u64>,
}

impl Connections {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            next_id: 0,
            open: HashMap::new(),
            making_room: None,
        }
    }

    /// Asks the connection idle for longest, if for [`IDLE_BEFORE_CLOSING`] at least, to close, unless
    /// one asked before has not ended yet.
    fn close_longest_idle(&mut self) {
        if self.making_room.is_some() {
            return;
        }
        let latest = self
            .epoch
            .elapsed()
            .saturating_sub(IDLE_BEFORE_CLOSING)
            .as_millis() as u64;
        let longest = self
            .open
            .iter()
            .filter(|(_, c)| c.activity.state.load(Ordering::Acquire) == IDLE)
            .map(|(id, c)| (c.activity.idle_since_ms.load(Ordering::Acquire), id, c))
            .filter(|(since, _, _)| *since <= latest)
            .min_by_key(|(since, _, _)| *since);
        // A connection that took a request meanwhile is left alone; the loop looks again.
        if let Some((_, &id, c)) = longest {
            if c.activity
                .state
                .compare_exchange(IDLE, CLOSING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                c.close.notify_one();
                self.making_room = Some(id);
            }
        }
    }

    /// Forgets a connection that has ended.
    fn ended(&mut self, id: u64) {
        self.open.remove(&id);
        if self.making_room == Some(id) {
            self.making_room = None;
        }
    }
}

/// A connection's place among the open ones and its slot: given back when its task ends, also by a
/// panic in a handler.
struct Registered {
    id: u64,
    connections: Arc<Mutex<Connections>>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.connections).ended(self.id);
    }
}

/// A response's body: its connection is idle once the body has been sent (or dropped), not when the
/// response is ready, so that a stream (the inspector's events) never counts as idle.
struct Answering {
    body: axum::body::Body,
    activity: Arc<Activity>,
    epoch: Instant,
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.activity
            .idle_since_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
        let _ = self
            .activity
            .state
            .compare_exchange(ANSWERING, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }
}

impl hyper::body::Body for Answering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Accepts connections until `shutdown`, then waits for the requests in flight to be answered.
pub(super) async fn serve_http(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max));
    let connections = Arc::new(Mutex::new(Connections::new()));
    tokio::pin!(shutdown);
    'accepting: loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was accepted: wait a
                    // moment rather than spin.
                    warn!(%error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Every slot taken: this connection (the only one accepted beyond the limit; the others wait in
        // the kernel's backlog) waits for one, and idle connections are asked to make room.
        let slot = loop {
            if let Ok(slot) = slots.clone().try_acquire_owned() {
                break slot;
            }
            lock(&connections).close_longest_idle();
            tokio::select! {
                slot = slots.clone().acquire_owned() => break slot.expect("the semaphore is never closed"),
                () = tokio::time::sleep(LOOK_AGAIN) => {}
                () = &mut shutdown => break 'accepting,
            }
        };
        let _ = stream.set_nodelay(true);
        spawn_connection(&http, stream, app.clone(), slot, &connections);
    }
    drop(listener);
    // Every connection is asked to close (an idle one at once, a busy one after its answer), then the
    // last slot to come back means the last connection has ended.
    for open in lock(&connections).open.values() {
        open.activity.state.store(CLOSING, Ordering::Release);
        open.close.notify_one();
    }
    let _all = slots
        .acquire_many(max as u32)
        .await
        .expect("the semaphore is never closed");
    Ok(())
}

fn lock(connections: &Mutex<Connections>) -> std::sync::MutexGuard<'_, Connections> {
    connections
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn spawn_connection(
    http: &hyper::server::conn::http1::Builder,
    stream: tokio::net::TcpStream,
    app: Router,
    slot: OwnedSemaphorePermit,
    connections: &Arc<Mutex<Connections>>,
) {
    let activity = Arc::new(Activity {
        state: AtomicU8::new(READING_FIRST),
        idle_since_ms: AtomicU64::new(0),
    });
    let close = Arc::new(Notify::new());
    let (id, epoch) = {
        let mut connections = lock(connections);
        let id = connections.next_id;
        connections.next_id += 1;
        connections.open.insert(
            id,
            Open {
                activity: activity.clone(),
                close: close.clone(),
            },
        );
        (id, connections.epoch)
    };
    // The state follows each request: answering from the call until the response's body is sent.
    let service = hyper::service::service_fn(move |request| {
        let activity = activity.clone();
        // A connection asked to close stays so; it closes after this answer.
        let _ = activity
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != CLOSING).then_some(ANSWERING)
            });
        let answer = app.clone().oneshot(request);
        async move {
            let response = answer.await?;
            Ok::<_, Infallible>(response.map(|body| Answering {
                body,
                activity,
                epoch,
            }))
        }
    });
    let connection = http.serve_connection(TokioIo::new(stream), service);
    let registered = Registered {
        id,
        connections: connections.clone(),
        _slot: slot,
    };
    tokio::spawn(async move {
        let _registered = registered;
        tokio::pin!(connection);
        // A client that goes away or times out ends only its own connection.
        tokio::select! {
            _ = connection.as_mut() => {}
            () = close.notified() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    });
}
