//! Progress of `events bulk` on standard error.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::events::Progress;

/// How often progress is printed when standard error is not a terminal.
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(5);

/// Progress on standard error: a bar with rate and ETA on a terminal, a plain line every few seconds
/// otherwise.
pub(super) struct Reporter {
    total: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
}

impl Reporter {
    pub(super) fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {pos}/{len} {rate} ETA {eta} {msg}",
            )
            .expect("the template is valid")
            .with_key("rate", |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:.1}/s", state.per_sec());
            })
            .progress_chars("=> ");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        let now = Instant::now();
        Self {
            total,
            bar,
            started: now,
            last_line: now,
        }
    }

    pub(super) fn update(&mut self, progress: &Progress) {
        let done = progress.sent + progress.failed;
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(format!(
                    "failed {} retried {} 429s {}",
                    progress.failed, progress.retried, progress.rate_limited
                ));
            }
            None if self.last_line.elapsed() >= PROGRESS_LINE_EVERY => {
                self.last_line = Instant::now();
                let seconds = self.started.elapsed().as_secs_f64();
                let rate = done as f64 / seconds.max(0.001);
                let eta = if rate > 0.0 {
                    format!("{:.0}s", self.total.saturating_sub(done) as f64 / rate)
                } else {
                    "?".into()
                };
                eprintln!(
                    "progress: {done}/{} ({} sent, {} failed, {} retried, {} rate limited) \
                     {rate:.1}/s ETA {eta}",
                    self.total, progress.sent, progress.failed, progress.retried, progress.rate_limited
                );
            }
            None => {}
        }
    }

    pub(super) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
            // The bar leaves the cursor at the end of its line.
            eprintln!();
        }
    }
}
