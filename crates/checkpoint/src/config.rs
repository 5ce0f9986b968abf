//! Checkpointing configuration, with Flink's key names, validated on construction.

use serde::{Deserialize, Serialize};

/// The Flink-familiar configuration key of each [`CheckpointConfig`] field.
pub mod keys {
    /// [`super::CheckpointConfig::interval_ms`].
    pub const INTERVAL: &str = "execution.checkpointing.interval";
    /// [`super::CheckpointConfig::timeout_ms`].
    pub const TIMEOUT: &str = "execution.checkpointing.timeout";
    /// [`super::CheckpointConfig::min_pause_ms`].
    pub const MIN_PAUSE: &str = "execution.checkpointing.min-pause";
    /// [`super::CheckpointConfig::max_concurrent`].
    pub const MAX_CONCURRENT: &str = "execution.checkpointing.max-concurrent-checkpoints";
    /// [`super::CheckpointConfig::tolerable_failures`].
    pub const TOLERABLE_FAILURES: &str = "execution.checkpointing.tolerable-failed-checkpoints";
    /// [`super::CheckpointConfig::num_retained`].
    pub const NUM_RETAINED: &str = "state.checkpoints.num-retained";
    /// [`super::CheckpointConfig::mode`].
    pub const MODE: &str = "execution.checkpointing.mode";
}

/// The smallest allowed interval and timeout, as in Flink.
pub const MIN_CHECKPOINT_TIME_MS: u64 = 10;

/// The guarantee barriers give.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointingMode {
    /// Operators align barriers: every record is reflected in state exactly once.
    #[default]
    ExactlyOnce,
    /// Operators do not align: after recovery some records may be reflected twice.
    AtLeastOnce,
}

/// A configuration value that is not allowed, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value} for {key}: {expected}")]
pub struct ConfigError {
    /// The Flink-style key, e.g. `execution.checkpointing.max-concurrent-checkpoints`.
    pub key: &'static str,
    /// The rejected value, as given.
    pub value: String,
    /// What would be accepted.
    pub expected: &'static str,
}

/// How the coordinator triggers, times out and retains checkpoints. All times in milliseconds.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// Time between periodic checkpoints; 0 disables periodic checkpoints (savepoints and
    /// manual triggers still work). Otherwise at least [`MIN_CHECKPOINT_TIME_MS`].
    pub interval_ms: u64,
    /// A checkpoint not fully acknowledged this long after its trigger is aborted.
    pub timeout_ms: u64,
    /// Least time between the completion of one checkpoint and the trigger of the next
    /// periodic one.
    pub min_pause_ms: u64,
    /// Most checkpoints (and savepoints) in progress at once, at least 1.
    pub max_concurrent: u32,
    /// Consecutive counted failures tolerated; one more fails the job.
    pub tolerable_failures: u32,
    /// Completed checkpoints kept (savepoints are not counted and never subsumed), at least 1.
    pub num_retained: u32,
    /// Exactly-once (aligned) or at-least-once barriers.
    pub mode: CheckpointingMode,
}

impl Default for CheckpointConfig {
    /// Flink's defaults, with a 10 s interval (Flink's default is "disabled").
    fn default() -> Self {
        Self {
            interval_ms: 10_000,
            timeout_ms: 600_000,
            min_pause_ms: 0,
            max_concurrent: 1,
            tolerable_failures: 0,
            num_retained: 1,
            mode: CheckpointingMode::ExactlyOnce,
        }
    }
}

impl CheckpointConfig {
    /// Checks every field; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval_ms != 0 && self.interval_ms < MIN_CHECKPOINT_TIME_MS {
            return Err(ConfigError {
                key: keys::INTERVAL,
                value: format!("{} ms", self.interval_ms),
                expected: "0 (disabled) or at least 10 ms",
            });
        }
        if self.timeout_ms < MIN_CHECKPOINT_TIME_MS {
            return Err(ConfigError {
                key: keys::TIMEOUT,
                value: format!("{} ms", self.timeout_ms),
                expected: "at least 10 ms",
            });
        }
        if self.max_concurrent == 0 {
            return Err(ConfigError {
                key: keys::MAX_CONCURRENT,
                value: self.max_concurrent.to_string(),
                expected: "at least 1",
            });
        }
        if self.num_retained == 0 {
            return Err(ConfigError {
                key: keys::NUM_RETAINED,
                value: self.num_retained.to_string(),
                expected: "at least 1",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configuration_is_valid() {
        assert_eq!(CheckpointConfig::default().validate(), Ok(()));
    }

    #[test]
    fn zero_max_concurrent_checkpoints_is_rejected_naming_the_key() {
        let cfg = CheckpointConfig {
            max_concurrent: 0,
            ..CheckpointConfig::default()
        };
        let err = cfg.validate().unwrap_err();
        assert_eq!(
            err.key,
            "execution.checkpointing.max-concurrent-checkpoints"
        );
        assert_eq!(
            err.to_string(),
            "invalid value 0 for execution.checkpointing.max-concurrent-checkpoints: at least 1"
        );
    }

    #[test]
    fn each_bad_value_names_its_own_key() {
        let base = CheckpointConfig::default();
        let cases = [
            (
                CheckpointConfig {
                    interval_ms: 5,
                    ..base
                },
                keys::INTERVAL,
            ),
            (
                CheckpointConfig {
                    timeout_ms: 0,
                    ..base
                },
                keys::TIMEOUT,
            ),
            (
                CheckpointConfig {
                    num_retained: 0,
                    ..base
                },
                keys::NUM_RETAINED,
            ),
        ];
        for (cfg, key) in cases {
            let err = cfg.validate().unwrap_err();
            assert_eq!(err.key, key);
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn a_zero_interval_disables_periodic_checkpoints_and_is_valid() {
        let cfg = CheckpointConfig {
            interval_ms: 0,
            ..CheckpointConfig::default()
        };
        assert_eq!(cfg.validate(), Ok(()));
    }
}
