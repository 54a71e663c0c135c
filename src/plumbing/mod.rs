//! Plumbing every part uses: configuration, logs, metrics and the clock.

pub mod clock;
pub mod config;
pub mod metrics;
pub mod telemetry;
