//! Bounded retries with exponential backoff for transient storage failures.
//!
//! [`retry`] repeats an operation while its error says [`RetryHint::Transient`] and the
//! [`RetryPolicy`]'s attempt bound is not reached, sleeping `initial_backoff`, then twice that,
//! … up to `max_backoff` between attempts. A permanent error (not found, already exists, a CRC
//! mismatch, bad credentials) is returned at once. The error that ends the loop records how
//! many attempts were made.
//!
//! The S3 client retries HTTP-level failures on its own before an error reaches this loop; this
//! loop covers what is left (and every backend, including `file://` and the test stores).

use std::future::Future;
use std::time::Duration;

use crate::error::{RetryHint, StorageError, StorageOp};

/// How often and how patiently to retry a transient failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first; at least 1.
    pub max_attempts: u32,
    /// The pause after the first failed attempt.
    pub initial_backoff: Duration,
    /// The longest pause between two attempts; pauses double until they reach it.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Three attempts, pausing 100 ms then 200 ms (at most 2 s).
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn no_retries() -> Self {
        Self {
            max_attempts: 1,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        }
    }

    /// The pause after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Runs `attempt` until it succeeds, fails permanently, or `policy.max_attempts` attempts have
/// failed; `op` and `path` only label the log lines.
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    op: StorageOp,
    path: &str,
    mut attempt: F,
) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StorageError>>,
{
    let max = policy.max_attempts.max(1);
    let mut n = 1;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if e.retry_hint() == RetryHint::Transient && n < max => {
                let pause = policy.backoff(n);
                tracing::warn!(%op, path, attempt = n, max_attempts = max, ?pause, error = %e,
                    "transient storage failure; retrying");
                tokio::time::sleep(pause).await;
                n += 1;
            }
            Err(e) => return Err(e.with_attempts(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        let pauses: Vec<_> = (1..=5).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(pauses, vec![100, 200, 350, 350, 350]);
        assert_eq!(p.backoff(100), Duration::from_millis(350));
    }
}
