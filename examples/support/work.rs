//! What a run costs the machine, read from Linux's `/proc` and from `serve`'s `/metrics`: the CPU time of
//! `serve` and of the driver itself (every thread of each), how busy the machine's cores were, how many
//! times `serve` synced its write-ahead log, and what the disk holding its database wrote. Elsewhere than
//! on Linux nothing is read and the report says so.
#![allow(dead_code)]

use std::path::Path;
use std::time::Instant;

/// The counters at one instant.
pub struct Snapshot {
    at: Instant,
    /// CPU time of `serve` and of this process (s), when `/proc` has them.
    serve_cpu: Option<f64>,
    own_cpu: Option<f64>,
    machine: Option<Jiffies>,
    /// `intercom_webhooks_wal_syncs_total`.
    wal_syncs: Option<u64>,
    disk: Option<Writes>,
}

impl Snapshot {
    /// The counters now, of the `serve` process `pid` whose `/metrics` is at `metrics_url` and whose
    /// database is in the folder `db_dir`.
    pub fn take(pid: u32, metrics_url: &str, db_dir: &Path) -> Self {
        Self {
            at: Instant::now(),
            serve_cpu: process_cpu(&format!("/proc/{pid}/stat")),
            own_cpu: process_cpu("/proc/self/stat"),
            machine: machine(),
            wal_syncs: wal_syncs(metrics_url),
            disk: disk_writes(db_dir),
        }
    }
}

/// One sentence: the work per notification between `before` and `after`, for `processed` notifications.
pub fn report(before: &Snapshot, after: &Snapshot, processed: usize) -> String {
    let secs = after.at.duration_since(before.at).as_secs_f64();
    let n = processed.max(1) as f64;
    let per = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.0} µs", (b - a) * 1e6 / n),
        _ => "not measured (no /proc)".to_owned(),
    };
    let syncs = match (before.wal_syncs, after.wal_syncs) {
        (Some(a), Some(b)) => format!("{:.2}", b.saturating_sub(a) as f64 / n),
        _ => "not read".to_owned(),
    };
    let machine = match (before.machine, after.machine) {
        (Some(a), Some(b)) if b.total > a.total => {
            let total = (b.total - a.total) as f64;
            format!(
                "{:.0} % busy and {:.0} % waiting for the disk",
                100.0 * b.busy.saturating_sub(a.busy) as f64 / total,
                100.0 * b.iowait.saturating_sub(a.iowait) as f64 / total
            )
        }
        _ => "not measured (no /proc)".to_owned(),
    };
    let disk = match (before.disk, after.disk) {
        (Some(a), Some(b)) => format!(
            "the disk holding the database (every writer on it) wrote {:.1} KiB in {:.2} writes",
            b.sectors.saturating_sub(a.sectors) as f64 * 512.0 / 1024.0 / n,
            b.writes.saturating_sub(a.writes) as f64 / n
        ),
        _ => "the disk's writes were not measured (no /proc/diskstats line for the database's device)"
            .to_owned(),
    };
    format!(
        "Work per notification processed, over these {secs:.1} s: `serve` {} of CPU (all its threads), \
         this driver {}, {syncs} syncs of the WAL, {disk}; the machine's cores were {machine}.",
        per(before.serve_cpu, after.serve_cpu),
        per(before.own_cpu, after.own_cpu),
    )
}

/// Writes completed by a block device, and the 512-byte sectors they wrote (`/proc/diskstats`).
#[derive(Clone, Copy)]
struct Writes {
    writes: u64,
    sectors: u64,
}

/// The writes so far of the block device that holds `dir` (none on a file system without one, such as
/// tmpfs).
#[cfg(target_os = "linux")]
fn disk_writes(dir: &Path) -> Option<Writes> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (libc::major(dev).to_string(), libc::minor(dev).to_string());
    let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
    // Each line: major, minor, name, four fields of reads, then writes completed, merged, sectors written.
    let fields = stats
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 9 && f[0] == major && f[1] == minor)?;
    Some(Writes {
        writes: fields[7].parse().ok()?,
        sectors: fields[9].parse().ok()?,
    })
}

#[cfg(not(target_os = "linux"))]
fn disk_writes(_dir: &Path) -> Option<Writes> {
    None
}

/// User and system CPU time (s) of the process whose `stat` file is at `path`.
fn process_cpu(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces: utime and stime
    // are the 14th and 15th of the line, the 12th and 13th after the name.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / ticks_per_second()?)
}

#[cfg(target_os = "linux")]
pub fn ticks_per_second() -> Option<f64> {
    // SAFETY: sysconf reads a constant of the system and has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then_some(ticks as f64)
}

#[cfg(not(target_os = "linux"))]
pub fn ticks_per_second() -> Option<f64> {
    None
}

/// The machine's CPU time so far, in jiffies, from the `cpu` line of `/proc/stat` (every core, every
/// process, the kernel).
#[derive(Clone, Copy)]
pub struct Jiffies {
    /// Running: user, nice, system, irq and softirq (guest time is counted in user time).
    pub busy: u64,
    /// Idle with I/O outstanding.
    pub iowait: u64,
    /// Everything, stolen time included.
    pub total: u64,
}

pub fn machine() -> Option<Jiffies> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] else {
        return None;
    };
    Some(Jiffies {
        busy: user + nice + system + irq + softirq,
        iowait,
        total: user + nice + system + idle + iowait + irq + softirq + steal,
    })
}

/// Seconds of CPU the whole machine has been busy so far.
pub fn machine_busy_s() -> Option<f64> {
    Some(machine()?.busy as f64 / ticks_per_second()?)
}

/// `serve`'s count of WAL syncs, from its Prometheus text.
fn wal_syncs(metrics_url: &str) -> Option<u64> {
    let text = reqwest::blocking::Client::new()
        .get(metrics_url)
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .ok()?
        .text()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("intercom_webhooks_wal_syncs_total "))?
        .trim()
        .parse()
        .ok()
}
