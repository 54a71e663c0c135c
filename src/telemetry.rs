//! Logging set-up: JSON lines on Lambda and when output is not a terminal, human-readable otherwise.
//! Level from `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON lines when stdout is not a terminal, human-readable otherwise.
    Auto,
    Json,
    Text,
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// For the Lambda binaries: JSON lines with the current span's fields, no ANSI colours, no timestamps
/// (CloudWatch adds its own).
pub fn init_lambda() {
    let _ = json_subscriber::fmt()
        .with_env_filter(filter())
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(false)
        .without_time()
        .try_init();
}

/// For the command line and the local server.
pub fn init_local(format: LogFormat) {
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let _ = if json {
        json_subscriber::fmt()
            .with_env_filter(filter())
            .with_target(false)
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .try_init()
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_target(false)
            .try_init()
    };
}
