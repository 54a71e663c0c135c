//! Intercom's search API, as reconcile uses it: objects whose `updated_at` lies in a range, page by
//! page, and `GET /me` for the app the token belongs to.
//!
//! Intercom matches date filters by calendar day in the workspace's time zone: `>` matches from the
//! start of the next day, `<` everything before the start of that day. The query therefore asks for a
//! day more on each side (whatever the time zone) and the answer is filtered by the full `updated_at`
//! the objects carry. Requests go out one at a time, paced by the `X-RateLimit-*` headers with the Data
//! Events client's pacer, so reconcile stays within the app's limit whoever else spends it; a 429 waits
//! for the window's reset, a 5xx or a network failure backs off, within the [`RetryPolicy`].

use std::sync::Mutex;
use std::time::Duration;

use reqwest::Url;
use serde_json::{json, Value};

use super::ObjectType;
use crate::events::pacer::{Gate, Pacer};
use crate::events::retry::{RateLimit, RetryPolicy};
use crate::events::{ClientConfigError, EventsClientBuilder};
use crate::plumbing::clock::unix_ms_now;
use crate::processing::mirror::{id_text, instant_ms};

/// The largest page the search endpoints serve.
pub const MAX_PER_PAGE: u32 = 150;

const DAY_SECONDS: i64 = 86_400;

/// The objects updated from `since_ms` to `until_ms` (both included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub since_ms: i64,
    pub until_ms: i64,
}

impl Window {
    /// Whether an object's full `updated_at` lies in the window.
    pub fn contains(&self, updated_at_ms: i64) -> bool {
        (self.since_ms..=self.until_ms).contains(&updated_at_ms)
    }
}

/// The search body for `window`, page size `per_page`, from `cursor`. Day-granular filters widened by a
/// day on each side, so that no object of the window is outside them in any time zone.
pub fn query(window: &Window, per_page: u32, cursor: Option<&str>) -> Value {
    let after = window.since_ms.div_euclid(1000) - DAY_SECONDS;
    let before = window.until_ms.div_euclid(1000) + 1 + DAY_SECONDS;
    let mut pagination = json!({ "per_page": per_page });
    if let Some(cursor) = cursor {
        pagination["starting_after"] = cursor.into();
    }
    json!({
        "query": {
            "operator": "AND",
            "value": [
                {"field": "updated_at", "operator": ">", "value": after},
                {"field": "updated_at", "operator": "<", "value": before},
            ],
        },
        "pagination": pagination,
    })
}

/// One page of a search.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub objects: Vec<Value>,
    /// The cursor of the next page, if any.
    pub next: Option<String>,
    pub total_count: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("{what}: Intercom answered {status}: {body}")]
    Status { what: String, status: u16, body: String },
    #[error("{what}: {source} (after {attempts} attempts)")]
    Network {
        what: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: still rate limited (429) after {attempts} attempts")]
    RateLimited { what: String, attempts: u32 },
    #[error("{what}: the answer is not what the API documents: {detail}")]
    Malformed { what: String, detail: String },
}

/// Searches one app's objects. Cheap to share by reference; one connection pool, one pacer.
pub struct SearchClient {
    http: reqwest::Client,
    base: crate::events::Endpoint,
    retry: RetryPolicy,
    pacer: Mutex<Pacer>,
    per_page: u32,
}

impl SearchClient {
    /// A client with the token, endpoint, version, timeouts and retry policy of `settings`.
    pub fn new(settings: &EventsClientBuilder) -> Result<Self, ClientConfigError> {
        let (http, _) = settings.http_client()?;
        let retry = settings.retry_policy().clone();
        Ok(Self {
            http,
            base: settings.endpoint().clone(),
            pacer: Mutex::new(Pacer::new(retry.max_rate_limit_wait)),
            retry,
            per_page: MAX_PER_PAGE,
        })
    }

    /// Pages of `per_page` objects (at most [`MAX_PER_PAGE`]).
    pub fn with_per_page(mut self, per_page: u32) -> Self {
        self.per_page = per_page.clamp(1, MAX_PER_PAGE);
        self
    }

    /// The token's app: `app.id_code` of `GET /me`.
    pub async fn app_id(&self) -> Result<String, SearchError> {
        let what = "GET /me";
        let answer = self.call(what, self.base.url("me"), None).await?;
        answer["app"]["id_code"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| SearchError::Malformed {
                what: what.into(),
                detail: "no app.id_code".into(),
            })
    }

    /// One page of `kind` updated within `window` (with the day-wide margins: filter with
    /// [`Window::contains`]).
    pub async fn page(
        &self,
        kind: ObjectType,
        window: &Window,
        cursor: Option<&str>,
    ) -> Result<Page, SearchError> {
        let what = format!("POST /{}", kind.search_path());
        let body = query(window, self.per_page, cursor);
        let answer = self
            .call(&what, self.base.url(&kind.search_path()), Some(&body))
            .await?;
        let objects = match answer.get(kind.list_key()) {
            Some(Value::Array(objects)) => objects.clone(),
            _ => {
                return Err(SearchError::Malformed {
                    what,
                    detail: format!("no `{}` list", kind.list_key()),
                })
            }
        };
        let next = answer["pages"]["next"]["starting_after"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        Ok(Page {
            objects,
            next,
            total_count: answer["total_count"].as_u64(),
        })
    }

    /// Waits until the pacer lets one more request go.
    async fn budget(&self) {
        loop {
            let gate = self.pacer.lock().expect("pacer lock").gate(unix_ms_now() as u64);
            match gate {
                Gate::Open => return,
                Gate::WaitUntil(at_ms) => {
                    let wait = at_ms.saturating_sub(unix_ms_now() as u64);
                    tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
                }
                Gate::WaitForAnswers => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// One request with its retries: JSON back on 2xx.
    async fn call(&self, what: &str, url: Url, body: Option<&Value>) -> Result<Value, SearchError> {
        let (mut attempts, mut failures, mut rate_limited) = (0u32, 0u32, 0u32);
        loop {
            self.budget().await;
            attempts += 1;
            let seq = self.pacer.lock().expect("pacer lock").on_send();
            let request = match body {
                Some(body) => self.http.post(url.clone()).json(body),
                None => self.http.get(url.clone()),
            };
            // A network failure (sending, or reading the answer) backs off like a 5xx.
            let received = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let rate = RateLimit::from_headers(response.headers());
                    match response.bytes().await {
                        Ok(bytes) => Ok((status, rate, bytes)),
                        Err(error) => Err((rate, error)),
                    }
                }
                Err(error) => Err((RateLimit::default(), error)),
            };
            let (status, rate, bytes) = match received {
                Ok(received) => received,
                Err((rate, error)) => {
                    self.observe(seq, rate, false, 1);
                    failures += 1;
                    if failures >= self.retry.max_attempts {
                        return Err(SearchError::Network {
                            what: what.into(),
                            attempts,
                            source: error.without_url(),
                        });
                    }
                    tokio::time::sleep(self.retry.backoff(failures)).await;
                    continue;
                }
            };
            let limited = status.as_u16() == 429;
            self.observe(seq, rate, limited, rate_limited + 1);
            if status.is_success() {
                return serde_json::from_slice(&bytes).map_err(|e| SearchError::Malformed {
                    what: what.into(),
                    detail: e.to_string(),
                });
            }
            if limited {
                rate_limited += 1;
                if rate_limited > self.retry.max_rate_limited {
                    return Err(SearchError::RateLimited {
                        what: what.into(),
                        attempts,
                    });
                }
                tracing::debug!(what, reset = ?rate.reset, "rate limited; waiting for the window's reset");
                continue;
            }
            if status.is_server_error() {
                failures += 1;
                if failures < self.retry.max_attempts {
                    tokio::time::sleep(self.retry.backoff(failures)).await;
                    continue;
                }
            }
            return Err(SearchError::Status {
                what: what.into(),
                status: status.as_u16(),
                body: excerpt(&bytes),
            });
        }
    }

    fn observe(&self, seq: u64, rate: RateLimit, limited: bool, rate_limited: u32) {
        let fallback = self.retry.rate_limit_wait(None, rate_limited.max(1));
        self.pacer
            .lock()
            .expect("pacer lock")
            .observe(seq, rate, limited, unix_ms_now() as u64, fallback);
    }
}

/// The start of an error answer, printable on one line.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    line.trim().to_owned()
}

/// An object's identity and version: (id, `updated_at` in Unix ms), if it has both.
pub fn identity(object: &Value) -> Option<(String, i64)> {
    Some((id_text(&object["id"])?, instant_ms(&object["updated_at"])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of the day holding `t` (Unix s) in a zone `offset_s` east of UTC.
    fn day_start(t: i64, offset_s: i64) -> i64 {
        (t + offset_s).div_euclid(DAY_SECONDS) * DAY_SECONDS - offset_s
    }

    /// Intercom's documented date semantics for one filter.
    fn matches(filter: &Value, updated_at_s: i64, offset_s: i64) -> bool {
        let value = filter["value"].as_i64().unwrap();
        match filter["operator"].as_str().unwrap() {
            ">" => updated_at_s >= day_start(value, offset_s) + DAY_SECONDS,
            "<" => updated_at_s < day_start(value, offset_s),
            other => panic!("unexpected operator {other}"),
        }
    }

    #[test]
    fn the_widened_query_holds_every_instant_of_the_window_in_every_time_zone() {
        let windows = [
            (1_700_000_000_000, 1_700_000_600_000),
            (1_700_006_399_000, 1_700_092_800_000),
            (1_768_018_948_238, 1_768_019_000_001),
            (1_767_225_599_999, 1_767_225_600_000),
        ];
        for (since_ms, until_ms) in windows {
            let window = Window { since_ms, until_ms };
            let body = query(&window, 150, None);
            let filters = body["query"]["value"].as_array().unwrap();
            assert_eq!(body["query"]["operator"], "AND");
            for offset_s in (-12 * 3600..=14 * 3600).step_by(1800) {
                let first = since_ms.div_euclid(1000);
                let last = until_ms.div_euclid(1000);
                for t in [first, first + 1, (first + last) / 2, last - 1, last] {
                    let in_window = window.contains(t * 1000) || window.contains(t * 1000 + 999);
                    if in_window {
                        assert!(
                            filters.iter().all(|f| matches(f, t, offset_s)),
                            "{t} in {window:?} missed at offset {offset_s}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn pagination_is_the_largest_page_and_the_cursor() {
        let window = Window {
            since_ms: 0,
            until_ms: 1_000,
        };
        let first = query(&window, MAX_PER_PAGE, None);
        assert_eq!(first["pagination"], json!({"per_page": 150}));
        let next = query(&window, MAX_PER_PAGE, Some("abc"));
        assert_eq!(
            next["pagination"],
            json!({"per_page": 150, "starting_after": "abc"})
        );
    }

    #[test]
    fn identities_need_an_id_and_a_version() {
        assert_eq!(
            identity(&json!({"id": "1", "updated_at": 5})),
            Some(("1".into(), 5_000))
        );
        assert_eq!(
            identity(&json!({"id": 7, "updated_at": "2026-01-10T04:22:28.238+00:00"})),
            Some(("7".into(), 1_768_018_948_238))
        );
        assert_eq!(identity(&json!({"id": "1"})), None);
        assert_eq!(identity(&json!({"updated_at": 5})), None);
    }
}
