//! Reconcile against a mock of Intercom's search API (day-granular date filters in the workspace's time
//! zone, cursor paging, rate-limit headers): every object changed in the range enqueued once, whatever
//! the time zone and page size; an interrupted pass resumes without holes and leaves its watermark
//! alone; the rate limit is kept.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use intercom_webhooks::events::{AccessToken, Endpoint, EventsClient, EventsClientBuilder, RetryPolicy};
use intercom_webhooks::local::{Db, SqliteStore};
use intercom_webhooks::reconcile::run::{Plan, ReconcileError, Reconciler, Report, Since};
use intercom_webhooks::reconcile::search::SearchClient;
use intercom_webhooks::reconcile::synthetic::Reconciled;
use intercom_webhooks::reconcile::target::Target;
use intercom_webhooks::reconcile::watermark::Watermarks;
use intercom_webhooks::reconcile::ObjectType;
use serde_json::json;

use crate::support::events_api::TOKEN;
use crate::support::intercom_api::{IntercomApi, Kind, Settings};

/// 2026-01-10T13:00:00Z: the end of the ranges below.
const UNTIL_S: i64 = 1_768_050_000;

/// Records what it is given; fails the object ids it is told to.
#[derive(Default)]
struct Recorder {
    got: Mutex<Vec<Reconciled>>,
    refuse: Mutex<BTreeSet<String>>,
}

#[async_trait]
impl Target for Recorder {
    async fn enqueue(&self, batch: &[Reconciled]) -> Vec<Result<(), String>> {
        assert!(batch.len() <= 10, "batches of 10 at most");
        let refuse = self.refuse.lock().unwrap().clone();
        batch
            .iter()
            .map(|n| {
                if refuse.contains(&n.object_id) {
                    return Err("refused by the test".to_owned());
                }
                self.got.lock().unwrap().push(n.clone());
                Ok(())
            })
            .collect()
    }
}

impl Recorder {
    /// (type, object id, updated_at in s) of everything enqueued.
    fn objects(&self) -> BTreeSet<(String, String, i64)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n.envelope
                        .topic
                        .as_str()
                        .trim_end_matches(".reconciled")
                        .to_owned(),
                    n.object_id.clone(),
                    n.updated_at_ms / 1000,
                )
            })
            .collect()
    }
}

fn settings(api: &IntercomApi) -> EventsClientBuilder {
    EventsClient::builder(
        AccessToken::new(TOKEN).unwrap(),
        Endpoint::base_url(&api.uri()).unwrap(),
    )
    .retry(RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..RetryPolicy::default()
    })
}

fn kind_of(kind: Kind) -> &'static str {
    kind.type_name()
}

/// Puts objects of every type: `n` per type updated within the three hours before `UNTIL_S`, some the day
/// before the range, some after its end. Returns those inside [since, until].
fn populate(api: &IntercomApi, n: i64, since_s: i64) -> BTreeSet<(String, String, i64)> {
    let mut expected = BTreeSet::new();
    for kind in Kind::ALL {
        let mut times: Vec<i64> = (0..n).map(|i| UNTIL_S - 3 * 3600 + i * (3 * 3600 / n)).collect();
        // Just outside on both sides, the previous day, and the next.
        times.extend([since_s - 1, UNTIL_S + 1, UNTIL_S - 30 * 3600, UNTIL_S + 9 * 3600]);
        times.push(UNTIL_S);
        times.push(since_s);
        for (i, t) in times.into_iter().enumerate() {
            let id = format!("{}-{i}", kind_of(kind));
            api.put(
                kind,
                json!({"id": id, "updated_at": t, "title": format!("<b>{id}</b>")}),
            );
            if (since_s..=UNTIL_S).contains(&t) {
                expected.insert((kind_of(kind).to_owned(), id, t));
            }
        }
    }
    expected
}

async fn reconcile(
    api: &IntercomApi,
    target: &dyn Target,
    watermarks: Option<&dyn Watermarks>,
    since: Since,
    per_page: u32,
) -> Result<Report, ReconcileError> {
    let search = SearchClient::new(&settings(api)).unwrap().with_per_page(per_page);
    let plan = Plan {
        types: ObjectType::ALL.to_vec(),
        since,
        until_ms: UNTIL_S * 1000,
        overlap: Duration::ZERO,
        dry_run: false,
    };
    Reconciler {
        search: &search,
        target,
        watermarks,
        mirror: None,
        progress: &|_| {},
    }
    .run(&plan, UNTIL_S + 60)
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_object_changed_in_the_range_is_enqueued_once_in_every_time_zone_and_page_size() {
    let since_s = UNTIL_S - 2 * 3600 - 17;
    for (offset, per_page) in [(0, 150), (600, 7), (-480, 20), (840, 1), (-720, 50)] {
        let api = IntercomApi::start(Settings {
            utc_offset_minutes: offset,
            app_id: "app42".into(),
            ..Settings::default()
        })
        .await;
        let expected = populate(&api, 40, since_s);
        let target = Recorder::default();
        let report = reconcile(&api, &target, None, Since::At(since_s * 1000), per_page)
            .await
            .unwrap();
        assert_eq!(report.app_id, "app42");
        assert!(!report.failed(), "{report:?}");
        assert_eq!(target.objects(), expected, "offset {offset}, {per_page} per page");
        assert_eq!(target.got.lock().unwrap().len(), expected.len(), "each once");
        for t in &report.types {
            let in_range = expected
                .iter()
                .filter(|(k, _, _)| format!("{k}s") == t.kind)
                .count() as u64;
            assert_eq!((t.objects, t.enqueued), (in_range, in_range), "{t:?}");
            assert!(
                t.outside_range >= 2,
                "the day-wide filters return some outside: {t:?}"
            );
        }
        // Pages as the page size makes them, and every request within the documented shape.
        let exchanges = api.exchanges();
        assert!(exchanges.iter().all(|e| e.status == 200), "offset {offset}");
        let searches = exchanges.iter().filter(|e| e.kind.is_some()).count() as u64;
        assert_eq!(searches, report.types.iter().map(|t| t.pages).sum::<u64>());
        if per_page == 1 {
            assert!(searches > 3 * 30, "{searches} pages of one");
        }
        let app: Vec<_> = target
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|n| n.envelope.app_id.clone())
            .collect();
        assert!(app
            .iter()
            .all(|a| a.as_ref().map(|a| a.as_str()) == Some("app42")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_pass_resumes_without_holes_and_keeps_its_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::new(Db::open(dir.path().join("state.db")).unwrap());
    let api = IntercomApi::start(Settings::default()).await;
    let since_s = UNTIL_S - 3 * 3600;
    let expected = populate(&api, 30, since_s);
    // Request 1 is GET /me, 2 the first page of conversations, 3 the second: a 400 ends that pass.
    api.fail_request(3, 400);
    let first = Recorder::default();
    // One contact cannot be enqueued either.
    first.refuse.lock().unwrap().insert("contact-4".into());
    let report = reconcile(&api, &first, Some(&store), Since::At(since_s * 1000), 10)
        .await
        .unwrap();
    assert!(report.failed());
    let by_kind = |kind: &str| report.types.iter().find(|t| t.kind == kind).unwrap().clone();
    let (conversations, contacts, tickets) =
        (by_kind("conversations"), by_kind("contacts"), by_kind("tickets"));
    assert!(
        !conversations.complete && !conversations.watermark_advanced,
        "{conversations:?}"
    );
    assert!(conversations.failed[0].1.contains("400"), "{conversations:?}");
    assert!(!contacts.complete && !contacts.watermark_advanced, "{contacts:?}");
    assert_eq!(
        contacts.failed,
        vec![("contact-4".to_owned(), "refused by the test".to_owned())]
    );
    assert!(tickets.complete && tickets.watermark_advanced, "{tickets:?}");
    assert_eq!(
        store.get("mockapp1", ObjectType::Conversation).await.unwrap(),
        None
    );
    assert_eq!(store.get("mockapp1", ObjectType::Contact).await.unwrap(), None);
    assert_eq!(
        store.get("mockapp1", ObjectType::Ticket).await.unwrap(),
        Some(UNTIL_S * 1000)
    );

    // `--since last` cannot continue a type that never completed: it says so.
    let refused = reconcile(&api, &Recorder::default(), Some(&store), Since::Last, 10).await;
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("no watermark for conversations"), "{message}");

    // The same range again: complete, and together the two runs hold every object, the repeated ones
    // under the same notification ids (so the worker processes them once).
    let second = Recorder::default();
    let report = reconcile(&api, &second, Some(&store), Since::At(since_s * 1000), 10)
        .await
        .unwrap();
    assert!(!report.failed(), "{report:?}");
    assert_eq!(second.objects(), expected);
    let ids =
        |r: &Recorder| -> BTreeSet<String> { r.got.lock().unwrap().iter().map(|n| n.id.clone()).collect() };
    assert!(ids(&first).is_subset(&ids(&second)));
    for kind in ObjectType::ALL {
        assert_eq!(
            store.get("mockapp1", kind).await.unwrap(),
            Some(UNTIL_S * 1000),
            "{kind}"
        );
    }

    // Continuing from the watermark reads from it on.
    let third = Recorder::default();
    let report = reconcile(&api, &third, Some(&store), Since::Last, 10)
        .await
        .unwrap();
    assert!(!report.failed(), "{report:?}");
    assert!(
        report.types.iter().all(|t| t.since_ms == UNTIL_S * 1000),
        "{report:?}"
    );
    let at_the_end: BTreeSet<_> = expected
        .iter()
        .filter(|(_, _, t)| *t == UNTIL_S)
        .cloned()
        .collect();
    assert_eq!(third.objects(), at_the_end);

    // A range that starts after the stored watermark does not move it past the gap before it.
    let other = SqliteStore::new(Db::open(dir.path().join("other.db")).unwrap());
    other
        .advance("mockapp1", ObjectType::Ticket, (UNTIL_S - 3 * 3600) * 1000)
        .await
        .unwrap();
    let report = reconcile(
        &api,
        &Recorder::default(),
        Some(&other),
        Since::At((UNTIL_S - 3600) * 1000),
        10,
    )
    .await
    .unwrap();
    let tickets = report.types.iter().find(|t| t.kind == "tickets").unwrap();
    assert!(tickets.complete && !tickets.watermark_advanced, "{tickets:?}");
    assert!(tickets
        .watermark_kept
        .as_deref()
        .unwrap()
        .contains("starts after the stored watermark"));
    assert_eq!(
        other.get("mockapp1", ObjectType::Ticket).await.unwrap(),
        Some((UNTIL_S - 3 * 3600) * 1000)
    );
    // Types without a watermark get one.
    assert_eq!(
        other.get("mockapp1", ObjectType::Contact).await.unwrap(),
        Some(UNTIL_S * 1000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_kept_and_server_errors_are_retried() {
    let api = IntercomApi::start(Settings {
        limit: 4,
        window: Duration::from_secs(1),
        ..Settings::default()
    })
    .await;
    let since_s = UNTIL_S - 3 * 3600;
    let expected = populate(&api, 20, since_s);
    api.fail_request(5, 503);
    api.fail_request(6, 500);
    let target = Recorder::default();
    let started = std::time::Instant::now();
    let report = reconcile(&api, &target, None, Since::At(since_s * 1000), 5)
        .await
        .unwrap();
    assert!(!report.failed(), "{report:?}");
    assert_eq!(target.objects(), expected);
    let exchanges = api.exchanges();
    let limited = exchanges.iter().filter(|e| e.status == 429).count();
    assert_eq!(
        limited,
        0,
        "the pacer kept within 4 a second: {} requests",
        exchanges.len()
    );
    assert_eq!(exchanges.iter().filter(|e| e.status >= 500).count(), 2);
    // 4 a second: the requests cannot all have gone in under their count / 4 seconds, less one window.
    let floor = Duration::from_secs((exchanges.len() as u64 / 4).saturating_sub(1));
    assert!(
        started.elapsed() >= floor,
        "{:?} for {} requests",
        started.elapsed(),
        exchanges.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_named_and_nothing_is_enqueued() {
    let api = IntercomApi::start(Settings {
        token: "another-token".into(),
        ..Settings::default()
    })
    .await;
    populate(&api, 3, UNTIL_S - 3600);
    let target = Recorder::default();
    let error = reconcile(&api, &target, None, Since::At((UNTIL_S - 3600) * 1000), 10)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("GET /me") && error.contains("401"), "{error}");
    assert!(target.got.lock().unwrap().is_empty());
}
