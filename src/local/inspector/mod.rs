//! The inspector: a page on `serve` to watch, read and replay deliveries, and to redrive dead letters.
//!
//! The page (`GET /`) and its assets are embedded in the binary; it renders everything from a payload as
//! text and the server forbids inline script with a Content-Security-Policy. Its data comes from the
//! journal (`journal.rs`), which the intake and the worker feed without waiting, and who may open it is
//! decided in `access.rs`.

pub mod access;
pub mod journal;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use self::access::Access;
use self::journal::{kept_headers, Journal, Key, Received, Recorder, Settled, Source};
use crate::local::SqliteQueue;
use crate::plumbing::clock::Clock;
use crate::processing::dead_letters::{max_receives_reason, receives_exhausted, DeadLetters, Filter};
use crate::processing::router::TopicPattern;
use crate::processing::worker::{RecordObserver, RecordReport};
use crate::receiving::intake::{error_response as error, DeliveryObserver, Seen};
use crate::receiving::notification::{with_id, Envelope};
use crate::receiving::queue::{Message, Queue};

/// Deliveries kept by default.
pub const DEFAULT_KEEP: usize = 1_000;

/// Deliveries kept at most (the option's upper bound): the journal holds bodies.
pub const MAX_KEEP: usize = 100_000;

/// A token shorter than this is refused: it guards customers' messages.
pub const MIN_TOKEN_LENGTH: usize = 16;

/// Rows one list request returns at most.
const MAX_LIST: usize = 500;

/// Dead letters the page lists at most.
const DEAD_LETTERS_LISTED: usize = 200;

/// What the page may load and run: its own script and style, nothing inline, nothing from elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The outcomes a delivery can show.
pub const OUTCOMES: [&str; 11] = [
    "queued",
    "processed",
    "duplicate",
    "ignored",
    "stale",
    "retry",
    "in_flight",
    "dead_lettered",
    "ping",
    "rejected",
    "unavailable",
];

/// `serve`'s inspector settings.
#[derive(Clone)]
pub struct InspectorOptions {
    /// Deliveries kept with their bodies.
    pub keep: usize,
    pub token: Option<SecretString>,
}

impl Default for InspectorOptions {
    fn default() -> Self {
        Self {
            keep: DEFAULT_KEEP,
            token: None,
        }
    }
}

/// A token the inspector accepts: long enough, and only characters a cookie and a header can carry.
pub fn check_token(token: &str) -> Result<(), String> {
    if token.len() < MIN_TOKEN_LENGTH {
        return Err(format!(
            "the inspector token must be at least {MIN_TOKEN_LENGTH} characters long"
        ));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\'))
    {
        return Err(
            "the inspector token may hold printable ASCII only, without spaces, ';', ',', '\"' or '\\'"
                .into(),
        );
    }
    Ok(())
}

/// The inspector of one `serve`: its journal, who may open it, and what its actions act on.
pub struct Inspector {
    access: Access,
    journal: Journal,
    recorder: Recorder,
    keep: usize,
    queue: SqliteQueue,
    enqueue: Arc<dyn Queue>,
    clock: Arc<dyn Clock>,
    closing: watch::Receiver<bool>,
    /// Rejected requests recorded per second at most.
    rejections: governor::DefaultDirectRateLimiter,
}

/// Rejected requests the journal records per second at most; the rest are counted as left out.
pub const REJECTIONS_RECORDED_PER_SECOND: u32 = 20;

impl Inspector {
    /// Starts the journal's recorder. `enqueue` takes replays (the queue that wakes the pollers);
    /// `closing` turns true when `serve` stops accepting, and ends the live streams.
    pub async fn start(
        options: InspectorOptions,
        access: Access,
        queue: SqliteQueue,
        enqueue: Arc<dyn Queue>,
        clock: Arc<dyn Clock>,
        closing: watch::Receiver<bool>,
    ) -> anyhow::Result<(Arc<Self>, tokio::task::JoinHandle<()>)> {
        let keep = options.keep.clamp(1, MAX_KEEP);
        let (recorder, journal, task) = journal::start(queue.db().clone(), keep)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the inspector's journal: {e}"))?;
        Ok((
            Arc::new(Self {
                access,
                journal,
                recorder,
                keep,
                queue,
                enqueue,
                clock,
                closing,
                rejections: governor::RateLimiter::direct(governor::Quota::per_second(
                    std::num::NonZeroU32::new(REJECTIONS_RECORDED_PER_SECOND)
                        .unwrap_or(std::num::NonZeroU32::MIN),
                )),
            }),
            task,
        ))
    }

    /// Writes what the journal was told and stops its recorder.
    pub async fn close(&self) {
        self.recorder.close().await;
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    /// What the intake tells the journal.
    pub fn intake_observer(self: &Arc<Self>) -> Arc<dyn DeliveryObserver> {
        Arc::new(Observer(self.clone()))
    }

    /// What the worker tells the journal.
    pub fn worker_observer(self: &Arc<Self>) -> Arc<dyn RecordObserver> {
        Arc::new(Observer(self.clone()))
    }

    /// The page, its assets and its API, each request checked by [`Access`].
    pub fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", get(page))
            .route("/inspector/app.js", get(script))
            .route("/inspector/app.css", get(style))
            .route("/inspector/api/deliveries", get(list))
            .route("/inspector/api/deliveries/{seq}", get(show))
            .route("/inspector/api/deliveries/{seq}/replay", post(replay))
            .route("/inspector/api/stats", get(stats))
            .route("/inspector/api/events", get(events))
            .route("/inspector/api/dead-letters", get(dead_letters))
            .route("/inspector/api/dead-letters/redrive", post(redrive))
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(self.clone(), guard))
            .with_state(self.clone())
    }
}

struct Observer(Arc<Inspector>);

impl DeliveryObserver for Observer {
    fn seen(&self, seen: Seen<'_>) {
        let inspector = &self.0;
        // A flood of forged requests must not push real deliveries out of the journal, and recording
        // must not slow the intake under load: decided before anything is copied.
        let rejected_flood = seen.verdict == "rejected" && inspector.rejections.check().is_err();
        if rejected_flood || !inspector.recorder.admit() {
            let queued = seen.attributes.as_ref().and_then(|a| {
                use crate::receiving::queue::attr;
                let id = a.get(attr::NOTIFICATION_ID)?;
                Some((a.get(attr::APP_ID).map_or("", String::as_str), id.as_str()))
            });
            inspector.recorder.leave_out(queued);
            return;
        }
        let key = seen.attributes.as_ref().and_then(Key::of);
        inspector.recorder.received(Received {
            at_ms: inspector.clock.now_ms(),
            source: Source::Intake,
            key,
            status: Some(seen.status.as_u16()),
            verdict: seen.verdict,
            reason: seen.reason,
            headers: kept_headers(seen.headers),
            body: seen.body,
            replay_of: None,
        });
    }
}

impl RecordObserver for Observer {
    fn finished(&self, report: &RecordReport<'_>) {
        let inspector = &self.0;
        let message = &report.record.message;
        let app_id = message
            .attribute(crate::receiving::queue::attr::APP_ID)
            .unwrap_or_default();
        // A retry at the last receive is not retried: the queue moves the message to the dead letters
        // when it next comes round, with the reason shown here.
        let count = report.record.receive_count;
        let last = report.outcome.needs_retry() && receives_exhausted(count, inspector.queue.max_receives());
        let outcome = if last {
            "dead_lettered"
        } else {
            report.outcome.as_str()
        };
        let error = || {
            let error = report.error.map(ToString::to_string);
            if last {
                Some(max_receives_reason(count, error.as_deref()))
            } else {
                error
            }
        };
        inspector.recorder.settled(
            app_id,
            report.notification_id,
            outcome,
            // The body as stored: text, or base64 for bytes that were not (such a body is not a
            // notification).
            || message.body.clone(),
            |body| Settled {
                at_ms: inspector.clock.now_ms(),
                notification_id: report.notification_id.to_owned(),
                app_id: app_id.to_owned(),
                topic: report.topic.to_owned(),
                outcome,
                error: error(),
                receive_count: report.record.receive_count,
                handlers: report.handlers.to_vec(),
                duration_ms: report.duration_ms,
                body,
            },
        );
    }
}

/// Every request to the inspector: access first, then the headers that keep a payload inert.
async fn guard(State(inspector): State<Arc<Inspector>>, request: Request, next: Next) -> Response {
    let query_token = request
        .uri()
        .query()
        .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token"))
        .map(|(_, v)| v.into_owned());
    let mut response =
        match inspector
            .access
            .check(request.method(), request.headers(), query_token.as_deref())
        {
            Err(refusal) => error(refusal.status(), refusal.code(), &refusal.message()),
            // Opened with the token in the address: keep it in a cookie and take it out of the address bar.
            Ok(()) if query_token.is_some() && request.uri().path() == "/" => {
                let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
                if let Access::Token { token, cookie: name } = &inspector.access {
                    // Lax: the page opened from a link in a chat or a wiki still gets its cookie.
                    let cookie = format!("{name}={}; HttpOnly; SameSite=Lax; Path=/", token.expose_secret());
                    if let Ok(value) = HeaderValue::from_str(&cookie) {
                        response.headers_mut().insert(header::SET_COOKIE, value);
                    }
                }
                response
            }
            Ok(()) => next.run(request).await,
        };
    secure(response.headers_mut());
    response
}

fn secure(headers: &mut HeaderMap) {
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(headers, header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::CACHE_CONTROL, "no-store");
}

fn unavailable(error: impl std::fmt::Display) -> Response {
    self::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
        &error.to_string(),
    )
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such inspector path")
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML).into_response()
}

async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS).into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

#[derive(Deserialize)]
struct ListParams {
    topic: Option<String>,
    outcome: Option<String>,
    q: Option<String>,
    before: Option<i64>,
    limit: Option<usize>,
}

/// A topic pattern from a filter field; a bad one is answered 400 with the pattern's error.
fn topic_filter(topic: Option<&str>) -> Result<Option<TopicPattern>, String> {
    match topic.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(raw) => TopicPattern::parse(raw).map(Some).map_err(|e| e.to_string()),
    }
}

fn invalid_topic(why: String) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_topic", &why)
}

async fn list(State(inspector): State<Arc<Inspector>>, Query(params): Query<ListParams>) -> Response {
    let topic = match topic_filter(params.topic.as_deref()) {
        Ok(t) => t,
        Err(why) => return invalid_topic(why),
    };
    let outcome = params.outcome.filter(|o| !o.is_empty());
    if let Some(o) = &outcome {
        if !OUTCOMES.contains(&o.as_str()) {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_outcome",
                &format!("outcome must be one of {}", OUTCOMES.join(", ")),
            );
        }
    }
    let query = journal::Query {
        topic,
        outcome,
        text: params.q.filter(|q| !q.is_empty()),
        before: params.before,
        limit: params.limit.unwrap_or(100).clamp(1, MAX_LIST),
    };
    match inspector.journal.list(query).await {
        Ok(rows) => Json(json!({ "deliveries": rows })).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn show(
    State(inspector): State<Arc<Inspector>>,
    Path(DeliveryPath { seq }): Path<DeliveryPath>,
) -> Response {
    match inspector.journal.get(seq).await {
        Ok(Some(detail)) => Json(detail).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "no_such_delivery",
            &format!(
                "delivery {seq} is not in the journal (it keeps the last {})",
                inspector.keep
            ),
        ),
        Err(e) => unavailable(e),
    }
}

/// A delivery's number in the path (by name: `serve` mounts these routes under a wildcard of its own).
#[derive(Deserialize)]
struct DeliveryPath {
    seq: i64,
}

#[derive(Deserialize, Default)]
struct ReplayRequest {
    /// Queue it under a new notification id, so that the handlers run again; otherwise it is queued as
    /// it was and the worker finds it a duplicate.
    #[serde(default)]
    fresh_id: bool,
}

async fn replay(
    State(inspector): State<Arc<Inspector>>,
    Path(DeliveryPath { seq }): Path<DeliveryPath>,
    request: Option<Json<ReplayRequest>>,
) -> Response {
    let fresh_id = request.map(|Json(r)| r.fresh_id).unwrap_or_default();
    let body = match inspector.journal.body(seq).await {
        Ok(Some(body)) => body,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "nothing_to_replay",
                &format!("delivery {seq} has no body to replay (a rejected request's body is not kept)"),
            )
        }
        Err(e) => return unavailable(e),
    };
    let body = if fresh_id {
        match with_fresh_id(&body) {
            Ok(b) => b,
            Err(why) => return error(StatusCode::CONFLICT, "cannot_replay", &why),
        }
    } else {
        body
    };
    let envelope = match Envelope::parse(&body) {
        Ok(e) if !e.is_ping() && e.id.is_some() => e,
        Ok(_) => {
            return error(
                StatusCode::CONFLICT,
                "cannot_replay",
                "a ping or a notification without an id is not queued",
            )
        }
        Err(e) => {
            return error(
                StatusCode::CONFLICT,
                "cannot_replay",
                &format!("the body is not a notification: {e}"),
            )
        }
    };
    let message = Message::for_notification(&body, &envelope);
    if let Err(e) = inspector.enqueue.send(&message).await {
        return unavailable(e);
    }
    let notification_id = envelope.id.map(|id| id.to_string()).unwrap_or_default();
    inspector.recorder.received(Received {
        at_ms: inspector.clock.now_ms(),
        source: Source::Replay,
        key: Key::of(&message.attributes),
        status: None,
        verdict: "queued",
        reason: None,
        headers: Vec::new(),
        body: Some(body.into()),
        replay_of: Some(seq),
    });
    Json(json!({"status": "queued", "notification_id": notification_id, "fresh_id": fresh_id}))
        .into_response()
}

/// The body with a new notification id (`notif_replay_<uuid>`), everything else as it was.
fn with_fresh_id(body: &[u8]) -> Result<Vec<u8>, String> {
    let id = format!("notif_replay_{}", uuid::Uuid::now_v7().simple());
    with_id(body, &id).map_err(|e| format!("the body cannot be given a fresh id: {e}"))
}

async fn stats(State(inspector): State<Arc<Inspector>>) -> Response {
    let since = inspector.clock.now_ms() - 30 * 60_000;
    let per_minute = match inspector.journal.per_minute(since).await {
        Ok(p) => p,
        Err(e) => return unavailable(e),
    };
    let queue = match inspector.queue.stats().await {
        Ok(q) => q,
        Err(e) => return unavailable(e),
    };
    Json(json!({
        "now_ms": inspector.clock.now_ms(),
        "per_minute": per_minute,
        "queue": {"queued": queue.queued, "in_flight": queue.in_flight, "dead_letters": queue.dead_letters},
        "generation": *inspector.journal.changes().borrow(),
        "keep": inspector.keep,
        "left_out": inspector.recorder.left_out(),
    }))
    .into_response()
}

/// A live stream: an `update` event with the journal's generation (its count of writes) and the queue's
/// depth whenever the journal changes (at most four a second), and at least every two seconds.
async fn events(State(inspector): State<Arc<Inspector>>) -> Response {
    struct Stream {
        inspector: Arc<Inspector>,
        changes: watch::Receiver<u64>,
        closing: watch::Receiver<bool>,
        first: bool,
    }
    let state = Stream {
        changes: inspector.journal.changes(),
        closing: inspector.closing.clone(),
        inspector,
        first: true,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        if !s.first {
            tokio::time::sleep(Duration::from_millis(250)).await;
            tokio::select! {
                _ = s.changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = s.closing.wait_for(|closing| *closing) => {}
            }
        }
        s.first = false;
        if *s.closing.borrow() {
            return None;
        }
        let generation = *s.changes.borrow_and_update();
        let queue = s.inspector.queue.stats().await.ok();
        let data = json!({
            "generation": generation,
            "queue": queue.map(|q| json!({"queued": q.queued, "in_flight": q.in_flight, "dead_letters": q.dead_letters})),
            "now_ms": s.inspector.clock.now_ms(),
        });
        let event = Event::default().event("update").data(data.to_string());
        Some((Ok::<_, Infallible>(event), s))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

#[derive(Deserialize)]
struct DeadLetterParams {
    topic: Option<String>,
}

async fn dead_letters(
    State(inspector): State<Arc<Inspector>>,
    Query(params): Query<DeadLetterParams>,
) -> Response {
    let filter = match topic_filter(params.topic.as_deref()) {
        Ok(topic) => Filter {
            topic,
            ..Filter::default()
        },
        Err(why) => return invalid_topic(why),
    };
    match inspector.queue.list(&filter, DEAD_LETTERS_LISTED).await {
        Ok(listed) => Json(json!({"dead_letters": listed.found})).into_response(),
        Err(e) => unavailable(e),
    }
}

#[derive(Deserialize, Default)]
struct RedriveRequest {
    topic: Option<String>,
}

async fn redrive(State(inspector): State<Arc<Inspector>>, request: Option<Json<RedriveRequest>>) -> Response {
    let request = request.map(|Json(r)| r).unwrap_or_default();
    let filter = match topic_filter(request.topic.as_deref()) {
        Ok(topic) => Filter {
            topic,
            ..Filter::default()
        },
        Err(why) => return invalid_topic(why),
    };
    match inspector.queue.redrive(&filter, usize::MAX, false).await {
        Ok(report) => Json(report.found).into_response(),
        Err(e) => unavailable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_and_cookie_safe() {
        assert!(check_token("0123456789abcdef").is_ok());
        assert!(check_token("short").unwrap_err().contains("16"));
        for bad in [
            "0123456789abcdef ",
            "0123456789abcdef;x",
            "0123456789abcdé0",
            "0123456789\"abcdef",
        ] {
            assert!(check_token(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_fresh_id_replaces_only_the_id() {
        let body = br#"{"type":"notification_event","id":"notif_1","topic":"contact.created","data":{"item":{"id":"c1"}}}"#;
        let fresh: serde_json::Value = serde_json::from_slice(&with_fresh_id(body).unwrap()).unwrap();
        let old: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert!(fresh["id"].as_str().unwrap().starts_with("notif_replay_"));
        assert_ne!(fresh["id"], old["id"]);
        assert_eq!(fresh["data"], old["data"]);
        assert_eq!(fresh["topic"], old["topic"]);
        assert!(with_fresh_id(b"[1]").is_err());
        assert!(with_fresh_id(b"not json").is_err());
    }
}
