//! Weir's wire protocol: the tonic/prost code generated from `proto/weir.proto`, and the
//! conversions between its messages and `weir-types`.
//!
//! Must not depend on any other Weir crate than `weir-types`: the JobManager and the
//! TaskManager talk only through this crate, so neither needs the other.
//!
//! Key types: [`v1::job_manager_service_client`] / `_server` (the TaskManager's control
//! stream), [`v1::dispatcher_service_client`] (clients), [`v1::data_exchange_service_client`]
//! (records between TaskManagers).

#![allow(missing_docs)] // generated code

/// Generated messages and services of package `weir.v1`.
#[allow(clippy::all, clippy::doc_lazy_continuation)]
pub mod v1 {
    tonic::include_proto!("weir.v1");
}

pub mod identity;

pub use identity::{build_identity, build_identity_of, plan_fingerprint};

use weir_types::{AttemptId, Barrier, CheckpointId, SavepointBarrier, SubtaskIndex, VertexId};

impl From<Barrier> for v1::BarrierFrame {
    fn from(b: Barrier) -> Self {
        Self {
            checkpoint_id: b.checkpoint.0,
            base: b.base.map(|c| c.0),
            savepoint: b.savepoint.is_some(),
            canonical: b.savepoint.is_some_and(|s| s.canonical),
            stop: b.stops(),
        }
    }
}

impl From<v1::BarrierFrame> for Barrier {
    fn from(b: v1::BarrierFrame) -> Self {
        Barrier {
            checkpoint: CheckpointId(b.checkpoint_id),
            base: b.base.map(CheckpointId),
            savepoint: b.savepoint.then_some(SavepointBarrier {
                canonical: b.canonical,
                stop: b.stop,
            }),
        }
    }
}

impl v1::TaskKey {
    /// The task key of `vertex`/`subtask` in attempt `attempt` of `job_id`.
    pub fn new(job_id: &str, attempt: AttemptId, vertex: VertexId, subtask: SubtaskIndex) -> Self {
        Self {
            job_id: job_id.to_string(),
            attempt: attempt.get(),
            vertex: vertex.0,
            subtask: subtask.0,
        }
    }

    /// The attempt.
    pub fn attempt_id(&self) -> AttemptId {
        AttemptId(self.attempt)
    }

    /// The vertex.
    pub fn vertex_id(&self) -> VertexId {
        VertexId(self.vertex)
    }

    /// The subtask index.
    pub fn subtask_index(&self) -> SubtaskIndex {
        SubtaskIndex(self.subtask)
    }
}

impl v1::ExecutionState {
    /// Whether a task in this state will never change state again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            v1::ExecutionState::Finished
                | v1::ExecutionState::Canceled
                | v1::ExecutionState::Failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_barrier_survives_the_wire_unchanged() {
        let b = Barrier {
            checkpoint: CheckpointId(7),
            base: Some(CheckpointId(5)),
            savepoint: Some(SavepointBarrier {
                canonical: true,
                stop: true,
            }),
        };
        let frame: v1::BarrierFrame = b.into();
        assert_eq!(Barrier::from(frame), b);
    }
}
