//! The mock of Intercom's search API against its OpenAPI description, through a plain HTTP client:
//! dates matched by calendar day in the workspace's timezone, the documented limits and shapes, cursor
//! paging (also while objects change), the rate limit, injected failures and `GET /me`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::events_api::{unix_ms, TOKEN};
use crate::support::intercom_api::{Exchange, IntercomApi, Kind, Settings};

const OPENAPI: &str = "tests/fixtures/openapi/api.intercom.io.2.15.yaml";

/// Unix seconds of an RFC 3339 time.
fn at(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>().unwrap().as_second()
}

fn object(id: &str, updated_at: i64) -> Value {
    json!({"id": id, "created_at": updated_at - 30 * 86_400, "updated_at": updated_at})
}

fn filter(field: &str, operator: &str, value: impl Into<Value>) -> Value {
    json!({"field": field, "operator": operator, "value": value.into()})
}

async fn send(api: &IntercomApi, kind: Kind, body: Vec<u8>, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{}", api.uri(), kind.search_path()))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn post(api: &IntercomApi, kind: Kind, body: Value) -> (u16, Value) {
    let response = send(api, kind, body.to_string().into_bytes(), TOKEN).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn me(api: &IntercomApi, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("{}/me", api.uri()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// The ids of a search answer's objects, in order.
fn ids(kind: Kind, answer: &Value) -> Vec<String> {
    answer[kind.list_key()]
        .as_array()
        .unwrap_or_else(|| panic!("no {} in {answer}", kind.list_key()))
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The ids a one-page search finds, sorted.
async fn found(api: &IntercomApi, kind: Kind, query: Value) -> Vec<String> {
    let (status, answer) = post(
        api,
        kind,
        json!({"query": query, "pagination": {"per_page": 150}}),
    )
    .await;
    assert_eq!(status, 200, "{query}: {answer}");
    assert!(answer["pages"].get("next").is_none(), "one page: {answer}");
    let mut ids = ids(kind, &answer);
    ids.sort();
    ids
}

/// Asserts a 400 with Intercom's error list.
async fn refused(api: &IntercomApi, kind: Kind, body: Value) -> String {
    let (status, answer) = post(api, kind, body.clone()).await;
    assert_eq!(status, 400, "{kind:?} {body}: {answer}");
    assert_error_list(&answer);
    answer["errors"][0]["message"].as_str().unwrap().to_owned()
}

fn assert_error_list(answer: &Value) {
    assert_eq!(answer["type"], "error.list", "{answer}");
    assert!(answer["request_id"].is_string(), "{answer}");
    assert!(answer["errors"][0]["code"].is_string(), "{answer}");
}

/// Every page of a search, following `pages.next`.
async fn every_page(api: &IntercomApi, kind: Kind, query: &Value, per_page: u32) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let body = json!({"query": query, "pagination": {"per_page": per_page, "starting_after": cursor}});
        let (status, answer) = post(api, kind, body).await;
        assert_eq!(status, 200, "{answer}");
        cursor = answer["pages"]["next"]["starting_after"].clone();
        pages.push(answer);
        if cursor.is_null() {
            return pages;
        }
    }
}

#[tokio::test]
async fn dates_match_by_calendar_day_in_the_workspace_timezone() {
    let late = at("2026-03-10T23:30:00Z");
    let noon_before = at("2026-03-09T12:00:00Z");
    let ten_past_midnight = at("2026-03-10T00:10:00Z");
    let next_midnight_utc = at("2026-03-11T00:00:00Z");
    // Whether the object updated at `late` is found by `> noon_before`, `> ten_past_midnight`,
    // `= ten_past_midnight` and `< next_midnight_utc`, with each instant truncated to its day in the
    // workspace's timezone.
    for (offset, gt_noon_before, gt_ten_past, eq_ten_past, lt_next_midnight) in [
        // 23:30 on the 10th; the queries name the 9th, the 10th, the 10th, the 11th.
        (0, true, false, true, true),
        // 09:30 on the 11th; the queries name the 9th (22:00), the 10th (10:10), the 10th, the 11th.
        (600, true, true, false, false),
        // 15:30 on the 10th; the queries name the 9th (04:00), the 9th (16:10), the 9th, the 10th.
        (-480, true, true, false, false),
        // 13:30 on the 11th; the queries name the 10th (02:00), the 10th (14:10), the 10th, the 11th.
        (840, true, true, false, false),
    ] {
        let api = IntercomApi::start(Settings {
            utc_offset_minutes: offset,
            ..Settings::default()
        })
        .await;
        api.put(Kind::Conversation, object("late", late));
        let expect = |yes: bool| if yes { vec!["late".to_owned()] } else { vec![] };
        for (query, yes) in [
            (filter("updated_at", ">", noon_before), gt_noon_before),
            (filter("updated_at", ">", ten_past_midnight), gt_ten_past),
            (filter("updated_at", "=", ten_past_midnight), eq_ten_past),
            (filter("updated_at", "<", next_midnight_utc), lt_next_midnight),
        ] {
            assert_eq!(
                found(&api, Kind::Conversation, query.clone()).await,
                expect(yes),
                "UTC{offset:+} minutes, {query}"
            );
        }

        // The day boundary is the workspace's midnight, whatever its offset.
        let midnight = at("2026-03-12T00:00:00Z") - i64::from(offset) * 60;
        for kind in Kind::ALL {
            api.put(kind, object("midnight", midnight));
            api.put(kind, object("second-before", midnight - 1));
            api.put(kind, object("last-second", midnight + 86_399));
            api.put(kind, object("day-after", midnight + 86_400));
            let ours =
                |query: Value| json!({"operator": "AND", "value": [query, filter("id", "!=", "late")]});
            let cases = [
                (
                    filter("updated_at", "=", midnight + 43_200),
                    vec!["last-second", "midnight"],
                ),
                (
                    filter("updated_at", ">", midnight - 1),
                    vec!["day-after", "last-second", "midnight"],
                ),
                (filter("updated_at", ">", midnight), vec!["day-after"]),
                (
                    filter("updated_at", "<", midnight + 86_399),
                    vec!["second-before"],
                ),
                (
                    filter("updated_at", "<", midnight + 86_400),
                    vec!["last-second", "midnight", "second-before"],
                ),
            ];
            for (query, want) in cases {
                assert_eq!(
                    found(&api, kind, ours(query.clone())).await,
                    want,
                    "{kind:?} UTC{offset:+} minutes, {query}"
                );
            }
        }
    }
}

/// The worked example of `/contacts/search`, on a workspace set to UTC.
#[tokio::test]
async fn the_documented_created_at_example_holds() {
    let api = IntercomApi::start(Settings::default()).await;
    let mut first = object("1 January 23:59:59", at("2026-01-05T00:00:00Z"));
    first["created_at"] = json!(1577923199);
    let mut second = object("2 January 00:00:00", at("2026-01-05T00:00:00Z"));
    second["created_at"] = json!(1577923200);
    api.put(Kind::Contact, first);
    api.put(Kind::Contact, second);
    // "Searching for `created_at` greater than `1577869200` (January 1st, 2020 9:00 AM UTC) ... the
    // results begin from January 2nd, 2020 12:00 AM UTC"; the example requests send the value as a string.
    assert_eq!(
        found(&api, Kind::Contact, filter("created_at", ">", "1577869200")).await,
        ["2 January 00:00:00"]
    );
    // "To get contacts created on January 1st, 2020, search for `created_at` equal to `1577836800`."
    assert_eq!(
        found(&api, Kind::Contact, filter("created_at", "=", 1577836800)).await,
        ["1 January 23:59:59"]
    );
}

#[tokio::test]
async fn each_endpoint_accepts_the_date_operators_its_description_lists() {
    let api = IntercomApi::start(Settings::default()).await;
    let t = at("2026-03-10T12:00:00Z");
    for kind in Kind::ALL {
        api.put(kind, object("a", t));
        api.put(kind, object("b", t + 86_400));
        for operator in [">=", "<="] {
            let message = refused(&api, kind, json!({"query": filter("updated_at", operator, t)})).await;
            assert!(message.contains("not supported on the date field"), "{message}");
        }
        for (operator, value) in [("~", json!("2026")), ("^", json!("17"))] {
            refused(
                &api,
                kind,
                json!({"query": filter("updated_at", operator, value)}),
            )
            .await;
        }
        // "as `created_at` accepts a date, the `value` cannot be a string such as `"foorbar"`"
        refused(&api, kind, json!({"query": filter("updated_at", "=", "foorbar")})).await;
        refused(&api, kind, json!({"query": filter("updated_at", "IN", t)})).await;
        refused(&api, kind, json!({"query": filter("updated_at", ">", [t])})).await;
    }
    // Contacts: "The `!=`, `>=`, `<=`, `IN` and `NIN` operators are not supported on Date fields".
    for operator in ["!=", "IN", "NIN"] {
        let value = if operator == "!=" { json!(t) } else { json!([t]) };
        refused(
            &api,
            Kind::Contact,
            json!({"query": filter("updated_at", operator, value)}),
        )
        .await;
    }
    // Conversations and tickets list `!=`, `IN` and `NIN` for every type; on a date they name days.
    for kind in [Kind::Conversation, Kind::Ticket] {
        assert_eq!(
            found(&api, kind, filter("updated_at", "!=", t + 3_600)).await,
            ["b"]
        );
        assert_eq!(
            found(&api, kind, filter("updated_at", "IN", [t + 86_400])).await,
            ["b"]
        );
        assert_eq!(
            found(&api, kind, filter("updated_at", "NIN", [t - 3_600])).await,
            ["b"]
        );
    }
    // Tickets: "You may use the `<=` or `>=` operators to search by `created_at`."
    let a_created = t - 30 * 86_400;
    assert_eq!(
        found(&api, Kind::Ticket, filter("created_at", ">=", a_created + 3_600)).await,
        ["a", "b"]
    );
    assert_eq!(
        found(&api, Kind::Ticket, filter("created_at", "<=", a_created)).await,
        ["a"]
    );
    refused(
        &api,
        Kind::Conversation,
        json!({"query": filter("created_at", ">=", a_created)}),
    )
    .await;
}

#[tokio::test]
async fn groups_combine_filters_within_the_documented_limits() {
    let api = IntercomApi::start(Settings::default()).await;
    let t = at("2026-03-10T12:00:00Z");
    for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
        let mut o = object(id, t + i as i64 * 86_400);
        o["source"] = json!({"author": {"email": format!("{id}@example.com")}});
        o["contact_ids"] = json!([format!("contact-{id}"), "contact-shared"]);
        api.put(Kind::Conversation, o);
    }
    let by_id = |id: &str| filter("id", "=", id);
    // (a OR d) AND (updated after the 10th): "Example: (1 OR 2) AND (3 OR 4)".
    let nested = json!({"operator": "AND", "value": [
        {"operator": "OR", "value": [by_id("a"), by_id("d")]},
        filter("updated_at", ">", t),
    ]});
    assert_eq!(found(&api, Kind::Conversation, nested).await, ["d"]);
    assert_eq!(
        found(&api, Kind::Conversation, filter("id", "IN", ["b", "c", "x"])).await,
        ["b", "c"]
    );
    assert_eq!(
        found(&api, Kind::Conversation, filter("source.author.email", "^", "c@")).await,
        ["c"]
    );
    assert_eq!(
        found(&api, Kind::Conversation, filter("contact_ids", "=", "contact-b")).await,
        ["b"]
    );
    assert_eq!(
        found(
            &api,
            Kind::Conversation,
            filter("contact_ids", "NIN", ["contact-a", "contact-b"])
        )
        .await,
        ["c", "d"]
    );

    // "There's a limit of max 2 nested filters"
    let three_deep = json!({"operator": "AND", "value": [
        {"operator": "OR", "value": [{"operator": "AND", "value": [by_id("a")]}]}
    ]});
    refused(&api, Kind::Conversation, json!({"query": three_deep})).await;
    // "There's a limit of max 15 filters for each AND or OR group"
    let group = |n: usize| json!({"query": {"operator": "OR", "value": (0..n).map(|i| by_id(&i.to_string())).collect::<Vec<_>>()}});
    assert_eq!(post(&api, Kind::Conversation, group(15)).await.0, 200);
    refused(&api, Kind::Conversation, group(16)).await;
    refused(&api, Kind::Conversation, group(0)).await;
}

#[tokio::test]
async fn invalid_bodies_page_sizes_and_cursors_answer_400() {
    let api = IntercomApi::start(Settings::default()).await;
    let t = at("2026-03-10T12:00:00Z");
    let query = filter("updated_at", ">", t - 86_400);
    for kind in Kind::ALL {
        for n in 0..3 {
            api.put(kind, object(&format!("{kind:?}-{n}"), t));
        }
        assert_eq!(kind.max_per_page(), 150);
        let paged = |per_page: Value| json!({"query": query, "pagination": {"per_page": per_page}});
        assert_eq!(post(&api, kind, paged(json!(150))).await.0, 200);
        for per_page in [json!(151), json!(0), json!(-1), json!("20"), json!(2.5)] {
            refused(&api, kind, paged(per_page)).await;
        }
        refused(&api, kind, json!({"pagination": {"per_page": 5}})).await;
        refused(&api, kind, json!({"query": query, "pagination": 5})).await;
        refused(&api, kind, json!({"query": "updated_at > yesterday"})).await;
        refused(
            &api,
            kind,
            json!({"query": {"field": "updated_at", "operator": "after", "value": t}}),
        )
        .await;
        refused(
            &api,
            kind,
            json!({"query": {"operator": "XOR", "value": [query]}}),
        )
        .await;
        refused(
            &api,
            kind,
            json!({"query": {"field": "updated_at", "operator": ">"}}),
        )
        .await;
        let response = send(&api, kind, b"{\"query\": ".to_vec(), TOKEN).await;
        assert_eq!(response.status(), 400);
        assert_error_list(&response.json().await.unwrap());

        // Cursors: made up, malformed, or handed out by another endpoint.
        let first = post(&api, kind, json!({"query": query, "pagination": {"per_page": 1}}))
            .await
            .1;
        let cursor = first["pages"]["next"]["starting_after"]
            .as_str()
            .unwrap()
            .to_owned();
        let other = Kind::ALL.into_iter().find(|k| *k != kind).unwrap();
        let forged = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("[{},\"x\",1]", t * 1000),
        );
        for (to, bad) in [
            (kind, json!("nope")),
            (kind, json!(forged)),
            (kind, json!(42)),
            (other, json!(cursor)),
        ] {
            refused(
                &api,
                to,
                json!({"query": query, "pagination": {"per_page": 1, "starting_after": bad}}),
            )
            .await;
        }
        let body = json!({"query": query, "pagination": {"per_page": 1, "starting_after": cursor}});
        assert_eq!(post(&api, kind, body).await.0, 200);
    }
}

#[tokio::test]
async fn paging_returns_every_match_once_in_updated_at_then_id_order() {
    let api = IntercomApi::start(Settings::default()).await;
    let base = at("2026-03-10T00:00:00Z");
    // 47 matches, several sharing an `updated_at`, and 5 outside the range.
    for n in 0..47 {
        api.put(
            Kind::Conversation,
            object(&format!("c{n:02}"), base + (n / 3) * 600),
        );
    }
    for n in 0..5 {
        api.put(Kind::Conversation, object(&format!("old{n}"), base - 86_400 * 3));
    }
    let query = filter("updated_at", ">", base - 86_400);
    let pages = every_page(&api, Kind::Conversation, &query, 10).await;

    assert_eq!(pages.len(), 5);
    let mut all = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        assert_eq!(page["type"], "conversation.list");
        assert_eq!(page["total_count"], 47);
        let meta = &page["pages"];
        assert_eq!(
            (meta["type"].as_str(), meta["page"].as_u64()),
            (Some("pages"), Some(i as u64 + 1))
        );
        assert_eq!(
            (meta["per_page"].as_u64(), meta["total_pages"].as_u64()),
            (Some(10), Some(5))
        );
        let last = i == pages.len() - 1;
        assert_eq!(meta.get("next").is_none(), last, "{meta}");
        if !last {
            assert_eq!(meta["next"]["per_page"], 10);
        }
        all.extend(ids(Kind::Conversation, page));
    }
    let expected: Vec<String> = (0..47).map(|n| format!("c{n:02}")).collect();
    assert_eq!(all, expected, "every match once, by updated_at then id");

    // The log holds each request's body, status and the ids returned.
    let log: Vec<Exchange> = api.exchanges();
    assert_eq!(log.len(), 5);
    assert!(log
        .iter()
        .all(|e| e.kind == Some(Kind::Conversation) && e.status == 200));
    assert_eq!(log.iter().map(|e| e.number).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(
        log.iter().flat_map(|e| e.ids.clone()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(log[0].body["pagination"]["starting_after"], Value::Null);
    assert_eq!(
        log[1].body["pagination"]["starting_after"],
        pages[0]["pages"]["next"]["starting_after"]
    );
}

#[tokio::test]
async fn each_endpoint_answers_its_documented_list_with_its_default_page_size() {
    let api = IntercomApi::start(Settings::default()).await;
    let t = at("2026-03-10T12:00:00Z");
    for (kind, list_type, key, default) in [
        (Kind::Conversation, "conversation.list", "conversations", 20),
        (Kind::Contact, "list", "data", 50),
        (Kind::Ticket, "ticket.list", "tickets", 20),
    ] {
        assert_eq!(
            (kind.list_type(), kind.list_key(), kind.default_per_page()),
            (list_type, key, default)
        );
        for n in 0..default + 5 {
            api.put(kind, object(&format!("{n:03}"), t));
        }
        let query = filter("updated_at", "=", t);
        let (status, first) = post(&api, kind, json!({"query": query})).await;
        assert_eq!(status, 200);
        assert_eq!(first["type"], list_type);
        assert_eq!(first[key].as_array().unwrap().len(), default as usize);
        assert_eq!(first[key][0]["type"], kind.type_name());
        assert_eq!(first["pages"]["per_page"], default);
        assert_eq!(first["pages"]["total_pages"], 2);
        assert_eq!(first["total_count"], default + 5);

        let nothing = post(
            &api,
            kind,
            json!({"query": filter("updated_at", "<", t - 86_400)}),
        )
        .await
        .1;
        assert_eq!(nothing[key], json!([]));
        assert_eq!(nothing["total_count"], 0);
        assert_eq!(
            nothing["pages"],
            json!({"type": "pages", "page": 1, "per_page": default, "total_pages": 0})
        );
    }
}

#[tokio::test]
async fn objects_changed_while_a_client_pages_never_break_the_cursor() {
    let api = IntercomApi::start(Settings::default()).await;
    let base = at("2026-03-10T00:00:00Z");
    for n in 0..30 {
        api.put(Kind::Ticket, object(&format!("t{n:02}"), base + n * 60));
    }
    let query = filter("updated_at", ">", base - 86_400);
    let body =
        |cursor: &Value| json!({"query": query, "pagination": {"per_page": 10, "starting_after": cursor}});
    let (_, first) = post(&api, Kind::Ticket, body(&Value::Null)).await;
    let mut seen = ids(Kind::Ticket, &first);
    assert_eq!(seen.first().map(String::as_str), Some("t00"));

    // Behind the cursor, updated: it moves to the end and comes again. Ahead of it, updated and added:
    // they come in their new places. Put behind the cursor with an old time: not seen.
    api.put(Kind::Ticket, object("t03", base + 3_600));
    api.put(Kind::Ticket, object("t15", base + 7_200));
    api.put(Kind::Ticket, object("new", base + 15 * 60 + 30));
    api.put(Kind::Ticket, object("late-arrival", base + 30));
    let mut cursor = first["pages"]["next"]["starting_after"].clone();
    while !cursor.is_null() {
        let (status, page) = post(&api, Kind::Ticket, body(&cursor)).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total_count"], 32);
        seen.extend(ids(Kind::Ticket, &page));
        cursor = page["pages"]["next"]["starting_after"].clone();
    }
    let count = |id: &str| seen.iter().filter(|s| *s == id).count();
    assert_eq!(
        (count("t03"), count("t15"), count("new"), count("late-arrival")),
        (2, 1, 1, 0)
    );
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(
        distinct.len(),
        31,
        "every original ticket and the new one: {seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("t15"));
}

#[tokio::test]
async fn past_the_limit_the_window_answers_429_with_the_rate_limit_headers() {
    let window = Duration::from_secs(2);
    let api = IntercomApi::start(Settings {
        limit: 3,
        window,
        ..Settings::default()
    })
    .await;
    // Start at the beginning of a window so that the five requests fall in one.
    let window_ms = window.as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(window_ms - unix_ms() % window_ms + 20)).await;
    let reset = (unix_ms() / window_ms + 1) * window_ms / 1000;

    let query = json!({"query": filter("updated_at", ">", 0)});
    let mut seen = Vec::new();
    for _ in 0..5 {
        let response = send(&api, Kind::Contact, query.to_string().into_bytes(), TOKEN).await;
        let header = |name: &str| response.headers()[name].to_str().unwrap().parse::<u64>().unwrap();
        seen.push((
            response.status().as_u16(),
            header("X-RateLimit-Limit"),
            header("X-RateLimit-Remaining"),
            header("X-RateLimit-Reset"),
        ));
        if response.status() == 429 {
            let answer: Value = response.json().await.unwrap();
            assert_error_list(&answer);
            assert_eq!(answer["errors"][0]["code"], "rate_limit_exceeded");
        }
    }
    assert_eq!(
        seen,
        [
            (200, 3, 2, reset),
            (200, 3, 1, reset),
            (200, 3, 0, reset),
            (429, 3, 0, reset),
            (429, 3, 0, reset)
        ]
    );

    // The next window answers again.
    tokio::time::sleep(Duration::from_millis(
        (reset * 1000).saturating_sub(unix_ms()) + 20,
    ))
    .await;
    let response = send(&api, Kind::Contact, query.to_string().into_bytes(), TOKEN).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["X-RateLimit-Remaining"], "2");
}

#[tokio::test]
async fn chosen_requests_fail_and_every_answer_waits_the_latency() {
    let latency = Duration::from_millis(300);
    let api = IntercomApi::start(Settings {
        latency,
        ..Settings::default()
    })
    .await;
    api.fail_request(2, 503);
    api.fail_request(3, 500);
    let query = json!({"query": filter("updated_at", ">", 0)});
    let started = Instant::now();
    assert_eq!(me(&api, Some(TOKEN)).await.status(), 200);
    assert!(started.elapsed() >= latency);
    for want in [503, 500, 200] {
        let (status, answer) = post(&api, Kind::Conversation, query.clone()).await;
        assert_eq!(status, want, "{answer}");
        if want != 200 {
            assert_error_list(&answer);
        }
    }
    let log = api.exchanges();
    let summary: Vec<_> = log.iter().map(|e| (e.number, e.kind, e.status)).collect();
    assert_eq!(
        summary,
        [
            (1, None, 200),
            (2, Some(Kind::Conversation), 503),
            (3, Some(Kind::Conversation), 500),
            (4, Some(Kind::Conversation), 200)
        ]
    );
    assert_eq!(log[0].body, Value::Null);
    assert_eq!(log[1].body, query);
}

#[tokio::test]
async fn me_identifies_the_admin_and_its_app_to_the_right_token_only() {
    let api = IntercomApi::start(Settings {
        app_id: "abc123xyz".into(),
        utc_offset_minutes: 600,
        ..Settings::default()
    })
    .await;
    let response = me(&api, Some(TOKEN)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["X-RateLimit-Limit"], "1666");
    let admin: Value = response.json().await.unwrap();
    assert_eq!(admin["type"], "admin");
    assert!(admin["id"].is_string());
    assert_eq!(admin["app"]["type"], "app");
    assert_eq!(admin["app"]["id_code"], "abc123xyz");
    assert_eq!(admin["app"]["timezone"], "Etc/GMT-10", "UTC+10");

    for token in [Some("wrong-token"), None] {
        let response = me(&api, token).await;
        assert_eq!(response.status(), 401);
        let answer: Value = response.json().await.unwrap();
        assert_error_list(&answer);
        assert_eq!(
            answer["errors"][0],
            json!({"code": "unauthorized", "message": "Access Token Invalid"})
        );
    }
    let query = json!({"query": filter("updated_at", ">", 0)})
        .to_string()
        .into_bytes();
    assert_eq!(send(&api, Kind::Ticket, query, "wrong-token").await.status(), 401);
}

/// From the line after `start` to the next line indented no deeper than `indent` spaces.
fn section<'a>(text: &'a str, start: &str, indent: usize) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start} is not in {OPENAPI}"))
        + start.len();
    let rest = &text[from..];
    let end = rest
        .match_indices('\n')
        .map(|(i, _)| i)
        .find(|&i| {
            let line = &rest[i + 1..];
            let depth = line.len() - line.trim_start_matches(' ').len();
            depth <= indent && !line.starts_with('\n')
        })
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The facts the mock takes from the OpenAPI description are still in it.
#[test]
fn the_documented_facts_are_those_of_the_openapi_description() {
    let text = std::fs::read_to_string(crate::support::root().join(OPENAPI)).unwrap();
    let endpoint = |kind: Kind| section(&text, &format!("\n  \"{}\":", kind.search_path()), 2);
    for kind in Kind::ALL {
        let description = endpoint(kind);
        let default = format!("The default is `{}` results per page", kind.default_per_page());
        assert!(description.contains(&default), "{kind:?}: {default}");
        assert!(description.contains("max 2 nested filters") && description.contains("max 15 filters"));
        let schema = match kind {
            Kind::Conversation => "\n    conversation_list:",
            Kind::Contact => "\n    contact_list:",
            Kind::Ticket => "\n    ticket_list:",
        };
        let schema = section(&text, schema, 4);
        assert!(
            schema.contains(&format!("- {}\n", kind.list_type())),
            "{kind:?}: {schema}"
        );
        assert!(
            schema.contains(&format!("\n        {}:\n", kind.list_key())),
            "{kind:?}: {schema}"
        );
        assert!(
            schema.contains("#/components/schemas/cursor_pages"),
            "{kind:?}: {schema}"
        );
    }
    assert!(endpoint(Kind::Conversation).contains("maximum is `150`"));
    let contacts = endpoint(Kind::Contact);
    for sentence in [
        "The day boundary uses **your workspace's timezone**",
        "* `>` matches from the start of the *next* day, not from the instant you passed.",
        "The `!=`, `>=`, `<=`, `IN` and `NIN` operators are not supported on Date fields and return an error.",
        "code: unauthorized\n                      message: Access Token Invalid",
    ] {
        assert!(contacts.contains(sentence), "{sentence}");
    }
    let tickets = endpoint(Kind::Ticket);
    assert!(tickets.contains("You may use the `<=` or `>=` operators to search by `created_at`."));
}
