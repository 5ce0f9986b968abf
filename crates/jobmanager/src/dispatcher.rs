//! The Dispatcher: accepts jobs (gRPC `DispatcherService`), starts one JobMaster thread per
//! job, and answers `ListJobs`/`GetJob`/`CancelJob` with the same JSON as the REST API.
//!
//! Submitting, step by step (every refusal is a [`DispatchError`] naming what is wrong):
//!
//! 1. decode `plan_json` into a [`Plan`] and check it is consistent (`INVALID_ARGUMENT`);
//! 2. take the job id from `spec.job_id` (32 hex digits) or make a new one;
//! 3. resolve the job's settings with the [`JobSettingsResolver`](crate::JobSettingsResolver)
//!    (`INVALID_ARGUMENT` with its message);
//! 4. with checkpointing, build the coordinator; with `resume`, load the job's intact
//!    completed checkpoints from storage and check the latest fits the plan
//!    (`FAILED_PRECONDITION` when there is none or it does not fit);
//! 5. refuse an id whose job is not finished yet (`ALREADY_EXISTS`), then start the JobMaster.

use crate::cluster::{lock, JobEntry, Shared};
use crate::error::DispatchError;
use crate::job_master::{initial_status, Checkpointing, JobMaster, JobMasterSetup};
use std::future::Future;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};
use weir_checkpoint::{Coordinator, TaskId};
use weir_coordination::resume::{check_compatible, load_completed};
use weir_graph::Plan;
use weir_proto::v1::dispatcher_service_server::DispatcherService;
use weir_proto::v1::{
    CancelJobRequest, CancelJobResponse, GetJobRequest, GetJobResponse, ListJobsRequest,
    ListJobsResponse, SubmitJobRequest, SubmitJobResponse,
};
use weir_storage::CheckpointPaths;
use weir_types::JobId;

/// The gRPC face of the Dispatcher.
pub(crate) struct DispatcherRpc {
    pub shared: Arc<Shared>,
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(value).map_err(|e| Status::internal(format!("cannot encode JSON: {e}")))
}

#[tonic::async_trait]
impl DispatcherService for DispatcherRpc {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobResponse>, Status> {
        let shared = self.shared.clone();
        let request = request.into_inner();
        let job = tokio::task::spawn_blocking(move || submit(&shared, request))
            .await
            .map_err(|e| Status::internal(format!("the submission failed: {e}")))??;
        Ok(Response::new(SubmitJobResponse {
            job_id: job.to_string(),
        }))
    }

    async fn list_jobs(
        &self,
        _request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        Ok(Response::new(ListJobsResponse {
            jobs_json: json(&self.shared.jobs_view())?,
        }))
    }

    async fn get_job(
        &self,
        request: Request<GetJobRequest>,
    ) -> Result<Response<GetJobResponse>, Status> {
        let status = self.shared.job_status(&request.get_ref().job_id)?;
        let now = weir_coordination::driver::now_ms();
        Ok(Response::new(GetJobResponse {
            job_json: json(&status.details(now))?,
            checkpoints_json: json(&status.checkpoints())?,
            recoveries_json: json(&status.recoveries())?,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        self.shared.cancel(&request.get_ref().job_id)?;
        Ok(Response::new(CancelJobResponse {}))
    }
}

/// Runs `future` on the JobManager's runtime and waits for it from this (non-async) thread.
fn run_on<F>(runtime: &tokio::runtime::Handle, future: F) -> Result<F::Output, DispatchError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv()
        .map_err(|_| DispatchError::Internal("the JobManager runtime stopped".into()))
}

/// Checks that a decoded plan is consistent enough to schedule (indexes in range).
fn validate_plan(plan: &Plan) -> Result<(), String> {
    let nodes = plan.stream.nodes.len();
    if plan.execution.subtasks.is_empty() {
        return Err("the plan has no subtasks".into());
    }
    if plan.uids.len() != nodes {
        return Err(format!(
            "the plan has {} uids for {nodes} operators",
            plan.uids.len()
        ));
    }
    for (i, v) in plan.job.vertices.iter().enumerate() {
        if v.id.0 as usize != i {
            return Err(format!("vertex {} is at position {i}", v.id));
        }
        if v.parallelism == 0 {
            return Err(format!("vertex {} has parallelism 0", v.id));
        }
        if let Some(n) = std::iter::once(&v.head)
            .chain(&v.nodes)
            .find(|n| n.0 as usize >= nodes)
        {
            return Err(format!(
                "vertex {} names operator {n}, which the plan lacks",
                v.id
            ));
        }
    }
    let needed = plan.slots_needed();
    for ev in &plan.execution.subtasks {
        let Some(v) = plan.job.vertices.get(ev.vertex.0 as usize) else {
            return Err(format!(
                "subtask {} of {} has no vertex",
                ev.subtask, ev.vertex
            ));
        };
        if ev.subtask.0 >= v.parallelism || ev.slot >= needed {
            return Err(format!(
                "subtask {} of {} is out of range (parallelism {}, slots {needed})",
                ev.subtask, ev.vertex, v.parallelism
            ));
        }
    }
    Ok(())
}

/// Submits a job (see the module doc). Blocks while storage is read for `resume`: call it
/// from a blocking thread.
pub(crate) fn submit(
    shared: &Arc<Shared>,
    request: SubmitJobRequest,
) -> Result<JobId, DispatchError> {
    if shared.is_shutting_down() {
        return Err(DispatchError::ShuttingDown);
    }
    let mut spec = request
        .job
        .ok_or_else(|| DispatchError::InvalidArgument("SubmitJobRequest.job is missing".into()))?;
    let plan: Plan = serde_json::from_slice(&request.plan_json).map_err(|e| {
        DispatchError::InvalidArgument(format!("plan_json is not a valid plan: {e}"))
    })?;
    validate_plan(&plan).map_err(|e| {
        DispatchError::InvalidArgument(format!("plan_json is not a valid plan: {e}"))
    })?;
    let job = if spec.job_id.is_empty() {
        JobId::generate()
    } else {
        JobId::parse(&spec.job_id).map_err(DispatchError::InvalidArgument)?
    };
    spec.job_id = job.to_string();
    ensure_not_running(shared, job)?;
    let settings = shared
        .resolver
        .resolve(&spec)
        .map_err(|e| DispatchError::InvalidArgument(format!("job {job}: {e}")))?;
    settings
        .restart
        .validate()
        .map_err(|e| DispatchError::InvalidArgument(format!("job {job}: {e}")))?;
    let checkpointing = match (settings.checkpoint, settings.store) {
        (Some(config), Some(store)) => {
            let tasks = plan
                .execution
                .subtasks
                .iter()
                .map(|s| TaskId::new(s.vertex, s.subtask));
            let coordinator = Coordinator::new(job, plan.job.max_parallelism, config, tasks)
                .map_err(|e| DispatchError::InvalidArgument(format!("job {job}: {e}")))?;
            let mut cp = Checkpointing {
                coordinator,
                store,
                paths: CheckpointPaths::new(job),
                history: Vec::new(),
                deletions: Vec::new(),
            };
            if request.resume {
                resume(shared, job, &plan, &mut cp)?;
            }
            Some(cp)
        }
        (Some(_), None) => {
            return Err(DispatchError::InvalidArgument(format!(
                "job {job}: checkpointing is on but no checkpoint storage is configured \
                 (state.checkpoints.dir)"
            )))
        }
        (None, _) => {
            if request.resume {
                return Err(DispatchError::FailedPrecondition(format!(
                    "job {job}: resuming needs checkpointing (execution.checkpointing.interval) \
                     and state.checkpoints.dir"
                )));
            }
            None
        }
    };
    let status = Arc::new(Mutex::new(initial_status(
        job,
        &spec,
        &plan,
        checkpointing.as_ref(),
        &settings.restart,
    )));
    let (inbox_tx, inbox_rx) = crossbeam_channel::unbounded();
    let mut jobs = lock(&shared.jobs);
    if let Some(e) = jobs.get(&job) {
        if !lock(&e.status).details.state.is_terminal() {
            return Err(DispatchError::AlreadyRunning(job));
        }
    }
    let setup = JobMasterSetup {
        job,
        spec,
        plan,
        restart: settings.restart,
        checkpointing,
        status: status.clone(),
        inbox: inbox_rx,
        shared: shared.clone(),
    };
    let id = job.to_string();
    let (watched, owner) = (status.clone(), shared.clone());
    let thread = std::thread::Builder::new()
        .name(format!("jm-{}", &id[..12]))
        .spawn(move || {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                JobMaster::new(setup).run()
            }));
            if let Err(panic) = run {
                // A bug, not a job failure: still leave the job in a final state, its slots free.
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(%job, panic = %what, "the JobMaster panicked");
                owner.resources().release_job(job);
                let mut s = lock(&watched);
                s.details.state = crate::view::JobState::Failed;
                s.details.end_ms = Some(weir_coordination::driver::now_ms());
                s.details.failure_cause = Some(format!("the JobMaster panicked: {what}"));
            }
        })
        .map_err(|e| {
            DispatchError::Internal(format!("cannot start the JobMaster of {job}: {e}"))
        })?;
    let order = jobs.values().map(|e| e.order + 1).max().unwrap_or(0);
    jobs.insert(
        job,
        JobEntry {
            status,
            inbox: inbox_tx,
            thread: Some(thread),
            order,
        },
    );
    tracing::info!(%job, resume = request.resume, "job accepted");
    Ok(job)
}

fn ensure_not_running(shared: &Shared, job: JobId) -> Result<(), DispatchError> {
    let jobs = lock(&shared.jobs);
    match jobs.get(&job) {
        Some(e) if !lock(&e.status).details.state.is_terminal() => {
            Err(DispatchError::AlreadyRunning(job))
        }
        _ => Ok(()),
    }
}

/// Loads `job`'s intact completed checkpoints into the coordinator (DESIGN §6: a restarted
/// JobManager finds the latest completed checkpoint in the object store).
fn resume(
    shared: &Shared,
    job: JobId,
    plan: &Plan,
    cp: &mut Checkpointing,
) -> Result<(), DispatchError> {
    let (store, paths) = (cp.store.clone(), cp.paths.clone());
    let found = run_on(&shared.runtime, async move {
        load_completed(&store, &paths).await
    })?;
    let (completed, highest) = found.map_err(DispatchError::FailedPrecondition)?;
    if completed.is_empty() {
        return Err(DispatchError::FailedPrecondition(format!(
            "job {job} has no intact completed checkpoint in {} to resume from",
            cp.store
        )));
    }
    if let Some(latest) = completed.iter().max_by_key(|c| c.id()) {
        check_compatible(latest.metadata(), plan).map_err(DispatchError::FailedPrecondition)?;
    }
    let actions = cp
        .coordinator
        .restore(completed, highest)
        .map_err(|e| DispatchError::FailedPrecondition(format!("job {job}: {e}")))?;
    let deletions: Vec<String> = actions
        .into_iter()
        .flat_map(|a| match a {
            weir_checkpoint::Action::DeleteFiles { paths } => paths,
            _ => Vec::new(),
        })
        .collect();
    if !deletions.is_empty() {
        cp.deletions
            .push(weir_coordination::driver::spawn_deletions(
                &shared.runtime,
                &cp.store,
                &cp.paths,
                deletions,
            ));
    }
    let latest = cp.coordinator.store().latest().map(|c| c.id());
    tracing::info!(%job, checkpoint = ?latest, "resuming from storage");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_with_a_subtask_out_of_range_is_rejected() {
        let mut plan = crate::recovery::tests::two_vertex_plan(2);
        validate_plan(&plan).unwrap();
        plan.execution.subtasks[0].slot = 9;
        assert!(validate_plan(&plan).unwrap_err().contains("out of range"));
    }
}
