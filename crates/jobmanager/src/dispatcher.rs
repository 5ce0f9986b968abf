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
use weir_coordination::driver::now_ms;
use weir_coordination::lease::{JobLease, LeaseError};
use weir_coordination::resume::{check_compatible, load_completed};
use weir_graph::Plan;
use weir_proto::v1::dispatcher_service_server::DispatcherService;
use weir_proto::v1::{
    CancelJobRequest, CancelJobResponse, GetJobRequest, GetJobResponse, GetSavepointRequest,
    GetSavepointResponse, ListJobsRequest, ListJobsResponse, SubmitJobRequest, SubmitJobResponse,
    TriggerSavepointRequest, TriggerSavepointResponse,
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
        self.shared.may_act()?;
        Ok(Response::new(ListJobsResponse {
            jobs_json: json(&self.shared.jobs_view())?,
        }))
    }

    async fn get_job(
        &self,
        request: Request<GetJobRequest>,
    ) -> Result<Response<GetJobResponse>, Status> {
        self.shared.may_act()?;
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
        self.shared.may_act()?;
        self.shared.cancel(&request.get_ref().job_id)?;
        Ok(Response::new(CancelJobResponse {}))
    }

    async fn trigger_savepoint(
        &self,
        request: Request<TriggerSavepointRequest>,
    ) -> Result<Response<TriggerSavepointResponse>, Status> {
        self.shared.may_act()?;
        let r = request.into_inner();
        let parsed = savepoint_request(&r.target, &r.format, r.stop, r.drain)?;
        let shared = self.shared.clone();
        let request_id =
            tokio::task::spawn_blocking(move || shared.trigger_savepoint(&r.job_id, parsed))
                .await
                .map_err(|e| Status::internal(format!("the savepoint request failed: {e}")))??;
        Ok(Response::new(TriggerSavepointResponse { request_id }))
    }

    async fn get_savepoint(
        &self,
        request: Request<GetSavepointRequest>,
    ) -> Result<Response<GetSavepointResponse>, Status> {
        self.shared.may_act()?;
        let r = request.get_ref();
        let op = self.shared.savepoint_status(&r.job_id, r.request_id)?;
        Ok(Response::new(GetSavepointResponse {
            status_json: json(&op)?,
        }))
    }
}

/// A savepoint request from its wire fields: `format` is `canonical`, `native` or empty
/// (canonical); `drain` only with `stop`.
pub(crate) fn savepoint_request(
    target: &str,
    format: &str,
    stop: bool,
    drain: bool,
) -> Result<crate::job_master::SavepointRequest, DispatchError> {
    let format = match format {
        "" | "canonical" => weir_checkpoint::SavepointFormat::Canonical,
        "native" => weir_checkpoint::SavepointFormat::Native,
        other => {
            return Err(DispatchError::InvalidArgument(format!(
                "savepoint format '{other}': expected canonical or native"
            )))
        }
    };
    if drain && !stop {
        return Err(DispatchError::InvalidArgument(
            "drain applies to stopping a job (weir stop --drain)".into(),
        ));
    }
    let target = target.trim();
    if !target.is_empty() {
        weir_storage::StorageUrl::parse(target).map_err(|e| {
            DispatchError::InvalidArgument(format!("savepoint target '{target}': {e}"))
        })?;
    }
    Ok(crate::job_master::SavepointRequest {
        target: (!target.is_empty()).then(|| target.to_string()),
        format,
        stop,
        drain,
    })
}

/// Runs `future` on the JobManager's runtime and waits for it from this (non-async) thread.
pub(crate) fn run_on<F>(
    runtime: &tokio::runtime::Handle,
    future: F,
) -> Result<F::Output, DispatchError>
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

/// How long a job's checkpoint-folder lease lives without renewal (renewed every third of it);
/// a JobManager on another host that dies leaves the folder blocked this long at most (on the
/// same host its death is seen at once).
pub const LEASE_DURATION: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest `plan_json` accepted, in bytes (a plan of thousands of operators fits).
pub const MAX_PLAN_BYTES: usize = 4 << 20;

/// Most subtasks one job may have, over all its vertices: every count a plan carries is
/// bounded before anything is sized by it.
pub const MAX_SUBTASKS: usize = 100_000;

/// Checks that a decoded plan is consistent enough to schedule (indexes in range) and that
/// every count in it is bounded: parallelism at most the max parallelism, which is at most
/// 32768; each subtask listed exactly once; at most [`MAX_SUBTASKS`] subtasks.
fn validate_plan(plan: &Plan) -> Result<(), String> {
    let nodes = plan.stream.nodes.len();
    if plan.execution.subtasks.is_empty() {
        return Err("the plan has no subtasks".into());
    }
    let max_p = plan.job.max_parallelism;
    if max_p == 0 || max_p > weir_types::MAX_MAX_PARALLELISM {
        return Err(format!(
            "the plan's max parallelism {max_p} is out of range (1..={})",
            weir_types::MAX_MAX_PARALLELISM
        ));
    }
    let mut total: usize = 0;
    for v in &plan.job.vertices {
        if v.parallelism > max_p {
            return Err(format!(
                "vertex {} ({}) has parallelism {}, above the max parallelism {max_p}",
                v.id, v.name, v.parallelism
            ));
        }
        total = total.saturating_add(v.parallelism as usize);
    }
    if total > MAX_SUBTASKS {
        return Err(format!(
            "the plan has {total} subtasks; at most {MAX_SUBTASKS} per job"
        ));
    }
    if plan.execution.subtasks.len() != total {
        return Err(format!(
            "the plan lists {} subtasks but its vertices have {total}",
            plan.execution.subtasks.len()
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for ev in &plan.execution.subtasks {
        if !seen.insert((ev.vertex, ev.subtask)) {
            return Err(format!(
                "subtask {} of {} is listed twice",
                ev.subtask, ev.vertex
            ));
        }
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
    shared.may_act()?;
    let mut spec = request
        .job
        .clone()
        .ok_or_else(|| DispatchError::InvalidArgument("SubmitJobRequest.job is missing".into()))?;
    if request.plan_json.len() > MAX_PLAN_BYTES {
        return Err(DispatchError::InvalidArgument(format!(
            "plan_json has {} bytes; at most {MAX_PLAN_BYTES}",
            request.plan_json.len()
        )));
    }
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
    let mut external = None;
    let mut checkpointing = match (settings.checkpoint, settings.store) {
        (Some(config), Some(store)) => {
            let tasks = plan
                .execution
                .subtasks
                .iter()
                .map(|s| TaskId::new(s.vertex, s.subtask));
            let mut coordinator = Coordinator::new(job, plan.job.max_parallelism, config, tasks)
                .map_err(|e| DispatchError::InvalidArgument(format!("job {job}: {e}")))?;
            if !spec.job_name.is_empty() {
                coordinator.set_job_name(spec.job_name.clone());
            }
            if let Some(epoch) = shared.ha.as_ref().and_then(|ha| ha.epoch()) {
                coordinator.set_leader_epoch(epoch);
            }
            let paths = CheckpointPaths::new(job);
            // A previous run of this id here may still be cleaning up after its end.
            await_previous_master(shared, job);
            // The folder is this JobMaster's before anything in it is read or written. With high
            // availability its lease lives as long as the leader's: a new leader takes the job
            // over once the old one's leadership has run out, not later.
            let lease_duration = shared
                .ha
                .as_ref()
                .map_or(LEASE_DURATION, |ha| ha.options.lease_duration);
            let lease = {
                let (store, paths) = (store.clone(), paths.clone());
                let owner = format!("the JobManager listening on {}", shared.options.rpc_bind);
                run_on(&shared.runtime, async move {
                    JobLease::acquire(&store, &paths, &owner, now_ms(), lease_duration).await
                })?
                .map_err(|e| match e {
                    e @ LeaseError::Held { .. } => DispatchError::FolderInUse(e.to_string()),
                    e => DispatchError::Internal(e.to_string()),
                })?
            };
            let mut cp = Checkpointing {
                coordinator,
                store,
                paths,
                history: Vec::new(),
                deletions: Vec::new(),
                lease: Some(lease),
                lease_keeper: None,
                metadata_sink: Checkpointing::no_sink(),
                fence: shared.fence(),
                lease_duration,
                writing: Default::default(),
                savepoints: Default::default(),
                stop: None,
                final_kind: weir_checkpoint::CheckpointKind::Checkpoint,
                savepoint_dir: settings.savepoint_dir.clone(),
                s3: settings.s3.clone(),
                pointer: crate::ha::pointer_sink(shared, job),
                pointer_sent: None,
            };
            let checked = probe_storage(shared, &spec, &cp.store, &cp.paths)
                .and_then(|()| {
                    if request.resume {
                        resume(shared, job, &plan, &mut cp)
                    } else {
                        Ok(())
                    }
                })
                .and_then(|()| {
                    let point = load_external(shared, &request, &plan, job, &cp.store, &cp.s3)?;
                    if let Some(p) = &point {
                        cp.coordinator.continue_after(p.metadata.checkpoint_id);
                    }
                    external = point;
                    Ok(())
                });
            if let Err(e) = checked {
                release_lease(shared, &mut cp);
                return Err(e);
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
            if !request.restore_path.is_empty() {
                return Err(DispatchError::FailedPrecondition(format!(
                    "job {job}: starting from a savepoint (-s) needs checkpointing \
                     (execution.checkpointing.interval) and state.checkpoints.dir"
                )));
            }
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
    // The next leader resumes the job from this record: no record, no job.
    let recorded = SubmitJobRequest {
        job: Some(spec.clone()),
        ..request.clone()
    };
    if let Err(e) = crate::ha::record_job(shared, job, &recorded) {
        if let Some(cp) = checkpointing.as_mut() {
            release_lease(shared, cp);
        }
        return Err(e);
    }
    let (inbox_tx, inbox_rx) = crossbeam_channel::unbounded();
    let mut jobs = lock(&shared.jobs);
    if let Some(e) = jobs.get(&job) {
        if !lock(&e.status).details.state.is_terminal() {
            drop(jobs);
            if let Some(cp) = checkpointing.as_mut() {
                release_lease(shared, cp);
            }
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
        to_self: inbox_tx.clone(),
        cluster: shared.clone(),
        runtime: shared.runtime.clone(),
        slot_request_timeout: shared.options.slot_request_timeout,
        cancel_timeout: shared.options.cancel_timeout,
        external,
        adaptive: shared.options.adaptive,
    };
    let id = job.to_string();
    let (watched, owner) = (status.clone(), shared.clone());
    let thread = std::thread::Builder::new()
        .name(format!("jm-{}", &id[..12]))
        .spawn(move || {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                JobMaster::new(setup).run()
            }));
            if run.is_ok() && lock(&watched).details.state.is_terminal() {
                crate::ha::record_ended(&owner, job);
            }
            if let Err(panic) = run {
                // A bug, not a job failure: still leave the job in a final state, its slots free.
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(%job, panic = %what, "the JobMaster panicked; cancelling its tasks everywhere");
                {
                    let rm = owner.resources();
                    rm.broadcast(weir_proto::v1::job_manager_message::Kind::Cancel(
                        weir_proto::v1::CancelAttempt {
                            job_id: job.to_string(),
                            // Every attempt up to this one: all of them.
                            attempt: u32::MAX,
                            reason: format!("the JobMaster of job {job} panicked: {what}"),
                        },
                    ));
                }
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

/// How long reading a restore path's `_metadata` may take.
const RESTORE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The savepoint or retained checkpoint `request.restore_path` names (its folder, or its
/// `_metadata`), read, verified and checked against `plan`; `None` without a restore path.
///
/// Refused, naming the path and what differs: a folder without an intact `_metadata`; another
/// max parallelism or key-group hash; state of an operator uid the job lacks (unless
/// `allow_non_restored_state`); a claim mode other than `no-claim` or `claim`.
fn load_external(
    shared: &Arc<Shared>,
    request: &SubmitJobRequest,
    plan: &Plan,
    job: JobId,
    checkpoints: &weir_storage::Store,
    s3: &weir_storage::S3Options,
) -> Result<Option<crate::job_master::RestorePoint>, DispatchError> {
    let path = request.restore_path.trim();
    if path.is_empty() {
        return Ok(None);
    }
    let claim = match request.claim_mode.as_str() {
        "" | "no-claim" => false,
        "claim" => true,
        other => {
            return Err(DispatchError::InvalidArgument(format!(
                "--claim-mode '{other}': expected no-claim or claim"
            )))
        }
    };
    let folder = path
        .trim_end_matches('/')
        .strip_suffix("/_metadata")
        .unwrap_or(path.trim_end_matches('/'))
        .to_string();
    let bad = |detail: String| {
        DispatchError::FailedPrecondition(format!("restore path '{path}': {detail}"))
    };
    let url = weir_storage::StorageUrl::parse(&folder)
        .map_err(|e| DispatchError::InvalidArgument(format!("restore path '{path}': {e}")))?;
    let store = weir_storage::open_store(&url, s3).map_err(|e| bad(e.to_string()))?;
    let read = {
        let store = store.clone();
        run_on(&shared.runtime, async move {
            tokio::time::timeout(
                RESTORE_READ_TIMEOUT,
                store.get(&weir_storage::ObjectPath::from("_metadata")),
            )
            .await
        })?
    };
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if e.is_not_found() => {
            return Err(bad(format!(
                "{folder}/_metadata does not exist: not a savepoint or a retained checkpoint"
            )))
        }
        Ok(Err(e)) => return Err(bad(format!("cannot read {folder}/_metadata: {e}"))),
        Err(_) => {
            return Err(bad(format!(
                "reading {folder}/_metadata took over {RESTORE_READ_TIMEOUT:?}"
            )))
        }
    };
    let metadata = weir_checkpoint::CheckpointMetadata::decode(&bytes)
        .map_err(|e| bad(format!("{folder}/_metadata: {e}")))?;
    let backend = request
        .job
        .as_ref()
        .and_then(|j| j.config.get("state.backend"))
        .map(String::as_str);
    check_restorable(&metadata, plan, request.allow_non_restored_state, backend).map_err(bad)?;
    // A retained checkpoint's handles are relative to its job's folder, a savepoint's to its
    // own.
    let last = folder.rsplit('/').next().unwrap_or_default();
    let location = match weir_storage::parse_checkpoint_dir_name(last) {
        Some(_) => folder[..folder.len() - last.len()]
            .trim_end_matches('/')
            .to_string(),
        None => folder.clone(),
    };
    if claim {
        if !metadata.kind.is_savepoint() {
            return Err(bad(
                "it is a retained checkpoint: only a savepoint can be claimed (restore it with \
                 --claim-mode no-claim)"
                    .into(),
            ));
        }
        let marker = weir_coordination::claim::ClaimMarker {
            version: weir_coordination::claim::CLAIM_VERSION,
            job,
            checkpoints: checkpoints.to_string(),
        };
        let s3 = s3.clone();
        run_on(&shared.runtime, async move {
            weir_coordination::claim::claim(&store, &marker, &s3, LEASE_DURATION, now_ms()).await
        })?
        .map_err(|e| bad(e.to_string()))?;
    }
    tracing::info!(path = %folder, checkpoint = %metadata.checkpoint_id, kind = %metadata.kind, claim, "the job starts from a snapshot outside its folder");
    Ok(Some(crate::job_master::RestorePoint {
        metadata,
        location: Some(location),
        claimed: claim,
    }))
}

/// Whether `plan` can start from `metadata`: the same max parallelism and key-group hash, and
/// (unless `allow_non_restored`) an operator for every uid with state. The error names the
/// first difference.
pub(crate) fn check_restorable(
    metadata: &weir_checkpoint::CheckpointMetadata,
    plan: &Plan,
    allow_non_restored: bool,
    backend: Option<&str>,
) -> Result<(), String> {
    if metadata.max_parallelism != plan.job.max_parallelism {
        return Err(format!(
            "its max parallelism is {}, the job's is {}: key groups cannot be remapped \
             (set the job's max parallelism to {})",
            metadata.max_parallelism, plan.job.max_parallelism, metadata.max_parallelism
        ));
    }
    if metadata.key_group_hash_version != weir_types::KEY_GROUP_HASH_VERSION {
        return Err(format!(
            "its key-group hash is version {}, this build's is {}",
            metadata.key_group_hash_version,
            weir_types::KEY_GROUP_HASH_VERSION
        ));
    }
    for (uid, op) in &metadata.operators {
        let has_state = op
            .subtasks
            .values()
            .any(|s| !s.files.is_empty() || s.inline.is_some());
        // Native keyed state restores only on the backend that wrote it (canonical on any).
        let native = op.subtasks.values().find_map(|s| {
            let meta: serde_json::Value = serde_json::from_slice(s.inline.as_deref()?).ok()?;
            let written_by = meta.get("backend")?.as_str()?.to_string();
            (written_by != "canonical").then_some(written_by)
        });
        if let (Some(written_by), Some(backend)) = (native, backend) {
            if written_by != backend && plan.uids.iter().any(|u| u == uid) {
                return Err(format!(
                    "operator '{uid}' has native {written_by} state but the job runs the \
                     {backend} backend: take a canonical savepoint, or run with \
                     state.backend={written_by}"
                ));
            }
        }
        if !plan.uids.iter().any(|u| u == uid) && has_state && !allow_non_restored {
            return Err(format!(
                "it holds state of operator '{uid}', which the job does not have \
                 (pass --allow-non-restored-state to drop it)"
            ));
        }
    }
    Ok(())
}

/// Waits (bounded) for the JobMaster thread of an ended earlier run of `job` in this
/// JobManager: it releases the job's checkpoint folder only after its last deletions.
fn await_previous_master(shared: &Shared, job: JobId) {
    let thread = lock(&shared.jobs)
        .get_mut(&job)
        .and_then(|e| e.thread.take());
    let Some(thread) = thread else {
        return;
    };
    let deadline = std::time::Instant::now()
        + shared.options.cancel_timeout
        + crate::job_master::LATE_ACK_GRACE
        + std::time::Duration::from_secs(30);
    while !thread.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    if thread.is_finished() {
        let _ = thread.join();
    } else {
        tracing::warn!(%job, "the previous JobMaster of this job is still finishing");
    }
}

/// How long a submission waits for every TaskManager's answer to its storage probe.
pub const PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Checks that every registered TaskManager can read the job's checkpoint storage: writes a
/// probe object into the job's folder, asks each to read it back (`ProbeStorage`), waits for
/// every answer (bounded by [`PROBE_WAIT`]) and deletes it. A TaskManager that cannot read it,
/// reads other bytes, or does not answer fails the submission, named with its reason.
fn probe_storage(
    shared: &Arc<Shared>,
    spec: &weir_proto::v1::JobSpec,
    store: &weir_storage::Store,
    paths: &CheckpointPaths,
) -> Result<(), DispatchError> {
    let expected: std::collections::BTreeSet<_> = shared.resources().ids().into_iter().collect();
    if expected.is_empty() {
        return Ok(());
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let nonce = now_ms()
        ^ (u64::from(std::process::id()) << 40)
        ^ NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let relative = CheckpointPaths::probe_relative(nonce);
    let object = paths
        .handle_path(&relative)
        .map_err(|e| DispatchError::Internal(e.to_string()))?;
    let bytes = format!("weir storage probe {nonce} of job {}", paths.job()).into_bytes();
    {
        let (put_store, object, bytes) = (store.clone(), object.clone(), bytes.clone());
        run_on(&shared.runtime, async move {
            put_store.put(&object, bytes.into()).await
        })?
        .map_err(|e| {
            DispatchError::FailedPrecondition(format!(
                "job {}: the JobManager cannot write to the checkpoint storage {store}: {e}",
                paths.job()
            ))
        })?;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    lock(&shared.probes).insert(
        nonce,
        crate::cluster::ProbeWait {
            expected: expected.clone(),
            answers: tx,
        },
    );
    {
        let rm = shared.resources();
        for tm in &expected {
            rm.send(
                tm,
                weir_proto::v1::job_manager_message::Kind::Probe(weir_proto::v1::ProbeStorage {
                    probe_id: nonce,
                    job: Some(spec.clone()),
                    path: relative.clone(),
                    expected: bytes.clone(),
                }),
            );
        }
    }
    let deadline = std::time::Instant::now() + PROBE_WAIT;
    let mut waiting = expected;
    let mut failures = Vec::new();
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((tm, error)) => {
                if waiting.remove(&tm) && !error.is_empty() {
                    failures.push(format!("TaskManager {tm} cannot read it: {error}"));
                }
            }
            Err(_) => break,
        }
    }
    lock(&shared.probes).remove(&nonce);
    for tm in &waiting {
        failures.push(format!(
            "TaskManager {tm} did not answer within {PROBE_WAIT:?}"
        ));
    }
    {
        let (store, object) = (store.clone(), object.clone());
        if let Ok(Err(e)) = run_on(&shared.runtime, async move { store.delete(&object).await }) {
            tracing::warn!(error = %e, "the storage probe object was not deleted");
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    Err(DispatchError::FailedPrecondition(format!(
        "job {}: the checkpoint storage {store} is not readable by every TaskManager \
         (probe {relative}): {}",
        paths.job(),
        failures.join("; ")
    )))
}

/// Gives a refused submission's lease back at once, so the next try need not wait for it to
/// expire.
fn release_lease(shared: &Shared, cp: &mut Checkpointing) {
    if let Some(lease) = cp.lease.take() {
        let released = run_on(&shared.runtime, async move { lease.release().await });
        if let Ok(Err(e)) = released {
            tracing::warn!(error = %e, "the lease of a refused submission was not released");
        }
    }
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
        // The folder is ours (leased): what checkpoints that never completed left behind —
        // e.g. the one in flight when a JobManager died — can go before anything is read.
        let swept = match weir_coordination::resume::sweep_unreferenced(&store, &paths).await {
            Ok(s) => s.highest_id_seen,
            Err(e) => {
                tracing::warn!(error = %e, "leftovers of incomplete checkpoints were not swept");
                None
            }
        };
        load_completed(&store, &paths)
            .await
            .map(|(completed, highest)| (completed, highest.max(swept)))
    })?;
    let (completed, highest) = found.map_err(DispatchError::FailedPrecondition)?;
    let recorded = crate::ha::recorded_checkpoints(shared, job);
    let highest = match recorded {
        Some(p) => highest.max(p.next_id.checked_sub(1).map(weir_types::CheckpointId)),
        None => highest,
    };
    if let Some(latest) = recorded.and_then(|p| p.latest_completed) {
        let newest = completed.iter().map(|c| c.id().0).max();
        if newest.is_none_or(|n| n < latest) {
            tracing::error!(
                %job,
                recorded = latest,
                newest_intact = ?newest,
                "the high-availability record says a newer checkpoint completed than the newest \
                 intact one in storage: its _metadata is gone or damaged; resuming from an older \
                 one replays records its committed output already holds"
            );
        }
    }
    if completed.is_empty() {
        return Err(DispatchError::NothingToResume(format!(
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
    fn fuzzed_plan_json_is_refused_or_validated_never_a_panic_a_hang_or_a_huge_allocation() {
        let seeds: Vec<Vec<u8>> = [1, 2, 4]
            .into_iter()
            .map(|p| serde_json::to_vec(&crate::recovery::tests::two_vertex_plan(p)).unwrap())
            .collect();
        weir_fuzz::run("plan_json", &seeds, |bytes| {
            if let Ok(plan) = serde_json::from_slice::<Plan>(bytes) {
                let _ = validate_plan(&plan);
            }
        });
    }

    #[test]
    fn a_plan_with_a_subtask_out_of_range_is_rejected() {
        let mut plan = crate::recovery::tests::two_vertex_plan(2);
        validate_plan(&plan).unwrap();
        plan.execution.subtasks[0].slot = 9;
        assert!(validate_plan(&plan).unwrap_err().contains("out of range"));
    }
}
