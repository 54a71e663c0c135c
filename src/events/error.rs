//! Why an event was not accepted, or a client not configured.

use std::fmt;

use reqwest::StatusCode;
use serde::Deserialize;

use super::retry::{RateLimit, Retry};

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

    pub(super) fn from_status(status: StatusCode, rate_limit: RateLimit, body: &[u8]) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
