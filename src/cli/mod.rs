//! The `intercom-webhooks` command line. Each subcommand lives in its own module; this one parses
//! arguments and reports errors.

mod dlq;
mod events;
mod mirror;
mod reconcile;
mod send;
mod serve;
mod sign;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "intercom-webhooks",
    version,
    about = "Receive Intercom webhooks reliably; run the pipeline locally; send test deliveries."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send Data Events to Intercom: one (`track`) or a JSON Lines file of them (`bulk`), at the rate limit.
    Events(events::EventsArgs),
    /// Run the whole pipeline on this machine: receive deliveries over HTTP and process them, with the
    /// queue and the idempotency store in one SQLite file.
    Serve(serve::ServeArgs),
    /// Inspect dead-lettered notifications and send them back for processing (SQS or the local file).
    Dlq(dlq::DlqArgs),
    /// Read the mirror: the newest version of every conversation, contact, ticket and company (the local
    /// file or DynamoDB).
    Mirror(mirror::MirrorArgs),
    /// Fill what Intercom never redelivered: search its API for objects changed in a time range and
    /// process each as a `<type>.reconciled` notification.
    Reconcile(reconcile::ReconcileArgs),
    /// Sign JSON files as Intercom would and POST them to a receiver.
    Send(send::SendArgs),
    /// Print the X-Hub-Signature header value for a file's exact bytes.
    Sign(sign::SignArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Events(args) => events::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Send(args) => send::run(args),
        Command::Dlq(args) => dlq::run(args),
        Command::Mirror(args) => mirror::run(args),
        Command::Reconcile(args) => reconcile::run(args),
        Command::Sign(args) => sign::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
