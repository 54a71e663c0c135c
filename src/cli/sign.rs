use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use secrecy::{ExposeSecret, SecretString};

use crate::plumbing::config::{ConfigError, Env, SECRET_HINT};
use crate::receiving::signature::ClientSecrets;

const SECRET_ON_COMMAND_LINE: &str = "--secret is not accepted: a secret on the command line shows in the \
     process list and the shell history; set INTERCOM_CLIENT_SECRET or pass --secret-file PATH";

#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// The file whose exact bytes are signed.
    file: PathBuf,
    #[command(flatten)]
    secret: SecretArgs,
}

/// Where the client secret comes from: a file or INTERCOM_CLIENT_SECRET, never an argument.
#[derive(clap::Args, Debug)]
pub(crate) struct SecretArgs {
    /// A file holding the client secret (several comma-separated, as in INTERCOM_CLIENT_SECRET; the first
    /// signs). Default: INTERCOM_CLIENT_SECRET.
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
    /// Refused with a message saying what to use instead. The value is dropped as it is parsed.
    #[arg(long = "secret", hide = true, num_args = 0..=1, default_missing_value = "",
          value_parser = |_: &str| Ok::<_, std::convert::Infallible>(OnCommandLine))]
    on_command_line: Option<OnCommandLine>,
}

/// A secret that was given as an argument; only its presence is kept.
#[derive(Clone, Debug)]
struct OnCommandLine;

impl SecretArgs {
    /// The secrets from `--secret-file` or `INTERCOM_CLIENT_SECRET`, or an error that says how to give
    /// them.
    pub(crate) fn secrets(&self) -> anyhow::Result<ClientSecrets> {
        if self.on_command_line.is_some() {
            bail!(SECRET_ON_COMMAND_LINE);
        }
        if let Some(path) = &self.secret_file {
            let text = SecretString::from(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the secret file {}", path.display()))?,
            );
            let text = text.expose_secret().trim();
            if text.is_empty() {
                bail!(
                    "the secret file {} is empty: put your Intercom app's client secret in it",
                    path.display()
                );
            }
            return ClientSecrets::parse(text)
                .with_context(|| format!("invalid client secret in {}", path.display()));
        }
        Env::process().client_secrets().map_err(|error| match error {
            ConfigError::Missing { .. } => {
                anyhow::anyhow!("no client secret: {SECRET_HINT}, or pass --secret-file PATH")
            }
            other => other.into(),
        })
    }
}

pub fn run(args: SignArgs) -> anyhow::Result<ExitCode> {
    let secrets = args.secret.secrets()?;
    let body = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    println!("{}", secrets.primary().sign(&body));
    Ok(ExitCode::SUCCESS)
}
