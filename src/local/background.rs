//! The runtime `serve` runs its pollers and handlers on, at a lower CPU priority than the intake.

use std::future::Future;

/// The runtime the pollers and handlers run on. On Linux its threads run at a lower CPU priority than the
/// HTTP intake (a nice value 10 higher by default, [`DEFAULT_NICE`]; at most 19), so that when the
/// machine is saturated `serve` keeps acknowledging deliveries (each one stored) and works the backlog
/// off as soon as there is CPU to spare. With CPU to spare, as at any ordinary rate, the priority
/// changes nothing. Dropped from async code (also when the `serve` future is dropped), it shuts down
/// without blocking.
pub(super) struct Background(Option<tokio::runtime::Runtime>);

/// How much lower than the intake's threads the worker's threads run, unless told otherwise.
pub const DEFAULT_NICE: u8 = 10;

impl Background {
    /// The runtime, its threads `nice` lower than the calling thread, the intake's (0 to 19; 0 keeps the
    /// intake's priority). Each thread is set to that one value, also a thread started later by another
    /// of the runtime's threads (which would otherwise inherit the lowered value and lower it again).
    pub(super) fn start(nice: u8) -> anyhow::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let target = (nice > 0).then(|| (thread_nice() + i32::from(nice)).min(19));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("worker")
            .on_thread_start(move || {
                if let Some(target) = target {
                    lower_priority(target);
                }
            })
            .enable_all()
            .build()
            .map_err(|e| anyhow::anyhow!("cannot start the worker's threads: {e}"))?;
        Ok(Self(Some(runtime)))
    }

    pub(super) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.as_ref().expect("running until dropped").spawn(task)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The calling thread's nice value.
#[cfg(target_os = "linux")]
fn thread_nice() -> i32 {
    // SAFETY: a plain system call on the calling thread, with no pointers involved.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

/// Sets the calling thread's nice value to `target`, which is never below its own.
#[cfg(target_os = "linux")]
fn lower_priority(target: i32) {
    // On Linux the nice value belongs to the thread: this lowers the calling thread only. Raising a
    // nice value needs no privilege; should it fail anyway, the thread keeps the intake's priority.
    // SAFETY: a plain system call on the calling thread, with no pointers involved.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, target) };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the worker's priority");
    }
}

/// Elsewhere the nice value is per process: the worker keeps the intake's priority.
#[cfg(not(target_os = "linux"))]
fn thread_nice() -> i32 {
    0
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_target: i32) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of the worker's threads when started with `lower`.
    #[cfg(target_os = "linux")]
    fn worker_nice(lower: u8) -> i32 {
        let background = Background::start(lower).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let worker = runtime
            .block_on(background.spawn(async { thread_nice() }))
            .unwrap();
        // A thread the runtime starts later, from one of its own threads, has the same value.
        let blocking = runtime
            .block_on(background.spawn(async { tokio::task::spawn_blocking(thread_nice).await.unwrap() }))
            .unwrap();
        drop(background);
        assert_eq!(blocking, worker, "a blocking thread started by a worker thread");
        worker
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_worker_runs_as_much_lower_than_the_intake_as_told() {
        let intake = thread_nice();
        let lowered = |by: i32| (intake + by).min(19);
        assert_eq!(
            worker_nice(DEFAULT_NICE),
            lowered(10),
            "the worker's nice value (the intake's is {intake})"
        );
        assert_eq!(worker_nice(4), lowered(4));
        assert_eq!(worker_nice(0), intake, "0 keeps the intake's priority");
        assert_eq!(worker_nice(40), lowered(19), "at most 19 lower");
        assert_eq!(thread_nice(), intake, "the calling thread keeps its priority");
    }
}
