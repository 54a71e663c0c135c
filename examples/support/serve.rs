//! Shared by the load drivers (`latency_probe`, `soak`): starts `intercom-webhooks serve` as a child process
//! and hands each of its `outcome` log lines to a callback, from a reader thread; waits until it serves;
//! stops it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
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
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !line.contains("\"message\":\"outcome\"") {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let at = v["timestamp"]
                    .as_str()
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
                    .map(unix_us)
                    .unwrap_or(0);
                let id = v["notification_id"].as_str().unwrap_or_default().to_owned();
                let outcome = v["outcome"].as_str().unwrap_or_default().to_owned();
                if !on_outcome((id, outcome, at)) {
                    return;
                }
            }
        });
        Ok(child)
    }
}
