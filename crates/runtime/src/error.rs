//! Errors of tasks and jobs.

use weir_types::{CheckpointId, SubtaskIndex};

/// The error type of user functions (process functions, sources, sinks).
pub type UserError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why one task stopped.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// An operator (user function, source, sink or state access) failed.
    #[error("operator '{uid}' subtask {subtask}/{parallelism} failed: {message}")]
    Operator {
        /// The operator's uid.
        uid: String,
        /// Which subtask.
        subtask: SubtaskIndex,
        /// Of how many.
        parallelism: u32,
        /// What went wrong, with the user error's chain.
        message: String,
    },
    /// A downstream task went away while this one was still sending: a consequence of another
    /// failure, never a root cause.
    #[error("a downstream task of '{uid}' subtask {subtask} went away")]
    DownstreamLost {
        /// The sending operator's uid.
        uid: String,
        /// Which subtask.
        subtask: SubtaskIndex,
    },
    /// An upstream task went away without finishing: a consequence of another failure.
    #[error("an upstream task of '{uid}' subtask {subtask} went away before its end of input")]
    UpstreamLost {
        /// The receiving operator's uid.
        uid: String,
        /// Which subtask.
        subtask: SubtaskIndex,
    },
    /// A task's code panicked (a bug in an operator or in Weir).
    #[error("task '{task}' panicked: {detail}")]
    Panicked {
        /// The task's name (vertex and subtask).
        task: String,
        /// The panic message.
        detail: String,
    },
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A file of the checkpoint being restored is damaged or missing (bad CRC, wrong size,
    /// absent): recovery falls back to the previous completed checkpoint.
    #[error("operator '{uid}' subtask {subtask} cannot restore {checkpoint}: {detail}")]
    CheckpointDamaged {
        /// The restoring operator's uid.
        uid: String,
        /// Which subtask.
        subtask: SubtaskIndex,
        /// The checkpoint being restored.
        checkpoint: CheckpointId,
        /// Which file, and what is wrong with it.
        detail: String,
    },
    /// The job cannot run on the state it restores — a state declared with another kind, a
    /// native snapshot of another backend, an unknown snapshot format: no restart can help.
    #[error("operator '{uid}' subtask {subtask} cannot run on the restored state: {detail}")]
    IncompatibleState {
        /// The restoring operator's uid.
        uid: String,
        /// Which subtask.
        subtask: SubtaskIndex,
        /// What differs.
        detail: String,
    },
    /// A message arrived that the protocol forbids at this point (a bug, reported loudly).
    #[error("invariant broken in '{uid}' subtask {subtask}: {detail}")]
    Invariant {
        /// The operator's uid.
        uid: String,
        /// Which subtask.
        subtask: SubtaskIndex,
        /// What was seen.
        detail: String,
    },
}

impl TaskError {
    /// Whether this error is only a consequence of another task's failure.
    pub fn is_secondary(&self) -> bool {
        matches!(
            self,
            TaskError::DownstreamLost { .. }
                | TaskError::UpstreamLost { .. }
                | TaskError::Cancelled
        )
    }
}

/// Formats an error with its whole `source()` chain, `: `-separated.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}
