use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::local::inspector::{check_token, InspectorOptions, DEFAULT_KEEP, MAX_KEEP};
use crate::local::server::{serve, ConnectionLimits, ServeOptions};
use crate::local::Retention;
use crate::plumbing::config::{
    worker_secrets, Env, ParameterError, ParameterStore, WorkerConfig, CLIENT_SECRET,
};
use crate::plumbing::telemetry::{self, LogFormat};
use crate::processing::handlers::{default_router, Builtins};
use crate::processing::worker::WorkerSettings;
use crate::receiving::intake::DEFAULT_MAX_BODY_BYTES;
use crate::receiving::signature::ClientSecrets;

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
    /// How much lower the CPU priority of the pollers and handlers is than the HTTP intake's (a nice
    /// value on Linux, 0 to 19). Higher keeps deliveries answered first when the machine is saturated;
    /// lower lets the worker keep up through the intake's bursts, at some cost to the intake's latency.
    #[arg(long, default_value_t = crate::local::server::DEFAULT_WORKER_NICE, value_parser = clap::value_parser!(u8).range(0..=19))]
    worker_nice: u8,
    /// Largest accepted body in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Log format: JSON lines when stdout is not a terminal (auto), or always json / text.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    /// Close a connection that has not sent a whole request head within this (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = duration)]
    header_read_timeout: Duration,
    /// Answer 408 to a request whose body has not arrived within this.
    #[arg(long, default_value = "10s", value_parser = duration)]
    body_read_timeout: Duration,
    /// Answer 503 (Intercom retries) when the database has not stored a delivery within this.
    #[arg(long, default_value = "4s", value_parser = duration)]
    store_timeout: Duration,
    /// Connections open at once; more wait until one closes.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    max_connections: u64,
    /// How long a processed notification id is remembered (default: IDEMPOTENCY_RETENTION_DAYS, 7 days).
    #[arg(long, value_parser = duration)]
    idempotency_retention: Option<Duration>,
    /// Dead letters older than this are deleted.
    #[arg(long, default_value = "14days", value_parser = duration)]
    dead_letter_retention: Duration,
    /// Do not keep the mirror (the newest version of every conversation, contact, ticket and company) in
    /// the database file. State handlers then run for every notification.
    #[arg(long)]
    no_mirror: bool,
    /// Do not serve the inspector page at `/` nor record deliveries for it.
    #[arg(long)]
    no_inspector: bool,
    /// Deliveries the inspector keeps, with their bodies, in the database file.
    #[arg(long, default_value_t = DEFAULT_KEEP as u64, value_parser = clap::value_parser!(u64).range(1..=MAX_KEEP as u64))]
    inspector_keep: u64,
    /// A token every request to the inspector must carry (at least 16 characters). Required to open it
    /// when listening on a non-loopback address. Prefer the variable: the command line is visible to
    /// other users of the machine.
    #[arg(long, env = "INSPECTOR_TOKEN", hide_env_values = true)]
    inspector_token: Option<String>,
    /// How often expired idempotency records and old dead letters are purged.
    #[arg(long, default_value = "60s", value_parser = duration)]
    purge_interval: Duration,
}

/// The worker's settings with `serve`'s options applied. A processed id must be remembered at least as
/// long as a claim can be held, or a redelivery could run its handlers again.
fn local_settings(mut settings: WorkerSettings, args: &ServeArgs) -> anyhow::Result<WorkerSettings> {
    settings.visibility_timeout = Duration::from_secs(args.visibility_timeout);
    if let Some(retention) = args.idempotency_retention {
        settings.retention = retention;
    }
    if settings.retention < settings.visibility_timeout {
        anyhow::bail!(
            "the idempotency retention ({}) must be at least the visibility timeout ({} s): a shorter one \
             forgets a notification while it may still be processed",
            humantime::format_duration(settings.retention),
            args.visibility_timeout
        );
    }
    Ok(settings)
}

fn inspector_options(args: &ServeArgs) -> anyhow::Result<Option<InspectorOptions>> {
    if args.no_inspector {
        return Ok(None);
    }
    let token = match args.inspector_token.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => {
            check_token(token)
                .map_err(|why| anyhow::anyhow!("--inspector-token / INSPECTOR_TOKEN: {why}"))?;
            Some(secrecy::SecretString::from(token.to_owned()))
        }
        None => None,
    };
    Ok(Some(InspectorOptions {
        keep: args.inspector_keep as usize,
        token,
    }))
}

/// A positive duration: `10s`, `500ms`, `14days`.
fn duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be longer than zero".into()),
        Err(e) => Err(format!("{e} (write e.g. 10s, 500ms, 14days)")),
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let inspector = inspector_options(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (secrets, worker) = runtime.block_on(configuration())?;
    telemetry::init_local(args.log_format);
    let settings = local_settings(worker.settings, &args)?;
    // The mirror's handler is added by `serve`, which opens the database.
    let routes = default_router(Builtins {
        notify: worker.notify,
        forwards: worker.forwards,
        mirror: None,
        others: Vec::new(),
    })
    .context("invalid NOTIFY_TOPICS or FORWARD_n_TOPICS")?;
    let options = ServeOptions {
        listen: args.listen,
        db: args.db,
        secrets,
        max_body_bytes: args.max_body_bytes,
        max_receives: args.max_receives,
        pollers: args.pollers as usize,
        worker_nice: args.worker_nice,
        worker: settings,
        routes,
        mirror: !args.no_mirror,
        limits: ConnectionLimits {
            header_read_timeout: args.header_read_timeout,
            body_read_timeout: args.body_read_timeout,
            store_timeout: args.store_timeout,
            max_connections: args.max_connections as usize,
        },
        retention: Retention {
            dead_letters: args.dead_letter_retention,
            interval: args.purge_interval,
        },
        inspector,
    };
    runtime.block_on(serve(options, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// The client secrets and the worker's settings from the environment, as the Lambdas read them: the
/// secrets (client secret, notify URL, forward targets' secrets) directly, or from SSM parameters named by
/// their `_PARAMETER` variables (only then is the AWS configuration loaded).
async fn configuration() -> anyhow::Result<(ClientSecrets, WorkerConfig)> {
    let env = Env::process();
    let mut secrets = vec![CLIENT_SECRET];
    secrets.extend(worker_secrets());
    let resolved = if secrets.iter().any(|s| env.optional(s.parameter).is_some()) {
        let sdk = crate::aws::load_config(crate::aws::CallBudget::WORKER).await;
        let parameters = crate::aws::ssm::SsmParameters::from_config(&sdk);
        env.resolve(&secrets, &parameters).await?
    } else {
        env.resolve(&secrets, &NoParameters).await?
    };
    Ok((
        resolved.parse(|env| env.client_secrets())?,
        resolved.parse(WorkerConfig::from_env)?,
    ))
}

/// Asked for nothing: no `_PARAMETER` variable is set.
struct NoParameters;

#[async_trait::async_trait]
impl ParameterStore for NoParameters {
    async fn value(&self, _: &str) -> Result<String, ParameterError> {
        Err(ParameterError::NotFound)
    }
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
