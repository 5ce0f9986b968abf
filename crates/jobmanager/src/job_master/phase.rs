//! A job's lifecycle as an explicit state machine: its phases ([`JobPhase`]) and every legal
//! transition, listed once in [`TRANSITIONS`] with the event that takes it. The JobMaster moves
//! only through [`JobPhase::can_go_to`]; an illegal move is a bug, logged as an error (and a
//! panic in debug builds, so tests catch it).
//!
//! ```text
//!  Created ─► WaitingForSlots ─► Deploying ─► Running ─► Finished
//!     │            │    ▲            │          │
//!     │            │    └─ Restarting ◄─────────┤ (failure)
//!     │            │          │    ▲            │
//!     ▼            ▼          ▼    └─ Deploying │ (TaskManager vanished)
//!  Canceled ◄── Cancelling ◄──────────────────────┘ (cancel, shutdown, lease lost)
//!  Failed   ◄── (restarts exhausted, unschedulable first attempt, lease lost)
//! ```

use crate::view::JobState;

/// Where a job is in its life.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum JobPhase {
    /// Submitted; nothing scheduled yet.
    Created,
    /// Asking the ResourceManager for slots (bounded by `slot.request.timeout`).
    WaitingForSlots,
    /// Sending the attempt's `DeployTask`s.
    Deploying,
    /// The attempt is deployed; tasks report, checkpoints run once every task runs.
    Running,
    /// A failure is being recovered: the old attempt cancelled, the restart strategy asked,
    /// its delay waited.
    Restarting,
    /// Stopping on request (client cancel, JobManager shutdown, lost folder lease): the
    /// attempt's tasks are being cancelled.
    Cancelling,
    /// Every task finished. Terminal.
    Finished,
    /// Gave up, with the cause kept. Terminal.
    Failed,
    /// Cancelled. Terminal.
    Canceled,
}

use JobPhase::*;

/// Every legal transition `(from, to, the event that takes it)`. Staying in a phase is always
/// allowed.
pub(crate) const TRANSITIONS: &[(JobPhase, JobPhase, &str)] = &[
    (Created, WaitingForSlots, "the first attempt asks for slots"),
    (
        Created,
        Failed,
        "the checkpoint to resume does not fit the job",
    ),
    (Created, Canceled, "cancelled before scheduling"),
    (WaitingForSlots, Deploying, "slots assigned"),
    (
        WaitingForSlots,
        Failed,
        "the first attempt found no slots within slot.request.timeout",
    ),
    (
        WaitingForSlots,
        Restarting,
        "a redeployment found no slots: one more failure",
    ),
    (
        WaitingForSlots,
        Canceled,
        "cancelled while waiting for slots",
    ),
    (Deploying, Running, "every DeployTask sent"),
    (
        Deploying,
        Restarting,
        "a TaskManager vanished during deployment",
    ),
    (Deploying, Cancelling, "cancelled during deployment"),
    (Running, Finished, "every task finished"),
    (
        Running,
        Restarting,
        "a task failed, a TaskManager was lost, or checkpoints failed too often",
    ),
    (
        Running,
        Cancelling,
        "cancelled, the JobManager shuts down, or the folder lease was lost",
    ),
    (
        Restarting,
        WaitingForSlots,
        "the restart strategy allows another attempt, or a damaged checkpoint is skipped",
    ),
    (
        Restarting,
        Failed,
        "the restart strategy gives up, or no checkpoint fits",
    ),
    (Restarting, Canceled, "cancelled during recovery"),
    (
        Cancelling,
        Canceled,
        "every task cancelled, or cancel_timeout passed",
    ),
    (
        Cancelling,
        Failed,
        "the folder lease was lost: the job cannot go on",
    ),
];

impl JobPhase {
    /// Whether the job may move from `self` to `to`.
    pub(crate) fn can_go_to(self, to: JobPhase) -> bool {
        self == to || TRANSITIONS.iter().any(|(f, t, _)| *f == self && *t == to)
    }

    /// Whether the job will never move again.
    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, Finished | Failed | Canceled)
    }

    /// The state the REST API shows: before the first deployment the job is CREATED, and
    /// between attempts RESTARTING, while it waits for slots or deploys.
    pub(crate) fn state(self, deployed_before: bool) -> JobState {
        match self {
            Created => JobState::Created,
            WaitingForSlots | Deploying if !deployed_before => JobState::Created,
            WaitingForSlots | Deploying | Restarting => JobState::Restarting,
            Running => JobState::Running,
            Cancelling => JobState::Canceling,
            Finished => JobState::Finished,
            Failed => JobState::Failed,
            Canceled => JobState::Canceled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [JobPhase; 9] = [
        Created,
        WaitingForSlots,
        Deploying,
        Running,
        Restarting,
        Cancelling,
        Finished,
        Failed,
        Canceled,
    ];

    #[test]
    fn terminal_phases_have_no_way_out() {
        for from in ALL.into_iter().filter(|p| p.is_terminal()) {
            for to in ALL.into_iter().filter(|t| *t != from) {
                assert!(!from.can_go_to(to), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn every_phase_is_reachable_from_created_and_every_live_phase_can_end() {
        let mut reached = vec![Created];
        let mut frontier = vec![Created];
        while let Some(p) = frontier.pop() {
            for (_, to, _) in TRANSITIONS.iter().filter(|(f, _, _)| *f == p) {
                if !reached.contains(to) {
                    reached.push(*to);
                    frontier.push(*to);
                }
            }
        }
        for p in ALL {
            assert!(reached.contains(&p), "{p:?} unreachable");
            if !p.is_terminal() {
                assert!(
                    p.can_go_to(Canceled) || p.can_go_to(Cancelling),
                    "{p:?} cannot be cancelled"
                );
            }
        }
    }

    #[test]
    fn a_running_job_cannot_skip_cancelling_or_go_back_to_created() {
        assert!(!Running.can_go_to(Canceled));
        assert!(!Running.can_go_to(Created));
        assert!(!Restarting.can_go_to(Running));
        assert!(Restarting.can_go_to(WaitingForSlots));
    }

    #[test]
    fn each_transition_is_listed_once_and_the_rest_api_state_follows_the_first_deployment() {
        for (i, (f, t, _)) in TRANSITIONS.iter().enumerate() {
            assert!(
                !TRANSITIONS[i + 1..]
                    .iter()
                    .any(|(f2, t2, _)| f2 == f && t2 == t),
                "{f:?} -> {t:?} twice"
            );
        }
        assert_eq!(WaitingForSlots.state(false), JobState::Created);
        assert_eq!(WaitingForSlots.state(true), JobState::Restarting);
        assert_eq!(Deploying.state(true), JobState::Restarting);
    }
}
