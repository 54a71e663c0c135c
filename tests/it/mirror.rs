//! The mirror: one behavioural suite run against every adapter, SQLite and DynamoDB on the AWS emulator
//! (out-of-order versions, ties, tombstones, several apps, racing writers, listing across pages, every
//! fixture), and the worker's use of it (`stale` outcomes, state handlers skipped).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use intercom_webhooks::aws::mirror::DynamoMirror;
use intercom_webhooks::local::{Db, SqliteMirror};
use intercom_webhooks::processing::handler::{Handler, HandlerContext, HandlerError, Wants};
use intercom_webhooks::processing::mirror::{
    extract, id_text, Applied, Extracted, Mirror, MirrorEntry, MirrorHandler, MirrorKey, MirrorStats,
    MirrorWrite,
};
use intercom_webhooks::receiving::notification::Notification;
use serde_json::{json, Value};

use crate::support::{
    create_indexed_mirror_table, create_mirror_table, fixtures, observed_dynamo, scan_items, unique,
    Operations,
};

/// A notification about `kind`/`id` whose item was updated at `updated_at` (any shape), created at
/// `created_at` (Unix seconds).
pub fn versioned(kind: &str, id: &str, updated_at: Value, created_at: i64, marker: &str) -> Notification {
    let body = json!({
        "type": "notification_event", "app_id": "abc123def", "id": format!("notif_{marker}"),
        "topic": format!("{kind}.updated"), "created_at": created_at,
        "data": {"type": "notification_event_data",
                 "item": {"type": kind, "id": id, "updated_at": updated_at, "marker": marker}},
    });
    Notification::parse(&serde_json::to_vec(&body).unwrap()).unwrap()
}

fn deletion(kind: &str, id: &str, created_at: i64) -> Notification {
    let item = match kind {
        "conversation" => json!({"type": "conversation", "conversation_id": id}),
        _ => json!({"type": kind, "id": id, "deleted": true}),
    };
    let body = json!({
        "type": "notification_event", "app_id": "abc123def", "id": format!("notif_del_{id}_{created_at}"),
        "topic": format!("{kind}.deleted"), "created_at": created_at,
        "data": {"type": "notification_event_data", "item": item},
    });
    Notification::parse(&serde_json::to_vec(&body).unwrap()).unwrap()
}

fn write_of(n: &Notification) -> MirrorWrite {
    match extract(n) {
        Extracted::Write(w) => w,
        other => panic!("expected a write: {other:?}"),
    }
}

async fn marker(mirror: &dyn Mirror, kind: &str, id: &str) -> Option<String> {
    let found = mirror.get(kind, id).await.unwrap();
    assert!(found.len() <= 1, "{found:?}");
    found.first().map(|e| {
        if e.deleted {
            "deleted".to_owned()
        } else {
            e.item["marker"].as_str().unwrap_or_default().to_owned()
        }
    })
}

/// The suite every adapter passes. `prefix` keeps object ids apart on a shared table.
pub async fn contract(mirror: Arc<dyn Mirror>, prefix: &str) {
    let id = |s: &str| format!("{prefix}-{s}");

    // Out of order: the newest wins whatever the order of arrival; an older one is refused.
    let c1 = id("c1");
    let v1 = write_of(&versioned(
        "conversation",
        &c1,
        json!(1_700_000_100),
        1_700_000_101,
        "v1",
    ));
    let v2 = write_of(&versioned(
        "conversation",
        &c1,
        json!(1_700_000_200),
        1_700_000_201,
        "v2",
    ));
    assert_eq!(mirror.apply(&v2).await.unwrap(), Applied::Written);
    assert_eq!(mirror.apply(&v1).await.unwrap(), Applied::Stale);
    assert_eq!(marker(&*mirror, "conversation", &c1).await.as_deref(), Some("v2"));
    // The same version again is a no-op.
    assert_eq!(mirror.apply(&v2).await.unwrap(), Applied::Unchanged);

    // Versions in both shapes compare as instants: ISO-8601 with milliseconds against Unix seconds.
    let k1 = id("k1");
    let iso = write_of(&versioned(
        "contact",
        &k1,
        json!("2026-01-10T04:22:28.238+00:00"),
        1_768_018_949,
        "iso",
    ));
    let secs_before = write_of(&versioned(
        "contact",
        &k1,
        json!(1_768_018_948),
        1_768_018_950,
        "secs-before",
    ));
    let secs_after = write_of(&versioned(
        "contact",
        &k1,
        json!(1_768_018_949),
        1_768_018_949,
        "secs-after",
    ));
    assert_eq!(mirror.apply(&iso).await.unwrap(), Applied::Written);
    assert_eq!(
        mirror.apply(&secs_before).await.unwrap(),
        Applied::Stale,
        "…28.000 is before …28.238"
    );
    assert_eq!(
        mirror.apply(&secs_after).await.unwrap(),
        Applied::Written,
        "…29.000 is after …28.238"
    );
    assert_eq!(
        marker(&*mirror, "contact", &k1).await.as_deref(),
        Some("secs-after")
    );

    // Ties on updated_at are broken by the notification's created_at.
    let t1 = id("t1");
    let early = write_of(&versioned(
        "ticket",
        &t1,
        json!(1_700_000_000),
        1_700_000_010,
        "early",
    ));
    let late = write_of(&versioned(
        "ticket",
        &t1,
        json!(1_700_000_000),
        1_700_000_020,
        "late",
    ));
    assert_eq!(mirror.apply(&late).await.unwrap(), Applied::Written);
    assert_eq!(mirror.apply(&early).await.unwrap(), Applied::Stale);
    assert_eq!(marker(&*mirror, "ticket", &t1).await.as_deref(), Some("late"));

    // Tombstones: an older update never resurrects a deleted object; a later one is newer.
    for kind in ["contact", "conversation"] {
        let d = id(&format!("d-{kind}"));
        let before = write_of(&versioned(
            kind,
            &d,
            json!(1_700_000_100),
            1_700_000_100,
            "before",
        ));
        assert_eq!(mirror.apply(&before).await.unwrap(), Applied::Written);
        let tombstone = write_of(&deletion(kind, &d, 1_700_000_500));
        assert!(tombstone.deleted);
        assert_eq!(mirror.apply(&tombstone).await.unwrap(), Applied::Written);
        let late_update = write_of(&versioned(
            kind,
            &d,
            json!(1_700_000_400),
            1_700_000_600,
            "late-update",
        ));
        assert_eq!(
            mirror.apply(&late_update).await.unwrap(),
            Applied::Stale,
            "{kind}"
        );
        let entry = mirror.get(kind, &d).await.unwrap().remove(0);
        assert!(entry.deleted, "{entry:?}");
        assert!(entry.item.is_null());
        assert_eq!(entry.version.at_ms, 1_700_000_500_999);
        // The deletion delivered twice is a no-op.
        assert_eq!(mirror.apply(&tombstone).await.unwrap(), Applied::Unchanged);
    }

    // One object in several apps, one of them unnamed: `get` finds it in each, ordered by app.
    let multi = id("multi");
    for app in ["app-b", "", "app-a"] {
        let mut w = write_of(&versioned(
            "company",
            &multi,
            json!(1_700_000_000),
            1_700_000_001,
            &format!("in-{app}"),
        ));
        w.key.app_id = app.to_owned();
        assert_eq!(mirror.apply(&w).await.unwrap(), Applied::Written, "{app:?}");
    }
    let found = mirror.get("company", &multi).await.unwrap();
    let apps: Vec<&str> = found.iter().map(|e| e.key.app_id.as_str()).collect();
    assert_eq!(apps, ["", "app-a", "app-b"]);
    assert_eq!(found[0].item["marker"], "in-");
    assert!(mirror.get("company", &id("absent")).await.unwrap().is_empty());

    // Racing writers with different versions: the newest always wins.
    for round in 0..5 {
        let r = id(&format!("race{round}"));
        let writes: Vec<MirrorWrite> = (0..16)
            .map(|i| {
                write_of(&versioned(
                    "conversation",
                    &r,
                    json!(1_700_000_000 + (i * 7 + round) % 16),
                    1_700_001_000 + i,
                    &format!("w{i}"),
                ))
            })
            .collect();
        let newest = writes.iter().max_by_key(|w| w.version).unwrap().clone();
        let tasks: Vec<_> = writes
            .into_iter()
            .map(|w| {
                let mirror = mirror.clone();
                tokio::spawn(async move { mirror.apply(&w).await.unwrap() })
            })
            .collect();
        let mut written = 0;
        for task in tasks {
            if task.await.unwrap() == Applied::Written {
                written += 1;
            }
        }
        assert!(written >= 1);
        let stored = mirror.get("conversation", &r).await.unwrap().remove(0);
        assert_eq!(stored.version, newest.version, "round {round}");
        assert_eq!(stored.notification_id, newest.notification_id);
    }

    // Listing: newest first, bounded, from a time on.
    let listed = mirror
        .list("conversation", Some(1_700_000_150_000), 1000)
        .await
        .unwrap();
    let ours: Vec<&str> = listed
        .iter()
        .filter(|e| e.key.id.starts_with(prefix))
        .map(|e| e.key.id.as_str())
        .collect();
    assert!(
        ours.contains(&c1.as_str()) && ours.contains(&id("d-conversation").as_str()),
        "{ours:?}"
    );
    assert!(
        listed.windows(2).all(|w| w[0].version >= w[1].version),
        "newest first"
    );
    assert!(listed.iter().all(|e| e.version.at_ms >= 1_700_000_150_000));
    assert_eq!(mirror.list("conversation", None, 2).await.unwrap().len(), 2);

    let stats = mirror.stats().await.unwrap();
    assert!(stats.stale_refused >= 6, "{stats:?}");
    assert!(stats.types["conversation"].tombstones >= 1, "{stats:?}");
}

/// Every fixture: a whole object of a mirrored type is stored as delivered, the rest are not written.
pub async fn every_fixture(mirror: Arc<dyn Mirror>) {
    for (name, body) in fixtures() {
        let Ok(n) = Notification::parse(&body) else {
            continue; // ping
        };
        let item = n.item().clone();
        match extract(&n) {
            Extracted::Write(w) => {
                let applied = mirror.apply(&w).await.unwrap();
                let stored = mirror.get(&w.key.kind, &w.key.id).await.unwrap();
                let stored = stored.iter().find(|e| e.key == w.key).unwrap();
                // Two fixtures are the same conversation; by file name the closed one comes first.
                match applied {
                    Applied::Stale => assert!(stored.version > w.version, "{name}"),
                    _ => assert_eq!(stored.version, w.version, "{name}"),
                }
                if w.deleted {
                    assert!(stored.deleted, "{name}");
                } else if stored.notification_id == w.notification_id {
                    assert_eq!(stored.item, item, "{name}: stored as delivered");
                }
            }
            Extracted::Unversioned(key) => panic!("{name}: every mirrored fixture has a version ({key})"),
            Extracted::NotMirrored => {
                let kind = item["type"].as_str().unwrap_or_default();
                assert!(
                    ["contact_tag", "user", "ping"].contains(&kind),
                    "{name}: {kind} should be mirrored"
                );
            }
        }
    }
}

/// Listing many objects of a type, on a mirror that holds no company yet: newest first across pages,
/// ties on `updated_at` cut at the limit by the notification's time, bounded, from a time on.
pub async fn listing(mirror: Arc<dyn Mirror>) {
    // 150 companies in groups of ten sharing an `updated_at`, each with its own notification time.
    let base = 1_600_000_000;
    for i in 0..150 {
        let w = write_of(&versioned(
            "company",
            &format!("co{i}"),
            json!(base + i / 10),
            base + 1000 + i,
            &format!("m{i}"),
        ));
        assert_eq!(mirror.apply(&w).await.unwrap(), Applied::Written);
    }
    let ids = |entries: Vec<MirrorEntry>| -> Vec<String> { entries.into_iter().map(|e| e.key.id).collect() };
    let newest = |n: i64| -> Vec<String> { (150 - n..150).rev().map(|i| format!("co{i}")).collect() };
    for limit in [1, 7, 10, 125, 150] {
        let listed = ids(mirror.list("company", None, limit).await.unwrap());
        assert_eq!(listed, newest(limit as i64), "limit {limit}");
    }
    assert_eq!(
        ids(mirror.list("company", None, 1000).await.unwrap()),
        newest(150)
    );
    assert!(mirror.list("company", None, 0).await.unwrap().is_empty());
    let since = ids(mirror
        .list("company", Some((base + 10) * 1000), 1000)
        .await
        .unwrap());
    assert_eq!(since, newest(50));
    let since = ids(mirror
        .list("company", Some((base + 10) * 1000), 15)
        .await
        .unwrap());
    assert_eq!(since, newest(15));
    let entry = mirror.list("company", None, 1).await.unwrap().remove(0);
    assert_eq!(entry.item["marker"], "m149");
    assert!(mirror.list("ticket", None, 10).await.unwrap().is_empty());
}

/// What [`every_fixture`] leaves in an empty mirror: conversation (2 objects), contact (created +
/// deleted), ticket.
fn assert_fixture_counts(stats: &MirrorStats) {
    assert_eq!(stats.types["conversation"].objects, 2, "{stats:?}");
    assert_eq!(stats.types["contact"].objects, 2, "{stats:?}");
    assert_eq!(stats.types["contact"].tombstones, 1, "{stats:?}");
    assert_eq!(stats.types["ticket"].objects, 1, "{stats:?}");
}

fn sqlite_mirror(dir: &tempfile::TempDir) -> Arc<dyn Mirror> {
    Arc::new(SqliteMirror::new(Db::open(dir.path().join("mirror.db")).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_mirror_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(sqlite_mirror(&dir), "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_mirror_keeps_every_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = sqlite_mirror(&dir);
    every_fixture(mirror.clone()).await;
    assert_fixture_counts(&mirror.stats().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_mirror_listing() {
    let dir = tempfile::tempdir().unwrap();
    listing(sqlite_mirror(&dir)).await;
}

/// A mirror on a new table in the AWS emulator (the template's default shape, without the `by_type`
/// index), and the table's client and name.
async fn dynamo_mirror() -> (Arc<dyn Mirror>, aws_sdk_dynamodb::Client, String) {
    let sdk = crate::support::aws_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let table = unique("mirror");
    create_mirror_table(&dynamo, &table).await;
    (Arc::new(DynamoMirror::new(dynamo.clone(), &table)), dynamo, table)
}

/// A mirror on a new table (with the `by_type` index when `indexed`, as `MirrorIndex=true` makes it)
/// whose client records its operations, and the table's client and name.
async fn observed_dynamo_mirror(
    indexed: bool,
) -> (Arc<dyn Mirror>, Operations, aws_sdk_dynamodb::Client, String) {
    let sdk = crate::support::aws_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let table = unique("mirror-listed");
    if indexed {
        create_indexed_mirror_table(&dynamo, &table).await;
    } else {
        create_mirror_table(&dynamo, &table).await;
    }
    let operations = Operations::default();
    let observed = observed_dynamo(&sdk, &operations);
    (
        Arc::new(DynamoMirror::new(observed, &table)),
        operations,
        dynamo,
        table,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_mirror_contract() {
    let (mirror, dynamo, table) = dynamo_mirror().await;
    contract(mirror.clone(), "dynamo").await;
    // The table's shape, which other readers of the table rely on.
    let mut counters = 0;
    for item in scan_items(&dynamo, &table).await {
        let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
        if text("pk").as_deref() == Some("#counters") {
            counters += 1;
            assert_eq!(text("app_id").as_deref(), Some("stale_refused"));
            let count: u64 = item["count"].as_n().unwrap().parse().unwrap();
            assert_eq!(count, mirror.stats().await.unwrap().stale_refused);
            continue;
        }
        let (kind, id) = (text("type").unwrap(), text("id").unwrap());
        assert_eq!(text("pk").unwrap(), format!("{kind}#{id}"), "{item:?}");
        assert!(!text("app_id").unwrap().is_empty(), "{item:?}");
        assert!(text("notification_id").is_some(), "{item:?}");
        for number in ["version_ms", "tiebreak_ms"] {
            assert!(item[number].as_n().is_ok(), "{number}: {item:?}");
        }
        let deleted = *item["deleted"].as_bool().unwrap();
        assert!(item["truncated"].as_bool().is_ok(), "{item:?}");
        assert_eq!(item.contains_key("item"), !deleted, "{item:?}");
        if !deleted {
            // One gzip member, which any reader of the table can open.
            let stored = item["item"].as_b().unwrap().as_ref();
            assert_eq!(&stored[..3], [0x1f, 0x8b, 0x08], "{item:?}");
            let mut json = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(stored), &mut json).unwrap();
            let object: Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(id_text(&object["id"]), Some(id), "{item:?}");
        }
    }
    assert_eq!(counters, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_mirror_keeps_every_fixture() {
    let (mirror, _, _) = dynamo_mirror().await;
    every_fixture(mirror.clone()).await;
    assert_fixture_counts(&mirror.stats().await.unwrap());
}

/// Without the `by_type` index (the template's default) a listing scans the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_mirror_listing() {
    let (mirror, operations, _, _) = observed_dynamo_mirror(false).await;
    listing(mirror.clone()).await;
    operations.take();
    assert_eq!(mirror.list("company", None, 3).await.unwrap().len(), 3);
    // The index's Query is refused: the table is scanned.
    assert_eq!(operations.take(), ["Query", "Scan"]);
    // A table that is not there is an error, not an empty list.
    let sdk = crate::support::aws_config().await;
    let missing = DynamoMirror::new(aws_sdk_dynamodb::Client::new(&sdk), unique("no-such-mirror"));
    let error = missing.list("company", None, 3).await.unwrap_err().to_string();
    assert!(error.contains("ResourceNotFoundException"), "{error}");
}

/// With `MirrorIndex=true` a listing queries the index, then reads the items it names: the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_mirror_listing_through_the_index() {
    let (mirror, operations, dynamo, table) = observed_dynamo_mirror(true).await;
    listing(mirror.clone()).await;
    operations.take();
    assert_eq!(mirror.list("company", None, 3).await.unwrap().len(), 3);
    assert_eq!(operations.take(), ["Query", "BatchGetItem"]);
    let newest = dynamo
        .query()
        .table_name(&table)
        .index_name("by_type")
        .key_condition_expression("#type = :type")
        .expression_attribute_names("#type", "type")
        .expression_attribute_values(
            ":type",
            aws_sdk_dynamodb::types::AttributeValue::S("company".into()),
        )
        .scan_index_forward(false)
        .limit(1)
        .send()
        .await
        .unwrap();
    assert_eq!(newest.items()[0]["pk"].as_s().unwrap(), "company#co149");
}

/// `intercom-webhooks mirror … --table` reads the DynamoDB mirror as `--db` reads the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_command_reads_the_dynamodb_table() {
    let (mirror, _, table) = dynamo_mirror().await;
    every_fixture(mirror.clone()).await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_intercom-webhooks"))
            .arg("mirror")
            .args(args)
            .args(["--table", &table])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (ok, out, err) = run(&["get", "ticket", "215472629311235"]);
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (got["type"].as_str(), got["app_id"].as_str()),
        (Some("ticket"), Some("abc123def"))
    );
    assert_eq!(got["item"]["id"], "215472629311235");
    let (ok, out, err) = run(&["list", "conversations", "--limit", "1"]);
    assert!(ok, "{err}");
    let newest: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        newest["id"], "21322009097",
        "the closed conversation is the newest"
    );
    let (ok, out, _) = run(&["stats", "--json"]);
    assert!(ok);
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["types"]["contact"]["tombstones"], 1, "{stats}");
    let (ok, _, err) = run(&["get", "contact", "nobody"]);
    assert!(!ok && err.contains("no contact nobody in the mirror"), "{err}");
}

/// A state handler that counts its calls by marker.
#[derive(Default)]
struct CrmSync {
    calls: AtomicUsize,
}

#[async_trait]
impl Handler for CrmSync {
    fn name(&self) -> &str {
        "crm"
    }
    fn wants(&self) -> Wants {
        Wants::Newest
    }
    async fn handle(&self, _: &Notification, _: &HandlerContext) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// The handler compresses an item as its store asks: LZ4 in `serve`'s file (fast; a file is not billed by
/// size), gzip in DynamoDB (billed per started KB). `mirror get` reads both, and either store reads the
/// other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_store_gets_items_in_its_own_codec() {
    use intercom_webhooks::processing::handler::Versions;
    let n = versioned("contact", "codec-1", json!(1_700_000_000), 1_700_000_001, "m");
    let gzip = |bytes: &[u8]| bytes.starts_with(&[0x1f, 0x8b, 0x08]);

    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_mirror(&dir);
    MirrorHandler::new(sqlite.clone()).record(&n).await.unwrap();
    let stored: Vec<u8> = rusqlite::Connection::open(dir.path().join("mirror.db"))
        .unwrap()
        .query_row("SELECT item FROM mirror WHERE id = 'codec-1'", [], |r| r.get(0))
        .unwrap();
    assert!(!gzip(&stored));
    let json = lz4_flex::decompress_size_prepended(&stored).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&json).unwrap()["marker"], "m");

    let (table_mirror, dynamo, table) = dynamo_mirror().await;
    MirrorHandler::new(table_mirror.clone()).record(&n).await.unwrap();
    let item = scan_items(&dynamo, &table)
        .await
        .into_iter()
        .find(|item| item.get("id").and_then(|v| v.as_s().ok()).map(String::as_str) == Some("codec-1"))
        .unwrap();
    assert!(gzip(item["item"].as_b().unwrap().as_ref()));

    // A gzip item in the file and an LZ4 one in the table (as the table held before gzip) read back.
    let newer = versioned("contact", "codec-1", json!(1_700_000_100), 1_700_000_101, "newer");
    let mut newer_write = write_of(&newer);
    assert!(gzip(newer_write.item.as_ref().unwrap()));
    assert_eq!(sqlite.apply(&newer_write).await.unwrap(), Applied::Written);
    newer_write.item = Some(lz4_flex::compress_prepend_size(
        &serde_json::to_vec(newer.item()).unwrap(),
    ));
    assert_eq!(table_mirror.apply(&newer_write).await.unwrap(), Applied::Written);
    for mirror in [sqlite, table_mirror] {
        let entries = mirror.get("contact", "codec-1").await.unwrap();
        assert_eq!(entries[0].item["marker"], "newer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_notification_ends_stale_and_skips_state_handlers_only() {
    use intercom_webhooks::memory::{MemoryQueue, MemoryStore};
    use intercom_webhooks::plumbing::clock::SystemClock;
    use intercom_webhooks::plumbing::metrics::Metrics;
    use intercom_webhooks::processing::router::Router;
    use intercom_webhooks::processing::worker::{Outcome, Worker, WorkerSettings};
    use intercom_webhooks::receiving::queue::{Message, Record};

    let dir = tempfile::tempdir().unwrap();
    let mirror = sqlite_mirror(&dir);
    let crm = Arc::new(CrmSync::default());
    let events = Arc::new(crate::support::scripted::Scripted::default());
    let metrics = Arc::new(Metrics::new());
    let router = Router::new()
        .route("conversation.*", events.clone())
        .unwrap()
        .route("conversation.*", crm.clone())
        .unwrap()
        // Registered last: the worker still runs the mirror first.
        .route_all(
            ["conversation.*"],
            Arc::new(MirrorHandler::new(mirror.clone()).with_metrics(metrics.clone())),
        )
        .unwrap();
    let clock = Arc::new(SystemClock);
    let worker = Worker::new(
        Arc::new(MemoryStore::new(clock.clone())),
        Arc::new(MemoryQueue::new(5, clock.clone())),
        router,
        clock,
        metrics.clone(),
        WorkerSettings::default(),
    );
    let record = |n: &Notification, marker: &str| {
        let body = json!({
            "type": "notification_event", "app_id": "abc123def", "id": n.id.as_str(), "topic": n.topic().as_str(),
            "created_at": n.envelope.created_at, "data": n.data,
        });
        Record {
            message_id: format!("m-{marker}"),
            message: Message {
                body: body.to_string(),
                attributes: Default::default(),
            },
            receive_count: 1,
        }
    };
    let deadline = intercom_webhooks::plumbing::clock::unix_ms_now() + 60_000;
    let newer = versioned("conversation", "w1", json!(1_700_000_200), 1_700_000_201, "newer");
    let older = versioned("conversation", "w1", json!(1_700_000_100), 1_700_000_101, "older");
    assert_eq!(
        worker.process(&record(&newer, "newer"), deadline).await,
        Outcome::Processed
    );
    assert_eq!(
        worker.process(&record(&older, "older"), deadline).await,
        Outcome::Stale
    );
    // The event handler ran for both, the state handler only for the newest.
    assert_eq!(events.calls("notif_newer") + events.calls("notif_older"), 2);
    assert_eq!(crm.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        mirror.get("conversation", "w1").await.unwrap()[0].item["marker"],
        "newer"
    );
    // A stale notification is completed: delivered again, it is a duplicate.
    assert_eq!(
        worker.process(&record(&older, "older-again"), deadline).await,
        Outcome::Duplicate
    );
    assert_eq!(
        metrics.get(
            "processed",
            &[("outcome", "stale"), ("topic", "conversation.updated")]
        ),
        1
    );
    assert_eq!(
        metrics.get("mirror_writes", &[("type", "conversation"), ("result", "stale")]),
        1
    );
    let key = MirrorKey {
        app_id: "abc123def".into(),
        kind: "conversation".into(),
        id: "w1".into(),
    };
    assert_eq!(mirror.get("conversation", "w1").await.unwrap()[0].key, key);
}
