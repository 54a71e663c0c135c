//! `POST /events`: one HTTP client (one connection pool) per process, typed errors, and retries that are
//! safe because Intercom ignores a duplicate of the same contact, name and `created_at`.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::RngExt;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::event::DataEvent;

/// The API version sent in `Intercom-Version` unless configured: the version of the OpenAPI description
/// the request shape was checked against.
pub const DEFAULT_INTERCOM_VERSION: &str = "2.15";
/// Bound on one request, connect to last byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const VERSION_HEADER: &str = "intercom-version";
const LIMIT_HEADER: &str = "x-ratelimit-limit";
const REMAINING_HEADER: &str = "x-ratelimit-remaining";
const RESET_HEADER: &str = "x-ratelimit-reset";

/// The data-hosting region of the Intercom workspace; each has its own API host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Region {
    #[default]
    Us,
    Eu,
    Au,
}

impl Region {
    pub fn base_url(self) -> &'static str {
        match self {
            Region::Us => "https://api.intercom.io",
            Region::Eu => "https://api.eu.intercom.io",
            Region::Au => "https://api.au.intercom.io",
        }
    }
}

impl FromStr for Region {
    type Err = ClientConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "us" => Ok(Region::Us),
            "eu" => Ok(Region::Eu),
            "au" => Ok(Region::Au),
            _ => Err(ClientConfigError::UnknownRegion { value: value.into() }),
        }
    }
}

/// Where events are sent: a region's API host, or an explicit base URL (a proxy, a mock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Region(Region),
    BaseUrl(Url),
}

impl Endpoint {
    /// An explicit base URL: `http` or `https`, with a host, without a query or fragment. `/events` is
    /// appended to its path.
    pub fn base_url(raw: &str) -> Result<Self, ClientConfigError> {
        let invalid = |reason: &str| ClientConfigError::InvalidBaseUrl {
            value: raw.into(),
            reason: reason.into(),
        };
        let url = Url::parse(raw.trim()).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("a host is required"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("a query or fragment is not allowed"));
        }
        Ok(Endpoint::BaseUrl(url))
    }

    /// `{base}/events`.
    pub fn events_url(&self) -> Url {
        let base = match self {
            Endpoint::Region(region) => region.base_url(),
            Endpoint::BaseUrl(url) => url.as_str(),
        };
        let joined = format!("{}/events", base.trim_end_matches('/'));
        Url::parse(&joined).expect("a valid base URL with /events appended is valid")
    }
}

/// An Intercom access token. Its `Debug` never shows the value, and the header carrying it is marked
/// sensitive so that no HTTP log shows it either.
#[derive(Clone)]
pub struct AccessToken(String);

impl AccessToken {
    /// Rejects an empty token and one that cannot be sent in a header.
    pub fn new(value: impl Into<String>) -> Result<Self, ClientConfigError> {
        let value = value.into().trim().to_string();
        if value.is_empty() {
            return Err(ClientConfigError::EmptyToken);
        }
        if !value.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ClientConfigError::TokenNotHeaderSafe);
        }
        Ok(Self(value))
    }

    /// The token itself, for callers that must hand it on (never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// When and how often a failed request is sent again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (the first included) when the answer is a 5xx, a timeout or a network error.
    pub max_attempts: u32,
    /// The first backoff; it doubles per failure up to `max_backoff`, with jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How many 429 answers one event may receive before it is given up.
    pub max_rate_limited: u32,
    /// The longest wait for `X-RateLimit-Reset` (Intercom's windows are 10 s long).
    pub max_rate_limit_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_rate_limited: 10,
            max_rate_limit_wait: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th transient failure (1-based): exponential, capped, with "equal
    /// jitter" (half fixed, half random) so that many senders do not retry in step.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        let full = self
            .initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff);
        let half = full / 2;
        let jitter_nanos = rand::rng().random_range(0..=half.as_nanos().min(u64::MAX as u128) as u64);
        half + Duration::from_nanos(jitter_nanos)
    }

    /// The wait after a 429: until `reset` (Unix seconds) plus a little jitter, at most
    /// `max_rate_limit_wait`; without a reset time, the backoff for `rate_limited` failures.
    pub fn rate_limit_wait(&self, reset: Option<u64>, rate_limited: u32) -> Duration {
        let Some(reset) = reset else {
            return self.backoff(rate_limited).min(self.max_rate_limit_wait);
        };
        let jitter = Duration::from_millis(rand::rng().random_range(0..=100));
        (until_unix(reset) + jitter).min(self.max_rate_limit_wait)
    }
}

/// The time from now until a Unix time in seconds; zero if it has passed.
pub(crate) fn until_unix(seconds: u64) -> Duration {
    (UNIX_EPOCH + Duration::from_secs(seconds))
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

/// Intercom's rate-limit headers on one response; absent or unparsable headers are `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// `X-RateLimit-Limit`: requests allowed per window.
    pub limit: Option<u32>,
    /// `X-RateLimit-Remaining`: requests left in the current window.
    pub remaining: Option<u32>,
    /// `X-RateLimit-Reset`: when the window ends, in Unix seconds.
    pub reset: Option<u64>,
}

impl RateLimit {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        fn number<T: FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
            headers.get(name)?.to_str().ok()?.trim().parse().ok()
        }
        Self {
            limit: number(headers, LIMIT_HEADER),
            remaining: number(headers, REMAINING_HEADER),
            reset: number(headers, RESET_HEADER),
        }
    }
}

/// Intercom's error list (`{"type": "error.list", "errors": [{code, message, field}]}`), or the start
/// of a body that was not one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiErrors {
    pub request_id: Option<String>,
    pub errors: Vec<ApiError>,
    /// The body's first characters when it was not an error list.
    pub raw: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ApiError {
    pub code: String,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub field: Option<String>,
}

impl ApiErrors {
    const RAW_EXCERPT_CHARS: usize = 300;

    fn parse(body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct ErrorList {
            #[serde(default)]
            request_id: Option<String>,
            errors: Vec<ApiError>,
        }
        if let Ok(list) = serde_json::from_slice::<ErrorList>(body) {
            return Self {
                request_id: list.request_id,
                errors: list.errors,
                raw: None,
            };
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        Self {
            raw: (!text.is_empty()).then(|| text.chars().take(Self::RAW_EXCERPT_CHARS).collect()),
            ..Self::default()
        }
    }
}

/// `": code: message (field f); …"`, or `": <body excerpt>"`, or nothing.
impl fmt::Display for ApiErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            f.write_str(&error.code)?;
            if let Some(message) = &error.message {
                write!(f, ": {message}")?;
            }
            if let Some(field) = &error.field {
                write!(f, " (field {field})")?;
            }
        }
        if let Some(raw) = &self.raw {
            write!(f, ": {raw}")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " [request {id}]")?;
        }
        Ok(())
    }
}

/// Why an event was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("unauthorized ({status}): the access token is invalid or may not write events{errors}")]
    Unauthorized { status: u16, errors: ApiErrors },
    #[error("contact not found (404): no contact has the event's identifier{errors}")]
    ContactNotFound { errors: ApiErrors },
    #[error("invalid event ({status}){errors}")]
    Invalid { status: u16, errors: ApiErrors },
    #[error("rate limited (429){}, gave up after {attempts} {}", reset_note(*reset), plural(*attempts))]
    RateLimited { reset: Option<u64>, attempts: u32 },
    #[error("server error ({status}), gave up after {attempts} {}{errors}", plural(*attempts))]
    Server {
        status: u16,
        errors: ApiErrors,
        attempts: u32,
    },
    #[error(
        "network error{}, gave up after {attempts} {}",
        if *timeout { " (timed out)" } else { "" },
        plural(*attempts)
    )]
    Network {
        #[source]
        source: reqwest::Error,
        timeout: bool,
        attempts: u32,
    },
    #[error("unexpected response ({status}){errors}")]
    UnexpectedStatus { status: u16, errors: ApiErrors },
}

fn plural(attempts: u32) -> &'static str {
    if attempts == 1 {
        "attempt"
    } else {
        "attempts"
    }
}

fn reset_note(reset: Option<u64>) -> String {
    reset.map(|r| format!(" until {r}")).unwrap_or_default()
}

/// The kind of a [`TrackError`], for counting and for the failed-events file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    Unauthorized,
    ContactNotFound,
    Invalid,
    RateLimited,
    Server,
    Network,
    UnexpectedStatus,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::ContactNotFound => "contact_not_found",
            ErrorKind::Invalid => "invalid",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Server => "server_error",
            ErrorKind::Network => "network",
            ErrorKind::UnexpectedStatus => "unexpected_status",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    Never,
    /// A 429: wait for the window to reset (Unix seconds, if the answer said).
    AfterReset(Option<u64>),
    /// A 5xx or a network failure: back off and try again.
    Backoff,
}

impl TrackError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            TrackError::Unauthorized { .. } => ErrorKind::Unauthorized,
            TrackError::ContactNotFound { .. } => ErrorKind::ContactNotFound,
            TrackError::Invalid { .. } => ErrorKind::Invalid,
            TrackError::RateLimited { .. } => ErrorKind::RateLimited,
            TrackError::Server { .. } => ErrorKind::Server,
            TrackError::Network { .. } => ErrorKind::Network,
            TrackError::UnexpectedStatus { .. } => ErrorKind::UnexpectedStatus,
        }
    }

    /// The HTTP status Intercom answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            TrackError::Unauthorized { status, .. }
            | TrackError::Invalid { status, .. }
            | TrackError::Server { status, .. }
            | TrackError::UnexpectedStatus { status, .. } => Some(*status),
            TrackError::ContactNotFound { .. } => Some(404),
            TrackError::RateLimited { .. } => Some(429),
            TrackError::Network { .. } => None,
        }
    }

    /// Whether sending the same event again later could succeed (rate limit, server or network).
    pub fn is_retryable(&self) -> bool {
        self.retry() != Retry::Never
    }

    /// Intercom's error list, when it sent one.
    pub fn api_errors(&self) -> Option<&ApiErrors> {
        match self {
            TrackError::Unauthorized { errors, .. }
            | TrackError::ContactNotFound { errors }
            | TrackError::Invalid { errors, .. }
            | TrackError::Server { errors, .. }
            | TrackError::UnexpectedStatus { errors, .. } => Some(errors),
            TrackError::RateLimited { .. } | TrackError::Network { .. } => None,
        }
    }

    pub(crate) fn retry(&self) -> Retry {
        match self {
            TrackError::RateLimited { reset, .. } => Retry::AfterReset(*reset),
            TrackError::Server { .. } | TrackError::Network { .. } => Retry::Backoff,
            _ => Retry::Never,
        }
    }

    /// Records how many attempts were made in all, for the message.
    pub(crate) fn after_attempts(mut self, total: u32) -> Self {
        if let TrackError::RateLimited { attempts, .. }
        | TrackError::Server { attempts, .. }
        | TrackError::Network { attempts, .. } = &mut self
        {
            *attempts = total;
        }
        self
    }

    fn from_status(status: StatusCode, rate_limit: RateLimit, body: &[u8]) -> Self {
        let code = status.as_u16();
        let errors = ApiErrors::parse(body);
        match code {
            401 | 403 => TrackError::Unauthorized { status: code, errors },
            404 => TrackError::ContactNotFound { errors },
            400 | 422 => TrackError::Invalid { status: code, errors },
            429 => TrackError::RateLimited {
                reset: rate_limit.reset,
                attempts: 1,
            },
            500..=599 => TrackError::Server {
                status: code,
                errors,
                attempts: 1,
            },
            _ => TrackError::UnexpectedStatus { status: code, errors },
        }
    }
}

/// Why a client could not be configured. The message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("the access token is empty: set INTERCOM_ACCESS_TOKEN to an access token with write access")]
    EmptyToken,
    #[error("the access token contains spaces or characters that cannot be sent in a header")]
    TokenNotHeaderSafe,
    #[error("region {value:?} is not one of us, eu, au")]
    UnknownRegion { value: String },
    #[error("base URL {value:?} is invalid: {reason}")]
    InvalidBaseUrl { value: String, reason: String },
    #[error("Intercom-Version {value:?} is invalid: it must be a non-empty header value such as \"2.15\"")]
    InvalidVersion { value: String },
    #[error("the HTTP client could not be built")]
    Http(#[source] reqwest::Error),
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
        let version = self.version.trim().to_string();
        let version_value = HeaderValue::from_str(&version)
            .ok()
            .filter(|_| !version.is_empty())
            .ok_or_else(|| ClientConfigError::InvalidVersion {
                value: self.version.clone(),
            })?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.token.expose()))
            .map_err(|_| ClientConfigError::TokenNotHeaderSafe)?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(VERSION_HEADER, version_value);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("intercom-webhooks/", env!("CARGO_PKG_VERSION")))
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(ClientConfigError::Http)?;
        Ok(EventsClient {
            http,
            url: self.endpoint.events_url(),
            version,
            retry: self.retry,
        })
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

    #[test]
    fn regions_and_base_urls() {
        assert_eq!("EU".parse::<Region>().unwrap(), Region::Eu);
        assert_eq!(" au ".parse::<Region>().unwrap(), Region::Au);
        assert!(matches!(
            "mars".parse::<Region>(),
            Err(ClientConfigError::UnknownRegion { value }) if value == "mars"
        ));
        assert_eq!(
            Endpoint::Region(Region::Us).events_url().as_str(),
            "https://api.intercom.io/events"
        );
        assert_eq!(
            Endpoint::Region(Region::Eu).events_url().as_str(),
            "https://api.eu.intercom.io/events"
        );
        assert_eq!(
            Endpoint::Region(Region::Au).events_url().as_str(),
            "https://api.au.intercom.io/events"
        );
        let custom = Endpoint::base_url("http://127.0.0.1:8080/proxy/").unwrap();
        assert_eq!(custom.events_url().as_str(), "http://127.0.0.1:8080/proxy/events");
        for bad in ["ftp://x.example", "not a url", "http://x.example/?a=1"] {
            assert!(
                matches!(
                    Endpoint::base_url(bad),
                    Err(ClientConfigError::InvalidBaseUrl { .. })
                ),
                "{bad}"
            );
        }
    }

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
        assert_eq!(format!("{token:?}"), "AccessToken(<redacted>)");
        let client = EventsClient::builder(token, Endpoint::Region(Region::Us))
            .build()
            .unwrap();
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

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for _ in 0..50 {
            let first = policy.backoff(1);
            assert!(Duration::from_millis(50) <= first && first <= Duration::from_millis(100));
            let third = policy.backoff(3);
            assert!(Duration::from_millis(200) <= third && third <= Duration::from_millis(400));
            let capped = policy.backoff(30);
            assert!(Duration::from_millis(500) <= capped && capped <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn rate_limit_wait_is_bounded() {
        let policy = RetryPolicy {
            max_rate_limit_wait: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
        let far = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
        assert_eq!(policy.rate_limit_wait(Some(far), 1), Duration::from_secs(2));
        // A reset in the past (clock skew) waits only the jitter.
        assert!(policy.rate_limit_wait(Some(1), 1) <= Duration::from_millis(100));
    }

    #[test]
    fn statuses_map_to_kinds() {
        let kind = |code: u16| {
            TrackError::from_status(StatusCode::from_u16(code).unwrap(), RateLimit::default(), b"").kind()
        };
        assert_eq!(kind(401), ErrorKind::Unauthorized);
        assert_eq!(kind(403), ErrorKind::Unauthorized);
        assert_eq!(kind(404), ErrorKind::ContactNotFound);
        assert_eq!(kind(400), ErrorKind::Invalid);
        assert_eq!(kind(422), ErrorKind::Invalid);
        assert_eq!(kind(429), ErrorKind::RateLimited);
        assert_eq!(kind(500), ErrorKind::Server);
        assert_eq!(kind(503), ErrorKind::Server);
        assert_eq!(kind(409), ErrorKind::UnexpectedStatus);
    }

    #[test]
    fn error_lists_are_shown_with_their_fields() {
        let body = br#"{"type":"error.list","request_id":"r-1","errors":[
            {"code":"parameter_invalid","message":"Event name is too long","field":"event_name"}]}"#;
        let error = TrackError::from_status(StatusCode::UNPROCESSABLE_ENTITY, RateLimit::default(), body);
        assert_eq!(
            error.to_string(),
            "invalid event (422): parameter_invalid: Event name is too long (field event_name) [request r-1]"
        );
        assert!(!error.is_retryable());
        let error =
            TrackError::from_status(StatusCode::BAD_GATEWAY, RateLimit::default(), b"<html>bad</html>");
        assert_eq!(
            error.after_attempts(4).to_string(),
            "server error (502), gave up after 4 attempts: <html>bad</html>"
        );
    }

    #[test]
    fn rate_limit_headers_parse() {
        let mut headers = HeaderMap::new();
        headers.insert(LIMIT_HEADER, HeaderValue::from_static("1667"));
        headers.insert(REMAINING_HEADER, HeaderValue::from_static("12"));
        headers.insert(RESET_HEADER, HeaderValue::from_static("1700000010"));
        assert_eq!(
            RateLimit::from_headers(&headers),
            RateLimit {
                limit: Some(1667),
                remaining: Some(12),
                reset: Some(1_700_000_010)
            }
        );
        headers.insert(RESET_HEADER, HeaderValue::from_static("soon"));
        assert_eq!(RateLimit::from_headers(&headers).reset, None);
    }
}
