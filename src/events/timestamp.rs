//! Dates as Intercom takes them: whole Unix seconds, not milliseconds.

use serde_json::Value;

/// The latest Unix time in seconds accepted (9999-12-31T23:59:59Z). Larger values are almost always
/// milliseconds, which Intercom would store as a date thousands of years ahead.
pub const MAX_UNIX_SECONDS: u64 = 253_402_300_799;

/// Why a time is not Unix seconds Intercom would take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimestampProblem {
    #[error("must be a Unix timestamp in seconds (a whole number)")]
    NotANumber,
    #[error("must be a whole number of Unix seconds")]
    NotWholeSeconds,
    #[error("must not be negative")]
    Negative,
    #[error("{value} is past the year 9999: give Unix seconds, not milliseconds")]
    Milliseconds { value: u64 },
}

pub(super) fn parse_unix_seconds(value: &Value) -> Result<u64, TimestampProblem> {
    let Value::Number(number) = value else {
        return Err(TimestampProblem::NotANumber);
    };
    match number.as_u64() {
        Some(seconds) if seconds > MAX_UNIX_SECONDS => Err(TimestampProblem::Milliseconds { value: seconds }),
        Some(seconds) => Ok(seconds),
        None if number.as_i64().is_some() => Err(TimestampProblem::Negative),
        None => Err(TimestampProblem::NotWholeSeconds),
    }
}
