//! The catalog of jobs a `weir` binary can run. Rust cannot ship closures over the wire, so a
//! job is a named builder function compiled into the binary: every process calls the same
//! builder with the same parameters and gets the same graph.

use crate::params::{ParamError, Params};
use weir_runtime::JobDefinition;

/// One declared parameter of a job.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    /// The key, as in `--param key=value`.
    pub name: &'static str,
    /// One line of help.
    pub help: &'static str,
}

/// A job the binary can run.
#[derive(Clone)]
pub struct JobSpec {
    /// The name used on the command line.
    pub name: &'static str,
    /// One line of description.
    pub description: &'static str,
    /// Every parameter the job accepts; others are rejected before the builder runs.
    pub params: Vec<ParamSpec>,
    /// Checks the parameters and builds the job. Must not start any work or write anything;
    /// it may check that inputs are readable and outputs writable.
    pub build: fn(&Params) -> Result<JobDefinition, ParamError>,
}

/// The jobs of one binary, by name.
#[derive(Clone, Default)]
pub struct Catalog {
    jobs: Vec<JobSpec>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a job; a later job with the same name replaces the earlier one.
    pub fn register(mut self, job: JobSpec) -> Self {
        self.jobs.retain(|j| j.name != job.name);
        self.jobs.push(job);
        self
    }

    /// The job named `name`.
    pub fn get(&self, name: &str) -> Option<&JobSpec> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// Every job, in registration order.
    pub fn jobs(&self) -> &[JobSpec] {
        &self.jobs
    }

    /// Checks `params` against the job's declared keys, then builds the job.
    pub fn build(&self, job: &JobSpec, params: &Params) -> Result<JobDefinition, ParamError> {
        for key in params.keys() {
            if !job.params.iter().any(|p| p.name == key) {
                return Err(ParamError::Unknown {
                    key: key.to_string(),
                    job: job.name.to_string(),
                    known: job
                        .params
                        .iter()
                        .map(|p| p.name)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        (job.build)(params)
    }
}
