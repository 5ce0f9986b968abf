//! The leaf of Weir's crate graph: newtype ids, key groups and the stable key hash, and the
//! messages that travel on a stream channel.
//!
//! This crate must not depend on any other Weir crate, nor on RocksDB, tokio or tonic: every
//! other crate (and the wire formats of later issues) builds on these definitions.
//!
//! Key types: [`OperatorUid`], [`NodeId`], [`VertexId`], [`SubtaskIndex`], [`KeyGroup`],
//! [`KeyGroupRange`], [`StreamElement`].

#![warn(missing_docs)]

pub mod ids;
pub mod key_group;
pub mod message;

pub use ids::{
    AttemptId, CheckpointId, JobId, NodeId, OperatorUid, SubtaskIndex, UidError, VertexId,
};
pub use key_group::{
    default_max_parallelism, key_group_for_key_bytes, key_group_range_for_subtask, stable_hash64,
    subtask_for_key_group, KeyGroup, KeyGroupRange, KEY_GROUP_HASH_VERSION, MAX_MAX_PARALLELISM,
};
pub use message::{
    Barrier, EncodedElement, SavepointBarrier, StreamElement, Watermark, WatermarkStatus,
};
