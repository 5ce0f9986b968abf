//! Restart strategies: whether a failed job is restarted, and after how long (DESIGN §6).
//!
//! Pure decisions, as Flink's `RestartBackoffTimeStrategy`: no clock, no I/O, no randomness of
//! its own. The caller passes the time in milliseconds and a seed for the jitter, and acts on
//! the [`RestartDecision`].
//!
//! How a driver (the JobMaster, or the local executor) uses it:
//!
//! 1. It creates one [`RestartTracker`] per job from the configured [`RestartStrategy`]
//!    (`restart-strategy.*` keys; [`RestartStrategy::validate`] names a bad key).
//! 2. When the job fails (one failover of its pipelined region — for most jobs the whole job),
//!    it calls [`RestartTracker::on_failure`] **once** for that failover, not once per failed
//!    task.
//! 3. On [`RestartDecision::Restart`] it cancels the remaining tasks, waits `delay_ms`, and
//!    redeploys from the latest completed checkpoint. When every task runs again it calls
//!    [`RestartTracker::on_running`]; for exponential delay, running stably for
//!    `reset_backoff_threshold_ms` resets the backoff to its initial value.
//! 4. On [`RestartDecision::Fail`] the job goes to FAILED and keeps `reason` next to its root
//!    cause. The tracker stays failed: every later [`on_failure`](RestartTracker::on_failure)
//!    returns the same decision.
//!
//! Times must not go backwards between calls; a time earlier than the previous one is treated
//! as equal to it (no failure is forgiven by a clock step back).

use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The Flink configuration key of each parameter, for error messages.
pub mod keys {
    /// Which strategy: `none`, `fixed-delay`, `exponential-delay` or `failure-rate`.
    pub const TYPE: &str = "restart-strategy.type";
    /// [`super::RestartStrategy::FixedDelay`] `attempts`.
    pub const FIXED_DELAY_ATTEMPTS: &str = "restart-strategy.fixed-delay.attempts";
    /// [`super::RestartStrategy::FixedDelay`] `delay_ms`.
    pub const FIXED_DELAY_DELAY: &str = "restart-strategy.fixed-delay.delay";
    /// [`super::RestartStrategy::ExponentialDelay`] `initial_backoff_ms`.
    pub const EXPONENTIAL_INITIAL_BACKOFF: &str =
        "restart-strategy.exponential-delay.initial-backoff";
    /// [`super::RestartStrategy::ExponentialDelay`] `max_backoff_ms`.
    pub const EXPONENTIAL_MAX_BACKOFF: &str = "restart-strategy.exponential-delay.max-backoff";
    /// [`super::RestartStrategy::ExponentialDelay`] `multiplier`.
    pub const EXPONENTIAL_MULTIPLIER: &str =
        "restart-strategy.exponential-delay.backoff-multiplier";
    /// [`super::RestartStrategy::ExponentialDelay`] `reset_backoff_threshold_ms`.
    pub const EXPONENTIAL_RESET_THRESHOLD: &str =
        "restart-strategy.exponential-delay.reset-backoff-threshold";
    /// [`super::RestartStrategy::ExponentialDelay`] `jitter_factor`.
    pub const EXPONENTIAL_JITTER: &str = "restart-strategy.exponential-delay.jitter-factor";
    /// [`super::RestartStrategy::ExponentialDelay`] `attempts_before_reset`.
    pub const EXPONENTIAL_ATTEMPTS: &str =
        "restart-strategy.exponential-delay.attempts-before-reset-backoff";
    /// [`super::RestartStrategy::FailureRate`] `max_failures_per_interval`.
    pub const FAILURE_RATE_MAX_FAILURES: &str =
        "restart-strategy.failure-rate.max-failures-per-interval";
    /// [`super::RestartStrategy::FailureRate`] `interval_ms`.
    pub const FAILURE_RATE_INTERVAL: &str = "restart-strategy.failure-rate.failure-rate-interval";
    /// [`super::RestartStrategy::FailureRate`] `delay_ms`.
    pub const FAILURE_RATE_DELAY: &str = "restart-strategy.failure-rate.delay";
}

/// How a job reacts to failures, as in Flink. Every time is in milliseconds.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RestartStrategy {
    /// Never restart: the first failure fails the job (Flink's default without checkpointing).
    None,
    /// Restart up to `attempts` times in the job's life, waiting `delay_ms` before each.
    FixedDelay {
        /// Restarts allowed; the failure after the last one fails the job (0: none).
        attempts: u32,
        /// Wait before each restart.
        delay_ms: u64,
    },
    /// Restart with a backoff that grows by `multiplier` per restart, up to `max_backoff_ms`,
    /// and falls back to `initial_backoff_ms` after `reset_backoff_threshold_ms` of stable
    /// running (Flink's default with checkpointing).
    ExponentialDelay {
        /// Wait before the first restart (and after a reset); also the least wait.
        initial_backoff_ms: u64,
        /// The most any wait can be, jitter included.
        max_backoff_ms: u64,
        /// Growth of the backoff per restart, above 1.
        multiplier: f64,
        /// Running this long without a failure resets the backoff and the attempt count.
        reset_backoff_threshold_ms: u64,
        /// Each wait is moved by up to ± this fraction of itself, so that many jobs failing
        /// together do not all restart at the same instant (0..=1).
        jitter_factor: f64,
        /// Restarts allowed between two resets; the failure after the last one fails the job
        /// (`u32::MAX`: unlimited in practice, Flink's `Integer.MAX_VALUE`).
        attempts_before_reset: u32,
    },
    /// Restart after `delay_ms` unless more than `max_failures_per_interval` failures fall
    /// within `interval_ms`.
    FailureRate {
        /// Failures (and so restarts) allowed within any interval; one more fails the job.
        max_failures_per_interval: u32,
        /// The length of the sliding window, closed at both ends.
        interval_ms: u64,
        /// Wait before each restart.
        delay_ms: u64,
    },
}

impl RestartStrategy {
    /// Flink's fixed-delay defaults: 1 attempt, 1 s delay.
    pub const FIXED_DELAY_DEFAULT: RestartStrategy = RestartStrategy::FixedDelay {
        attempts: 1,
        delay_ms: 1_000,
    };

    /// Flink's exponential-delay defaults (1.19+): 1 s initial backoff, 1 min max, ×1.5,
    /// reset after 1 h of stable running, jitter 0.1, unlimited attempts.
    pub const EXPONENTIAL_DELAY_DEFAULT: RestartStrategy = RestartStrategy::ExponentialDelay {
        initial_backoff_ms: 1_000,
        max_backoff_ms: 60_000,
        multiplier: 1.5,
        reset_backoff_threshold_ms: 3_600_000,
        jitter_factor: 0.1,
        attempts_before_reset: u32::MAX,
    };

    /// Flink's failure-rate defaults: 1 failure per 1 min interval, 1 s delay.
    pub const FAILURE_RATE_DEFAULT: RestartStrategy = RestartStrategy::FailureRate {
        max_failures_per_interval: 1,
        interval_ms: 60_000,
        delay_ms: 1_000,
    };

    /// Flink's default when `restart-strategy.type` is not set: exponential delay when
    /// checkpointing is enabled, no restarts otherwise.
    pub fn default_for(checkpointing_enabled: bool) -> RestartStrategy {
        if checkpointing_enabled {
            Self::EXPONENTIAL_DELAY_DEFAULT
        } else {
            RestartStrategy::None
        }
    }

    /// The configuration spelling of the strategy (`restart-strategy.type`).
    pub fn name(&self) -> &'static str {
        match self {
            RestartStrategy::None => "none",
            RestartStrategy::FixedDelay { .. } => "fixed-delay",
            RestartStrategy::ExponentialDelay { .. } => "exponential-delay",
            RestartStrategy::FailureRate { .. } => "failure-rate",
        }
    }

    /// Checks the parameters as Flink does; the error names the first bad key.
    pub fn validate(&self) -> Result<(), RestartStrategyError> {
        let bad = |key, value: String, expected| {
            Err(RestartStrategyError {
                key,
                value,
                expected,
            })
        };
        match *self {
            RestartStrategy::None | RestartStrategy::FixedDelay { .. } => Ok(()),
            RestartStrategy::ExponentialDelay {
                initial_backoff_ms,
                max_backoff_ms,
                multiplier,
                reset_backoff_threshold_ms,
                jitter_factor,
                attempts_before_reset,
            } => {
                if initial_backoff_ms == 0 {
                    return bad(keys::EXPONENTIAL_INITIAL_BACKOFF, ms(0), "at least 1 ms");
                }
                if max_backoff_ms < initial_backoff_ms {
                    return bad(
                        keys::EXPONENTIAL_MAX_BACKOFF,
                        ms(max_backoff_ms),
                        "at least restart-strategy.exponential-delay.initial-backoff",
                    );
                }
                if !(multiplier > 1.0 && multiplier.is_finite()) {
                    return bad(
                        keys::EXPONENTIAL_MULTIPLIER,
                        multiplier.to_string(),
                        "a number above 1",
                    );
                }
                if reset_backoff_threshold_ms == 0 {
                    return bad(keys::EXPONENTIAL_RESET_THRESHOLD, ms(0), "at least 1 ms");
                }
                if !(0.0..=1.0).contains(&jitter_factor) {
                    return bad(
                        keys::EXPONENTIAL_JITTER,
                        jitter_factor.to_string(),
                        "a number from 0 to 1",
                    );
                }
                if attempts_before_reset == 0 {
                    return bad(keys::EXPONENTIAL_ATTEMPTS, "0".into(), "at least 1");
                }
                Ok(())
            }
            RestartStrategy::FailureRate {
                max_failures_per_interval,
                interval_ms,
                ..
            } => {
                if max_failures_per_interval == 0 {
                    return bad(keys::FAILURE_RATE_MAX_FAILURES, "0".into(), "at least 1");
                }
                if interval_ms == 0 {
                    return bad(keys::FAILURE_RATE_INTERVAL, ms(0), "at least 1 ms");
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for RestartStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RestartStrategy::None => f.write_str("none"),
            RestartStrategy::FixedDelay { attempts, delay_ms } => write!(
                f,
                "fixed-delay ({} attempts, delay {})",
                count(attempts),
                ms(delay_ms)
            ),
            RestartStrategy::ExponentialDelay {
                initial_backoff_ms,
                max_backoff_ms,
                multiplier,
                reset_backoff_threshold_ms,
                jitter_factor,
                attempts_before_reset,
            } => write!(
                f,
                "exponential-delay (backoff {} to {}, ×{multiplier}, jitter {jitter_factor}, \
                 reset after {} running, {} attempts before a reset)",
                ms(initial_backoff_ms),
                ms(max_backoff_ms),
                ms(reset_backoff_threshold_ms),
                count(attempts_before_reset)
            ),
            RestartStrategy::FailureRate {
                max_failures_per_interval,
                interval_ms,
                delay_ms,
            } => write!(
                f,
                "failure-rate (at most {max_failures_per_interval} failures per {}, delay {})",
                ms(interval_ms),
                ms(delay_ms)
            ),
        }
    }
}

/// A restart-strategy parameter that is not allowed, naming its Flink key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value} for {key}: expected {expected}")]
pub struct RestartStrategyError {
    /// The key, e.g. `restart-strategy.exponential-delay.max-backoff`.
    pub key: &'static str,
    /// The rejected value.
    pub value: String,
    /// What would be accepted.
    pub expected: &'static str,
}

/// What to do about one failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart the job after `delay_ms`; this is restart number `attempt` of the job (1-based,
    /// counted over the tracker's whole life, resets included).
    Restart {
        /// How long to wait before redeploying.
        delay_ms: u64,
        /// The restart's number, from 1.
        attempt: u32,
    },
    /// Do not restart: the job fails. `reason` names the strategy and the limit reached.
    Fail {
        /// E.g. `restart strategy fixed-delay: 3 restart attempts used`.
        reason: String,
    },
}

/// The restart state of one job: feed it failures and "running again" events, in time order.
#[derive(Clone, Debug)]
pub struct RestartTracker {
    strategy: RestartStrategy,
    /// Restarts granted so far (never reset).
    restarts: u32,
    /// Set by the first `Fail`; every later failure returns it again.
    failed: Option<String>,
    /// The latest time seen, so a clock step back is read as "no time passed".
    latest_ms: u64,
    /// Exponential delay: restarts granted since the last reset.
    attempts_since_reset: u32,
    /// Exponential delay: when the last granted restart was due.
    restart_due_ms: Option<u64>,
    /// Exponential delay: when the job was last reported running after a restart.
    running_since_ms: Option<u64>,
    /// Failure rate: the times of the latest `max_failures_per_interval + 1` failures.
    failure_times: VecDeque<u64>,
}

impl RestartTracker {
    /// A tracker for a job that has not failed yet.
    pub fn new(strategy: RestartStrategy) -> Self {
        Self {
            strategy,
            restarts: 0,
            failed: None,
            latest_ms: 0,
            attempts_since_reset: 0,
            restart_due_ms: None,
            running_since_ms: None,
            failure_times: VecDeque::new(),
        }
    }

    /// The strategy this tracker applies.
    pub fn strategy(&self) -> &RestartStrategy {
        &self.strategy
    }

    /// Restarts granted so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// True once a failure was refused a restart.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Records that every task runs again at `now_ms` (after a restart). Only the first call
    /// after a failure counts; calling it again while running changes nothing.
    pub fn on_running(&mut self, now_ms: u64) {
        let now = self.observe(now_ms);
        if self.running_since_ms.is_none() {
            self.running_since_ms = Some(now);
        }
    }

    /// Decides about the failure observed at `now_ms`. `seed_for_jitter` picks the jitter of an
    /// exponential delay (any value; the same inputs give the same decision).
    pub fn on_failure(&mut self, now_ms: u64, seed_for_jitter: u64) -> RestartDecision {
        let now = self.observe(now_ms);
        if let Some(reason) = &self.failed {
            return RestartDecision::Fail {
                reason: reason.clone(),
            };
        }
        let outcome = match self.strategy {
            RestartStrategy::None => Err("restart strategy none: restarts are disabled".to_owned()),
            RestartStrategy::FixedDelay { attempts, delay_ms } => {
                if self.restarts >= attempts {
                    Err(format!(
                        "restart strategy fixed-delay: {attempts} restart attempts used"
                    ))
                } else {
                    Ok(delay_ms)
                }
            }
            RestartStrategy::ExponentialDelay {
                initial_backoff_ms,
                max_backoff_ms,
                multiplier,
                reset_backoff_threshold_ms,
                jitter_factor,
                attempts_before_reset,
            } => {
                // Stable running is measured from the "running" report, or (without one, as in
                // Flink) from when the restart was due.
                let stable_since = self.running_since_ms.or(self.restart_due_ms);
                if stable_since.is_some_and(|s| now - s.min(now) >= reset_backoff_threshold_ms) {
                    self.attempts_since_reset = 0;
                }
                if self.attempts_since_reset >= attempts_before_reset {
                    Err(format!(
                        "restart strategy exponential-delay: {attempts_before_reset} restart \
                         attempts used without {} of stable running",
                        ms(reset_backoff_threshold_ms)
                    ))
                } else {
                    let delay = exponential_delay_ms(
                        initial_backoff_ms,
                        max_backoff_ms,
                        multiplier,
                        jitter_factor,
                        self.attempts_since_reset,
                        seed_for_jitter,
                    );
                    self.attempts_since_reset += 1;
                    self.restart_due_ms = Some(now.saturating_add(delay));
                    Ok(delay)
                }
            }
            RestartStrategy::FailureRate {
                max_failures_per_interval,
                interval_ms,
                delay_ms,
            } => {
                let window = max_failures_per_interval as usize + 1;
                self.failure_times.push_back(now);
                while self.failure_times.len() > window {
                    self.failure_times.pop_front();
                }
                match self.failure_times.front() {
                    Some(&oldest)
                        if self.failure_times.len() == window && now - oldest <= interval_ms =>
                    {
                        Err(format!(
                            "restart strategy failure-rate: {window} failures within {} \
                             (at most {max_failures_per_interval} allowed per interval)",
                            ms(interval_ms)
                        ))
                    }
                    _ => Ok(delay_ms),
                }
            }
        };
        self.running_since_ms = None;
        match outcome {
            Ok(delay_ms) => {
                self.restarts = self.restarts.saturating_add(1);
                RestartDecision::Restart {
                    delay_ms,
                    attempt: self.restarts,
                }
            }
            Err(reason) => {
                self.failed = Some(reason.clone());
                RestartDecision::Fail { reason }
            }
        }
    }

    /// The later of `now_ms` and every time seen before.
    fn observe(&mut self, now_ms: u64) -> u64 {
        self.latest_ms = self.latest_ms.max(now_ms);
        self.latest_ms
    }
}

/// The wait before restart number `attempt + 1` since the last reset: `initial × multiplier^attempt`,
/// moved by up to ± `jitter` of itself, then kept within `initial..=max` (Flink's formula).
fn exponential_delay_ms(
    initial: u64,
    max: u64,
    multiplier: f64,
    jitter: f64,
    attempt: u32,
    seed: u64,
) -> u64 {
    // `as u64` saturates: an overflowing power is simply the maximum.
    let base = ((initial as f64) * multiplier.powf(f64::from(attempt))).min(max as f64) as u64;
    let offset = ((base as f64) * jitter.clamp(0.0, 1.0)) as u64;
    let jittered = if offset == 0 {
        i128::from(base)
    } else {
        let span = 2 * u128::from(offset) + 1;
        let pick = u128::from(splitmix64(seed)) % span;
        i128::from(base) + pick as i128 - i128::from(offset)
    };
    let capped = jittered.min(i128::from(max)).max(i128::from(initial));
    // Within `initial..=max` when valid; when not (initial > max), the initial backoff wins.
    u64::try_from(capped).unwrap_or(initial)
}

/// A well-mixed 64-bit value from `seed` (SplitMix64's finaliser).
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A duration in the configuration's syntax: `1h`, `1min`, `3s` or `1500ms`.
fn ms(v: u64) -> String {
    match v {
        0 => "0ms".to_owned(),
        v if v % 3_600_000 == 0 => format!("{}h", v / 3_600_000),
        v if v % 60_000 == 0 => format!("{}min", v / 60_000),
        v if v % 1_000 == 0 => format!("{}s", v / 1_000),
        v => format!("{v}ms"),
    }
}

/// A count where `u32::MAX` means "unlimited".
fn count(n: u32) -> String {
    if n == u32::MAX {
        "unlimited".to_owned()
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn restart(delay_ms: u64, attempt: u32) -> RestartDecision {
        RestartDecision::Restart { delay_ms, attempt }
    }

    fn exponential(jitter_factor: f64, attempts_before_reset: u32) -> RestartStrategy {
        RestartStrategy::ExponentialDelay {
            initial_backoff_ms: 1_000,
            max_backoff_ms: 10_000,
            multiplier: 2.0,
            reset_backoff_threshold_ms: 60_000,
            jitter_factor,
            attempts_before_reset,
        }
    }

    fn fail_reason(d: RestartDecision) -> String {
        match d {
            RestartDecision::Fail { reason } => reason,
            other => panic!("expected Fail, got {other:?}"),
        }
    }

    #[test]
    fn the_none_strategy_fails_the_first_failure() {
        let mut t = RestartTracker::new(RestartStrategy::None);
        assert_eq!(
            fail_reason(t.on_failure(0, 0)),
            "restart strategy none: restarts are disabled"
        );
        assert!(t.is_failed());
        assert_eq!(t.restarts(), 0);
    }

    #[test]
    fn fixed_delay_allows_exactly_its_attempts_then_names_the_limit() {
        let mut t = RestartTracker::new(RestartStrategy::FixedDelay {
            attempts: 3,
            delay_ms: 250,
        });
        for attempt in 1..=3 {
            assert_eq!(
                t.on_failure(u64::from(attempt) * 1_000, 0),
                restart(250, attempt)
            );
            t.on_running(u64::from(attempt) * 1_000 + 250);
        }
        assert_eq!(
            fail_reason(t.on_failure(10_000, 0)),
            "restart strategy fixed-delay: 3 restart attempts used"
        );
    }

    #[test]
    fn a_failed_tracker_keeps_failing_with_the_same_reason() {
        let mut t = RestartTracker::new(RestartStrategy::FixedDelay {
            attempts: 0,
            delay_ms: 1,
        });
        let first = t.on_failure(5, 0);
        assert_eq!(t.on_failure(10_000_000, 0), first);
        t.on_running(20_000_000);
        assert_eq!(t.on_failure(30_000_000, 0), first);
    }

    #[test]
    fn exponential_delay_grows_by_the_multiplier_up_to_the_maximum() {
        let mut t = RestartTracker::new(exponential(0.0, u32::MAX));
        let delays: Vec<u64> = (0..6)
            .map(|i| match t.on_failure(i * 100, i) {
                RestartDecision::Restart { delay_ms, .. } => delay_ms,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
    }

    #[test]
    fn exponential_delay_resets_after_stable_running_for_the_threshold() {
        let mut t = RestartTracker::new(exponential(0.0, u32::MAX));
        assert_eq!(t.on_failure(0, 0), restart(1_000, 1));
        t.on_running(1_000);
        assert_eq!(t.on_failure(2_000, 0), restart(2_000, 2));
        t.on_running(4_000);
        // Ran 59.999 s: not yet stable.
        assert_eq!(t.on_failure(63_999, 0), restart(4_000, 3));
        t.on_running(68_000);
        // Ran exactly 60 s: the backoff starts over; the attempt number keeps counting.
        assert_eq!(t.on_failure(128_000, 0), restart(1_000, 4));
    }

    #[test]
    fn without_a_running_report_stability_counts_from_when_the_restart_was_due() {
        let mut t = RestartTracker::new(exponential(0.0, u32::MAX));
        assert_eq!(t.on_failure(0, 0), restart(1_000, 1));
        assert_eq!(t.on_failure(60_999, 0), restart(2_000, 2));
        assert_eq!(t.on_failure(122_999, 0), restart(1_000, 3));
    }

    #[test]
    fn exponential_delay_fails_after_its_attempts_without_a_reset() {
        let mut t = RestartTracker::new(exponential(0.0, 2));
        assert_eq!(t.on_failure(0, 0), restart(1_000, 1));
        assert_eq!(t.on_failure(1_500, 0), restart(2_000, 2));
        assert_eq!(
            fail_reason(t.on_failure(4_000, 0)),
            "restart strategy exponential-delay: 2 restart attempts used without 1min of stable running"
        );
    }

    #[test]
    fn a_reset_also_restores_the_attempts_before_reset() {
        let mut t = RestartTracker::new(exponential(0.0, 1));
        assert_eq!(t.on_failure(0, 0), restart(1_000, 1));
        t.on_running(1_000);
        assert_eq!(t.on_failure(61_000, 0), restart(1_000, 2));
    }

    #[test]
    fn jitter_moves_the_delay_by_at_most_its_factor_and_depends_only_on_the_seed() {
        let strategy = RestartStrategy::ExponentialDelay {
            initial_backoff_ms: 1_000,
            max_backoff_ms: 100_000,
            multiplier: 2.0,
            reset_backoff_threshold_ms: 3_600_000,
            jitter_factor: 0.25,
            attempts_before_reset: u32::MAX,
        };
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let mut a = RestartTracker::new(strategy);
            let mut b = RestartTracker::new(strategy);
            a.on_failure(0, 99);
            b.on_failure(0, 99);
            let (da, db) = (a.on_failure(10, seed), b.on_failure(10, seed));
            assert_eq!(da, db);
            let RestartDecision::Restart { delay_ms, .. } = da else {
                panic!("{da:?}")
            };
            assert!((1_500..=2_500).contains(&delay_ms), "{delay_ms}");
            seen.insert(delay_ms);
        }
        assert!(seen.len() > 50, "jitter should spread delays: {seen:?}");
    }

    #[test]
    fn failure_rate_allows_its_maximum_within_an_interval_and_fails_the_next() {
        let mut t = RestartTracker::new(RestartStrategy::FailureRate {
            max_failures_per_interval: 2,
            interval_ms: 10_000,
            delay_ms: 500,
        });
        assert_eq!(t.on_failure(0, 0), restart(500, 1));
        assert_eq!(t.on_failure(4_000, 0), restart(500, 2));
        // The window is closed: 0 and 10_000 are within one interval.
        assert_eq!(
            fail_reason(t.on_failure(10_000, 0)),
            "restart strategy failure-rate: 3 failures within 10s (at most 2 allowed per interval)"
        );
    }

    #[test]
    fn failure_rate_forgets_failures_older_than_the_interval() {
        let mut t = RestartTracker::new(RestartStrategy::FAILURE_RATE_DEFAULT);
        for i in 0..5u32 {
            assert_eq!(
                t.on_failure(u64::from(i) * 60_001, 0),
                restart(1_000, i + 1)
            );
        }
        assert!(!t.is_failed());
        assert!(matches!(
            t.on_failure(4 * 60_001 + 60_000, 0),
            RestartDecision::Fail { .. }
        ));
    }

    #[test]
    fn a_clock_step_back_forgives_nothing() {
        let mut t = RestartTracker::new(RestartStrategy::FailureRate {
            max_failures_per_interval: 1,
            interval_ms: 1_000,
            delay_ms: 0,
        });
        assert_eq!(t.on_failure(50_000, 0), restart(0, 1));
        assert!(matches!(t.on_failure(10, 0), RestartDecision::Fail { .. }));
    }

    #[test]
    fn defaults_are_flinks_and_valid() {
        assert_eq!(RestartStrategy::default_for(false), RestartStrategy::None);
        assert_eq!(
            RestartStrategy::default_for(true),
            RestartStrategy::EXPONENTIAL_DELAY_DEFAULT
        );
        for s in [
            RestartStrategy::None,
            RestartStrategy::FIXED_DELAY_DEFAULT,
            RestartStrategy::EXPONENTIAL_DELAY_DEFAULT,
            RestartStrategy::FAILURE_RATE_DEFAULT,
        ] {
            assert_eq!(s.validate(), Ok(()), "{s}");
        }
        assert_eq!(
            RestartStrategy::EXPONENTIAL_DELAY_DEFAULT.to_string(),
            "exponential-delay (backoff 1s to 1min, ×1.5, jitter 0.1, reset after 1h running, \
             unlimited attempts before a reset)"
        );
    }

    #[test]
    fn each_bad_parameter_names_its_own_key() {
        let exp = RestartStrategy::EXPONENTIAL_DELAY_DEFAULT;
        let with = |f: fn(&mut RestartStrategy)| {
            let mut s = exp;
            f(&mut s);
            s
        };
        let cases = [
            (
                with(|s| {
                    if let RestartStrategy::ExponentialDelay {
                        initial_backoff_ms, ..
                    } = s
                    {
                        *initial_backoff_ms = 0
                    }
                }),
                keys::EXPONENTIAL_INITIAL_BACKOFF,
            ),
            (
                with(|s| {
                    if let RestartStrategy::ExponentialDelay { max_backoff_ms, .. } = s {
                        *max_backoff_ms = 10
                    }
                }),
                keys::EXPONENTIAL_MAX_BACKOFF,
            ),
            (
                with(|s| {
                    if let RestartStrategy::ExponentialDelay { multiplier, .. } = s {
                        *multiplier = 1.0
                    }
                }),
                keys::EXPONENTIAL_MULTIPLIER,
            ),
            (
                with(|s| {
                    if let RestartStrategy::ExponentialDelay {
                        reset_backoff_threshold_ms,
                        ..
                    } = s
                    {
                        *reset_backoff_threshold_ms = 0
                    }
                }),
                keys::EXPONENTIAL_RESET_THRESHOLD,
            ),
            (
                with(|s| {
                    if let RestartStrategy::ExponentialDelay { jitter_factor, .. } = s {
                        *jitter_factor = 1.5
                    }
                }),
                keys::EXPONENTIAL_JITTER,
            ),
            (
                with(|s| {
                    if let RestartStrategy::ExponentialDelay {
                        attempts_before_reset,
                        ..
                    } = s
                    {
                        *attempts_before_reset = 0
                    }
                }),
                keys::EXPONENTIAL_ATTEMPTS,
            ),
            (
                RestartStrategy::FailureRate {
                    max_failures_per_interval: 0,
                    interval_ms: 1,
                    delay_ms: 0,
                },
                keys::FAILURE_RATE_MAX_FAILURES,
            ),
            (
                RestartStrategy::FailureRate {
                    max_failures_per_interval: 1,
                    interval_ms: 0,
                    delay_ms: 0,
                },
                keys::FAILURE_RATE_INTERVAL,
            ),
        ];
        for (s, key) in cases {
            let err = s.validate().unwrap_err();
            assert_eq!(err.key, key, "{s:?}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    /// A valid exponential-delay strategy.
    fn exponential_strategy() -> impl Strategy<Value = RestartStrategy> {
        (
            1u64..5_000,
            0u64..1_000_000,
            1.01f64..10.0,
            1u64..100_000,
            0.0f64..=1.0,
            1u32..50,
        )
            .prop_map(
                |(initial, extra, multiplier, threshold, jitter, attempts)| {
                    RestartStrategy::ExponentialDelay {
                        initial_backoff_ms: initial,
                        max_backoff_ms: initial + extra,
                        multiplier,
                        reset_backoff_threshold_ms: threshold,
                        jitter_factor: jitter,
                        attempts_before_reset: attempts,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn exponential_delays_stay_between_the_initial_and_the_maximum_backoff(
            strategy in exponential_strategy(),
            // (time since the previous event, report running first?, jitter seed)
            events in prop::collection::vec((0u64..200_000, any::<bool>(), any::<u64>()), 1..60),
        ) {
            let RestartStrategy::ExponentialDelay { initial_backoff_ms, max_backoff_ms, .. } =
                strategy else { unreachable!() };
            prop_assert_eq!(strategy.validate(), Ok(()));
            let mut t = RestartTracker::new(strategy);
            let mut now = 0u64;
            let mut last_attempt = 0;
            for (gap, running, seed) in events {
                now += gap;
                if running {
                    t.on_running(now);
                }
                match t.on_failure(now, seed) {
                    RestartDecision::Restart { delay_ms, attempt } => {
                        prop_assert!(delay_ms >= initial_backoff_ms, "{} < {}", delay_ms, initial_backoff_ms);
                        prop_assert!(delay_ms <= max_backoff_ms, "{} > {}", delay_ms, max_backoff_ms);
                        prop_assert_eq!(attempt, last_attempt + 1);
                        last_attempt = attempt;
                    }
                    RestartDecision::Fail { .. } => break,
                }
            }
        }

        #[test]
        fn fixed_delay_allows_exactly_n_restarts_whatever_the_timing(
            attempts in 0u32..20,
            delay in 0u64..10_000,
            events in prop::collection::vec((0u64..1_000_000, any::<bool>()), 0..40),
        ) {
            let mut t = RestartTracker::new(RestartStrategy::FixedDelay { attempts, delay_ms: delay });
            let mut now = 0;
            let mut granted = 0u32;
            for (gap, running) in events {
                now += gap;
                if running {
                    t.on_running(now);
                }
                match t.on_failure(now, gap) {
                    RestartDecision::Restart { delay_ms, attempt } => {
                        granted += 1;
                        prop_assert_eq!(delay_ms, delay);
                        prop_assert_eq!(attempt, granted);
                    }
                    RestartDecision::Fail { reason } => {
                        prop_assert_eq!(granted, attempts);
                        prop_assert!(reason.contains("fixed-delay"), "{}", reason);
                    }
                }
                prop_assert!(granted <= attempts);
            }
        }

        #[test]
        fn failure_rate_never_restarts_more_than_n_failures_in_any_window(
            max in 1u32..6,
            interval in 1u64..10_000,
            gaps in prop::collection::vec(0u64..5_000, 1..80),
        ) {
            let mut t = RestartTracker::new(RestartStrategy::FailureRate {
                max_failures_per_interval: max,
                interval_ms: interval,
                delay_ms: 7,
            });
            let mut now = 0;
            let mut failures: Vec<u64> = Vec::new();
            let mut restarted: Vec<u64> = Vec::new();
            for gap in gaps {
                now += gap;
                failures.push(now);
                match t.on_failure(now, 0) {
                    RestartDecision::Restart { delay_ms, .. } => {
                        prop_assert_eq!(delay_ms, 7);
                        restarted.push(now);
                        // Any closed window [now - interval, now] holds at most `max` restarts.
                        let in_window = restarted.iter().filter(|&&f| now - f <= interval).count();
                        prop_assert!(in_window <= max as usize);
                    }
                    RestartDecision::Fail { .. } => {
                        // Refused only when this failure and `max` before it fall in one window.
                        let in_window = failures.iter().filter(|&&f| now - f <= interval).count();
                        prop_assert!(in_window > max as usize);
                        break;
                    }
                }
            }
        }
    }
}
