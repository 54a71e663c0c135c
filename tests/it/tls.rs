//! The TLS stack end to end (rustls with ring): the AWS SDK's client (`dlq list` against SQS) and
//! reqwest's (`send`) each complete a handshake with a local HTTPS server whose certificate chains to the
//! root named by `SSL_CERT_FILE`, and both refuse the same server when that file holds another root.

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::support::fixture_path;

const BIN: &str = env!("CARGO_BIN_EXE_intercom-webhooks");

/// A root certificate (PEM) and a server certificate for `localhost` and 127.0.0.1 signed by it.
struct Pki {
    root_pem: String,
    server_der: Vec<u8>,
    server_key: Vec<u8>,
}

fn root(name: &str) -> (CertificateParams, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    (params, key)
}

fn pki() -> Pki {
    let (root_params, root_key) = root("intercom-webhooks test root");
    let root_pem = root_params.self_signed(&root_key).unwrap().pem();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &Issuer::new(root_params, root_key))
        .unwrap();
    Pki {
        root_pem,
        server_der: server.der().to_vec(),
        server_key: server_key.serialize_der(),
    }
}

/// What the server saw: the heads of the requests it answered, and the handshakes that failed.
#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<String>>>,
    refused: Arc<Mutex<Vec<String>>>,
}

/// An HTTPS server on 127.0.0.1 that answers every request `200` with `{}` (an empty answer of SQS's JSON
/// protocol, and a receiver's acceptance); returns its port.
async fn https_server(pki: &Pki, seen: Seen) -> u16 {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.server_der.clone().into()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone())),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(error) => {
                        seen.refused.lock().unwrap().push(error.to_string());
                        return;
                    }
                };
                let Some(head) = read_request(&mut tls).await else {
                    return;
                };
                seen.requests.lock().unwrap().push(head);
                let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\n\
                              content-length: 2\r\nconnection: close\r\n\r\n{}";
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

/// Reads one request (head, then as many body bytes as `content-length` says); returns its head.
async fn read_request<S: AsyncReadExt + Unpin>(stream: &mut S) -> Option<String> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        bytes.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    while bytes.len() < end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
    Some(head)
}

/// Runs the command line with `SSL_CERT_FILE` as its only source of roots and the AWS SDK pointed at
/// `port`.
async fn run(args: Vec<String>, roots: &std::path::Path, port: u16) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("SSL_CERT_FILE", roots)
        .env_remove("SSL_CERT_DIR")
        .env("AWS_ENDPOINT_URL", format!("https://localhost:{port}"))
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("INTERCOM_CLIENT_SECRET", "tls-test-secret");
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .unwrap()
}

fn dlq_list(port: u16) -> Vec<String> {
    let queue = |name: &str| format!("https://localhost:{port}/123456789012/{name}");
    vec![
        "dlq".into(),
        "--queue-url".into(),
        queue("notifications"),
        "--dlq-url".into(),
        queue("dead-letters"),
        "list".into(),
    ]
}

fn send(port: u16) -> Vec<String> {
    vec![
        "send".into(),
        fixture_path("ping.json").to_str().unwrap().into(),
        "--url".into(),
        format!("https://localhost:{port}/webhooks/intercom"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_and_reqwest_speak_tls_with_the_roots_they_are_given_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let trusted = dir.path().join("trusted.pem");
    std::fs::write(&trusted, &pki.root_pem).unwrap();
    let (other, other_key) = root("another root");
    let untrusted = dir.path().join("untrusted.pem");
    std::fs::write(&untrusted, other.self_signed(&other_key).unwrap().pem()).unwrap();

    // The AWS SDK's client: the request reaches the server over TLS.
    let seen = Seen::default();
    let port = https_server(&pki, seen.clone()).await;
    let output = run(dlq_list(port), &trusted, port).await;
    let requests = seen.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .any(|head| head.contains("x-amz-target: amazonsqs.")),
        "no SQS request arrived: {requests:?}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(seen.refused.lock().unwrap().is_empty());

    // reqwest: `send` delivers and reports the server's 200.
    let seen = Seen::default();
    let port = https_server(&pki, seen.clone()).await;
    let output = run(send(port), &trusted, port).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        requests[0].starts_with("post /webhooks/intercom http/1.1"),
        "{requests:?}"
    );
    assert!(requests[0].contains("x-hub-signature: sha1="), "{requests:?}");

    // With another root, neither sends anything: each refuses the server's certificate.
    for args in [dlq_list as fn(u16) -> Vec<String>, send] {
        let seen = Seen::default();
        let port = https_server(&pki, seen.clone()).await;
        let output = run(args(port), &untrusted, port).await;
        assert!(!output.status.success(), "{:?}", args(port));
        assert!(seen.requests.lock().unwrap().is_empty(), "{:?}", seen.requests);
        // The server notes the client's alert once it reads it, which may be after the client exited.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while seen.refused.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let refused = seen.refused.lock().unwrap().clone();
        assert!(
            refused.iter().any(|e| e.contains("UnknownCA")),
            "{:?}: {refused:?}",
            args(port)
        );
    }
}
