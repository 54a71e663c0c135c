//! Receive Intercom webhook notifications without losing or double-processing one.
//!
//! The domain (signature verification, the notification envelope, the HTTP intake) is independent of
//! where it runs; [`aws`] holds the adapters for Lambda, SQS and DynamoDB.

pub mod aws;
pub mod cli;
pub mod config;
pub mod intake;
pub mod notification;
pub mod queue;
pub mod signature;
pub mod telemetry;
