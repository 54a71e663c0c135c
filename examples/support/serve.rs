//! Shared by the load drivers (`latency_probe`, `soak`): starts `intercom-webhooks serve` as a child process
//! and hands each of its `outcome` log lines to a callback, from a reader thread.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

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
