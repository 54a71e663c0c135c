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
mod event;
mod pacer;

pub use bulk::{BulkOptions, BulkSummary, FailedEvent, Progress, DEFAULT_MAX_IN_FLIGHT};
pub use client::{
    AccessToken, ApiError, ApiErrors, ClientConfigError, Endpoint, ErrorKind, EventsClient,
    EventsClientBuilder, RateLimit, Region, RetryPolicy, TrackError, Tracked, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_INTERCOM_VERSION, DEFAULT_TIMEOUT,
};
pub use event::{
    Contact, DataEvent, DataEventBuilder, EventError, Metadata, MetadataProblem, MetadataValue,
    TimestampProblem, MAX_EVENT_NAME_CHARS, MAX_METADATA_KEYS, MAX_UNIX_SECONDS,
};
