//! Receive Intercom webhook notifications without losing or double-processing one.
//!
//! The domain (signature verification, the notification envelope, the HTTP intake, the idempotent worker,
//! topic routing and handlers) is independent of where it runs; [`aws`] holds the adapters for Lambda,
//! SQS and DynamoDB, [`local`] those for one machine (SQLite), [`memory`] in-memory ones for tests.

pub mod aws;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dlq;
pub mod events;
pub mod handler;
pub mod handlers;
pub mod idempotency;
pub mod intake;
pub mod local;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod notification;
pub mod queue;
pub mod router;
pub mod signature;
pub mod telemetry;
pub mod worker;
