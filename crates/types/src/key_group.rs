//! Key groups: the unit in which keyed state is partitioned, stored and rescaled.
//!
//! `key_group = stable_hash64(serialized key) % max_parallelism`, and subtask `i` of `p` owns the
//! contiguous range Flink's `KeyGroupRangeAssignment` gives it. The hash is defined here, byte by
//! byte, and never changes within a [`KEY_GROUP_HASH_VERSION`]: savepoints depend on it, so it
//! must be the same on every node, build and version (Rust's `DefaultHasher` is none of these).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Version of [`stable_hash64`] and of the key-group assignment. Stored in every snapshot; a
/// change to either needs a new version and a reader for the old one.
pub const KEY_GROUP_HASH_VERSION: u16 = 1;

/// The largest allowed max parallelism (number of key groups), as in Flink: 2^15.
pub const MAX_MAX_PARALLELISM: u32 = 1 << 15;

/// A key group, `0..max_parallelism`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyGroup(pub u16);

impl fmt::Display for KeyGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kg-{}", self.0)
    }
}

/// An inclusive range of key groups owned by one subtask. Empty when `end < start`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyGroupRange {
    /// First key group of the range.
    pub start: u16,
    /// Last key group of the range (inclusive).
    pub end: u16,
}

impl KeyGroupRange {
    /// Whether `kg` lies in this range.
    pub fn contains(&self, kg: KeyGroup) -> bool {
        self.start <= kg.0 && kg.0 <= self.end
    }

    /// Number of key groups in the range.
    pub fn len(&self) -> u32 {
        if self.end < self.start {
            0
        } else {
            u32::from(self.end - self.start) + 1
        }
    }

    /// Whether the range holds no key group.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            f.write_str("[]")
        } else {
            write!(f, "[{}..={}]", self.start, self.end)
        }
    }
}

/// The project's stable 64-bit hash: FNV-1a over the bytes, then the MurmurHash3 64-bit
/// finaliser so that every input bit reaches every output bit (FNV alone leaves the low bits,
/// which the modulo uses, poorly mixed for short keys).
pub fn stable_hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The key group of a key, given its serialised bytes.
pub fn key_group_for_key_bytes(key_bytes: &[u8], max_parallelism: u32) -> KeyGroup {
    debug_assert!((1..=MAX_MAX_PARALLELISM).contains(&max_parallelism));
    KeyGroup((stable_hash64(key_bytes) % u64::from(max_parallelism)) as u16)
}

/// The subtask (of `parallelism`) that owns key group `kg`.
pub fn subtask_for_key_group(kg: KeyGroup, max_parallelism: u32, parallelism: u32) -> u32 {
    (u32::from(kg.0) * parallelism) / max_parallelism
}

/// The key groups subtask `index` of `parallelism` owns: the exact inverse of
/// [`subtask_for_key_group`].
pub fn key_group_range_for_subtask(
    max_parallelism: u32,
    parallelism: u32,
    index: u32,
) -> KeyGroupRange {
    let start = (index * max_parallelism).div_ceil(parallelism);
    let end = ((index + 1) * max_parallelism).div_ceil(parallelism);
    if end == 0 || end <= start {
        return KeyGroupRange { start: 1, end: 0 };
    }
    KeyGroupRange {
        start: start as u16,
        end: (end - 1) as u16,
    }
}

/// Flink's default max parallelism for a job whose largest operator parallelism is `p`:
/// `p * 1.5` rounded up to a power of two, at least 128 and at most 2^15.
pub fn default_max_parallelism(p: u32) -> u32 {
    let wanted = u64::from(p) + u64::from(p) / 2;
    (wanted.next_power_of_two() as u32).clamp(128, MAX_MAX_PARALLELISM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stable_hash_never_changes() {
        // Pinned values: if these change, every savepoint's key groups change with them.
        assert_eq!(stable_hash64(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(stable_hash64(b"word"), 0x4c78_5db2_fc3b_b1cf);
        assert_eq!(key_group_for_key_bytes(b"word", 128), KeyGroup(79));
    }

    #[test]
    fn every_key_group_belongs_to_the_subtask_whose_range_contains_it() {
        for max_p in [1u32, 7, 128, 1000, MAX_MAX_PARALLELISM] {
            for p in [1u32, 2, 3, 5, 7, 64] {
                if p > max_p {
                    continue;
                }
                let mut covered = 0;
                for i in 0..p {
                    let r = key_group_range_for_subtask(max_p, p, i);
                    covered += r.len();
                    for kg in r.start..=r.end.max(r.start) {
                        if r.is_empty() {
                            break;
                        }
                        assert_eq!(subtask_for_key_group(KeyGroup(kg), max_p, p), i);
                    }
                }
                assert_eq!(covered, max_p, "max_p={max_p} p={p}");
            }
        }
    }

    #[test]
    fn default_max_parallelism_follows_flink() {
        assert_eq!(default_max_parallelism(1), 128);
        assert_eq!(default_max_parallelism(100), 256);
        assert_eq!(default_max_parallelism(100_000), MAX_MAX_PARALLELISM);
    }
}
