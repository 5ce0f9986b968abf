//! Upload failures, in process over a fault-injecting object store: a failed upload declines
//! its checkpoint and never the job — until `tolerable-failed-checkpoints` is exceeded, and
//! then the restart strategy decides. Also the at-least-once mode, whose tasks do not block
//! on barriers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir::connectors::{CollectSink, GeneratedRecord, GeneratorSource};
use weir::graph::ParallelismSettings;
use weir::minicluster::{
    JobOutcome, LocalCheckpointing, LocalJob, MiniCluster, MiniClusterOptions,
};
use weir::restart::RestartStrategy;
use weir::state::HeapStateBackendFactory;
use weir::{CheckpointStatus, JobDefinition, RuntimeOptions, StreamEnvironment};
use weir_checkpoint::{CheckpointConfig, CheckpointingMode};
use weir_storage::{Faults, FaultyStore, RetryPolicy, Store};
use weir_types::JobId;

/// What the collect sink received: `(key, running sum)`.
type Collected = Arc<Mutex<Vec<(u64, u64)>>>;

/// generator (keys 0..100) → key_by → sum of values → collect.
fn summing_job(records: u64, rate: u64) -> (JobDefinition, Collected) {
    let env = StreamEnvironment::new("sums");
    let sink = CollectSink::new();
    let out = sink.handle();
    env.add_source(GeneratorSource::new(5, 100).records(records).rate(rate))
        .uid("numbers")
        .key_by(|r: &GeneratedRecord| r.key)
        .sum(|r: &GeneratedRecord| r.value)
        .uid("sums")
        .sink_to(sink)
        .uid("collect");
    (env.build(), out)
}

/// Runs `job` at parallelism 2 through the JobMaster (in-process TaskManager) while `during`
/// runs beside it; the error is the job's failure cause.
fn run(
    job: JobDefinition,
    store: Store,
    config: CheckpointConfig,
    restart: RestartStrategy,
    during: impl FnOnce() + Send,
) -> (Result<(), String>, JobOutcome) {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = std::thread::scope(|s| {
        s.spawn(during);
        MiniCluster::run_local(
            MiniClusterOptions::new(2, dir.path().to_path_buf()),
            LocalJob {
                job,
                parallelism: ParallelismSettings {
                    config_default: 2,
                    ..Default::default()
                },
                options: RuntimeOptions::default(),
                state_backend: Arc::new(HeapStateBackendFactory::new()),
                checkpointing: Some(LocalCheckpointing {
                    config,
                    store,
                    job_id: Some(JobId(7)),
                    resume: false,
                }),
                restart,
            },
            &std::sync::atomic::AtomicBool::new(false),
        )
        .expect("the job runs")
    });
    let result = match outcome.failure() {
        None => Ok(()),
        Some(cause) => Err(cause.to_string()),
    };
    (result, outcome)
}

fn faulty_store() -> (Store, Faults) {
    let quick = RetryPolicy {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(5),
    };
    FaultyStore::wrap(&Store::in_memory().with_retry_policy(quick))
}

fn config(tolerable_failures: u32) -> CheckpointConfig {
    CheckpointConfig {
        interval_ms: 50,
        tolerable_failures,
        ..CheckpointConfig::default()
    }
}

fn count(report: &JobOutcome, completed: bool) -> usize {
    report
        .checkpoints
        .history
        .iter()
        .filter(|r| (r.status == CheckpointStatus::Completed) == completed)
        .filter(|r| completed || matches!(r.status, CheckpointStatus::Aborted(_)))
        .count()
}

/// The final sum per key, from the emitted running sums.
fn final_sums(out: &[(u64, u64)]) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for &(k, s) in out {
        let e = m.entry(k).or_insert(0);
        *e = s.max(*e);
    }
    m
}

fn expected_sums(records: u64) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for seq in 0..records {
        let r = weir::connectors::record_at(5, 100, seq);
        *m.entry(r.key).or_insert(0) += r.value;
    }
    m
}

#[test]
fn failed_uploads_decline_their_checkpoints_but_the_job_goes_on_and_finishes() {
    let (job, out) = summing_job(40_000, 40_000);
    let (store, faults) = faulty_store();
    faults.fail_puts_matching(|p| p.as_ref().contains("heap-state"));
    let (result, report) = run(
        job,
        store,
        config(1_000),
        RestartStrategy::None,
        move || {
            std::thread::sleep(Duration::from_millis(400));
            faults.clear();
        },
    );
    result.expect("the job finishes despite failed uploads");
    assert!(
        count(&report, false) > 0,
        "no checkpoint was declined: {:?}",
        report.checkpoints
    );
    assert!(
        count(&report, true) > 0,
        "no checkpoint completed: {:?}",
        report.checkpoints
    );
    assert_eq!(report.details.restarts, 0);
    let declined = report
        .checkpoints
        .history
        .iter()
        .find_map(|r| match &r.status {
            CheckpointStatus::Aborted(reason) => Some(reason.clone()),
            _ => None,
        });
    assert!(
        declined
            .as_deref()
            .is_some_and(|r| r.contains("heap-state")),
        "the decline names the file: {declined:?}"
    );
    let got = final_sums(&out.lock().expect("lock"));
    assert_eq!(got, expected_sums(40_000));
}

#[test]
fn more_failed_checkpoints_than_tolerated_fail_the_job_naming_the_reason() {
    let (job, _) = summing_job(200_000, 20_000);
    let (store, faults) = faulty_store();
    faults.fail_puts_matching(|p| p.as_ref().contains("heap-state"));
    let (result, report) = run(job, store, config(2), RestartStrategy::None, || {});
    let err = result.expect_err("the job fails");
    assert!(
        err.contains("3 checkpoints failed in a row")
            && err.contains("tolerable-failed-checkpoints")
            && err.contains("restart strategy none"),
        "{err}"
    );
    assert_eq!(count(&report, true), 0);
}

#[test]
fn at_least_once_checkpoints_complete_and_lose_nothing() {
    let (job, out) = summing_job(40_000, 40_000);
    let (store, _faults) = faulty_store();
    let config = CheckpointConfig {
        mode: CheckpointingMode::AtLeastOnce,
        ..config(0)
    };
    let (result, report) = run(job, store, config, RestartStrategy::None, || {});
    result.expect("finishes");
    assert!(count(&report, true) >= 2, "{:?}", report.checkpoints);
    assert_eq!(
        final_sums(&out.lock().expect("lock")),
        expected_sums(40_000)
    );
}
