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
    /// How `weir savepoint dump` decodes the job's keyed states (others print as hex).
    pub states: Vec<StateSchema>,
}

/// How `weir savepoint dump` turns one keyed state's bytes into JSON: the operator's uid, the
/// state's name, and decoders of its key and its value.
#[derive(Clone, Debug)]
pub struct StateSchema {
    /// The keyed operator's uid.
    pub uid: &'static str,
    /// The state's name.
    pub state: &'static str,
    /// Decodes a key.
    pub key: fn(&[u8]) -> Result<serde_json::Value, String>,
    /// Decodes a value.
    pub value: fn(&[u8]) -> Result<serde_json::Value, String>,
}

impl StateSchema {
    /// A value (or reducing) state keyed by `K` holding `V`, encoded as the typed state handles
    /// and the keyed operators encode them (postcard).
    pub fn value<K, V>(uid: &'static str, state: &'static str) -> Self
    where
        K: serde::de::DeserializeOwned + serde::Serialize,
        V: serde::de::DeserializeOwned + serde::Serialize,
    {
        Self {
            uid,
            state,
            key: decode_postcard::<K>,
            value: decode_postcard::<V>,
        }
    }
}

fn decode_postcard<T: serde::de::DeserializeOwned + serde::Serialize>(
    bytes: &[u8],
) -> Result<serde_json::Value, String> {
    let value: T = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
    serde_json::to_value(value).map_err(|e| e.to_string())
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
