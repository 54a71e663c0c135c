//! `intercom-webhooks events`: send Data Events to Intercom, one (`track`) or a JSON Lines file of them
//! (`bulk`) at the rate limit.

mod lines;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::builder::TypedValueParser as _;
use serde_json::Value;

use crate::events::{
    AccessToken, BulkOptions, BulkSummary, DataEvent, Endpoint, EventsClient, EventsClientBuilder, Region,
    DEFAULT_INTERCOM_VERSION, DEFAULT_MAX_IN_FLIGHT,
};
use crate::plumbing::config::Env;
use lines::{error_chain, parse_lines, read_input, write_failed, LISTED};
use progress::Reporter;

const TOKEN_VAR: &str = "INTERCOM_ACCESS_TOKEN";
const TOKEN_HINT: &str = "set INTERCOM_ACCESS_TOKEN to an access token of your Intercom app that may write \
     events (Developer Hub > your app > Authentication)";

#[derive(clap::Args, Debug)]
#[command(after_help = "The access token is read from INTERCOM_ACCESS_TOKEN, never from an argument.")]
pub struct EventsArgs {
    #[command(subcommand)]
    command: EventsCommand,
    #[command(flatten)]
    connection: ConnectionArgs,
}

#[derive(clap::Subcommand, Debug)]
enum EventsCommand {
    /// Send one event about one contact and print Intercom's answer.
    Track(TrackArgs),
    /// Send every event of a JSON Lines file as fast as the rate limit allows.
    Bulk(BulkArgs),
}

/// Where events go. The access token is read from INTERCOM_ACCESS_TOKEN only, never from an argument,
/// so that it does not show in the process list or the shell history.
#[derive(clap::Args, Debug)]
pub(crate) struct ConnectionArgs {
    /// The workspace's region: us, eu or au.
    #[arg(long, env = "INTERCOM_REGION", default_value = "us", global = true)]
    region: String,
    /// Send to this base URL instead of the region's (a proxy or a mock); the API's paths are appended.
    #[arg(long, value_name = "URL", global = true)]
    base_url: Option<String>,
    /// The Intercom-Version header.
    #[arg(long, env = "INTERCOM_VERSION", default_value = DEFAULT_INTERCOM_VERSION, global = true)]
    intercom_version: String,
}

#[derive(clap::Args, Debug)]
struct TrackArgs {
    /// The event's name, e.g. invited-friend.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    contact: ContactArgs,
    /// A metadata entry, repeatable (at most 10). Numbers stay numbers; a value starting with `{` is read
    /// as JSON (a rich link {"url":…,"value":…} or an amount {"amount":cents,"currency":"eur"});
    /// anything else is a string.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    meta: Vec<(String, Value)>,
    /// When the event happened, in Unix seconds (default: now).
    #[arg(long, value_name = "UNIX")]
    created_at: Option<u64>,
}

/// Exactly one contact identifier.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
struct ContactArgs {
    /// Your identifier for the user.
    #[arg(long)]
    user_id: Option<String>,
    /// Intercom's identifier for the contact (the only one that works for leads).
    #[arg(long)]
    id: Option<String>,
    /// The user's email address.
    #[arg(long)]
    email: Option<String>,
}

#[derive(clap::Args, Debug)]
struct BulkArgs {
    /// A JSON Lines file, one event per line with the API's field names (event_name, created_at,
    /// user_id / id / email, metadata); every line needs its created_at. `-` reads standard input.
    file: PathBuf,
    /// Write the events that failed here, one per line with an "error" field; the file can be given
    /// back to `events bulk` as it is.
    #[arg(long, value_name = "FILE")]
    failed_out: Option<PathBuf>,
    /// Check every line and send nothing.
    #[arg(long)]
    dry_run: bool,
    /// The most requests awaiting an answer at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_IN_FLIGHT,
          value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from))]
    concurrency: usize,
}

pub fn run(args: EventsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        EventsCommand::Track(track) => run_track(&args.connection, track),
        EventsCommand::Bulk(bulk) => run_bulk(&args.connection, bulk),
    }
}

fn run_track(connection: &ConnectionArgs, args: TrackArgs) -> anyhow::Result<ExitCode> {
    let mut builder = DataEvent::builder(args.name);
    let ContactArgs { user_id, id, email } = args.contact;
    if let Some(user_id) = user_id {
        builder = builder.user_id(user_id);
    }
    if let Some(id) = id {
        builder = builder.id(id);
    }
    if let Some(email) = email {
        builder = builder.email(email);
    }
    if let Some(created_at) = args.created_at {
        builder = builder.created_at(created_at);
    }
    for (key, value) in args.meta {
        builder = builder.metadata(key, value);
    }
    let event = builder.build().context("invalid event")?;
    let client = client(connection)?;
    let tracked = runtime()?.block_on(client.track(&event)).with_context(|| {
        format!(
            "event {:?} for {} was not accepted",
            event.event_name(),
            event.contact()
        )
    })?;
    println!(
        "accepted after {} {}: {}",
        tracked.attempts,
        if tracked.attempts == 1 {
            "attempt"
        } else {
            "attempts"
        },
        event.to_json()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_bulk(connection: &ConnectionArgs, args: BulkArgs) -> anyhow::Result<ExitCode> {
    let text = read_input(&args.file)?;
    let (events, line_numbers) = parse_lines(&text)?;
    if args.dry_run {
        println!("{} events valid; dry run, nothing sent", events.len());
        return Ok(ExitCode::SUCCESS);
    }
    if events.is_empty() {
        println!("no events in {}; nothing sent", args.file.display());
        if let Some(path) = &args.failed_out {
            write_failed(path, &[], &line_numbers)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let client = client(connection)?;
    let total = events.len() as u64;
    let options = BulkOptions {
        max_in_flight: args.concurrency,
    };
    let mut reporter = Reporter::new(total);
    let summary = runtime()?.block_on(client.track_all(
        futures::stream::iter(events),
        &options,
        |progress| reporter.update(progress),
    ));
    reporter.finish();

    println!("{}", summary_line(&summary, total));
    if let Some(path) = &args.failed_out {
        write_failed(path, &summary.failures, &line_numbers)?;
    }
    if summary.failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for failure in summary.failures.iter().take(LISTED) {
        eprintln!(
            "line {}: {}",
            line_numbers[failure.index],
            error_chain(&failure.error)
        );
    }
    if summary.failures.len() > LISTED {
        eprintln!("… and {} more", summary.failures.len() - LISTED);
    }
    match &args.failed_out {
        Some(path) => eprintln!(
            "{} events failed; they are in {} (send them again with `events bulk {}`)",
            summary.failures.len(),
            path.display(),
            path.display()
        ),
        None => eprintln!(
            "{} events failed; pass --failed-out FILE to keep them for another try",
            summary.failures.len()
        ),
    }
    Ok(ExitCode::FAILURE)
}

fn client(connection: &ConnectionArgs) -> anyhow::Result<EventsClient> {
    Ok(api_settings(connection, TOKEN_HINT)?.build()?)
}

/// The token (from INTERCOM_ACCESS_TOKEN; `hint` says what it needs), endpoint and version of a client of
/// Intercom's API.
pub(crate) fn api_settings(
    connection: &ConnectionArgs,
    hint: &'static str,
) -> anyhow::Result<EventsClientBuilder> {
    let token = Env::process().required(TOKEN_VAR, hint)?;
    let token = AccessToken::new(token).with_context(|| format!("{TOKEN_VAR} is invalid"))?;
    let endpoint = match &connection.base_url {
        Some(url) => Endpoint::base_url(url)?,
        None => Endpoint::Region(
            connection
                .region
                .parse::<Region>()
                .context("INTERCOM_REGION / --region is invalid")?,
        ),
    };
    Ok(EventsClient::builder(token, endpoint).intercom_version(&connection.intercom_version))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `key=value`: a JSON number stays a number, `{…}` is read as a JSON object, the rest is a string.
fn parse_meta(raw: &str) -> Result<(String, Value), String> {
    let (key, value) = raw
        .split_once('=')
        .ok_or_else(|| format!("{raw:?} is not KEY=VALUE"))?;
    if key.trim().is_empty() {
        return Err(format!("{raw:?} has an empty key"));
    }
    let value = if let Ok(number) = serde_json::from_str::<serde_json::Number>(value) {
        Value::Number(number)
    } else if value.trim_start().starts_with('{') {
        match serde_json::from_str::<Value>(value) {
            Ok(object @ Value::Object(_)) => object,
            _ => {
                return Err(format!(
                    "the value of {key} starts with {{ but is not a JSON object"
                ))
            }
        }
    } else {
        Value::String(value.to_string())
    };
    Ok((key.to_string(), value))
}

fn summary_line(summary: &BulkSummary, total: u64) -> String {
    let seconds = summary.elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        summary.sent as f64 / seconds
    } else {
        0.0
    };
    let mut line = format!(
        "sent {} of {total} events in {seconds:.1}s ({rate:.1}/s); failed {}",
        summary.sent,
        summary.failed_total()
    );
    if !summary.failed.is_empty() {
        let kinds: Vec<String> = summary.failed.iter().map(|(k, n)| format!("{k} {n}")).collect();
        line.push_str(&format!(" ({})", kinds.join(", ")));
    }
    line.push_str(&format!(
        "; retried {}; 429 answers {}; requests {}",
        summary.retried, summary.rate_limited, summary.requests
    ));
    line
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn meta_values_keep_their_type() {
        assert_eq!(parse_meta("seats=3").unwrap(), ("seats".into(), json!(3)));
        assert_eq!(parse_meta("load=3.67").unwrap(), ("load".into(), json!(3.67)));
        assert_eq!(parse_meta("zip=02134").unwrap(), ("zip".into(), json!("02134")));
        assert_eq!(
            parse_meta("plan=pro=yearly").unwrap(),
            ("plan".into(), json!("pro=yearly"))
        );
        assert_eq!(parse_meta("ok=true").unwrap(), ("ok".into(), json!("true")));
        assert_eq!(
            parse_meta(r#"price={"amount":34999,"currency":"eur"}"#).unwrap(),
            ("price".into(), json!({"amount": 34999, "currency": "eur"}))
        );
        assert!(parse_meta("novalue").is_err());
        assert!(parse_meta("=x").is_err());
        assert!(parse_meta("x={oops").is_err());
    }
}
