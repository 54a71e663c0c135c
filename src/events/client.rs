//! `POST /events`: one HTTP client (one connection pool) per process, typed errors, and retries that are
//! safe because Intercom ignores a duplicate of the same contact, name and `created_at`.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};

use super::endpoint::Endpoint;
use super::error::{ClientConfigError, TrackError};
use super::event::DataEvent;
use super::retry::{RateLimit, Retry, RetryPolicy};

/// The API version sent in `Intercom-Version` unless configured: the version of the OpenAPI description
/// the request shape was checked against.
pub const DEFAULT_INTERCOM_VERSION: &str = "2.15";
/// Bound on one request, connect to last byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const VERSION_HEADER: &str = "intercom-version";

/// An Intercom access token. Its `Debug` never shows the value, and the header carrying it is marked
/// sensitive so that no HTTP log shows it either.
#[derive(Clone, Debug)]
pub struct AccessToken(SecretString);

impl AccessToken {
    /// Rejects an empty token and one that cannot be sent in a header.
    pub fn new(value: impl Into<String>) -> Result<Self, ClientConfigError> {
        let value = SecretString::from(value.into().trim());
        if value.expose_secret().is_empty() {
            return Err(ClientConfigError::EmptyToken);
        }
        if !value.expose_secret().chars().all(|c| c.is_ascii_graphic()) {
            return Err(ClientConfigError::TokenNotHeaderSafe);
        }
        Ok(Self(value))
    }
}

/// The token itself, for callers that must hand it on (never log it).
impl ExposeSecret<str> for AccessToken {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

/// A successful `track`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// Requests made, the accepted one included.
    pub attempts: u32,
    /// The rate-limit headers of the accepting answer.
    pub rate_limit: RateLimit,
}

/// One request and what came of it.
#[derive(Debug)]
pub(crate) struct Attempt {
    pub result: Result<(), TrackError>,
    pub rate_limit: RateLimit,
}

/// Sends Data Events to Intercom. Cheap to share by reference; one connection pool.
#[derive(Clone)]
pub struct EventsClient {
    http: reqwest::Client,
    url: Url,
    version: String,
    retry: RetryPolicy,
}

impl fmt::Debug for EventsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventsClient")
            .field("url", &self.url.as_str())
            .field("version", &self.version)
            .field("retry", &self.retry)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Settings for an [`EventsClient`]; every one but the token and endpoint has a default.
#[derive(Clone, Debug)]
pub struct EventsClientBuilder {
    token: AccessToken,
    endpoint: Endpoint,
    version: String,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
}

impl EventsClientBuilder {
    /// The `Intercom-Version` header (default [`DEFAULT_INTERCOM_VERSION`]).
    pub fn intercom_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Bound on one request (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn build(self) -> Result<EventsClient, ClientConfigError> {
        let (http, version) = self.http_client()?;
        Ok(EventsClient {
            http,
            url: self.endpoint.events_url(),
            version,
            retry: self.retry,
        })
    }

    /// The HTTP client every request to Intercom's API goes through: the token (marked sensitive), the
    /// `Intercom-Version` header, JSON, the timeouts. Also used by `reconcile`'s search client.
    pub(crate) fn http_client(&self) -> Result<(reqwest::Client, String), ClientConfigError> {
        let version = self.version.trim().to_string();
        let version_value = HeaderValue::from_str(&version)
            .ok()
            .filter(|_| !version.is_empty())
            .ok_or_else(|| ClientConfigError::InvalidVersion {
                value: self.version.clone(),
            })?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.token.expose_secret()))
            .map_err(|_| ClientConfigError::TokenNotHeaderSafe)?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(VERSION_HEADER, version_value);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let http = crate::plumbing::tls::client_builder()
            .default_headers(headers)
            .user_agent(concat!("intercom-webhooks/", env!("CARGO_PKG_VERSION")))
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(ClientConfigError::Http)?;
        Ok((http, version))
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }
}

impl EventsClient {
    pub fn builder(token: AccessToken, endpoint: Endpoint) -> EventsClientBuilder {
        EventsClientBuilder {
            token,
            endpoint,
            version: DEFAULT_INTERCOM_VERSION.into(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retry: RetryPolicy::default(),
        }
    }

    /// The URL events are posted to.
    pub fn events_url(&self) -> &Url {
        &self.url
    }

    pub fn intercom_version(&self) -> &str {
        &self.version
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Submits one event. `Ok` once Intercom answered 202; a 429 waits for the window's reset and a 5xx
    /// or network failure backs off, within the [`RetryPolicy`]; any other answer is final.
    pub async fn track(&self, event: &DataEvent) -> Result<Tracked, TrackError> {
        let body = encode(event);
        let mut attempts = 0;
        let mut failures = 0;
        let mut rate_limited = 0;
        loop {
            attempts += 1;
            let attempt = self.send(&body).await;
            let error = match attempt.result {
                Ok(()) => {
                    return Ok(Tracked {
                        attempts,
                        rate_limit: attempt.rate_limit,
                    })
                }
                Err(error) => error,
            };
            let wait = match error.retry() {
                Retry::Never => return Err(error),
                Retry::AfterReset(reset) => {
                    rate_limited += 1;
                    if rate_limited > self.retry.max_rate_limited {
                        return Err(error.after_attempts(attempts));
                    }
                    self.retry.rate_limit_wait(reset, rate_limited)
                }
                Retry::Backoff => {
                    failures += 1;
                    if failures >= self.retry.max_attempts {
                        return Err(error.after_attempts(attempts));
                    }
                    self.retry.backoff(failures)
                }
            };
            tracing::debug!(
                event_name = event.event_name(),
                attempt = attempts,
                error = %error,
                wait_ms = wait.as_millis() as u64,
                "retrying data event"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One request with an encoded body, no retry.
    pub(crate) async fn send(&self, body: &Bytes) -> Attempt {
        let response = match self.http.post(self.url.clone()).body(body.clone()).send().await {
            Ok(response) => response,
            Err(source) => return network(source),
        };
        let status = response.status();
        let rate_limit = RateLimit::from_headers(response.headers());
        let body = match response.bytes().await {
            Ok(body) => body,
            // A success whose body was cut off is still a success: Intercom sends none.
            Err(_) if status.is_success() => Bytes::new(),
            Err(source) => {
                return Attempt {
                    rate_limit,
                    ..network(source)
                }
            }
        };
        let result = if status.is_success() {
            Ok(())
        } else {
            Err(TrackError::from_status(status, rate_limit, &body))
        };
        tracing::debug!(status = status.as_u16(), "data event answered");
        Attempt { result, rate_limit }
    }
}

/// The request body for an event.
pub(crate) fn encode(event: &DataEvent) -> Bytes {
    Bytes::from(serde_json::to_vec(event).expect("a DataEvent always serializes"))
}

fn network(source: reqwest::Error) -> Attempt {
    let timeout = source.is_timeout();
    Attempt {
        result: Err(TrackError::Network {
            source: source.without_url(),
            timeout,
            attempts: 1,
        }),
        rate_limit: RateLimit::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Region;

    #[test]
    fn tokens_are_checked_and_never_shown() {
        assert!(matches!(
            AccessToken::new("  "),
            Err(ClientConfigError::EmptyToken)
        ));
        assert!(matches!(
            AccessToken::new("a b"),
            Err(ClientConfigError::TokenNotHeaderSafe)
        ));
        let token = AccessToken::new("dG9rOmFiYw==").unwrap();
        assert_eq!(format!("{token:?}"), "AccessToken(SecretBox<str>([REDACTED]))");
        assert_eq!(token.expose_secret(), "dG9rOmFiYw==");
        let builder = EventsClient::builder(token, Endpoint::Region(Region::Us));
        let shown = format!("{builder:?}");
        assert!(!shown.contains("dG9rOmFiYw"), "{shown}");
        let client = builder.build().unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("dG9rOmFiYw"), "{shown}");
        assert!(shown.contains("https://api.intercom.io/events"), "{shown}");
        assert_eq!(client.intercom_version(), DEFAULT_INTERCOM_VERSION);
    }

    #[test]
    fn version_must_be_a_header_value() {
        let token = AccessToken::new("t").unwrap();
        let built = EventsClient::builder(token, Endpoint::Region(Region::Us))
            .intercom_version(" ")
            .build();
        assert!(matches!(built, Err(ClientConfigError::InvalidVersion { .. })));
    }
}
