//! Per-step durations of `start` and `stop`, shown with `--timings`.

use std::fmt::Write;
use std::time::{Duration, Instant};

/// Records how long each step took since the previous mark.
pub struct Timings {
    began: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
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
        self.steps.push((step, now - self.last));
        self.last = now;
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
