//! `intercom-webhooks sign` and `send` run as child processes: where the client secret may come from.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::fixture_path;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const BIN: &str = env!("CARGO_BIN_EXE_intercom-webhooks");
/// `openssl dgst -sha1 -hmac test-client-secret` of every fixture.
const VECTORS: &[(&str, &str)] = &include!("../fixtures/signature_vectors.in");
const VECTOR_SECRET: &str = "test-client-secret";
const REFUSAL: &str = "--secret is not accepted: a secret on the command line shows in the process list \
     and the shell history; set INTERCOM_CLIENT_SECRET or pass --secret-file PATH";

/// Runs the command with `INTERCOM_CLIENT_SECRET` set to `secret`, or removed.
fn run(args: &[&str], secret: Option<&str>) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).env_remove("INTERCOM_CLIENT_SECRET");
    if let Some(secret) = secret {
        command.env("INTERCOM_CLIENT_SECRET", secret);
    }
    command.output().expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let file = dir.join(name);
    std::fs::write(&file, content).unwrap();
    file.to_str().unwrap().to_string()
}

#[test]
fn a_secret_on_the_command_line_is_refused() {
    let ping = fixture_path("ping.json");
    let ping = ping.to_str().unwrap();
    // Something listening, to see that `send` connects to nobody.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/webhooks/intercom", listener.local_addr().unwrap());
    let cases: Vec<Vec<&str>> = vec![
        vec!["sign", ping, "--secret", "given-on-the-command-line"],
        vec!["sign", "--secret=given-on-the-command-line", ping],
        vec!["sign", ping, "--secret"],
        vec![
            "send",
            ping,
            "--url",
            &url,
            "--secret",
            "given-on-the-command-line",
        ],
        vec![
            "send",
            ping,
            "--secret",
            "given-on-the-command-line",
            "--url",
            &url,
        ],
    ];
    for args in cases {
        // Refused even when a usable secret is in the environment.
        let output = run(&args, Some(VECTOR_SECRET));
        assert!(!output.status.success(), "{args:?}");
        let err = stderr(&output);
        assert!(err.contains(REFUSAL), "{args:?}: {err}");
        assert!(!err.contains("given-on-the-command-line"), "{args:?}: {err}");
        assert_eq!(stdout(&output), "", "{args:?}: no signature, no answer");
    }
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "send connected to the receiver"
    );
}

#[test]
fn a_secret_file_signs_as_the_variable_does() {
    let dir = tempfile::tempdir().unwrap();
    // Surrounding whitespace and the final newline an editor adds are not part of the secret.
    let file = write(dir.path(), "secret", &format!("  {VECTOR_SECRET}\n"));
    assert_eq!(VECTORS.len(), 10);
    for (name, hex) in VECTORS {
        let path = fixture_path(name);
        let path = path.to_str().unwrap();
        let expected = format!("sha1={hex}\n");

        let from_variable = run(&["sign", path], Some(VECTOR_SECRET));
        assert!(from_variable.status.success(), "{}", stderr(&from_variable));
        assert_eq!(stdout(&from_variable), expected, "{name}");

        let from_file = run(&["sign", path, "--secret-file", &file], None);
        assert!(from_file.status.success(), "{}", stderr(&from_file));
        assert_eq!(stdout(&from_file), expected, "{name}");
    }

    // Several secrets, as in the variable: the first signs. The file wins over the variable.
    let rotating = write(
        dir.path(),
        "rotating",
        &format!("{VECTOR_SECRET}, the-previous-secret\n"),
    );
    let (name, hex) = VECTORS[0];
    let path = fixture_path(name);
    let output = run(
        &["sign", path.to_str().unwrap(), "--secret-file", &rotating],
        Some("another-secret"),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("sha1={hex}\n"));
}

#[test]
fn an_empty_or_missing_secret_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ping = fixture_path("ping.json");
    let ping = ping.to_str().unwrap();
    for content in ["", "\n", "  \n\t\n"] {
        let file = write(dir.path(), "empty", content);
        let output = run(&["sign", ping, "--secret-file", &file], Some(VECTOR_SECRET));
        assert!(!output.status.success(), "{content:?}");
        let err = stderr(&output);
        assert!(
            err.contains(&format!("the secret file {file} is empty")),
            "{content:?}: {err}"
        );
        assert_eq!(stdout(&output), "", "{content:?}");
    }

    let file = write(dir.path(), "one-empty-entry", "a-secret,\n");
    let output = run(&["sign", ping, "--secret-file", &file], None);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(&format!("invalid client secret in {file}")),
        "{}",
        stderr(&output)
    );
    assert!(!stderr(&output).contains("a-secret"), "{}", stderr(&output));

    let missing = dir.path().join("no-such-file");
    let missing = missing.to_str().unwrap();
    let output = run(&["sign", ping, "--secret-file", missing], None);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(&format!("cannot read the secret file {missing}")),
        "{}",
        stderr(&output)
    );

    let output = run(&["sign", ping], None);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("no client secret: set INTERCOM_CLIENT_SECRET") && err.contains("--secret-file PATH"),
        "{err}"
    );
    assert_eq!(stdout(&output), "");
}

#[tokio::test]
async fn send_signs_with_the_secret_file() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/webhooks/intercom"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"status":"ok"}"#))
        .expect(1)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "secret", &format!("{VECTOR_SECRET}\n"));
    let ping = fixture_path("ping.json");
    let url = format!("{}/webhooks/intercom", server.uri());
    let args: Vec<String> = vec![
        "send".into(),
        ping.to_str().unwrap().into(),
        "--url".into(),
        url,
        "--secret-file".into(),
        file,
    ];
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, None)
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).starts_with("200  "), "{}", stdout(&output));

    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    let expected = VECTORS.iter().find(|(name, _)| *name == "ping.json").unwrap().1;
    assert_eq!(
        received[0]
            .headers
            .get("x-hub-signature")
            .unwrap()
            .to_str()
            .unwrap(),
        format!("sha1={expected}")
    );
    assert_eq!(received[0].body, std::fs::read(&ping).unwrap());
    server.verify().await;
}

#[test]
fn a_url_without_a_scheme_says_what_to_write() {
    let ping = fixture_path("ping.json");
    let out = run(
        &[
            "send",
            ping.to_str().unwrap(),
            "--url",
            "127.0.0.1:8080/webhooks/intercom",
        ],
        Some(VECTOR_SECRET),
    );
    assert!(!out.status.success());
    let stderr = stderr(&out);
    assert!(
        stderr.contains("has no scheme: write http://127.0.0.1:8080/webhooks/intercom"),
        "{stderr}"
    );
    assert!(!stderr.contains("builder error"), "{stderr}");
}
