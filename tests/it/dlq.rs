//! Dead-letter inspection and redrive against both backends: SQS on the AWS emulator and the local
//! SQLite file. Redriven notifications are then processed once.

use std::sync::Arc;
use std::time::Duration;

use crate::support::{create_queue, create_table, drain, notification_body, unique};
use intercom_webhooks::aws::dynamodb::DynamoStore;
use intercom_webhooks::aws::sqs::SqsQueue;
use intercom_webhooks::aws::sqs_dlq::ScanSettings;
use intercom_webhooks::local::{Db, SqliteQueue, SqliteStore};
use intercom_webhooks::plumbing::clock::{unix_ms_now, SystemClock};
use intercom_webhooks::plumbing::metrics::Metrics;
use intercom_webhooks::processing::dead_letters::{DeadLetters, Filter, RedriveReport, MAX_RECEIVES_REASON};
use intercom_webhooks::processing::idempotency::IdempotencyStore;
use intercom_webhooks::processing::router::TopicPattern;
use intercom_webhooks::processing::worker::{Outcome, Worker, WorkerSettings};
use intercom_webhooks::receiving::notification::Envelope;
use intercom_webhooks::receiving::queue::attr;
use intercom_webhooks::receiving::queue::{DeadLetterQueue, Message, Queue, QueueConsumer};
use serde_json::json;

fn message(id: &str, topic: &str) -> Message {
    let body = notification_body(id, topic, json!({"type": "conversation", "id": "1"}));
    Message::for_notification(&body, &Envelope::parse(&body).unwrap())
}

/// Puts three dead letters in: two conversations (one older than `cutoff`) and one contact.
async fn seed(dlq: &dyn DeadLetterQueue) -> i64 {
    dlq.dead_letter(
        &message("notif_c1", "conversation.user.created"),
        "handler notify: 400",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cutoff = unix_ms_now();
    dlq.dead_letter(
        &message("notif_c2", "conversation.user.replied"),
        "handler notify: 400",
    )
    .await
    .unwrap();
    dlq.dead_letter(&message("notif_k1", "contact.created"), "handler crm: permanent")
        .await
        .unwrap();
    cutoff
}

/// The emulator answers each receive from the whole queue (SQS may sample a part of it), so there one
/// empty answer ends a scan: two seconds less per command.
fn on_the_emulator(queue: SqsQueue) -> SqsQueue {
    queue.with_dead_letter_scan(ScanSettings {
        empty_receives: 1,
        ..ScanSettings::default()
    })
}

fn topic(pattern: &str) -> Filter {
    Filter {
        topic: Some(TopicPattern::parse(pattern).unwrap()),
        ..Filter::default()
    }
}

async fn contract(store: &dyn DeadLetters, dlq: &dyn DeadLetterQueue) {
    let cutoff = seed(dlq).await;

    // Listing filters and never consumes.
    let all = store.list(&Filter::default(), 100).await.unwrap().found;
    assert_eq!(all.len(), 3);
    let again = store.list(&Filter::default(), 100).await.unwrap().found;
    assert_eq!(again.len(), 3, "listing does not consume");
    let conversations = store.list(&topic("conversation.*"), 100).await.unwrap().found;
    let mut ids: Vec<_> = conversations
        .iter()
        .filter_map(|e| e.notification_id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, ["notif_c1", "notif_c2"]);
    let recent = Filter {
        since_ms: Some(cutoff),
        ..topic("conversation.*")
    };
    let recent = store.list(&recent, 100).await.unwrap().found;
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].notification_id.as_deref(), Some("notif_c2"));
    assert_eq!(recent[0].reason, "handler notify: 400");
    let old = Filter {
        until_ms: Some(cutoff),
        ..Filter::default()
    };
    assert_eq!(store.list(&old, 100).await.unwrap().found.len(), 1);
    assert_eq!(
        store.list(&Filter::default(), 2).await.unwrap().found.len(),
        2,
        "--limit"
    );

    // Show.
    let shown = store.show(&recent[0].id).await.unwrap().found.unwrap();
    assert_eq!(shown.topic.as_deref(), Some("conversation.user.replied"));
    assert!(shown.body.contains("notif_c2"));
    assert!(store.show("no-such-id").await.unwrap().found.is_none());

    // Dry run: nothing moves.
    let report = store
        .redrive(&topic("conversation.*"), usize::MAX, true)
        .await
        .unwrap()
        .found;
    assert_eq!(
        report,
        RedriveReport {
            would_move: 2,
            skipped: 1,
            ..RedriveReport::default()
        }
    );
    assert_eq!(store.list(&Filter::default(), 100).await.unwrap().found.len(), 3);
}

async fn redriven_are_processed_once<Q>(
    queue: &Q,
    store: Arc<dyn IdempotencyStore>,
    dead: Arc<dyn DeadLetterQueue>,
) where
    Q: Queue + QueueConsumer + DeadLetters,
{
    // Only the recent conversation moves.
    let report = queue
        .redrive(
            &Filter {
                since_ms: Some(unix_ms_now() - 60_000),
                ..topic("conversation.user.replied")
            },
            usize::MAX,
            false,
        )
        .await
        .unwrap()
        .found;
    assert_eq!((report.moved, report.skipped, report.failed), (1, 2, 0));
    let left = queue.list(&Filter::default(), 100).await.unwrap().found;
    assert_eq!(left.len(), 2);
    assert!(left
        .iter()
        .all(|e| e.notification_id.as_deref() != Some("notif_c2")));

    // The worker processes it (no idempotency record blocks a redriven notification).
    let deliveries = queue.receive(10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(
        deliveries[0].record.message.attribute(attr::REASON),
        None,
        "dead-letter bookkeeping dropped"
    );
    let worker = Worker::new(
        store,
        dead,
        intercom_webhooks::processing::handlers::default_router(Default::default()).unwrap(),
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
        WorkerSettings::default(),
    );
    let result = worker
        .process_batch(vec![deliveries[0].record.clone()], i64::MAX)
        .await;
    assert_eq!(result.outcomes[0].1, Outcome::Processed);
    queue.ack(&deliveries[0].receipt).await.unwrap();
    // A second copy (an interrupted redrive that sent but did not delete) is a duplicate.
    let again = worker
        .process_batch(vec![deliveries[0].record.clone()], i64::MAX)
        .await;
    assert_eq!(again.outcomes[0].1, Outcome::Duplicate);

    // --max bounds the move.
    let report = queue.redrive(&Filter::default(), 1, false).await.unwrap().found;
    assert_eq!((report.moved, report.skipped), (1, 1));
}

#[tokio::test]
async fn sqlite_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("dlq.db")).unwrap();
    let queue = SqliteQueue::new(db.clone(), 5);
    contract(&queue, &queue).await;
    redriven_are_processed_once(&queue, Arc::new(SqliteStore::new(db)), Arc::new(queue.clone())).await;
}

#[tokio::test]
async fn sqs_dead_letters() {
    let sdk = crate::support::aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let main = create_queue(&sqs, &unique("dlq-main")).await;
    let dlq = create_queue(&sqs, &unique("dlq")).await;
    let table = unique("dlq-idem");
    create_table(&dynamo, &table).await;
    let queue = on_the_emulator(SqsQueue::new(sqs.clone(), &main, &dlq));
    contract(&queue, &queue).await;
    redriven_are_processed_once(
        &queue,
        Arc::new(DynamoStore::new(dynamo, table, Arc::new(SystemClock))),
        Arc::new(queue.clone()),
    )
    .await;
}

/// A redrive whose sends fail loses nothing: every message stays in the dead-letter queue.
#[tokio::test]
async fn an_interrupted_sqs_redrive_loses_nothing() {
    let sdk = crate::support::aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dlq = create_queue(&sqs, &unique("dlq")).await;
    let broken = on_the_emulator(SqsQueue::new(sqs.clone(), format!("{}-deleted", dlq), &dlq));
    seed(&broken).await;
    let report = broken
        .redrive(&Filter::default(), usize::MAX, false)
        .await
        .unwrap()
        .found;
    assert_eq!((report.moved, report.failed), (0, 3));
    assert_eq!(broken.list(&Filter::default(), 100).await.unwrap().found.len(), 3);
}

/// Messages SQS itself moved after maxReceiveCount carry no reason attribute: listed as such.
#[tokio::test]
async fn messages_moved_by_sqs_redrive_show_max_receives_exceeded() {
    let sdk = crate::support::aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dlq = create_queue(&sqs, &unique("dlq")).await;
    let queue = on_the_emulator(SqsQueue::new(sqs.clone(), &dlq, &dlq));
    queue.send(&message("notif_m", "ticket.created")).await.unwrap();
    let listed = queue.list(&Filter::default(), 10).await.unwrap().found;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].reason, MAX_RECEIVES_REASON);
    assert_eq!(listed[0].topic.as_deref(), Some("ticket.created"));
    assert_eq!(drain(&sqs, &dlq).await.len(), 1);
}

/// More messages than one receive returns, and a hold shorter than the scan: each is listed once, none
/// was received twice (the hold was renewed), and the scan says how many it read. Redrive then moves
/// every one.
#[tokio::test]
async fn a_long_sqs_scan_lists_each_message_once_and_counts_them() {
    let sdk = crate::support::aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let main = create_queue(&sqs, &unique("dlq-main")).await;
    let dlq = create_queue(&sqs, &unique("dlq")).await;
    let queue = SqsQueue::new(sqs.clone(), &main, &dlq).with_dead_letter_scan(ScanSettings {
        hold: Duration::from_secs(2),
        ..ScanSettings::default()
    });
    let mut expected = Vec::new();
    for i in 0..35 {
        let id = format!("notif_many_{i:02}");
        queue
            .dead_letter(&message(&id, "conversation.user.created"), "handler notify: 400")
            .await
            .unwrap();
        expected.push(id);
    }

    let answer = queue.list(&Filter::default(), 100).await.unwrap();
    assert_eq!(answer.scanned, Some(35));
    let listed = answer.found;
    let mut ids: Vec<String> = listed.iter().filter_map(|e| e.notification_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, expected, "every message exactly once");
    assert!(
        listed.iter().all(|e| e.receive_count == 0),
        "no message was received twice during the scan: {:?}",
        listed.iter().map(|e| e.receive_count).collect::<Vec<_>>()
    );

    let redriven = queue
        .redrive(&Filter::default(), usize::MAX, false)
        .await
        .unwrap();
    assert_eq!(redriven.scanned, Some(35));
    let report = redriven.found;
    assert_eq!((report.moved, report.skipped, report.failed), (35, 0, 0));
    assert_eq!(drain(&sqs, &main).await.len(), 35);
    let after = queue.list(&Filter::default(), 100).await.unwrap();
    assert!(after.found.is_empty());
    assert_eq!(after.scanned, Some(0));
}

/// The command line reports on stderr how many messages it read; stdout keeps its format.
#[tokio::test]
async fn dlq_commands_on_sqs_report_how_many_messages_they_scanned() {
    let sdk = crate::support::aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let main = create_queue(&sqs, &unique("dlq-main")).await;
    let dlq = create_queue(&sqs, &unique("dlq")).await;
    let queue = SqsQueue::new(sqs.clone(), &main, &dlq);
    seed(&queue).await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_intercom-webhooks"))
            .arg("dlq")
            .args(args)
            .args(["--queue-url", &main, "--dlq-url", &dlq])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (ok, stdout, stderr) = run(&["list", "--topic", "conversation.*"]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("ID "), "{stdout}");
    assert_eq!(stdout.lines().count(), 3, "a header and two lines: {stdout}");
    assert_eq!(
        stderr,
        "scanned 3 message(s) of the dead-letter queue\n2 message(s)\n"
    );
    let (ok, stdout, stderr) = run(&["redrive", "--dry-run"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "would move 3, skipped 0 (dry run: nothing moved)\n");
    assert_eq!(stderr, "scanned 3 message(s) of the dead-letter queue\n");
    let (ok, _, stderr) = run(&["show", "no-such-id"]);
    assert!(!ok);
    assert!(
        stderr.starts_with("scanned 3 message(s) of the dead-letter queue\nerror: no dead-lettered message"),
        "{stderr}"
    );
}
