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

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
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
}

/// Loads the shared AWS configuration (region, credentials, `AWS_ENDPOINT_URL`, …) from the environment,
/// as every AWS SDK does, with the timeouts and retries of `budget`.
pub async fn load_config(budget: CallBudget) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(budget.connect)
                .operation_attempt_timeout(budget.attempt)
                .operation_timeout(budget.operation)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(budget.max_attempts))
        .load()
        .await
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
