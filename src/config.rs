//! Configuration from environment variables, read once at start-up and checked with clear messages.

use std::time::Duration;

use crate::handlers::{NotifySettings, DEFAULT_NOTIFY_TOPICS};
use crate::intake::DEFAULT_MAX_BODY_BYTES;
use crate::router::TopicPattern;
use crate::signature::ClientSecrets;
use crate::worker::WorkerSettings;

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

/// The worker's configuration (Lambda and local).
#[derive(Debug)]
pub struct WorkerConfig {
    pub settings: WorkerSettings,
    pub notify: Option<NotifySettings>,
}

impl WorkerConfig {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let defaults = WorkerSettings::default();
        let days: u64 = env.parsed(
            "IDEMPOTENCY_RETENTION_DAYS",
            defaults.retention.as_secs() / 86_400,
        )?;
        let visibility: u64 = env.parsed(
            "VISIBILITY_TIMEOUT_SECONDS",
            defaults.visibility_timeout.as_secs(),
        )?;
        let concurrency: usize = env.parsed("WORKER_CONCURRENCY", defaults.concurrency)?;
        for (name, value) in [
            ("IDEMPOTENCY_RETENTION_DAYS", days as usize),
            ("VISIBILITY_TIMEOUT_SECONDS", visibility as usize),
            ("WORKER_CONCURRENCY", concurrency),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    name,
                    reason: "must be greater than 0".into(),
                });
            }
        }
        let notify = match env.optional("NOTIFY_WEBHOOK_URL") {
            None => None,
            Some(url) => {
                let parsed = url::Url::parse(url.trim()).map_err(|e| ConfigError::Invalid {
                    name: "NOTIFY_WEBHOOK_URL",
                    reason: e.to_string(),
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(ConfigError::Invalid {
                        name: "NOTIFY_WEBHOOK_URL",
                        reason: "must be an http or https URL".into(),
                    });
                }
                let topics: Vec<String> = match env.optional("NOTIFY_TOPICS") {
                    Some(list) => list
                        .split(',')
                        .map(|t| t.trim().to_owned())
                        .filter(|t| !t.is_empty())
                        .collect(),
                    None => DEFAULT_NOTIFY_TOPICS.iter().map(|t| (*t).to_owned()).collect(),
                };
                for topic in &topics {
                    TopicPattern::parse(topic).map_err(|e| ConfigError::Invalid {
                        name: "NOTIFY_TOPICS",
                        reason: e.to_string(),
                    })?;
                }
                Some(NotifySettings {
                    url: url.trim().to_owned(),
                    topics,
                    timeout: Duration::from_secs(5),
                })
            }
        };
        Ok(Self {
            settings: WorkerSettings {
                retention: Duration::from_secs(days * 86_400),
                visibility_timeout: Duration::from_secs(visibility),
                concurrency,
            },
            notify,
        })
    }
}

/// The worker Lambda's configuration.
#[derive(Debug)]
pub struct WorkerLambdaConfig {
    pub table: String,
    pub dead_letter_queue_url: String,
    pub worker: WorkerConfig,
}

impl WorkerLambdaConfig {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        Ok(Self {
            table: env.required(
                "IDEMPOTENCY_TABLE",
                "set it to the name of the DynamoDB idempotency table",
            )?,
            dead_letter_queue_url: env.required(
                "DEAD_LETTER_QUEUE_URL",
                "set it to the URL of the dead-letter SQS queue",
            )?,
            worker: WorkerConfig::from_env(env)?,
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
            ("INTERCOM_CLIENT_SECRET", "current-7f3a9c, previous-d41e82"),
            ("QUEUE_URL", "q"),
            ("DEAD_LETTER_QUEUE_URL", "d"),
        ]))
        .unwrap();
        assert_eq!(config.secrets.len(), 2);
        assert_eq!(config.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        let debug = format!("{config:?}");
        for secret in ["current-7f3a9c", "previous-d41e82", "7f3a9c", "d41e82"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("redacted"), "{debug}");
    }

    #[test]
    fn worker_config() {
        let config = WorkerConfig::from_env(&env(&[])).unwrap();
        assert_eq!(config.settings.retention.as_secs(), 7 * 86_400);
        assert!(config.notify.is_none());
        let config = WorkerConfig::from_env(&env(&[
            ("NOTIFY_WEBHOOK_URL", "https://hooks.example.com/T/B/secret"),
            ("IDEMPOTENCY_RETENTION_DAYS", "3"),
        ]))
        .unwrap();
        let notify = config.notify.unwrap();
        assert_eq!(notify.topics, DEFAULT_NOTIFY_TOPICS);
        assert!(!format!("{notify:?}").contains("secret"));
        assert_eq!(config.settings.retention.as_secs(), 3 * 86_400);
        let err = WorkerConfig::from_env(&env(&[
            ("NOTIFY_WEBHOOK_URL", "https://x"),
            ("NOTIFY_TOPICS", "a..b"),
        ]))
        .unwrap_err();
        assert!(err.to_string().starts_with("NOTIFY_TOPICS is invalid"), "{err}");
        let err = WorkerConfig::from_env(&env(&[("NOTIFY_WEBHOOK_URL", "not a url")])).unwrap_err();
        assert!(
            err.to_string().starts_with("NOTIFY_WEBHOOK_URL is invalid"),
            "{err}"
        );
        let err = WorkerLambdaConfig::from_env(&env(&[("DEAD_LETTER_QUEUE_URL", "d")])).unwrap_err();
        assert!(
            err.to_string().starts_with("IDEMPOTENCY_TABLE is not set"),
            "{err}"
        );
    }
}
