//! The runtime `serve` runs its pollers and handlers on, at a lower CPU priority than the intake.

use std::future::Future;

/// The runtime the pollers and handlers run on. On Linux its threads run at a lower CPU priority than the
/// HTTP intake (nice +10), so that when the machine is saturated `serve` keeps acknowledging deliveries
/// (each one stored) and works the backlog off as soon as there is CPU to spare. With CPU to spare, as
/// at any ordinary rate, the priority changes nothing. Dropped from async code (also when the `serve`
/// future is dropped), it shuts down without blocking.
pub(super) struct Background(Option<tokio::runtime::Runtime>);

impl Background {
    pub(super) fn start() -> anyhow::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("worker")
            .on_thread_start(lower_priority)
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

#[cfg(target_os = "linux")]
fn lower_priority() {
    /// How much lower than the intake's threads the worker's threads run.
    const BACKGROUND_NICE: i32 = 10;
    // On Linux the nice value belongs to the thread: this lowers the calling thread only. Raising a
    // nice value needs no privilege; should it fail anyway, the thread keeps the ordinary priority.
    // SAFETY: plain system calls on the calling thread, with no pointers involved.
    let result =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, BACKGROUND_NICE) };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the worker's priority");
    }
}

/// Elsewhere the nice value is per process: the worker keeps the intake's priority.
#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_worker_runs_at_a_lower_priority_than_the_intake() {
        fn nice() -> i32 {
            // SAFETY: a plain system call on the calling thread.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        }
        let intake = nice();
        let background = Background::start().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let worker = runtime.block_on(background.spawn(async { nice() })).unwrap();
        drop(background);
        // Nice 10, or the caller's own if that is already lower (raising priority needs a privilege).
        assert_eq!(
            worker,
            intake.max(10),
            "the worker's nice value (the intake's is {intake})"
        );
        assert_eq!(nice(), intake, "the calling thread keeps its priority");
    }
}
