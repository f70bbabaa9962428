//! Per-step durations of `start` and `stop`, shown with `--timings`.

use std::fmt::Write;
use std::time::{Duration, Instant};

/// Records how long each step took since the previous mark.
pub struct Timings {
    began: Instant,
    last: Instant,
    steps: Vec<(String, Duration)>,
}

impl Default for Timings {
    fn default() -> Self {
        let now = Instant::now();
        Timings {
            began: now,
            last: now,
            steps: Vec::new(),
        }
    }
}

impl Timings {
    /// Ends step `step` now.
    pub fn mark(&mut self, step: &'static str) {
        let now = Instant::now();
        self.steps.push((step.to_string(), now - self.last));
        self.last = now;
    }

    /// Ends step `step`, made of `parts` that ran at the same time, each
    /// with how long it took; the parts are shown under the step.
    pub fn mark_parallel(&mut self, step: &'static str, parts: &[(&'static str, Duration)]) {
        self.mark(step);
        for (part, took) in parts {
            self.steps
                .push((format!("  of which, at the same time: {part}"), *took));
        }
    }

    /// One line per step and the total, in milliseconds.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for (step, took) in &self.steps {
            let _ = writeln!(out, "{:>8.2} ms  {step}", took.as_secs_f64() * 1000.0);
        }
        let _ = writeln!(
            out,
            "{:>8.2} ms  total",
            (self.last - self.began).as_secs_f64() * 1000.0
        );
        out
    }
}

/// Runs `work` and returns its output with how long it took.
pub async fn timed<T>(work: impl std::future::Future<Output = T>) -> (T, Duration) {
    let began = Instant::now();
    let output = work.await;
    (output, began.elapsed())
}
