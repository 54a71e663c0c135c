//! Secrets read from SSM Parameter Store at start-up (`INTERCOM_CLIENT_SECRET_PARAMETER`,
//! `NOTIFY_WEBHOOK_URL_PARAMETER`), on the AWS emulator: SecureString parameters and Secrets Manager
//! secrets through their SSM reference name.

use std::collections::HashMap;
use std::sync::Arc;

use crate::support::{create_queue, drain, fixture, sign, unique, TEST_SECRET};
use aws_sdk_ssm::types::ParameterType;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use intercom_webhooks::aws::sqs::SqsQueue;
use intercom_webhooks::aws::ssm::SsmParameters;
use intercom_webhooks::plumbing::config::{
    ConfigError, Env, ReceiverConfig, WorkerLambdaConfig, CLIENT_SECRET, NOTIFY_WEBHOOK_URL,
};
use intercom_webhooks::receiving::intake::Intake;
use intercom_webhooks::receiving::signature::ClientSecret;
use secrecy::ExposeSecret;
use tower::ServiceExt;

struct Emulator {
    ssm: aws_sdk_ssm::Client,
    sqs: aws_sdk_sqs::Client,
    parameters: SsmParameters,
}

async fn emulator() -> Emulator {
    let sdk = crate::support::aws_config().await;
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    Emulator {
        parameters: SsmParameters::new(ssm.clone()),
        sqs: aws_sdk_sqs::Client::new(&sdk),
        ssm,
    }
}

impl Emulator {
    async fn put_secure_string(&self, name: &str, value: &str) {
        self.ssm
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(ParameterType::SecureString)
            .send()
            .await
            .unwrap();
    }

    /// The receiver's configuration as its binary loads it, from these variables.
    async fn receiver_config(&self, vars: &[(&str, &str)]) -> Result<ReceiverConfig, ConfigError> {
        let vars: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Env(move |name: &str| vars.get(name).cloned())
            .resolve(&[CLIENT_SECRET], &self.parameters)
            .await?
            .parse(ReceiverConfig::from_env)
    }
}

/// Creates a Secrets Manager secret through the service's JSON API (the emulator serves it; the SDK for
/// it is not a dependency). The emulator routes by the credential scope and does not check signatures.
async fn create_secret(name: &str, value: &str) {
    let response = reqwest::Client::new()
        .post(crate::support::aws_endpoint())
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "secretsmanager.CreateSecret")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/secretsmanager/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .body(serde_json::json!({"Name": name, "SecretString": value}).to_string())
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
}

/// Posts one signed delivery to the receiver app built from `config`; returns the status.
async fn deliver(config: ReceiverConfig, queue: SqsQueue, signature: String) -> StatusCode {
    let app = Intake::new(config.secrets, Arc::new(queue), config.max_body_bytes).router();
    let request = Request::post("/webhooks/intercom")
        .header("content-type", "application/json")
        .header("x-hub-signature", signature)
        .body(Body::from(fixture("conversation_user_created.json")))
        .unwrap();
    app.oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn the_receiver_verifies_with_the_secrets_of_a_secure_string_parameter() {
    let aws = emulator().await;
    let queue = create_queue(&aws.sqs, &unique("secret-parameter")).await;
    let parameter = format!("/{}/client-secret", unique("intercom"));
    // During a rotation: the new secret first, the test secret second.
    aws.put_secure_string(&parameter, &format!("new-secret,{TEST_SECRET}"))
        .await;
    let vars = [
        ("INTERCOM_CLIENT_SECRET_PARAMETER", parameter.as_str()),
        ("QUEUE_URL", queue.as_str()),
        ("DEAD_LETTER_QUEUE_URL", queue.as_str()),
    ];
    let body = fixture("conversation_user_created.json");

    let config = aws.receiver_config(&vars).await.unwrap();
    assert_eq!(config.secrets.len(), 2);
    let adapter = SqsQueue::new(aws.sqs.clone(), &config.queue_url, &config.dead_letter_queue_url);
    assert_eq!(
        deliver(config, adapter.clone(), sign(&body)).await,
        StatusCode::OK
    );
    let config = aws.receiver_config(&vars).await.unwrap();
    let by_new = ClientSecret::new("new-secret").unwrap().sign(&body);
    assert_eq!(deliver(config, adapter.clone(), by_new).await, StatusCode::OK);
    let config = aws.receiver_config(&vars).await.unwrap();
    let by_other = ClientSecret::new("other-secret").unwrap().sign(&body);
    assert_eq!(deliver(config, adapter, by_other).await, StatusCode::UNAUTHORIZED);
    assert_eq!(drain(&aws.sqs, &queue).await.len(), 2);
}

#[tokio::test]
async fn a_missing_parameter_stops_start_up_naming_the_variable_and_the_parameter() {
    let aws = emulator().await;
    let parameter = format!("/{}/client-secret", unique("missing"));
    let err = aws
        .receiver_config(&[
            ("INTERCOM_CLIENT_SECRET_PARAMETER", &parameter),
            ("QUEUE_URL", "q"),
            ("DEAD_LETTER_QUEUE_URL", "d"),
        ])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("INTERCOM_CLIENT_SECRET_PARAMETER: the SSM parameter {parameter:?} does not exist")
    );
}

#[tokio::test]
async fn a_plain_variable_and_its_parameter_together_stop_start_up() {
    let aws = emulator().await;
    let parameter = format!("/{}/client-secret", unique("both"));
    aws.put_secure_string(&parameter, "from-the-parameter").await;
    let err = aws
        .receiver_config(&[
            ("INTERCOM_CLIENT_SECRET", "from-the-variable"),
            ("INTERCOM_CLIENT_SECRET_PARAMETER", &parameter),
            ("QUEUE_URL", "q"),
            ("DEAD_LETTER_QUEUE_URL", "d"),
        ])
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("INTERCOM_CLIENT_SECRET and INTERCOM_CLIENT_SECRET_PARAMETER are both set"),
        "{text}"
    );
    assert!(!text.contains("from-the-"), "{text}");
}

#[tokio::test]
async fn an_empty_parameter_stops_start_up_without_showing_it() {
    let aws = emulator().await;
    let parameter = format!("/{}/client-secret", unique("blank"));
    // SSM refuses empty values; blank is as close as it gets.
    aws.put_secure_string(&parameter, " ").await;
    let err = aws
        .receiver_config(&[
            ("INTERCOM_CLIENT_SECRET_PARAMETER", &parameter),
            ("QUEUE_URL", "q"),
            ("DEAD_LETTER_QUEUE_URL", "d"),
        ])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("INTERCOM_CLIENT_SECRET_PARAMETER: the SSM parameter {parameter:?} is empty")
    );
}

#[tokio::test]
async fn a_secrets_manager_secret_is_read_through_its_ssm_reference() {
    let aws = emulator().await;
    let secret = unique("intercom-client-secret");
    create_secret(&secret, TEST_SECRET).await;
    let parameter = format!("/aws/reference/secretsmanager/{secret}");
    let config = aws
        .receiver_config(&[
            ("INTERCOM_CLIENT_SECRET_PARAMETER", &parameter),
            ("QUEUE_URL", "q"),
            ("DEAD_LETTER_QUEUE_URL", "d"),
        ])
        .await
        .unwrap();
    let body = fixture("ping.json");
    let signature = sign(&body);
    let verified = config.secrets.verify(Some(signature.as_bytes()), &body);
    assert_eq!(verified.unwrap().secret_index, 0, "keyed with the secret's value");
}

#[tokio::test]
async fn the_worker_reads_the_notify_url_from_a_parameter() {
    let aws = emulator().await;
    let parameter = format!("/{}/notify-url", unique("worker"));
    aws.put_secure_string(&parameter, "https://hooks.example.com/services/T/B/secret")
        .await;
    let vars: HashMap<&str, String> = HashMap::from([
        ("NOTIFY_WEBHOOK_URL_PARAMETER", parameter.clone()),
        ("IDEMPOTENCY_TABLE", "t".to_string()),
        ("DEAD_LETTER_QUEUE_URL", "d".to_string()),
    ]);
    let config = Env(|name: &str| vars.get(name).cloned())
        .resolve(&[NOTIFY_WEBHOOK_URL], &aws.parameters)
        .await
        .unwrap()
        .parse(WorkerLambdaConfig::from_env)
        .unwrap();
    assert_eq!(
        config.worker.notify.unwrap().url.expose_secret(),
        "https://hooks.example.com/services/T/B/secret"
    );
}

#[tokio::test]
async fn serve_reads_its_client_secret_from_a_parameter_too() {
    let e = emulator().await;
    let name = format!("/serve/{}", unique("secret"));
    e.put_secure_string(&name, "from-the-parameter").await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_intercom-webhooks"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--db"])
        .arg(dir.path().join("db.sqlite"))
        .env_remove("INTERCOM_CLIENT_SECRET")
        .env("INTERCOM_CLIENT_SECRET_PARAMETER", &name)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let body = fixture("contact_deleted.json");
    let signature = ClientSecret::new("from-the-parameter").unwrap().sign(&body);
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let status = loop {
        let answer = client
            .post(format!("http://127.0.0.1:{port}/webhooks/intercom"))
            .header("x-hub-signature", &signature)
            .body(body.clone())
            .send()
            .await;
        if let Ok(answer) = answer {
            break answer.status();
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "serve did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let wrong = client
        .post(format!("http://127.0.0.1:{port}/webhooks/intercom"))
        .header("x-hub-signature", sign(&body))
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .status();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(
        wrong,
        reqwest::StatusCode::UNAUTHORIZED,
        "the test secret is not the parameter's"
    );
}
