//! Newtype ids. Each validates on construction and prints itself for logs and errors.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The stable, user-given id of an operator: the key that maps savepoint state to operators.
///
/// Non-empty, at most 128 characters, and made of ASCII letters, digits, `-`, `_` and `.`, so it
/// can appear in file names and URLs unescaped.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OperatorUid(String);

/// Why a string is not a valid [`OperatorUid`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    /// The uid was empty.
    #[error("operator uid must not be empty")]
    Empty,
    /// The uid was longer than 128 characters.
    #[error("operator uid '{0}' is longer than 128 characters")]
    TooLong(String),
    /// The uid held a character outside `[A-Za-z0-9._-]`.
    #[error("operator uid '{uid}' contains '{ch}'; use letters, digits, '-', '_' or '.'")]
    BadChar {
        /// The rejected uid.
        uid: String,
        /// The first character that is not allowed.
        ch: char,
    },
}

impl OperatorUid {
    /// Validates and wraps `uid`.
    pub fn new(uid: impl Into<String>) -> Result<Self, UidError> {
        let uid = uid.into();
        if uid.is_empty() {
            return Err(UidError::Empty);
        }
        if uid.chars().count() > 128 {
            return Err(UidError::TooLong(uid));
        }
        if let Some(ch) = uid
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(UidError::BadChar { uid, ch });
        }
        Ok(Self(uid))
    }

    /// The uid as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OperatorUid {
    type Error = UidError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<OperatorUid> for String {
    fn from(value: OperatorUid) -> Self {
        value.0
    }
}

impl fmt::Display for OperatorUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident($inner:ty), $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Copy,
            Clone,
            Debug,
            Default,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            Serialize,
            Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl $name {
            /// The raw number.
            pub fn get(self) -> $inner {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

numeric_id!(
    /// A node of the StreamGraph: one operator as the user wrote it, numbered in creation order.
    NodeId(u32),
    "node-"
);
numeric_id!(
    /// A vertex of the JobGraph: a chain of operators that runs as one task per subtask.
    VertexId(u32),
    "vertex-"
);
numeric_id!(
    /// The index of one parallel instance of a vertex, `0..parallelism`.
    SubtaskIndex(u32),
    ""
);
numeric_id!(
    /// A checkpoint's id; ids only rise within a job.
    CheckpointId(u64),
    "chk-"
);

numeric_id!(
    /// One deployment of a job: 0 for the first, one more for every redeployment after a
    /// failure. Messages about a task name the attempt they belong to.
    AttemptId(u32),
    "attempt-"
);

impl AttemptId {
    /// The attempt after this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

/// A job's id: 128 random bits, printed as 32 hex digits like Flink's `JobID`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub u128);

impl JobId {
    /// Parses a job id as `Display` prints it: 32 hex digits. The error names the text.
    pub fn parse(s: &str) -> Result<JobId, String> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("job id '{s}' must be 32 hex digits"));
        }
        u128::from_str_radix(s, 16)
            .map(JobId)
            .map_err(|_| format!("job id '{s}' must be 32 hex digits"))
    }

    /// A fresh job id: the time, the process id and a per-process counter, hashed with the
    /// project's stable hash (unique per process; no randomness source needed).
    pub fn generate() -> JobId {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut seed = Vec::with_capacity(32);
        seed.extend_from_slice(&nanos.to_le_bytes());
        seed.extend_from_slice(&n.to_le_bytes());
        let high = crate::stable_hash64(&seed) as u128;
        seed.extend_from_slice(&std::process::id().to_le_bytes());
        let low = crate::stable_hash64(&seed) as u128;
        JobId((high << 64) | low)
    }
}

impl std::str::FromStr for JobId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        JobId::parse(s)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_with_a_slash_is_rejected_and_named() {
        let err = OperatorUid::new("a/b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "operator uid 'a/b' contains '/'; use letters, digits, '-', '_' or '.'"
        );
    }

    #[test]
    fn a_job_id_reads_back_what_display_prints_and_names_bad_text() {
        let id = JobId::generate();
        assert_eq!(JobId::parse(&id.to_string()), Ok(id));
        assert_ne!(JobId::generate(), id);
        assert_eq!(
            JobId::parse("xyz"),
            Err("job id 'xyz' must be 32 hex digits".to_string())
        );
        assert!(JobId::parse(&"g".repeat(32)).is_err());
        assert!(JobId::parse(&format!("+{}", "0".repeat(31))).is_err());
    }

    #[test]
    fn an_empty_uid_is_rejected() {
        assert_eq!(OperatorUid::new(""), Err(UidError::Empty));
    }

    #[test]
    fn ids_print_with_their_prefix() {
        assert_eq!(VertexId(3).to_string(), "vertex-3");
        assert_eq!(CheckpointId(7).to_string(), "chk-7");
        assert_eq!(JobId(255).to_string(), "000000000000000000000000000000ff");
    }
}
