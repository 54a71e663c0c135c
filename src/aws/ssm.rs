//! The SSM Parameter Store adapter of [`ParameterStore`]: where the Lambdas read their secrets at
//! start-up. A Secrets Manager secret is read through SSM by the name
//! `/aws/reference/secretsmanager/<secret-name>`.

use std::sync::OnceLock;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_ssm::error::DisplayErrorContext;
use aws_sdk_ssm::operation::get_parameter::GetParameterError;
use aws_sdk_ssm::Client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::plumbing::config::{ParameterError, ParameterStore};

#[derive(Clone, Debug)]
pub struct SsmParameters {
    client: OnceLock<Client>,
    /// Where the client is made from when it is first needed; `None` when it was given.
    sdk: Option<SdkConfig>,
}

impl SsmParameters {
    pub fn new(client: Client) -> Self {
        Self {
            client: OnceLock::from(client),
            sdk: None,
        }
    }

    /// The client is made on the first read, so a process whose secrets are all given as values never
    /// makes it: making an SDK client builds its TLS connector, which parses the platform's root
    /// certificates, a few milliseconds of every cold start.
    pub fn from_config(sdk: &SdkConfig) -> Self {
        Self {
            client: OnceLock::new(),
            sdk: Some(sdk.clone()),
        }
    }

    fn client(&self) -> &Client {
        self.client.get_or_init(|| {
            Client::new(
                self.sdk
                    .as_ref()
                    .expect("the configuration is kept when no client is given"),
            )
        })
    }
}

#[async_trait]
impl ParameterStore for SsmParameters {
    /// Decrypts SecureString parameters (Secrets Manager references require it).
    async fn value(&self, name: &str) -> Result<String, ParameterError> {
        let out = self
            .client()
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(parameter_error)?;
        Ok(out.parameter.and_then(|p| p.value).unwrap_or_default())
    }
}

fn parameter_error(error: SdkError<GetParameterError, HttpResponse>) -> ParameterError {
    if let Some(service) = error.as_service_error() {
        if service.is_parameter_not_found() {
            return ParameterError::NotFound;
        }
        // The AccessDenied of IAM, and KMS's refusal to decrypt.
        let code = service.code().unwrap_or_default();
        if code.starts_with("AccessDenied") || service.is_invalid_key_id() {
            return ParameterError::AccessDenied(service.message().unwrap_or(code).to_owned());
        }
    }
    let text = DisplayErrorContext(&error).to_string();
    if super::is_transient(&error) {
        ParameterError::Unavailable(text)
    } else {
        ParameterError::Rejected(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn refused(status: u16, code: &str, message: &str) -> SdkError<GetParameterError, HttpResponse> {
        let error = ErrorMetadata::builder().code(code).message(message).build();
        SdkError::service_error(
            GetParameterError::generic(error),
            HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty()),
        )
    }

    /// What IAM answers when the role lacks `ssm:GetParameter` on the parameter.
    #[test]
    fn access_denied_says_so() {
        let error = parameter_error(refused(
            400,
            "AccessDeniedException",
            "User: arn:aws:sts::123456789012:assumed-role/receiver is not authorized to perform: \
             ssm:GetParameter on resource: arn:aws:ssm:us-east-1:123456789012:parameter/intercom/secret",
        ));
        assert!(matches!(error, ParameterError::AccessDenied(_)), "{error:?}");
        assert!(error
            .to_string()
            .starts_with("cannot be read: access denied (User: arn:aws:sts"));
        assert!(!error.is_retryable());
        let error = parameter_error(refused(500, "InternalServerError", "try again"));
        assert!(error.is_retryable(), "{error:?}");
    }
}
