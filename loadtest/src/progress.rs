//! The progress bar on stderr: elapsed time over warm-up plus measured period, the phase, and
//! the request rate of the last moment. Shown only to a person at a terminal, for runs long
//! enough to be worth watching; a ticker task redraws it, the connections only bump a counter.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio::time::{interval, Instant, MissedTickBehavior};

use crate::spec::LoadSpec;
use crate::tally::Window;

/// Shorter runs finish before a bar tells anyone anything.
const MIN_DURATION: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(250);

/// A drawn progress bar and the task that redraws it.
pub(crate) struct Progress {
    bar: ProgressBar,
    ticker: JoinHandle<()>,
}

impl Progress {
    /// Whether `spec` asks for a bar and there is someone to see it.
    pub(crate) fn wanted(spec: &LoadSpec) -> bool {
        spec.progress && spec.duration >= MIN_DURATION && std::io::stderr().is_terminal()
    }

    /// Starts drawing; `finished` is the count of exchanges the connections bump.
    pub(crate) fn start(window: Window, finished: Arc<AtomicU64>) -> Progress {
        let total = window.end - window.start;
        let bar = ProgressBar::with_draw_target(
            Some(total.as_millis() as u64),
            ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            ProgressStyle::with_template("{prefix:>9} [{wide_bar}] {msg}")
                .expect("constant template is valid")
                .progress_chars("=> "),
        );
        let ticker = tokio::spawn({
            let bar = bar.clone();
            async move {
                let mut tick = interval(TICK);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                let (mut last_count, mut last_at) = (0u64, Instant::now());
                loop {
                    tick.tick().await;
                    let now = Instant::now();
                    let count = finished.load(Ordering::Relaxed);
                    let rate =
                        (count - last_count) as f64 / (now - last_at).as_secs_f64().max(1e-3);
                    (last_count, last_at) = (count, now);
                    let elapsed = now.saturating_duration_since(window.start).min(total);
                    bar.set_position(elapsed.as_millis() as u64);
                    bar.set_prefix(if now < window.measure_from {
                        "warm-up"
                    } else {
                        "measuring"
                    });
                    bar.set_message(format!(
                        "{:.0}/{:.0}s  {rate:.0} req/s",
                        elapsed.as_secs_f64(),
                        total.as_secs_f64()
                    ));
                }
            }
        });
        Progress { bar, ticker }
    }

    /// Stops redrawing and clears the bar, leaving stderr as it was.
    pub(crate) fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
