//! End to end: `intercom-webhooks serve` as a child process with a temporary database, fed by
//! `intercom-webhooks send` and by concurrent signed POSTs, killed with SIGKILL and restarted.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{fixture, fixtures_dir, free_port, sign, TEST_SECRET};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_intercom-webhooks");

/// A running `serve`, every line it has printed, and those that are JSON parsed.
struct Server {
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<Value>>>,
    text: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(db: &Path, env: &[(&str, &str)]) -> Server {
        Self::start_with(db, env, &[])
    }

    /// With extra `serve` options (JSON logs and a visibility timeout of 5 s unless they say otherwise).
    fn start_with(db: &Path, env: &[(&str, &str)], options: &[&str]) -> Server {
        let mut options = options.to_vec();
        if !options.contains(&"--visibility-timeout") {
            options.extend(["--visibility-timeout", "5"]);
        }
        if !options.contains(&"--log-format") {
            options.extend(["--log-format", "json"]);
        }
        let options = &options[..];
        let port = free_port();
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--db"])
            .arg(db)
            .args(options)
            .env("INTERCOM_CLIENT_SECRET", TEST_SECRET)
            .env_remove("NOTIFY_WEBHOOK_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let text = Arc::new(Mutex::new(Vec::new()));
        let (sink, text_sink) = (lines.clone(), text.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
                text_sink.lock().unwrap().push(line);
            }
        });
        let server = Server {
            child,
            port,
            lines,
            text,
        };
        server.wait_until("the server answers /healthz", || {
            reqwest::blocking::get(server.url("/healthz")).is_ok_and(|r| r.status().is_success())
        });
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn outcomes(&self) -> Vec<(String, String)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["message"] == "outcome")
            .map(|l| {
                (
                    l["notification_id"].as_str().unwrap_or_default().to_owned(),
                    l["outcome"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    fn health(&self) -> Value {
        reqwest::blocking::get(self.url("/healthz"))
            .unwrap()
            .json()
            .unwrap()
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting until {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_9(mut self) -> Vec<(String, String)> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        self.outcomes()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("send")
        .args(args)
        .env("INTERCOM_CLIENT_SECRET", TEST_SECRET)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn every_fixture_is_handled_once_and_a_resend_is_all_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("db.sqlite"), &[]);
    let url = server.url("/webhooks/intercom");
    let (ok, out) = send(&[fixtures_dir().to_str().unwrap(), "--url", &url]);
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 10);
    assert!(lines.iter().all(|l| l.starts_with("200  ")), "{out}");

    server.wait_until("9 outcomes", || server.outcomes().len() == 9);
    let first = server.outcomes();
    // Three fixtures are versions of one conversation. The pollers process them in any order: the newest
    // (closed) is always applied; an older reply is applied if it came before a newer one, else stale.
    let id_of = |name: &str| -> String {
        let body: Value = serde_json::from_slice(&fixture(name)).unwrap();
        body["id"].as_str().unwrap().to_owned()
    };
    let older = [
        id_of("conversation_admin_replied.json"),
        id_of("conversation_user_replied.json"),
    ];
    for (id, outcome) in &first {
        if older.contains(id) {
            assert!(outcome == "processed" || outcome == "stale", "{first:?}");
        } else {
            assert_eq!(outcome, "processed", "{first:?}");
        }
    }
    let (ok, out, err) = mirror_cli(
        &dir.path().join("db.sqlite"),
        &["get", "conversation", "21322009097"],
    );
    assert!(ok, "{err}");
    let kept: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        kept["item"]["updated_at"], 1553291389,
        "the closed conversation, the newest"
    );

    let ids: std::collections::HashSet<_> = first.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), 9, "nine distinct notifications, ping excluded");

    let (ok, _) = send(&[fixtures_dir().to_str().unwrap(), "--url", &url]);
    assert!(ok);
    server.wait_until("18 outcomes", || server.outcomes().len() == 18);
    let second = &server.outcomes()[9..];
    assert!(second.iter().all(|(_, o)| o == "duplicate"), "{second:?}");
    let health = server.health();
    assert_eq!(
        (health["queued"].as_u64(), health["dead_letters"].as_u64()),
        (Some(0), Some(0))
    );

    // --fresh-id makes each send new.
    let (ok, out) = send(&[
        fixtures_dir().join("contact_deleted.json").to_str().unwrap(),
        "--url",
        &url,
        "--fresh-id",
    ]);
    assert!(ok, "{out}");
    server.wait_until("19 outcomes", || server.outcomes().len() == 19);
    assert_eq!(server.outcomes()[18].1, "processed");

    let metrics = reqwest::blocking::get(server.url("/metrics"))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("intercom_webhooks_enqueued_total 19\n"),
        "{metrics}"
    );
    assert!(metrics.contains("intercom_webhooks_pings_total 2\n"), "{metrics}");
    // Each 200 waited for a sync of the WAL (several answers may share one).
    let syncs: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("intercom_webhooks_wal_syncs_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no WAL sync count in {metrics}"));
    assert!(syncs >= 1, "{metrics}");
}

#[test]
fn sigkill_under_load_then_restart_processes_every_acknowledged_notification_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let server = Server::start(&db, &[]);
    let template: Value = serde_json::from_slice(&fixture("conversation_user_replied.json")).unwrap();
    let url = server.url("/");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let total = 400;
    let next = Arc::new(Mutex::new(0usize));
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (url, acked, next, template) = (url.clone(), acked.clone(), next.clone(), template.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                loop {
                    let n = {
                        let mut next = next.lock().unwrap();
                        *next += 1;
                        *next
                    };
                    if n > total {
                        return;
                    }
                    let mut body = template.clone();
                    let id = format!("notif_kill_{n}");
                    body["id"] = id.clone().into();
                    let bytes = serde_json::to_vec_pretty(&body).unwrap();
                    let response = client
                        .post(&url)
                        .header("x-hub-signature", sign(&bytes))
                        .body(bytes)
                        .send();
                    if response.is_ok_and(|r| r.status() == 200) {
                        acked.lock().unwrap().push(id);
                    }
                }
            })
        })
        .collect();
    // Kill it mid-stream.
    server.wait_until("a hundred acknowledgements", || {
        acked.lock().unwrap().len() >= 100
    });
    let before = server.kill_9();
    for s in senders {
        s.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() < total,
        "the kill happened while deliveries were still arriving"
    );

    let server = Server::start(&db, &[]);
    let processed = |outcomes: &[(String, String)]| {
        let mut count: HashMap<String, usize> = HashMap::new();
        for (id, outcome) in outcomes {
            if outcome == "processed" {
                *count.entry(id.clone()).or_default() += 1;
            }
        }
        count
    };
    // Every acknowledged notification ends COMPLETED in the store. (The outcome line is written after the
    // completion commit, so a kill between the two leaves a completed notification without a `processed`
    // line; its redelivery is then a `duplicate`. The store is the record of truth.)
    let app = template["app_id"].as_str().unwrap().to_owned();
    let completed = || -> std::collections::HashSet<String> {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mut statement = conn
            .prepare("SELECT pk FROM idempotency WHERE status = 'COMPLETED'")
            .unwrap();
        let rows = statement.query_map([], |r| r.get::<_, String>(0)).unwrap();
        rows.map(|r| r.unwrap()).collect()
    };
    server.wait_until("every acknowledged notification is completed", || {
        let done = completed();
        acked.iter().all(|id| done.contains(&format!("{app}#{id}")))
    });
    server.wait_until("the queue is empty", || server.health()["queued"] == 0);
    let after = server.outcomes();
    let mut all = before.clone();
    all.extend(after.iter().cloned());
    let count = processed(&all);
    let duplicates_after: std::collections::HashSet<&String> = after
        .iter()
        .filter(|(_, outcome)| outcome == "duplicate")
        .map(|(id, _)| id)
        .collect();
    let mut unlogged = 0;
    for id in &acked {
        let n = count.get(id).copied().unwrap_or(0);
        assert!(n <= 1, "{id} processed {n} times");
        if n == 0 {
            // Completed by the killed run, which died before writing the line: never acknowledged to the
            // queue, so delivered again after the restart and recognised as a duplicate.
            assert!(
                duplicates_after.contains(id),
                "{id} has no processed line and no duplicate line after the restart"
            );
            unlogged += 1;
        }
    }
    // Only records in flight at the kill can be between their commit and their line: at most the default
    // 4 pollers × batches of 10.
    assert!(
        unlogged <= 40,
        "{unlogged} of {} completed notifications have no processed line",
        acked.len()
    );
    assert_eq!(server.health()["dead_letters"], 0);
}

#[test]
fn a_permanent_handler_failure_lands_in_the_dead_letter_table_with_its_reason() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let chat = runtime.block_on(async {
        let chat = wiremock::MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::method("POST"))
            .respond_with(wiremock::ResponseTemplate::new(400))
            .mount(&chat)
            .await;
        chat
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let hook = format!("{}/hook", chat.uri());
    let server = Server::start(&db, &[("NOTIFY_WEBHOOK_URL", &hook)]);
    let file = fixtures_dir().join("conversation_user_created.json");
    let (ok, out) = send(&[file.to_str().unwrap(), "--url", &server.url("/")]);
    assert!(ok, "{out}");
    server.wait_until("one outcome", || server.outcomes().len() == 1);
    assert_eq!(server.outcomes()[0].1, "dead_lettered");
    assert_eq!(server.health()["dead_letters"], 1);

    let conn = rusqlite::Connection::open(&db).unwrap();
    let (body, reason): (String, String) = conn
        .query_row("SELECT body, reason FROM dead_letters", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(body.as_bytes(), &fixture("conversation_user_created.json")[..]);
    assert_eq!(reason, "handler notify: notify webhook answered 400 Bad Request");
}

#[test]
fn sigterm_stops_cleanly_and_a_missing_secret_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("db.sqlite"), &[]);
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut server = server;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");

    let out = Command::new(BIN)
        .args(["serve", "--db"])
        .arg(dir.path().join("other.db"))
        .env_remove("INTERCOM_CLIENT_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("INTERCOM_CLIENT_SECRET is not set"), "{stderr}");
}

#[test]
fn send_and_sign_report_clear_errors() {
    let (ok, _) = send(&["/no/such/file.json", "--url", "http://127.0.0.1:9/"]);
    assert!(!ok);
    let closed = free_port();
    let out = Command::new(BIN)
        .args(["send"])
        .arg(fixtures_dir().join("ping.json"))
        .args(["--url", &format!("http://127.0.0.1:{closed}/")])
        .env("INTERCOM_CLIENT_SECRET", TEST_SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot deliver"));

    let out = Command::new(BIN)
        .arg("sign")
        .arg(fixtures_dir().join("ping.json"))
        .env("INTERCOM_CLIENT_SECRET", TEST_SECRET)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        sign(&fixture("ping.json"))
    );
}

/// A signed POST of `body` on a raw connection (no client library in between), and the status line.
fn raw_post(port: u16, body: &[u8]) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head = format!(
        "POST /webhooks/intercom HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         x-hub-signature: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        sign(body),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

/// A real notification with a new id.
fn unique_notification(n: usize) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(&fixture("conversation_user_created.json")).unwrap();
    value["id"] = format!("notif_unique_{n}_{}", std::process::id()).into();
    serde_json::to_vec_pretty(&value).unwrap()
}

/// Reads from `stream` until the peer closes it (`Ok(bytes read)`) or `limit` passes (`Err`).
fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> Result<Vec<u8>, String> {
    use std::io::Read;
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(seen),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(seen),
            Err(e) => return Err(format!("still open after {limit:?} ({e}); read {seen:?}")),
        }
    }
}

#[test]
fn a_client_that_stalls_in_its_headers_or_its_body_is_cut_off_and_the_server_keeps_answering() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("db.sqlite"),
        &[],
        &["--header-read-timeout", "1s", "--body-read-timeout", "1s"],
    );

    // Half a request head, then nothing: closed without an answer.
    let mut headers = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    headers
        .write_all(b"POST /webhooks/intercom HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-")
        .unwrap();
    let started = Instant::now();
    let seen = closed_within(&mut headers, Duration::from_secs(5)).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !String::from_utf8_lossy(&seen).contains(" 200 "),
        "{}",
        String::from_utf8_lossy(&seen)
    );

    // A whole head and part of the body: 408, then closed.
    let body = fixture("conversation_user_created.json");
    let mut partial = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let head = format!(
        "POST /webhooks/intercom HTTP/1.1\r\nhost: 127.0.0.1\r\nx-hub-signature: {}\r\ncontent-length: {}\r\n\r\n",
        sign(&body),
        body.len()
    );
    partial.write_all(head.as_bytes()).unwrap();
    partial.write_all(&body[..body.len() / 2]).unwrap();
    let seen = String::from_utf8(closed_within(&mut partial, Duration::from_secs(5)).unwrap()).unwrap();
    assert!(seen.starts_with("HTTP/1.1 408"), "{seen}");
    assert!(seen.contains("body_timeout"), "{seen}");

    // Nothing of either was stored, and a whole delivery is still answered.
    assert_eq!(raw_post(server.port, &body).unwrap(), "HTTP/1.1 200 OK");
    server.wait_until("one outcome", || server.outcomes().len() == 1);
    let metrics = reqwest::blocking::get(server.url("/metrics"))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("intercom_webhooks_rejected_total{reason=\"body_timeout\"} 1"),
        "{metrics}"
    );
}

/// A server that serves two connections at once and waits 30 s for a request's head, once the health
/// check's keep-alive connection has been closed by its client.
fn two_connection_server(dir: &tempfile::TempDir) -> Server {
    let server = Server::start_with(
        &dir.path().join("db.sqlite"),
        &[],
        &["--max-connections", "2", "--header-read-timeout", "30s"],
    );
    std::thread::sleep(Duration::from_millis(200));
    server
}

#[test]
fn connections_past_the_limit_wait_for_a_free_slot() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = two_connection_server(&dir);
    let mut idle: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));

    // Both slots are held by clients that have not finished their heads: the next one is not served.
    let waiting = std::thread::spawn({
        let port = server.port;
        move || {
            let started = Instant::now();
            let status = raw_post(port, &fixture("ping.json"));
            (status, started.elapsed())
        }
    });
    std::thread::sleep(Duration::from_millis(800));
    assert!(!waiting.is_finished(), "served although every slot was taken");
    drop(idle.pop());
    let (status, waited) = waiting.join().unwrap();
    assert_eq!(status.unwrap(), "HTTP/1.1 200 OK");
    assert!(waited >= Duration::from_millis(800), "{waited:?}");
}

/// Sends `GET path` on `stream`, kept alive, and checks that the answer's first bytes say 200.
fn answered_200(stream: &mut std::net::TcpStream, path: &str) {
    use std::io::{Read, Write};
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").as_bytes())
        .unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[test]
fn an_idle_keep_alive_connection_gives_its_slot_to_a_new_one() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = two_connection_server(&dir);
    let health = |s: &mut std::net::TcpStream| answered_200(s, "/healthz");
    // Two clients each get an answer and keep their connection open, idle; the first is used once
    // more, so the second is the one idle for longest.
    let mut first = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    health(&mut first);
    let mut second = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    health(&mut second);
    std::thread::sleep(Duration::from_millis(200));
    health(&mut first);
    // Both idle long enough to be closed.
    std::thread::sleep(Duration::from_millis(1200));

    // A third is answered without waiting for either to time out (30 s): the connection idle for
    // longest was closed to make room for it, the other kept.
    let body = unique_notification(0);
    assert_eq!(raw_post(server.port, &body).unwrap(), "HTTP/1.1 200 OK");
    assert_eq!(closed_within(&mut second, Duration::from_secs(5)), Ok(vec![]));
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let answer = closed_within(&mut first, Duration::from_secs(5)).unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    server.wait_until("the notification is processed", || server.outcomes().len() == 1);
}

#[test]
fn a_stream_being_sent_keeps_its_slot_while_an_idle_connection_gives_up_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let server = two_connection_server(&dir);
    // The inspector's event stream: answered at once, its body sent for as long as it is open.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    answered_200(&mut stream, "/inspector/api/events");
    std::thread::sleep(Duration::from_millis(1200));
    // A keep-alive connection, answered, then idle for long enough to be closed.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    answered_200(&mut idle, "/healthz");
    std::thread::sleep(Duration::from_millis(1200));

    // The stream has been open longer, but it is not idle: the other connection makes room.
    assert_eq!(
        raw_post(server.port, &unique_notification(0)).unwrap(),
        "HTTP/1.1 200 OK"
    );
    assert_eq!(closed_within(&mut idle, Duration::from_secs(5)), Ok(vec![]));
    assert!(
        closed_within(&mut stream, Duration::from_millis(1500)).is_err(),
        "the stream was closed"
    );
}

#[test]
fn a_stalled_database_answers_503_within_the_store_timeout_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let server = Server::start_with(&db, &[], &["--store-timeout", "1s"]);
    let before = unique_notification(0);
    assert_eq!(raw_post(server.port, &before).unwrap(), "HTTP/1.1 200 OK");
    server.wait_until("the first outcome", || server.outcomes().len() == 1);

    // Another process holds the database's write lock: deliveries cannot be stored.
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let stalled = raw_post(server.port, &unique_notification(1)).unwrap();
    let waited = started.elapsed();
    assert_eq!(stalled, "HTTP/1.1 503 Service Unavailable");
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);

    // Intercom's retry of the refused one, and a new one, are stored; every acknowledged id is processed.
    for n in [1, 2] {
        assert_eq!(
            raw_post(server.port, &unique_notification(n)).unwrap(),
            "HTTP/1.1 200 OK"
        );
    }
    let acknowledged: Vec<String> = [0, 1, 2]
        .iter()
        .map(|n| format!("notif_unique_{n}_{}", std::process::id()))
        .collect();
    server.wait_until("every acknowledged notification is processed", || {
        let outcomes = server.outcomes();
        acknowledged
            .iter()
            .all(|id| outcomes.iter().any(|(n, o)| n == id && o == "processed"))
    });
}

#[test]
fn with_a_short_retention_a_steady_stream_of_unique_notifications_keeps_the_file_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let server = Server::start_with(
        &db,
        &[],
        // A visibility timeout of 1 s also leaves the handlers most of it (the deadline margin is at
        // most a quarter).
        &[
            "--idempotency-retention",
            "1s",
            "--visibility-timeout",
            "1",
            "--purge-interval",
            "300ms",
            // The inspector's journal full from the first wave on: it is bounded too.
            "--inspector-keep",
            "300",
        ],
    );
    // The database's size as a reader sees it (its pages, committed WAL frames included), and the
    // files on disk.
    let size = || -> i64 {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let on_disk = || -> u64 {
        ["", "-wal", "-shm"]
            .iter()
            .map(|suffix| std::fs::metadata(format!("{}{suffix}", db.display())).map_or(0, |m| m.len()))
            .sum::<u64>()
    };
    let records = || -> i64 {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("SELECT count(*) FROM idempotency", [], |r| r.get(0))
            .unwrap()
    };
    let mut sizes = Vec::new();
    let mut sent = 0;
    for _wave in 0..8 {
        for _ in 0..300 {
            assert_eq!(
                raw_post(server.port, &unique_notification(sent)).unwrap(),
                "HTTP/1.1 200 OK"
            );
            sent += 1;
        }
        server.wait_until("the wave is processed", || server.outcomes().len() == sent);
        // Past the retention and at least one purge.
        std::thread::sleep(Duration::from_millis(1_500));
        sizes.push(size());
    }
    assert!(records() < 600, "{} idempotency records kept", records());
    let journal: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, 300, "the inspector keeps the last 300 deliveries");
    assert!(on_disk() < 40 << 20, "{} bytes on disk", on_disk());
    let settled = sizes[2];
    let last = *sizes.last().unwrap();
    assert!(
        last <= settled + settled / 4,
        "the file grew from {settled} to {last} bytes over five more waves: {sizes:?}"
    );
}

/// `serve` that is expected to refuse to start: fails, and its standard error.
fn refused_serve(port: u16, db: &Path, options: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--db"])
        .arg(db)
        .args(options)
        .env("INTERCOM_CLIENT_SECRET", TEST_SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_port_in_use_leaves_no_database_and_a_second_server_on_one_file_is_refused_with_the_holders_pid() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let unused = dir.path().join("never.db");
    let stderr = refused_serve(port, &unused, &[]);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(
        !unused.exists(),
        "the database was created although serve could not listen"
    );

    let db = dir.path().join("shared.db");
    let first = Server::start(&db, &[]);
    let stderr = refused_serve(free_port(), &db, &[]);
    assert!(
        stderr.contains(&format!("another serve (PID {}) is using", first.child.id())),
        "{stderr}"
    );
    // Commands that work beside a server still do.
    let out = Command::new(BIN)
        .args(["dlq", "list", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // And once the first server is gone, the file can be served again.
    drop(first);
    let again = Server::start(&db, &[]);
    assert_eq!(again.health()["status"], "ok");
}

#[test]
fn text_logs_redirected_to_a_file_are_short_lines_without_colour() {
    let dir = tempfile::tempdir().unwrap();
    // NO_COLOR empty allows colour: the pipe alone must turn it off.
    let server = Server::start_with(
        &dir.path().join("db.sqlite"),
        &[("NO_COLOR", "")],
        &["--log-format", "text"],
    );
    assert_eq!(
        raw_post(server.port, &fixture("conversation_user_created.json")).unwrap(),
        "HTTP/1.1 200 OK"
    );
    server.wait_until("the outcome line", || {
        server
            .text
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(" processed "))
    });
    let lines = server.text.lock().unwrap().clone();
    assert!(lines.iter().all(|l| !l.contains('\u{1b}')), "{lines:?}");
    let outcome = lines.iter().find(|l| l.contains(" processed ")).unwrap();
    assert!(
        outcome.contains("INFO  conversation.user.created 3ac27816 processed "),
        "{outcome}"
    );
    assert!(outcome.len() < 80, "{outcome}");
    let summary = lines.iter().find(|l| l.contains("Rose Poodle")).unwrap();
    assert!(
        summary.ends_with("INFO  conversation.user.created 3ac27816 Rose Poodle from St. John's, conversation 21321941764: \"Hello everyone!\""),
        "{summary}"
    );
}

#[test]
fn an_idempotency_retention_shorter_than_the_visibility_timeout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused_serve(
        free_port(),
        &dir.path().join("db.sqlite"),
        &["--idempotency-retention", "500ms", "--visibility-timeout", "30"],
    );
    assert!(
        stderr.contains("the idempotency retention (500ms) must be at least the visibility timeout (30 s)"),
        "{stderr}"
    );
}

/// The nice value in a thread's `stat` file: the 19th field, the 17th after the command name (which is
/// in parentheses and may hold spaces). `None` when the thread has ended.
#[cfg(target_os = "linux")]
fn nice_in(stat: &Path) -> Option<i64> {
    let stat = std::fs::read_to_string(stat).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(16)?
            .parse()
            .unwrap(),
    )
}

/// The nice value of each thread of process `pid`, by thread name.
#[cfg(target_os = "linux")]
fn thread_nice_values(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let (Ok(name), Some(nice)) = (
            std::fs::read_to_string(task.join("comm")),
            nice_in(&task.join("stat")),
        ) else {
            continue; // a thread that ended meanwhile
        };
        out.push((name.trim().to_owned(), nice));
    }
    out
}

#[cfg(target_os = "linux")]
#[test]
fn the_worker_runs_as_much_below_the_intake_as_worker_nice_says_and_a_value_past_19_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // serve inherits this thread's nice value, which its intake keeps; the worker's is that plus what it
    // is told, up to 19.
    let own = nice_in(Path::new("/proc/thread-self/stat")).unwrap();
    for (option, lower) in [(None, 10), (Some("3"), 3), (Some("0"), 0)] {
        let options: Vec<&str> = option.map(|n| vec!["--worker-nice", n]).unwrap_or_default();
        let mut server = Server::start_with(&dir.path().join(format!("nice-{lower}.db")), &[], &options);
        let threads = thread_nice_values(server.child.id());
        let _ = server.child.kill();
        let _ = server.child.wait();
        let workers: Vec<i64> = threads
            .iter()
            .filter(|(n, _)| n == "worker")
            .map(|(_, v)| *v)
            .collect();
        assert!(!workers.is_empty(), "no worker threads in {threads:?}");
        let expected = (own + lower).min(19);
        assert!(
            workers.iter().all(|&v| v == expected),
            "--worker-nice {option:?}: worker threads at {workers:?}, expected {expected} (all threads: {threads:?})"
        );
        let intake: Vec<i64> = threads
            .iter()
            .filter(|(n, _)| n != "worker")
            .map(|(_, v)| *v)
            .collect();
        assert!(
            intake.iter().all(|&v| v == own),
            "the other threads keep the intake's priority: {threads:?}"
        );
    }
    let stderr = refused_serve(
        free_port(),
        &dir.path().join("never.db"),
        &["--worker-nice", "20"],
    );
    assert!(
        stderr.contains("--worker-nice") && stderr.contains("20"),
        "{stderr}"
    );
}

/// `intercom-webhooks mirror …` against `serve`'s file: (exit success, stdout, stderr).
fn mirror_cli(db: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("mirror")
        .args(args)
        .arg("--db")
        .arg(db)
        .env_remove("MIRROR_TABLE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `fixture` delivered again with a new notification id and its item's `updated_at` moved back by
/// `seconds` (kept in the fixture's own shape: Unix seconds or ISO-8601).
fn older_version(name: &str, seconds: i64, marker: &str) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(&fixture(name)).unwrap();
    value["id"] = format!("notif_older_{marker}").into();
    let item = &mut value["data"]["item"];
    item["updated_at"] = match &item["updated_at"] {
        Value::Number(n) => (n.as_i64().unwrap() - seconds).into(),
        Value::String(s) => {
            let at: jiff::Timestamp = s.parse().unwrap();
            (at - jiff::SignedDuration::from_secs(seconds)).to_string().into()
        }
        other => panic!("{name}: updated_at is {other}"),
    };
    item["older_marker"] = marker.into();
    serde_json::to_vec_pretty(&value).unwrap()
}

#[test]
fn the_mirror_keeps_the_newest_versions_and_older_deliveries_end_stale() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let server = Server::start(&db, &[]);
    let (ok, out) = send(&[
        fixtures_dir().to_str().unwrap(),
        "--url",
        &server.url("/webhooks/intercom"),
    ]);
    assert!(ok, "{out}");
    server.wait_until("9 outcomes", || server.outcomes().len() == 9);

    // Older versions of a conversation (Unix seconds), a ticket (seconds), a contact (ISO-8601), with new ids.
    let older = [
        ("conversation_user_created.json", "conv"),
        ("ticket_created.json", "ticket"),
        ("contact_user_created.json", "contact"),
    ];
    for (name, marker) in older {
        let status = raw_post(server.port, &older_version(name, 60, marker)).unwrap();
        assert!(status.contains("200"), "{name}: {status}");
    }
    server.wait_until("12 outcomes", || server.outcomes().len() == 12);
    let late = &server.outcomes()[9..];
    assert!(late.iter().all(|(_, o)| o == "stale"), "{late:?}");

    // The mirror shows the delivered versions, not the older ones that came later.
    for (name, kind, id_field) in [
        ("conversation_user_created.json", "conversation", "id"),
        ("ticket_created.json", "ticket", "id"),
        ("contact_user_created.json", "contact", "id"),
        ("conversation_admin_closed.json", "conversation", "id"),
    ] {
        let delivered: Value = serde_json::from_slice(&fixture(name)).unwrap();
        let item = &delivered["data"]["item"];
        let id = item[id_field].as_str().unwrap();
        let (ok, out, err) = mirror_cli(&db, &["get", kind, id]);
        assert!(ok, "{name}: {err}");
        let got: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(got["item"], *item, "{name}");
        assert_eq!((got["type"].as_str(), got["id"].as_str()), (Some(kind), Some(id)));
        assert_eq!(got["app_id"], delivered["app_id"]);
        assert_eq!(
            (got["deleted"].as_bool(), got["truncated"].as_bool()),
            (Some(false), Some(false))
        );
        assert!(got["updated_at"].as_str().unwrap().ends_with('Z'), "{got}");
    }

    // The deleted contact is a tombstone; an unknown id exits 1 with a message.
    let deleted: Value = serde_json::from_slice(&fixture("contact_deleted.json")).unwrap();
    let (ok, out, _) = mirror_cli(
        &db,
        &["get", "contacts", deleted["data"]["item"]["id"].as_str().unwrap()],
    );
    assert!(ok);
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (got["deleted"].as_bool(), got["item"].is_null()),
        (Some(true), true)
    );
    let (ok, _, err) = mirror_cli(&db, &["get", "ticket", "no-such-ticket"]);
    assert!(!ok);
    assert!(err.contains("no ticket no-such-ticket in the mirror"), "{err}");

    // list: newest first, JSON lines; stats: per type and the three refused.
    let (ok, out, err) = mirror_cli(&db, &["list", "conversation"]);
    assert!(ok, "{err}");
    let listed: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(listed.len(), 2);
    assert!(listed[0]["updated_at"].as_str() >= listed[1]["updated_at"].as_str());
    let (ok, out, _) = mirror_cli(
        &db,
        &["list", "conversation", "--updated-since", "2019-03-22T21:40:00Z"],
    );
    assert!(ok);
    assert_eq!(
        out.lines().count(),
        1,
        "only the conversation updated after 21:40: {out}"
    );
    let (ok, out, _) = mirror_cli(&db, &["stats", "--json"]);
    assert!(ok);
    let stats: Value = serde_json::from_str(&out).unwrap();
    // The three above, and the replies the pollers happened to process after a newer version.
    let stale_first = server.outcomes()[..9]
        .iter()
        .filter(|(_, o)| o == "stale")
        .count();
    assert_eq!(stats["stale_refused"], 3 + stale_first as u64, "{stats}");
    assert_eq!(stats["types"]["contact"]["tombstones"], 1, "{stats}");
    assert_eq!(stats["types"]["ticket"]["objects"], 1, "{stats}");
}

/// `intercom-webhooks reconcile …` with the access token set: (exit success, stdout, stderr).
fn reconcile_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("reconcile")
        .args(args)
        .env("INTERCOM_ACCESS_TOKEN", crate::support::events_api::TOKEN)
        .env("INTERCOM_CLIENT_SECRET", TEST_SECRET)
        .env_remove("IDEMPOTENCY_TABLE")
        .env_remove("INTERCOM_REGION")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn objects_changed_while_the_receiver_was_down_reach_the_mirror_after_one_reconcile() {
    use crate::support::intercom_api::{IntercomApi, Kind, Settings};
    use serde_json::json;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let api = runtime.block_on(IntercomApi::start(Settings {
        app_id: "abc123def".into(),
        utc_offset_minutes: 600,
        ..Settings::default()
    }));
    let now = intercom_webhooks::plumbing::clock::unix_ms_now() / 1000;
    // Changed while nothing received Intercom's deliveries: three conversations, two contacts, a ticket.
    let changed = [
        (Kind::Conversation, "c1", now - 3000),
        (Kind::Conversation, "c2", now - 1200),
        (Kind::Conversation, "c3", now - 60),
        (Kind::Contact, "k1", now - 2000),
        (Kind::Contact, "k2", now - 5),
        (Kind::Ticket, "t1", now - 100),
    ];
    for (kind, id, at) in changed {
        api.put(
            kind,
            json!({"id": id, "updated_at": at, "name": format!("{id} <script>x</script>")}),
        );
    }
    // Older than the range: not reconciled.
    api.put(
        Kind::Conversation,
        json!({"id": "old", "updated_at": now - 5 * 86_400}),
    );

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let server = Server::start(&db, &[]);
    // Into the file of the running server, with the JSON report.
    let reconcile_into_db = |since: &str| {
        reconcile_cli(&[
            "--since",
            since,
            "--db",
            db.to_str().unwrap(),
            "--base-url",
            &api.uri(),
            "--json",
        ])
    };
    let (ok, out, err) = reconcile_into_db("2h");
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["app_id"], "abc123def");
    let enqueued = crate::support::reconcile_total(&report, "enqueued");
    assert_eq!(enqueued, 6, "{report}");
    server.wait_until("6 outcomes", || server.outcomes().len() == 6);
    assert!(
        server.outcomes().iter().all(|(_, o)| o == "processed"),
        "{:?}",
        server.outcomes()
    );
    // The summary handler does not announce reconciled conversations.
    let summaries = server
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l["message"] == "summary")
        .count();
    assert_eq!(summaries, 0);
    for (kind, id, at) in changed {
        let (ok, out, err) = mirror_cli(&db, &["get", kind.type_name(), id]);
        assert!(ok, "{id}: {err}");
        let got: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(got["item"]["updated_at"], at, "{id}");
        assert_eq!(got["app_id"], "abc123def");
        assert_eq!(got["item"]["name"], format!("{id} <script>x</script>"));
    }
    let (_, _, err) = mirror_cli(&db, &["get", "conversation", "old"]);
    assert!(err.contains("no conversation old"), "{err}");

    // Again from the watermark: nothing new to enqueue.
    let (ok, out, err) = reconcile_into_db("last");
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let total = |field: &str| crate::support::reconcile_total(&report, field);
    assert_eq!(total("enqueued"), 0, "{report}");
    // The 10-minute overlap reads the latest changes again; the mirror already holds them.
    assert_eq!(total("already_current"), 3, "{report}");

    // A reconciled version older than the mirror's (through the receiver, which does not look at the
    // mirror first) ends stale and changes nothing.
    api.put(Kind::Conversation, json!({"id": "c3", "updated_at": now - 90}));
    let (ok, _, err) = reconcile_cli(&[
        "--since",
        "10m",
        "--types",
        "conversations",
        "--url",
        &server.url("/webhooks/intercom"),
        "--base-url",
        &api.uri(),
    ]);
    assert!(ok, "{err}");
    server.wait_until("7 outcomes", || server.outcomes().len() == 7);
    assert_eq!(server.outcomes()[6].1, "stale");
    let (_, out, _) = mirror_cli(&db, &["get", "conversation", "c3"]);
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["item"]["updated_at"], now - 60);
}

#[test]
fn serve_forwards_every_fixture_signed_for_the_target() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (target, got) = runtime.block_on(crate::forward::verifying_target("forward-secret"));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/intercom", target.uri());
    let server = Server::start(
        &dir.path().join("db.sqlite"),
        &[
            ("FORWARD_1_URL", url.as_str()),
            ("FORWARD_1_SECRET", "forward-secret"),
        ],
    );
    let (ok, out) = send(&[
        fixtures_dir().to_str().unwrap(),
        "--url",
        &server.url("/webhooks/intercom"),
    ]);
    assert!(ok, "{out}");
    server.wait_until("9 outcomes", || server.outcomes().len() == 9);
    let got = got.lock().unwrap();
    assert_eq!(
        got.len(),
        9,
        "every notification but the ping, once: {:?}",
        server.outcomes()
    );
    for (id, topic, body, verified, _) in got.iter() {
        assert!(verified, "{id}: the signature verifies with the target's secret");
        let sent: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            (sent["id"].as_str(), sent["topic"].as_str()),
            (Some(id.as_str()), Some(topic.as_str()))
        );
        let name = std::fs::read_dir(fixtures_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| std::fs::read(p).unwrap() == *body);
        assert!(name.is_some(), "{id}: the bytes of a fixture, exactly");
    }
    // The secret is never logged.
    let text = server.text.lock().unwrap().join("\n");
    assert!(!text.contains("forward-secret"));
}
