use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::config::{Env, WorkerConfig};
use crate::handlers::default_router;
use crate::intake::DEFAULT_MAX_BODY_BYTES;
use crate::local::server::{serve, ServeOptions};
use crate::telemetry::{self, LogFormat};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The SQLite database file (created if missing).
    #[arg(long, default_value = "./intercom-webhooks.db")]
    db: PathBuf,
    /// Receives after which a failing message moves to the dead-letter table.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    max_receives: u32,
    /// Seconds a received message stays invisible (and the longest a claim is held).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    visibility_timeout: u64,
    /// Batches processed at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pollers: u64,
    /// Largest accepted body in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Log format: JSON lines when stdout is not a terminal (auto), or always json / text.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let env = Env::process();
    let secrets = env.client_secrets()?;
    let worker = WorkerConfig::from_env(&env)?;
    telemetry::init_local(args.log_format);
    let mut settings = worker.settings;
    settings.visibility_timeout = Duration::from_secs(args.visibility_timeout);
    let routes = default_router(worker.notify).context("invalid NOTIFY_TOPICS")?;
    let options = ServeOptions {
        listen: args.listen,
        db: args.db,
        secrets,
        max_body_bytes: args.max_body_bytes,
        max_receives: args.max_receives,
        pollers: args.pollers as usize,
        worker: settings,
        routes,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(options, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler installs");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown requested");
}
