//! A hostile peer against a real cluster on loopback: one `weir jobmanager`, one
//! `weir taskmanager` (tm-0, two slots) running `keyed-agg` at p=2 with 200 ms checkpoints, and
//! this test speaking raw gRPC to the JobManager while the job runs. Every hostile act must be
//! refused or dropped, the JobManager must keep serving, and the job must still end with
//! exactly-once output and restorable checkpoints:
//!
//! 1. a `Register` offering `u32::MAX` slots is refused, naming the count;
//! 2. a plan whose vertex parallelism is 1 000 000 000 is `INVALID_ARGUMENT`, naming it;
//! 3. an impostor TaskManager (registered, hosting nothing) acknowledges a checkpoint for a
//!    task tm-0 runs, with handles that point at a retained checkpoint's `_metadata` and files:
//!    dropped, so nothing retained is deleted;
//! 4. the impostor declines checkpoints and reports end of input for every task: dropped, so
//!    no checkpoint aborts for its reason and the job neither restarts nor ends early;
//! 5. the impostor reports FAILED for an unknown vertex, an unknown subtask and a task it does
//!    not run: dropped, so the job does not restart.
//!
//! Acts 1–4 share one cluster; act 5 has its own, so that its outcome cannot hide theirs.

mod common;

use common::procs::{rest, start_jobmanager, start_taskmanager, wait_for, weir_cmd, Proc};
use common::{exactly_once_updates, expected_keyed_agg, read_parts};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weir_checkpoint::CheckpointMetadata;
use weir_graph::{
    NodeKind, ParallelismSettings, Partitioning, Plan, StreamEdge, StreamGraph, StreamNode,
};
use weir_proto::v1::dispatcher_service_client::DispatcherServiceClient;
use weir_proto::v1::job_manager_message::Kind as Down;
use weir_proto::v1::job_manager_service_client::JobManagerServiceClient;
use weir_proto::v1::task_manager_message::Kind as Up;
use weir_proto::v1::{
    AckMetrics, CheckpointAck, CheckpointDecline, ExecutionState, GetJobRequest, Heartbeat,
    JobManagerMessage, JobSpec, ListJobsRequest, Register, SubmitJobRequest, TaskEndOfInput,
    TaskKey, TaskManagerMessage, TaskStateUpdate,
};
use weir_types::NodeId;

/// Bounds every single wait (a process start, an RPC, a state to be reached).
const WAIT: Duration = Duration::from_secs(30);
/// Bounds the whole job run.
const JOB_DEADLINE: Duration = Duration::from_secs(120);
const SEED: u64 = 42;
const KEYS: u64 = 2000;
/// 80 000 records at 20 000/s over all sources: about four seconds of RUNNING to attack in.
const RECORDS: u64 = 80_000;
const RATE: u64 = 20_000;
/// The text of every forged decline and failure, looked for in the job's history afterwards.
const FORGED: &str = "forged by the impostor TaskManager";
const HUGE: u32 = 1_000_000_000;

/// `weir run keyed-agg -p 2 --detached --json`; the job id.
fn submit(rpc: &str, out: &Path, checkpoints: &Path) -> String {
    let o = weir_cmd()
        .args(["run", "keyed-agg", "-p", "2", "--detached", "--json"])
        .args(["--jobmanager", rpc])
        .args(["--param", &format!("records={RECORDS}")])
        .args(["--param", &format!("keys={KEYS}")])
        .args(["--param", &format!("rate={RATE}")])
        .args(["--param", "emit=updates"])
        .args(["--param", &format!("output={}", out.display())])
        .args(["-D", "execution.checkpointing.interval=200ms"])
        .args([
            "-D",
            &format!("state.checkpoints.dir=file://{}", checkpoints.display()),
        ])
        .args(["-D", "state.checkpoints.num-retained=3"])
        .stdin(Stdio::null())
        .output()
        .expect("weir run");
    assert!(
        o.status.success(),
        "weir run failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    v["job_id"].as_str().expect("job id").to_string()
}

/// Runs `f` on `rt` from this (blocking) thread, failing the test naming `what` if it takes
/// longer than [`WAIT`].
fn within<F: std::future::Future>(rt: &tokio::runtime::Runtime, what: &str, f: F) -> F::Output {
    rt.block_on(async { tokio::time::timeout(WAIT, f).await })
        .unwrap_or_else(|_| panic!("{what} took longer than {WAIT:?}"))
}

fn up(kind: Up) -> TaskManagerMessage {
    TaskManagerMessage { kind: Some(kind) }
}

fn task(job: &str, vertex: u32, subtask: u32) -> Option<TaskKey> {
    Some(TaskKey {
        job_id: job.into(),
        attempt: 0,
        vertex,
        subtask,
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A channel to `url` that presents the cluster's token: these impostors hold the credential
/// and are refused by the checks behind it.
async fn authed(url: String) -> Result<weir_security::AuthChannel, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(url)?
        .connect()
        .await?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        weir_security::ClientAuth::new(Some(&common::procs::token())),
    ))
}

/// Opens a session whose first message is `register`: `Ok` when the JobManager answers
/// `Registered` (with the session's sender and inbound stream), `Err(text)` when it refuses
/// (an error status, or `Refused` then the end of the stream).
async fn open_session(
    url: &str,
    register: Register,
) -> Result<
    (
        mpsc::Sender<TaskManagerMessage>,
        tonic::Streaming<JobManagerMessage>,
        u64,
    ),
    String,
> {
    let mut client = JobManagerServiceClient::new(
        tokio::time::timeout(WAIT, authed(url.to_string()))
            .await
            .expect("connect within the wait")
            .expect("the JobManager accepts connections"),
    );
    let (out, rx) = mpsc::channel(64);
    out.send(up(Up::Register(register))).await.unwrap();
    let opened = tokio::time::timeout(WAIT, client.session(ReceiverStream::new(rx)))
        .await
        .expect("the session is answered within the wait");
    let mut inbound = match opened {
        Err(status) => return Err(format!("{:?}: {}", status.code(), status.message())),
        Ok(r) => r.into_inner(),
    };
    let first = tokio::time::timeout(WAIT, inbound.message())
        .await
        .expect("a first message within the wait");
    match first {
        Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
        Ok(None) => Err("the stream ended without an answer".into()),
        Ok(Some(JobManagerMessage {
            kind: Some(Down::Refused(r)),
        })) => Err(format!("Refused: {}", r.reason)),
        Ok(Some(JobManagerMessage {
            kind: Some(Down::Registered(r)),
        })) => Ok((out, inbound, r.heartbeat_interval_ms)),
        Ok(Some(other)) => panic!("unexpected first answer {other:?}"),
    }
}

/// A registered TaskManager session that hosts nothing: it heartbeats (so it stays
/// registered), records what it receives, and sends whatever the test forges.
struct Impostor {
    out: mpsc::Sender<TaskManagerMessage>,
    received: Arc<Mutex<Vec<JobManagerMessage>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Impostor {
    async fn register(url: &str, id: &str) -> Impostor {
        let register = Register {
            taskmanager_id: id.into(),
            slots: 1,
            data_address: "127.0.0.1:1".into(),
            pid: std::process::id(),
            build_id: weir_build(),
            metrics_address: String::new(),
        };
        let (out, mut inbound, interval_ms) = open_session(url, register)
            .await
            .unwrap_or_else(|e| panic!("the impostor {id} was refused: {e}"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let keep = received.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                keep.lock().unwrap().push(m);
            }
        });
        let beat = out.clone();
        let heartbeat = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms.max(10)));
            for sequence in 1.. {
                ticker.tick().await;
                let m = up(Up::Heartbeat(Heartbeat {
                    sequence,
                    sent_ms: now_ms(),
                }));
                if beat.send(m).await.is_err() {
                    return;
                }
            }
        });
        Impostor {
            out,
            received,
            tasks: vec![reader, heartbeat],
        }
    }

    async fn send(&self, kind: Up) {
        tokio::time::timeout(WAIT, self.out.send(up(kind)))
            .await
            .expect("the session takes the message within the wait")
            .expect("the impostor's session is open");
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn node(id: u32, uid: &str, kind: NodeKind) -> StreamNode {
    StreamNode {
        id: NodeId(id),
        uid: Some(uid.into()),
        name: uid.into(),
        kind,
        parallelism: None,
        resolved_parallelism: 0,
    }
}

/// A valid two-vertex plan (`source -> (hash) count`, p=2) as `weir run` sends it, then with
/// every vertex's parallelism (and, with `raise_max`, the max parallelism too) set to
/// [`HUGE`] in its JSON.
fn huge_plan_request(raise_max: bool) -> SubmitJobRequest {
    let plan = Plan::resolve(
        StreamGraph {
            job_name: "huge".into(),
            nodes: vec![
                node(0, "source", NodeKind::Source { parallel: true }),
                node(1, "count", NodeKind::KeyedOperator),
            ],
            edges: vec![StreamEdge {
                source: NodeId(0),
                target: NodeId(1),
                partitioning: Some(Partitioning::Hash),
                side_output: None,
            }],
            job_parallelism: None,
            max_parallelism: None,
            resolved_max_parallelism: 0,
        },
        ParallelismSettings {
            config_default: 2,
            cli: None,
            config_max_parallelism: None,
        },
    )
    .expect("a valid plan");
    let mut json = serde_json::to_value(&plan).expect("plan to JSON");
    let vertices = json["job"]["vertices"]
        .as_array_mut()
        .expect("job.vertices in the plan JSON");
    assert!(!vertices.is_empty());
    for v in vertices {
        assert!(v["parallelism"].is_u64(), "{v}");
        v["parallelism"] = HUGE.into();
    }
    if raise_max {
        assert!(json["job"]["max_parallelism"].is_u64(), "{json}");
        json["job"]["max_parallelism"] = HUGE.into();
    }
    SubmitJobRequest {
        job: Some(JobSpec {
            job_name: "huge".into(),
            ..Default::default()
        }),
        plan_json: serde_json::to_vec(&json).unwrap(),
        resume: false,
        ..Default::default()
    }
}

/// Every `chk-<n>/_metadata` in a job's checkpoint folder, decoded (one that does not decode
/// fails the test: the store writes `_metadata` atomically).
fn retained(job_dir: &Path) -> BTreeMap<u64, CheckpointMetadata> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(job_dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name
            .strip_prefix("chk-")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let Ok(bytes) = std::fs::read(e.path().join("_metadata")) else {
            continue; // In progress, or deleted meanwhile.
        };
        let m = CheckpointMetadata::decode(&bytes)
            .unwrap_or_else(|err| panic!("{name}/_metadata does not decode: {err:?}"));
        out.insert(n, m);
    }
    out
}

/// The files a checkpoint needs to be restored (its `_metadata` and every file it
/// references), relative to the job's folder, that are missing.
fn missing_files(job_dir: &Path, id: u64, m: &CheckpointMetadata) -> Vec<String> {
    std::iter::once(format!("chk-{id}/_metadata"))
        .chain(m.files().map(|f| f.path().to_string()))
        .filter(|p| !job_dir.join(p).is_file())
        .collect()
}

/// Completed checkpoints with an id above `id`, by the JobManager's history.
fn completed_after(view: &serde_json::Value, id: u64) -> usize {
    view["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|r| r["status"] == "completed" && r["id"].as_u64() > Some(id))
                .count()
        })
        .unwrap_or(0)
}

fn forged_aborts(view: &serde_json::Value) -> Vec<serde_json::Value> {
    view["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|r| r.to_string().contains(FORGED))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The running job's state must be untouched by the impostor: RUNNING, first attempt, no
/// restart, no failure.
fn assert_undisturbed(job: &serde_json::Value) {
    assert_eq!(job["restarts"], 0, "the job restarted: {job}");
    assert_eq!(job["attempt"], 0, "the job restarted: {job}");
    assert!(job["failure_cause"].is_null(), "{job}");
}

/// A cluster (one JobManager, tm-0 with two slots) running `keyed-agg` at p=2, caught while
/// RUNNING with a retained checkpoint. Fields drop in order: the impostor and the clients
/// first, then the processes (killed by PID and reaped), then the folder.
struct Running {
    impostor: Option<Impostor>,
    dispatcher: DispatcherServiceClient<weir_security::AuthChannel>,
    rt: tokio::runtime::Runtime,
    tm: Proc,
    jm: Proc,
    rpc: String,
    rest: String,
    id: String,
    job_dir: PathBuf,
    out: PathBuf,
    /// (vertex id, parallelism) of the job, from REST.
    vertices: Vec<(u32, u32)>,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start() -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoints = dir.path().join("checkpoints");
        let out = dir.path().join("out");
        let (jm, rpc, rest_addr) = start_jobmanager(&[]);
        let tm = start_taskmanager(&rpc, "tm-0", &dir.path().join("tm-0"));
        wait_for("tm-0 to register", WAIT, || {
            rest(&rest_addr, "/taskmanagers")["taskmanagers"]
                .as_array()
                .is_some_and(|t| t.len() == 1)
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let dispatcher = within(&rt, "connecting", authed(rpc.clone()))
            .map(DispatcherServiceClient::new)
            .expect("the dispatcher accepts connections");
        let id = submit(&rpc, &out, &checkpoints);
        let mut c = Running {
            impostor: None,
            dispatcher,
            rt,
            tm,
            jm,
            rpc,
            rest: rest_addr,
            job_dir: checkpoints.join(&id),
            id,
            out,
            vertices: Vec::new(),
            _dir: dir,
        };
        wait_for("the job to run with a completed checkpoint", WAIT, || {
            let j = c.job();
            j["state"] == "RUNNING"
                && j["vertices"].as_array().is_some_and(|vs| {
                    vs.iter().all(|v| {
                        v["subtasks"]
                            .as_array()
                            .is_some_and(|s| s.iter().all(|s| s["state"] == "RUNNING"))
                    })
                })
                && !retained(&c.job_dir).is_empty()
        });
        let running = c.job();
        c.vertices = running["vertices"]
            .as_array()
            .expect("vertices")
            .iter()
            .map(|v| {
                for s in v["subtasks"].as_array().expect("subtasks") {
                    assert_eq!(s["taskmanager"], "tm-0", "{running}");
                }
                (
                    v["id"].as_u64().expect("vertex id") as u32,
                    v["parallelism"].as_u64().expect("parallelism") as u32,
                )
            })
            .collect();
        assert!(
            c.vertices.iter().any(|&(v, p)| v == 1 && p == 2),
            "keyed-agg has a vertex 1 at p=2: {running}"
        );
        c
    }

    fn job(&self) -> serde_json::Value {
        rest(&self.rest, &format!("/jobs/{}", self.id))
    }

    fn checkpoints(&self) -> serde_json::Value {
        rest(&self.rest, &format!("/jobs/{}/checkpoints", self.id))
    }

    fn list_jobs(&mut self) -> serde_json::Value {
        let r = within(
            &self.rt,
            "ListJobs",
            self.dispatcher.list_jobs(ListJobsRequest {}),
        )
        .expect("ListJobs answers");
        serde_json::from_slice(&r.into_inner().jobs_json).expect("jobs_json")
    }

    /// Registers the impostor `tm-impostor` (one slot, a data address nothing listens on).
    fn impostor(&mut self) -> &Impostor {
        let impostor = self
            .rt
            .block_on(Impostor::register(&self.rpc, "tm-impostor"));
        self.impostor.insert(impostor)
    }

    /// Sends `messages` from the impostor, in order.
    fn forge(&self, messages: Vec<Up>) {
        let impostor = self.impostor.as_ref().expect("an impostor");
        self.rt.block_on(async {
            for m in messages {
                impostor.send(m).await;
            }
        });
    }

    /// Waits until two checkpoints above `above` completed (by then the JobMaster has handled
    /// what was forged before), checking on every poll that the job runs undisturbed and that
    /// `check` holds.
    fn two_checkpoints_later(&self, above: u64, mut check: impl FnMut(&serde_json::Value)) {
        let sent_at = Instant::now();
        wait_for("two checkpoints after the forged messages", WAIT, || {
            let view = self.checkpoints();
            check(&view);
            let j = self.job();
            assert_undisturbed(&j);
            assert!(
                j["state"] == "RUNNING",
                "the job left RUNNING before the attack was over (raise RECORDS?): {j}"
            );
            completed_after(&view, above) >= 2
        });
        eprintln!(
            "the job ran on for {:?} after the forged messages",
            sent_at.elapsed()
        );
        // The impostor hosts nothing: no task work was sent to it.
        let got = self
            .impostor
            .as_ref()
            .map(|i| i.received.lock().unwrap().clone())
            .unwrap_or_default();
        assert!(
            got.iter().all(|m| !matches!(
                m.kind,
                Some(Down::Deploy(_) | Down::Trigger(_) | Down::Stop(_))
            )),
            "{got:?}"
        );
    }

    /// The job finishes on its own, never restarted, with every record exactly once, no
    /// checkpoint aborted for a forged reason, and every retained checkpoint restorable; both
    /// processes are still up and the dispatcher still answers.
    fn finishes_exactly_once_and_restorable(&mut self) {
        let mut last = serde_json::Value::Null;
        wait_for("the job to finish", JOB_DEADLINE, || {
            last = self.job();
            assert_undisturbed(&last);
            matches!(
                last["state"].as_str(),
                Some("FINISHED" | "FAILED" | "CANCELED")
            )
        });
        assert_eq!(last["state"], "FINISHED", "{last}");
        let lines = read_parts(&self.out);
        assert_eq!(lines.len() as u64, RECORDS, "one update line per record");
        assert_eq!(
            exactly_once_updates(&lines),
            expected_keyed_agg(SEED, KEYS, RECORDS)
        );
        let view = self.checkpoints();
        let forged = forged_aborts(&view);
        assert!(forged.is_empty(), "aborted for a forged reason: {forged:?}");

        // Every retained checkpoint is restorable, and references only its own folder and
        // `shared/` (never another checkpoint's files, as the forged handles did).
        let after = retained(&self.job_dir);
        assert!(!after.is_empty(), "no retained checkpoint");
        for (n, m) in &after {
            let missing = missing_files(&self.job_dir, *n, m);
            assert!(missing.is_empty(), "chk-{n} lacks {missing:?}");
            for f in m.files() {
                assert!(
                    f.path().starts_with(&format!("chk-{n}/")) || f.path().starts_with("shared/"),
                    "chk-{n} references {}",
                    f.path()
                );
                assert!(!f.path().ends_with("/_metadata"), "chk-{n}: {}", f.path());
            }
        }

        self.jm.assert_alive();
        self.tm.assert_alive();
        let details = within(
            &self.rt,
            "GetJob",
            self.dispatcher.get_job(GetJobRequest {
                job_id: self.id.clone(),
            }),
        )
        .expect("GetJob answers");
        let details: serde_json::Value =
            serde_json::from_slice(&details.into_inner().job_json).expect("job_json");
        assert_eq!(details["state"], "FINISHED", "{details}");
        assert_undisturbed(&details);
    }
}

/// Acts 1–4 on one running job: each is refused or dropped, and the job still ends exactly
/// once, never restarted, with every retained checkpoint restorable.
#[test]
fn a_greedy_register_a_huge_plan_and_forged_acks_declines_and_ends_of_input_change_nothing() {
    let started = Instant::now();
    let mut c = Running::start();

    // 1. A Register offering u32::MAX slots: refused naming the count; nothing registered.
    let greedy = c.rt.block_on(open_session(
        &c.rpc,
        Register {
            taskmanager_id: "tm-greedy".into(),
            slots: u32::MAX,
            data_address: "127.0.0.1:1".into(),
            pid: std::process::id(),
            build_id: weir_build(),
            metrics_address: String::new(),
        },
    ));
    match greedy {
        Ok(_) => panic!("a Register offering {} slots was accepted", u32::MAX),
        Err(reason) => assert!(reason.contains(&u32::MAX.to_string()), "{reason}"),
    }
    //    A metrics address that is markup or a URL (the UI and /taskmanagers show it): refused.
    let marked = c.rt.block_on(open_session(
        &c.rpc,
        Register {
            taskmanager_id: "tm-marked".into(),
            slots: 1,
            data_address: "127.0.0.1:1".into(),
            pid: std::process::id(),
            build_id: weir_build(),
            metrics_address: "<img src=x onerror=alert(1)>".into(),
        },
    ));
    match marked {
        Ok(_) => panic!("a Register with a markup metrics_address was accepted"),
        Err(reason) => assert!(reason.contains("metrics_address"), "{reason}"),
    }
    let tms = rest(&c.rest, "/taskmanagers");
    let ids: Vec<&str> = tms["taskmanagers"]
        .as_array()
        .expect("taskmanagers")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, ["tm-0"], "{tms}");
    let jobs = c.list_jobs();
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(1), "{jobs}");

    // 2. A plan of a billion subtasks per vertex (with the max parallelism as it was, and
    //    raised to match): INVALID_ARGUMENT naming the parallelism; no job added.
    for raise_max in [false, true] {
        let refused = within(
            &c.rt,
            "SubmitJob",
            c.dispatcher.submit_job(huge_plan_request(raise_max)),
        );
        match refused {
            Ok(r) => panic!(
                "a plan with parallelism {HUGE} was accepted as job {}",
                r.into_inner().job_id
            ),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
                assert!(
                    status.message().contains("parallelism")
                        && status.message().contains(&HUGE.to_string()),
                    "{status:?}"
                );
            }
        }
    }
    let jobs = c.list_jobs();
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(1), "{jobs}");
    assert_eq!(jobs["jobs"][0]["id"], c.id.as_str(), "{jobs}");
    assert_undisturbed(&c.job());

    // 3. The impostor acknowledges, for tm-0's task (vertex 1, subtask 0), the newest retained
    //    checkpoint (a late ack), the next ones and those in flight, with handles to the
    //    newest retained checkpoint's `_metadata` and files.
    c.impostor();
    let before = retained(&c.job_dir);
    let (&target, target_meta) = before.iter().next_back().expect("a retained checkpoint");
    let metadata_path = format!("chk-{target}/_metadata");
    let mut files = vec![serde_json::json!({
        "path": metadata_path,
        "size": std::fs::metadata(c.job_dir.join(&metadata_path)).expect("_metadata").len(),
        "crc32": 0,
        "shared": false,
    })];
    for f in target_meta.files() {
        files.push(serde_json::json!({
            "path": f.path(),
            "size": f.size(),
            "crc32": f.crc32(),
            "shared": f.is_shared(),
        }));
    }
    let uid = target_meta
        .operators
        .keys()
        .next()
        .expect("an operator in the metadata")
        .to_string();
    let snapshot = serde_json::json!({ "operators": { uid: { "files": files, "inline": null } } });
    let mut forged_ids: Vec<u64> = vec![target, target + 1, target + 2];
    forged_ids.extend(
        c.checkpoints()["history"]
            .as_array()
            .expect("history")
            .iter()
            .filter(|r| r["status"] == "in_progress")
            .filter_map(|r| r["id"].as_u64()),
    );
    forged_ids.sort_unstable();
    forged_ids.dedup();
    let mut forged = Vec::new();
    for &checkpoint_id in &forged_ids {
        forged.push(Up::Ack(CheckpointAck {
            task: task(&c.id, 1, 0),
            checkpoint_id,
            snapshot_json: serde_json::to_vec(&snapshot).unwrap(),
            metrics: Some(AckMetrics::default()),
        }));
    }
    // 4. Declines of those checkpoints from every task, then end of input for every task.
    for &checkpoint_id in &forged_ids {
        for &(vertex, parallelism) in &c.vertices {
            for subtask in 0..parallelism {
                forged.push(Up::Decline(CheckpointDecline {
                    task: task(&c.id, vertex, subtask),
                    checkpoint_id,
                    reason: FORGED.into(),
                }));
            }
        }
    }
    for &(vertex, parallelism) in &c.vertices {
        for subtask in 0..parallelism {
            forged.push(Up::EndOfInput(TaskEndOfInput {
                task: task(&c.id, vertex, subtask),
            }));
        }
    }
    c.forge(forged);

    // The targeted checkpoint stays whole while it is retained (retention 3 deletes it only
    // after three newer ones complete; a margin of one for the REST view's lag).
    c.two_checkpoints_later(*forged_ids.last().unwrap(), |view| {
        let missing = missing_files(&c.job_dir, target, target_meta);
        let newer = completed_after(view, target);
        assert!(
            missing.is_empty() || newer >= 2,
            "retained checkpoint {target} lost {missing:?} after the forged acks \
             ({newer} newer completed): {view}"
        );
    });
    c.finishes_exactly_once_and_restorable();
    eprintln!("took {:?}", started.elapsed());
}

/// Act 5: forged FAILED states are dropped (not a panic of the JobMaster, not a restart), and
/// the job still ends exactly once.
#[test]
fn a_forged_failure_of_an_unknown_vertex_or_of_anothers_task_is_dropped() {
    let started = Instant::now();
    let mut c = Running::start();
    c.impostor();
    let latest = c.checkpoints()["latest_completed"].as_u64().unwrap_or(0);
    // 5. FAILED for an unknown vertex, an unknown subtask, and a task tm-0 runs.
    let forged = [(99, 0), (1, 7), (1, 0)]
        .into_iter()
        .map(|(vertex, subtask)| {
            Up::TaskState(TaskStateUpdate {
                task: task(&c.id, vertex, subtask),
                state: ExecutionState::Failed as i32,
                error: FORGED.into(),
                ..Default::default()
            })
        })
        .collect();
    c.forge(forged);
    c.two_checkpoints_later(latest, |_| {});
    let jobs = c.list_jobs();
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(1), "{jobs}");
    c.finishes_exactly_once_and_restorable();
    eprintln!("took {:?}", started.elapsed());
}

/// The build identity of the `weir` binary under test (a peer must present it to register).
fn weir_build() -> String {
    weir_proto::build_identity_of(std::path::Path::new(env!("CARGO_BIN_EXE_weir")))
        .expect("read the weir binary")
}
