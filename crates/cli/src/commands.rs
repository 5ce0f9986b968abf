//! Argument parsing and the commands.

use crate::catalog::Catalog;
use crate::config::Config;
use crate::params::Params;
use crate::render;
use crate::rss::peak_rss_bytes;
use crate::{bench, checkpoints};
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use weir_graph::ParallelismSettings;
use weir_runtime::Plan;

#[derive(Parser, Debug)]
#[command(
    name = "weir",
    version,
    about = "Weir: a stateful stream-processing runtime in the lineage of Apache Flink"
)]
struct Cli {
    /// Configuration file (default: ./weir.toml when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Overrides a configuration key, as in Flink's CLI (repeatable).
    #[arg(short = 'D', global = true, value_name = "KEY=VALUE")]
    define: Vec<String>,
    /// More log output (-v info, -vv debug); WEIR_LOG=<filter> for full control.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Lists the jobs this binary can run, with their parameters.
    Jobs {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prints every configuration key with its effective value and help.
    Config,
    /// Prints a job's StreamGraph, JobGraph and ExecutionGraph.
    Plan {
        #[command(flatten)]
        job: JobArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Runs a job on a cluster embedded in this process (its own JobManager, and TaskManager
    /// children or one in-process TaskManager) until it finishes.
    Local {
        #[command(flatten)]
        job: JobArgs,
        #[command(flatten)]
        state: StateArgs,
        /// Resume job JOB_ID from its latest intact checkpoint under state.checkpoints.dir
        /// (the run takes over that job's checkpoint directory and continues its ids).
        #[arg(long, value_name = "JOB_ID")]
        restore: Option<String>,
        #[command(flatten)]
        from: FromSavepointArgs,
        /// Print the result summary as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// TaskManager child processes of the embedded cluster; 0 runs one TaskManager inside
        /// this process (same JobMaster, in-memory session and channels).
        #[arg(long, default_value_t = 2, value_name = "N")]
        taskmanagers: u32,
        /// Slots per TaskManager (default: taskmanager.numberOfTaskSlots, or enough for the
        /// job).
        #[arg(long, value_name = "M")]
        slots: Option<u32>,
    },
    /// Runs the JobManager (Dispatcher, ResourceManager, JobMasters) until Ctrl-C.
    Jobmanager {
        /// gRPC address for TaskManagers and clients.
        #[arg(long, default_value = "127.0.0.1:6123", value_name = "ADDR")]
        rpc_bind: String,
        /// REST API address.
        #[arg(long, default_value = "127.0.0.1:8081", value_name = "ADDR")]
        rest_bind: String,
        /// Bind off loopback without TLS (logged as a warning at every start).
        #[arg(long)]
        insecure: bool,
    },
    /// Runs a TaskManager that registers its slots with a JobManager, until Ctrl-C.
    Taskmanager {
        /// The JobManager's RPC URL; with high availability, every JobManager's, comma-separated (the leader is found and followed). Default: with high-availability.type storage, the leader's address from high-availability.storageDir; otherwise http://127.0.0.1:6123.
        #[arg(long, value_name = "URL")]
        jobmanager: Option<String>,
        /// Slots (overrides taskmanager.numberOfTaskSlots).
        #[arg(long)]
        slots: Option<u32>,
        #[command(flatten)]
        state: StateArgs,
        /// This TaskManager's id, unique in the cluster (default: tm-<host>-<pid>).
        #[arg(long)]
        id: Option<String>,
        /// Address of the data-exchange server (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
        data_bind: String,
        /// Bind off loopback without TLS (logged as a warning at every start).
        #[arg(long)]
        insecure: bool,
    },
    /// Submits a job to a JobManager and (unless --detached) follows it to its end.
    Run {
        #[command(flatten)]
        job: JobArgs,
        /// Return once the job is submitted.
        #[arg(long)]
        detached: bool,
        /// The JobManager's RPC URL; with high availability, every JobManager's, comma-separated (the leader is found and followed). Default: with high-availability.type storage, the leader's address from high-availability.storageDir; otherwise http://127.0.0.1:6123.
        #[arg(long, value_name = "URL")]
        jobmanager: Option<String>,
        /// Resume job JOB_ID from its latest intact checkpoint.
        #[arg(long, value_name = "JOB_ID")]
        restore: Option<String>,
        #[command(flatten)]
        from: FromSavepointArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Takes a savepoint of a running job and prints its folder; or disposes of or inspects a
    /// savepoint (`weir savepoint dispose|inspect PATH`).
    Savepoint(SavepointArgs),
    /// Stops a running job with a savepoint: sources stop at its barrier, sinks commit it, and
    /// the job FINISHES; prints the savepoint's folder.
    Stop {
        /// The job's id.
        job_id: String,
        /// The folder the savepoint's folder goes under (default:
        /// execution.checkpointing.savepoint-dir).
        #[arg(long = "savepoint-path", short = 'p', value_name = "TARGET")]
        savepoint_path: Option<String>,
        /// canonical (any backend, any parallelism, readable offline) or native (the backend's
        /// own files).
        #[arg(long = "type", default_value = "canonical", value_parser = ["canonical", "native"])]
        format: String,
        /// End the sources' input first (operators finish, as in a bounded job); the job's
        /// final snapshot is the savepoint.
        #[arg(long)]
        drain: bool,
        /// The JobManager's RPC URL; with high availability, every JobManager's, comma-separated (the leader is found and followed). Default: with high-availability.type storage, the leader's address from high-availability.storageDir; otherwise http://127.0.0.1:6123.
        #[arg(long, value_name = "URL")]
        jobmanager: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lists a JobManager's jobs.
    List {
        /// The JobManager's RPC URL; with high availability, every JobManager's, comma-separated (the leader is found and followed). Default: with high-availability.type storage, the leader's address from high-availability.storageDir; otherwise http://127.0.0.1:6123.
        #[arg(long, value_name = "URL")]
        jobmanager: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancels a job on a JobManager.
    Cancel {
        /// The job's id.
        job_id: String,
        /// The JobManager's RPC URL; with high availability, every JobManager's, comma-separated (the leader is found and followed). Default: with high-availability.type storage, the leader's address from high-availability.storageDir; otherwise http://127.0.0.1:6123.
        #[arg(long, value_name = "URL")]
        jobmanager: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shows the checkpoint history of a local job (the latest one by default): id, status,
    /// duration, sync / async / alignment time, bytes uploaded, full size.
    Checkpoints {
        /// The job id `weir local` printed (default: the most recent local job).
        job_id: Option<String>,
        #[command(flatten)]
        state: StateArgs,
        /// Ask this JobManager (RPC URL) instead of reading the local history.
        #[arg(long, value_name = "URL")]
        jobmanager: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Runs a benchmark workload and reports throughput, peak memory and state size.
    Bench {
        /// The workload: keyed-agg, or nexmark (with --query).
        #[arg(value_parser = ["keyed-agg", "nexmark"])]
        workload: String,
        /// The Nexmark query (nexmark only).
        #[arg(long, value_parser = ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8"])]
        query: Option<String>,
        /// Nexmark events to generate (nexmark only).
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Parallelism.
        #[arg(short = 'p', long = "parallelism")]
        parallelism: Option<u32>,
        #[command(flatten)]
        state: StateArgs,
        /// Distinct keys.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Records to generate.
        #[arg(long, default_value_t = 20_000_000)]
        records: u64,
        /// Generator seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Records per second over all sources (default: as fast as possible): a steady load,
        /// e.g. small churn over many keys to measure checkpoint pauses.
        #[arg(long)]
        rate: Option<u64>,
        /// Also run with checkpoints at this interval (e.g. 1s) and compare.
        #[arg(long, value_name = "DURATION")]
        checkpoint_interval: Option<String>,
        /// Also run with a savepoint of this format taken half-way, then restore it at one
        /// more subtask: savepoint duration, rate, task pause, throughput lost, restore time.
        #[arg(long, value_name = "FORMAT", value_parser = ["canonical", "native"])]
        savepoint: Option<String>,
        /// Bytes of incompressible state per key (state ≈ keys × padding).
        #[arg(long, default_value_t = 0)]
        padding: u64,
        /// How records spread over the keys: uniform, or zipf:S (key k with weight
        /// (k+1)^-S; e.g. zipf:1.1 puts a few hot keys in most records).
        #[arg(long, default_value = "uniform", value_name = "DIST")]
        key_distribution: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rehearses failures: runs the job on a cluster of its own once without faults, then again
    /// while injecting faults on a schedule drawn from the seed, and checks that the committed
    /// output equals the reference, checkpoint ids rise and no file is orphaned. Exit 0 when
    /// every check passes, 1 otherwise (with the seed that replays the run).
    Drill {
        #[command(flatten)]
        job: JobArgs,
        #[command(flatten)]
        state: StateArgs,
        /// TaskManager processes.
        #[arg(long, default_value_t = 3)]
        taskmanagers: u32,
        /// JobManager processes (high availability on a folder of the drill's own).
        #[arg(long, default_value_t = 1)]
        jobmanagers: u32,
        /// Faults to draw from, comma-separated: kill-tm, stop-tm, kill-jm,
        /// kill-during-recovery, storage-errors, storage-slow.
        #[arg(long, default_value = "kill-tm,stop-tm")]
        faults: String,
        /// Halfway through the faults, stop the job with a savepoint and resume it from the
        /// savepoint at another parallelism (one less, or one more at -p 1).
        #[arg(long)]
        savepoint_round_trip: bool,
        /// Drill a running cluster on this host instead of starting one (its JobManager RPC
        /// URLs, comma-separated): faults kill-tm, stop-tm and kill-during-recovery only, by the
        /// pid each TaskManager registered with; killed TaskManagers are not replaced.
        #[arg(long, value_name = "URL")]
        jobmanager: Option<String>,
        /// Faults to inject, one per interval once the first checkpoint completed.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Time between two faults.
        #[arg(long, default_value = "2s", value_name = "DURATION")]
        interval: String,
        /// Seed of the fault schedule (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Starting a job from a savepoint or retained checkpoint (`weir run`, `weir local`).
#[derive(Args, Debug, Default)]
struct FromSavepointArgs {
    /// Start from this savepoint or retained checkpoint: its folder or its _metadata (a path
    /// or a file://, memory:// or s3:// URL).
    #[arg(short = 's', long = "from-savepoint", value_name = "PATH")]
    from_savepoint: Option<String>,
    /// With -s: drop the state of operators the job no longer has instead of refusing.
    #[arg(
        short = 'n',
        long = "allow-non-restored-state",
        requires = "from_savepoint"
    )]
    allow_non_restored_state: bool,
    /// With -s: no-claim (the job never references or deletes the snapshot's files) or claim.
    #[arg(long = "claim-mode", value_parser = ["no-claim", "claim"], requires = "from_savepoint")]
    claim_mode: Option<String>,
}

impl FromSavepointArgs {
    fn start(&self, resume: bool) -> crate::cluster::StartFrom {
        crate::cluster::StartFrom {
            resume,
            restore_path: self.from_savepoint.as_ref().map(|p| absolute_url(p)),
            allow_non_restored_state: self.allow_non_restored_state,
            claim_mode: self.claim_mode.clone(),
        }
    }
}

/// A relative local path made absolute (URLs and absolute paths as they are), so that a
/// JobManager in another directory reads the same folder.
fn absolute_url(path: &str) -> String {
    if path.contains("://") || path.starts_with('/') {
        return path.to_string();
    }
    std::path::absolute(path).map_or_else(|_| path.to_string(), |p| p.display().to_string())
}

/// `weir savepoint`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct SavepointArgs {
    #[command(subcommand)]
    action: Option<SavepointAction>,
    /// The running job's id.
    #[arg(required = true)]
    job_id: Option<String>,
    /// The folder the savepoint's folder goes under (default:
    /// execution.checkpointing.savepoint-dir).
    target: Option<String>,
    /// canonical (any backend, any parallelism, readable offline) or native (the backend's own
    /// files).
    #[arg(long = "type", default_value = "canonical", value_parser = ["canonical", "native"])]
    format: String,
    /// Return once the savepoint is triggered (prints its request id).
    #[arg(long)]
    detached: bool,
    /// The JobManager's RPC URL; with high availability, every JobManager's, comma-separated (the leader is found and followed). Default: with high-availability.type storage, the leader's address from high-availability.storageDir; otherwise http://127.0.0.1:6123.
    #[arg(long, value_name = "URL")]
    jobmanager: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum SavepointAction {
    /// Deletes a savepoint's folder (its _metadata first, so a half-deleted folder is never a
    /// savepoint).
    Dispose {
        /// The savepoint's folder or its _metadata.
        path: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prints every key and value of one operator's keyed state as JSON lines, decoded when
    /// this binary's catalog knows the job, hex otherwise (a source's position as hex).
    Dump {
        /// The savepoint's (or retained checkpoint's) folder or its _metadata.
        path: String,
        /// The operator.
        #[arg(long)]
        uid: String,
        /// Only this state.
        #[arg(long)]
        state: Option<String>,
    },
    /// Describes a savepoint or retained checkpoint from its files alone: job, format, id, max
    /// parallelism, and per operator its parallelism, states, bytes and key-group ranges.
    Inspect {
        /// The savepoint's folder or its _metadata.
        path: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct JobArgs {
    /// The job's name (see `weir jobs`).
    job: String,
    /// Parallelism (beats parallelism.default; loses to job and operator settings).
    #[arg(short = 'p', long = "parallelism")]
    parallelism: Option<u32>,
    /// A job parameter (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
}

#[derive(Args, Debug)]
struct StateArgs {
    /// Keyed state backend (overrides state.backend).
    #[arg(long, value_name = "rocksdb|heap")]
    state_backend: Option<String>,
    /// Directory for RocksDB instances (overrides state.backend.rocksdb.localdir).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// A command's failure: bad input (exit 2), a job that failed while running (exit 1), or a
/// job cancelled by Ctrl-C (exit 130, as a shell reports SIGINT).
pub(crate) enum Failure {
    Usage(String),
    Job(String),
    Cancelled(String),
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Usage(e.to_string())
    }
}

pub(crate) fn run(catalog: Catalog, args: Vec<OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_logging(cli.verbose);
    match dispatch(&catalog, cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Job(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Cancelled(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(130)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn dispatch(catalog: &Catalog, cli: Cli) -> Result<(), Failure> {
    let mut defines = cli.define.clone();
    let state_args = match &cli.command {
        Command::Local { state, .. }
        | Command::Taskmanager { state, .. }
        | Command::Bench { state, .. }
        | Command::Drill { state, .. }
        | Command::Checkpoints { state, .. } => Some(state),
        _ => None,
    };
    if let Some(s) = state_args {
        if let Some(b) = &s.state_backend {
            defines.push(format!("state.backend={b}"));
        }
        if let Some(d) = &s.state_dir {
            defines.push(format!("state.backend.rocksdb.localdir={}", d.display()));
        }
    }
    let config = Config::load(cli.config.as_deref(), std::env::vars(), &defines)?;
    crate::cluster::set_client_auth(&config);
    if let Some(file) = &config.fault_control_file {
        if !matches!(cli.command, Command::Drill { .. }) {
            weir_storage::control::install(file.clone(), &config.checkpoint_storage().0)
                .map_err(|e| Failure::Usage(e.to_string()))?;
        }
    }
    match cli.command {
        Command::Jobs { json } => {
            list_jobs(catalog, json);
            Ok(())
        }
        Command::Config => {
            for (key, value, help) in config.describe() {
                println!("{key} = {value}\n    {help}");
            }
            Ok(())
        }
        Command::Plan { job, json } => {
            let plan = resolve_job(
                catalog,
                &config,
                &job.job,
                job.parallelism,
                &job.params,
                None,
            )?
            .plan;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&render::plan_json(&plan))
                        .expect("plan serialises")
                );
            } else {
                print!("{}", render::plan_text(&plan));
            }
            Ok(())
        }
        Command::Checkpoints {
            job_id: Some(job_id),
            json,
            jobmanager: Some(url),
            ..
        } => crate::cluster::checkpoints_command(&url, &job_id, json),
        Command::Checkpoints {
            jobmanager: Some(_),
            ..
        } => Err(Failure::Usage(
            "weir checkpoints --jobmanager needs a JOB_ID".into(),
        )),
        Command::Jobmanager {
            rpc_bind,
            rest_bind,
            insecure,
        } => crate::cluster::jobmanager_command(&config, &rpc_bind, &rest_bind, insecure),
        Command::Taskmanager {
            jobmanager,
            slots,
            id,
            data_bind,
            insecure,
            ..
        } => crate::cluster::taskmanager_command(
            catalog,
            &config,
            (jobmanager, slots, id),
            &data_bind,
            insecure,
        ),
        Command::Run {
            job,
            detached,
            jobmanager,
            restore,
            from,
            json,
        } => {
            let r = resolve_job(
                catalog,
                &config,
                &job.job,
                job.parallelism,
                &job.params,
                restore.as_deref(),
            )?;
            crate::cluster::run_command(
                &crate::cluster::jobmanager_addr(jobmanager, &config)?,
                r.spec,
                &r.plan,
                &from.start(restore.is_some()),
                detached,
                json,
            )
        }
        Command::List { jobmanager, json } => crate::cluster::list_command(
            &crate::cluster::jobmanager_addr(jobmanager, &config)?.resolve()?,
            json,
        ),
        Command::Cancel {
            job_id,
            jobmanager,
            json,
        } => crate::cluster::cancel_command(
            &crate::cluster::jobmanager_addr(jobmanager, &config)?.resolve()?,
            &job_id,
            json,
        ),
        Command::Savepoint(a) => match a.action {
            Some(SavepointAction::Dispose { path, json }) => {
                crate::savepoint::dispose_command(&config, &absolute_url(&path), json)
            }
            Some(SavepointAction::Inspect { path, json }) => {
                crate::savepoint::inspect_command(&config, &absolute_url(&path), json)
            }
            Some(SavepointAction::Dump { path, uid, state }) => crate::savepoint::dump_command(
                catalog,
                &config,
                &absolute_url(&path),
                &uid,
                state.as_deref(),
            ),
            None => crate::savepoint::trigger_command(
                &crate::cluster::jobmanager_addr(a.jobmanager.clone(), &config)?.resolve()?,
                a.job_id.as_deref().unwrap_or_default(),
                a.target.as_deref().map(absolute_url),
                &a.format,
                false,
                false,
                a.detached,
                a.json,
            ),
        },
        Command::Stop {
            job_id,
            savepoint_path,
            format,
            drain,
            jobmanager,
            json,
        } => crate::savepoint::trigger_command(
            &crate::cluster::jobmanager_addr(jobmanager, &config)?.resolve()?,
            &job_id,
            savepoint_path.as_deref().map(absolute_url),
            &format,
            true,
            drain,
            false,
            json,
        ),
        Command::Local {
            job,
            json,
            restore,
            from,
            taskmanagers,
            slots,
            ..
        } => {
            let r = resolve_job(
                catalog,
                &config,
                &job.job,
                job.parallelism,
                &job.params,
                restore.as_deref(),
            )?;
            let (spec, plan) = (r.spec, r.plan);
            let forward = forward_args(cli.config.as_deref(), &defines);
            crate::cluster::local_command(
                catalog,
                &config,
                spec,
                &plan,
                &from.start(restore.is_some()),
                taskmanagers,
                slots,
                &forward,
                json,
            )
        }
        Command::Checkpoints { job_id, json, .. } => {
            let history = checkpoints::read_history(
                &checkpoints::jobs_dir(&config.state_dir),
                job_id.as_deref(),
            )
            .map_err(Failure::Usage)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&history).expect("history serialises")
                );
            } else {
                print!("{}", checkpoints::render(&history));
            }
            Ok(())
        }
        Command::Drill {
            job,
            taskmanagers,
            jobmanagers,
            faults,
            rounds,
            interval,
            seed,
            json,
            savepoint_round_trip,
            jobmanager,
            ..
        } => {
            let forward = forward_args(cli.config.as_deref(), &defines);
            let options = crate::drill::DrillOptions {
                job: job.job,
                parallelism: job.parallelism,
                params: job.params,
                taskmanagers,
                jobmanagers,
                faults: crate::drill::Fault::parse_list(&faults).map_err(Failure::Usage)?,
                rounds,
                interval: crate::config::parse_duration(&interval)
                    .map_err(|e| Failure::Usage(format!("--interval: {e}")))?,
                seed: seed.unwrap_or_else(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |d| d.as_nanos() as u64)
                }),
                json,
                savepoint_round_trip,
                jobmanager,
                forward,
            };
            crate::drill::drill_command(catalog, &config, &options)
        }
        Command::Bench {
            workload,
            parallelism,
            keys,
            records,
            seed,
            rate,
            checkpoint_interval,
            savepoint,
            padding,
            key_distribution,
            json,
            query,
            events,
            ..
        } => {
            let nexmark = workload == "nexmark";
            let mut params = if nexmark {
                vec![format!("events={events}"), format!("seed={seed}")]
            } else {
                vec![
                    format!("keys={keys}"),
                    format!("records={records}"),
                    format!("seed={seed}"),
                    format!("padding={padding}"),
                ]
            };
            if let Some(rate) = rate {
                params.push(format!("rate={rate}"));
            }
            if key_distribution != "uniform" && !nexmark {
                params.push(format!("key-distribution={key_distribution}"));
            }
            // The catalog job the workload runs.
            let workload = match (nexmark, &query) {
                (true, Some(q)) => format!("nexmark-{q}"),
                (true, None) => {
                    return Err(Failure::Usage(
                        "weir bench nexmark needs --query (q0, q1, q2, q3, q4, q5, q7 or q8)"
                            .into(),
                    ))
                }
                (false, Some(_)) => {
                    return Err(Failure::Usage(
                        "--query applies to weir bench nexmark only".into(),
                    ))
                }
                (false, None) => workload,
            };
            let plain_job = resolve_job(
                catalog,
                &plain_config(&config),
                &workload,
                parallelism,
                &params,
                None,
            )?;
            let plan = plain_job.plan.clone();
            let p = plan
                .job
                .vertices
                .iter()
                .map(|v| v.parallelism)
                .max()
                .unwrap_or(1);
            check_writable_dir(&config.state_dir).map_err(Failure::Usage)?;
            let root = config
                .state_dir
                .join(format!("bench-{}", std::process::id()));
            // The runs' checkpoints are the benchmark's own: kept under its root (removed at
            // the end) unless state.checkpoints.dir names a place.
            let mut config = config.clone();
            if config.checkpoints_dir.is_none() {
                let dir = root.join("checkpoints");
                config.checkpoints_dir = Some(weir_storage::StorageUrl::File {
                    root: std::path::absolute(&dir).unwrap_or(dir),
                });
            }
            // Removed however the benchmark ends (declared before the cluster, so dropped
            // after it has stopped).
            let _scratch = RemoveOnDrop(root.clone());
            // A savepoint run restores at one more subtask afterwards: room for it.
            let extra = u32::from(savepoint.is_some());
            let cluster = crate::cluster::start_minicluster(
                catalog,
                &config,
                config.taskmanager_slots.max(plan.slots_needed() + extra),
                &root,
            )?;
            let run = |job: ResolvedJob| {
                let _progress = (!json).then(|| {
                    crate::progress::Progress::spinner(format!("bench: {workload} running"))
                });
                let (spec, plan) = (job.spec, job.plan);
                let plan_json =
                    serde_json::to_vec(&plan).map_err(|e| Failure::Job(e.to_string()))?;
                let outcome = cluster
                    .run(
                        weir_proto::v1::SubmitJobRequest {
                            job: Some(spec),
                            plan_json,
                            resume: false,
                            ..Default::default()
                        },
                        &AtomicBool::new(false),
                    )
                    .map_err(|e| Failure::Job(e.to_string()))?;
                match outcome.failure() {
                    None => Ok(outcome),
                    Some(cause) => Err(Failure::Job(format!("{workload} failed: {cause}"))),
                }
            };
            let report = run(plain_job)?;
            let secs = report.duration().as_secs_f64().max(1e-9);
            let source_records = report.details.metrics.source_records;
            let state_bytes = report.details.metrics.state_bytes;
            let rate = source_records as f64 / secs;
            let rss = peak_rss_bytes().unwrap_or(0);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "workload": workload,
                        "state_backend": config.state_backend.as_str(),
                        "parallelism": p,
                        "keys": if nexmark { None } else { Some(keys) },
                        "key_distribution": if nexmark { None } else { Some(&key_distribution) },
                        "records": source_records,
                        "duration_s": secs,
                        "records_per_s": rate,
                        "events_per_s": nexmark.then_some(rate),
                        "peak_rss_bytes": rss,
                        "state_bytes": state_bytes,
                        "managed_memory_bytes": config.managed_memory_bytes,
                    })
                );
            } else {
                println!(
                    "workload        {workload} (p={p}, state backend {})",
                    config.state_backend.as_str()
                );
                if nexmark {
                    println!("events          {source_records} in {secs:.2} s");
                    println!("throughput      {rate:.0} events/s");
                } else {
                    println!(
                        "records         {} over {} keys ({key_distribution}) in {:.2} s",
                        source_records, keys, secs
                    );
                    println!("throughput      {:.0} records/s", rate);
                }
                println!("peak RSS        {}", human_bytes(rss));
                println!("state size      {}", human_bytes(state_bytes));
                println!(
                    "memory budget   {} (taskmanager.memory.managed.size)",
                    human_bytes(config.managed_memory_bytes)
                );
            }
            if let Some(interval) = &checkpoint_interval {
                let mut with = config.clone();
                with.checkpoint_interval = Some(
                    crate::config::parse_duration(interval)
                        .map_err(|e| Failure::Usage(format!("--checkpoint-interval: {e}")))?,
                );
                let r = run(resolve_job(
                    catalog,
                    &with,
                    &workload,
                    parallelism,
                    &params,
                    None,
                )?)?;
                let secs_cp = r.duration().as_secs_f64().max(1e-9);
                let rate_cp = r.details.metrics.source_records as f64 / secs_cp;
                let summary = bench::CheckpointSummary::new(
                    &r.checkpoints.history,
                    &r.sync_pauses_us,
                    rate,
                    rate_cp,
                );
                if json {
                    println!("{}", summary.json(interval));
                } else {
                    print!("{}", summary.text(interval));
                }
            }
            if let Some(format) = savepoint {
                // Periodic checkpoints (if asked) run on during the savepoint runs too.
                let mut sp_config = config.clone();
                sp_config.checkpoint_interval = match &checkpoint_interval {
                    Some(i) => Some(
                        crate::config::parse_duration(i)
                            .map_err(|e| Failure::Usage(format!("--checkpoint-interval: {e}")))?,
                    ),
                    None => None,
                };
                let figures = savepoint_bench(
                    &cluster,
                    catalog,
                    &sp_config,
                    (&workload, &params, parallelism, p),
                    &format,
                    &root,
                )?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string(&figures).expect("figures serialise")
                    );
                } else {
                    print!("{}", figures.text());
                }
            }
            cluster.stop();
            Ok(())
        }
    }
}

/// A directory removed (with everything in it) when this is dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), error = %e, "cannot remove the benchmark's scratch directory");
            }
        }
    }
}

/// Waits until every subtask of job `id` runs (state restored); fails if the job ends.
fn await_all_running(
    jm: &weir_jobmanager::JobManagerHandle,
    id: weir_types::JobId,
) -> Result<(), Failure> {
    loop {
        let d = jm
            .job(id)
            .ok_or_else(|| Failure::Job(format!("job {id} vanished")))?;
        if d.state.is_terminal() {
            return Err(Failure::Job(format!(
                "job {id} ended before running: {}",
                d.failure_cause.unwrap_or_default()
            )));
        }
        let running = d
            .vertices
            .iter()
            .flat_map(|v| v.subtasks.iter())
            .all(|s| s.state == "RUNNING");
        if running {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// `weir bench --savepoint`: see [`bench::SavepointFigures`].
fn savepoint_bench(
    cluster: &weir_minicluster::MiniCluster,
    catalog: &Catalog,
    config: &Config,
    (workload, params, parallelism, p): (&str, &[String], Option<u32>, u32),
    format: &str,
    root: &Path,
) -> Result<bench::SavepointFigures, Failure> {
    use std::time::{Duration, Instant};
    let jm = cluster.jobmanager();
    let failed = |e: weir_jobmanager::DispatchError| Failure::Job(e.to_string());
    // Checkpointing on (savepoints need it): at `--checkpoint-interval`, else none periodic.
    let mut with = config.clone();
    with.checkpoint_interval = with.checkpoint_interval.or(Some(Duration::from_secs(3600)));
    let submit = || -> Result<weir_types::JobId, Failure> {
        let job = resolve_job(catalog, &with, workload, parallelism, params, None)?;
        let plan_json = serde_json::to_vec(&job.plan).map_err(|e| Failure::Job(e.to_string()))?;
        jm.submit(weir_proto::v1::SubmitJobRequest {
            job: Some(job.spec),
            plan_json,
            ..Default::default()
        })
        .map_err(failed)
    };
    // The baseline: the same job with checkpointing on, no savepoint.
    let base = submit()?;
    let base_s = cluster
        .wait(base, &AtomicBool::new(false))
        .map_err(|e| Failure::Job(e.to_string()))?
        .duration()
        .as_secs_f64();
    let id = submit()?;
    await_all_running(jm, id)?;
    // The job's live record count (TaskManagers report it every 200 ms), sampled throughout.
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let sample = |samples: &mut Vec<(Instant, u64)>| {
        if let Some(d) = jm.job(id) {
            samples.push((Instant::now(), d.metrics.source_records));
        }
    };
    let until = Instant::now() + Duration::from_secs_f64(base_s * 0.4);
    while Instant::now() < until {
        sample(&mut samples);
        std::thread::sleep(Duration::from_millis(50));
    }
    let triggered = Instant::now();
    let target = format!("file://{}", root.join("savepoints").display());
    let request = jm
        .trigger_savepoint(id, Some(&target), format, false)
        .map_err(failed)?;
    let op = loop {
        let op = jm.savepoint(id, request).map_err(failed)?;
        sample(&mut samples);
        if op.status != weir_jobmanager::view::SavepointState::InProgress {
            break op;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let completed = Instant::now();
    // A little after, so the last report of the window has arrived.
    let settle = completed + Duration::from_millis(400);
    while Instant::now() < settle {
        sample(&mut samples);
        std::thread::sleep(Duration::from_millis(50));
    }
    let during = bench::rate_between(&samples, triggered, completed);
    let window = completed
        .saturating_duration_since(triggered)
        .max(Duration::from_secs(2));
    let before = bench::rate_between(
        &samples,
        triggered.checked_sub(window).unwrap_or(triggered),
        triggered,
    );
    let location = op.location.clone().ok_or_else(|| {
        Failure::Job(format!(
            "the savepoint failed: {}",
            op.failure_cause.clone().unwrap_or_default()
        ))
    })?;
    let outcome = cluster
        .wait(id, &AtomicBool::new(false))
        .map_err(|e| Failure::Job(e.to_string()))?;
    let run_with = outcome.duration().as_secs_f64();
    let record = outcome
        .checkpoints
        .history
        .iter()
        .find(|r| r.id.0 == request)
        .ok_or_else(|| Failure::Job("the savepoint is not in the job's history".into()))?;
    let savepoint_s = (op.end_ms.unwrap_or(op.trigger_ms) - op.trigger_ms) as f64 / 1000.0;
    let mb = record.full_size as f64 / 1e6;
    let rate = mb / savepoint_s.max(1e-9);
    // Restore at one more subtask.
    let p2 = p + 1;
    let job = resolve_job(catalog, &with, workload, Some(p2), params, None)?;
    let plan_json = serde_json::to_vec(&job.plan).map_err(|e| Failure::Job(e.to_string()))?;
    let started = Instant::now();
    let restored = jm
        .submit(weir_proto::v1::SubmitJobRequest {
            job: Some(job.spec),
            plan_json,
            restore_path: location,
            ..Default::default()
        })
        .map_err(failed)?;
    await_all_running(jm, restored)?;
    let restore_s = started.elapsed().as_secs_f64();
    let _ = jm.cancel(restored);
    let _ = cluster.wait(restored, &AtomicBool::new(false));
    Ok(bench::SavepointFigures {
        format: format.to_string(),
        run_s: base_s,
        run_with_savepoint_s: run_with,
        savepoint_s,
        savepoint_bytes: record.full_size,
        savepoint_mb_per_s: rate,
        savepoint_mb_per_s_per_subtask: rate / f64::from(p.max(1)),
        task_pause_ms: record.sync_ms,
        throughput_loss_during_savepoint_percent: ((run_with - base_s) / savepoint_s.max(1e-9)
            * 100.0)
            .clamp(0.0, 100.0),
        records_per_s_before: before,
        records_per_s_during: during,
        restore_parallelism: p2,
        restore_to_running_s: restore_s,
        restore_mb_per_s: mb / restore_s.max(1e-9),
    })
}

/// `config` without checkpointing (the benchmark's first run).
fn plain_config(config: &Config) -> Config {
    let mut plain = config.clone();
    plain.checkpoint_interval = None;
    plain
}

fn list_jobs(catalog: &Catalog, json: bool) {
    if json {
        let jobs: Vec<_> = catalog
            .jobs()
            .iter()
            .map(|j| {
                serde_json::json!({
                    "name": j.name,
                    "description": j.description,
                    "params": j.params.iter().map(|p| serde_json::json!({"name": p.name, "help": p.help})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(jobs));
        return;
    }
    for j in catalog.jobs() {
        println!("{:<12} {}", j.name, j.description);
        for p in &j.params {
            println!("    --param {:<10} {}", format!("{}=…", p.name), p.help);
        }
    }
}

/// One job as this binary resolves it, built once: the catalog entry, its parameters parsed
/// once and this process's configuration give the plan and the spec from which every
/// TaskManager rebuilds the same job (their plan fingerprints must match this plan's).
pub(crate) struct ResolvedJob {
    /// The plan the JobMaster schedules.
    pub plan: Plan,
    /// What is submitted: name, parameters, job configuration, parallelism, id to resume.
    pub spec: weir_proto::v1::JobSpec,
}

/// Resolves `job` (see [`ResolvedJob`]); bad names, parameters or settings are usage errors.
pub(crate) fn resolve_job(
    catalog: &Catalog,
    config: &Config,
    job: &str,
    parallelism: Option<u32>,
    params: &[String],
    restore: Option<&str>,
) -> Result<ResolvedJob, Failure> {
    let entry = catalog.get(job).ok_or_else(|| {
        let known: Vec<&str> = catalog.jobs().iter().map(|j| j.name).collect();
        Failure::Usage(format!("unknown job '{job}' (known: {})", known.join(", ")))
    })?;
    let params = Params::parse(job, params)?;
    let def = catalog.build(entry, &params)?;
    let plan = def.plan(ParallelismSettings {
        config_default: config.parallelism_default,
        cli: parallelism,
        config_max_parallelism: config.max_parallelism,
    })?;
    let spec = crate::cluster::job_spec(config, job, parallelism, &params, restore)?;
    Ok(ResolvedJob { plan, spec })
}

/// The `--config` file and `-D` definitions of this command, as arguments for the child
/// processes it starts (`weir local`, `weir drill`).
fn forward_args(config: Option<&Path>, defines: &[String]) -> Vec<String> {
    let mut forward = Vec::new();
    if let Some(file) = config {
        forward.push("--config".to_string());
        forward.push(file.display().to_string());
    }
    for d in defines {
        forward.push("-D".to_string());
        forward.push(d.clone());
    }
    forward
}

/// Checks that `dir` exists or can be created, and that a file can be written in it.
fn check_writable_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("state dir '{}' cannot be created: {e}", dir.display()))?;
    let probe = dir.join(format!(".weir-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe")
        .map_err(|e| format!("state dir '{}' is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// `1536` → `1.5 KiB`.
pub(crate) fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}
