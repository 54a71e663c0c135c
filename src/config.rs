//! Configuration from environment variables, read once at start-up and checked with clear messages.

use crate::intake::DEFAULT_MAX_BODY_BYTES;
use crate::signature::ClientSecrets;

/// Why start-up refuses to go on. The message names the variable and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not set: {hint}")]
    Missing { name: &'static str, hint: &'static str },
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

pub const SECRET_HINT: &str = "set INTERCOM_CLIENT_SECRET to your Intercom app's client secret \
     (Developer Hub > your app > Basic information); during a rotation give both, separated by a comma";

/// Reads a variable from a lookup function (the process environment in binaries, a map in tests).
pub struct Env<F: Fn(&str) -> Option<String>>(pub F);

impl Env<fn(&str) -> Option<String>> {
    pub fn process() -> Self {
        Env(|name| std::env::var(name).ok())
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// The value, if set and not blank.
    pub fn optional(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.trim().is_empty())
    }

    pub fn required(&self, name: &'static str, hint: &'static str) -> Result<String, ConfigError> {
        self.optional(name).ok_or(ConfigError::Missing { name, hint })
    }

    pub fn parsed<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
                name,
                reason: format!("{raw:?}: {e}"),
            }),
        }
    }

    /// `INTERCOM_CLIENT_SECRET`: one or more secrets, comma-separated. Fails closed.
    pub fn client_secrets(&self) -> Result<ClientSecrets, ConfigError> {
        let raw = self.required("INTERCOM_CLIENT_SECRET", SECRET_HINT)?;
        ClientSecrets::parse(&raw).map_err(|e| ConfigError::Invalid {
            name: "INTERCOM_CLIENT_SECRET",
            reason: e.to_string(),
        })
    }
}

/// The receiver Lambda's configuration.
#[derive(Debug)]
pub struct ReceiverConfig {
    pub secrets: ClientSecrets,
    pub queue_url: String,
    pub dead_letter_queue_url: String,
    pub max_body_bytes: usize,
}

impl ReceiverConfig {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let max_body_bytes = env.parsed("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)?;
        if max_body_bytes == 0 {
            return Err(ConfigError::Invalid {
                name: "MAX_BODY_BYTES",
                reason: "must be greater than 0".into(),
            });
        }
        Ok(Self {
            secrets: env.client_secrets()?,
            queue_url: env.required("QUEUE_URL", "set it to the URL of the notifications SQS queue")?,
            dead_letter_queue_url: env.required(
                "DEAD_LETTER_QUEUE_URL",
                "set it to the URL of the dead-letter SQS queue",
            )?,
            max_body_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env(move |name: &str| map.get(name).cloned())
    }

    #[test]
    fn receiver_config_names_what_is_missing() {
        let err = ReceiverConfig::from_env(&env(&[("QUEUE_URL", "q"), ("DEAD_LETTER_QUEUE_URL", "d")]))
            .unwrap_err();
        assert!(
            err.to_string().starts_with("INTERCOM_CLIENT_SECRET is not set"),
            "{err}"
        );
        let err = ReceiverConfig::from_env(&env(&[
            ("INTERCOM_CLIENT_SECRET", "s"),
            ("DEAD_LETTER_QUEUE_URL", "d"),
        ]))
        .unwrap_err();
        assert!(err.to_string().starts_with("QUEUE_URL is not set"), "{err}");
        let err = ReceiverConfig::from_env(&env(&[
            ("INTERCOM_CLIENT_SECRET", " , "),
            ("QUEUE_URL", "q"),
            ("DEAD_LETTER_QUEUE_URL", "d"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string().starts_with("INTERCOM_CLIENT_SECRET is invalid"),
            "{err}"
        );
        let err = ReceiverConfig::from_env(&env(&[
            ("INTERCOM_CLIENT_SECRET", "s"),
            ("QUEUE_URL", "q"),
            ("DEAD_LETTER_QUEUE_URL", "d"),
            ("MAX_BODY_BYTES", "lots"),
        ]))
        .unwrap_err();
        assert!(err.to_string().starts_with("MAX_BODY_BYTES is invalid"), "{err}");
    }

    #[test]
    fn receiver_config_defaults() {
        let config = ReceiverConfig::from_env(&env(&[
            ("INTERCOM_CLIENT_SECRET", "a,b"),
            ("QUEUE_URL", "q"),
            ("DEAD_LETTER_QUEUE_URL", "d"),
        ]))
        .unwrap();
        assert_eq!(config.secrets.len(), 2);
        assert_eq!(config.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(!format!("{config:?}").contains("a,b"));
    }
}
