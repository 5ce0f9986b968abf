//! Why a checkpoint did not complete, in the spirit of Flink's `CheckpointFailureReason`.

use crate::handle::TaskId;
use serde::{Deserialize, Serialize};
use weir_types::CheckpointId;

/// Why a checkpoint was not triggered, or was aborted after it was triggered.
///
/// Only some reasons count towards `execution.checkpointing.tolerable-failed-checkpoints`; see
/// [`CheckpointFailureReason::counts_as_failure`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CheckpointFailureReason {
    /// Not every task acknowledged within `execution.checkpointing.timeout`.
    #[error("checkpoint expired before completing (timeout {timeout_ms} ms)")]
    Timeout {
        /// The configured timeout.
        timeout_ms: u64,
    },
    /// A task could not take its snapshot and declined the checkpoint.
    #[error("task {task} declined the checkpoint: {reason}")]
    TaskDeclined {
        /// The declining task.
        task: TaskId,
        /// The task's own explanation.
        reason: String,
    },
    /// A task failed while the checkpoint was running.
    #[error("task {task} failed while the checkpoint was running")]
    TaskFailure {
        /// The failed task.
        task: TaskId,
    },
    /// The job failed over (tasks are being restarted), so this attempt's snapshots are void.
    #[error("the job failed over while the checkpoint was running")]
    JobFailover,
    /// Triggering would exceed `execution.checkpointing.max-concurrent-checkpoints`.
    #[error("too many concurrent checkpoints (at most {max})")]
    TooManyConcurrent {
        /// The configured maximum.
        max: u32,
    },
    /// A savepoint was asked for while another one is still in progress.
    #[error("savepoint {id} is still in progress")]
    SavepointInProgress {
        /// The savepoint in progress.
        id: weir_types::CheckpointId,
    },
    /// `execution.checkpointing.min-pause` has not elapsed since the last completion.
    #[error("minimum pause between checkpoints not elapsed ({remaining_ms} ms left)")]
    MinPauseNotElapsed {
        /// How long until a checkpoint may be triggered.
        remaining_ms: u64,
    },
    /// Writing or finalizing the checkpoint's files failed.
    #[error("I/O error while finalizing the checkpoint: {detail}")]
    IoError {
        /// What failed, with the path where known.
        detail: String,
    },
    /// A newer checkpoint completed first, so this one is no longer needed.
    #[error("subsumed by the completed checkpoint {by}")]
    Subsumed {
        /// The newer, completed checkpoint.
        by: CheckpointId,
    },
    /// The coordinator was shut down or the job cancelled.
    #[error("the checkpoint coordinator was shut down or the job cancelled")]
    Cancelled,
    /// The checkpoint id counter reached `u64::MAX`; no further id can be issued.
    #[error("checkpoint ids are exhausted")]
    IdsExhausted,
}

impl CheckpointFailureReason {
    /// Whether this failure counts towards the consecutive-failure limit
    /// (`execution.checkpointing.tolerable-failed-checkpoints`).
    ///
    /// As in Flink, failures caused by the checkpoint itself count (timeout, a declining task,
    /// I/O); trigger rejections, subsumption, failover and shutdown do not, because they say
    /// nothing about whether checkpoints can succeed.
    pub fn counts_as_failure(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. }
                | Self::TaskDeclined { .. }
                | Self::TaskFailure { .. }
                | Self::IoError { .. }
        )
    }

    /// Whether a later attempt (the next checkpoint) can be expected to succeed without any
    /// intervention. False only for [`Self::IdsExhausted`] and [`Self::Cancelled`].
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::IdsExhausted | Self::Cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_types::{SubtaskIndex, VertexId};

    #[test]
    fn a_declined_checkpoint_names_the_task_and_its_reason() {
        let reason = CheckpointFailureReason::TaskDeclined {
            task: TaskId::new(VertexId(2), SubtaskIndex(0)),
            reason: "disk full".into(),
        };
        assert_eq!(
            reason.to_string(),
            "task vertex-2[0] declined the checkpoint: disk full"
        );
        assert!(reason.counts_as_failure());
    }

    #[test]
    fn trigger_rejections_and_failover_do_not_count_as_failures() {
        for r in [
            CheckpointFailureReason::TooManyConcurrent { max: 1 },
            CheckpointFailureReason::MinPauseNotElapsed { remaining_ms: 3 },
            CheckpointFailureReason::JobFailover,
            CheckpointFailureReason::Subsumed {
                by: CheckpointId(4),
            },
            CheckpointFailureReason::Cancelled,
        ] {
            assert!(!r.counts_as_failure(), "{r}");
        }
    }
}
