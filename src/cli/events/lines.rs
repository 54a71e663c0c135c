//! The JSON Lines file of `events bulk`: every line checked before anything is sent, and the failed events
//! written back in the same shape so that the file can be sent again.

use std::collections::hash_map::{Entry, HashMap};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::events::{DataEvent, FailedEvent};

/// Invalid lines or failed events listed on standard error before the rest are only counted.
pub(super) const LISTED: usize = 20;

pub(super) fn read_input(path: &Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Every non-blank line as an event, with its line number (1-based); or every bad line reported.
/// An `error` field (as written to --failed-out) is ignored, so failed events can be sent again.
pub(super) fn parse_lines(text: &str) -> anyhow::Result<(Vec<DataEvent>, Vec<usize>)> {
    let mut events = Vec::new();
    let mut line_numbers = Vec::new();
    let mut bad = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(event) => {
                events.push(event);
                line_numbers.push(number);
            }
            Err(reason) => bad.push((number, reason)),
        }
    }
    let lines = events.len() + bad.len();
    bad.extend(same_event_twice(&events, &line_numbers));
    if bad.is_empty() {
        return Ok((events, line_numbers));
    }
    bad.sort_by_key(|(number, _)| *number);
    for (number, reason) in bad.iter().take(LISTED) {
        eprintln!("line {number}: {reason}");
    }
    if bad.len() > LISTED {
        eprintln!("… and {} more", bad.len() - LISTED);
    }
    bail!("{} of {lines} events are invalid; nothing was sent", bad.len())
}

/// Intercom keeps one event per contact, name and `created_at` and ignores the rest without an error:
/// every later line that repeats an earlier one's, with the earlier line's number.
fn same_event_twice(events: &[DataEvent], line_numbers: &[usize]) -> Vec<(usize, String)> {
    let mut first_seen = HashMap::new();
    let mut repeated = Vec::new();
    for (event, &number) in events.iter().zip(line_numbers) {
        let key = (
            event.contact().field(),
            event.contact().value(),
            event.event_name(),
            event.created_at(),
        );
        match first_seen.entry(key) {
            Entry::Vacant(entry) => {
                entry.insert(number);
            }
            Entry::Occupied(entry) => repeated.push((
                number,
                format!(
                    "the same contact, event_name and created_at as line {}: Intercom would keep only one \
                     of them; give each event its own created_at",
                    entry.get()
                ),
            )),
        }
    }
    repeated
}

fn parse_line(line: &str) -> Result<DataEvent, String> {
    let mut value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let dated = value.get("created_at").is_some_and(|at| !at.is_null());
    if let Value::Object(object) = &mut value {
        object.remove("error");
    }
    let event = DataEvent::from_json(value).map_err(|e| e.to_string())?;
    // A default of now would date events of one contact and name in the same second alike (Intercom
    // keeps one), and date them anew when an interrupted file is sent again (Intercom counts them twice).
    if !dated {
        return Err("no created_at: every event of a bulk file needs its time, in Unix seconds".into());
    }
    Ok(event)
}

/// One line per failed event: the event as sent, plus `error` with its kind, status, message, the
/// attempts made and the line it came from.
pub(super) fn write_failed(
    path: &Path,
    failures: &[FailedEvent],
    line_numbers: &[usize],
) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for failure in failures {
        let mut line = failure.event.to_json();
        let error = serde_json::json!({
            "kind": failure.error.kind().as_str(),
            "status": failure.error.status(),
            "message": error_chain(&failure.error),
            "line": line_numbers[failure.index],
        });
        if let Value::Object(object) = &mut line {
            object.insert("error".into(), error);
        }
        writeln!(out, "{line}").with_context(|| format!("cannot write {}", path.display()))?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_out_lines_parse_back() {
        let line = r#"{"event_name":"a","created_at":5,"user_id":"u","error":{"kind":"server_error"}}"#;
        let event = parse_line(line).unwrap();
        assert_eq!(event.created_at(), 5);
        assert!(parse_line(r#"{"event_name":"a"}"#)
            .unwrap_err()
            .contains("no contact"));
        assert!(parse_line("{").unwrap_err().starts_with("not JSON"));
    }
}
