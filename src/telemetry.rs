//! Logging set-up: JSON lines on Lambda and when output is not a terminal, human-readable otherwise.
//! Level from `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use json_subscriber::JsonLayer;
use tracing::Subscriber;
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
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

/// JSON lines: `level`, the event's fields at the top level (`message` among them) and the current
/// span's fields under `span`. The JSON layer of `json-subscriber`, set up key by key: its builder's
/// `without_time` still writes an empty `timestamp`.
fn json_lines<S, W>(make_writer: W) -> JsonLayer<S, W>
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    W: for<'writer> MakeWriter<'writer> + 'static,
{
    let mut layer = JsonLayer::new(make_writer);
    layer
        .with_level("level")
        .with_flattened_event()
        .with_current_span("span");
    layer
}

/// For the Lambda binaries: JSON lines without timestamps (CloudWatch adds its own).
pub fn init_lambda() {
    let _ = tracing_subscriber::registry()
        .with(filter())
        .with(json_lines(std::io::stdout))
        .try_init();
}

/// For the command line and the local server.
pub fn init_local(format: LogFormat) {
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    if json {
        let mut layer = json_lines(std::io::stdout);
        layer.with_timer("timestamp", SystemTime);
        let _ = tracing_subscriber::registry()
            .with(filter())
            .with(layer)
            .try_init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_target(false)
            .try_init();
    }
}

/// Runs `f` with JSON lines, filtered by `directives` (`RUST_LOG` syntax), going to a buffer, and returns
/// the lines written on this thread.
#[cfg(test)]
pub(crate) fn captured_json_lines(directives: &str, f: impl FnOnce()) -> Vec<serde_json::Value> {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new(directives))
        .with(json_lines(move || writer.clone()));
    tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_has_the_event_fields_on_top_and_the_span_fields_under_span_and_no_empty_keys() {
        let lines = captured_json_lines("info", || {
            let span = tracing::info_span!("notification", topic = tracing::field::Empty);
            span.record("topic", "ping");
            span.in_scope(|| tracing::warn!(secret_index = 1, "queued"));
        });
        assert_eq!(
            lines,
            [serde_json::json!({
                "level": "WARN",
                "message": "queued",
                "secret_index": 1,
                "span": {"name": "notification", "topic": "ping"},
            })]
        );
    }
}
