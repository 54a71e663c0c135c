//! Data Events: custom events about contacts, sent to Intercom's `POST /events`.
//!
//! - [`DataEvent`] is an event Intercom will take as sent: one contact identifier, at most ten flat
//!   metadata keys of the documented types, Unix-second dates. Its constructors refuse the rest.
//! - [`EventsClient::track`] sends one event, retrying 429s after the window's reset and 5xx or network
//!   failures with backoff; [`EventsClient::track_all`] sends a stream of them as fast as the rate limit
//!   allows, paced by Intercom's `X-RateLimit-*` headers.
//!
//! Resending is safe: Intercom ignores an event with the same contact, name and `created_at` as one it
//! already has, so every retry keeps the event's `created_at`.

mod bulk;
mod client;
mod endpoint;
mod error;
mod event;
mod metadata;
pub(crate) mod pacer;
pub(crate) mod retry;
mod timestamp;

pub use bulk::{BulkOptions, BulkSummary, FailedEvent, Progress, DEFAULT_MAX_IN_FLIGHT};
pub use client::{
    AccessToken, EventsClient, EventsClientBuilder, Tracked, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_INTERCOM_VERSION, DEFAULT_TIMEOUT,
};
pub use endpoint::{Endpoint, Region};
pub use error::{ApiError, ApiErrors, ClientConfigError, ErrorKind, TrackError};
pub use event::{Contact, DataEvent, DataEventBuilder, EventError, MAX_EVENT_NAME_CHARS};
pub use metadata::{Metadata, MetadataProblem, MetadataValue, MAX_METADATA_KEYS};
pub use retry::{RateLimit, RetryPolicy};
pub use timestamp::{TimestampProblem, MAX_UNIX_SECONDS};
