//! `intercom-webhooks mirror`: read the mirror (the newest version of every conversation, contact,
//! ticket and company) from `serve`'s file or from the stack's DynamoDB table.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::plumbing::clock::parse_time;
use crate::processing::mirror::{Mirror, MirrorEntry, MIRRORED_TYPES};

#[derive(clap::Args, Debug)]
pub struct MirrorArgs {
    /// The local SQLite file (as given to `serve --db`).
    #[arg(long, global = true, conflicts_with = "table")]
    db: Option<PathBuf>,
    /// The DynamoDB mirror table (stack output MirrorTableName).
    #[arg(long, global = true, env = "MIRROR_TABLE")]
    table: Option<String>,
    #[command(subcommand)]
    command: MirrorCommand,
}

#[derive(clap::Subcommand, Debug)]
enum MirrorCommand {
    /// One object as JSON: {"type", "id", "app_id", "updated_at", "deleted", "truncated", "item"}.
    Get {
        /// conversation, contact, ticket or company.
        #[arg(value_parser = object_type)]
        kind: String,
        id: String,
        /// The app, when the object id is mirrored for more than one.
        #[arg(long)]
        app: Option<String>,
    },
    /// Objects of one type as JSON lines, newest first.
    List {
        #[arg(value_parser = object_type)]
        kind: String,
        /// Only objects updated (or deleted) at or after this: RFC 3339, Unix seconds, or a duration ago (2h).
        #[arg(long, value_parser = parse_time)]
        updated_since: Option<i64>,
        /// At most this many lines.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Objects and tombstones per type, and the stale deliveries refused.
    Stats {
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
}

/// A mirrored type, singular (`contacts` is taken for `contact`).
fn object_type(text: &str) -> Result<String, String> {
    let text = text.trim().to_ascii_lowercase();
    let singular = match text.strip_suffix("ies") {
        Some(stem) => format!("{stem}y"),
        None => text.strip_suffix('s').unwrap_or(&text).to_owned(),
    };
    MIRRORED_TYPES
        .iter()
        .find(|t| **t == text || **t == singular)
        .map(|t| (*t).to_owned())
        .ok_or_else(|| format!("the mirror keeps {}", MIRRORED_TYPES.join(", ")))
}

pub fn run(args: MirrorArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mirror = backend(&args).await?;
        match args.command {
            MirrorCommand::Get { kind, id, app } => {
                let mut found = mirror.get(&kind, &id).await?;
                if let Some(app) = &app {
                    found.retain(|e| &e.key.app_id == app);
                }
                match found.len() {
                    0 => {
                        let within = app.map(|a| format!(" of app {a}")).unwrap_or_default();
                        eprintln!("error: no {kind} {id}{within} in the mirror");
                        Ok(ExitCode::FAILURE)
                    }
                    1 => {
                        println!("{}", serde_json::to_string_pretty(&found[0].to_json())?);
                        Ok(ExitCode::SUCCESS)
                    }
                    _ => anyhow::bail!(
                        "{kind} {id} is mirrored for several apps ({}): say which with --app",
                        apps(&found)
                    ),
                }
            }
            MirrorCommand::List {
                kind,
                updated_since,
                limit,
            } => {
                for entry in mirror.list(&kind, updated_since, limit).await? {
                    println!("{}", serde_json::to_string(&entry.to_json())?);
                }
                Ok(ExitCode::SUCCESS)
            }
            MirrorCommand::Stats { json } => {
                let stats = mirror.stats().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&stats)?);
                } else {
                    println!("{:<14} {:>10} {:>10}", "TYPE", "OBJECTS", "TOMBSTONES");
                    for (kind, counts) in &stats.types {
                        println!("{kind:<14} {:>10} {:>10}", counts.objects, counts.tombstones);
                    }
                    println!("stale deliveries refused: {}", stats.stale_refused);
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn apps(found: &[MirrorEntry]) -> String {
    found
        .iter()
        .map(|e| e.key.app_id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn backend(args: &MirrorArgs) -> anyhow::Result<Arc<dyn Mirror>> {
    if let Some(path) = &args.db {
        if !path.exists() {
            anyhow::bail!("{} does not exist", path.display());
        }
        let db = crate::local::Db::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        return Ok(Arc::new(crate::local::SqliteMirror::new(db)));
    }
    let Some(table) = &args.table else {
        anyhow::bail!(
            "say which mirror: --db FILE for the local server's file, or --table NAME (or MIRROR_TABLE) for \
             DynamoDB; a SAM stack's output MirrorTableName holds it"
        )
    };
    let sdk = crate::aws::load_config(crate::aws::CallBudget::WORKER).await;
    Ok(Arc::new(crate::aws::mirror::DynamoMirror::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        table,
    )))
}

#[cfg(test)]
mod tests {
    use super::object_type;

    #[test]
    fn types_singular_or_plural() {
        assert_eq!(object_type("contacts").unwrap(), "contact");
        assert_eq!(object_type("Conversation").unwrap(), "conversation");
        assert_eq!(object_type("companies").unwrap(), "company");
        assert_eq!(
            object_type("tags").unwrap_err(),
            "the mirror keeps conversation, contact, ticket, company"
        );
    }
}
