//! `weir savepoint` (trigger, `dispose`, `inspect`) and `weir stop`.
//!
//! Triggering goes through the JobManager (`TriggerSavepoint`, then `GetSavepoint` polled every
//! 200 ms with a progress line on stderr until the savepoint completes or fails). Disposing and
//! inspecting read the savepoint's folder directly, with the configuration's S3 settings: no
//! JobManager and no job code is needed.

use crate::cluster::{connect, io_runtime, status_failure};
use crate::commands::Failure;
use crate::config::Config;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use weir_checkpoint::CheckpointMetadata;
use weir_jobmanager::view::{SavepointOperation, SavepointState};
use weir_proto::v1;
use weir_storage::{open_store, ObjectPath, StorageUrl, Store};

/// How long `weir savepoint` / `weir stop` follow a savepoint before giving up on waiting (the
/// savepoint itself goes on, bounded by the checkpoint timeout).
const FOLLOW_LIMIT: Duration = Duration::from_secs(3600);

/// `weir savepoint JOB_ID [TARGET]` and `weir stop JOB_ID`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn trigger_command(
    url: &str,
    job_id: &str,
    target: Option<String>,
    format: &str,
    stop: bool,
    drain: bool,
    detached: bool,
    json: bool,
) -> Result<(), Failure> {
    let rt = io_runtime()?;
    let mut client = connect(&rt, url)?;
    let what = if stop { "stop" } else { "savepoint" };
    let request_id = rt
        .block_on(client.trigger_savepoint(v1::TriggerSavepointRequest {
            job_id: job_id.to_string(),
            target: target.unwrap_or_default(),
            format: format.to_string(),
            stop,
            drain,
        }))
        .map_err(|s| status_failure(what, s))?
        .into_inner()
        .request_id;
    if detached {
        if json {
            println!(
                "{}",
                serde_json::json!({ "job_id": job_id, "request_id": request_id })
            );
        } else {
            println!("{request_id}");
        }
        return Ok(());
    }
    let started = Instant::now();
    let mut last_line = Instant::now();
    let progress = (!json).then(|| {
        crate::progress::Progress::spinner(format!(
            "savepoint {request_id} of job {job_id}: tasks writing"
        ))
    });
    let op = loop {
        let r = rt
            .block_on(client.get_savepoint(v1::GetSavepointRequest {
                job_id: job_id.to_string(),
                request_id,
            }))
            .map_err(|s| status_failure(what, s))?
            .into_inner();
        let op: SavepointOperation = serde_json::from_slice(&r.status_json)
            .map_err(|e| Failure::Job(format!("the JobManager's answer does not parse: {e}")))?;
        if op.status != SavepointState::InProgress {
            break op;
        }
        if started.elapsed() >= FOLLOW_LIMIT {
            return Err(Failure::Job(format!(
                "savepoint {request_id} of job {job_id} is still in progress after \
                 {FOLLOW_LIMIT:?}; follow it with GET /jobs/{job_id}/savepoints/{request_id}"
            )));
        }
        if progress.as_ref().is_some_and(|p| !p.drawn())
            && last_line.elapsed() >= Duration::from_secs(1)
        {
            eprintln!(
                "savepoint {request_id} of job {job_id}: in progress ({} s)",
                started.elapsed().as_secs()
            );
            last_line = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(progress);
    if json {
        println!(
            "{}",
            serde_json::to_string(&op).expect("a savepoint operation serialises")
        );
    }
    match op.status {
        SavepointState::Completed => {
            let location = op.location.unwrap_or_default();
            if !json {
                if stop {
                    eprintln!("job {job_id} stopped with savepoint {request_id}");
                }
                println!("{location}");
            }
            Ok(())
        }
        _ => Err(Failure::Job(format!(
            "savepoint {request_id} of job {job_id} failed: {}",
            op.failure_cause.unwrap_or_default()
        ))),
    }
}

/// The folder `path` names (a folder, or its `_metadata`) and its store.
fn open_folder(config: &Config, path: &str) -> Result<(String, Store), Failure> {
    let trimmed = path.trim_end_matches('/');
    let folder = trimmed
        .strip_suffix("/_metadata")
        .unwrap_or(trimmed)
        .to_string();
    let url = StorageUrl::parse(&folder).map_err(|e| Failure::Usage(format!("'{path}': {e}")))?;
    let store = open_store(&url, &config.checkpoint_storage().1)
        .map_err(|e| Failure::Usage(format!("'{path}': {e}")))?;
    Ok((folder, store))
}

/// Reads and verifies the `_metadata` of the folder `path` names.
fn read_metadata(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    folder: &str,
) -> Result<CheckpointMetadata, Failure> {
    let bytes = rt
        .block_on(store.get(&ObjectPath::from("_metadata")))
        .map_err(|e| {
            if e.is_not_found() {
                Failure::Usage(format!(
                    "{folder}/_metadata does not exist: not a savepoint or a retained checkpoint"
                ))
            } else {
                Failure::Job(format!("cannot read {folder}/_metadata: {e}"))
            }
        })?;
    CheckpointMetadata::decode(&bytes)
        .map_err(|e| Failure::Usage(format!("{folder}/_metadata: {e}")))
}

/// `weir savepoint dispose PATH`: deletes `_metadata` first (from then on the folder is no
/// savepoint), then every other object of the folder.
pub(crate) fn dispose_command(config: &Config, path: &str, json: bool) -> Result<(), Failure> {
    let rt = io_runtime()?;
    let (folder, store) = open_folder(config, path)?;
    let metadata = read_metadata(&rt, &store, &folder)?;
    rt.block_on(weir_coordination::claim::check_disposable(
        &store,
        &config.checkpoint_storage().1,
        weir_jobmanager::LEASE_DURATION,
        weir_coordination::driver::now_ms(),
    ))
    .map_err(|e| Failure::Usage(format!("{folder} is not disposed: {e}")))?;
    if !metadata.kind.is_savepoint() {
        return Err(Failure::Usage(format!(
            "{folder} is a retained checkpoint of job {}, not a savepoint: its files may be \
             shared with the job's other checkpoints, so it is not disposed",
            metadata.job_id
        )));
    }
    rt.block_on(store.delete(&ObjectPath::from("_metadata")))
        .map_err(|e| Failure::Job(format!("cannot delete {folder}/_metadata: {e}")))?;
    let removed = rt
        .block_on(store.delete_prefix(&ObjectPath::default()))
        .map_err(|e| {
            Failure::Job(format!(
                "{folder}/_metadata is deleted (it is no savepoint any more), but some of its \
                 files are left: {e}"
            ))
        })?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "disposed": folder, "objects": removed + 1 })
        );
    } else {
        eprintln!("savepoint {folder} disposed ({} objects)", removed + 1);
    }
    Ok(())
}

/// What `weir savepoint inspect` prints.
#[derive(Serialize)]
struct Inspection {
    path: String,
    job_id: String,
    kind: String,
    checkpoint_id: u64,
    timestamp_ms: u64,
    max_parallelism: u32,
    self_contained: bool,
    bytes: u64,
    operators: BTreeMap<String, OperatorInspection>,
}

#[derive(Serialize)]
struct OperatorInspection {
    parallelism: u32,
    bytes: u64,
    subtasks: Vec<SubtaskInspection>,
}

#[derive(Serialize)]
struct SubtaskInspection {
    subtask: u32,
    /// `rocksdb`, `heap` or `canonical` for keyed state; absent otherwise.
    backend: Option<String>,
    key_groups: Option<String>,
    states: Vec<String>,
    /// Source position or other inline state, in bytes.
    inline_bytes: usize,
    files: Vec<FileInspection>,
    finished: bool,
}

#[derive(Serialize)]
struct FileInspection {
    path: String,
    bytes: u64,
    crc32: String,
}

/// The keyed-state description a subtask stores inline (the fields inspect shows).
#[derive(serde::Deserialize)]
struct KeyedMeta {
    backend: String,
    key_groups: weir_types::KeyGroupRange,
    descriptors: Vec<weir_state::StateDescriptor>,
}

/// `weir savepoint inspect PATH`.
pub(crate) fn inspect_command(config: &Config, path: &str, json: bool) -> Result<(), Failure> {
    let rt = io_runtime()?;
    let (folder, store) = open_folder(config, path)?;
    let m = read_metadata(&rt, &store, &folder)?;
    let mut operators = BTreeMap::new();
    for (uid, op) in &m.operators {
        let subtasks: Vec<SubtaskInspection> = op
            .subtasks
            .iter()
            .map(|(i, st)| {
                let keyed = st
                    .inline
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<KeyedMeta>(b).ok());
                SubtaskInspection {
                    subtask: i.0,
                    backend: keyed.as_ref().map(|k| k.backend.clone()),
                    key_groups: keyed.as_ref().map(|k| k.key_groups.to_string()),
                    states: keyed
                        .as_ref()
                        .map(|k| {
                            k.descriptors
                                .iter()
                                .map(|d| format!("{} ({:?})", d.name, d.kind))
                                .collect()
                        })
                        .unwrap_or_default(),
                    inline_bytes: if keyed.is_some() {
                        0
                    } else {
                        st.inline.as_ref().map_or(0, Vec::len)
                    },
                    files: st
                        .files
                        .iter()
                        .map(|f| FileInspection {
                            path: f.path().to_string(),
                            bytes: f.size(),
                            crc32: format!("{:08x}", f.crc32()),
                        })
                        .collect(),
                    finished: st.finished,
                }
            })
            .collect();
        let bytes = subtasks
            .iter()
            .flat_map(|s| s.files.iter().map(|f| f.bytes))
            .sum();
        operators.insert(
            uid.to_string(),
            OperatorInspection {
                parallelism: op.parallelism,
                bytes,
                subtasks,
            },
        );
    }
    let report = Inspection {
        path: folder,
        job_id: m.job_id.to_string(),
        kind: m.kind.to_string(),
        checkpoint_id: m.checkpoint_id.get(),
        timestamp_ms: m.timestamp,
        max_parallelism: m.max_parallelism,
        self_contained: m.self_contained,
        bytes: operators.values().map(|o| o.bytes).sum(),
        operators,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("an inspection serialises")
        );
        return Ok(());
    }
    println!("{}", report.path);
    println!(
        "  {} {} of job {}, max parallelism {}, {} bytes{}",
        report.kind,
        m.checkpoint_id,
        report.job_id,
        report.max_parallelism,
        report.bytes,
        if report.self_contained {
            ", self-contained"
        } else {
            ""
        }
    );
    for (uid, op) in &report.operators {
        println!(
            "  operator '{uid}': parallelism {}, {} bytes",
            op.parallelism, op.bytes
        );
        for s in &op.subtasks {
            let mut line = format!("    subtask {}:", s.subtask);
            if let (Some(b), Some(kg)) = (&s.backend, &s.key_groups) {
                line.push_str(&format!(
                    " {b} key groups {kg}, states [{}]",
                    s.states.join(", ")
                ));
            }
            if s.inline_bytes > 0 {
                line.push_str(&format!(" position {} bytes", s.inline_bytes));
            }
            let file_bytes: u64 = s.files.iter().map(|f| f.bytes).sum();
            line.push_str(&format!(" {} file(s), {file_bytes} bytes", s.files.len()));
            if s.finished {
                line.push_str(" (finished)");
            }
            println!("{line}");
        }
    }
    Ok(())
}

/// The URL handles of the snapshot in `folder` are relative to: the folder itself for a
/// savepoint, its job's folder for a retained checkpoint (`…/<job>/chk-<n>`).
fn handles_root(folder: &str) -> String {
    let last = folder.rsplit('/').next().unwrap_or_default();
    match weir_storage::parse_checkpoint_dir_name(last) {
        Some(_) => folder[..folder.len() - last.len()]
            .trim_end_matches('/')
            .to_string(),
        None => folder.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A catalog's decoder of state bytes.
type Decoder = fn(&[u8]) -> Result<serde_json::Value, String>;

/// A decoded value, or `{"hex": …}` when there is no decoder or it fails.
fn decoded(decoder: Option<Decoder>, bytes: &[u8]) -> serde_json::Value {
    match decoder.map(|d| d(bytes)) {
        Some(Ok(v)) => v,
        Some(Err(e)) => serde_json::json!({ "hex": hex(bytes), "undecodable": e }),
        None => serde_json::json!({ "hex": hex(bytes) }),
    }
}

/// `weir savepoint dump PATH --uid UID [--state NAME]`.
pub(crate) fn dump_command(
    catalog: &crate::catalog::Catalog,
    config: &Config,
    path: &str,
    uid: &str,
    only: Option<&str>,
) -> Result<(), Failure> {
    use std::io::Write;
    use weir_state::canonical::{CanonicalFile, CANONICAL_BACKEND, CANONICAL_FILE_NAME};
    let rt = io_runtime()?;
    let (folder, store) = open_folder(config, path)?;
    let m = read_metadata(&rt, &store, &folder)?;
    let op = m
        .operators
        .iter()
        .find(|(u, _)| u.as_str() == uid)
        .map(|(_, op)| op)
        .ok_or_else(|| {
            Failure::Usage(format!(
                "{folder} holds no state of operator '{uid}'; its operators: {}",
                m.operators
                    .keys()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let schemas: Vec<&crate::catalog::StateSchema> = m
        .job_name
        .as_deref()
        .and_then(|name| catalog.get(name))
        .map(|job| job.states.iter().filter(|s| s.uid == uid).collect())
        .unwrap_or_default();
    let root = handles_root(&folder);
    let root_store = open_folder(config, &root)?.1;
    let reader = weir_state_transfer::Uploader::self_contained(root_store, m.job_id);
    let scratch = tempfile::tempdir()
        .map_err(|e| Failure::Job(format!("cannot make a scratch directory: {e}")))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut print = |line: serde_json::Value| -> Result<(), Failure> {
        writeln!(out, "{line}").map_err(|e| Failure::Job(format!("cannot write: {e}")))
    };
    for (subtask, state) in &op.subtasks {
        let keyed = state
            .inline
            .as_deref()
            .and_then(|b| weir_state_transfer::KeyedStateMeta::decode(b).ok());
        let Some(meta) = keyed else {
            if let Some(bytes) = &state.inline {
                print(
                    serde_json::json!({ "subtask": subtask.0, "position": { "hex": hex(bytes) } }),
                )?;
            }
            continue;
        };
        let dir = scratch.path().join(format!("subtask-{}", subtask.0));
        let (snapshot, _, _) = rt
            .block_on(reader.download_keyed(m.checkpoint_id, state, &dir))
            .map_err(|e| Failure::Job(format!("subtask {subtask}: {e}")))?;
        let names: Vec<String> = meta.descriptors.iter().map(|d| d.name.clone()).collect();
        let mut emit = |state_index: usize,
                        key: &weir_state::StateKey<'_>,
                        value: &[u8]|
         -> Result<(), Failure> {
            let name = &names[state_index];
            if only.is_some_and(|o| o != name) {
                return Ok(());
            }
            let schema = schemas.iter().find(|s| s.state == name);
            let mut line = serde_json::json!({
                "subtask": subtask.0,
                "state": name,
                "key_group": key.key_group.0,
                "key": decoded(schema.map(|s| s.key), key.key),
                "value": decoded(schema.map(|s| s.value), value),
            });
            if !key.namespace.is_empty() {
                line["namespace"] = serde_json::json!({ "hex": hex(key.namespace) });
            }
            if !key.user_key.is_empty() {
                line["user_key"] = serde_json::json!({ "hex": hex(key.user_key) });
            }
            print(line)
        };
        if snapshot.backend == CANONICAL_BACKEND {
            let file = snapshot.file(CANONICAL_FILE_NAME).ok_or_else(|| {
                Failure::Job(format!("subtask {subtask}: no {CANONICAL_FILE_NAME} file"))
            })?;
            let bytes = std::fs::read(file)
                .map_err(|e| Failure::Job(format!("cannot read {}: {e}", file.display())))?;
            let parsed = CanonicalFile::parse(&bytes)
                .map_err(|e| Failure::Job(format!("subtask {subtask}: {e}")))?;
            let mut failed = None;
            parsed
                .for_each(&mut |e| {
                    if let Err(f) = emit(e.state, &e.key, e.value) {
                        failed = Some(f);
                        return Err(weir_state::StateError::UnknownState(0));
                    }
                    Ok(())
                })
                .map_err(|e| match failed.take() {
                    Some(f) => f,
                    None => Failure::Job(format!("subtask {subtask}: {e}")),
                })?;
            continue;
        }
        let factory: Box<dyn weir_state::StateBackendFactory> = match snapshot.backend.as_str() {
            "heap" => Box::new(weir_state::HeapStateBackendFactory::new()),
            "rocksdb" => Box::new(
                weir_state_rocksdb::RocksDbStateBackendFactory::new(
                    scratch.path().join("rocksdb"),
                    64 << 20,
                )
                .map_err(|e| Failure::Job(e.to_string()))?,
            ),
            other => {
                return Err(Failure::Usage(format!(
                    "subtask {subtask}: state of the unknown backend '{other}'"
                )))
            }
        };
        let scope = weir_state::BackendScope {
            operator_uid: weir_types::OperatorUid::new(uid)
                .map_err(|e| Failure::Usage(e.to_string()))?,
            subtask: *subtask,
            parallelism: op.parallelism,
            max_parallelism: m.max_parallelism,
            key_group_range: meta.key_groups,
            keyed_subtasks_in_process: 1,
        };
        let mut backend = factory
            .restore(&scope, snapshot)
            .map_err(|e| Failure::Job(format!("subtask {subtask}: {e}")))?;
        for i in 0..names.len() {
            let mut failed = None;
            backend
                .scan(weir_state::StateId(i as u32), &mut |e| {
                    if let Err(f) = emit(i, &e.key, e.value) {
                        failed = Some(f);
                        return Err(weir_state::StateError::UnknownState(0));
                    }
                    Ok(())
                })
                .map_err(|e| match failed.take() {
                    Some(f) => f,
                    None => Failure::Job(format!("subtask {subtask}: {e}")),
                })?;
        }
    }
    Ok(())
}
