use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::plumbing::clock::parse_time;
use crate::plumbing::clock::unix_ms_now;
use crate::processing::dead_letters::{age, DeadLetters, Filter};
use crate::processing::router::TopicPattern;

#[derive(clap::Args, Debug)]
pub struct DlqArgs {
    /// The local SQLite file (as given to `serve --db`).
    #[arg(long, global = true, conflicts_with_all = ["queue_url", "dlq_url"])]
    db: Option<PathBuf>,
    /// The SQS notifications queue (stack output NotificationsQueueUrl).
    #[arg(long, global = true, env = "QUEUE_URL")]
    queue_url: Option<String>,
    /// The SQS dead-letter queue (stack output DeadLetterQueueUrl).
    #[arg(long, global = true, env = "DEAD_LETTER_QUEUE_URL")]
    dlq_url: Option<String>,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(clap::Args, Debug)]
struct FilterArgs {
    /// Only messages whose topic matches this pattern (e.g. `conversation.*`).
    #[arg(long)]
    topic: Option<String>,
    /// Only messages dead-lettered at or after this time: RFC 3339, Unix seconds, or a duration ago (2h).
    #[arg(long)]
    since: Option<String>,
    /// Only messages dead-lettered before this time.
    #[arg(long)]
    until: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> anyhow::Result<Filter> {
        Ok(Filter {
            topic: self.topic.as_deref().map(TopicPattern::parse).transpose()?,
            since_ms: self
                .since
                .as_deref()
                .map(parse_time)
                .transpose()
                .map_err(anyhow::Error::msg)?,
            until_ms: self
                .until
                .as_deref()
                .map(parse_time)
                .transpose()
                .map_err(anyhow::Error::msg)?,
        })
    }
}

#[derive(clap::Subcommand, Debug)]
enum DlqCommand {
    /// One line per dead-lettered message: id, notification id, topic, receives, age, reason.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many lines.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// JSON (one array) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// The full stored notification and its attributes.
    Show {
        /// The id `dlq list` shows.
        id: String,
    },
    /// Move matching messages back to the main queue to be processed again.
    Redrive {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many messages.
        #[arg(long, default_value_t = usize::MAX, hide_default_value = true)]
        max: usize,
        /// Only count what would move.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn run(args: DlqArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = backend(&args).await?;
        match args.command {
            DlqCommand::List { filter, limit, json } => {
                let listed = store.list(&filter.filter()?, limit).await?;
                report_scan(listed.scanned);
                let entries = listed.found;
                if json {
                    println!("{}", serde_json::to_string_pretty(&entries)?);
                } else {
                    let now = unix_ms_now();
                    println!(
                        "{:<38} {:<44} {:<28} {:>8} {:>5}  REASON",
                        "ID", "NOTIFICATION", "TOPIC", "RECEIVES", "AGE"
                    );
                    for e in &entries {
                        println!(
                            "{:<38} {:<44} {:<28} {:>8} {:>5}  {}",
                            e.id,
                            e.notification_id.as_deref().unwrap_or("-"),
                            e.topic.as_deref().unwrap_or("-"),
                            e.receive_count,
                            age(now, e.dead_lettered_at_ms),
                            e.reason
                        );
                    }
                    eprintln!("{} message(s)", entries.len());
                }
                Ok(ExitCode::SUCCESS)
            }
            DlqCommand::Show { id } => {
                let shown = store.show(&id).await?;
                report_scan(shown.scanned);
                match shown.found {
                    Some(entry) => {
                        println!("{}", serde_json::to_string_pretty(&entry)?);
                        Ok(ExitCode::SUCCESS)
                    }
                    None => anyhow::bail!("no dead-lettered message has the id {id}"),
                }
            }
            DlqCommand::Redrive { filter, max, dry_run } => {
                let redriven = store.redrive(&filter.filter()?, max, dry_run).await?;
                report_scan(redriven.scanned);
                let report = redriven.found;
                if dry_run {
                    println!(
                        "would move {}, skipped {} (dry run: nothing moved)",
                        report.would_move, report.skipped
                    );
                } else {
                    println!(
                        "moved {}, skipped {}, failed {}",
                        report.moved, report.skipped, report.failed
                    );
                }
                Ok(if report.failed == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
        }
    })
}

/// On SQS every command reads the whole dead-letter queue: say how much it read.
fn report_scan(scanned: Option<usize>) {
    if let Some(count) = scanned {
        eprintln!("scanned {count} message(s) of the dead-letter queue");
    }
}

async fn backend(args: &DlqArgs) -> anyhow::Result<Box<dyn DeadLetters>> {
    if let Some(path) = &args.db {
        if !path.exists() {
            anyhow::bail!("{} does not exist", path.display());
        }
        let db = crate::local::Db::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        return Ok(Box::new(crate::local::SqliteQueue::new(db, 5)));
    }
    match (&args.queue_url, &args.dlq_url) {
        (Some(queue), Some(dlq)) => {
            let sdk = crate::aws::load_config(crate::aws::CallBudget::WORKER).await;
            Ok(Box::new(crate::aws::sqs::SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), queue, dlq)))
        }
        _ => anyhow::bail!(
            "say which dead-letter queue: --db FILE for the local server's file, or --queue-url and --dlq-url \
             (or QUEUE_URL and DEAD_LETTER_QUEUE_URL) for SQS; a SAM stack's outputs NotificationsQueueUrl and \
             DeadLetterQueueUrl hold them"
        ),
    }
}
