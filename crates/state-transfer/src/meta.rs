//! [`KeyedStateMeta`]: the description of a keyed operator's snapshot that a task stores inline
//! in [`OperatorSubtaskState::inline`](weir_checkpoint::OperatorSubtaskState::inline), and
//! that restore needs besides the files themselves.
//!
//! The format is JSON with a `version` field ([`KEYED_STATE_META_VERSION`]); a reader refuses
//! versions it does not know (DESIGN §8 invariant 5) rather than guess at their fields:
//!
//! ```json
//! {"version":1,"backend":"rocksdb","format":1,"key_groups":{"start":0,"end":63},
//!  "descriptors":[{"name":"count","kind":"Value"}],
//!  "files":[{"name":"000012.sst","path":"shared/sum/0/3-000012.sst"},
//!           {"name":"MANIFEST-000005","path":"chk-3/sum/0/MANIFEST-000005"}]}
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use weir_checkpoint::{FileHandle, HandleError};
use weir_state::StateDescriptor;
use weir_types::KeyGroupRange;

/// The version of the [`KeyedStateMeta`] JSON format this build writes and reads.
pub const KEYED_STATE_META_VERSION: u32 = 1;

/// What the task stores inline in `OperatorSubtaskState.inline` for a keyed operator: the
/// backend's identity and declared states, and for each snapshot file, in the backend's restore
/// order, its name and the [`FileHandle`] path it was stored at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedStateMeta {
    /// The format version; [`KEYED_STATE_META_VERSION`] for everything this build writes.
    pub version: u32,
    /// The backend that took the snapshot (`rocksdb`, `heap`).
    pub backend: String,
    /// That backend's snapshot format version.
    pub format: u32,
    /// The key groups the state covers.
    pub key_groups: KeyGroupRange,
    /// The declared states, in registration order.
    pub descriptors: Vec<StateDescriptor>,
    /// The snapshot's files, in the order the backend restores them.
    pub files: Vec<KeyedFileMeta>,
}

/// One file of a keyed snapshot: its name in the snapshot and where it is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedFileMeta {
    /// The file's name within the snapshot (also its name in the local restore directory).
    pub name: String,
    /// The [`FileHandle`] path it is stored at, relative to the job's checkpoint directory.
    pub path: String,
}

/// Why the inline keyed-state description cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The operator's state carries no inline bytes at all.
    #[error("the operator's state has no inline keyed-state description")]
    Missing,
    /// The bytes are not the JSON this module writes.
    #[error("the keyed-state description is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The description was written in a format version this build cannot read.
    #[error(
        "the keyed-state description has version {found}; this build reads version {supported}"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u64,
        /// The version this build reads.
        supported: u32,
    },
    /// A file name cannot name a file in the restore directory.
    #[error("snapshot file name '{name}' {reason}")]
    BadFileName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file's stored path is not a valid [`FileHandle`] path.
    #[error("snapshot file '{name}': {source}")]
    BadPath {
        /// The file's name.
        name: String,
        /// Why the path was refused (names the path).
        source: HandleError,
    },
}

/// Only the version, read before anything else so that an unknown version is reported as such
/// rather than as a missing field.
#[derive(Deserialize)]
struct VersionProbe {
    version: u64,
}

impl KeyedStateMeta {
    /// A description in the current format version.
    pub fn new(
        backend: impl Into<String>,
        format: u32,
        key_groups: KeyGroupRange,
        descriptors: Vec<StateDescriptor>,
        files: Vec<KeyedFileMeta>,
    ) -> Self {
        Self {
            version: KEYED_STATE_META_VERSION,
            backend: backend.into(),
            format,
            key_groups,
            descriptors,
            files,
        }
    }

    /// The JSON bytes to store inline.
    pub fn encode(&self) -> Result<Vec<u8>, MetaError> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Parses and validates stored bytes: the version must be [`KEYED_STATE_META_VERSION`],
    /// every file name must be usable as a local file name and unique, and every path must be a
    /// valid [`FileHandle`] path.
    pub fn decode(bytes: &[u8]) -> Result<Self, MetaError> {
        let probe: VersionProbe = serde_json::from_slice(bytes)?;
        if probe.version != u64::from(KEYED_STATE_META_VERSION) {
            return Err(MetaError::UnsupportedVersion {
                found: probe.version,
                supported: KEYED_STATE_META_VERSION,
            });
        }
        let meta: Self = serde_json::from_slice(bytes)?;
        check_file_names(meta.files.iter().map(|f| f.name.as_str()))
            .map_err(|(name, reason)| MetaError::BadFileName { name, reason })?;
        for file in &meta.files {
            FileHandle::new(file.path.clone(), 0, 0, false).map_err(|source| {
                MetaError::BadPath {
                    name: file.name.clone(),
                    source,
                }
            })?;
        }
        Ok(meta)
    }
}

/// Checks that every name can be a file name directly inside a local directory (one segment,
/// not `.` or `..`) and that no name appears twice; returns the first bad name and why.
pub(crate) fn check_file_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), (String, &'static str)> {
    let mut seen = BTreeSet::new();
    for name in names {
        let reason = if name.is_empty() {
            Some("is empty")
        } else if name == "." || name == ".." {
            Some("must not be '.' or '..'")
        } else if name.contains(['/', '\\', '\0']) {
            Some("must be a single path segment (no '/', '\\' or NUL)")
        } else if !seen.insert(name) {
            Some("appears twice in one snapshot")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err((name.to_owned(), reason));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_state::StateKind;

    fn meta() -> KeyedStateMeta {
        KeyedStateMeta::new(
            "rocksdb",
            1,
            KeyGroupRange { start: 0, end: 63 },
            vec![StateDescriptor {
                name: "count".into(),
                kind: StateKind::Value,
            }],
            vec![
                KeyedFileMeta {
                    name: "000012.sst".into(),
                    path: "shared/sum/0/3-000012.sst".into(),
                },
                KeyedFileMeta {
                    name: "MANIFEST-000005".into(),
                    path: "chk-3/sum/0/MANIFEST-000005".into(),
                },
            ],
        )
    }

    #[test]
    fn fuzzed_keyed_state_meta_is_refused_or_decoded_never_a_panic_or_a_hang() {
        weir_fuzz::run("keyed-state meta", &[meta().encode().unwrap()], |bytes| {
            let _ = KeyedStateMeta::decode(bytes);
        });
    }

    #[test]
    fn keyed_state_meta_round_trips_through_json_with_version_one() {
        let m = meta();
        let bytes = m.encode().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["key_groups"]["start"], 0);
        assert_eq!(json["key_groups"]["end"], 63);
        assert_eq!(KeyedStateMeta::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn keyed_state_meta_with_an_unknown_version_is_rejected() {
        let mut json: serde_json::Value =
            serde_json::from_slice(&meta().encode().unwrap()).unwrap();
        json["version"] = 2.into();
        // Even with fields a version-1 reader does not know, the version is what is reported.
        json["something_new"] = true.into();
        let err = KeyedStateMeta::decode(&serde_json::to_vec(&json).unwrap()).unwrap_err();
        assert!(
            matches!(
                err,
                MetaError::UnsupportedVersion {
                    found: 2,
                    supported: 1
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn keyed_state_meta_without_a_version_or_with_garbage_is_rejected() {
        assert!(matches!(
            KeyedStateMeta::decode(br#"{"backend":"heap"}"#),
            Err(MetaError::Json(_))
        ));
        assert!(matches!(
            KeyedStateMeta::decode(b"\x00\x01"),
            Err(MetaError::Json(_))
        ));
    }

    #[test]
    fn keyed_state_meta_with_a_name_that_escapes_the_restore_directory_is_rejected() {
        for bad in ["../x", "a/b", "..", "", "a\\b"] {
            let mut m = meta();
            m.files[0].name = bad.into();
            let err = KeyedStateMeta::decode(&m.encode().unwrap()).unwrap_err();
            assert!(
                matches!(err, MetaError::BadFileName { .. }),
                "{bad:?}: {err}"
            );
        }
        let mut m = meta();
        m.files[1].name = m.files[0].name.clone();
        let err = KeyedStateMeta::decode(&m.encode().unwrap()).unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
    }

    #[test]
    fn keyed_state_meta_with_a_path_outside_the_job_directory_is_rejected() {
        let mut m = meta();
        m.files[0].path = "../other-job/shared/x".into();
        let err = KeyedStateMeta::decode(&m.encode().unwrap()).unwrap_err();
        assert!(matches!(err, MetaError::BadPath { .. }), "{err}");
        assert!(err.to_string().contains("../other-job"), "{err}");
    }
}
