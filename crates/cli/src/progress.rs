//! Progress on long work: a spinner or bar on standard error while a command waits (a savepoint
//! being written, a job restoring its state, a drill's faults, a benchmark's run).
//!
//! Drawn only when standard error is a terminal. Where it is a file or a pipe (scripts, tests,
//! CI) nothing is drawn, and the commands print their plain status lines instead
//! ([`Progress::drawn`] tells which).

use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

/// See the module doc.
pub(crate) struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A spinner with `message` and the time since it started.
    pub fn spinner(message: impl Into<String>) -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid template"),
        );
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar }
    }

    /// A bar of `len` steps with `message`.
    pub fn bar(len: u64, message: impl Into<String>) -> Self {
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar }
    }

    /// Whether anything is drawn (standard error is a terminal).
    pub fn drawn(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// Replaces the message.
    pub fn set(&self, message: impl Into<String>) {
        self.bar.set_message(message.into());
    }

    /// Moves a bar to step `n`.
    pub fn at(&self, n: u64) {
        self.bar.set_position(n);
    }

    /// Prints a status line (above the bar when one is drawn; printed either way).
    pub fn line(&self, text: &str) {
        self.bar.suspend(|| eprintln!("{text}"));
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_drawn_when_standard_error_is_not_a_terminal() {
        // Test harnesses capture standard error: the bar hides itself and never blocks.
        let p = Progress::bar(3, "faults");
        p.at(2);
        p.set("still going");
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            assert!(!p.drawn());
        }
    }
}
