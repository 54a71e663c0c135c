//! Plumbing every part uses: configuration, logs, metrics, the clock and TLS.

pub mod clock;
pub mod config;
pub mod metrics;
pub mod telemetry;
pub mod tls;
