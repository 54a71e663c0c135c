//! Logging set-up: JSON lines on Lambda and when output is not a terminal, human-readable otherwise.
//! Level from `RUST_LOG` (default `info`); on Lambda, the function's advanced logging controls
//! (`AWS_LAMBDA_LOG_LEVEL`, `AWS_LAMBDA_LOG_FORMAT`) as well, see [`LambdaLogging::from_vars`].

use std::io::IsTerminal;

use json_subscriber::JsonLayer;
use tracing::Subscriber;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

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

/// How a Lambda binary logs: the filter directives (`RUST_LOG` syntax) and the line format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LambdaLogging {
    pub directives: String,
    pub json: bool,
}

impl LambdaLogging {
    /// From the environment a Lambda instance starts with.
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok();
        Self::from_vars(
            var("RUST_LOG").as_deref(),
            var("AWS_LAMBDA_LOG_LEVEL").as_deref(),
            var("AWS_LAMBDA_LOG_FORMAT").as_deref(),
        )
    }

    /// The level is `AWS_LAMBDA_LOG_LEVEL` when it is set (the function's application log level; `FATAL`
    /// counts as `error`), else `RUST_LOG`, else `info`. The Lambda setting wins because Lambda drops
    /// lines below it anyway, and because `template.yaml` always sets `RUST_LOG`: a level chosen in the
    /// console must take effect. The format is text lines when `AWS_LAMBDA_LOG_FORMAT` is `Text` (any
    /// case), JSON lines otherwise, as when it is unset. Empty or unknown values count as unset.
    pub fn from_vars(
        rust_log: Option<&str>,
        aws_lambda_log_level: Option<&str>,
        aws_lambda_log_format: Option<&str>,
    ) -> Self {
        let lambda_level =
            aws_lambda_log_level.and_then(|level| match level.trim().to_ascii_lowercase().as_str() {
                level @ ("trace" | "debug" | "info" | "warn" | "error") => Some(level.to_owned()),
                "fatal" => Some("error".to_owned()),
                _ => None,
            });
        let rust_log = rust_log
            .map(str::trim)
            .filter(|directives| !directives.is_empty())
            .map(str::to_owned);
        let json = !aws_lambda_log_format.is_some_and(|format| format.trim().eq_ignore_ascii_case("text"));
        Self {
            directives: lambda_level.or(rust_log).unwrap_or_else(|| "info".to_owned()),
            json,
        }
    }

    /// Levels by target (`info,intercom_webhooks=debug`): the functions filter with `Targets`, not
    /// `EnvFilter`, whose span and field filters need a regular-expression engine that would be linked
    /// into every function. Directives that do not parse give `info`, as an invalid `RUST_LOG` does
    /// elsewhere.
    fn filter(&self) -> Targets {
        self.directives
            .parse()
            .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO))
    }
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

/// For the Lambda binaries: JSON lines without timestamps (CloudWatch adds its own), or the short text
/// lines of [`init_local`] when the function's log format is `Text`; level and format from
/// [`LambdaLogging::from_env`].
pub fn init_lambda() {
    let logging = LambdaLogging::from_env();
    if logging.json {
        let _ = tracing_subscriber::registry()
            .with(logging.filter())
            .with(json_lines(std::io::stdout))
            .try_init();
    } else {
        init_text_lines(logging.filter(), false);
    }
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
        let colour = colour_wanted(std::io::stdout().is_terminal(), std::env::var_os("NO_COLOR"));
        init_text_lines(filter(), colour);
    }
}

fn init_text_lines<F>(filter: F, colour: bool)
where
    F: Layer<Registry> + Send + Sync + 'static,
{
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(DeliveryFieldsLayer)
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(ShortLines { colour })
                .with_writer(std::io::stdout),
        )
        .try_init();
}

/// Colour only on a terminal, and not when `NO_COLOR` is set to anything (https://no-color.org).
fn colour_wanted(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The fields of a delivery's span that a short text line shows: kept in the span's extensions when the
/// span is made or recorded, so that each line reads them without parsing formatted text.
#[derive(Clone, Debug, Default)]
struct DeliveryFields {
    topic: Option<String>,
    notification_id: Option<String>,
}

impl tracing::field::Visit for DeliveryFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "topic" => self.topic = Some(value.to_owned()),
            "notification_id" => self.notification_id = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "topic" | "notification_id") {
            self.record_str(field, format!("{value:?}").trim_matches('"'));
        }
    }
}

struct DeliveryFieldsLayer;

impl<S> tracing_subscriber::Layer<S> for DeliveryFieldsLayer
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = DeliveryFields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            let mut extensions = span.extensions_mut();
            if let Some(fields) = extensions.get_mut::<DeliveryFields>() {
                values.record(fields);
            }
        }
    }
}

/// The event's fields as text, in order, and the parts a short line puts first.
#[derive(Default)]
struct EventFields {
    message: String,
    topic: Option<String>,
    notification_id: Option<String>,
    outcome: Option<String>,
    summary: Option<String>,
    duration_ms: Option<f64>,
    rest: Vec<(&'static str, String)>,
}

impl tracing::field::Visit for EventFields {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if field.name() == "duration_ms" {
            self.duration_ms = Some(value);
        } else {
            self.rest.push((field.name(), value.to_string()));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let value = value.to_owned();
        match field.name() {
            "message" => self.message = value,
            "topic" => self.topic = Some(value),
            "notification_id" => self.notification_id = Some(value),
            "outcome" => self.outcome = Some(value),
            "summary" => self.summary = Some(value),
            name => self.rest.push((name, value)),
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "summary" => self.summary = Some(format!("{value:?}")),
            name => self.rest.push((name, format!("{value:?}"))),
        }
    }
}

/// Text lines a person scans: time (UTC), level, topic, a short notification id, then the outcome and
/// duration, the summary, or the message and its other fields. The full fields are in the JSON format.
/// Everything is written with control characters escaped: payload text must not drive the terminal.
struct ShortLines {
    colour: bool,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for ShortLines
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> tracing_subscriber::fmt::FormatFields<'writer> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let span = ctx
            .event_scope()
            .into_iter()
            .flat_map(|scope| scope.from_root())
            .filter_map(|span| span.extensions().get::<DeliveryFields>().cloned())
            .fold(DeliveryFields::default(), |mut all, inner| {
                all.topic = inner.topic.or(all.topic);
                all.notification_id = inner.notification_id.or(all.notification_id);
                all
            });
        let line = short_line(
            *event.metadata().level(),
            std::time::SystemTime::now(),
            fields,
            span,
            self.colour,
        );
        writeln!(writer, "{line}")
    }
}

fn short_line(
    level: tracing::Level,
    at: std::time::SystemTime,
    fields: EventFields,
    span: DeliveryFields,
    colour: bool,
) -> String {
    let since_midnight = at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        % 86_400_000;
    let (h, m, sec, ms) = (
        since_midnight / 3_600_000,
        since_midnight / 60_000 % 60,
        since_midnight / 1000 % 60,
        since_midnight % 1000,
    );
    let level_text = format!("{level:<5}");
    let level_text = match (colour, level) {
        (false, _) => level_text,
        (true, tracing::Level::ERROR) => format!("\x1b[31m{level_text}\x1b[0m"),
        (true, tracing::Level::WARN) => format!("\x1b[33m{level_text}\x1b[0m"),
        (true, tracing::Level::INFO) => format!("\x1b[32m{level_text}\x1b[0m"),
        (true, _) => format!("\x1b[2m{level_text}\x1b[0m"),
    };
    let mut line = format!("{h:02}:{m:02}:{sec:02}.{ms:03} {level_text}");
    let topic = fields.topic.or(span.topic);
    if let Some(topic) = &topic {
        line.push(' ');
        line.push_str(&printable(topic));
    }
    if let Some(id) = fields.notification_id.or(span.notification_id) {
        line.push(' ');
        line.push_str(&printable(short_id(&id)));
    }
    line.push(' ');
    match (fields.outcome, fields.summary) {
        (Some(outcome), _) => line.push_str(&printable(&outcome)),
        (None, Some(summary)) => {
            // The summary starts with the topic, already on the line.
            let text = topic
                .as_deref()
                .and_then(|t| summary.strip_prefix(t))
                .and_then(|rest| rest.strip_prefix(": "))
                .unwrap_or(&summary);
            line.push_str(&printable(text));
        }
        (None, None) => {
            line.push_str(&printable(&fields.message));
            for (name, value) in &fields.rest {
                line.push_str(&format!(" {name}={}", printable(value)));
            }
        }
    }
    if let Some(ms) = fields.duration_ms {
        line.push_str(&format!(" {ms:.1} ms"));
    }
    line
}

/// `notif_3ac27816-d27c-…` → `3ac27816`: enough to tell deliveries apart on a screen.
fn short_id(id: &str) -> &str {
    let bare = id.strip_prefix("notif_").unwrap_or(id);
    match bare.char_indices().nth(8) {
        Some((end, _)) => &bare[..end],
        None => bare,
    }
}

/// Text with control characters (escape sequences, new lines) written as escapes.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// A log writer into a shared buffer, for tests that read what was written.
#[cfg(test)]
#[derive(Clone, Default)]
struct CapturedLines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl std::io::Write for CapturedLines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `f` with JSON lines, filtered by `directives` (`RUST_LOG` syntax), going to a buffer, and returns
/// the lines written on this thread.
#[cfg(test)]
pub(crate) fn captured_json_lines(directives: &str, f: impl FnOnce()) -> Vec<serde_json::Value> {
    let lines = CapturedLines::default();
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

    /// The short text lines written while `f` runs, without their time stamps.
    fn captured_text_lines(colour: bool, f: impl FnOnce()) -> Vec<String> {
        let lines = CapturedLines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("info"))
            .with(DeliveryFieldsLayer)
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(ShortLines { colour })
                    .with_writer(move || writer.clone()),
            );
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| l[13..].to_owned()).collect()
    }

    #[test]
    fn text_lines_are_short_and_escape_what_a_payload_could_put_in_them() {
        let lines = captured_text_lines(false, || {
            let span = tracing::info_span!(
                "notification",
                notification_id = "notif_3ac27816-d27c-45fd-a65a-bbaf021cf780",
                topic = tracing::field::Empty,
                app_id = "i6wc9ipe",
                delivery_attempts = 1,
            );
            span.record("topic", "conversation.user.created");
            span.in_scope(|| {
                tracing::info!(
                    summary = "conversation.user.created: Rose \x1b[31mPoodle, conversation 1: \"Hi\"",
                    "summary"
                );
                tracing::info!(
                    notification_id = "notif_3ac27816-d27c-45fd-a65a-bbaf021cf780",
                    topic = "conversation.user.created",
                    outcome = "processed",
                    duration_ms = 1.25,
                    "outcome"
                );
                tracing::warn!(handler = "notify", error = "answered 500", "handler failed");
            });
            tracing::info!(address = "127.0.0.1:8080", "serving");
        });
        assert_eq!(
            lines,
            [
                "INFO  conversation.user.created 3ac27816 Rose \\u{1b}[31mPoodle, conversation 1: \"Hi\"",
                "INFO  conversation.user.created 3ac27816 processed 1.2 ms",
                "WARN  conversation.user.created 3ac27816 handler failed handler=notify error=answered 500",
                "INFO  serving address=127.0.0.1:8080",
            ]
        );
        assert!(lines.iter().all(|l| l.len() < 120), "{lines:?}");
    }

    fn lambda(rust_log: Option<&str>, level: Option<&str>, format: Option<&str>) -> (String, bool) {
        let logging = LambdaLogging::from_vars(rust_log, level, format);
        (logging.directives, logging.json)
    }

    #[test]
    fn lambda_level_is_the_functions_log_level_then_rust_log_then_info() {
        let json = Some("JSON");
        assert_eq!(lambda(None, None, None), ("info".to_owned(), true));
        assert_eq!(lambda(Some(""), Some(""), None), ("info".to_owned(), true));
        assert_eq!(
            lambda(Some("info,intercom_webhooks=debug"), None, None),
            ("info,intercom_webhooks=debug".to_owned(), true)
        );
        assert_eq!(lambda(None, Some("DEBUG"), json), ("debug".to_owned(), true));
        assert_eq!(
            lambda(Some("info,intercom_webhooks=debug"), Some("WARN"), json),
            ("warn".to_owned(), true)
        );
        assert_eq!(
            lambda(Some("debug"), Some("FATAL"), json),
            ("error".to_owned(), true)
        );
        for (aws, ours) in [("TRACE", "trace"), ("Info", "info"), ("error", "error")] {
            assert_eq!(lambda(Some("warn"), Some(aws), json), (ours.to_owned(), true));
        }
        assert_eq!(
            lambda(Some("debug"), Some("VERBOSE"), json),
            ("debug".to_owned(), true)
        );
        assert_eq!(lambda(Some("debug"), Some(""), json), ("debug".to_owned(), true));
    }

    #[test]
    fn lambda_lines_are_json_unless_the_functions_log_format_is_text() {
        for format in [None, Some("JSON"), Some("json"), Some(""), Some("yaml")] {
            assert!(lambda(None, None, format).1, "{format:?}");
        }
        for format in ["Text", "TEXT", "text"] {
            assert!(!lambda(None, None, Some(format)).1, "{format}");
            assert_eq!(lambda(Some("debug"), None, Some(format)).0, "debug");
        }
    }

    #[test]
    fn lambda_directives_that_do_not_parse_give_info() {
        let logging = LambdaLogging::from_vars(Some("intercom_webhooks=loud"), None, None);
        assert_eq!(logging.filter().to_string(), "info");
        let logging = LambdaLogging::from_vars(Some("info,intercom_webhooks=debug"), None, None);
        assert_eq!(logging.filter().to_string(), "intercom_webhooks=debug,info");
        // A filter on a field's value is `EnvFilter`'s, which the functions do not link.
        let logging = LambdaLogging::from_vars(Some("intercom_webhooks[{id=1}]=debug"), None, None);
        assert_eq!(logging.filter().to_string(), "info");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some("".into())));
        assert!(!colour_wanted(true, Some("1".into())));
        assert!(!colour_wanted(false, None));
    }

    #[test]
    fn colour_only_when_asked() {
        let plain = captured_text_lines(false, || tracing::warn!("x"));
        assert!(!plain[0].contains('\x1b'), "{plain:?}");
        let coloured = captured_text_lines(true, || tracing::warn!("x"));
        assert!(coloured[0].contains("\x1b[33mWARN"), "{coloured:?}");
    }

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
