//! The runtime `serve` runs its pollers and handlers on, at a lower CPU priority than the intake.

use std::future::Future;

/// The runtime the pollers and handlers run on. On Linux its threads run at a lower CPU priority than the
/// HTTP intake (a nice value 10 higher by default, [`DEFAULT_NICE`]; at most 19), so that when the
/// machine is saturated `serve` keeps acknowledging deliveries (each one stored) and works the backlog
/// off as soon as there is CPU to spare. With CPU to spare, as
/// at any ordinary rate, the priority changes nothing. Dropped from async code (also when the `serve`
/// future is dropped), it shuts down without blocking.
pub(super) struct Background(Option<tokio::runtime::Runtime>);

/// How much lower than the intake's threads the worker's threads run, unless told otherwise.
pub const DEFAULT_NICE: u8 = 10;

impl Background {
    /// The runtime, its threads `nice` lower than the intake's (0 to 19; 0 keeps the intake's priority).
    pub(super) fn start(nice: u8) -> anyhow::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let nice = i32::from(nice.min(19));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("worker")
            .on_thread_start(move || lower_priority(nice))
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
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // On Linux the nice value belongs to the thread: this lowers the calling thread only, from the
    // value it inherited from the intake's thread that started it. Raising a nice value needs no
    // privilege; should it fail anyway, the thread keeps the intake's priority.
    // SAFETY: plain system calls on the calling thread, with no pointers involved.
    let result = unsafe {
        let thread = libc::gettid() as libc::id_t;
        let inherited = libc::getpriority(libc::PRIO_PROCESS, thread);
        libc::setpriority(libc::PRIO_PROCESS, thread, (inherited + nice).min(19))
    };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the worker's priority");
    }
}

/// Elsewhere the nice value is per process: the worker keeps the intake's priority.
#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    fn nice() -> i32 {
        // SAFETY: a plain system call on the calling thread.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    /// The nice value of the worker's threads when started with `lower`.
    #[cfg(target_os = "linux")]
    fn worker_nice(lower: u8) -> i32 {
        let background = Background::start(lower).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let worker = runtime.block_on(background.spawn(async { nice() })).unwrap();
        drop(background);
        worker
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_worker_runs_as_much_lower_than_the_intake_as_told() {
        let intake = nice();
        let lowered = |by: i32| (intake + by).min(19);
        assert_eq!(
            worker_nice(DEFAULT_NICE),
            lowered(10),
            "the worker's nice value (the intake's is {intake})"
        );
        assert_eq!(worker_nice(4), lowered(4));
        assert_eq!(worker_nice(0), intake, "0 keeps the intake's priority");
        assert_eq!(worker_nice(40), lowered(19), "at most 19 lower");
        assert_eq!(nice(), intake, "the calling thread keeps its priority");
    }
}
