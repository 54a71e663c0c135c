//! AWS adapters for the ports: SQS for [`crate::receiving::queue::Queue`], DynamoDB for the idempotency store
//! and the mirror, SSM Parameter Store for secrets.
//! The domain never sees an SDK type; everything AWS-specific stays in this module.

pub mod dynamodb;
pub mod emf;
pub mod eventbridge;
pub mod lambda_sqs;
pub mod mirror;
pub mod sqs;
pub mod sqs_dlq;
pub mod ssm;

use std::time::Duration;

use aws_config::environment::credentials::EnvironmentVariableCredentialsProvider;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// How long an AWS call may take, end to end. The receiver must answer Intercom well inside 5 seconds,
/// so its budget is tight; the worker can afford more.
#[derive(Clone, Copy, Debug)]
pub struct CallBudget {
    pub connect: Duration,
    pub attempt: Duration,
    pub operation: Duration,
    pub max_attempts: u32,
}

impl CallBudget {
    /// For the receiver: every answer within about 2.5 s, whatever the queue does.
    pub const RECEIVER: CallBudget = CallBudget {
        connect: Duration::from_millis(500),
        attempt: Duration::from_millis(1000),
        operation: Duration::from_millis(2500),
        max_attempts: 3,
    };
    /// For the worker and the command line.
    pub const WORKER: CallBudget = CallBudget {
        connect: Duration::from_secs(1),
        attempt: Duration::from_secs(3),
        operation: Duration::from_secs(10),
        max_attempts: 3,
    };

    fn timeouts(self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect)
            .operation_attempt_timeout(self.attempt)
            .operation_timeout(self.operation)
            .build()
    }

    fn retries(self) -> RetryConfig {
        RetryConfig::standard().with_max_attempts(self.max_attempts)
    }
}

/// The HTTP client of every AWS call: hyper 1 and rustls with ring's cryptography (the stack reqwest uses
/// too, see [`crate::plumbing::tls`]), trusting the platform's root certificates.
pub fn https_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}

/// Loads the shared AWS configuration (region, credentials, `AWS_ENDPOINT_URL`, …) from the environment,
/// as every AWS SDK does (profiles, SSO, the instance's or container's role, …), with the timeouts and
/// retries of `budget`. For the command line; the Lambda functions use [`lambda_config`].
pub async fn load_config(budget: CallBudget) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(https_client())
        .timeout_config(budget.timeouts())
        .retry_config(budget.retries())
        .load()
        .await
}

/// The configuration of the Lambda functions, from the variables the Lambda service sets: the region
/// (`AWS_REGION`, else `AWS_DEFAULT_REGION`), the function role's credentials (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), and `AWS_ENDPOINT_URL` when set (an emulator), with the
/// timeouts and retries of `budget`. Nothing else is read: no profile files, SSO, instance metadata or
/// STS, whose providers [`load_config`] would link into each function's binary.
pub fn lambda_config(budget: CallBudget) -> SdkConfig {
    lambda_config_from(budget, |name| std::env::var(name).ok())
}

fn lambda_config_from(budget: CallBudget, var: impl Fn(&str) -> Option<String>) -> SdkConfig {
    let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
    let region = var("AWS_REGION")
        .or_else(|| var("AWS_DEFAULT_REGION"))
        .map(aws_config::Region::new);
    let mut builder = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(region)
        .credentials_provider(SharedCredentialsProvider::new(
            EnvironmentVariableCredentialsProvider::new(),
        ))
        .identity_cache(aws_config::identity::IdentityCache::lazy().build())
        .timeout_config(budget.timeouts())
        .retry_config(budget.retries())
        .time_source(aws_smithy_async::time::SystemTimeSource::new())
        .http_client(https_client());
    builder.set_sleep_impl(aws_smithy_async::rt::sleep::default_async_sleep());
    builder.set_endpoint_url(var("AWS_ENDPOINT_URL"));
    builder.build()
}

/// Whether an SDK failure can succeed on a later try: network trouble, timeouts, throttling and 5xx can;
/// a request the service refused as invalid cannot.
pub(crate) fn is_transient<E>(error: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata,
{
    match error {
        SdkError::ServiceError(context) => {
            let status = context.raw().status().as_u16();
            let code = context.err().code().unwrap_or_default();
            status >= 500
                || status == 429
                || code.contains("Throttl")
                || code.contains("RequestLimitExceeded")
                || code.contains("ProvisionedThroughputExceeded")
                || code.contains("ServiceUnavailable")
                || code.contains("InternalError")
        }
        SdkError::ConstructionFailure(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> SdkConfig {
        let vars: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        lambda_config_from(CallBudget::RECEIVER, |name| vars.get(name).cloned())
    }

    #[test]
    fn the_lambda_configuration_comes_from_the_variables_lambda_sets() {
        let sdk = config(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
        ]);
        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("eu-west-1"));
        assert_eq!(sdk.endpoint_url(), Some("http://127.0.0.1:5000"));
        assert!(sdk.credentials_provider().is_some());
        assert!(sdk.sleep_impl().is_some(), "retries and timeouts need a sleep");
        assert!(
            sdk.http_client().is_some(),
            "the SDK has no default HTTP client here"
        );
        assert_eq!(
            sdk.timeout_config().and_then(|t| t.operation_timeout()),
            Some(CallBudget::RECEIVER.operation)
        );
        assert_eq!(
            sdk.retry_config().map(|r| r.max_attempts()),
            Some(CallBudget::RECEIVER.max_attempts)
        );

        // The fallback region; blank values are unset; no endpoint override without the variable.
        let sdk = config(&[
            ("AWS_REGION", " "),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", ""),
        ]);
        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("us-east-1"));
        assert_eq!(sdk.endpoint_url(), None);
        assert_eq!(config(&[]).region(), None);
    }
}
