use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::SECRET_HINT;
use crate::signature::ClientSecrets;

#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// The file whose exact bytes are signed.
    file: PathBuf,
    /// The client secret (default: the first one in INTERCOM_CLIENT_SECRET).
    #[arg(long, env = "INTERCOM_CLIENT_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

pub fn run(args: SignArgs) -> anyhow::Result<ExitCode> {
    let secrets = secrets_from(args.secret.as_deref())?;
    let body = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    println!("{}", secrets.primary().sign(&body));
    Ok(ExitCode::SUCCESS)
}

/// The secrets from `--secret` or `INTERCOM_CLIENT_SECRET`, or an error that says how to set them.
pub(crate) fn secrets_from(secret: Option<&str>) -> anyhow::Result<ClientSecrets> {
    let raw = secret.ok_or_else(|| anyhow::anyhow!("no client secret: {SECRET_HINT}, or pass --secret"))?;
    ClientSecrets::parse(raw).map_err(|e| anyhow::anyhow!("invalid client secret: {e}"))
}
