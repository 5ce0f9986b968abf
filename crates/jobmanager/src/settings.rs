//! Per-job settings, resolved from the submitted [`JobSpec`] by whoever owns the configuration
//! format (the CLI): this crate parses no configuration keys.

use weir_checkpoint::CheckpointConfig;
use weir_coordination::restart::RestartStrategy;
use weir_proto::v1::JobSpec;
use weir_storage::{S3Options, Store};

/// What the JobMaster needs to know about one job besides its plan.
#[derive(Clone, Debug)]
pub struct JobSettings {
    /// Checkpointing: `None` runs the job without checkpoints (and a failure restarts it from
    /// scratch, if the restart strategy allows).
    pub checkpoint: Option<CheckpointConfig>,
    /// The checkpoint root (`state.checkpoints.dir`); required when `checkpoint` is set. The
    /// job's checkpoints live under `<root>/<job-id>/`.
    pub store: Option<Store>,
    /// What to do when the job fails.
    pub restart: RestartStrategy,
    /// `execution.checkpointing.savepoint-dir`: the default savepoint target (a URL).
    pub savepoint_dir: Option<String>,
    /// How to reach S3 for savepoint targets and restore paths on `s3://`.
    pub s3: S3Options,
}

/// Turns a submitted job's spec (its `config` map: `execution.checkpointing.*`,
/// `state.checkpoints.dir`, `restart-strategy.*`) into [`JobSettings`].
///
/// Implementors must be deterministic for the same spec, must not block for long (it runs on
/// a blocking thread of the JobManager's runtime during `SubmitJob`), and must name the bad
/// key in the error: the message goes back to the client unchanged as `INVALID_ARGUMENT`.
pub trait JobSettingsResolver: Send + Sync {
    /// The settings for `spec`, or what is wrong with its configuration.
    fn resolve(&self, spec: &JobSpec) -> Result<JobSettings, String>;
}

/// A resolver that gives every job the same settings (tests, embedded use).
#[derive(Clone, Debug)]
pub struct FixedSettings(pub JobSettings);

impl JobSettingsResolver for FixedSettings {
    fn resolve(&self, _spec: &JobSpec) -> Result<JobSettings, String> {
        Ok(self.0.clone())
    }
}
