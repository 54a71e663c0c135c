//! Configuration from environment variables, read once at start-up and checked with clear messages.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::processing::handlers::{
    ForwardSettings, NotifySettings, DEFAULT_FORWARD_RATE_PER_SECOND, DEFAULT_NOTIFY_RATE_PER_SECOND,
    DEFAULT_NOTIFY_TOPICS,
};
use crate::processing::router::TopicPattern;
use crate::processing::worker::WorkerSettings;
use crate::receiving::intake::DEFAULT_MAX_BODY_BYTES;
use crate::receiving::signature::{ClientSecret, ClientSecrets};

/// Why start-up refuses to go on. The message names the variable and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not set: {hint}")]
    Missing { name: &'static str, hint: &'static str },
    #[error("{name} is set but empty: {hint}")]
    Empty { name: &'static str, hint: &'static str },
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error(
        "{name} and {parameter} are both set: keep one ({parameter} names the SSM parameter that holds the \
         value; {name} holds it directly, for local use)"
    )]
    Conflict {
        name: &'static str,
        parameter: &'static str,
    },
    /// A `_PARAMETER` variable whose parameter cannot be read or holds no usable value. Never shows the
    /// value.
    #[error("{variable}: the SSM parameter {parameter:?} {problem}")]
    Parameter {
        variable: &'static str,
        parameter: String,
        problem: String,
    },
}

/// A secret given either directly in `name` (for local use) or, on AWS, as the name of an SSM parameter
/// in `parameter`, so that the value never sits in the function's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecretVariable {
    pub name: &'static str,
    pub parameter: &'static str,
}

pub const CLIENT_SECRET: SecretVariable = SecretVariable {
    name: "INTERCOM_CLIENT_SECRET",
    parameter: "INTERCOM_CLIENT_SECRET_PARAMETER",
};

pub const ACCESS_TOKEN: SecretVariable = SecretVariable {
    name: "INTERCOM_ACCESS_TOKEN",
    parameter: "INTERCOM_ACCESS_TOKEN_PARAMETER",
};

pub const NOTIFY_WEBHOOK_URL: SecretVariable = SecretVariable {
    name: "NOTIFY_WEBHOOK_URL",
    parameter: "NOTIFY_WEBHOOK_URL_PARAMETER",
};

/// The variables of one forward target, `FORWARD_<n>_…`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardVariables {
    pub url: &'static str,
    pub topics: &'static str,
    pub secret: SecretVariable,
    pub rate: &'static str,
}

macro_rules! forward_variables {
    ($($n:literal),*) => {
        [$(ForwardVariables {
            url: concat!("FORWARD_", $n, "_URL"),
            topics: concat!("FORWARD_", $n, "_TOPICS"),
            secret: SecretVariable {
                name: concat!("FORWARD_", $n, "_SECRET"),
                parameter: concat!("FORWARD_", $n, "_SECRET_PARAMETER"),
            },
            rate: concat!("FORWARD_", $n, "_RATE_PER_SECOND"),
        }),*]
    };
}

/// Forward targets 1 to 9.
pub const FORWARDS: [ForwardVariables; crate::processing::handlers::MAX_FORWARD_TARGETS] =
    forward_variables!(1, 2, 3, 4, 5, 6, 7, 8, 9);

/// The worker's secrets: the notify webhook URL and the forward targets' secrets, each given directly or
/// as the name of an SSM parameter.
pub fn worker_secrets() -> Vec<SecretVariable> {
    std::iter::once(NOTIFY_WEBHOOK_URL)
        .chain(FORWARDS.iter().map(|f| f.secret))
        .collect()
}

/// Why a parameter could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParameterError {
    #[error("does not exist")]
    NotFound,
    #[error("cannot be read: access denied ({0})")]
    AccessDenied(String),
    /// The store did not answer; starting again later can succeed.
    #[error("cannot be read now: {0}")]
    Unavailable(String),
    #[error("cannot be read: {0}")]
    Rejected(String),
}

impl ParameterError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Where `_PARAMETER` variables are looked up: SSM Parameter Store on AWS ([`crate::aws::ssm`]).
#[async_trait::async_trait]
pub trait ParameterStore: Send + Sync {
    /// The parameter's value, decrypted.
    async fn value(&self, name: &str) -> Result<String, ParameterError>;
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
        match (self.0)(name) {
            None => Err(ConfigError::Missing { name, hint }),
            Some(value) if value.trim().is_empty() => Err(ConfigError::Empty { name, hint }),
            Some(value) => Ok(value),
        }
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
        let raw = self.required(CLIENT_SECRET.name, SECRET_HINT)?;
        ClientSecrets::parse(&raw).map_err(|e| ConfigError::Invalid {
            name: CLIENT_SECRET.name,
            reason: e.to_string(),
        })
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// Reads the parameter of every `secrets` variable given by its `_PARAMETER` name, once. A variable set
    /// both ways, a parameter that cannot be read and an empty value are start-up errors.
    pub async fn resolve(
        self,
        secrets: &[SecretVariable],
        store: &dyn ParameterStore,
    ) -> Result<ResolvedEnv<F>, ConfigError> {
        let mut fetched = Vec::new();
        for &secret in secrets {
            let Some(parameter) = self.optional(secret.parameter) else {
                continue;
            };
            if self.optional(secret.name).is_some() {
                return Err(ConfigError::Conflict {
                    name: secret.name,
                    parameter: secret.parameter,
                });
            }
            let parameter = parameter.trim().to_owned();
            let problem = |problem: String| ConfigError::Parameter {
                variable: secret.parameter,
                parameter: parameter.clone(),
                problem,
            };
            let value = SecretString::from(
                store
                    .value(&parameter)
                    .await
                    .map_err(|e| problem(e.to_string()))?,
            );
            if value.expose_secret().trim().is_empty() {
                return Err(problem("is empty".into()));
            }
            fetched.push(Fetched {
                secret,
                parameter,
                value,
            });
        }
        Ok(ResolvedEnv { env: self, fetched })
    }
}

/// The environment with the values of `_PARAMETER` variables read: what configurations are parsed from.
pub struct ResolvedEnv<F: Fn(&str) -> Option<String>> {
    env: Env<F>,
    fetched: Vec<Fetched>,
}

#[derive(Debug)]
struct Fetched {
    secret: SecretVariable,
    parameter: String,
    value: SecretString,
}

impl<F: Fn(&str) -> Option<String>> ResolvedEnv<F> {
    /// Parses a configuration as from the plain variables; a fetched value that does not parse is
    /// reported against its parameter.
    pub fn parse<'a, T>(
        &'a self,
        parse: impl FnOnce(&Env<Box<dyn Fn(&str) -> Option<String> + 'a>>) -> Result<T, ConfigError>,
    ) -> Result<T, ConfigError> {
        let env = Env(Box::new(|name: &str| match self.fetched(name) {
            Some(f) => Some(f.value.expose_secret().to_owned()),
            None => (self.env.0)(name),
        }) as Box<dyn Fn(&str) -> Option<String> + 'a>);
        parse(&env).map_err(|error| match &error {
            ConfigError::Invalid { name, reason } => match self.fetched(name) {
                Some(f) => ConfigError::Parameter {
                    variable: f.secret.parameter,
                    parameter: f.parameter.clone(),
                    problem: format!("holds an invalid {name}: {reason}"),
                },
                None => error,
            },
            _ => error,
        })
    }

    fn fetched(&self, name: &str) -> Option<&Fetched> {
        self.fetched.iter().find(|f| f.secret.name == name)
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
    pub forwards: Vec<ForwardSettings>,
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
        let margin_ms: u64 = env.parsed(
            "WORKER_DEADLINE_MARGIN_MS",
            defaults.deadline_margin.as_millis() as u64,
        )?;
        if margin_ms >= visibility.saturating_mul(1000) {
            return Err(ConfigError::Invalid {
                name: "WORKER_DEADLINE_MARGIN_MS",
                reason: "must be shorter than the visibility timeout".into(),
            });
        }
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
        let notify = match env.optional(NOTIFY_WEBHOOK_URL.name) {
            None => None,
            Some(url) => Some(NotifySettings {
                url: http_url(NOTIFY_WEBHOOK_URL.name, &url)?,
                topics: topic_list(env, "NOTIFY_TOPICS", DEFAULT_NOTIFY_TOPICS)?,
                timeout: Duration::from_secs(5),
                rate_per_second: rate(env, "NOTIFY_RATE_PER_SECOND", DEFAULT_NOTIFY_RATE_PER_SECOND)?,
            }),
        };
        let mut forwards = Vec::new();
        for (i, names) in FORWARDS.iter().enumerate() {
            let Some(url) = env.optional(names.url) else {
                // A target's other variables without its URL are a mistake, not a target.
                for other in [names.topics, names.secret.name, names.rate] {
                    if env.optional(other).is_some() {
                        return Err(ConfigError::Invalid {
                            name: names.url,
                            reason: format!("is not set, but {other} is"),
                        });
                    }
                }
                continue;
            };
            let secret = env.required(
                names.secret.name,
                "set it (or its _PARAMETER) to the secret the target verifies X-Hub-Signature with",
            )?;
            let secret = ClientSecret::new(secret.trim()).map_err(|e| ConfigError::Invalid {
                name: names.secret.name,
                reason: e.to_string(),
            })?;
            forwards.push(ForwardSettings {
                index: i + 1,
                url: http_url(names.url, &url)?,
                topics: topic_list(env, names.topics, &["*"])?,
                secret,
                timeout: Duration::from_secs(10),
                rate_per_second: rate(env, names.rate, DEFAULT_FORWARD_RATE_PER_SECOND)?,
            });
        }
        Ok(Self {
            settings: WorkerSettings {
                retention: Duration::from_secs(days * 86_400),
                visibility_timeout: Duration::from_secs(visibility),
                concurrency,
                deadline_margin: Duration::from_millis(margin_ms),
            },
            notify,
            forwards,
        })
    }
}

/// An http or https URL, kept as a secret (it may carry a token).
fn http_url(name: &'static str, raw: &str) -> Result<SecretString, ConfigError> {
    let parsed = url::Url::parse(raw.trim()).map_err(|e| ConfigError::Invalid {
        name,
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ConfigError::Invalid {
            name,
            reason: "must be an http or https URL".into(),
        });
    }
    Ok(SecretString::from(raw.trim()))
}

/// Comma-separated topic patterns, each checked; `default` when unset.
fn topic_list<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    name: &'static str,
    default: &[&str],
) -> Result<Vec<String>, ConfigError> {
    let topics: Vec<String> = match env.optional(name) {
        Some(list) => list
            .split(',')
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect(),
        None => default.iter().map(|t| (*t).to_owned()).collect(),
    };
    for topic in &topics {
        TopicPattern::parse(topic).map_err(|e| ConfigError::Invalid {
            name,
            reason: e.to_string(),
        })?;
    }
    Ok(topics)
}

/// Posts per second: greater than 0, at most 1000.
fn rate<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    name: &'static str,
    default: f64,
) -> Result<f64, ConfigError> {
    let rate: f64 = env.parsed(name, default)?;
    if !(rate.is_finite() && rate > 0.0 && rate <= 1000.0) {
        return Err(ConfigError::Invalid {
            name,
            reason: format!("{rate}: must be greater than 0 and at most 1000"),
        });
    }
    Ok(rate)
}

/// Where the worker publishes to EventBridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventBridgeConfig {
    pub bus: String,
    pub source: String,
    pub topics: Vec<String>,
}

/// The worker Lambda's configuration.
#[derive(Debug)]
pub struct WorkerLambdaConfig {
    pub table: String,
    pub dead_letter_queue_url: String,
    /// The notifications queue: where a handler's retry delay is applied (optional; without it, a record
    /// to retry comes back after the queue's visibility timeout).
    pub queue_url: Option<String>,
    /// The DynamoDB mirror table (optional; without it the worker keeps no mirror, and state handlers run
    /// for every notification, stale ones included).
    pub mirror_table: Option<String>,
    /// The EventBridge bus to publish to (`EVENT_BUS_NAME`), with the entries' source and the topics.
    pub eventbridge: Option<EventBridgeConfig>,
    /// `IDEMPOTENCY_COMPLETION`: `batch` (the default) completes a batch's records with one write,
    /// `record` writes each record's completion on its own.
    pub batch_completion: bool,
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
            queue_url: env.optional("QUEUE_URL"),
            mirror_table: env.optional("MIRROR_TABLE").map(|t| t.trim().to_owned()),
            eventbridge: match env.optional("EVENT_BUS_NAME") {
                None => None,
                Some(bus) => Some(EventBridgeConfig {
                    bus: bus.trim().to_owned(),
                    source: env
                        .optional("EVENTBRIDGE_SOURCE")
                        .map(|s| s.trim().to_owned())
                        .unwrap_or_else(|| "intercom".to_owned()),
                    topics: topic_list(env, "EVENTBRIDGE_TOPICS", &["*"])?,
                }),
            },
            // `optional` leaves out a blank value.
            batch_completion: match env.optional("IDEMPOTENCY_COMPLETION").as_deref().map(str::trim) {
                None | Some("batch") => true,
                Some("record") => false,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        name: "IDEMPOTENCY_COMPLETION",
                        reason: format!("{other:?} is neither \"batch\" nor \"record\""),
                    })
                }
            },
            worker: WorkerConfig::from_env(env)?,
        })
    }
}

/// The reconciler Lambda's configuration.
#[derive(Debug)]
pub struct ReconcilerLambdaConfig {
    pub token: crate::events::AccessToken,
    pub endpoint: crate::events::Endpoint,
    pub intercom_version: String,
    pub queue_url: String,
    /// The idempotency table, which keeps the watermarks.
    pub table: String,
    pub types: Vec<crate::reconcile::ObjectType>,
    pub overlap: Duration,
    /// How far back the first pass of a type (no watermark yet) starts.
    pub first_lookback: Duration,
}

impl ReconcilerLambdaConfig {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let token = env.required(
            ACCESS_TOKEN.name,
            "set INTERCOM_ACCESS_TOKEN_PARAMETER to the SSM parameter holding an access token that may read \
             conversations, contacts and tickets",
        )?;
        let token = crate::events::AccessToken::new(token).map_err(|e| ConfigError::Invalid {
            name: ACCESS_TOKEN.name,
            reason: e.to_string(),
        })?;
        let endpoint = match env.optional("INTERCOM_BASE_URL") {
            Some(url) => crate::events::Endpoint::base_url(&url).map_err(|e| ConfigError::Invalid {
                name: "INTERCOM_BASE_URL",
                reason: e.to_string(),
            })?,
            None => {
                crate::events::Endpoint::Region(env.parsed("INTERCOM_REGION", crate::events::Region::Us)?)
            }
        };
        let types = match env.optional("RECONCILE_TYPES") {
            Some(raw) => {
                crate::reconcile::ObjectType::parse_list(&raw).map_err(|reason| ConfigError::Invalid {
                    name: "RECONCILE_TYPES",
                    reason,
                })?
            }
            None => crate::reconcile::ObjectType::ALL.to_vec(),
        };
        let minutes: u64 = env.parsed("RECONCILE_OVERLAP_MINUTES", 10)?;
        let hours: u64 = env.parsed("RECONCILE_FIRST_LOOKBACK_HOURS", 24)?;
        if hours == 0 {
            return Err(ConfigError::Invalid {
                name: "RECONCILE_FIRST_LOOKBACK_HOURS",
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            token,
            endpoint,
            intercom_version: env
                .optional("INTERCOM_VERSION")
                .unwrap_or_else(|| crate::events::DEFAULT_INTERCOM_VERSION.to_owned()),
            queue_url: env.required("QUEUE_URL", "set it to the URL of the notifications SQS queue")?,
            table: env.required(
                "IDEMPOTENCY_TABLE",
                "set it to the name of the DynamoDB idempotency table (it keeps the watermarks)",
            )?,
            types,
            overlap: Duration::from_secs(minutes * 60),
            first_lookback: Duration::from_secs(hours * 3600),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn forward_targets_from_numbered_variables() {
        let config = WorkerConfig::from_env(&env(&[
            ("FORWARD_1_URL", "https://crm.example.com/intercom?token=t0ken"),
            ("FORWARD_1_SECRET", "one"),
            ("FORWARD_3_URL", "http://127.0.0.1:9000/hook"),
            ("FORWARD_3_TOPICS", "conversation.*, contact.*.tag.created"),
            ("FORWARD_3_SECRET", "three"),
            ("FORWARD_3_RATE_PER_SECOND", "2.5"),
        ]))
        .unwrap();
        let targets: Vec<_> = config
            .forwards
            .iter()
            .map(|f| (f.index, f.topics.clone(), f.rate_per_second))
            .collect();
        assert_eq!(
            targets,
            vec![
                (1, vec!["*".to_owned()], DEFAULT_FORWARD_RATE_PER_SECOND),
                (
                    3,
                    vec!["conversation.*".to_owned(), "contact.*.tag.created".to_owned()],
                    2.5
                ),
            ]
        );
        assert!(
            !format!("{:?}", config.forwards).contains("t0ken"),
            "URLs and secrets are never shown"
        );
        assert!(!format!("{:?}", config.forwards).contains("three"));
        let error = |pairs: &[(&str, &str)]| WorkerConfig::from_env(&env(pairs)).unwrap_err().to_string();
        assert!(error(&[("FORWARD_2_URL", "https://x.example")]).starts_with("FORWARD_2_SECRET is not set"));
        assert!(
            error(&[("FORWARD_2_URL", "ftp://x.example"), ("FORWARD_2_SECRET", "s")])
                .contains("must be an http or https URL")
        );
        assert!(error(&[("FORWARD_4_SECRET", "s")])
            .starts_with("FORWARD_4_URL is invalid: is not set, but FORWARD_4_SECRET is"));
        assert!(error(&[
            ("FORWARD_1_URL", "https://x.example"),
            ("FORWARD_1_SECRET", "s"),
            ("FORWARD_1_TOPICS", "a..b")
        ])
        .starts_with("FORWARD_1_TOPICS is invalid"));
        assert!(error(&[
            ("FORWARD_1_URL", "https://x.example"),
            ("FORWARD_1_SECRET", "s"),
            ("FORWARD_1_RATE_PER_SECOND", "0")
        ])
        .starts_with("FORWARD_1_RATE_PER_SECOND is invalid"));
        assert_eq!(worker_secrets().len(), 10);
        assert_eq!(worker_secrets()[9].parameter, "FORWARD_9_SECRET_PARAMETER");
    }

    #[test]
    fn the_reconciler_needs_a_token_a_queue_and_a_table() {
        let full = [
            ("INTERCOM_ACCESS_TOKEN", "tok"),
            ("QUEUE_URL", "https://sqs/q"),
            ("IDEMPOTENCY_TABLE", "t"),
        ];
        let config = ReconcilerLambdaConfig::from_env(&env(&full)).unwrap();
        assert_eq!(config.types.len(), 3);
        assert_eq!(config.overlap, Duration::from_secs(600));
        assert_eq!(config.first_lookback, Duration::from_secs(86_400));
        assert_eq!(config.endpoint.url("me").as_str(), "https://api.intercom.io/me");
        assert!(
            !format!("{config:?}").contains("tok\""),
            "the token is never shown"
        );
        for missing in ["INTERCOM_ACCESS_TOKEN", "QUEUE_URL", "IDEMPOTENCY_TABLE"] {
            let rest: Vec<_> = full.iter().copied().filter(|(k, _)| *k != missing).collect();
            let error = ReconcilerLambdaConfig::from_env(&env(&rest))
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(missing), "{error}");
        }
        let mut odd = full.to_vec();
        odd.extend([("RECONCILE_TYPES", "tickets,companies")]);
        let error = ReconcilerLambdaConfig::from_env(&env(&odd))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("RECONCILE_TYPES") && error.contains("companies"),
            "{error}"
        );
        let mut eu = full.to_vec();
        eu.extend([
            ("INTERCOM_REGION", "eu"),
            ("RECONCILE_TYPES", "contacts"),
            ("RECONCILE_OVERLAP_MINUTES", "3"),
        ]);
        let config = ReconcilerLambdaConfig::from_env(&env(&eu)).unwrap();
        assert_eq!(
            config.endpoint.url("me").as_str(),
            "https://api.eu.intercom.io/me"
        );
        assert_eq!(config.types, vec![crate::reconcile::ObjectType::Contact]);
        assert_eq!(config.overlap, Duration::from_secs(180));
    }

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
    fn an_empty_variable_is_called_empty_not_unset() {
        let err = ReceiverConfig::from_env(&env(&[
            ("INTERCOM_CLIENT_SECRET", "  "),
            ("QUEUE_URL", "q"),
            ("DEAD_LETTER_QUEUE_URL", "d"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("INTERCOM_CLIENT_SECRET is set but empty: set INTERCOM_CLIENT_SECRET to"),
            "{err}"
        );
        let err = ReceiverConfig::from_env(&env(&[("INTERCOM_CLIENT_SECRET", "s"), ("QUEUE_URL", "")]))
            .unwrap_err();
        assert!(err.to_string().starts_with("QUEUE_URL is set but empty"), "{err}");
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
        assert!(debug.contains("[REDACTED]"), "{debug}");
    }

    /// Parameters from a map: a fake store for the resolution logic (the SSM adapter is tested on the
    /// AWS emulator).
    struct Parameters(HashMap<&'static str, &'static str>);

    #[async_trait::async_trait]
    impl ParameterStore for Parameters {
        async fn value(&self, name: &str) -> Result<String, ParameterError> {
            self.0
                .get(name)
                .map(|v| v.to_string())
                .ok_or(ParameterError::NotFound)
        }
    }

    const RECEIVER: [(&str, &str); 2] = [("QUEUE_URL", "q"), ("DEAD_LETTER_QUEUE_URL", "d")];

    async fn receiver_with(
        pairs: &[(&str, &str)],
        parameters: &[(&'static str, &'static str)],
    ) -> Result<ReceiverConfig, ConfigError> {
        let env = env(&[&RECEIVER[..], pairs].concat());
        let store = Parameters(parameters.iter().copied().collect());
        env.resolve(&[CLIENT_SECRET], &store)
            .await?
            .parse(ReceiverConfig::from_env)
    }

    #[tokio::test]
    async fn secrets_from_parameters() {
        let config = receiver_with(
            &[("INTERCOM_CLIENT_SECRET_PARAMETER", "/intercom/secret")],
            &[("/intercom/secret", "new-secret,old-secret")],
        )
        .await
        .unwrap();
        assert_eq!(config.secrets.len(), 2, "parsed like the plain variable");

        // The plain variable alone still works, and a blank parameter variable counts as unset.
        let config = receiver_with(
            &[
                ("INTERCOM_CLIENT_SECRET", "s"),
                ("INTERCOM_CLIENT_SECRET_PARAMETER", " "),
            ],
            &[],
        )
        .await
        .unwrap();
        assert_eq!(config.secrets.len(), 1);

        let err = receiver_with(
            &[
                ("INTERCOM_CLIENT_SECRET", "s"),
                ("INTERCOM_CLIENT_SECRET_PARAMETER", "/intercom/secret"),
            ],
            &[("/intercom/secret", "t")],
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("INTERCOM_CLIENT_SECRET and INTERCOM_CLIENT_SECRET_PARAMETER are both set"),
            "{err}"
        );

        let err = receiver_with(&[("INTERCOM_CLIENT_SECRET_PARAMETER", "/nope")], &[])
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "INTERCOM_CLIENT_SECRET_PARAMETER: the SSM parameter \"/nope\" does not exist"
        );

        let err = receiver_with(
            &[("INTERCOM_CLIENT_SECRET_PARAMETER", "/blank")],
            &[("/blank", " \n")],
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "INTERCOM_CLIENT_SECRET_PARAMETER: the SSM parameter \"/blank\" is empty"
        );

        // A value that does not parse is reported against the parameter, without the value.
        let err = receiver_with(
            &[("INTERCOM_CLIENT_SECRET_PARAMETER", "/bad")],
            &[("/bad", "sekrit,")],
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "INTERCOM_CLIENT_SECRET_PARAMETER: the SSM parameter \"/bad\" holds an invalid INTERCOM_CLIENT_SECRET"
            ),
            "{text}"
        );
        assert!(!text.contains("sekrit") && !format!("{err:?}").contains("sekrit"));
    }

    #[tokio::test]
    async fn fetched_values_never_show_in_debug() {
        let env = env(&[
            ("INTERCOM_CLIENT_SECRET_PARAMETER", "/intercom/secret"),
            ("NOTIFY_WEBHOOK_URL_PARAMETER", "/notify"),
        ]);
        let store = Parameters(HashMap::from([
            ("/intercom/secret", "fetched-7c21e0"),
            ("/notify", "https://hooks.example.com/T/B/fetched-b83f55"),
        ]));
        let resolved = env
            .resolve(&[CLIENT_SECRET, NOTIFY_WEBHOOK_URL], &store)
            .await
            .unwrap();
        let shown = format!("{:?}", resolved.fetched);
        assert_eq!(resolved.fetched.len(), 2, "{shown}");
        assert!(
            shown.contains("/intercom/secret") && shown.contains("/notify"),
            "{shown}"
        );
        for value in ["fetched-7c21e0", "fetched-b83f55", "hooks.example.com"] {
            assert!(!shown.contains(value), "{shown}");
        }
        // The parsed configuration gets the values themselves.
        let secret = resolved.parse(|env| env.client_secrets()).unwrap();
        assert_eq!(secret.primary().expose_secret(), "fetched-7c21e0");
    }

    #[tokio::test]
    async fn notify_url_from_a_parameter() {
        let store = Parameters(HashMap::from([
            ("/notify", "https://hooks.example.com/T/B/secret"),
            ("/notify-bad", "ftp://hooks.example.com/T/B/secret"),
        ]));
        let worker = |parameter: &str| {
            env(&[
                ("IDEMPOTENCY_TABLE", "t"),
                ("DEAD_LETTER_QUEUE_URL", "d"),
                ("NOTIFY_WEBHOOK_URL_PARAMETER", parameter),
            ])
        };
        let config = worker("/notify")
            .resolve(&[NOTIFY_WEBHOOK_URL], &store)
            .await
            .unwrap()
            .parse(WorkerLambdaConfig::from_env)
            .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hooks.example.com"), "{shown}");
        assert_eq!(
            config.worker.notify.unwrap().url.expose_secret(),
            "https://hooks.example.com/T/B/secret"
        );
        let err = worker("/notify-bad")
            .resolve(&[NOTIFY_WEBHOOK_URL], &store)
            .await
            .unwrap()
            .parse(WorkerLambdaConfig::from_env)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "NOTIFY_WEBHOOK_URL_PARAMETER: the SSM parameter \"/notify-bad\" holds an invalid \
             NOTIFY_WEBHOOK_URL: must be an http or https URL"
        );
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
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("hooks.example.com"),
            "{shown}"
        );
        let notify = config.notify.unwrap();
        assert_eq!(notify.topics, DEFAULT_NOTIFY_TOPICS);
        assert!(!format!("{notify:?}").contains("secret"));
        assert_eq!(notify.url.expose_secret(), "https://hooks.example.com/T/B/secret");
        assert_eq!(config.settings.retention.as_secs(), 3 * 86_400);
        assert_eq!(notify.rate_per_second, 1.0);
        assert_eq!(config.settings.deadline_margin, Duration::from_secs(2));
        let config = WorkerConfig::from_env(&env(&[
            ("NOTIFY_WEBHOOK_URL", "https://x"),
            ("NOTIFY_RATE_PER_SECOND", "0.5"),
            ("WORKER_DEADLINE_MARGIN_MS", "750"),
        ]))
        .unwrap();
        assert_eq!(config.notify.unwrap().rate_per_second, 0.5);
        assert_eq!(config.settings.deadline_margin, Duration::from_millis(750));
        for rate in ["0", "-1", "NaN", "inf", "fast"] {
            let err = WorkerConfig::from_env(&env(&[
                ("NOTIFY_WEBHOOK_URL", "https://x"),
                ("NOTIFY_RATE_PER_SECOND", rate),
            ]))
            .unwrap_err();
            assert!(
                err.to_string().starts_with("NOTIFY_RATE_PER_SECOND is invalid"),
                "{rate}: {err}"
            );
        }
        let err = WorkerConfig::from_env(&env(&[
            ("VISIBILITY_TIMEOUT_SECONDS", "30"),
            ("WORKER_DEADLINE_MARGIN_MS", "30000"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("WORKER_DEADLINE_MARGIN_MS is invalid"),
            "{err}"
        );
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

    #[test]
    fn worker_lambda_mirror_table_is_optional() {
        let base = [("IDEMPOTENCY_TABLE", "t"), ("DEAD_LETTER_QUEUE_URL", "d")];
        let config = WorkerLambdaConfig::from_env(&env(&base)).unwrap();
        assert_eq!(config.mirror_table, None);
        let config =
            WorkerLambdaConfig::from_env(&env(&[&base[..], &[("MIRROR_TABLE", " ")]].concat())).unwrap();
        assert_eq!(config.mirror_table, None, "blank counts as unset");
        let config =
            WorkerLambdaConfig::from_env(&env(
                &[&base[..], &[("MIRROR_TABLE", "stack-MirrorTable-1")]].concat()
            ))
            .unwrap();
        assert_eq!(config.mirror_table.as_deref(), Some("stack-MirrorTable-1"));
    }

    #[test]
    fn worker_lambda_completes_by_batch_unless_told_record() {
        let base = [("IDEMPOTENCY_TABLE", "t"), ("DEAD_LETTER_QUEUE_URL", "d")];
        let with = |value: &str| {
            WorkerLambdaConfig::from_env(&env(&[&base[..], &[("IDEMPOTENCY_COMPLETION", value)]].concat()))
        };
        assert!(
            WorkerLambdaConfig::from_env(&env(&base))
                .unwrap()
                .batch_completion
        );
        assert!(with("batch").unwrap().batch_completion);
        assert!(with(" ").unwrap().batch_completion, "blank counts as unset");
        assert!(!with("record").unwrap().batch_completion);
        let err = with("per-batch").unwrap_err().to_string();
        assert!(err.contains("IDEMPOTENCY_COMPLETION"), "{err}");
        assert!(err.contains("\"per-batch\" is neither"), "{err}");
    }
}
