//! `intercom-webhooks reconcile`: ask Intercom's search API what changed in a time range and feed each
//! object through the pipeline as a `<type>.reconciled` notification.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::events::{api_settings, ConnectionArgs};
use crate::plumbing::clock::{parse_time, unix_ms_now};
use crate::plumbing::config::Env;
use crate::processing::mirror::{rfc3339, Mirror};
use crate::receiving::deliver::receiver_url;
use crate::reconcile::run::{Plan, Reconciler, Report, Since, TypeReport};
use crate::reconcile::search::SearchClient;
use crate::reconcile::target::{QueueTarget, ReceiverTarget, SqsTarget, Target};
use crate::reconcile::watermark::Watermarks;
use crate::reconcile::ObjectType;

const TOKEN_HINT: &str = "set INTERCOM_ACCESS_TOKEN to an access token of your Intercom app that may read \
     conversations, contacts and tickets (Developer Hub > your app > Authentication)";

#[derive(clap::Args, Debug)]
#[command(
    after_help = "The access token is read from INTERCOM_ACCESS_TOKEN, never from an argument. \
    With --url, the client secret is read from INTERCOM_CLIENT_SECRET."
)]
pub struct ReconcileArgs {
    /// Start of the range: a duration back from now (2h, 3d), RFC 3339, Unix seconds, or `last` (the end
    /// of the last complete pass, per type).
    #[arg(long)]
    since: String,
    /// End of the range (default: now).
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
    /// The types to search, comma-separated.
    #[arg(long, default_value = "conversations,contacts,tickets", value_delimiter = ',')]
    types: Vec<ObjectType>,
    /// Subtracted from the start of the range: search results lag writes by a few minutes.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    overlap: Duration,
    /// Put the notifications in `serve`'s SQLite queue (safe while serve runs on it); watermarks and the
    /// mirror are read from the same file.
    #[arg(long, conflicts_with_all = ["queue_url", "url"])]
    db: Option<PathBuf>,
    /// Send them to this SQS queue (the stack output NotificationsQueueUrl), in batches of 10.
    #[arg(long, conflicts_with = "url")]
    queue_url: Option<String>,
    /// POST them to this receiver, signed with INTERCOM_CLIENT_SECRET as Intercom would.
    #[arg(long, value_parser = receiver_url)]
    url: Option<String>,
    /// The DynamoDB idempotency table (stack output IdempotencyTableName) that keeps the watermarks, with
    /// --queue-url or --url.
    #[arg(long, env = "IDEMPOTENCY_TABLE", conflicts_with = "db")]
    table: Option<String>,
    /// Count what would be enqueued; enqueue nothing, store no watermark.
    #[arg(long)]
    dry_run: bool,
    /// The summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: ConnectionArgs,
}

/// What the command works with, opened from the arguments.
struct Backends {
    target: Box<dyn Target>,
    watermarks: Option<Box<dyn Watermarks>>,
    mirror: Option<Arc<dyn Mirror>>,
}

async fn backends(args: &ReconcileArgs) -> anyhow::Result<Backends> {
    if let Some(path) = &args.db {
        if !path.exists() {
            anyhow::bail!(
                "{} does not exist (start `serve --db {}` once to create it)",
                path.display(),
                path.display()
            );
        }
        let db = crate::local::Db::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        return Ok(Backends {
            target: Box::new(QueueTarget(Arc::new(crate::local::SqliteQueue::new(
                db.clone(),
                5,
            )))),
            watermarks: Some(Box::new(crate::local::SqliteStore::new(db.clone()))),
            mirror: Some(Arc::new(crate::local::SqliteMirror::new(db))),
        });
    }
    let aws = if args.queue_url.is_some() || args.table.is_some() {
        Some(crate::aws::load_config(crate::aws::CallBudget::WORKER).await)
    } else {
        None
    };
    let watermarks: Option<Box<dyn Watermarks>> = match (&args.table, &aws) {
        (Some(table), Some(sdk)) => Some(Box::new(crate::aws::dynamodb::DynamoStore::new(
            aws_sdk_dynamodb::Client::new(sdk),
            table,
            Arc::new(crate::plumbing::clock::SystemClock),
        ))),
        _ => None,
    };
    let target: Box<dyn Target> = match (&args.queue_url, &args.url, &aws) {
        (Some(queue_url), _, Some(sdk)) => Box::new(SqsTarget {
            client: aws_sdk_sqs::Client::new(sdk),
            queue_url: queue_url.clone(),
        }),
        (None, Some(url), _) => {
            let secrets = Env::process().client_secrets()?;
            Box::new(ReceiverTarget::new(url.clone(), secrets.primary().clone())?)
        }
        _ => anyhow::bail!(
            "say where the notifications go: --db FILE (serve's file), --queue-url URL (SQS) or --url URL (a receiver)"
        ),
    };
    Ok(Backends {
        target,
        watermarks,
        mirror: None,
    })
}

pub fn run(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let since = match args.since.trim() {
        "last" => Since::Last,
        text => Since::At(parse_time(text).map_err(anyhow::Error::msg)?),
    };
    let now_ms = unix_ms_now();
    let until_ms = args.until.unwrap_or(now_ms);
    if let Since::At(since_ms) = since {
        if since_ms >= until_ms {
            anyhow::bail!(
                "--since ({}) must be before --until ({})",
                rfc3339(since_ms),
                rfc3339(until_ms)
            );
        }
    }
    let settings = api_settings(&args.connection, TOKEN_HINT)?;
    let search = SearchClient::new(&settings)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        let backends = backends(&args).await?;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let progress = |t: &TypeReport| {
            if let Some(bar) = &bar {
                bar.set_message(format!(
                    "{}: page {}, {} in range, {} enqueued, {} already current",
                    t.kind, t.pages, t.objects, t.enqueued, t.already_current
                ));
            }
        };
        let reconciler = Reconciler {
            search: &search,
            target: backends.target.as_ref(),
            watermarks: backends.watermarks.as_deref(),
            mirror: backends.mirror.as_deref(),
            progress: &progress,
        };
        let mut types = args.types.clone();
        types.sort();
        types.dedup();
        let plan = Plan {
            types,
            since,
            until_ms,
            overlap: args.overlap,
            dry_run: args.dry_run,
        };
        let report = reconciler.run(&plan, now_ms / 1000).await;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        anyhow::Ok(report?)
    })?;
    print_summary(&report, &args)?;
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_summary(report: &Report, args: &ReconcileArgs) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!(
            "app {}{}",
            report.app_id,
            if args.dry_run {
                " (dry run: nothing enqueued)"
            } else {
                ""
            }
        );
        println!(
            "{:<14} {:>6} {:>8} {:>9} {:>16} {:>7}  RANGE",
            "TYPE", "PAGES", "OBJECTS", "ENQUEUED", "ALREADY CURRENT", "FAILED"
        );
        for t in &report.types {
            println!(
                "{:<14} {:>6} {:>8} {:>9} {:>16} {:>7}  {} .. {}{}",
                t.kind,
                t.pages,
                t.objects,
                t.enqueued,
                t.already_current,
                t.failed.len(),
                rfc3339(t.since_ms),
                rfc3339(t.until_ms),
                if t.watermark_advanced {
                    " (watermark stored)"
                } else {
                    ""
                }
            );
        }
    }
    for t in &report.types {
        for (id, reason) in &t.failed {
            let reason: String = reason
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            if id.is_empty() {
                eprintln!("error: {}: {reason}", t.kind);
            } else {
                eprintln!("error: {} {id}: {reason}", t.kind);
            }
        }
        if !t.complete {
            eprintln!(
                "error: {} incomplete: the watermark was not advanced; run again (already enqueued objects are not processed twice)",
                t.kind
            );
        }
    }
    for t in &report.types {
        if let Some(why) = &t.watermark_kept {
            eprintln!("note: {}: watermark kept: {why}", t.kind);
        }
    }
    if !report.failed()
        && !args.dry_run
        && report
            .types
            .iter()
            .any(|t| !t.watermark_advanced && t.watermark_kept.is_none())
    {
        eprintln!("note: no watermark stored (give --db, or --table for the DynamoDB idempotency table, to continue with --since last)");
    }
    Ok(())
}
