//! The clock port: the worker asks it for the time, so tests can move time forward (lease expiry,
//! retention) without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};

pub trait Clock: Send + Sync {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The real time.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        unix_ms_now()
    }
}

pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Parses a time given on the command line (`--since`, `--until`, `--updated-since`) as Unix ms: an RFC
/// 3339 time with any offset (`2026-11-29T10:00:00Z`), Unix seconds, or a duration ago (`90m`, `2h`,
/// `3days`).
pub fn parse_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds.saturating_mul(1000));
    }
    if let Ok(at) = text.parse::<jiff::Timestamp>() {
        return Ok(at.as_millisecond());
    }
    match humantime::parse_duration(text) {
        Ok(ago) => Ok(unix_ms_now() - ago.as_millis() as i64),
        Err(_) => Err(format!(
            "{text:?} is not a time: use RFC 3339 (2026-11-29T10:00:00Z), Unix seconds, or a duration ago (2h, 30m, 3days)"
        )),
    }
}

/// A clock that only moves when told to: the real time plus an offset.
#[derive(Debug, Default)]
pub struct ShiftedClock {
    offset_ms: AtomicI64,
}

impl ShiftedClock {
    pub fn advance(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ShiftedClock {
    fn now_ms(&self) -> i64 {
        unix_ms_now() + self.offset_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_on_the_command_line() {
        assert_eq!(parse_time("1700000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000);
        assert_eq!(
            parse_time("2023-11-14T23:13:20.5+01:00").unwrap(),
            1_700_000_000_500
        );
        let two_hours_ago = parse_time("2h").unwrap();
        assert!((two_hours_ago - (unix_ms_now() - 7_200_000)).abs() < 5_000);
        assert!(parse_time("yesterday-ish").unwrap_err().contains("RFC 3339"));
    }
}
