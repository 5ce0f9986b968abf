//! Test harness: a JobManager on 127.0.0.1:0, fake TaskManagers speaking the real gRPC
//! protocol, hand-built plans, and a tiny HTTP client for the REST API.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weir_coordination::restart::RestartStrategy;
use weir_graph::{
    NodeKind, ParallelismSettings, Partitioning, Plan, StreamEdge, StreamGraph, StreamNode,
};
use weir_jobmanager::{
    FixedSettings, JobManager, JobManagerHandle, JobManagerOptions, JobSettings,
};
use weir_proto::v1::dispatcher_service_client::DispatcherServiceClient;
use weir_proto::v1::job_manager_message::Kind as Down;
use weir_proto::v1::job_manager_service_client::JobManagerServiceClient;
use weir_proto::v1::task_manager_message::Kind as Up;
use weir_proto::v1::*;
use weir_types::NodeId;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(15);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "weir_jobmanager=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Fast options: heartbeats every 50 ms, lost after 400 ms.
pub fn fast_options() -> JobManagerOptions {
    JobManagerOptions {
        rpc_bind: "127.0.0.1:0".parse().unwrap(),
        rest_bind: "127.0.0.1:0".parse().unwrap(),
        heartbeat_interval: Duration::from_millis(50),
        heartbeat_timeout: Duration::from_millis(400),
        slot_request_timeout: Duration::from_secs(5),
        cancel_timeout: Duration::from_secs(3),
        adaptive: None,
        auth: None,
        tls: None,
    }
}

pub fn no_checkpoints(restart: RestartStrategy) -> JobSettings {
    JobSettings {
        checkpoint: None,
        store: None,
        restart,
        savepoint_dir: None,
        s3: weir_storage::S3Options::default(),
    }
}

pub fn start(options: JobManagerOptions, settings: JobSettings) -> JobManagerHandle {
    init_tracing();
    JobManager::start(options, Arc::new(FixedSettings(settings))).expect("JobManager starts")
}

/// Shuts the JobManager down from async code.
pub async fn shutdown(jm: JobManagerHandle) {
    tokio::task::spawn_blocking(move || jm.shutdown())
        .await
        .unwrap();
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

fn resolve(graph: StreamGraph, parallelism: u32) -> Plan {
    Plan::resolve(
        graph,
        ParallelismSettings {
            config_default: parallelism,
            cli: None,
            config_max_parallelism: None,
        },
    )
    .unwrap()
}

/// `source -> (hash) count`: two vertices, `parallelism` subtasks each.
pub fn keyed_plan(parallelism: u32) -> Plan {
    resolve(
        StreamGraph {
            job_name: "keyed".into(),
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
        parallelism,
    )
}

/// `source -> map` chained: one source vertex (every task is triggered directly).
pub fn chained_plan(parallelism: u32) -> Plan {
    resolve(
        StreamGraph {
            job_name: "chained".into(),
            nodes: vec![
                node(0, "source", NodeKind::Source { parallel: true }),
                node(1, "map", NodeKind::Operator),
            ],
            edges: vec![StreamEdge {
                source: NodeId(0),
                target: NodeId(1),
                partitioning: None,
                side_output: None,
            }],
            job_parallelism: None,
            max_parallelism: None,
            resolved_max_parallelism: 0,
        },
        parallelism,
    )
}

pub fn submit_request(plan: &Plan, job_id: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        job: Some(JobSpec {
            job_id: job_id.into(),
            job_name: plan.job.job_name.clone(),
            ..Default::default()
        }),
        plan_json: serde_json::to_vec(plan).unwrap(),
        resume: false,
        ..Default::default()
    }
}

pub async fn dispatcher(addr: SocketAddr) -> DispatcherServiceClient<tonic::transport::Channel> {
    DispatcherServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("dispatcher connects")
}

/// Whether every subtask of the job's current attempt is RUNNING (and it has subtasks).
pub fn all_running(j: &weir_jobmanager::view::JobDetails) -> bool {
    !j.vertices.is_empty()
        && j.vertices
            .iter()
            .all(|v| !v.subtasks.is_empty() && v.subtasks.iter().all(|s| s.state == "RUNNING"))
}

/// Polls `f` every 20 ms until it returns `Some`, at most [`WAIT`].
pub async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A GET (or other method) over plain HTTP/1.1; returns the status code and the body.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, serde_json::Value) {
    let mut s = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let code: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    (code, body)
}

/// What the fake TaskManager is told to do.
enum Ctl {
    /// Stop heartbeating and answering, but keep the stream open (a hung process).
    Hang,
    /// Keep heartbeating but answer nothing (tasks stuck deploying).
    Mute,
    /// Drop the stream (a killed process).
    Drop,
    /// Report end of input for every task it runs.
    EndInput,
    /// Send this.
    Send(TaskManagerMessage),
}

/// A task the fake runs: (job, attempt, vertex, subtask).
pub type FakeTask = (String, u32, u32, u32);

/// A fake TaskManager: registers over real gRPC, heartbeats, and answers like a well-behaved
/// TaskManager: DeployTask → RUNNING (+ TaskRestored when restoring, + one FirstRecord per
/// attempt), CancelAttempt → CANCELED, TriggerCheckpoint → CheckpointAck (inline state for
/// operator `source`), StopTasks → FINISHED.
pub struct FakeTm {
    pub id: String,
    ctl: mpsc::UnboundedSender<Ctl>,
    /// Every message received, in order.
    pub received: Arc<Mutex<Vec<JobManagerMessage>>>,
    /// Tasks it runs now.
    pub tasks: Arc<Mutex<BTreeSet<FakeTask>>>,
    pub task: tokio::task::JoinHandle<&'static str>,
}

pub enum Registration {
    Registered(FakeTm, Registered),
    Refused(String),
}

fn up(kind: Up) -> TaskManagerMessage {
    TaskManagerMessage { kind: Some(kind) }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

impl FakeTm {
    pub async fn connect(addr: SocketAddr, id: &str, slots: u32) -> Registration {
        let mut client = JobManagerServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connects");
        let (out, out_rx) = mpsc::channel::<TaskManagerMessage>(64);
        out.send(up(Up::Register(Register {
            taskmanager_id: id.into(),
            slots,
            data_address: format!("127.0.0.1:{}", 9000 + slots),
            pid: 4242,
            // The JobManager of these tests runs in this very process.
            build_id: weir_proto::build_identity().to_string(),
            metrics_address: String::new(),
        })))
        .await
        .unwrap();
        let mut inbound = client
            .session(ReceiverStream::new(out_rx))
            .await
            .expect("session opens")
            .into_inner();
        let first = tokio::time::timeout(WAIT, inbound.message())
            .await
            .expect("an answer to Register")
            .expect("a message")
            .expect("not end of stream");
        let registered = match first.kind {
            Some(Down::Registered(r)) => r,
            Some(Down::Refused(r)) => return Registration::Refused(r.reason),
            other => panic!("unexpected first answer {other:?}"),
        };
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let received = Arc::new(Mutex::new(Vec::new()));
        let tasks = Arc::new(Mutex::new(BTreeSet::new()));
        let task = tokio::spawn(run(
            id.to_string(),
            out,
            inbound,
            ctl_rx,
            received.clone(),
            tasks.clone(),
            Duration::from_millis(registered.heartbeat_interval_ms),
        ));
        Registration::Registered(
            FakeTm {
                id: id.into(),
                ctl,
                received,
                tasks,
                task,
            },
            registered,
        )
    }

    pub async fn registered(addr: SocketAddr, id: &str, slots: u32) -> FakeTm {
        match Self::connect(addr, id, slots).await {
            Registration::Registered(tm, _) => tm,
            Registration::Refused(reason) => panic!("{id} refused: {reason}"),
        }
    }

    pub fn hang(&self) {
        let _ = self.ctl.send(Ctl::Hang);
    }

    pub fn mute(&self) {
        let _ = self.ctl.send(Ctl::Mute);
    }

    pub fn kill(&self) {
        let _ = self.ctl.send(Ctl::Drop);
    }

    pub fn end_input(&self) {
        let _ = self.ctl.send(Ctl::EndInput);
    }

    pub fn send(&self, m: Up) {
        let _ = self.ctl.send(Ctl::Send(up(m)));
    }

    /// The messages received so far that `f` picks.
    pub fn received<T>(&self, f: impl Fn(&Down) -> Option<T>) -> Vec<T> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|m| m.kind.as_ref().and_then(&f))
            .collect()
    }

    pub fn running(&self) -> BTreeSet<FakeTask> {
        self.tasks.lock().unwrap().clone()
    }
}

fn state(task: &TaskKey, state: ExecutionState) -> TaskManagerMessage {
    up(Up::TaskState(TaskStateUpdate {
        task: Some(task.clone()),
        state: state as i32,
        ..Default::default()
    }))
}

async fn run(
    id: String,
    out: mpsc::Sender<TaskManagerMessage>,
    mut inbound: tonic::Streaming<JobManagerMessage>,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    received: Arc<Mutex<Vec<JobManagerMessage>>>,
    tasks: Arc<Mutex<BTreeSet<FakeTask>>>,
    heartbeat: Duration,
) -> &'static str {
    let mut ticker = tokio::time::interval(heartbeat);
    let mut alive = true;
    let mut answering = true;
    let mut sequence = 0;
    let mut first_records: BTreeSet<(String, u32)> = BTreeSet::new();
    loop {
        let mut replies = Vec::new();
        tokio::select! {
            _ = ticker.tick(), if alive => {
                sequence += 1;
                replies.push(up(Up::Heartbeat(Heartbeat { sequence, sent_ms: now_ms() })));
            }
            m = inbound.message() => match m {
                Ok(Some(m)) => {
                    received.lock().unwrap().push(m.clone());
                    if alive && answering {
                        answer(&m, &tasks, &mut first_records, &mut replies);
                    }
                }
                Ok(None) => return "closed by the JobManager",
                Err(_) => return "broken",
            },
            c = ctl.recv() => match c {
                Some(Ctl::Hang) => {
                    tracing::info!(taskmanager = %id, "fake TaskManager hangs");
                    alive = false;
                }
                Some(Ctl::Mute) => answering = false,
                Some(Ctl::Drop) | None => return "dropped",
                Some(Ctl::EndInput) => {
                    for (job, attempt, vertex, subtask) in tasks.lock().unwrap().iter() {
                        replies.push(up(Up::EndOfInput(TaskEndOfInput {
                            task: Some(TaskKey { job_id: job.clone(), attempt: *attempt, vertex: *vertex, subtask: *subtask }),
                        })));
                    }
                }
                Some(Ctl::Send(m)) => replies.push(m),
            },
        }
        for r in replies {
            if out.send(r).await.is_err() {
                return "outbound closed";
            }
        }
    }
}

fn answer(
    m: &JobManagerMessage,
    tasks: &Mutex<BTreeSet<FakeTask>>,
    first_records: &mut BTreeSet<(String, u32)>,
    replies: &mut Vec<TaskManagerMessage>,
) {
    let key = |t: &FakeTask| TaskKey {
        job_id: t.0.clone(),
        attempt: t.1,
        vertex: t.2,
        subtask: t.3,
    };
    match &m.kind {
        // The tests' stores live in this process: the probe would read fine.
        Some(Down::Probe(p)) => replies.push(up(Up::StorageProbed(StorageProbed {
            probe_id: p.probe_id,
            error: String::new(),
        }))),
        Some(Down::Deploy(d)) => {
            let k = d.task.clone().unwrap();
            tasks
                .lock()
                .unwrap()
                .insert((k.job_id.clone(), k.attempt, k.vertex, k.subtask));
            replies.push(state(&k, ExecutionState::Deploying));
            if !d.restore_json.is_empty() {
                let spec: serde_json::Value = serde_json::from_slice(&d.restore_json).unwrap();
                replies.push(up(Up::Restored(TaskRestored {
                    task: Some(k.clone()),
                    checkpoint_id: spec["checkpoint"].as_u64().unwrap(),
                    bytes_downloaded: 100,
                    bytes_local: 10,
                    duration_ms: 3,
                })));
            }
            replies.push(state(&k, ExecutionState::Running));
            if first_records.insert((k.job_id.clone(), k.attempt)) {
                replies.push(up(Up::FirstRecord(FirstRecord {
                    job_id: k.job_id.clone(),
                    attempt: k.attempt,
                    at_ms: now_ms(),
                })));
            }
        }
        Some(Down::Cancel(c)) => {
            let mut tasks = tasks.lock().unwrap();
            let gone: Vec<FakeTask> = tasks
                .iter()
                .filter(|t| t.0 == c.job_id && t.1 <= c.attempt)
                .cloned()
                .collect();
            for t in gone {
                tasks.remove(&t);
                replies.push(state(&key(&t), ExecutionState::Canceled));
            }
        }
        Some(Down::Stop(s)) => {
            let mut tasks = tasks.lock().unwrap();
            let done: Vec<FakeTask> = tasks
                .iter()
                .filter(|t| t.0 == s.job_id && t.1 == s.attempt)
                .cloned()
                .collect();
            for t in done {
                tasks.remove(&t);
                replies.push(state(&key(&t), ExecutionState::Finished));
            }
        }
        Some(Down::Trigger(t)) => {
            let k = t.task.clone().unwrap();
            let snapshot = serde_json::json!({
                "operators": {
                    "source": { "files": [], "inline": [k.subtask, t.checkpoint_id % 256] }
                }
            });
            replies.push(up(Up::Ack(CheckpointAck {
                task: Some(k),
                checkpoint_id: t.checkpoint_id,
                snapshot_json: serde_json::to_vec(&snapshot).unwrap(),
                metrics: Some(AckMetrics {
                    sync_ms: 1,
                    async_ms: 2,
                    alignment_ms: 0,
                    bytes_uploaded: 2,
                    full_size: 2,
                }),
            })));
        }
        _ => {}
    }
}
