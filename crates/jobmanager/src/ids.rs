//! Ids this crate introduces ([`TaskManagerId`]) and the text form of [`JobId`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use weir_types::JobId;

/// A TaskManager's id as it registered: unique among the live TaskManagers of a cluster.
///
/// Non-empty, at most 128 characters, no control characters (it appears in logs and JSON).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskManagerId(String);

impl TaskManagerId {
    /// Validates and wraps `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, String> {
        let id = id.into();
        if id.is_empty() {
            return Err("taskmanager id must not be empty".into());
        }
        if id.chars().count() > 128 {
            return Err(format!(
                "taskmanager id '{id}' is longer than 128 characters"
            ));
        }
        if id.chars().any(char::is_control) {
            return Err(format!(
                "taskmanager id {id:?} contains a control character"
            ));
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TaskManagerId {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<TaskManagerId> for String {
    fn from(value: TaskManagerId) -> Self {
        value.0
    }
}

impl fmt::Display for TaskManagerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a job id as [`JobId`]'s `Display` prints it: 32 hex digits.
pub fn parse_job_id(s: &str) -> Result<JobId, String> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("job id '{s}' must be 32 hex digits"));
    }
    u128::from_str_radix(s, 16)
        .map(JobId)
        .map_err(|_| format!("job id '{s}' must be 32 hex digits"))
}

/// A fresh job id: the time, the process id and a per-process counter, hashed with the
/// project's stable hash (unique per JobManager process; no randomness source needed).
pub fn new_job_id() -> JobId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut seed = Vec::with_capacity(32);
    seed.extend_from_slice(&nanos.to_le_bytes());
    seed.extend_from_slice(&n.to_le_bytes());
    let high = weir_types::stable_hash64(&seed) as u128;
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    let low = weir_types::stable_hash64(&seed) as u128;
    JobId((high << 64) | low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_id_prints_and_parses_back() {
        let id = new_job_id();
        assert_eq!(parse_job_id(&id.to_string()), Ok(id));
    }

    #[test]
    fn a_short_or_non_hex_job_id_is_rejected_and_named() {
        assert_eq!(
            parse_job_id("abc"),
            Err("job id 'abc' must be 32 hex digits".into())
        );
        assert!(parse_job_id(&"g".repeat(32)).is_err());
        assert!(parse_job_id(&format!("+{}", "0".repeat(31))).is_err());
    }

    #[test]
    fn two_fresh_job_ids_differ() {
        assert_ne!(new_job_id(), new_job_id());
    }

    #[test]
    fn an_empty_taskmanager_id_is_rejected() {
        assert!(TaskManagerId::new("").is_err());
        assert!(TaskManagerId::new("tm\n1").is_err());
        assert_eq!(TaskManagerId::new("tm-1").unwrap().to_string(), "tm-1");
    }
}
