use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::sign::SecretArgs;
use crate::receiving::deliver::{self, receiver_url};

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// JSON files, or folders whose `.json` files are all sent (in name order).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The receiver's URL, e.g. http://127.0.0.1:8080/webhooks/intercom
    #[arg(long, value_parser = receiver_url)]
    url: String,
    #[command(flatten)]
    secret: SecretArgs,
    /// Give each notification a new unique id (so repeated sends are not deduplicated); the changed
    /// bytes are what is signed.
    #[arg(long)]
    fresh_id: bool,
}

pub fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let secrets = args.secret.secrets()?;
    let files = expand(&args.paths)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = deliver::client()?;
    let mut failed = 0;
    for file in &files {
        let body = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let body = if args.fresh_id {
            with_fresh_id(&body, file)?
        } else {
            body
        };
        let outcome = runtime.block_on(deliver::post_signed(&client, &args.url, secrets.primary(), body));
        match outcome {
            Ok((status, text)) => {
                println!("{}  {}  {}", status.as_u16(), file.display(), text.trim());
                if !status.is_success() {
                    failed += 1;
                }
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot deliver {} to {}", file.display(), args.url))
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
                .collect();
            found.sort();
            if found.is_empty() {
                anyhow::bail!("{} holds no .json files", path.display());
            }
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// The notification with a new `id` (`notif_<uuid>`).
fn with_fresh_id(body: &[u8], file: &Path) -> anyhow::Result<Vec<u8>> {
    let id = format!("notif_{}", uuid::Uuid::new_v4());
    crate::receiving::notification::with_id(body, &id)
        .with_context(|| format!("cannot give {} a fresh id", file.display()))
}
