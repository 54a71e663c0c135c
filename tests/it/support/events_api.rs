//! A mock of Intercom's Data Events API over real HTTP (wiremock) that enforces a rate limit the way
//! Intercom does: a fixed number of requests per window, windows aligned to the wall clock, the
//! `X-RateLimit-*` headers on every answer and 429 past the limit. Shared by the bulk tests, the CLI
//! tests and `examples/events_bench.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const TOKEN: &str = "test-access-token";

/// What the mock answers a request it counts against the limit, given the event's `user_id` and how
/// many counted requests for that `user_id` came before.
pub type Script = Arc<dyn Fn(&str, usize) -> u16 + Send + Sync>;

/// The default script: user ids starting with `missing-` are unknown contacts (404); `flaky-` fail with
/// a 500 the first time; `broken-` always fail with a 503; everything else is accepted.
pub fn default_script() -> Script {
    Arc::new(|user_id: &str, before: usize| {
        if user_id.starts_with("missing-") {
            404
        } else if user_id.starts_with("flaky-") && before == 0 {
            500
        } else if user_id.starts_with("broken-") {
            503
        } else {
            202
        }
    })
}

/// One request as the mock saw it.
#[derive(Clone, Debug)]
pub struct Received {
    /// When the mock answered it (before the simulated latency).
    pub at: Instant,
    pub at_unix_ms: u64,
    pub user_id: String,
    pub status: u16,
    /// The index of the window it fell in (Unix ms / window length).
    #[allow(
        dead_code,
        reason = "read by examples/events_bench.rs, which shares this mock"
    )]
    pub window: u64,
}

#[derive(Debug, Default)]
pub struct Log {
    /// Requests counted against the limit, per window.
    pub counted: BTreeMap<u64, u32>,
    pub requests: Vec<Received>,
    /// Requests counted against the limit, per user id.
    pub counted_by_user: HashMap<String, usize>,
}

impl Log {
    /// How many 202 answers each user id received.
    pub fn accepted(&self) -> HashMap<String, usize> {
        let mut accepted = HashMap::new();
        for r in self.requests.iter().filter(|r| r.status == 202) {
            *accepted.entry(r.user_id.clone()).or_default() += 1;
        }
        accepted
    }

    pub fn count_status(&self, status: u16) -> usize {
        self.requests.iter().filter(|r| r.status == status).count()
    }

    /// The most requests the mock held unanswered at once. Every answer is delayed by `latency` after
    /// the request is seen, so the requests seen within any span shorter than `latency` were all
    /// awaiting their answer together, hence all in flight at the client at the same moment.
    pub fn max_concurrent(&self, latency: Duration) -> usize {
        let mut times: Vec<Instant> = self.requests.iter().map(|r| r.at).collect();
        times.sort();
        let mut best = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end].duration_since(times[start]) >= latency {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }
}

/// The rate-limited `POST /events` responder.
#[derive(Clone)]
pub struct WindowLimiter {
    pub window: Duration,
    pub limit: u32,
    /// Added to every answer (a stand-in for the network and Intercom's processing time).
    pub latency: Duration,
    pub script: Script,
    pub log: Arc<Mutex<Log>>,
}

impl WindowLimiter {
    /// `window` must be a whole number of seconds so that the reset time is exact.
    pub fn new(window: Duration, limit: u32, latency: Duration) -> Self {
        assert!(
            window.as_millis().is_multiple_of(1000) && !window.is_zero(),
            "whole seconds"
        );
        Self {
            window,
            limit,
            latency,
            script: default_script(),
            log: Arc::default(),
        }
    }

    pub fn with_script(mut self, script: Script) -> Self {
        self.script = script;
        self
    }

    fn window_ms(&self) -> u64 {
        self.window.as_millis() as u64
    }

    /// Counts `n` requests from someone else against the current window; returns its index.
    pub fn spend(&self, n: u32) -> u64 {
        let window = unix_ms() / self.window_ms();
        *self.log.lock().unwrap().counted.entry(window).or_default() += n;
        window
    }

    /// Time left in the current window.
    pub fn time_left_in_window(&self) -> Duration {
        let ms = self.window_ms();
        Duration::from_millis(ms - unix_ms() % ms)
    }

    /// Starts a mock server answering `POST /events` with this limiter.
    pub async fn start(&self) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/events"))
            .respond_with(self.clone())
            .mount(&server)
            .await;
        server
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

impl Respond for WindowLimiter {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let at = Instant::now();
        let at_unix_ms = unix_ms();
        let window = at_unix_ms / self.window_ms();
        let reset = ((window + 1) * self.window_ms()).div_ceil(1000);
        let user_id = serde_json::from_slice::<Value>(&request.body)
            .ok()
            .and_then(|body| body.get("user_id").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default();
        let mut log = self.log.lock().unwrap();
        let counted = log.counted.get(&window).copied().unwrap_or(0);
        let (status, remaining) = if counted >= self.limit {
            (429, 0)
        } else {
            log.counted.insert(window, counted + 1);
            let seen = log.counted_by_user.entry(user_id.clone()).or_default();
            let before = *seen;
            *seen += 1;
            ((self.script)(&user_id, before), self.limit - counted - 1)
        };
        log.requests.push(Received {
            at,
            at_unix_ms,
            user_id,
            status,
            window,
        });
        drop(log);
        let mut template = ResponseTemplate::new(status)
            .insert_header("X-RateLimit-Limit", self.limit.to_string())
            .insert_header("X-RateLimit-Remaining", remaining.to_string())
            .insert_header("X-RateLimit-Reset", reset.to_string())
            .set_delay(self.latency);
        let error = match status {
            429 => Some((
                "rate_limit_exceeded",
                "Exceeded rate limit of 10000 in 10_seconds",
            )),
            404 => Some(("not_found", "User Not Found")),
            500..=599 => Some(("server_error", "Server error")),
            _ => None,
        };
        if let Some((code, message)) = error {
            template = template.set_body_json(json!({
                "type": "error.list",
                "request_id": "00000000-0000-0000-0000-000000000000",
                "errors": [{"code": code, "message": message}]
            }));
        }
        template
    }
}
