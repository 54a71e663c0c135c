//! A mock of Intercom's REST search API over real HTTP (wiremock), following Intercom's OpenAPI
//! description (`tests/fixtures/openapi/api.intercom.io.2.15.yaml`): `GET /me` and
//! `POST /{conversations,contacts,tickets}/search` over a store of objects the test fills and changes
//! while it runs, rate-limited like `events_api` (a fixed number of requests per window aligned to the
//! wall clock, `X-RateLimit-*` on every answer, 429 past the limit), with failures and latency on demand.
//!
//! Results come in ascending `(updated_at, id)` order and a cursor remembers the last `(updated_at, id)`
//! it returned: the description documents no order, and this one keeps paging stable while objects
//! change. An object updated while a client pages moves to the end of the order and is returned again
//! on a later page (if it still matches); one added past the cursor's position is returned when the
//! client gets there; one put before it (older than the last object returned) is not. `total_count` and
//! `total_pages` count the matches at the time of each request.
//!
//! Dates are matched by calendar day in the workspace's timezone (`Settings::utc_offset_minutes`) on all
//! three endpoints (see `query`). Only `/contacts/search` documents this; the conversations and tickets
//! descriptions are silent on it (their tables call `>` "Greater (or equal) than"), and the mock applies
//! the contacts rule to them too.

mod query;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::events_api::{unix_ms, TOKEN};
use query::Query;

/// The objects the search endpoints return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Conversation,
    Contact,
    Ticket,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Conversation, Kind::Contact, Kind::Ticket];

    /// The objects' `type`.
    pub fn type_name(self) -> &'static str {
        match self {
            Self::Conversation => "conversation",
            Self::Contact => "contact",
            Self::Ticket => "ticket",
        }
    }

    pub fn search_path(self) -> &'static str {
        match self {
            Self::Conversation => "/conversations/search",
            Self::Contact => "/contacts/search",
            Self::Ticket => "/tickets/search",
        }
    }

    /// The answer's `type`: `conversation_list`, `contact_list` and `ticket_list` in the description.
    pub fn list_type(self) -> &'static str {
        match self {
            Self::Conversation => "conversation.list",
            Self::Contact => "list",
            Self::Ticket => "ticket.list",
        }
    }

    /// The key of the answer's array of objects.
    pub fn list_key(self) -> &'static str {
        match self {
            Self::Conversation => "conversations",
            Self::Contact => "data",
            Self::Ticket => "tickets",
        }
    }

    /// Each endpoint's description: "The default is `20` results per page" (conversations, tickets),
    /// "`50`" (contacts).
    pub fn default_per_page(self) -> u32 {
        match self {
            Self::Conversation | Self::Ticket => 20,
            Self::Contact => 50,
        }
    }

    /// Only `/conversations/search` documents a maximum ("maximum is `150`"); contacts and tickets
    /// document none, and the mock holds them to the same 150 so that a larger page fails here first.
    pub fn max_per_page(self) -> u32 {
        150
    }
}

/// How the mock is set up; fixed for its life.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The access token accepted in `Authorization: Bearer <token>`.
    pub token: String,
    /// `app.id_code` in `GET /me`.
    pub app_id: String,
    /// The workspace's timezone, a fixed offset from UTC in minutes (+600 is UTC+10). Whole hours, or
    /// one of the half and quarter hours that have a zone name (`timezone_name`).
    pub utc_offset_minutes: i32,
    /// Requests answered per window, whatever the answer; past it, 429.
    pub limit: u32,
    /// A whole number of seconds; windows are aligned to the wall clock.
    pub window: Duration,
    /// Added to every answer.
    pub latency: Duration,
}

impl Default for Settings {
    /// Intercom's developer documentation (not the OpenAPI file) gives a private app 10,000 requests a
    /// minute, spread over 10-second windows.
    fn default() -> Self {
        Self {
            token: TOKEN.into(),
            app_id: "mockapp1".into(),
            utc_offset_minutes: 0,
            limit: 10_000 / 6,
            window: Duration::from_secs(10),
            latency: Duration::ZERO,
        }
    }
}

/// One request and what the mock answered.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// 1-based, in order of arrival, counting every request the mock answered.
    pub number: usize,
    /// The endpoint; `None` for `GET /me`.
    pub kind: Option<Kind>,
    /// The request's body, `Null` when it has none or it is not JSON.
    pub body: Value,
    pub status: u16,
    /// The ids of the objects returned, in order.
    pub ids: Vec<String>,
}

/// Where a cursor points: after the object last returned, which was on page `page`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Position {
    updated_at: i64,
    id: String,
    page: u32,
}

#[derive(Default)]
struct State {
    objects: HashMap<Kind, BTreeMap<String, Value>>,
    /// Every cursor handed out, per endpoint.
    cursors: HashMap<(Kind, String), Position>,
    /// Requests counted against the limit, per window.
    counted: BTreeMap<u64, u32>,
    /// Request number → the status it answers.
    failures: HashMap<usize, u16>,
    log: Vec<Exchange>,
}

struct Shared {
    settings: Settings,
    timezone: String,
    state: Mutex<State>,
}

/// The running mock.
pub struct IntercomApi {
    server: MockServer,
    shared: Arc<Shared>,
}

#[derive(Clone, Copy)]
enum Route {
    Me,
    Search(Kind),
}

/// One endpoint's responder; all share the store, the limit and the log.
struct Endpoint {
    route: Route,
    shared: Arc<Shared>,
}

impl IntercomApi {
    /// Starts the mock on 127.0.0.1. Panics on settings it cannot honour.
    pub async fn start(settings: Settings) -> Self {
        assert!(
            settings.window.as_millis().is_multiple_of(1000) && !settings.window.is_zero(),
            "the window must be whole seconds"
        );
        let timezone = timezone_name(settings.utc_offset_minutes);
        let shared = Arc::new(Shared {
            settings,
            timezone,
            state: Mutex::default(),
        });
        let server = MockServer::start().await;
        let mut routes = vec![("GET", "/me", Route::Me)];
        routes.extend(Kind::ALL.map(|k| ("POST", k.search_path(), Route::Search(k))));
        for (verb, at, route) in routes {
            Mock::given(method(verb))
                .and(path(at))
                .respond_with(Endpoint {
                    route,
                    shared: shared.clone(),
                })
                .mount(&server)
                .await;
        }
        Self { server, shared }
    }

    /// The base URL, like `https://api.intercom.io`.
    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// Adds `object`, or replaces the one with its `id`. It needs a string `id` and an integer
    /// `updated_at` (Unix seconds); its `type` is set to `kind`'s when absent.
    pub fn put(&self, kind: Kind, mut object: Value) {
        let id = object["id"]
            .as_str()
            .expect("an object has a string id")
            .to_owned();
        assert!(
            object["updated_at"].is_i64(),
            "{id}: updated_at must be Unix seconds"
        );
        let type_name = object
            .as_object_mut()
            .unwrap()
            .entry("type")
            .or_insert(kind.type_name().into());
        assert_eq!(type_name, kind.type_name(), "{id}: the type of a {kind:?}");
        let mut state = self.shared.state.lock().unwrap();
        state.objects.entry(kind).or_default().insert(id, object);
    }

    /// Makes request number `number` (1-based, counting every request) answer `status` (500, 503…)
    /// unless the rate limit refuses it first.
    pub fn fail_request(&self, number: usize, status: u16) {
        self.shared.state.lock().unwrap().failures.insert(number, status);
    }

    /// Every request answered so far, in order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.shared.state.lock().unwrap().log.clone()
    }
}

/// An IANA name for a fixed offset, for `app.timezone`. `Etc/GMT` names have the sign reversed.
fn timezone_name(utc_offset_minutes: i32) -> String {
    match utc_offset_minutes {
        0 => "Etc/UTC".into(),
        m if m % 60 == 0 && (-720..=840).contains(&m) => format!("Etc/GMT{:+}", -m / 60),
        270 => "Asia/Kabul".into(),
        330 => "Asia/Kolkata".into(),
        345 => "Asia/Kathmandu".into(),
        390 => "Asia/Yangon".into(),
        570 => "Australia/Darwin".into(),
        -570 => "Pacific/Marquesas".into(),
        m => panic!("no zone without daylight saving time is {m} minutes from UTC"),
    }
}

/// Intercom's error shape (`components.schemas.error`).
fn error_list(code: &str, message: &str) -> Value {
    json!({
        "type": "error.list",
        "request_id": uuid::Uuid::new_v4().to_string(),
        "errors": [{"code": code, "message": message}]
    })
}

impl Respond for Endpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let settings = &self.shared.settings;
        let window_ms = settings.window.as_millis() as u64;
        let window = unix_ms() / window_ms;
        let reset = ((window + 1) * window_ms).div_ceil(1000);
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);

        let mut state = self.shared.state.lock().unwrap();
        let number = state.log.len() + 1;
        let counted = state.counted.get(&window).copied().unwrap_or(0);
        let (status, answer, ids, remaining) = if counted >= settings.limit {
            let message = format!(
                "Exceeded rate limit of {} in {}_seconds",
                settings.limit,
                settings.window.as_secs()
            );
            (429, error_list("rate_limit_exceeded", &message), Vec::new(), 0)
        } else {
            state.counted.insert(window, counted + 1);
            let remaining = settings.limit - counted - 1;
            let authorised = request
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == format!("Bearer {}", settings.token));
            let (status, answer, ids) = if let Some(&status) = state.failures.get(&number) {
                (status, error_list("server_error", "Server Error"), Vec::new())
            } else if !authorised {
                (
                    401,
                    error_list("unauthorized", "Access Token Invalid"),
                    Vec::new(),
                )
            } else {
                match self.route {
                    Route::Me => (200, self.me(), Vec::new()),
                    Route::Search(kind) => match self.search(&mut state, kind, &request.body) {
                        Ok((answer, ids)) => (200, answer, ids),
                        Err(refusal) => (400, refusal, Vec::new()),
                    },
                }
            };
            (status, answer, ids, remaining)
        };
        state.log.push(Exchange {
            number,
            kind: match self.route {
                Route::Me => None,
                Route::Search(kind) => Some(kind),
            },
            body,
            status,
            ids,
        });
        drop(state);

        ResponseTemplate::new(status)
            .insert_header("X-RateLimit-Limit", settings.limit.to_string())
            .insert_header("X-RateLimit-Remaining", remaining.to_string())
            .insert_header("X-RateLimit-Reset", reset.to_string())
            .set_body_json(answer)
            .set_delay(settings.latency)
    }
}

impl Endpoint {
    /// `admin_with_app`, shaped like the documented example of `GET /me`.
    fn me(&self) -> Value {
        json!({
            "type": "admin",
            "id": "991267459",
            "email": "admin1@example.com",
            "name": "Mock Admin",
            "job_title": "Support",
            "away_mode_enabled": false,
            "away_mode_reassign": false,
            "has_inbox_seat": true,
            "team_ids": [],
            "email_verified": true,
            "avatar": {"type": "avatar", "image_url": null},
            "app": {
                "type": "app",
                "id_code": self.shared.settings.app_id,
                "name": "Mock workspace",
                "created_at": 1734537243,
                "secure": false,
                "identity_verification": false,
                "timezone": self.shared.timezone,
                "region": "US"
            }
        })
    }

    /// One page of a search, or the error list of a 400.
    fn search(&self, state: &mut State, kind: Kind, body: &[u8]) -> Result<(Value, Vec<String>), Value> {
        let invalid = |message: &str| error_list("parameter_invalid", message);
        let body: Value =
            serde_json::from_slice(body).map_err(|_| error_list("bad_request", "the body must be JSON"))?;
        let Some(query) = body.get("query") else {
            return Err(invalid("query is a required parameter"));
        };
        let query = Query::parse(kind, query, self.shared.settings.utc_offset_minutes)
            .map_err(|message| invalid(&message))?;

        let pagination = match body.get("pagination") {
            None | Some(Value::Null) => &serde_json::Map::new(),
            Some(Value::Object(p)) => p,
            Some(_) => return Err(invalid("pagination must be an object")),
        };
        let max = kind.max_per_page();
        let per_page = match pagination.get("per_page") {
            None | Some(Value::Null) => kind.default_per_page(),
            Some(n) => match n.as_u64() {
                Some(n @ 1..) if n <= u64::from(max) => n as u32,
                _ => return Err(invalid(&format!("per_page must be an integer from 1 to {max}"))),
            },
        };
        let after = match pagination.get("starting_after") {
            None | Some(Value::Null) => None,
            Some(Value::String(cursor)) => match state.cursors.get(&(kind, cursor.clone())) {
                Some(position) => Some(position.clone()),
                None => return Err(invalid("starting_after is not a valid cursor")),
            },
            Some(_) => return Err(invalid("starting_after must be a string")),
        };

        let mut matching: Vec<(i64, &String, &Value)> = state
            .objects
            .get(&kind)
            .into_iter()
            .flat_map(|objects| objects.iter())
            .filter(|(_, object)| query.matches(object))
            .map(|(id, object)| (object["updated_at"].as_i64().unwrap(), id, object))
            .collect();
        matching.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let total_count = matching.len();
        let rest: Vec<_> = matching
            .into_iter()
            .filter(|(updated_at, id, _)| {
                after
                    .as_ref()
                    .is_none_or(|p| (*updated_at, id.as_str()) > (p.updated_at, p.id.as_str()))
            })
            .collect();
        let page_len = rest.len().min(per_page as usize);
        let page_objects: Vec<Value> = rest[..page_len].iter().map(|(_, _, o)| (*o).clone()).collect();
        let ids: Vec<String> = rest[..page_len].iter().map(|(_, id, _)| (*id).clone()).collect();
        let page = after.map_or(1, |p| p.page + 1);
        let next = (rest.len() > page_len).then(|| {
            let (updated_at, id, _) = rest[page_len - 1];
            Position {
                updated_at,
                id: id.clone(),
                page,
            }
        });

        let mut pages = json!({
            "type": "pages",
            "page": page,
            "per_page": per_page,
            "total_pages": total_count.div_ceil(per_page as usize),
        });
        if let Some(position) = next {
            let cursor = cursor_for(&position);
            pages["next"] = json!({"per_page": per_page, "starting_after": cursor});
            state.cursors.insert((kind, cursor), position);
        }
        let mut answer = json!({
            "type": kind.list_type(),
            "total_count": total_count,
            "pages": pages,
        });
        answer[kind.list_key()] = Value::Array(page_objects);
        Ok((answer, ids))
    }
}

/// Opaque to the client; shaped like Intercom's (Base64 of `[sort value in ms, id, page]`).
fn cursor_for(position: &Position) -> String {
    let inside = json!([position.updated_at * 1000, position.id, position.page]);
    base64::engine::general_purpose::STANDARD.encode(inside.to_string())
}
