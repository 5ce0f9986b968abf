//! Configuration: Flink-familiar keys from `weir.toml`, overridden by environment variables,
//! overridden by flags (`-D key=value` and dedicated flags such as `--state-backend`).
//!
//! Every key is declared once in [`KEYS`] with its default and parser. An unknown key or a bad
//! value is an error that names the key and where it came from. The environment variable of a
//! key is `WEIR_` + the key upper-cased with `.` and `-` turned into `_`
//! (`parallelism.default` → `WEIR_PARALLELISM_DEFAULT`).
//!
//! Loading goes in three steps:
//!
//! 1. Every key starts at its default, parsed by the key's own parser.
//! 2. The file, then the environment, then the `-D` flags overwrite keys one at a time; each
//!    value is parsed on its own (syntax and ranges of that one key).
//! 3. Rules that span keys are checked last, by the code that owns them
//!    ([`weir_checkpoint::CheckpointConfig::validate`], [`RestartStrategy::validate`]); their
//!    errors still name the key, the value as given and where it came from. A loaded [`Config`]
//!    is valid, so its accessors ([`Config::checkpoint_config`], [`Config::restart_strategy`],
//!    [`Config::checkpoint_storage`]) cannot fail.
//!
//! Values the user did not set and that follow from others are derived, as in Flink:
//! `restart-strategy.type` (exponential-delay with checkpointing, none without),
//! `state.checkpoints.dir` (`<state.backend.rocksdb.localdir>/checkpoints`) and `s3.allow-http`
//! (true iff `s3.endpoint` is `http://…`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use weir_checkpoint::{CheckpointConfig, CheckpointingMode};
use weir_runtime::RestartStrategy;
use weir_storage::{S3Options, StorageUrl};

/// Which keyed-state backend the job uses.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StateBackendKind {
    /// RocksDB: state larger than memory; the default.
    RocksDb,
    /// In-memory hash maps.
    Heap,
}

impl StateBackendKind {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StateBackendKind::RocksDb => "rocksdb",
            StateBackendKind::Heap => "heap",
        }
    }
}

/// `restart-strategy.type`: which restart strategy a job uses (parameters in [`Config`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RestartStrategyType {
    /// Never restart (`none`, `disable`, `off`).
    None,
    /// `fixed-delay` (`fixeddelay`).
    FixedDelay,
    /// `exponential-delay` (`exponential`).
    ExponentialDelay,
    /// `failure-rate` (`failurerate`).
    FailureRate,
}

impl RestartStrategyType {
    /// Parses Flink's spellings, case-insensitively.
    pub fn parse(v: &str) -> Option<Self> {
        Some(match v.trim().to_ascii_lowercase().as_str() {
            "none" | "disable" | "off" => RestartStrategyType::None,
            "fixed-delay" | "fixeddelay" => RestartStrategyType::FixedDelay,
            "exponential-delay" | "exponential" => RestartStrategyType::ExponentialDelay,
            "failure-rate" | "failurerate" => RestartStrategyType::FailureRate,
            _ => return None,
        })
    }
}

/// The resolved configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `parallelism.default`.
    pub parallelism_default: u32,
    /// `pipeline.max-parallelism`: the number of key groups of jobs that set none (`None`: derived
    /// from the largest parallelism, as in Flink).
    pub max_parallelism: Option<u32>,
    /// `state.backend`.
    pub state_backend: StateBackendKind,
    /// `state.backend.rocksdb.localdir`: where RocksDB instances live while a job runs.
    pub state_dir: PathBuf,
    /// `taskmanager.memory.managed.size`: the per-process budget for keyed state (RocksDB block
    /// cache, write buffers and write-back caches).
    pub managed_memory_bytes: u64,
    /// `execution.buffer-timeout.interval`.
    pub buffer_timeout: Duration,
    /// `taskmanager.network.batch-size`: records per batch between tasks.
    pub batch_size: usize,
    /// `taskmanager.network.channel-capacity`: batches a channel holds before backpressure.
    pub channel_capacity: usize,
    /// `metrics.enabled`: count each subtask's records, bytes and backpressure.
    pub metrics_enabled: bool,
    /// `metrics.bind-host` and `metrics.port`: where a TaskManager serves `/metrics`.
    pub metrics_bind: std::net::SocketAddr,
    /// `execution.checkpointing.interval`: `None` when checkpointing is off (unset or 0).
    pub checkpoint_interval: Option<Duration>,
    /// `execution.checkpointing.timeout`.
    pub checkpoint_timeout: Duration,
    /// `execution.checkpointing.min-pause`.
    pub checkpoint_min_pause: Duration,
    /// `execution.checkpointing.max-concurrent-checkpoints`.
    pub checkpoint_max_concurrent: u32,
    /// `execution.checkpointing.tolerable-failed-checkpoints`.
    pub checkpoint_tolerable_failures: u32,
    /// `execution.checkpointing.mode`.
    pub checkpoint_mode: CheckpointingMode,
    /// `state.checkpoints.num-retained`.
    pub checkpoints_num_retained: u32,
    /// `state.checkpoints.dir`; `None`: `<state.backend.rocksdb.localdir>/checkpoints` (see
    /// [`Config::checkpoint_storage`]).
    pub checkpoints_dir: Option<StorageUrl>,
    /// `storage.fault-injection.control-file`: with it, this process's checkpoint storage fails
    /// or slows down while that file says so (recovery drills; `weir_storage::control`).
    pub fault_control_file: Option<PathBuf>,
    /// `execution.checkpointing.savepoint-dir`: where `weir savepoint` / `weir stop` put a
    /// savepoint's folder when they name no target; `None`: they must name one.
    pub savepoint_dir: Option<StorageUrl>,
    /// `restart-strategy.type`; `None`: exponential-delay with checkpointing, none without.
    pub restart_strategy_type: Option<RestartStrategyType>,
    /// `restart-strategy.fixed-delay.attempts` (`u32::MAX`: infinite).
    pub fixed_delay_attempts: u32,
    /// `restart-strategy.fixed-delay.delay`.
    pub fixed_delay: Duration,
    /// `restart-strategy.exponential-delay.initial-backoff`.
    pub exponential_initial_backoff: Duration,
    /// `restart-strategy.exponential-delay.max-backoff`.
    pub exponential_max_backoff: Duration,
    /// `restart-strategy.exponential-delay.backoff-multiplier`.
    pub exponential_multiplier: f64,
    /// `restart-strategy.exponential-delay.reset-backoff-threshold`.
    pub exponential_reset_threshold: Duration,
    /// `restart-strategy.exponential-delay.jitter-factor`.
    pub exponential_jitter: f64,
    /// `restart-strategy.exponential-delay.attempts-before-reset-backoff` (`u32::MAX`: infinite).
    pub exponential_attempts: u32,
    /// `restart-strategy.failure-rate.max-failures-per-interval`.
    pub failure_rate_max_failures: u32,
    /// `restart-strategy.failure-rate.failure-rate-interval`.
    pub failure_rate_interval: Duration,
    /// `restart-strategy.failure-rate.delay`.
    pub failure_rate_delay: Duration,
    /// `s3.endpoint`, `s3.region`, `s3.access-key`, `s3.secret-key` (its `Debug` hides it),
    /// `s3.path.style.access` and `s3.allow-http` (resolved: an unset one follows the endpoint).
    pub s3: S3Options,
    /// `s3.allow-http` as set; `None`: true iff the endpoint is `http://…`.
    s3_allow_http: Option<bool>,
    /// `security.auth.token` (never printed, `Debug` included; never sent with a job).
    pub auth_token: Option<weir_security::Token>,
    /// `security.auth.token-file`.
    pub auth_token_file: Option<PathBuf>,
    /// `security.ssl.enabled`.
    pub ssl_enabled: bool,
    /// `security.ssl.cert`, `security.ssl.key`, `security.ssl.ca`.
    pub ssl_files: (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>),
    /// `security.ssl.mutual`.
    pub ssl_mutual: bool,
    /// `taskmanager.numberOfTaskSlots`.
    pub taskmanager_slots: u32,
    /// `heartbeat.interval`.
    pub heartbeat_interval: Duration,
    /// `heartbeat.timeout`.
    pub heartbeat_timeout: Duration,
    /// `slot.request.timeout`.
    pub slot_request_timeout: Duration,
    /// `jobmanager.scheduler`: adaptive (true) or default.
    pub adaptive_scheduler: bool,
    /// `jobmanager.adaptive-scheduler.resource-stabilization-timeout`.
    pub resource_stabilization_timeout: Duration,
    /// `high-availability.type`: storage (true) or none.
    pub ha_enabled: bool,
    /// `high-availability.storageDir`.
    pub ha_storage_dir: Option<StorageUrl>,
    /// `high-availability.lease.duration`.
    pub ha_lease_duration: Duration,
    /// `high-availability.lease.renew-interval`.
    pub ha_renew_interval: Duration,
}

/// A configuration problem; every message names the key or file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A key no part of Weir reads.
    #[error("unknown configuration key '{key}' (from {origin})")]
    UnknownKey {
        /// The key.
        key: String,
        /// Where it came from.
        origin: String,
    },
    /// A value that does not parse or is out of range.
    #[error("configuration key '{key}' (from {origin}): bad value '{value}': {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// Where it came from.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A configuration file that cannot be read or parsed.
    #[error("configuration file '{path}': {detail}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// `-D` without `=`.
    #[error("malformed -D '{0}': expected key=value")]
    MalformedOverride(String),
}

/// One configuration key.
pub struct KeySpec {
    /// The key.
    pub key: &'static str,
    /// Its default value, in configuration syntax.
    pub default: fn() -> String,
    /// One line of help.
    pub help: &'static str,
    apply: fn(&mut Config, &str) -> Result<(), String>,
}

/// Every key Weir reads.
pub static KEYS: &[KeySpec] = &[
    KeySpec {
        key: "parallelism.default",
        default: || "1".into(),
        help: "parallelism of operators when neither the operator, the job nor -p sets one",
        apply: |c, v| {
            c.parallelism_default = parse_positive(v)? as u32;
            Ok(())
        },
    },
    KeySpec {
        key: "pipeline.max-parallelism",
        default: || "auto".into(),
        help: "number of key groups when the job sets none: 1..32768, or auto (from the largest parallelism)",
        apply: |c, v| {
            c.max_parallelism = match v.trim() {
                "auto" | "-1" => None,
                other => {
                    let n = parse_positive(other)?;
                    if n > 32768 {
                        return Err("must be at most 32768".into());
                    }
                    Some(n as u32)
                }
            };
            Ok(())
        },
    },
    KeySpec {
        key: "state.backend",
        default: || "rocksdb".into(),
        help: "keyed state backend: rocksdb | heap",
        apply: |c, v| {
            c.state_backend = match v.trim().to_ascii_lowercase().as_str() {
                "rocksdb" => StateBackendKind::RocksDb,
                "heap" | "hashmap" => StateBackendKind::Heap,
                _ => return Err("expected rocksdb or heap".into()),
            };
            Ok(())
        },
    },
    KeySpec {
        key: "state.backend.rocksdb.localdir",
        default: || std::env::temp_dir().join("weir-state").display().to_string(),
        help: "directory for the RocksDB instances of running jobs",
        apply: |c, v| {
            if v.trim().is_empty() {
                return Err("must not be empty".into());
            }
            c.state_dir = PathBuf::from(v.trim());
            Ok(())
        },
    },
    KeySpec {
        key: "taskmanager.memory.managed.size",
        default: || "512mb".into(),
        help: "memory budget of keyed state per process (e.g. 256mb, 1gb)",
        apply: |c, v| {
            let bytes = parse_memory_size(v)?;
            if bytes < 16 << 20 {
                return Err("must be at least 16mb".into());
            }
            c.managed_memory_bytes = bytes;
            Ok(())
        },
    },
    KeySpec {
        key: "execution.buffer-timeout.interval",
        default: || "100ms".into(),
        help: "longest time a record waits in an output buffer (e.g. 100ms, 1s)",
        apply: |c, v| {
            c.buffer_timeout = parse_duration(v)?;
            if c.buffer_timeout.is_zero() {
                return Err("must be above 0".into());
            }
            Ok(())
        },
    },
    KeySpec {
        key: "metrics.enabled",
        default: || "true".into(),
        help: "count each subtask's records in/out, bytes and backpressured time (per batch) for /metrics, the web UI and weir list",
        apply: |c, v| {
            c.metrics_enabled = parse_bool(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "metrics.bind-host",
        default: || "127.0.0.1".into(),
        help: "the address a TaskManager serves its Prometheus /metrics endpoint on (the JobManager serves /metrics on its REST port)",
        apply: |c, v| {
            let ip: std::net::IpAddr = v
                .trim()
                .parse()
                .map_err(|_| "expected an IP address such as 127.0.0.1 or ::1".to_string())?;
            c.metrics_bind.set_ip(ip);
            Ok(())
        },
    },
    KeySpec {
        key: "metrics.port",
        default: || "0".into(),
        help: "the port of a TaskManager's /metrics endpoint (0: one the OS picks; the TaskManager logs it and the JobManager's /taskmanagers lists it)",
        apply: |c, v| {
            let port: u16 = v
                .trim()
                .parse()
                .map_err(|_| "expected a port from 0 to 65535".to_string())?;
            c.metrics_bind.set_port(port);
            Ok(())
        },
    },
    KeySpec {
        key: "taskmanager.network.batch-size",
        default: || "1024".into(),
        help: "records per batch between tasks",
        apply: |c, v| {
            c.batch_size = parse_positive(v)? as usize;
            Ok(())
        },
    },
    KeySpec {
        key: "taskmanager.network.channel-capacity",
        default: || "8".into(),
        help: "batches a channel between two subtasks holds before its producer blocks",
        apply: |c, v| {
            c.channel_capacity = parse_positive(v)? as usize;
            Ok(())
        },
    },
    KeySpec {
        key: "execution.checkpointing.interval",
        default: || "none".into(),
        help: "time between periodic checkpoints (e.g. 10s); none or 0: checkpointing off",
        apply: |c, v| {
            c.checkpoint_interval = match v.trim().to_ascii_lowercase().as_str() {
                "" | "none" | "off" | "disabled" => None,
                other => Some(parse_duration(other)?).filter(|d| !d.is_zero()),
            };
            Ok(())
        },
    },
    KeySpec {
        key: "execution.checkpointing.timeout",
        default: || "10min".into(),
        help: "a checkpoint not complete this long after its trigger is aborted",
        apply: |c, v| {
            c.checkpoint_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "execution.checkpointing.min-pause",
        default: || "0ms".into(),
        help: "least time between the end of one checkpoint and the start of the next",
        apply: |c, v| {
            c.checkpoint_min_pause = parse_duration(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "execution.checkpointing.max-concurrent-checkpoints",
        default: || "1".into(),
        help: "most checkpoints in progress at once",
        apply: |c, v| {
            c.checkpoint_max_concurrent = parse_positive(v)? as u32;
            Ok(())
        },
    },
    KeySpec {
        key: "execution.checkpointing.tolerable-failed-checkpoints",
        default: || "0".into(),
        help: "consecutive failed checkpoints tolerated; one more fails the job",
        apply: |c, v| {
            c.checkpoint_tolerable_failures = parse_count(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "execution.checkpointing.mode",
        default: || "exactly_once".into(),
        help: "exactly_once (aligned barriers) | at_least_once",
        apply: |c, v| {
            c.checkpoint_mode = match v.trim().to_ascii_lowercase().replace('-', "_").as_str() {
                "exactly_once" => CheckpointingMode::ExactlyOnce,
                "at_least_once" => CheckpointingMode::AtLeastOnce,
                _ => return Err("expected exactly_once or at_least_once".into()),
            };
            Ok(())
        },
    },
    KeySpec {
        key: "state.checkpoints.num-retained",
        default: || "1".into(),
        help: "completed checkpoints kept",
        apply: |c, v| {
            c.checkpoints_num_retained = parse_positive(v)? as u32;
            Ok(())
        },
    },
    KeySpec {
        key: "state.checkpoints.dir",
        default: || "auto".into(),
        help: "where checkpoints are stored: file:///abs/dir, /abs/dir, memory://name or s3://bucket/prefix (auto: <state.backend.rocksdb.localdir>/checkpoints)",
        apply: |c, v| {
            c.checkpoints_dir = match v.trim() {
                "" | "auto" => None,
                url => Some(StorageUrl::parse(url).map_err(|e| e.to_string())?),
            };
            Ok(())
        },
    },
    KeySpec {
        key: "storage.fault-injection.control-file",
        default: || "none".into(),
        help: "for recovery drills only: an absolute path whose `errors <rate>` and `delay <duration>` lines make this process's checkpoint storage requests fail or wait while they are there (none: never)",
        apply: |c, v| {
            c.fault_control_file = match v.trim() {
                "" | "none" => None,
                path if Path::new(path).is_absolute() => Some(PathBuf::from(path)),
                _ => return Err("must be an absolute path".into()),
            };
            Ok(())
        },
    },
    KeySpec {
        key: "execution.checkpointing.savepoint-dir",
        default: || "none".into(),
        help: "where savepoints go when weir savepoint / weir stop name no target: file:///abs/dir, /abs/dir, memory://name or s3://bucket/prefix (none: a target must be named)",
        apply: |c, v| {
            c.savepoint_dir = match v.trim() {
                "" | "none" => None,
                url => Some(StorageUrl::parse(url).map_err(|e| e.to_string())?),
            };
            Ok(())
        },
    },
    KeySpec {
        key: "restart-strategy.type",
        default: || "auto".into(),
        help: "none | fixed-delay | exponential-delay | failure-rate (auto: exponential-delay with checkpointing, else none)",
        apply: |c, v| {
            c.restart_strategy_type = match v.trim() {
                "" | "auto" => None,
                other => Some(RestartStrategyType::parse(other).ok_or(
                    "expected none, fixed-delay, exponential-delay or failure-rate",
                )?),
            };
            Ok(())
        },
    },
    KeySpec {
        key: "restart-strategy.fixed-delay.attempts",
        default: || "1".into(),
        help: "fixed-delay: restarts before the job fails (or infinite)",
        apply: |c, v| {
            c.fixed_delay_attempts = parse_count(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "restart-strategy.fixed-delay.delay",
        default: || "1s".into(),
        help: "fixed-delay: wait before each restart",
        apply: |c, v| {
            c.fixed_delay = parse_duration(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "restart-strategy.exponential-delay.initial-backoff",
        default: || "1s".into(),
        help: "exponential-delay: wait before the first restart",
        apply: |c, v| {
            c.exponential_initial_backoff = parse_duration(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "restart-strategy.exponential-delay.max-backoff",
        default: || "1min".into(),
        help: "exponential-delay: longest wait",
        apply: |c, v| {
            c.exponential_max_backoff = parse_duration(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "restart-strategy.exponential-delay.backoff-multiplier",
        default: || "1.5".into(),
        help: "exponential-delay: growth of the wait per restart (above 1)",
        apply: |c, v| {
            c.exponential_multiplier = parse_float(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "restart-strategy.exponential-delay.reset-backoff-threshold",
        default: || "1h".into(),
        help: "exponential-delay: running this long without a failure resets the wait",
        apply: |c, v| {
            c.exponential_reset_threshold = parse_duration(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "restart-strategy.exponential-delay.jitter-factor",
        default: || "0.1".into(),
        help: "exponential-delay: each wait moves randomly by up to this fraction (0..1)",
        apply: |c, v| {
            c.exponential_jitter = parse_float(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "restart-strategy.exponential-delay.attempts-before-reset-backoff",
        default: || "infinite".into(),
        help: "exponential-delay: restarts between two resets before the job fails (or infinite)",
        apply: |c, v| {
            c.exponential_attempts = parse_count(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "restart-strategy.failure-rate.max-failures-per-interval",
        default: || "1".into(),
        help: "failure-rate: restarts allowed within one interval; one more fails the job",
        apply: |c, v| {
            c.failure_rate_max_failures = parse_count(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "restart-strategy.failure-rate.failure-rate-interval",
        default: || "1min".into(),
        help: "failure-rate: the sliding window failures are counted in",
        apply: |c, v| {
            c.failure_rate_interval = parse_duration(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "restart-strategy.failure-rate.delay",
        default: || "1s".into(),
        help: "failure-rate: wait before each restart",
        apply: |c, v| {
            c.failure_rate_delay = parse_duration(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "s3.endpoint",
        default: String::new,
        help: "S3-compatible server, e.g. http://127.0.0.1:9000 (unset: AWS, from the region)",
        apply: |c, v| {
            let v = v.trim();
            c.s3.endpoint = if v.is_empty() {
                None
            } else {
                let lower = v.to_ascii_lowercase();
                let host = lower
                    .strip_prefix("http://")
                    .or_else(|| lower.strip_prefix("https://"));
                if host.is_none_or(|h| h.trim_matches('/').is_empty()) {
                    return Err("expected http://host:port or https://host".into());
                }
                Some(v.trim_end_matches('/').to_string())
            };
            c.resolve_s3_allow_http();
            Ok(())
        },
    },
    KeySpec {
        key: "s3.region",
        default: || "us-east-1".into(),
        help: "S3 region (S3-compatible servers usually accept any)",
        apply: |c, v| {
            if v.trim().is_empty() {
                return Err("must not be empty".into());
            }
            c.s3.region = v.trim().to_string();
            Ok(())
        },
    },
    KeySpec {
        key: "s3.access-key",
        default: String::new,
        help: "S3 access key id (unset: the environment's AWS credentials)",
        apply: |c, v| {
            c.s3.access_key_id = Some(v.trim().to_string()).filter(|k| !k.is_empty());
            Ok(())
        },
    },
    KeySpec {
        key: "s3.secret-key",
        default: String::new,
        help: "S3 secret access key (never printed)",
        apply: |c, v| {
            c.s3.secret_access_key = Some(v.trim().to_string()).filter(|k| !k.is_empty());
            Ok(())
        },
    },
    KeySpec {
        key: "s3.path.style.access",
        default: || "false".into(),
        help: "path-style requests (endpoint/bucket/key), as most S3-compatible servers want",
        apply: |c, v| {
            c.s3.path_style = parse_bool(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "s3.allow-http",
        default: || "auto".into(),
        help: "allow a plain http:// endpoint (auto: true iff s3.endpoint is http://)",
        apply: |c, v| {
            c.s3_allow_http = match v.trim() {
                "" | "auto" => None,
                other => Some(parse_bool(other)?),
            };
            c.resolve_s3_allow_http();
            Ok(())
        },
    },
    KeySpec {
        key: "security.auth.token",
        default: || "(unset)".into(),
        help: "the cluster's shared secret (16-512 printable characters); every RPC, REST call, data-plane stream and /metrics scrape must present it; weir config prints it as ******",
        apply: |c, v| {
            c.auth_token = match v.trim() {
                "" | "(unset)" => None,
                t => Some(
                    weir_security::Token::new(t, "security.auth.token")
                        .map_err(|e| e.to_string())?,
                ),
            };
            Ok(())
        },
    },
    KeySpec {
        key: "security.auth.token-file",
        default: || "(unset)".into(),
        help: "a file holding the token (read at start); unset with no security.auth.token: ~/.config/weir/auth-token, created with a random token (mode 0600) by the first Weir process that needs it",
        apply: |c, v| {
            c.auth_token_file = match v.trim() {
                "" | "(unset)" => None,
                p => Some(PathBuf::from(p)),
            };
            Ok(())
        },
    },
    KeySpec {
        key: "security.ssl.enabled",
        default: || "false".into(),
        help: "TLS on every port (RPC, REST and the web UI, the data plane, /metrics); needs security.ssl.cert, .key and .ca",
        apply: |c, v| {
            c.ssl_enabled = parse_bool(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "security.ssl.cert",
        default: || "(unset)".into(),
        help: "this process's certificate chain (PEM); its names must include the host peers dial (127.0.0.1, localhost)",
        apply: |c, v| {
            c.ssl_files.0 = match v.trim() {
                "" | "(unset)" => None,
                p => Some(PathBuf::from(p)),
            };
            Ok(())
        },
    },
    KeySpec {
        key: "security.ssl.key",
        default: || "(unset)".into(),
        help: "this process's private key (PEM)",
        apply: |c, v| {
            c.ssl_files.1 = match v.trim() {
                "" | "(unset)" => None,
                p => Some(PathBuf::from(p)),
            };
            Ok(())
        },
    },
    KeySpec {
        key: "security.ssl.ca",
        default: || "(unset)".into(),
        help: "the CA (PEM) every peer's certificate must chain to; clients trust only it",
        apply: |c, v| {
            c.ssl_files.2 = match v.trim() {
                "" | "(unset)" => None,
                p => Some(PathBuf::from(p)),
            };
            Ok(())
        },
    },
    KeySpec {
        key: "security.ssl.mutual",
        default: || "false".into(),
        help: "mutual TLS: servers also require a client certificate from security.ssl.ca, and clients present theirs",
        apply: |c, v| {
            c.ssl_mutual = parse_bool(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "taskmanager.numberOfTaskSlots",
        default: || "2".into(),
        help: "slots per TaskManager (weir taskmanager --slots, weir local --slots)",
        apply: |c, v| {
            c.taskmanager_slots = parse_positive(v)? as u32;
            Ok(())
        },
    },
    KeySpec {
        key: "heartbeat.interval",
        default: || "200ms".into(),
        help: "how often a TaskManager sends a heartbeat to the JobManager",
        apply: |c, v| {
            c.heartbeat_interval = parse_nonzero_duration(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "heartbeat.timeout",
        default: || "2s".into(),
        help: "a TaskManager silent this long is declared lost (a killed one is noticed at once, by its broken connection)",
        apply: |c, v| {
            c.heartbeat_timeout = parse_nonzero_duration(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "jobmanager.scheduler",
        default: || "default".into(),
        help: "default (a job runs at its parallelism or waits) or adaptive (a job short of slots after slot.request.timeout runs at the parallelism the free slots allow, and scales back up when slots return)",
        apply: |c, v| {
            c.adaptive_scheduler = match v.trim() {
                "default" => false,
                "adaptive" => true,
                _ => return Err("expected default or adaptive".into()),
            };
            Ok(())
        },
    },
    KeySpec {
        key: "high-availability.type",
        default: || "none".into(),
        help: "none, or storage: JobManagers elect a leader through epoch leases in high-availability.storageDir, and a standby takes over the running jobs when the leader dies",
        apply: |c, v| {
            c.ha_enabled = match v.trim() {
                "none" | "NONE" => false,
                "storage" => true,
                _ => return Err("expected none or storage".into()),
            };
            Ok(())
        },
    },
    KeySpec {
        key: "high-availability.storageDir",
        default: || "none".into(),
        help: "where leader leases, job records and the leader's address live: file:///abs/dir, /abs/dir or s3://bucket/prefix (shared by every JobManager of the cluster)",
        apply: |c, v| {
            c.ha_storage_dir = match v.trim() {
                "" | "none" => None,
                url => Some(StorageUrl::parse(url).map_err(|e| e.to_string())?),
            };
            Ok(())
        },
    },
    KeySpec {
        key: "high-availability.lease.duration",
        default: || "3s".into(),
        help: "a leader that has not renewed its lease for this long is replaced (and stops acting itself)",
        apply: |c, v| {
            c.ha_lease_duration = parse_nonzero_duration(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "high-availability.lease.renew-interval",
        default: || "500ms".into(),
        help: "how often the leader renews its lease and a standby tries to take over; less than high-availability.lease.duration",
        apply: |c, v| {
            c.ha_renew_interval = parse_nonzero_duration(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "jobmanager.adaptive-scheduler.resource-stabilization-timeout",
        default: || "10s".into(),
        help: "with the adaptive scheduler: how long enough slots must stay available before a job scales back up",
        apply: |c, v| {
            c.resource_stabilization_timeout = parse_nonzero_duration(v)?;
            Ok(())
        },
    },
    KeySpec {
        key: "slot.request.timeout",
        default: || "30s".into(),
        help: "how long a job waits for enough free slots before its (re)deployment fails",
        apply: |c, v| {
            c.slot_request_timeout = parse_nonzero_duration(v)?;
            Ok(())
        },
    },
];

fn parse_nonzero_duration(v: &str) -> Result<Duration, String> {
    let d = parse_duration(v)?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

/// Keys whose values are secrets: printed as `******` wherever a value would be shown.
const SECRET_KEYS: &[&str] = &["s3.secret-key", "security.auth.token"];

/// Keys that describe the machine a process runs on (or the cluster's JobManagers), not the
/// job: never sent with a job.
const MACHINE_KEYS: &[&str] = &[
    "state.backend.rocksdb.localdir",
    "taskmanager.memory.managed.size",
    "taskmanager.numberOfTaskSlots",
    "metrics.bind-host",
    "metrics.port",
    "security.auth.token",
    "security.auth.token-file",
    "security.ssl.enabled",
    "security.ssl.cert",
    "security.ssl.key",
    "security.ssl.ca",
    "security.ssl.mutual",
    // Credentials: each process reads its own from its configuration or environment; they
    // never travel with a job (specs, deployments, the HA folder's job records).
    "s3.access-key",
    "s3.secret-key",
    "high-availability.type",
    "high-availability.storageDir",
    "high-availability.lease.duration",
    "high-availability.lease.renew-interval",
    "storage.fault-injection.control-file",
];

fn parse_positive(v: &str) -> Result<u64, String> {
    let n: u64 = v.trim().parse().map_err(|e| format!("{e}"))?;
    if n == 0 || n > u64::from(u32::MAX) {
        return Err("must be between 1 and 4294967295".into());
    }
    Ok(n)
}

/// A count from 0, or `infinite` (`u32::MAX`, Flink's `Integer.MAX_VALUE`).
fn parse_count(v: &str) -> Result<u32, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "infinite" | "unlimited" => Ok(u32::MAX),
        n => n
            .parse()
            .map_err(|_| "expected a whole number from 0 to 4294967295, or infinite".into()),
    }
}

fn parse_float(v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(f),
        _ => Err("expected a number such as 1.5".into()),
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// A duration in configuration syntax, in the largest unit that divides it (`1h`, `10min`,
/// `1s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0ms".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}min", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

fn format_count(n: u32) -> String {
    if n == u32::MAX {
        "infinite".into()
    } else {
        n.to_string()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Parses a memory size: a number of bytes, or a number with `kb`, `mb`, `gb` (powers of 1024;
/// `k`, `m`, `g`, `kib`, `mib`, `gib` too).
pub fn parse_memory_size(v: &str) -> Result<u64, String> {
    let s = v.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a size such as 256mb".to_string())?;
    let mult: u64 = match unit.trim() {
        "" | "b" | "bytes" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit '{other}' (use b, kb, mb, gb)")),
    };
    n.checked_mul(mult).ok_or_else(|| "too large".to_string())
}

/// Parses a duration: a number with `ms`, `s`, `min` or `h` (a bare number is milliseconds,
/// as in Flink).
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let s = v.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a duration such as 100ms or 1s".to_string())?;
    let secs_per_unit = |per: u64| {
        n.checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| "too large".to_string())
    };
    Ok(match unit.trim() {
        "" | "ms" | "milli" | "millis" => Duration::from_millis(n),
        "s" | "sec" | "secs" | "second" | "seconds" => Duration::from_secs(n),
        "min" | "m" | "minute" | "minutes" => secs_per_unit(60)?,
        "h" | "hour" | "hours" => secs_per_unit(3600)?,
        other => return Err(format!("unknown time unit '{other}' (use ms, s, min, h)")),
    })
}

/// The environment variable that overrides `key`.
pub fn env_var_for(key: &str) -> String {
    format!("WEIR_{}", key.to_ascii_uppercase().replace(['.', '-'], "_"))
}

impl Config {
    fn defaults() -> Config {
        let mut c = Config {
            parallelism_default: 1,
            max_parallelism: None,
            state_backend: StateBackendKind::RocksDb,
            state_dir: PathBuf::new(),
            managed_memory_bytes: 0,
            buffer_timeout: Duration::ZERO,
            batch_size: 0,
            channel_capacity: 0,
            metrics_enabled: true,
            metrics_bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            checkpoint_interval: None,
            checkpoint_timeout: Duration::ZERO,
            checkpoint_min_pause: Duration::ZERO,
            checkpoint_max_concurrent: 0,
            checkpoint_tolerable_failures: 0,
            checkpoint_mode: CheckpointingMode::ExactlyOnce,
            checkpoints_num_retained: 0,
            checkpoints_dir: None,
            fault_control_file: None,
            savepoint_dir: None,
            restart_strategy_type: None,
            fixed_delay_attempts: 0,
            fixed_delay: Duration::ZERO,
            exponential_initial_backoff: Duration::ZERO,
            exponential_max_backoff: Duration::ZERO,
            exponential_multiplier: 0.0,
            exponential_reset_threshold: Duration::ZERO,
            exponential_jitter: 0.0,
            exponential_attempts: 0,
            failure_rate_max_failures: 0,
            failure_rate_interval: Duration::ZERO,
            failure_rate_delay: Duration::ZERO,
            s3: S3Options::default(),
            s3_allow_http: None,
            auth_token: None,
            auth_token_file: None,
            ssl_enabled: false,
            ssl_files: (None, None, None),
            ssl_mutual: false,
            taskmanager_slots: 2,
            heartbeat_interval: Duration::from_millis(200),
            heartbeat_timeout: Duration::from_secs(2),
            slot_request_timeout: Duration::from_secs(30),
            adaptive_scheduler: false,
            resource_stabilization_timeout: Duration::from_secs(10),
            ha_enabled: false,
            ha_storage_dir: None,
            ha_lease_duration: Duration::ZERO,
            ha_renew_interval: Duration::ZERO,
        };
        for k in KEYS {
            (k.apply)(&mut c, &(k.default)()).expect("defaults parse");
        }
        c
    }

    /// Every key with its effective value and help, in declaration order.
    pub fn describe(&self) -> Vec<(&'static str, String, &'static str)> {
        KEYS.iter()
            .map(|k| (k.key, self.value_of(k.key), k.help))
            .collect()
    }

    fn value_of(&self, key: &str) -> String {
        match key {
            "parallelism.default" => self.parallelism_default.to_string(),
            "pipeline.max-parallelism" => self
                .max_parallelism
                .map_or("auto".into(), |m| m.to_string()),
            "state.backend" => self.state_backend.as_str().to_string(),
            "state.backend.rocksdb.localdir" => self.state_dir.display().to_string(),
            "taskmanager.memory.managed.size" => format!("{}mb", self.managed_memory_bytes >> 20),
            "execution.buffer-timeout.interval" => format!("{}ms", self.buffer_timeout.as_millis()),
            "taskmanager.network.batch-size" => self.batch_size.to_string(),
            "taskmanager.network.channel-capacity" => self.channel_capacity.to_string(),
            "metrics.enabled" => self.metrics_enabled.to_string(),
            "metrics.bind-host" => self.metrics_bind.ip().to_string(),
            "metrics.port" => self.metrics_bind.port().to_string(),
            "execution.checkpointing.interval" => self
                .checkpoint_interval
                .map_or("none".into(), format_duration),
            "execution.checkpointing.timeout" => format_duration(self.checkpoint_timeout),
            "execution.checkpointing.min-pause" => format_duration(self.checkpoint_min_pause),
            "execution.checkpointing.max-concurrent-checkpoints" => {
                self.checkpoint_max_concurrent.to_string()
            }
            "execution.checkpointing.tolerable-failed-checkpoints" => {
                self.checkpoint_tolerable_failures.to_string()
            }
            "execution.checkpointing.mode" => match self.checkpoint_mode {
                CheckpointingMode::ExactlyOnce => "exactly_once".into(),
                CheckpointingMode::AtLeastOnce => "at_least_once".into(),
            },
            "state.checkpoints.num-retained" => self.checkpoints_num_retained.to_string(),
            "state.checkpoints.dir" => self.checkpoint_storage().0.to_string(),
            "storage.fault-injection.control-file" => self
                .fault_control_file
                .as_ref()
                .map_or_else(|| "none".into(), |p| p.display().to_string()),
            "execution.checkpointing.savepoint-dir" => self
                .savepoint_dir
                .as_ref()
                .map_or_else(|| "none".into(), ToString::to_string),
            "restart-strategy.type" => self.restart_strategy().name().into(),
            "restart-strategy.fixed-delay.attempts" => format_count(self.fixed_delay_attempts),
            "restart-strategy.fixed-delay.delay" => format_duration(self.fixed_delay),
            "restart-strategy.exponential-delay.initial-backoff" => {
                format_duration(self.exponential_initial_backoff)
            }
            "restart-strategy.exponential-delay.max-backoff" => {
                format_duration(self.exponential_max_backoff)
            }
            "restart-strategy.exponential-delay.backoff-multiplier" => {
                self.exponential_multiplier.to_string()
            }
            "restart-strategy.exponential-delay.reset-backoff-threshold" => {
                format_duration(self.exponential_reset_threshold)
            }
            "restart-strategy.exponential-delay.jitter-factor" => {
                self.exponential_jitter.to_string()
            }
            "restart-strategy.exponential-delay.attempts-before-reset-backoff" => {
                format_count(self.exponential_attempts)
            }
            "restart-strategy.failure-rate.max-failures-per-interval" => {
                format_count(self.failure_rate_max_failures)
            }
            "restart-strategy.failure-rate.failure-rate-interval" => {
                format_duration(self.failure_rate_interval)
            }
            "restart-strategy.failure-rate.delay" => format_duration(self.failure_rate_delay),
            "s3.endpoint" => self.s3.endpoint.clone().unwrap_or_else(|| "(unset)".into()),
            "s3.region" => self.s3.region.clone(),
            "s3.access-key" => self
                .s3
                .access_key_id
                .clone()
                .unwrap_or_else(|| "(unset)".into()),
            "s3.secret-key" => match self.s3.secret_access_key {
                Some(_) => "******".into(),
                None => "(unset)".into(),
            },
            "s3.path.style.access" => self.s3.path_style.to_string(),
            "security.auth.token" => match self.auth_token {
                Some(_) => "******".into(),
                None => "(unset)".into(),
            },
            "security.ssl.enabled" => self.ssl_enabled.to_string(),
            "security.ssl.mutual" => self.ssl_mutual.to_string(),
            "security.ssl.cert" => self
                .ssl_files
                .0
                .as_ref()
                .map_or("(unset)".into(), |p| p.display().to_string()),
            "security.ssl.key" => self
                .ssl_files
                .1
                .as_ref()
                .map_or("(unset)".into(), |p| p.display().to_string()),
            "security.ssl.ca" => self
                .ssl_files
                .2
                .as_ref()
                .map_or("(unset)".into(), |p| p.display().to_string()),
            "security.auth.token-file" => self
                .auth_token_file
                .as_ref()
                .map_or("(unset)".into(), |p| p.display().to_string()),
            "s3.allow-http" => self.s3.allow_http.to_string(),
            "taskmanager.numberOfTaskSlots" => self.taskmanager_slots.to_string(),
            "heartbeat.interval" => format_duration(self.heartbeat_interval),
            "heartbeat.timeout" => format_duration(self.heartbeat_timeout),
            "slot.request.timeout" => format_duration(self.slot_request_timeout),
            "high-availability.type" => if self.ha_enabled { "storage" } else { "none" }.into(),
            "high-availability.storageDir" => self
                .ha_storage_dir
                .as_ref()
                .map_or_else(|| "none".to_string(), ToString::to_string),
            "high-availability.lease.duration" => format_duration(self.ha_lease_duration),
            "high-availability.lease.renew-interval" => format_duration(self.ha_renew_interval),
            "jobmanager.scheduler" => if self.adaptive_scheduler {
                "adaptive"
            } else {
                "default"
            }
            .into(),
            "jobmanager.adaptive-scheduler.resource-stabilization-timeout" => {
                format_duration(self.resource_stabilization_timeout)
            }
            other => unreachable!("key {other} is declared in KEYS but has no value_of arm"),
        }
    }

    fn set(&mut self, key: &str, value: &str, origin: &str) -> Result<(), ConfigError> {
        let spec = KEYS
            .iter()
            .find(|k| k.key == key)
            .ok_or_else(|| ConfigError::UnknownKey {
                key: key.to_string(),
                origin: origin.to_string(),
            })?;
        (spec.apply)(self, value).map_err(|reason| ConfigError::BadValue {
            key: key.to_string(),
            // A secret that does not parse is still a secret: never repeat it.
            value: if SECRET_KEYS.contains(&key) {
                "******".to_string()
            } else {
                value.to_string()
            },
            origin: origin.to_string(),
            reason,
        })
    }

    /// Loads the configuration: defaults, then `file` (or `./weir.toml` when it exists and no
    /// file is named), then the environment, then `overrides` (`-D key=value`, in order).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let mut c = Config::defaults();
        // What the user set: key → (value as given, origin), for errors found after parsing.
        let mut given: HashMap<String, (String, String)> = HashMap::new();
        let implicit = PathBuf::from("weir.toml");
        let file = match file {
            Some(f) => Some(f.to_path_buf()),
            None => implicit.is_file().then_some(implicit),
        };
        if let Some(path) = file {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
                path: origin.clone(),
                detail: e.to_string(),
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::File {
                        path: origin.clone(),
                        detail: e.message().to_string(),
                    })?;
            let mut flat = Vec::new();
            flatten("", &toml::Value::Table(table), &mut flat);
            for (k, v) in flat {
                c.set(&k, &v, &origin)?;
                given.insert(k, (v, origin.clone()));
            }
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        for spec in KEYS {
            let var = env_var_for(spec.key);
            if let Some((_, v)) = env.iter().find(|(k, _)| *k == var) {
                let origin = format!("environment variable {var}");
                c.set(spec.key, v, &origin)?;
                given.insert(spec.key.to_string(), (v.clone(), origin));
            }
        }
        for o in overrides {
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| ConfigError::MalformedOverride(o.clone()))?;
            let origin = format!("-D {}", k.trim());
            c.set(k.trim(), v.trim(), &origin)?;
            given.insert(k.trim().to_string(), (v.trim().to_string(), origin));
        }
        c.check_across_keys(&given)?;
        Ok(c)
    }

    /// The cluster's token: `security.auth.token`, else `security.auth.token-file`, else the
    /// user's default file (created with a random token when missing).
    pub fn auth_token(&self) -> Result<weir_security::Token, weir_security::SecurityError> {
        weir_security::resolve(
            self.auth_token.as_ref().map(|t| t.expose()),
            self.auth_token_file.as_deref(),
        )
    }

    /// TLS when `security.ssl.enabled`, loaded from its files; an error names the key or file.
    pub fn tls(&self) -> Result<Option<weir_security::Tls>, String> {
        if !self.ssl_enabled {
            return Ok(None);
        }
        let need = |p: &Option<PathBuf>, key: &str| {
            p.clone()
                .ok_or_else(|| format!("security.ssl.enabled is true but {key} is not set"))
        };
        let files = weir_security::TlsFiles {
            cert: need(&self.ssl_files.0, "security.ssl.cert")?,
            key: need(&self.ssl_files.1, "security.ssl.key")?,
            ca: need(&self.ssl_files.2, "security.ssl.ca")?,
            mutual: self.ssl_mutual,
        };
        weir_security::Tls::load(&files)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// The job's configuration as `key → value`, sent with a submitted job so the JobMaster
    /// and every TaskManager use the submitter's settings. Machine-local keys (state
    /// directory, memory, slots), credentials (S3 keys, the cluster's token) and unset keys are
    /// left out: every process uses its own.
    pub fn job_config(&self) -> std::collections::BTreeMap<String, String> {
        KEYS.iter()
            .filter(|k| !MACHINE_KEYS.contains(&k.key))
            .filter_map(|k| {
                let v = match k.key {
                    "s3.secret-key" => self.s3.secret_access_key.clone()?,
                    // As set: unset follows the receiver's view of the endpoint, as here.
                    "s3.allow-http" => self
                        .s3_allow_http
                        .map_or_else(|| "auto".to_string(), |b| b.to_string()),
                    other => self.value_of(other),
                };
                (v != "(unset)").then(|| (k.key.to_string(), v))
            })
            .collect()
    }

    /// Applies a submitted job's configuration (from [`Config::job_config`]) over this
    /// process's configuration; an unknown key or bad value names the key.
    pub fn with_job_config(
        &self,
        job: &std::collections::BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut c = self.clone();
        for (k, v) in job {
            if MACHINE_KEYS.contains(&k.as_str()) {
                continue;
            }
            c.set(k, v, "the job's configuration")?;
        }
        c.check_across_keys(&HashMap::new())?;
        Ok(c)
    }

    /// Step 3 of loading: the rules that span keys, checked by the code that owns them. An
    /// error names the key, its value as given (or its default) and where it came from.
    fn check_across_keys(
        &self,
        given: &HashMap<String, (String, String)>,
    ) -> Result<(), ConfigError> {
        let bad = |key: &str, expected: &str| {
            let (value, origin) = given.get(key).cloned().unwrap_or_else(|| {
                let default = KEYS.iter().find(|k| k.key == key).map(|k| (k.default)());
                (default.unwrap_or_default(), "default".into())
            });
            ConfigError::BadValue {
                key: key.to_string(),
                value,
                origin,
                reason: format!("expected {expected}"),
            }
        };
        self.checkpoint_config_unchecked()
            .validate()
            .map_err(|e| bad(e.key, e.expected))?;
        // Every strategy's parameters are checked, used or not: a bad value is bad.
        for strategy in [
            self.fixed_delay_strategy(),
            self.exponential_delay_strategy(),
            self.failure_rate_strategy(),
        ] {
            strategy.validate().map_err(|e| bad(e.key, e.expected))?;
        }
        Ok(())
    }

    /// The checkpointing configuration; `None` when checkpointing is off
    /// (`execution.checkpointing.interval` unset or 0).
    pub fn checkpoint_config(&self) -> Option<CheckpointConfig> {
        self.checkpoint_interval
            .is_some()
            .then(|| self.checkpoint_config_unchecked())
    }

    fn checkpoint_config_unchecked(&self) -> CheckpointConfig {
        CheckpointConfig {
            interval_ms: self.checkpoint_interval.map_or(0, millis),
            timeout_ms: millis(self.checkpoint_timeout),
            min_pause_ms: millis(self.checkpoint_min_pause),
            max_concurrent: self.checkpoint_max_concurrent,
            tolerable_failures: self.checkpoint_tolerable_failures,
            num_retained: self.checkpoints_num_retained,
            mode: self.checkpoint_mode,
        }
    }

    /// The restart strategy: `restart-strategy.type` with its parameters, or when the type is
    /// unset, Flink's default (exponential-delay with its configured parameters when
    /// checkpointing is on, none otherwise).
    pub fn restart_strategy(&self) -> RestartStrategy {
        let kind = self
            .restart_strategy_type
            .unwrap_or(if self.checkpoint_interval.is_some() {
                RestartStrategyType::ExponentialDelay
            } else {
                RestartStrategyType::None
            });
        match kind {
            RestartStrategyType::None => RestartStrategy::None,
            RestartStrategyType::FixedDelay => self.fixed_delay_strategy(),
            RestartStrategyType::ExponentialDelay => self.exponential_delay_strategy(),
            RestartStrategyType::FailureRate => self.failure_rate_strategy(),
        }
    }

    fn fixed_delay_strategy(&self) -> RestartStrategy {
        RestartStrategy::FixedDelay {
            attempts: self.fixed_delay_attempts,
            delay_ms: millis(self.fixed_delay),
        }
    }

    fn exponential_delay_strategy(&self) -> RestartStrategy {
        RestartStrategy::ExponentialDelay {
            initial_backoff_ms: millis(self.exponential_initial_backoff),
            max_backoff_ms: millis(self.exponential_max_backoff),
            multiplier: self.exponential_multiplier,
            reset_backoff_threshold_ms: millis(self.exponential_reset_threshold),
            jitter_factor: self.exponential_jitter,
            attempts_before_reset: self.exponential_attempts,
        }
    }

    fn failure_rate_strategy(&self) -> RestartStrategy {
        RestartStrategy::FailureRate {
            max_failures_per_interval: self.failure_rate_max_failures,
            interval_ms: millis(self.failure_rate_interval),
            delay_ms: millis(self.failure_rate_delay),
        }
    }

    /// Where checkpoints go and how to reach S3: `state.checkpoints.dir` (unset:
    /// `file://<state.backend.rocksdb.localdir>/checkpoints`, made absolute) and the `s3.*` keys.
    pub fn checkpoint_storage(&self) -> (StorageUrl, S3Options) {
        let url = self.checkpoints_dir.clone().unwrap_or_else(|| {
            let dir = self.state_dir.join("checkpoints");
            StorageUrl::File {
                root: std::path::absolute(&dir).unwrap_or(dir),
            }
        });
        (url, self.s3.clone())
    }

    /// `s3.allow-http` as set, or true iff the endpoint is plain `http://`.
    fn resolve_s3_allow_http(&mut self) {
        let http_endpoint = self
            .s3
            .endpoint
            .as_deref()
            .is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"));
        self.s3.allow_http = self.s3_allow_http.unwrap_or(http_endpoint);
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        toml::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_that_does_not_parse_is_named_by_its_key_never_repeated() {
        let e = Config::load(None, vec![], &["security.auth.token=short secret".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("security.auth.token"), "{e}");
        assert!(!e.contains("short secret"), "{e}");
    }

    #[test]
    fn a_jobs_configuration_arrives_unchanged_on_another_process() {
        let client = Config::load(
            None,
            vec![],
            &[
                "execution.checkpointing.interval=500ms".into(),
                "execution.checkpointing.mode=at-least-once".into(),
                "state.backend=heap".into(),
                "state.checkpoints.dir=s3://bucket/prefix".into(),
                "s3.endpoint=http://127.0.0.1:9000".into(),
                "s3.secret-key=hush".into(),
                "restart-strategy.type=fixed-delay".into(),
                "restart-strategy.fixed-delay.attempts=7".into(),
                "pipeline.max-parallelism=64".into(),
            ],
        )
        .unwrap();
        let machine = Config::load(
            None,
            vec![],
            &["state.backend.rocksdb.localdir=/tm/1".into()],
        )
        .unwrap();
        let sent = client.job_config();
        for secret in [
            "s3.access-key",
            "s3.secret-key",
            "security.auth.token",
            "security.auth.token-file",
        ] {
            assert!(!sent.contains_key(secret), "{secret} travels with the job");
        }
        assert!(
            !sent.values().any(|v| v.contains("hush")),
            "no value carries the secret: {sent:?}"
        );
        let received = machine.with_job_config(&sent).unwrap();
        assert_eq!(received.job_config(), client.job_config());
        assert_eq!(
            received.s3.secret_access_key, None,
            "the receiver keeps its own credentials (none here)"
        );
        assert_eq!(received.state_dir, PathBuf::from("/tm/1"));
        let defaults = Config::load(None, vec![], &[]).unwrap();
        assert_eq!(
            machine
                .with_job_config(&defaults.job_config())
                .unwrap()
                .job_config(),
            defaults.job_config()
        );
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weir.toml");
        std::fs::write(&file, "parallelism.default = 3\n[taskmanager.network]\nbatch-size = 7\n\"channel-capacity\" = 2\n").unwrap();
        let c = Config::load(Some(&file), vec![], &[]).unwrap();
        assert_eq!(
            (c.parallelism_default, c.batch_size, c.channel_capacity),
            (3, 7, 2)
        );
        let env = vec![("WEIR_PARALLELISM_DEFAULT".to_string(), "4".to_string())];
        let c = Config::load(Some(&file), env.clone(), &[]).unwrap();
        assert_eq!(c.parallelism_default, 4);
        let c = Config::load(Some(&file), env, &["parallelism.default=5".into()]).unwrap();
        assert_eq!(c.parallelism_default, 5);
    }

    #[test]
    fn an_unknown_key_in_the_file_is_an_error_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weir.toml");
        std::fs::write(&file, "state.backnd = \"heap\"\n").unwrap();
        let err = Config::load(Some(&file), vec![], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "unknown configuration key 'state.backnd' (from {})",
                file.display()
            )
        );
    }

    #[test]
    fn a_bad_value_names_the_key_the_value_and_the_flag() {
        let err = Config::load(
            None,
            vec![],
            &["taskmanager.memory.managed.size=lots".into()],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration key 'taskmanager.memory.managed.size' (from -D taskmanager.memory.managed.size): bad value 'lots': expected a size such as 256mb"
        );
    }

    #[test]
    fn sizes_and_durations_parse_with_units() {
        assert_eq!(parse_memory_size("256mb"), Ok(256 << 20));
        assert_eq!(parse_memory_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("2 fortnights").is_err());
        assert_eq!(
            parse_duration("18446744073709551615h"),
            Err("too large".into())
        );
        assert_eq!(format_duration(Duration::from_secs(600)), "10min");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    fn load(defines: &[&str]) -> Result<Config, ConfigError> {
        let defines: Vec<String> = defines.iter().map(|d| d.to_string()).collect();
        Config::load(None, vec![], &defines)
    }

    #[test]
    fn checkpointing_is_off_by_default_and_so_are_restarts() {
        let c = load(&[]).unwrap();
        assert_eq!(c.checkpoint_config(), None);
        assert_eq!(c.restart_strategy(), RestartStrategy::None);
        let (url, s3) = c.checkpoint_storage();
        assert_eq!(
            url,
            StorageUrl::File {
                root: c.state_dir.join("checkpoints")
            }
        );
        assert_eq!(s3, S3Options::default());
    }

    #[test]
    fn an_interval_turns_checkpointing_on_with_flinks_defaults_and_exponential_restarts() {
        let c = load(&["execution.checkpointing.interval=30s"]).unwrap();
        assert_eq!(
            c.checkpoint_config(),
            Some(CheckpointConfig {
                interval_ms: 30_000,
                timeout_ms: 600_000,
                min_pause_ms: 0,
                max_concurrent: 1,
                tolerable_failures: 0,
                num_retained: 1,
                mode: CheckpointingMode::ExactlyOnce,
            })
        );
        assert_eq!(
            c.restart_strategy(),
            RestartStrategy::EXPONENTIAL_DELAY_DEFAULT
        );
        // The derived default uses the configured exponential-delay parameters, as in Flink.
        let c = load(&[
            "execution.checkpointing.interval=30s",
            "restart-strategy.exponential-delay.max-backoff=5min",
        ])
        .unwrap();
        assert!(matches!(
            c.restart_strategy(),
            RestartStrategy::ExponentialDelay {
                max_backoff_ms: 300_000,
                ..
            }
        ));
    }

    #[test]
    fn a_zero_interval_keeps_checkpointing_off() {
        for off in ["0", "0ms", "none", "OFF"] {
            let c = load(&[&format!("execution.checkpointing.interval={off}")]).unwrap();
            assert_eq!(c.checkpoint_config(), None, "{off}");
            assert_eq!(c.restart_strategy(), RestartStrategy::None, "{off}");
        }
    }

    #[test]
    fn checkpoint_and_restart_keys_follow_file_then_environment_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weir.toml");
        std::fs::write(
            &file,
            "[execution.checkpointing]\ninterval = \"10s\"\nmode = \"AT_LEAST_ONCE\"\n\"max-concurrent-checkpoints\" = 2\n\
             [restart-strategy]\ntype = \"fixed-delay\"\n[restart-strategy.fixed-delay]\nattempts = 3\n\
             [state.checkpoints]\n\"num-retained\" = 4\ndir = \"s3://bkt/weir\"\n",
        )
        .unwrap();
        let env = vec![
            (
                "WEIR_RESTART_STRATEGY_FIXED_DELAY_ATTEMPTS".to_string(),
                "5".to_string(),
            ),
            (
                "WEIR_EXECUTION_CHECKPOINTING_TIMEOUT".to_string(),
                "1min".to_string(),
            ),
        ];
        let c = Config::load(
            Some(&file),
            env,
            &[
                "restart-strategy.fixed-delay.delay=2s".into(),
                "execution.checkpointing.timeout=90s".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            c.checkpoint_config(),
            Some(CheckpointConfig {
                interval_ms: 10_000,
                timeout_ms: 90_000,
                min_pause_ms: 0,
                max_concurrent: 2,
                tolerable_failures: 0,
                num_retained: 4,
                mode: CheckpointingMode::AtLeastOnce,
            })
        );
        assert_eq!(
            c.restart_strategy(),
            RestartStrategy::FixedDelay {
                attempts: 5,
                delay_ms: 2_000
            }
        );
        assert_eq!(
            c.checkpoint_storage().0,
            StorageUrl::S3 {
                bucket: "bkt".into(),
                prefix: "weir".into()
            }
        );
    }

    #[test]
    fn restart_strategy_types_accept_flinks_spellings() {
        let cases = [
            ("none", RestartStrategyType::None),
            ("disable", RestartStrategyType::None),
            ("off", RestartStrategyType::None),
            ("fixed-delay", RestartStrategyType::FixedDelay),
            ("FixedDelay", RestartStrategyType::FixedDelay),
            ("exponential-delay", RestartStrategyType::ExponentialDelay),
            ("exponential", RestartStrategyType::ExponentialDelay),
            ("failure-rate", RestartStrategyType::FailureRate),
            ("failurerate", RestartStrategyType::FailureRate),
        ];
        for (text, kind) in cases {
            let c = load(&[&format!("restart-strategy.type={text}")]).unwrap();
            assert_eq!(c.restart_strategy_type, Some(kind), "{text}");
        }
        // An explicit type wins over the checkpointing-derived default.
        let c = load(&[
            "execution.checkpointing.interval=1s",
            "restart-strategy.type=none",
        ])
        .unwrap();
        assert_eq!(c.restart_strategy(), RestartStrategy::None);
    }

    #[test]
    fn each_restart_strategy_gets_its_own_parameters() {
        let c = load(&[
            "restart-strategy.type=exponential-delay",
            "restart-strategy.exponential-delay.initial-backoff=200ms",
            "restart-strategy.exponential-delay.max-backoff=10s",
            "restart-strategy.exponential-delay.backoff-multiplier=2",
            "restart-strategy.exponential-delay.reset-backoff-threshold=30min",
            "restart-strategy.exponential-delay.jitter-factor=0",
            "restart-strategy.exponential-delay.attempts-before-reset-backoff=7",
        ])
        .unwrap();
        assert_eq!(
            c.restart_strategy(),
            RestartStrategy::ExponentialDelay {
                initial_backoff_ms: 200,
                max_backoff_ms: 10_000,
                multiplier: 2.0,
                reset_backoff_threshold_ms: 1_800_000,
                jitter_factor: 0.0,
                attempts_before_reset: 7,
            }
        );
        let c = load(&[
            "restart-strategy.type=failure-rate",
            "restart-strategy.failure-rate.max-failures-per-interval=3",
            "restart-strategy.failure-rate.failure-rate-interval=5min",
            "restart-strategy.failure-rate.delay=10s",
        ])
        .unwrap();
        assert_eq!(
            c.restart_strategy(),
            RestartStrategy::FailureRate {
                max_failures_per_interval: 3,
                interval_ms: 300_000,
                delay_ms: 10_000,
            }
        );
        let c = load(&[
            "restart-strategy.type=fixed-delay",
            "restart-strategy.fixed-delay.attempts=infinite",
        ])
        .unwrap();
        assert_eq!(
            c.restart_strategy(),
            RestartStrategy::FixedDelay {
                attempts: u32::MAX,
                delay_ms: 1_000
            }
        );
        assert_eq!(
            load(&["restart-strategy.type=fixed-delay"])
                .unwrap()
                .restart_strategy(),
            RestartStrategy::FIXED_DELAY_DEFAULT
        );
        assert_eq!(
            load(&["restart-strategy.type=failure-rate"])
                .unwrap()
                .restart_strategy(),
            RestartStrategy::FAILURE_RATE_DEFAULT
        );
    }

    #[test]
    fn checkpoint_dirs_parse_as_storage_urls_and_default_under_the_local_dir() {
        let cases = [
            (
                "file:///var/weir/chk",
                StorageUrl::File {
                    root: "/var/weir/chk".into(),
                },
            ),
            (
                "/var/weir/chk",
                StorageUrl::File {
                    root: "/var/weir/chk".into(),
                },
            ),
            (
                "memory://jobs",
                StorageUrl::Memory {
                    name: "jobs".into(),
                    prefix: String::new(),
                },
            ),
            (
                "s3://bucket/weir/checkpoints",
                StorageUrl::S3 {
                    bucket: "bucket".into(),
                    prefix: "weir/checkpoints".into(),
                },
            ),
        ];
        for (text, url) in cases {
            let c = load(&[&format!("state.checkpoints.dir={text}")]).unwrap();
            assert_eq!(c.checkpoint_storage().0, url, "{text}");
        }
        let c = load(&["state.backend.rocksdb.localdir=/data/weir"]).unwrap();
        assert_eq!(
            c.checkpoint_storage().0.to_string(),
            "file:///data/weir/checkpoints"
        );
    }

    #[test]
    fn s3_options_come_from_the_s3_keys_and_plain_http_follows_the_endpoint() {
        let c = load(&[
            "s3.endpoint=http://127.0.0.1:9000/",
            "s3.region=eu-west-1",
            "s3.access-key=AK",
            "s3.secret-key=SK",
            "s3.path.style.access=true",
        ])
        .unwrap();
        assert_eq!(
            c.checkpoint_storage().1,
            S3Options {
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: "eu-west-1".into(),
                access_key_id: Some("AK".into()),
                secret_access_key: Some("SK".into()),
                allow_http: true,
                path_style: true,
            }
        );
        let https = load(&["s3.endpoint=https://s3.example.com"]).unwrap();
        assert!(!https.s3.allow_http);
        // An explicit setting wins, in whichever order the keys arrive.
        for defines in [
            ["s3.allow-http=false", "s3.endpoint=http://minio:9000"],
            ["s3.endpoint=http://minio:9000", "s3.allow-http=false"],
        ] {
            assert!(!load(&defines).unwrap().s3.allow_http, "{defines:?}");
        }
    }

    #[test]
    fn the_secret_key_is_never_printed() {
        let c = load(&["s3.secret-key=hunter2", "s3.access-key=AK"]).unwrap();
        let described = c.describe();
        let secret = described
            .iter()
            .find(|(k, _, _)| *k == "s3.secret-key")
            .unwrap();
        assert_eq!(secret.1, "******");
        assert!(!described.iter().any(|(_, v, _)| v.contains("hunter2")));
        assert!(!format!("{c:?}").contains("hunter2"));
        let unset = load(&[]).unwrap();
        assert!(unset
            .describe()
            .iter()
            .any(|(k, v, _)| *k == "s3.secret-key" && v == "(unset)"));
    }

    #[test]
    fn every_key_is_described_once_with_its_effective_value() {
        let c = load(&["execution.checkpointing.interval=1min"]).unwrap();
        let described = c.describe();
        assert_eq!(described.len(), KEYS.len());
        let value = |key: &str| {
            described
                .iter()
                .find(|(k, _, _)| *k == key)
                .map(|(_, v, _)| v.clone())
                .unwrap()
        };
        assert_eq!(value("execution.checkpointing.interval"), "1min");
        assert_eq!(value("execution.checkpointing.timeout"), "10min");
        assert_eq!(value("restart-strategy.type"), "exponential-delay");
        assert_eq!(
            value("restart-strategy.exponential-delay.attempts-before-reset-backoff"),
            "infinite"
        );
        assert!(value("state.checkpoints.dir").starts_with("file:///"));
        assert_eq!(value("s3.allow-http"), "false");
        // What `weir config` prints loads back to the same effective configuration (derived
        // values become explicit ones).
        let printed: Vec<String> = described
            .iter()
            .filter(|(_, v, _)| v != "(unset)" && v != "auto")
            .map(|(k, v, _)| format!("{k}={v}"))
            .collect();
        let reloaded = Config::load(None, vec![], &printed).unwrap();
        assert_eq!(reloaded.describe(), described);
        assert_eq!(reloaded.checkpoint_config(), c.checkpoint_config());
        assert_eq!(reloaded.restart_strategy(), c.restart_strategy());
        assert_eq!(reloaded.checkpoint_storage(), c.checkpoint_storage());
    }

    #[test]
    fn bad_checkpoint_restart_and_s3_values_name_the_key_value_and_flag() {
        let cases = [
            (
                "execution.checkpointing.interval=fast",
                "bad value 'fast': expected a duration such as 100ms or 1s",
            ),
            (
                "execution.checkpointing.interval=5ms",
                "bad value '5ms': expected 0 (disabled) or at least 10 ms",
            ),
            (
                "execution.checkpointing.timeout=5ms",
                "bad value '5ms': expected at least 10 ms",
            ),
            (
                "execution.checkpointing.max-concurrent-checkpoints=0",
                "bad value '0': must be between 1 and 4294967295",
            ),
            (
                "execution.checkpointing.tolerable-failed-checkpoints=-1",
                "bad value '-1': expected a whole number from 0 to 4294967295, or infinite",
            ),
            (
                "execution.checkpointing.mode=twice",
                "bad value 'twice': expected exactly_once or at_least_once",
            ),
            (
                "state.checkpoints.num-retained=0",
                "bad value '0': must be between 1 and 4294967295",
            ),
            (
                "state.checkpoints.dir=ftp://x",
                "bad value 'ftp://x': storage URL 'ftp://x' has unknown scheme 'ftp'; use file://, memory:// or s3://",
            ),
            (
                "state.checkpoints.dir=checkpoints",
                "bad value 'checkpoints': storage URL 'checkpoints' is a relative file path; use an absolute path such as file:///abs/dir",
            ),
            (
                "restart-strategy.type=sometimes",
                "bad value 'sometimes': expected none, fixed-delay, exponential-delay or failure-rate",
            ),
            (
                "restart-strategy.fixed-delay.attempts=many",
                "bad value 'many': expected a whole number from 0 to 4294967295, or infinite",
            ),
            (
                "restart-strategy.exponential-delay.backoff-multiplier=1",
                "bad value '1': expected a number above 1",
            ),
            (
                "restart-strategy.exponential-delay.backoff-multiplier=NaN",
                "bad value 'NaN': expected a number such as 1.5",
            ),
            (
                "restart-strategy.exponential-delay.jitter-factor=2",
                "bad value '2': expected a number from 0 to 1",
            ),
            (
                "restart-strategy.exponential-delay.attempts-before-reset-backoff=0",
                "bad value '0': expected at least 1",
            ),
            (
                "restart-strategy.failure-rate.max-failures-per-interval=0",
                "bad value '0': expected at least 1",
            ),
            (
                "restart-strategy.failure-rate.failure-rate-interval=0",
                "bad value '0': expected at least 1 ms",
            ),
            (
                "s3.endpoint=localhost:9000",
                "bad value 'localhost:9000': expected http://host:port or https://host",
            ),
            ("s3.region= ", "bad value '': must not be empty"),
            (
                "s3.path.style.access=yes",
                "bad value 'yes': expected true or false",
            ),
            (
                "s3.allow-http=maybe",
                "bad value 'maybe': expected true or false",
            ),
        ];
        for (define, message) in cases {
            let key = define.split_once('=').unwrap().0;
            let err = load(&[define]).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("configuration key '{key}' (from -D {key}): {message}"),
                "{define}"
            );
        }
    }

    #[test]
    fn a_rule_across_keys_names_the_key_and_where_each_value_came_from() {
        // The user's max-backoff is below the default initial backoff.
        let err = load(&["restart-strategy.exponential-delay.max-backoff=500ms"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration key 'restart-strategy.exponential-delay.max-backoff' \
             (from -D restart-strategy.exponential-delay.max-backoff): bad value '500ms': \
             expected at least restart-strategy.exponential-delay.initial-backoff"
        );
        // The user's initial backoff is above the default maximum: the default is named.
        let err = load(&["restart-strategy.exponential-delay.initial-backoff=2min"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration key 'restart-strategy.exponential-delay.max-backoff' (from default): \
             bad value '1min': expected at least restart-strategy.exponential-delay.initial-backoff"
        );
        // Found after parsing, the error still names the environment variable or the file.
        let env = vec![(
            "WEIR_EXECUTION_CHECKPOINTING_INTERVAL".to_string(),
            "3ms".to_string(),
        )];
        let err = Config::load(None, env, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration key 'execution.checkpointing.interval' (from environment variable \
             WEIR_EXECUTION_CHECKPOINTING_INTERVAL): bad value '3ms': expected 0 (disabled) or at \
             least 10 ms"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weir.toml");
        std::fs::write(&file, "[restart-strategy]\ntype = \"sometimes\"\n").unwrap();
        let err = Config::load(Some(&file), vec![], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "configuration key 'restart-strategy.type' (from {}): bad value 'sometimes': \
                 expected none, fixed-delay, exponential-delay or failure-rate",
                file.display()
            )
        );
    }
}
