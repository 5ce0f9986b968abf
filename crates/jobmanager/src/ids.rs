//! Ids this crate introduces ([`TaskManagerId`]). Job ids are `weir_types::JobId` (`parse`, `generate`).

use serde::{Deserialize, Serialize};
use std::fmt;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_taskmanager_id_is_rejected() {
        assert!(TaskManagerId::new("").is_err());
        assert!(TaskManagerId::new("tm\n1").is_err());
        assert_eq!(TaskManagerId::new("tm-1").unwrap().to_string(), "tm-1");
    }
}
