use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::sign::SecretArgs;
use crate::receiving::signature::ClientSecret;

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
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    let mut failed = 0;
    for file in &files {
        let body = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let body = if args.fresh_id {
            with_fresh_id(&body, file)?
        } else {
            body
        };
        let outcome = runtime.block_on(post(&client, &args.url, secrets.primary(), body));
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

/// Signs the exact bytes and posts them with the headers Intercom sends.
async fn post(
    client: &reqwest::Client,
    url: &str,
    secret: &ClientSecret,
    body: Vec<u8>,
) -> anyhow::Result<(reqwest::StatusCode, String)> {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "Intercom-Webhooks")
        .header("x-hub-signature", secret.sign(&body))
        .body(body)
        .send()
        .await?;
    let status = response.status();
    Ok((status, response.text().await.unwrap_or_default()))
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

/// The notification with a new `id` (`notif_<uuid>`), pretty-printed as Intercom does. A `ping` keeps
/// its null id.
fn with_fresh_id(body: &[u8], file: &Path) -> anyhow::Result<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .with_context(|| format!("{} is not JSON; cannot give it a fresh id", file.display()))?;
    let object = value
        .as_object_mut()
        .with_context(|| format!("{} is not a JSON object", file.display()))?;
    if object.get("topic").and_then(|t| t.as_str()) != Some("ping") {
        object.insert("id".into(), format!("notif_{}", uuid::Uuid::new_v4()).into());
    }
    Ok(serde_json::to_vec_pretty(&value)?)
}

/// An absolute http(s) URL; the error says what to write instead.
fn receiver_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(text.to_owned()),
        Ok(url) if !matches!(url.scheme(), "http" | "https") && !text.contains("://") => Err(format!(
            "{text:?} has no scheme: write http://{text}"
        )),
        Ok(url) => Err(format!(
            "{text:?} is not an http or https URL (scheme {:?}): write e.g. http://127.0.0.1:8080/webhooks/intercom",
            url.scheme()
        )),
        Err(url::ParseError::RelativeUrlWithoutBase) => Err(format!(
            "{text:?} has no scheme: write http://{text}"
        )),
        Err(e) => Err(format!(
            "{text:?} is not a URL ({e}): write e.g. http://127.0.0.1:8080/webhooks/intercom"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::receiver_url;

    #[test]
    fn a_url_without_a_scheme_is_refused_with_what_to_write() {
        assert_eq!(
            receiver_url("127.0.0.1:8080/webhooks/intercom").unwrap_err(),
            "\"127.0.0.1:8080/webhooks/intercom\" has no scheme: write http://127.0.0.1:8080/webhooks/intercom"
        );
        assert_eq!(
            receiver_url("localhost:8080/webhooks/intercom").unwrap_err(),
            "\"localhost:8080/webhooks/intercom\" has no scheme: write http://localhost:8080/webhooks/intercom"
        );
        assert!(receiver_url("ftp://x/")
            .unwrap_err()
            .contains("not an http or https URL"));
        assert_eq!(
            receiver_url("http://127.0.0.1:8080/webhooks/intercom").unwrap(),
            "http://127.0.0.1:8080/webhooks/intercom"
        );
        assert!(receiver_url("https://example.com/").is_ok());
    }
}
