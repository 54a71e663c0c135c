//! Delivering a notification to a receiver as Intercom does: the exact bytes, signed with the client
//! secret, with Intercom's headers. Used by `send` (test deliveries) and by `reconcile --url`.

use std::time::Duration;

use crate::receiving::signature::ClientSecret;

/// The HTTP client deliveries go through: 10 s per delivery, 5 s to connect.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    crate::plumbing::tls::client_builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .build()
}

/// Signs the exact bytes and posts them with the headers Intercom sends: the receiver's status and the
/// text of its answer.
pub async fn post_signed(
    client: &reqwest::Client,
    url: &str,
    secret: &ClientSecret,
    body: Vec<u8>,
) -> Result<(reqwest::StatusCode, String), reqwest::Error> {
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

/// An absolute http(s) URL; the error says what to write instead.
pub fn receiver_url(text: &str) -> Result<String, String> {
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
