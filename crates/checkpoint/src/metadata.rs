//! The `_metadata` file: what a completed checkpoint or savepoint consists of.
//!
//! A checkpoint exists exactly when its `_metadata` exists and verifies (invariant 1), so the
//! format is framed to make damage detectable:
//!
//! ```text
//! offset  size  field
//! 0       4     magic  b"WEIR"
//! 4       2     format version, u16 big-endian (currently 2)
//! 6       4     body length N, u32 big-endian
//! 10      N     body: the CheckpointMetadata as JSON
//! 10+N    4     CRC32 (crc32fast) of bytes 0..10+N, u32 big-endian
//! ```
//!
//! JSON keeps the body readable by `weir savepoint inspect` and by hand; the frame, not the
//! body, carries integrity. A new body layout needs a new version and a reader for the old one
//! (invariant 5). Versions:
//! - 1: the first layout.
//! - 2: an operator subtask's state may say `"finished": true` (taken after its end of input).
//!   Version 1 bodies read as version 2 with `finished` false, which is what they meant.
//! - 3: the body may name the job (`"job_name"`). Older bodies read with no name.
//! - 4: the body may carry the leader epoch of the JobManager that wrote it
//!   (`"leader_epoch"`, with high availability). Older bodies read with none.

use crate::handle::{FileHandle, OperatorSubtaskState};
use crate::kind::CheckpointKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use weir_types::{CheckpointId, JobId, OperatorUid, SubtaskIndex, VertexId};

/// The first four bytes of every `_metadata` file.
pub const METADATA_MAGIC: [u8; 4] = *b"WEIR";
/// The format version this crate writes.
pub const METADATA_VERSION: u16 = 4;

/// The oldest format version this crate reads.
pub const METADATA_OLDEST_READABLE_VERSION: u16 = 1;
/// The name of the metadata file inside a checkpoint or savepoint directory.
pub const METADATA_FILE_NAME: &str = "_metadata";

const HEADER_LEN: usize = 4 + 2 + 4;
const TRAILER_LEN: usize = 4;

/// The state of one operator across its subtasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorState {
    /// The JobGraph vertex the operator ran in when the snapshot was taken.
    pub vertex: VertexId,
    /// The vertex's parallelism when the snapshot was taken.
    pub parallelism: u32,
    /// What each subtask wrote; subtasks that wrote nothing for this operator are absent.
    pub subtasks: BTreeMap<SubtaskIndex, OperatorSubtaskState>,
}

/// Everything needed to restore a job from one checkpoint or savepoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// The job that took the snapshot.
    pub job_id: JobId,
    /// The checkpoint (or savepoint) id.
    pub checkpoint_id: CheckpointId,
    /// Checkpoint or savepoint, and the savepoint's format.
    pub kind: CheckpointKind,
    /// When the checkpoint was triggered, in milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// The number of key groups; a restore must use the same.
    pub max_parallelism: u32,
    /// The key-group hash version the keyed state was partitioned with.
    pub key_group_hash_version: u16,
    /// Per operator uid, the state of each subtask.
    pub operators: BTreeMap<OperatorUid, OperatorState>,
    /// True when no file lies outside the snapshot's own directory (no `shared/` reference), so
    /// the snapshot may be moved or outlive the job's checkpoint directory.
    pub self_contained: bool,
    /// The job's name in its binary's catalog (version 3 on), so tools can decode its state
    /// without being told which job wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// The leader epoch of the JobManager that completed the snapshot (version 4 on, with
    /// high availability): a leader ignores a `_metadata` written by a newer epoch than its
    /// own, and a new leader knows which epoch each checkpoint came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_epoch: Option<u64>,
}

/// Why bytes are not a valid `_metadata` file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// Shorter than its frame says it must be.
    #[error("metadata is truncated: {len} bytes, expected at least {needed}")]
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes the frame requires.
        needed: usize,
    },
    /// Longer than its frame says.
    #[error("metadata has {extra} unexpected bytes after its CRC trailer")]
    TrailingBytes {
        /// Bytes beyond the trailer.
        extra: usize,
    },
    /// Does not start with `WEIR`.
    #[error("not a Weir metadata file: bad magic {found:02x?}, expected {expected:02x?}")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
        /// [`METADATA_MAGIC`].
        expected: [u8; 4],
    },
    /// A format version this build cannot read.
    #[error("unsupported metadata format version {0} (this build reads versions 1 to 4)")]
    UnsupportedVersion(u16),
    /// The bytes changed after they were written.
    #[error("metadata CRC mismatch: trailer says {expected:#010x}, bytes give {actual:#010x}")]
    CrcMismatch {
        /// The CRC stored in the trailer.
        expected: u32,
        /// The CRC computed over the bytes read.
        actual: u32,
    },
    /// The frame verified but the body is not valid metadata (a writer bug, not damage).
    #[error("metadata body is invalid: {0}")]
    Body(String),
    /// The metadata could not be encoded (its body exceeds 4 GiB or failed to serialize).
    #[error("metadata could not be encoded: {0}")]
    Encode(String),
}

impl CheckpointMetadata {
    /// Every file the snapshot references.
    pub fn files(&self) -> impl Iterator<Item = &FileHandle> {
        self.operators
            .values()
            .flat_map(|op| op.subtasks.values())
            .flat_map(|st| st.files.iter())
    }

    /// Whether no file is shared with other snapshots.
    pub fn computes_self_contained(&self) -> bool {
        self.files().all(|f| !f.is_shared())
    }

    /// Encodes the metadata in the framed format described in the module doc.
    pub fn encode(&self) -> Result<Vec<u8>, MetadataError> {
        let body = serde_json::to_vec(self).map_err(|e| MetadataError::Encode(e.to_string()))?;
        let body_len = u32::try_from(body.len())
            .map_err(|_| MetadataError::Encode(format!("body of {} bytes", body.len())))?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TRAILER_LEN);
        out.extend_from_slice(&METADATA_MAGIC);
        out.extend_from_slice(&METADATA_VERSION.to_be_bytes());
        out.extend_from_slice(&body_len.to_be_bytes());
        out.extend_from_slice(&body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        Ok(out)
    }

    /// Verifies magic, version, length and CRC, then decodes the body.
    pub fn decode(bytes: &[u8]) -> Result<Self, MetadataError> {
        let min = HEADER_LEN + TRAILER_LEN;
        if bytes.len() < min {
            return Err(MetadataError::Truncated {
                len: bytes.len(),
                needed: min,
            });
        }
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != METADATA_MAGIC {
            return Err(MetadataError::BadMagic {
                found: magic,
                expected: METADATA_MAGIC,
            });
        }
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        if !(METADATA_OLDEST_READABLE_VERSION..=METADATA_VERSION).contains(&version) {
            return Err(MetadataError::UnsupportedVersion(version));
        }
        let body_len = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]) as usize;
        let needed = HEADER_LEN
            .saturating_add(body_len)
            .saturating_add(TRAILER_LEN);
        if bytes.len() < needed {
            return Err(MetadataError::Truncated {
                len: bytes.len(),
                needed,
            });
        }
        if bytes.len() > needed {
            return Err(MetadataError::TrailingBytes {
                extra: bytes.len() - needed,
            });
        }
        let crc_at = HEADER_LEN + body_len;
        let expected = u32::from_be_bytes([
            bytes[crc_at],
            bytes[crc_at + 1],
            bytes[crc_at + 2],
            bytes[crc_at + 3],
        ]);
        let actual = crc32fast::hash(&bytes[..crc_at]);
        if expected != actual {
            return Err(MetadataError::CrcMismatch { expected, actual });
        }
        serde_json::from_slice(&bytes[HEADER_LEN..crc_at])
            .map_err(|e| MetadataError::Body(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::SavepointFormat;

    fn sample() -> CheckpointMetadata {
        let uid = OperatorUid::new("counter").unwrap();
        let mut subtasks = BTreeMap::new();
        subtasks.insert(
            SubtaskIndex(0),
            OperatorSubtaskState {
                files: vec![FileHandle::new("shared/a.sst", 10, 0xdead_beef, true).unwrap()],
                inline: Some(vec![1, 2, 3]),
                finished: false,
            },
        );
        let mut operators = BTreeMap::new();
        operators.insert(
            uid,
            OperatorState {
                vertex: VertexId(1),
                parallelism: 2,
                subtasks,
            },
        );
        CheckpointMetadata {
            job_id: JobId(u128::MAX - 7),
            checkpoint_id: CheckpointId(9),
            kind: CheckpointKind::Savepoint {
                format: SavepointFormat::Native,
            },
            timestamp: 1_700_000_000_000,
            max_parallelism: 128,
            key_group_hash_version: weir_types::KEY_GROUP_HASH_VERSION,
            operators,
            self_contained: false,
            job_name: None,
            leader_epoch: None,
        }
    }

    #[test]
    fn fuzzed_metadata_is_refused_or_decoded_never_a_panic_a_hang_or_a_huge_allocation() {
        let mut plain = sample();
        plain.kind = CheckpointKind::Checkpoint;
        plain.leader_epoch = Some(3);
        let seeds = vec![sample().encode().unwrap(), plain.encode().unwrap()];
        weir_fuzz::run("_metadata", &seeds, |b| {
            if let Ok(m) = CheckpointMetadata::decode(b) {
                // What decodes must encode again.
                let _ = m.encode();
            }
        });
        // Mutated bodies in a valid frame (right length and CRC), so the JSON decoder behind
        // the CRC is reached too.
        let bodies: Vec<Vec<u8>> = seeds
            .iter()
            .map(|s| s[HEADER_LEN..s.len() - TRAILER_LEN].to_vec())
            .collect();
        weir_fuzz::run("_metadata body", &bodies, |body| {
            let mut framed = Vec::with_capacity(HEADER_LEN + body.len() + TRAILER_LEN);
            framed.extend_from_slice(&METADATA_MAGIC);
            framed.extend_from_slice(&METADATA_VERSION.to_be_bytes());
            framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
            framed.extend_from_slice(body);
            let crc = crc32fast::hash(&framed);
            framed.extend_from_slice(&crc.to_be_bytes());
            if let Ok(m) = CheckpointMetadata::decode(&framed) {
                let _ = m.encode();
            }
        });
    }

    #[test]
    fn metadata_round_trips_through_encode_and_decode() {
        let m = sample();
        let bytes = m.encode().unwrap();
        assert_eq!(&bytes[..4], b"WEIR");
        assert_eq!(CheckpointMetadata::decode(&bytes), Ok(m));
    }

    #[test]
    fn a_wrong_magic_is_named() {
        let mut bytes = sample().encode().unwrap();
        bytes[0] = b'X';
        assert!(matches!(
            CheckpointMetadata::decode(&bytes),
            Err(MetadataError::BadMagic { .. })
        ));
    }

    #[test]
    fn a_newer_version_is_reported_with_its_number() {
        let mut bytes = sample().encode().unwrap();
        bytes[5] = 5;
        let n = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..n]).to_be_bytes();
        bytes[n..].copy_from_slice(&crc);
        let err = CheckpointMetadata::decode(&bytes).unwrap_err();
        assert_eq!(err, MetadataError::UnsupportedVersion(5));
        assert!(err.to_string().contains("version 5"));
    }

    #[test]
    fn the_leader_epoch_round_trips_and_a_version_3_body_reads_without_one() {
        let m = CheckpointMetadata {
            leader_epoch: Some(7),
            ..sample()
        };
        let bytes = m.encode().unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("\"leader_epoch\":7"));
        assert_eq!(CheckpointMetadata::decode(&bytes).unwrap(), m);
        let mut old = sample().encode().unwrap();
        old[5] = 3;
        let n = old.len() - 4;
        let crc = crc32fast::hash(&old[..n]).to_be_bytes();
        old[n..].copy_from_slice(&crc);
        assert_eq!(CheckpointMetadata::decode(&old).unwrap().leader_epoch, None);
    }

    #[test]
    fn a_version_1_body_reads_with_every_subtask_unfinished() {
        let m = sample();
        let mut bytes = m.encode().unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("finished"));
        bytes[5] = 1;
        let n = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..n]).to_be_bytes();
        bytes[n..].copy_from_slice(&crc);
        assert_eq!(CheckpointMetadata::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn a_truncated_file_is_reported_as_truncated() {
        let bytes = sample().encode().unwrap();
        for cut in [0, 3, 9, bytes.len() - 1] {
            assert!(
                matches!(
                    CheckpointMetadata::decode(&bytes[..cut]),
                    Err(MetadataError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_changed_body_byte_is_a_crc_mismatch() {
        let mut bytes = sample().encode().unwrap();
        bytes[20] ^= 0x01;
        assert!(matches!(
            CheckpointMetadata::decode(&bytes),
            Err(MetadataError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn a_snapshot_with_a_shared_file_is_not_self_contained() {
        assert!(!sample().computes_self_contained());
    }
}
