//! The HTTP application that receives Intercom deliveries. The receiver Lambda and the local server serve
//! this same router, so verification and enqueueing have one code path.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Json, Router};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::plumbing::metrics::Metrics;
use crate::receiving::notification::Envelope;
use crate::receiving::queue::{Message, Queue, QueueError};
use crate::receiving::signature::{ClientSecrets, Malformed, SignatureError, SIGNATURE_HEADER};

/// The paths a delivery may be posted to: the bare Function URL, or a conventional path behind a proxy.
pub const WEBHOOK_PATHS: [&str; 2] = ["/", "/webhooks/intercom"];

/// The largest body accepted by default: 1 MiB less room for message attributes, so that every accepted
/// body fits in one SQS message (SQS's limit, 1 MiB, counts the attributes too).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024 - 8 * 1024;

/// The longest the intake waits for the queue to store a delivery before answering 503: well inside the
/// 5 s Intercom waits, so that Intercom hears an answer and retries rather than timing out.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(4);

/// The longest a client may take to send a request's body.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Rejection lines written per second at most (per process); the rest are counted and the next line
/// written says how many were left out. The metrics still count every rejection.
pub const REJECTION_LINES_PER_SECOND: u32 = 5;

/// What the intake needs: the secrets to verify with, the queue to store into, and the body limit.
pub struct Intake {
    secrets: ClientSecrets,
    queue: Arc<dyn Queue>,
    max_body_bytes: usize,
    store_timeout: Duration,
    body_read_timeout: Duration,
    metrics: Arc<Metrics>,
    rejection_lines: LineBudget,
    observer: Option<Arc<dyn DeliveryObserver>>,
    page: Option<Router>,
}

/// What the intake made of one request, for an observer: the HTTP status answered, the verdict and why,
/// and the body when it was authentic (a rejected request's body is not handed on).
pub struct Seen<'a> {
    pub headers: &'a HeaderMap,
    pub status: StatusCode,
    /// `queued`, `ping`, `dead_lettered`, `rejected` or `unavailable`.
    pub verdict: &'static str,
    /// Why, for every verdict but `queued` and `ping`.
    pub reason: Option<String>,
    pub body: Option<Bytes>,
    /// A queued notification's attributes (see [`crate::receiving::queue::attr`]).
    pub attributes: Option<std::collections::BTreeMap<String, String>>,
}

/// Told of every request to a webhook path once it is answered (or about to be). Called on the
/// acknowledgement path: an implementation hands the request on and returns at once.
pub trait DeliveryObserver: Send + Sync {
    fn seen(&self, seen: Seen<'_>);
}

impl Intake {
    pub fn new(secrets: ClientSecrets, queue: Arc<dyn Queue>, max_body_bytes: usize) -> Self {
        Self {
            secrets,
            queue,
            max_body_bytes,
            store_timeout: DEFAULT_STORE_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            metrics: Arc::new(Metrics::new()),
            rejection_lines: LineBudget::per_second(REJECTION_LINES_PER_SECOND),
            observer: None,
            page: None,
        }
    }

    /// Answers `GET /` with `page` (the local inspector); without it, `GET /` is 405 like any method but
    /// `POST` and `HEAD`.
    pub fn with_page(mut self, page: Router) -> Self {
        self.page = Some(page);
        self
    }

    /// Tells `observer` of every request to a webhook path (the local inspector).
    pub fn with_observer(mut self, observer: Arc<dyn DeliveryObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Tells the observer, if any, of a request refused before its signature was checked.
    fn observe_rejection(&self, headers: &HeaderMap, status: StatusCode, reason: &str) {
        self.observe(Seen {
            headers,
            status,
            verdict: "rejected",
            reason: Some(reason.into()),
            body: None,
            attributes: None,
        });
    }

    fn observe(&self, seen: Seen<'_>) {
        if let Some(observer) = &self.observer {
            observer.seen(seen);
        }
    }

    /// Counts into `metrics` (shared with the worker and the metrics endpoints).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Answers 503 when storing a delivery takes longer than `timeout`.
    pub fn with_store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// Answers 408 when a client takes longer than `timeout` to send a body.
    pub fn with_body_read_timeout(mut self, timeout: Duration) -> Self {
        self.body_read_timeout = timeout;
        self
    }

    /// The axum router: `HEAD`/`POST` on [`WEBHOOK_PATHS`], JSON 404 and 405 elsewhere.
    pub fn router(self) -> Router {
        self.router_with(Router::new())
    }

    /// Adds the webhook routes to `extra` (used by the local server to add `/healthz` and `/metrics`).
    pub fn router_with(mut self, extra: Router<Arc<Intake>>) -> Router {
        let page = self.page.take();
        let state = Arc::new(self);
        let webhook = on(MethodFilter::HEAD, head)
            .on(MethodFilter::POST, receive)
            .fallback(method_not_allowed);
        let mut router = extra;
        for path in WEBHOOK_PATHS {
            let mut methods = webhook.clone();
            if let (Some(page), "/") = (&page, path) {
                methods = methods.on_service(MethodFilter::GET, page.clone());
            }
            router = router.route(path, methods);
        }
        router.fallback(not_found).with_state(state)
    }

    /// Handles one delivery: the verdict and the HTTP answer. Public so that benchmarks and other
    /// front-ends can call it without HTTP.
    pub async fn handle(&self, headers: &HeaderMap, body: &[u8]) -> Verdict {
        self.metrics.incr("received", &[]);
        let outcome = self.verify_and_store(headers, body).await;
        match &outcome {
            Verdict::Queued { .. } => self.metrics.incr("enqueued", &[]),
            Verdict::Ping => self.metrics.incr("pings", &[]),
            Verdict::DeadLettered { .. } => self.metrics.incr("dead_lettered", &[("stage", "receiver")]),
            Verdict::Rejected(error) => self.metrics.incr("rejected", &[("reason", error.code())]),
            Verdict::Unavailable(_) => self.metrics.incr("enqueue_failed", &[]),
        }
        outcome
    }

    async fn verify_and_store(&self, headers: &HeaderMap, body: &[u8]) -> Verdict {
        let mut values = headers.get_all(SIGNATURE_HEADER).iter();
        let signature = match (values.next(), values.next()) {
            (Some(_), Some(_)) => Err(SignatureError::Malformed(Malformed::Repeated)),
            (one, None) => self.secrets.verify(one.map(|v| v.as_bytes()), body),
            (None, Some(_)) => unreachable!("an iterator yields nothing after None"),
        };
        let verified = match signature {
            Ok(v) => {
                let index = v.secret_index.to_string();
                self.metrics
                    .incr("verified_by_secret", &[("secret_index", &index)]);
                v
            }
            Err(error) => {
                self.rejection_lines.write(|suppressed| {
                    delivery_span(None).in_scope(|| {
                        warn!(reason = error.code(), %error, bytes = body.len(), suppressed, "rejected delivery")
                    })
                });
                return Verdict::Rejected(error);
            }
        };

        let envelope = match Envelope::parse(body) {
            Ok(envelope) => envelope,
            Err(error) => {
                let reason = format!("{}: {error}", error.code());
                let span = delivery_span(None);
                span.in_scope(|| {
                    warn!(secret_index = verified.secret_index, %reason, "authentic body is not a notification")
                });
                let mut message = Message::from_bytes(body);
                // Keep what can be read of it, so that `dlq list --topic` finds it.
                for (name, value) in crate::receiving::notification::salvage(body) {
                    message.attributes.insert(name.to_owned(), value);
                }
                return match self.store(self.queue.dead_letter(&message, &reason)).await {
                    Ok(()) => Verdict::DeadLettered { reason },
                    Err(error) => queue_failed(&span, error),
                };
            }
        };
        let span = || delivery_span(Some(&envelope));

        if envelope.is_ping() {
            span().in_scope(|| info!(secret_index = verified.secret_index, "ping acknowledged"));
            return Verdict::Ping;
        }

        let message = Message::for_notification(body, &envelope);
        match self.store(self.queue.send(&message)).await {
            Ok(()) => {
                // The worker's `outcome` line is the one INFO line per notification; rejections and
                // failures to store are warnings.
                if tracing::enabled!(tracing::Level::DEBUG) {
                    span().in_scope(|| debug!(secret_index = verified.secret_index, "queued"));
                }
                let id = envelope.id.map(|id| id.to_string()).unwrap_or_default();
                Verdict::Queued {
                    notification_id: id,
                    attributes: message.attributes,
                }
            }
            Err(QueueError::Rejected(why)) => {
                // The queue will never take this message; keep it in the dead-letter queue instead.
                let reason = format!("queue_rejected: {why}");
                let span = span();
                span.in_scope(|| warn!(%reason, "main queue refused the notification"));
                match self.store(self.queue.dead_letter(&message, &reason)).await {
                    Ok(()) => Verdict::DeadLettered { reason },
                    Err(error) => queue_failed(&span, error),
                }
            }
            Err(error) => queue_failed(&span(), error),
        }
    }
}

impl Intake {
    /// A queue write bounded by the store timeout. A write that times out may still complete later; the
    /// 503 makes Intercom deliver again and the worker deduplicates, so nothing is lost or done twice.
    async fn store(
        &self,
        write: impl std::future::Future<Output = Result<(), QueueError>>,
    ) -> Result<(), QueueError> {
        match tokio::time::timeout(self.store_timeout, write).await {
            Ok(result) => result,
            Err(_) => Err(QueueError::Unavailable(format!(
                "the queue did not store the delivery within {} ms",
                self.store_timeout.as_millis()
            ))),
        }
    }
}

/// A rate limit on log lines: a flood of rejected requests must not become a flood of lines (and a log
/// bill). A line written after some were left out says how many.
struct LineBudget {
    limiter: governor::DefaultDirectRateLimiter,
    suppressed: AtomicU64,
}

impl LineBudget {
    fn per_second(lines: u32) -> Self {
        let lines = NonZeroU32::new(lines).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: governor::RateLimiter::direct(governor::Quota::per_second(lines)),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Calls `write` if a line may be written now, with the number of lines left out since the last one
    /// (`None` when none were: the field is then left out of the line).
    fn write(&self, write: impl FnOnce(Option<u64>)) {
        if self.limiter.check().is_ok() {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            write((suppressed > 0).then_some(suppressed));
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn queue_failed(span: &tracing::Span, error: QueueError) -> Verdict {
    span.in_scope(|| warn!(%error, "could not store the delivery; answering 503 so Intercom retries"));
    Verdict::Unavailable(error)
}

/// The span every line about one delivery is written in, with what is known of the notification (nothing
/// before its envelope is parsed). Made only for a line that is written: a stored notification, the
/// common case, writes none at `info`, so it pays for no span (bench/RESULTS.md has what that saved).
fn delivery_span(envelope: Option<&Envelope>) -> tracing::Span {
    let Some(envelope) = envelope else {
        return tracing::info_span!("notification");
    };
    tracing::info_span!(
        "notification",
        notification_id = envelope.id.as_ref().map(|id| id.as_str()),
        topic = envelope.topic.as_str(),
        app_id = envelope.app_id.as_ref().map(|app| app.as_str()),
        delivery_attempts = envelope.delivery_attempts,
    )
}

/// The verdict on one delivery.
#[derive(Debug)]
pub enum Verdict {
    /// Stored on the main queue, with the message's attributes (topic, notification id, app, delivery
    /// attempts).
    Queued {
        notification_id: String,
        attributes: std::collections::BTreeMap<String, String>,
    },
    /// Authentic `ping`: nothing stored.
    Ping,
    /// Authentic but unprocessable: stored on the dead-letter queue with `reason`.
    DeadLettered { reason: String },
    /// Signature missing, malformed or wrong: nothing stored.
    Rejected(SignatureError),
    /// Could not be stored: Intercom should retry.
    Unavailable(QueueError),
}

impl IntoResponse for Verdict {
    fn into_response(self) -> Response {
        match self {
            Verdict::Queued { notification_id, .. } => (
                StatusCode::OK,
                Json(json!({"status": "queued", "notification_id": notification_id})),
            )
                .into_response(),
            Verdict::Ping => (StatusCode::OK, Json(json!({"status": "ok", "topic": "ping"}))).into_response(),
            Verdict::DeadLettered { reason } => (
                StatusCode::OK,
                Json(json!({"status": "dead_lettered", "reason": reason})),
            )
                .into_response(),
            Verdict::Rejected(error) => {
                error_response(StatusCode::UNAUTHORIZED, error.code(), &error.to_string())
            }
            Verdict::Unavailable(_) => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_unavailable",
                "the notification could not be stored; retry later",
            ),
        }
    }
}

/// The JSON error answer: `{"error": code, "message": message}`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

async fn head() -> StatusCode {
    StatusCode::OK
}

async fn receive(State(intake): State<Arc<Intake>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let limit = intake.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(&intake, &parts.headers, limit);
    }
    let read = tokio::time::timeout(
        intake.body_read_timeout,
        axum::body::to_bytes(Body::new(body), limit),
    );
    let body: Bytes = match read.await {
        Ok(Ok(bytes)) => bytes,
        Err(_) => return body_too_slow(&intake, &parts.headers),
        Ok(Err(error)) => {
            let too_long =
                std::error::Error::source(&error).is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            if too_long {
                return too_large(&intake, &parts.headers, limit);
            }
            intake.metrics.incr("received", &[]);
            intake.metrics.incr("rejected", &[("reason", "body_unreadable")]);
            intake.rejection_lines.write(|suppressed| {
                warn!(%error, reason = "body_unreadable", suppressed, "could not read the request body")
            });
            intake.observe_rejection(&parts.headers, StatusCode::BAD_REQUEST, "body_unreadable");
            return error_response(
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                "the request body could not be read",
            );
        }
    };
    let verdict = intake.handle(&parts.headers, &body).await;
    if intake.observer.is_some() {
        let (name, reason, kept) = match &verdict {
            Verdict::Queued { .. } => ("queued", None, true),
            Verdict::Ping => ("ping", None, true),
            Verdict::DeadLettered { reason } => ("dead_lettered", Some(reason.clone()), true),
            Verdict::Rejected(error) => ("rejected", Some(format!("{}: {error}", error.code())), false),
            Verdict::Unavailable(error) => ("unavailable", Some(error.to_string()), true),
        };
        let (verdict, attributes) = match verdict {
            Verdict::Queued {
                notification_id,
                attributes,
            } => (
                Verdict::Queued {
                    notification_id,
                    attributes: Default::default(),
                },
                Some(attributes),
            ),
            other => (other, None),
        };
        let response = verdict.into_response();
        intake.observe(Seen {
            headers: &parts.headers,
            status: response.status(),
            verdict: name,
            reason,
            body: kept.then_some(body),
            attributes,
        });
        return response;
    }
    verdict.into_response()
}

fn body_too_slow(intake: &Intake, headers: &HeaderMap) -> Response {
    intake.metrics.incr("received", &[]);
    intake.metrics.incr("rejected", &[("reason", "body_timeout")]);
    let timeout_ms = intake.body_read_timeout.as_millis() as u64;
    intake.rejection_lines.write(|suppressed| {
        warn!(
            timeout_ms,
            reason = "body_timeout",
            suppressed,
            "rejected delivery"
        )
    });
    intake.observe_rejection(headers, StatusCode::REQUEST_TIMEOUT, "body_timeout");
    error_response(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        &format!("the body did not arrive within {timeout_ms} ms"),
    )
}

fn too_large(intake: &Intake, headers: &HeaderMap, limit: usize) -> Response {
    intake.metrics.incr("received", &[]);
    intake.metrics.incr("rejected", &[("reason", "body_too_large")]);
    intake
        .rejection_lines
        .write(|suppressed| warn!(limit, reason = "body_too_large", suppressed, "rejected delivery"));
    intake.observe_rejection(headers, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        &format!("the body exceeds the limit of {limit} bytes"),
    )
}

async fn method_not_allowed(method: Method) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("{method} is not supported here; Intercom delivers with POST"),
    )
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such path; deliveries go to / or /webhooks/intercom",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::{Db, SqliteQueue};
    use crate::plumbing::telemetry::captured_json_lines;
    use serde_json::json;

    const NOTIFICATION: &str = r#"{"type":"notification_event","id":"notif_1","topic":"contact.created","app_id":"abc","delivery_attempts":2,"data":{"item":{}}}"#;

    /// Posts a rejected delivery, a ping and a notification, with logs filtered by `directives`, and
    /// returns the lines written.
    fn lines_of_three_deliveries(directives: &str) -> Vec<serde_json::Value> {
        let dir = tempfile::tempdir().unwrap();
        let queue = SqliteQueue::new(Db::open(dir.path().join("q.db")).unwrap(), 5);
        let secrets = ClientSecrets::parse("s3cret").unwrap();
        let signed = |body: &[u8]| {
            let mut headers = HeaderMap::new();
            let signature = secrets.primary().sign(body);
            headers.insert(SIGNATURE_HEADER, signature.parse().unwrap());
            headers
        };
        let ping = br#"{"type":"notification_event","topic":"ping","app_id":"abc","data":{}}"#;
        let notification = NOTIFICATION.as_bytes();
        let requests = [
            (HeaderMap::new(), notification),
            (signed(ping), &ping[..]),
            (signed(notification), notification),
        ];
        let intake = Intake::new(secrets.clone(), Arc::new(queue), 1 << 20);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        captured_json_lines(directives, || {
            let outcomes: Vec<Verdict> = requests
                .iter()
                .map(|(headers, body)| runtime.block_on(intake.handle(headers, body)))
                .collect();
            assert!(matches!(
                outcomes.as_slice(),
                [Verdict::Rejected(_), Verdict::Ping, Verdict::Queued { .. }]
            ));
        })
    }

    #[test]
    fn at_info_a_stored_notification_writes_no_line_and_the_others_write_theirs_in_the_delivery_span() {
        assert_eq!(
            lines_of_three_deliveries("info"),
            [
                json!({"level": "WARN", "message": "rejected delivery", "reason": "signature_missing",
                       "error": "the X-Hub-Signature header is missing", "bytes": NOTIFICATION.len(),
                       "span": {"name": "notification"}}),
                json!({"level": "INFO", "message": "ping acknowledged", "secret_index": 0,
                       "span": {"name": "notification", "topic": "ping", "app_id": "abc"}}),
            ]
        );
    }

    #[test]
    fn a_flood_of_rejections_writes_a_few_lines_a_second_and_counts_every_one() {
        let dir = tempfile::tempdir().unwrap();
        let queue = SqliteQueue::new(Db::open(dir.path().join("q.db")).unwrap(), 5);
        let intake = Intake::new(ClientSecrets::parse("s3cret").unwrap(), Arc::new(queue), 1 << 20);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let forged = HeaderMap::from_iter([(
            axum::http::HeaderName::from_static(SIGNATURE_HEADER),
            "sha1=0000000000000000000000000000000000000000".parse().unwrap(),
        )]);
        let lines = captured_json_lines("info", || {
            for _ in 0..200 {
                runtime.block_on(intake.handle(&forged, NOTIFICATION.as_bytes()));
            }
            // A line's worth of budget comes back every 1/REJECTION_LINES_PER_SECOND seconds.
            std::thread::sleep(Duration::from_millis(1_100 / REJECTION_LINES_PER_SECOND as u64));
            runtime.block_on(intake.handle(&forged, NOTIFICATION.as_bytes()));
        });
        let burst = REJECTION_LINES_PER_SECOND as usize;
        assert_eq!(lines.len(), burst + 1, "{lines:?}");
        assert!(lines.iter().all(|l| l["reason"] == "signature_mismatch"));
        assert!(lines[..burst].iter().all(|l| l.get("suppressed").is_none()));
        assert_eq!(lines[burst]["suppressed"], json!(200 - burst));
        assert_eq!(
            intake
                .metrics
                .get("rejected", &[("reason", "signature_mismatch")]),
            201,
            "the metric counts every rejection"
        );
    }

    #[tokio::test]
    async fn a_store_that_stalls_is_answered_503_within_the_store_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let queue = SqliteQueue::new(Db::open(&path).unwrap(), 5);
        let secrets = ClientSecrets::parse("s3cret").unwrap();
        let intake = Intake::new(secrets.clone(), Arc::new(queue.clone()), 1 << 20)
            .with_store_timeout(Duration::from_millis(300));
        let mut headers = HeaderMap::new();
        let body = NOTIFICATION.as_bytes();
        headers.insert(SIGNATURE_HEADER, secrets.primary().sign(body).parse().unwrap());

        // Another connection holds the write lock: the database thread waits for it.
        let blocker = rusqlite::Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let started = std::time::Instant::now();
        let outcome = intake.handle(&headers, body).await;
        assert!(matches!(outcome, Verdict::Unavailable(_)), "{outcome:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        blocker.execute_batch("ROLLBACK").unwrap();

        // Once the lock is gone, the redelivery is stored.
        let outcome = intake.handle(&headers, body).await;
        assert!(matches!(outcome, Verdict::Queued { .. }), "{outcome:?}");
        assert!(queue.stats().await.unwrap().queued >= 1);
    }

    #[tokio::test]
    async fn an_authentic_body_without_an_id_is_dead_lettered_under_its_topic_and_bad_json_as_bad_json() {
        use crate::processing::dead_letters::{DeadLetters, Filter};
        use crate::processing::router::TopicPattern;
        let dir = tempfile::tempdir().unwrap();
        let queue = SqliteQueue::new(Db::open(dir.path().join("q.db")).unwrap(), 5);
        let secrets = ClientSecrets::parse("s3cret").unwrap();
        let intake = Intake::new(secrets.clone(), Arc::new(queue.clone()), 1 << 20);
        for body in [&br#"{"topic": "contact.created", "app_id": "abc"}"#[..], b"[1,2"] {
            let mut headers = HeaderMap::new();
            headers.insert(SIGNATURE_HEADER, secrets.primary().sign(body).parse().unwrap());
            assert!(matches!(
                intake.handle(&headers, body).await,
                Verdict::DeadLettered { .. }
            ));
        }
        let filter = Filter {
            topic: Some(TopicPattern::parse("contact.*").unwrap()),
            ..Filter::default()
        };
        let found = queue.list(&filter, 10).await.unwrap().found;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].topic.as_deref(), Some("contact.created"));
        assert_eq!(found[0].attributes.get("app_id").map(String::as_str), Some("abc"));
        assert!(
            found[0].reason.starts_with("missing_field: "),
            "{}",
            found[0].reason
        );
        let all = queue.list(&Filter::default(), 10).await.unwrap().found;
        assert!(all[1].reason.starts_with("invalid_json: "), "{}", all[1].reason);
    }

    #[test]
    fn at_debug_a_stored_notification_is_logged_in_a_span_with_its_id_topic_app_and_attempts() {
        let lines = lines_of_three_deliveries("info,intercom_webhooks::receiving::intake=debug");
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            lines[2],
            json!({"level": "DEBUG", "message": "queued", "secret_index": 0,
                   "span": {"name": "notification", "notification_id": "notif_1", "topic": "contact.created",
                            "app_id": "abc", "delivery_attempts": 2}})
        );
    }
}
