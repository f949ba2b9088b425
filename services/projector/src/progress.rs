//! Progress of a replay: a bar with events done, rate and ETA when standard error is a
//! terminal, a log line every few seconds otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const LOG_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    what: &'static str,
    bar: Option<ProgressBar>,
    started: Instant,
    state: Mutex<State>,
}

struct State {
    done: u64,
    total: u64,
    logged: Instant,
}

impl Progress {
    /// Progress of `what` over `total` events.
    pub fn new(what: &'static str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {human_pos}/{human_len} events, {per_sec}, ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(what);
            bar
        });
        Self {
            what,
            bar,
            started: Instant::now(),
            state: Mutex::new(State {
                done: 0,
                total,
                logged: Instant::now(),
            }),
        }
    }

    /// `events` more are done; the last one read has stream sequence `sequence`.
    pub fn advance(&self, events: u64, sequence: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.done += events;
        if state.done > state.total {
            state.total = state.done;
            if let Some(bar) = &self.bar {
                bar.set_length(state.total);
            }
        }
        if let Some(bar) = &self.bar {
            bar.set_position(state.done);
        } else if state.logged.elapsed() >= LOG_EVERY {
            state.logged = Instant::now();
            let rate = state.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            tracing::info!(
                "{}: {} of {} events, at sequence {sequence}, {rate:.0} events/s",
                self.what,
                state.done,
                state.total
            );
        }
    }

    /// Names the phase now running.
    pub fn phase(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(format!("{}: {text}", self.what)),
            None => tracing::info!("{}: {text}", self.what),
        }
    }

    /// Tells of something the operator should know (a phase that had to wait), as a line of
    /// its own above the bar, or a warning in the log.
    pub fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("{}: {text}", self.what)),
            None => tracing::warn!("{}: {text}", self.what),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
