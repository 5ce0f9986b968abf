//! The adaptive scheduler (`jobmanager.scheduler: adaptive`): a job runs at the parallelism
//! the cluster's slots allow, never above the one it was submitted with.
//!
//! 1. **Scale down** — a redeployment (after a failure) that still lacks slots when
//!    `slot.request.timeout` ends restarts at the largest parallelism whose plan fits the free
//!    slots, from the latest checkpoint (state moves by key group, sources and sinks re-split),
//!    instead of failing the attempt. The recovery record says from which parallelism to which,
//!    and why.
//! 2. **Scale up** — while the job runs below its parallelism, every tick counts the slots it
//!    could hold (free ones and its own). Once a larger parallelism fits and that count has not
//!    changed for `resource-stabilization-timeout`, a checkpoint is triggered; when it
//!    completes, the attempt ends (a recovery record with the rescale, not counted as a
//!    restart) and the job restarts from it at the larger parallelism.
//!
//! A new parallelism is a new plan: the submitted plan's unresolved StreamGraph resolved as
//! `-p N` with the same max parallelism ([`Plan::at_parallelism`]); the TaskManagers rebuild
//! the same plan from the job's spec, whose `parallelism` and `pipeline.max-parallelism` are
//! set accordingly.

use super::*;
use crate::recovery::Rescale;

/// What the adaptive scheduler keeps for one job.
pub(crate) struct Adaptive {
    /// `resource-stabilization-timeout`.
    pub stabilization: Duration,
    /// The plan as submitted (its unresolved graph is re-resolved).
    pub submitted: Plan,
    /// The parallelism asked for: never exceeded.
    pub asked: u32,
    /// The parallelism the job runs at.
    pub current: u32,
    /// Since when, and with how many available slots, a larger parallelism fits.
    pub stable: Option<(Instant, u32)>,
    /// The checkpoint a scale-up waits for, and the parallelism it scales to.
    pub checkpoint: Option<(CheckpointId, u32)>,
}

impl Adaptive {
    /// The scheduler for a job submitted with `plan`; `None` when the plan cannot be
    /// re-resolved (it carries no unresolved graph).
    pub(crate) fn new(stabilization: Duration, plan: &Plan) -> Option<Self> {
        plan.unresolved.as_ref()?;
        let asked = plan.slots_needed();
        Some(Self {
            stabilization,
            submitted: plan.clone(),
            asked,
            current: asked,
            stable: None,
            checkpoint: None,
        })
    }

    /// The largest parallelism up to the one asked for whose plan fits `slots`, with its plan.
    fn fitting(&self, slots: u32) -> Option<(u32, Plan)> {
        (1..=self.asked).rev().find_map(|p| {
            let plan = self.submitted.at_parallelism(p)?.ok()?;
            (plan.slots_needed() <= slots).then_some((p, plan))
        })
    }
}

impl JobMaster {
    /// Step 1: after a slot-request timeout with `free` slots, switches the job to a smaller
    /// parallelism that fits; false when none does (or the scheduler is not adaptive).
    pub(super) fn scale_down(&mut self, free: u32) -> bool {
        let Some(a) = self.adaptive.as_ref() else {
            return false;
        };
        let Some((p, plan)) = a.fitting(free) else {
            return false;
        };
        if p >= a.current {
            return false;
        }
        let reason = format!(
            "{free} free slot(s) after {} ({}): p={} does not fit",
            humantime_secs(self.slot_request_timeout),
            keys::SLOT_REQUEST_TIMEOUT,
            a.current
        );
        self.switch_plan(p, plan, reason)
    }

    /// Step 2, on every tick of a running attempt: the failure that ends it for a scale-up, once
    /// its checkpoint completed.
    pub(super) fn watch_for_scale_up(
        &mut self,
        drv: &mut Option<AttemptDriver>,
    ) -> Option<Failure> {
        let job = self.job;
        let available = self.cluster.available_slots(job);
        let (Some(a), Some(cp)) = (self.adaptive.as_mut(), self.cp.as_mut()) else {
            return None;
        };
        if !self.all_running || a.current >= a.asked || cp.stop.is_some() {
            a.stable = None;
            return None;
        }
        if let Some((id, to)) = a.checkpoint {
            let status = cp
                .history
                .iter()
                .rev()
                .find(|r| r.id == id)
                .map(|r| &r.status);
            return match status {
                Some(CheckpointStatus::Completed) => {
                    a.checkpoint = None;
                    a.stable = None;
                    Some(Failure {
                        cause: format!(
                            "rescaling from p={} to p={to}: {available} slots available for {}",
                            a.current,
                            humantime_secs(a.stabilization)
                        ),
                        kind: FailureKind::Rescale { to },
                        detected_ms: now_ms(),
                    })
                }
                Some(CheckpointStatus::Aborted(_)) | None => {
                    a.checkpoint = None;
                    None
                }
                Some(CheckpointStatus::InProgress) => None,
            };
        }
        let Some((to, _)) = a.fitting(available).filter(|(p, _)| *p > a.current) else {
            a.stable = None;
            return None;
        };
        match a.stable {
            Some((since, seen)) if seen == available => {
                if since.elapsed() < a.stabilization {
                    return None;
                }
            }
            _ => {
                a.stable = Some((Instant::now(), available));
                return None;
            }
        }
        // Stable: scale up from a fresh checkpoint.
        let (Some(d), Some(g)) = (drv.as_mut(), self.gateway.as_ref()) else {
            return None;
        };
        match cp
            .coordinator
            .trigger(now_ms(), weir_checkpoint::CheckpointKind::Checkpoint)
        {
            Ok(actions) => {
                let id = actions.iter().find_map(|a| match a {
                    Action::TriggerSources { id, .. } => Some(*id),
                    _ => None,
                });
                with_driver(cp, &self.runtime, g, d, |d| d.perform(actions));
                if let Some(id) = id {
                    tracing::info!(checkpoint = %id, from = a.current, to, available, "slots are back: scaling up after this checkpoint");
                    a.checkpoint = Some((id, to));
                }
            }
            Err(reason) => tracing::debug!(%reason, "scale-up checkpoint postponed"),
        }
        None
    }

    /// Runs the job at parallelism `p` with `plan` from the next attempt on; records the
    /// change in the open recovery.
    pub(super) fn switch_plan(&mut self, p: u32, plan: Plan, reason: String) -> bool {
        let from = self.adaptive.as_ref().map_or(0, |a| a.current);
        let tasks: Vec<TaskId> = plan
            .execution
            .subtasks
            .iter()
            .map(|s| TaskId::new(s.vertex, s.subtask))
            .collect();
        if let Some(cp) = self.cp.as_mut() {
            if let Err(e) = cp.coordinator.set_tasks(tasks.iter().copied()) {
                tracing::warn!(error = %e, "cannot rescale now");
                return false;
            }
        }
        tracing::warn!(from, to = p, %reason, "adaptive scheduler: rescaling the job");
        self.spec.parallelism = p;
        self.spec.config.insert(
            "pipeline.max-parallelism".into(),
            plan.job.max_parallelism.to_string(),
        );
        self.plan = plan;
        self.fingerprint = fingerprint_of(&self.plan);
        self.previous.clear();
        if let Some(a) = self.adaptive.as_mut() {
            a.current = p;
            a.stable = None;
            a.checkpoint = None;
        }
        lock(&self.status).tasks_total = tasks.len() as u32;
        if let Some(r) = self.open_recovery() {
            r.rescale = Some(Rescale {
                from,
                to: p,
                reason,
            });
        }
        self.dirty = true;
        true
    }
}

/// `d` in whole seconds, as people read it (`20s`).
fn humantime_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64().round() as u64)
}
