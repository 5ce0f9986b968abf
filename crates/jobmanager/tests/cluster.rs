//! The JobManager over real gRPC with fake TaskManagers: registration, detection of lost
//! TaskManagers, scheduling, failover with recovery records, checkpoints and restore, the
//! Dispatcher and the REST API.

mod common;

use common::*;
use std::time::{Duration, Instant};
use weir_checkpoint::CheckpointConfig;
use weir_coordination::restart::RestartStrategy;
use weir_jobmanager::view::JobState;
use weir_jobmanager::JobSettings;
use weir_proto::v1::job_manager_message::Kind as Down;
use weir_proto::v1::job_manager_service_client::JobManagerServiceClient;
use weir_proto::v1::task_manager_message::Kind as Up;
use weir_proto::v1::*;
use weir_storage::Store;

const RESTART_TWICE: RestartStrategy = RestartStrategy::FixedDelay {
    attempts: 2,
    delay_ms: 0,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_answered_with_heartbeat_settings_and_a_live_id_is_refused() {
    let jm = start(fast_options(), no_checkpoints(RestartStrategy::None));
    let addr = jm.rpc_addr();
    let (tm, registered) = match FakeTm::connect(addr, "tm-1", 2).await {
        Registration::Registered(tm, r) => (tm, r),
        Registration::Refused(r) => panic!("refused: {r}"),
    };
    assert_eq!(registered.heartbeat_interval_ms, 50);
    assert_eq!(registered.heartbeat_timeout_ms, 400);
    match FakeTm::connect(addr, "tm-1", 4).await {
        Registration::Refused(reason) => assert!(reason.contains("'tm-1'"), "{reason}"),
        Registration::Registered(..) => panic!("a live id was registered twice"),
    }
    // The refused one changed nothing: still one TaskManager, with its 2 slots.
    let o = jm.overview();
    assert_eq!((o.taskmanagers, o.slots_total, o.slots_free), (1, 2, 2));
    let (code, body) = http(jm.rest_addr(), "GET", "/taskmanagers").await;
    assert_eq!(code, 200);
    assert_eq!(body["taskmanagers"][0]["id"], "tm-1");
    assert_eq!(body["taskmanagers"][0]["slots_total"], 2);
    drop(tm);
    shutdown(jm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_message_that_is_not_register_is_rejected_and_the_server_keeps_serving() {
    let jm = start(fast_options(), no_checkpoints(RestartStrategy::None));
    let addr = jm.rpc_addr();
    let mut client = JobManagerServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let first = TaskManagerMessage {
        kind: Some(Up::Heartbeat(Heartbeat {
            sequence: 1,
            sent_ms: 0,
        })),
    };
    let status = client
        .session(tokio_stream::iter(vec![first]))
        .await
        .expect_err("a session must start with Register");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("Register"),
        "{}",
        status.message()
    );
    // Still serving.
    let tm = FakeTm::registered(addr, "tm-after", 1).await;
    assert_eq!(jm.overview().taskmanagers, 1);
    drop(tm);
    shutdown(jm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_needing_more_slots_than_registered_fails_after_the_slot_timeout() {
    let options = weir_jobmanager::JobManagerOptions {
        slot_request_timeout: Duration::from_millis(300),
        ..fast_options()
    };
    let jm = start(options, no_checkpoints(RESTART_TWICE));
    let addr = jm.rpc_addr();
    let _a = FakeTm::registered(addr, "tm-a", 1).await;
    let _b = FakeTm::registered(addr, "tm-b", 1).await;
    let mut d = dispatcher(addr).await;
    let job = d
        .submit_job(submit_request(&keyed_plan(4), ""))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let job = weir_types::JobId::parse(&job).unwrap();
    let details = eventually("the job fails", || {
        jm.job(job).filter(|j| j.state == JobState::Failed)
    })
    .await;
    let cause = details.failure_cause.unwrap();
    assert!(
        cause.contains(
            "job needs 4 slots but the cluster has 2 free (2 TaskManagers, 2 slots total)"
        ),
        "{cause}"
    );
    assert!(cause.contains("slot.request.timeout"), "{cause}");
    assert_eq!(jm.overview().jobs_failed, 1);
    shutdown(jm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_taskmanager_is_lost_after_the_heartbeat_timeout_and_its_tasks_move() {
    let jm = start(fast_options(), no_checkpoints(RESTART_TWICE));
    let addr = jm.rpc_addr();
    let a = FakeTm::registered(addr, "tm-a", 2).await;
    let b = FakeTm::registered(addr, "tm-b", 2).await;
    let job = jm.submit(submit_request(&keyed_plan(2), "")).unwrap();
    eventually("attempt 0 runs", || {
        jm.job(job)
            .filter(|j| j.state == JobState::Running && all_running(j))
    })
    .await;
    // Spread: one subtask index per TaskManager.
    assert_eq!(a.running().len(), 2);
    assert_eq!(b.running().len(), 2);
    let hung_at = Instant::now();
    b.hang();
    let details = eventually("attempt 1 runs on tm-a", || {
        jm.job(job).filter(|j| {
            j.attempt == 1
                && j.vertices.iter().all(|v| {
                    v.subtasks
                        .iter()
                        .all(|s| s.state == "RUNNING" && s.taskmanager.as_deref() == Some("tm-a"))
                })
        })
    })
    .await;
    let waited = hung_at.elapsed();
    // The timeout runs from the last heartbeat, which may precede the hang by up to one
    // interval (50 ms).
    assert!(
        waited >= Duration::from_millis(340),
        "lost before the heartbeat timeout: {waited:?}"
    );
    assert_eq!(details.restarts, 1);
    assert_eq!(a.running().len(), 4);
    let lost = jm.taskmanagers().lost;
    assert_eq!(lost[0].id, "tm-b");
    assert!(
        lost[0].reason.contains("no heartbeat"),
        "{}",
        lost[0].reason
    );
    // The recovery record, over REST.
    let path = format!("/jobs/{job}/recoveries");
    let body = eventually("the recovery completes with its first record", || {
        let r = jm.recoveries(job)?;
        let rec = r.recoveries.first()?;
        rec.first_record_ms.map(|_| r.clone())
    })
    .await;
    let rec = &body.recoveries[0];
    assert_eq!(rec.attempt, Some(1));
    assert_eq!(rec.lost_taskmanager.as_deref(), Some("tm-b"));
    assert!(rec.cause.contains("tm-b"), "{}", rec.cause);
    let mut moves: Vec<(u32, u32, &str, &str)> = rec
        .moves
        .iter()
        .map(|m| {
            (
                m.vertex,
                m.subtask,
                m.from_taskmanager.as_str(),
                m.to_taskmanager.as_str(),
            )
        })
        .collect();
    moves.sort();
    let moved_subtask = moves[0].1;
    assert_eq!(
        moves,
        vec![
            (0, moved_subtask, "tm-b", "tm-a"),
            (1, moved_subtask, "tm-b", "tm-a")
        ]
    );
    for phase in [rec.canceled_ms, rec.scheduled_ms, rec.running_ms] {
        assert!(phase.is_some(), "{rec:?}");
    }
    assert!(rec.durations.detection_ms.unwrap() >= 300, "{rec:?}");
    let (code, json) = http(jm.rest_addr(), "GET", &path).await;
    assert_eq!(code, 200);
    assert_eq!(json["recoveries"][0]["status"], "completed");
    assert_eq!(json["recoveries"][0]["moves"].as_array().unwrap().len(), 2);
    // The surviving subtask stayed on tm-a (local recovery).
    let (_, job_json) = http(jm.rest_addr(), "GET", &format!("/jobs/{job}")).await;
    assert_eq!(job_json["attempt"], 1);
    assert_eq!(job_json["state"], "RUNNING");
    shutdown(jm).await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_is_detected_at_once() {
    let options = weir_jobmanager::JobManagerOptions {
        heartbeat_timeout: Duration::from_secs(10),
        ..fast_options()
    };
    let jm = start(options, no_checkpoints(RESTART_TWICE));
    let addr = jm.rpc_addr();
    let a = FakeTm::registered(addr, "tm-a", 1).await;
    let b = FakeTm::registered(addr, "tm-b", 1).await;
    let job = jm.submit(submit_request(&keyed_plan(1), "")).unwrap();
    eventually("the job runs", || jm.job(job).filter(all_running)).await;
    let (victim, survivor) = if a.running().is_empty() {
        (b, a)
    } else {
        (a, b)
    };
    let killed_at = Instant::now();
    victim.kill();
    let lost = eventually("the TaskManager is lost", || {
        jm.taskmanagers().lost.into_iter().next()
    })
    .await;
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} with a 10 s heartbeat timeout"
    );
    assert_eq!(lost.id, victim.id);
    assert!(lost.reason.contains("control stream"), "{}", lost.reason);
    eventually("the job runs on the survivor", || {
        jm.job(job).filter(|j| {
            j.attempt == 1
                && j.vertices.iter().all(|v| {
                    v.subtasks.iter().all(|s| {
                        s.state == "RUNNING"
                            && s.taskmanager.as_deref() == Some(survivor.id.as_str())
                    })
                })
        })
    })
    .await;
    let rec = jm.recoveries(job).unwrap().recoveries.remove(0);
    assert!(rec.durations.cancel_ms.unwrap() < 2_000, "{rec:?}");
    shutdown(jm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_complete_and_a_failover_restores_the_latest_one() {
    let settings = JobSettings {
        checkpoint: Some(CheckpointConfig {
            interval_ms: 50,
            timeout_ms: 5_000,
            ..CheckpointConfig::default()
        }),
        store: Some(Store::in_memory()),
        restart: RESTART_TWICE,
        savepoint_dir: None,
        s3: weir_storage::S3Options::default(),
    };
    let jm = start(fast_options(), settings);
    let addr = jm.rpc_addr();
    let a = FakeTm::registered(addr, "tm-a", 2).await;
    let b = FakeTm::registered(addr, "tm-b", 2).await;
    let job = jm.submit(submit_request(&chained_plan(2), "")).unwrap();
    let before = eventually("two checkpoints complete", || {
        jm.checkpoints(job).filter(|c| c.counts.completed >= 2)
    })
    .await;
    assert!(before.history.iter().all(|r| r.attempt == 0));
    // Every TaskManager of the attempt heard of the completions.
    let completed_a = a.received(|m| match m {
        Down::Complete(c) => Some(c.checkpoint_id),
        _ => None,
    });
    assert!(!completed_a.is_empty());
    b.kill();
    let restored = eventually("attempt 1 runs", || {
        jm.job(job).filter(|j| j.attempt == 1 && all_running(j))
    })
    .await
    .restored_from
    .expect("attempt 1 restores a checkpoint");
    // The redeployed tasks got their state: the checkpoint id and operator `source`'s inline
    // bytes of their own subtask.
    let deploys = a.received(|m| match m {
        Down::Deploy(d) if d.task.as_ref().unwrap().attempt == 1 => Some(d.clone()),
        _ => None,
    });
    assert_eq!(deploys.len(), 2);
    for d in &deploys {
        let spec: weir_checkpoint::TaskRestoreSpec =
            serde_json::from_slice(&d.restore_json).unwrap();
        let subtask = d.task.as_ref().unwrap().subtask;
        assert_eq!(spec.checkpoint, restored);
        let source = weir_types::OperatorUid::new("source").unwrap();
        let inline = spec.operators[&source].inline.clone().unwrap();
        assert_eq!(u32::from(inline[0]), subtask);
        assert_eq!(d.locations.len(), 2);
        assert!(d.locations.iter().all(|l| l.taskmanager_id == "tm-a"));
    }
    let rec = eventually("the recovery record shows the restore", || {
        jm.recoveries(job)?
            .recoveries
            .into_iter()
            .find(|r| r.tasks_restored == 2)
    })
    .await;
    assert_eq!(rec.restored_checkpoint, Some(restored));
    assert_eq!(rec.bytes_downloaded, 200);
    assert_eq!(rec.bytes_local, 20);
    // Checkpoints go on in the new attempt, with higher ids.
    eventually("a checkpoint of attempt 1 completes", || {
        jm.checkpoints(job)?.history.into_iter().find(|r| {
            r.attempt == 1 && r.status == weir_coordination::driver::CheckpointStatus::Completed
        })
    })
    .await;
    let (code, json) = http(jm.rest_addr(), "GET", &format!("/jobs/{job}/checkpoints")).await;
    assert_eq!(code, 200);
    assert!(json["counts"]["completed"].as_u64().unwrap() >= 3, "{json}");
    assert_eq!(json["history"][0]["status"], "completed");
    shutdown(jm).await;
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_job_finishes_and_a_cancelled_one_is_canceled() {
    let jm = start(fast_options(), no_checkpoints(RestartStrategy::None));
    let addr = jm.rpc_addr();
    let a = FakeTm::registered(addr, "tm-a", 2).await;
    let mut d = dispatcher(addr).await;
    let finite = jm.submit(submit_request(&keyed_plan(2), "")).unwrap();
    eventually("the job runs", || jm.job(finite).filter(all_running)).await;
    a.end_input();
    eventually("the job finishes", || {
        jm.job(finite).filter(|j| j.state == JobState::Finished)
    })
    .await;
    assert!(!a
        .received(|m| match m {
            Down::Stop(s) => Some(s.attempt),
            _ => None,
        })
        .is_empty());
    // Its slots are free again; a second job runs and is cancelled over gRPC.
    eventually("slots are released", || {
        (jm.overview().slots_free == 2).then_some(())
    })
    .await;
    let endless = jm.submit(submit_request(&keyed_plan(2), "")).unwrap();
    eventually("the second job runs", || {
        jm.job(endless).filter(|j| j.state == JobState::Running)
    })
    .await;
    d.cancel_job(CancelJobRequest {
        job_id: endless.to_string(),
    })
    .await
    .unwrap();
    eventually("the job is cancelled", || {
        jm.job(endless).filter(|j| j.state == JobState::Canceled)
    })
    .await;
    assert!(a.running().is_empty());
    // Cancelling it again is refused, naming the state.
    let again = d
        .cancel_job(CancelJobRequest {
            job_id: endless.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert!(again.message().contains("CANCELED"), "{}", again.message());
    let list: serde_json::Value = serde_json::from_slice(
        &d.list_jobs(ListJobsRequest {})
            .await
            .unwrap()
            .into_inner()
            .jobs_json,
    )
    .unwrap();
    let states: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["FINISHED", "CANCELED"]);
    let (_, o) = http(jm.rest_addr(), "GET", "/overview").await;
    assert_eq!(o["jobs_finished"], 1);
    assert_eq!(o["jobs_canceled"], 1);
    shutdown(jm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_rejects_bad_submissions_and_rest_names_unknown_jobs() {
    let jm = start(fast_options(), no_checkpoints(RestartStrategy::None));
    let addr = jm.rpc_addr();
    let _a = FakeTm::registered(addr, "tm-a", 2).await;
    let mut d = dispatcher(addr).await;
    let mut bad = submit_request(&keyed_plan(1), "");
    bad.plan_json = b"{not json".to_vec();
    let e = d.submit_job(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("plan_json"), "{}", e.message());
    let e = d
        .submit_job(submit_request(&keyed_plan(1), "xyz"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let id = "0123456789abcdef0123456789abcdef";
    d.submit_job(submit_request(&keyed_plan(1), id))
        .await
        .unwrap();
    let e = d
        .submit_job(submit_request(&keyed_plan(1), id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    let got = d
        .get_job(GetJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner();
    let job: serde_json::Value = serde_json::from_slice(&got.job_json).unwrap();
    assert_eq!(job["id"], id);
    let unknown = "ffffffffffffffffffffffffffffffff";
    let (code, body) = http(jm.rest_addr(), "GET", &format!("/jobs/{unknown}")).await;
    assert_eq!(code, 404);
    assert!(body["error"].as_str().unwrap().contains(unknown), "{body}");
    let (code, _) = http(
        jm.rest_addr(),
        "GET",
        &format!("/jobs/{unknown}/recoveries"),
    )
    .await;
    assert_eq!(code, 404);
    let e = d
        .get_job(GetJobRequest {
            job_id: unknown.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let (code, _) = http(jm.rest_addr(), "GET", "/nope").await;
    assert_eq!(code, 404);
    shutdown(jm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_jobs_and_tells_every_taskmanager() {
    let jm = start(fast_options(), no_checkpoints(RestartStrategy::None));
    let addr = jm.rpc_addr();
    let a = FakeTm::registered(addr, "tm-a", 1).await;
    let b = FakeTm::registered(addr, "tm-b", 1).await;
    let job = jm.submit(submit_request(&keyed_plan(2), "")).unwrap();
    eventually("the job runs", || jm.job(job).filter(all_running)).await;
    shutdown(jm).await;
    for tm in [&a, &b] {
        let cancels = tm.received(|m| matches!(m, Down::Cancel(_)).then_some(()));
        assert_eq!(cancels.len(), 1, "{}", tm.id);
        let last = tm.received.lock().unwrap().last().cloned().unwrap();
        assert!(matches!(last.kind, Some(Down::Shutdown(_))), "{last:?}");
    }
    for tm in [a, b] {
        let end = tokio::time::timeout(WAIT, tm.task).await.unwrap().unwrap();
        assert_eq!(end, "closed by the JobManager");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_failure_during_recovery_starts_a_new_attempt() {
    let jm = start(fast_options(), no_checkpoints(RESTART_TWICE));
    let addr = jm.rpc_addr();
    let a = FakeTm::registered(addr, "tm-a", 2).await;
    let b = FakeTm::registered(addr, "tm-b", 1).await;
    let job = jm.submit(submit_request(&keyed_plan(2), "")).unwrap();
    eventually("attempt 0 runs", || jm.job(job).filter(all_running)).await;
    assert_eq!(b.running().len(), 2);
    // tm-c will take tm-b's subtasks but never get them running.
    let c = FakeTm::registered(addr, "tm-c", 1).await;
    c.mute();
    b.kill();
    eventually("attempt 1 deploys to tm-c", || {
        (!c.received(|m| matches!(m, Down::Deploy(_)).then_some(()))
            .is_empty())
        .then_some(())
    })
    .await;
    assert_eq!(jm.job(job).unwrap().attempt, 1);
    c.kill();
    let details = eventually("attempt 2 runs on tm-a", || {
        jm.job(job).filter(|j| j.attempt == 2 && all_running(j))
    })
    .await;
    assert!(details.vertices.iter().all(|v| v
        .subtasks
        .iter()
        .all(|s| s.taskmanager.as_deref() == Some("tm-a"))));
    let recoveries = jm.recoveries(job).unwrap().recoveries;
    assert_eq!(recoveries.len(), 2, "{recoveries:?}");
    assert_eq!(
        recoveries[0].status,
        weir_jobmanager::RecoveryStatus::Superseded
    );
    assert_eq!(recoveries[0].lost_taskmanager.as_deref(), Some("tm-b"));
    assert_eq!(
        recoveries[1].status,
        weir_jobmanager::RecoveryStatus::Completed
    );
    assert_eq!(recoveries[1].lost_taskmanager.as_deref(), Some("tm-c"));
    assert_eq!(recoveries[1].attempt, Some(2));
    assert!(recoveries[1]
        .moves
        .iter()
        .all(|m| m.from_taskmanager == "tm-c"));
    shutdown(jm).await;
    drop(a);
}

fn checkpointed(store: Store, restart: RestartStrategy) -> JobSettings {
    JobSettings {
        checkpoint: Some(CheckpointConfig {
            interval_ms: 50,
            timeout_ms: 5_000,
            num_retained: 3,
            ..CheckpointConfig::default()
        }),
        store: Some(store),
        restart,
        savepoint_dir: None,
        s3: weir_storage::S3Options::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_checkpoint_falls_back_without_consuming_a_restart() {
    let one_restart = RestartStrategy::FixedDelay {
        attempts: 1,
        delay_ms: 0,
    };
    let jm = start(
        fast_options(),
        checkpointed(Store::in_memory(), one_restart),
    );
    let addr = jm.rpc_addr();
    let a = FakeTm::registered(addr, "tm-a", 2).await;
    let b = FakeTm::registered(addr, "tm-b", 2).await;
    let job = jm.submit(submit_request(&chained_plan(2), "")).unwrap();
    eventually("three checkpoints complete", || {
        jm.checkpoints(job).filter(|c| c.counts.completed >= 3)
    })
    .await;
    b.kill();
    let damaged = eventually("attempt 1 runs from a checkpoint", || {
        jm.job(job)
            .filter(|j| j.attempt == 1 && all_running(j))
            .and_then(|j| j.restored_from)
    })
    .await;
    // A task of attempt 1 finds the restored checkpoint damaged.
    a.send(Up::TaskState(TaskStateUpdate {
        task: Some(TaskKey {
            job_id: job.to_string(),
            attempt: 1,
            vertex: 0,
            subtask: 0,
        }),
        state: ExecutionState::Failed as i32,
        error: format!("{damaged}/x: CRC mismatch"),
        secondary: false,
        damaged_checkpoint: Some(damaged.0),
        incompatible_state: false,
    }));
    let details = eventually("attempt 2 runs", || {
        jm.job(job).filter(|j| j.attempt == 2 && all_running(j))
    })
    .await;
    assert_ne!(details.restored_from, Some(damaged));
    assert_eq!(details.state, JobState::Running);
    let recoveries = jm.recoveries(job).unwrap().recoveries;
    assert!(recoveries[0].counts_as_restart);
    assert!(!recoveries[1].counts_as_restart, "{recoveries:?}");
    assert!(recoveries[1].cause.contains("CRC mismatch"));
    shutdown(jm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_resumes_from_its_latest_checkpoint_in_storage() {
    let store = Store::in_memory();
    let jm = start(
        fast_options(),
        checkpointed(store.clone(), RestartStrategy::None),
    );
    let addr = jm.rpc_addr();
    let a = FakeTm::registered(addr, "tm-a", 2).await;
    let mut d = dispatcher(addr).await;
    let id = "00000000000000000000000000000abc";
    let mut resume = submit_request(&chained_plan(2), id);
    resume.resume = true;
    let e = d.submit_job(resume.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("no intact completed checkpoint"),
        "{}",
        e.message()
    );
    let job = weir_types::JobId::parse(id).unwrap();
    d.submit_job(submit_request(&chained_plan(2), id))
        .await
        .unwrap();
    let latest = eventually("checkpoints complete", || {
        jm.checkpoints(job)
            .filter(|c| c.counts.completed >= 2)
            .and_then(|c| c.latest_completed)
    })
    .await;
    d.cancel_job(CancelJobRequest { job_id: id.into() })
        .await
        .unwrap();
    eventually("cancelled", || {
        jm.job(job).filter(|j| j.state == JobState::Canceled)
    })
    .await;
    let deploys_before = a
        .received(|m| matches!(m, Down::Deploy(_)).then_some(()))
        .len();
    d.submit_job(resume).await.unwrap();
    let details = eventually("the resumed job runs", || {
        jm.job(job)
            .filter(|j| j.state == JobState::Running && all_running(j))
    })
    .await;
    let restored = details.restored_from.expect("restored");
    assert!(restored >= latest, "{restored} < {latest}");
    let deploys = a.received(|m| match m {
        Down::Deploy(d) => Some(d.clone()),
        _ => None,
    });
    for d in &deploys[deploys_before..] {
        let spec: serde_json::Value = serde_json::from_slice(&d.restore_json).unwrap();
        assert_eq!(spec["checkpoint"], restored.0);
    }
    // New checkpoint ids continue above the restored one.
    let next = eventually("a checkpoint after resuming", || {
        jm.checkpoints(job)?.history.first().map(|r| r.id)
    })
    .await;
    assert!(next > restored);
    shutdown(jm).await;
}
