//! `serve`'s HTTP connections: at most `max_connections` open at once, each served as HTTP/1.1 with a
//! header read timeout. When every slot is taken and another connection has arrived, the oldest idle
//! keep-alive connection (one that has answered a request and has none in progress) is asked to close, so
//! that a sender keeping many idle connections does not make a new one wait for `header_read_timeout`.
//! Connections reading their first request, or answering one, keep their slots: a client that is slow to
//! send its request is bounded by the header timeout, not by the others' arrivals.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;
use tracing::warn;

use super::server::ConnectionLimits;

/// How often, while every slot is taken and a connection waits, idle connections are looked for again.
const LOOK_AGAIN: Duration = Duration::from_millis(50);

/// A connection's state, as far as choosing one to close goes.
const READING_FIRST: u8 = 0;
const ANSWERING: u8 = 1;
const IDLE: u8 = 2;
/// Asked to close; not chosen again.
const CLOSING: u8 = 3;

struct Open {
    state: Arc<AtomicU8>,
    close: Arc<Notify>,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Connections {
    next_id: u64,
    open: BTreeMap<u64, Open>,
}

impl Connections {
    /// Asks the oldest idle connection to close; whether there was one.
    fn close_oldest_idle(&mut self) -> bool {
        let idle = self.open.values().find(|c| {
            c.state
                .compare_exchange(IDLE, CLOSING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        match idle {
            Some(c) => {
                c.close.notify_one();
                true
            }
            None => false,
        }
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
    let connections = Arc::new(Mutex::new(Connections::default()));
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
            lock(&connections).close_oldest_idle();
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
        open.state.store(CLOSING, Ordering::Release);
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
    let state = Arc::new(AtomicU8::new(READING_FIRST));
    let close = Arc::new(Notify::new());
    let id = {
        let mut connections = lock(connections);
        let id = connections.next_id;
        connections.next_id += 1;
        connections.open.insert(
            id,
            Open {
                state: state.clone(),
                close: close.clone(),
            },
        );
        id
    };
    // The state follows each request: answering from the call until the response is ready, idle after.
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        // A connection asked to close stays so; it closes after this answer.
        let _ = state.compare_exchange(IDLE, ANSWERING, Ordering::AcqRel, Ordering::Acquire);
        let _ = state.compare_exchange(READING_FIRST, ANSWERING, Ordering::AcqRel, Ordering::Acquire);
        let answer = app.clone().oneshot(request);
        async move {
            let response = answer.await;
            let _ = state.compare_exchange(ANSWERING, IDLE, Ordering::AcqRel, Ordering::Acquire);
            response
        }
    });
    let connection = http.serve_connection(TokioIo::new(stream), service);
    let connections = connections.clone();
    tokio::spawn(async move {
        tokio::pin!(connection);
        // A client that goes away or times out ends only its own connection.
        tokio::select! {
            _ = connection.as_mut() => {}
            () = close.notified() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
        lock(&connections).open.remove(&id);
        drop(slot);
    });
}
