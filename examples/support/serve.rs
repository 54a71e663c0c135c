//! Shared by the load drivers (`latency_probe`, `soak`): starts `intercom-webhooks serve` as a child process
//! and hands each of its `outcome` log lines to a callback, from a reader thread; waits until it serves;
//! stops it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A port free on 127.0.0.1 now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A new folder `NAME-<uuid>` in `base` (the system's temporary folder when `None`).
pub fn scratch_dir(base: Option<&PathBuf>, name: &str) -> std::io::Result<PathBuf> {
    let base = base.cloned().unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Waits until serve's `/healthz` on `port` answers 200, at most `within`. Returns how long that took.
pub fn wait_healthy(port: u16, child: &mut Child, within: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    loop {
        if client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(start.elapsed());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("serve exited before it was ready: {status}");
        }
        if start.elapsed() > within {
            anyhow::bail!("serve was not ready within {} s", within.as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGTERM (a clean stop), then SIGKILL if it has not exited within `within`. The exit status of a clean
/// stop, `None` after a SIGKILL.
pub fn sigterm_and_wait(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    while start.elapsed() < within {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// One `outcome` line: notification id, outcome, timestamp (Unix µs; 0 when unreadable).
pub type OutcomeLine = (String, String, i64);

pub fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// What `serve` is started with.
pub struct ServeCommand<'a> {
    pub bin: &'a Path,
    pub port: u16,
    pub db: &'a Path,
    pub secret: &'a str,
    /// `--pollers` (serve's default when `None`).
    pub pollers: Option<u32>,
    /// Further arguments of `serve`.
    pub extra: Vec<String>,
    /// Where serve's stderr goes.
    pub stderr: std::fs::File,
}

impl ServeCommand<'_> {
    /// Starts `serve` with JSON logs; `on_outcome` gets every outcome line until it returns false or
    /// stdout closes.
    pub fn spawn(
        self,
        mut on_outcome: impl FnMut(OutcomeLine) -> bool + Send + 'static,
    ) -> anyhow::Result<Child> {
        let mut command = Command::new(self.bin);
        command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--log-format",
                "json",
                "--db",
            ])
            .arg(self.db)
            .args(&self.extra)
            .env("INTERCOM_CLIENT_SECRET", self.secret)
            .env_remove("NOTIFY_WEBHOOK_URL")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(self.stderr);
        if let Some(p) = self.pollers {
            command.args(["--pollers", &p.to_string()]);
        }
        let mut child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {} (build it first): {e}", self.bin.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || read_outcomes(stdout, &mut on_outcome));
        Ok(child)
    }
}

/// How long the reader of serve's stdout waits once it has handled all it read. `serve` writes every log
/// line with its own `write`; a reader blocked on the pipe would be woken for each one, on the same cores
/// as the server it measures. Waiting lets lines gather in the pipe (64 KiB: about 9 ms of lines at
/// 20,000/s), and the latency it measures comes from each line's own timestamp, not from when the line
/// was read.
const READ_PAUSE: Duration = Duration::from_millis(1);

/// The fields of a JSON log line that the drivers read; the others are skipped unparsed.
#[derive(serde::Deserialize)]
struct LogLine<'a> {
    #[serde(default, borrow)]
    message: &'a str,
    #[serde(default, borrow)]
    timestamp: &'a str,
    #[serde(default, borrow)]
    notification_id: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    outcome: &'a str,
}

/// Hands each `outcome` line read from `stdout` to `on_outcome` until it returns false or stdout closes.
fn read_outcomes(stdout: impl Read, on_outcome: &mut impl FnMut(OutcomeLine) -> bool) {
    let mut reader = BufReader::with_capacity(1 << 20, stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if let Some(outcome) = outcome_line(&line) {
            if !on_outcome(outcome) {
                return;
            }
        }
        if reader.buffer().is_empty() {
            // Everything read so far is handled: let the next lines gather before reading again.
            std::thread::sleep(READ_PAUSE);
        }
    }
}

/// The id, outcome and timestamp of an `outcome` log line; `None` for any other line.
fn outcome_line(line: &[u8]) -> Option<OutcomeLine> {
    let line = std::str::from_utf8(line).ok()?.trim_end();
    if !line.contains("\"message\":\"outcome\"") {
        return None;
    }
    let line: LogLine = serde_json::from_str(line).ok()?;
    if line.message != "outcome" {
        return None;
    }
    let at = humantime::parse_rfc3339(line.timestamp).map(unix_us).unwrap_or(0);
    Some((line.notification_id.into_owned(), line.outcome.to_owned(), at))
}
