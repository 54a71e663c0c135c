//! Receive Intercom webhook notifications without losing or double-processing one.
//!
//! The modules follow a notification: [`receiving`] verifies and stores a delivery, [`processing`] handles
//! each stored notification once; the ports they define have adapters for AWS ([`aws`]: Lambda, SQS,
//! DynamoDB, SSM), for one machine ([`local`]: SQLite and the `serve` runner) and in memory ([`memory`],
//! for tests). [`events`] is the outbound half (Data Events sent to Intercom), [`reconcile`] fills what
//! Intercom never redelivered from its search API, [`cli`] the command line,
//! and [`plumbing`] what every part uses (configuration, logs, metrics, the clock).

pub mod receiving;

pub mod processing;

pub mod aws;
pub mod local;
pub mod memory;

pub mod events;
pub mod reconcile;

pub mod cli;
pub mod plumbing;
