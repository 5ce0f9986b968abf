//! The canonical snapshot format: one keyed operator subtask's state as a backend-neutral,
//! key-group-ordered stream of entries. A canonical savepoint stores one such file per keyed
//! operator subtask; it restores on any backend, at any parallelism (each entry carries its
//! key group), and can be read without the job's code (`weir savepoint dump`).
//!
//! Layout (version 1), every integer big-endian:
//!
//! ```text
//! offset  size  field
//! 0       4     magic b"WKVS"
//! 4       2     format version (1)
//! 6       4     header length H
//! 10      H     header: JSON {"key_groups":{"start":s,"end":e},"key_layout":1,
//!                          "descriptors":[{"name":"count","kind":"Value"}, …]}
//! then per entry, in ascending (state index, encoded key) order — so key group by key group
//! within each state:
//!         2     state index (into descriptors; never 0xFFFF)
//!         4     key length K, then K bytes: the key in the state-key layout
//!               (`crate::encoding`: key group ‖ key ‖ namespace ‖ user key)
//!         4     value length V, then V bytes
//! end:    2     0xFFFF
//!         8     number of entries
//!         4     CRC32 (crc32fast) of every byte before it
//! ```
//!
//! A reader checks the magic, the version, every length against the bytes left, every key
//! against the layout and its key group against the header's range, the entry count and the
//! CRC: damaged bytes are an error naming what is wrong, never state.

use crate::backend::{KeyedStateBackend, StateDescriptor};
use crate::encoding::{decode_state_key, encode_state_key, STATE_KEY_LAYOUT_VERSION};
use crate::{StateError, StateKey};
use serde::{Deserialize, Serialize};
use weir_types::KeyGroupRange;

/// The first four bytes of a canonical snapshot file.
pub const CANONICAL_MAGIC: [u8; 4] = *b"WKVS";
/// The canonical format version this build writes and reads.
pub const CANONICAL_VERSION: u16 = 1;
/// The name of a canonical snapshot file within its snapshot (and its savepoint folder).
pub const CANONICAL_FILE_NAME: &str = "canonical-state";
/// The backend name a canonical snapshot's [`crate::LocalSnapshot`] carries: restore reads it
/// with [`restore_into`] on whatever backend the job uses.
pub const CANONICAL_BACKEND: &str = "canonical";

const END_MARKER: u16 = 0xFFFF;
/// The largest header a reader accepts (a header lists descriptors only).
const MAX_HEADER_BYTES: usize = 1 << 20;

/// What the header of a canonical file says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanonicalHeader {
    /// The key groups the entries belong to.
    pub key_groups: KeyGroupRange,
    /// The state-key layout version ([`STATE_KEY_LAYOUT_VERSION`]).
    pub key_layout: u16,
    /// The declared states; an entry's state index points into this list.
    pub descriptors: Vec<StateDescriptor>,
}

/// Why bytes are not a readable canonical snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// Not a canonical file at all.
    #[error("not a canonical state file: bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// Written by another format version.
    #[error("canonical state format version {found} is not supported (this build reads {CANONICAL_VERSION})")]
    UnsupportedVersion {
        /// The version found.
        found: u16,
    },
    /// Something in the bytes contradicts the layout.
    #[error("canonical state file is damaged at byte {offset}: {detail}")]
    Damaged {
        /// Where the reader stopped.
        offset: usize,
        /// What was wrong.
        detail: String,
    },
    /// The CRC trailer does not match the bytes.
    #[error("canonical state file CRC mismatch: trailer {expected:#010x}, bytes {actual:#010x}")]
    CrcMismatch {
        /// Stored.
        expected: u32,
        /// Computed.
        actual: u32,
    },
}

/// Writes every entry of every declared state of `backend` as a canonical file.
pub fn write_from(backend: &mut dyn KeyedStateBackend) -> Result<Vec<u8>, StateError> {
    backend.flush()?;
    let descriptors = backend.descriptors().to_vec();
    let header = CanonicalHeader {
        key_groups: backend.key_group_range(),
        key_layout: STATE_KEY_LAYOUT_VERSION,
        descriptors: descriptors.clone(),
    };
    let mut out = Vec::new();
    out.extend_from_slice(&CANONICAL_MAGIC);
    out.extend_from_slice(&CANONICAL_VERSION.to_be_bytes());
    let header = serde_json::to_vec(&header).map_err(|e| StateError::Backend {
        backend: "canonical",
        op: "encode the header".into(),
        detail: e.to_string(),
    })?;
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    let mut count: u64 = 0;
    let mut key = Vec::new();
    for (index, _) in descriptors.iter().enumerate() {
        let state_index = u16::try_from(index)
            .ok()
            .filter(|i| *i != END_MARKER)
            .ok_or_else(|| StateError::Backend {
                backend: "canonical",
                op: "write a snapshot".into(),
                detail: format!("more than {} states", END_MARKER - 1),
            })?;
        backend.scan(crate::StateId(index as u32), &mut |entry| {
            key.clear();
            encode_state_key(&mut key, &entry.key);
            let too_long = |what: &str, n: usize| StateError::Backend {
                backend: "canonical",
                op: "write a snapshot".into(),
                detail: format!("a {what} of {n} bytes exceeds 4 GiB"),
            };
            let klen = u32::try_from(key.len()).map_err(|_| too_long("key", key.len()))?;
            let vlen = u32::try_from(entry.value.len())
                .map_err(|_| too_long("value", entry.value.len()))?;
            out.extend_from_slice(&state_index.to_be_bytes());
            out.extend_from_slice(&klen.to_be_bytes());
            out.extend_from_slice(&key);
            out.extend_from_slice(&vlen.to_be_bytes());
            out.extend_from_slice(entry.value);
            count += 1;
            Ok(())
        })?;
    }
    out.extend_from_slice(&END_MARKER.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// One entry of a canonical file.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CanonicalEntry<'a> {
    /// Index into [`CanonicalHeader::descriptors`].
    pub state: usize,
    /// The decoded key.
    pub key: StateKey<'a>,
    /// The stored value bytes.
    pub value: &'a [u8],
}

/// A verified canonical file: its header, and its entries to iterate.
#[derive(Debug)]
pub struct CanonicalFile<'a> {
    /// The header.
    pub header: CanonicalHeader,
    body: &'a [u8],
    body_offset: usize,
    entries: u64,
}

fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], CanonicalError> {
    let end = at.checked_add(n).filter(|e| *e <= bytes.len());
    match end {
        Some(end) => {
            let s = &bytes[*at..end];
            *at = end;
            Ok(s)
        }
        None => Err(CanonicalError::Damaged {
            offset: *at,
            detail: format!(
                "{n} bytes announced, {} left",
                bytes.len().saturating_sub(*at)
            ),
        }),
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl<'a> CanonicalFile<'a> {
    /// Checks the frame (magic, version, header, end marker, count, CRC) of `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, CanonicalError> {
        if bytes.len() < 4 + 2 + 4 + 2 + 8 + 4 {
            return Err(CanonicalError::Damaged {
                offset: 0,
                detail: format!("{} bytes are too few for a canonical file", bytes.len()),
            });
        }
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != CANONICAL_MAGIC {
            return Err(CanonicalError::BadMagic(magic));
        }
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        if version != CANONICAL_VERSION {
            return Err(CanonicalError::UnsupportedVersion { found: version });
        }
        let crc_at = bytes.len() - 4;
        let expected = be_u32(&bytes[crc_at..]);
        let actual = crc32fast::hash(&bytes[..crc_at]);
        if expected != actual {
            return Err(CanonicalError::CrcMismatch { expected, actual });
        }
        let mut at = 6;
        let header_len = be_u32(take(bytes, &mut at, 4)?) as usize;
        if header_len > MAX_HEADER_BYTES {
            return Err(CanonicalError::Damaged {
                offset: 6,
                detail: format!("a header of {header_len} bytes exceeds {MAX_HEADER_BYTES}"),
            });
        }
        let header: CanonicalHeader = serde_json::from_slice(take(bytes, &mut at, header_len)?)
            .map_err(|e| CanonicalError::Damaged {
                offset: 10,
                detail: format!("header: {e}"),
            })?;
        if header.key_layout != STATE_KEY_LAYOUT_VERSION {
            return Err(CanonicalError::Damaged {
                offset: 10,
                detail: format!(
                    "key layout version {} is not {STATE_KEY_LAYOUT_VERSION}",
                    header.key_layout
                ),
            });
        }
        let trailer_at = crc_at - 8 - 2;
        if trailer_at < at || bytes[trailer_at..trailer_at + 2] != END_MARKER.to_be_bytes() {
            return Err(CanonicalError::Damaged {
                offset: trailer_at,
                detail: "no end marker before the trailer".into(),
            });
        }
        let mut count = [0u8; 8];
        count.copy_from_slice(&bytes[trailer_at + 2..crc_at]);
        Ok(Self {
            header,
            body: &bytes[at..trailer_at],
            body_offset: at,
            entries: u64::from_be_bytes(count),
        })
    }

    /// The number of entries the trailer announces.
    pub fn len(&self) -> u64 {
        self.entries
    }

    /// Whether the file holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Visits every entry in file order; stops at the first damaged one or the first error of
    /// `f`. Checks that the entries add up to the announced count.
    pub fn for_each(
        &self,
        f: &mut dyn FnMut(CanonicalEntry<'_>) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let damaged = |e: CanonicalError| StateError::Backend {
            backend: CANONICAL_BACKEND,
            op: "read a snapshot".into(),
            detail: e.to_string(),
        };
        let body = self.body;
        let mut at = 0usize;
        let mut seen = 0u64;
        while at < body.len() {
            let offset = self.body_offset + at;
            let bad = |detail: String| damaged(CanonicalError::Damaged { offset, detail });
            let state = take(body, &mut at, 2).map_err(damaged)?;
            let state = u16::from_be_bytes([state[0], state[1]]) as usize;
            if state >= self.header.descriptors.len() {
                return Err(bad(format!(
                    "state index {state}, but {} states are declared",
                    self.header.descriptors.len()
                )));
            }
            let klen = be_u32(take(body, &mut at, 4).map_err(damaged)?) as usize;
            let key = take(body, &mut at, klen).map_err(damaged)?;
            let vlen = be_u32(take(body, &mut at, 4).map_err(damaged)?) as usize;
            let value = take(body, &mut at, vlen).map_err(damaged)?;
            let key = decode_state_key(key)
                .ok_or_else(|| bad("a key does not follow the state-key layout".into()))?;
            if !self.header.key_groups.contains(key.key_group) {
                return Err(bad(format!(
                    "key group {} lies outside the file's range {}",
                    key.key_group.0, self.header.key_groups
                )));
            }
            seen += 1;
            f(CanonicalEntry { state, key, value })?;
        }
        if seen != self.entries {
            return Err(damaged(CanonicalError::Damaged {
                offset: self.body_offset + at,
                detail: format!("{seen} entries, the trailer says {}", self.entries),
            }));
        }
        Ok(())
    }
}

/// Puts every entry of `file` whose key group `backend` owns into `backend`, registering the
/// file's states first (a state of another kind under the same name is
/// [`StateError::KindMismatch`]). Returns the number of entries put.
pub fn restore_into(
    backend: &mut dyn KeyedStateBackend,
    file: &CanonicalFile<'_>,
) -> Result<u64, StateError> {
    let ids = file
        .header
        .descriptors
        .iter()
        .map(|d| backend.register(d))
        .collect::<Result<Vec<_>, _>>()?;
    let range = backend.key_group_range();
    let mut put = 0u64;
    file.for_each(&mut |entry| {
        if range.contains(entry.key.key_group) {
            backend.put(ids[entry.state], &entry.key, entry.value)?;
            put += 1;
        }
        Ok(())
    })?;
    Ok(put)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::StateKind;
    use crate::HeapStateBackend;
    use weir_types::KeyGroup;

    fn backend(range: KeyGroupRange) -> HeapStateBackend {
        HeapStateBackend::new(range)
    }

    fn key(kg: u16, k: &'static [u8]) -> StateKey<'static> {
        StateKey {
            key_group: KeyGroup(kg),
            key: k,
            namespace: b"",
            user_key: b"",
        }
    }

    fn filled() -> HeapStateBackend {
        let mut b = backend(KeyGroupRange { start: 0, end: 9 });
        let count = b
            .register(&StateDescriptor {
                name: "count".into(),
                kind: StateKind::Value,
            })
            .unwrap();
        let seen = b
            .register(&StateDescriptor {
                name: "seen".into(),
                kind: StateKind::Value,
            })
            .unwrap();
        for kg in 0..10u16 {
            b.put(count, &key(kg, b"k"), &[kg as u8; 3]).unwrap();
        }
        b.put(seen, &key(4, b"x"), b"yes").unwrap();
        b
    }

    #[test]
    fn fuzzed_canonical_files_are_refused_or_read_never_a_panic_or_a_hang() {
        let seed = write_from(&mut filled()).unwrap();
        let empty = write_from(&mut backend(KeyGroupRange { start: 0, end: 9 })).unwrap();
        weir_fuzz::run("canonical savepoint file", &[seed, empty], |bytes| {
            if let Ok(file) = CanonicalFile::parse(bytes) {
                let _ = file.for_each(&mut |_| Ok(()));
            }
        });
    }

    #[test]
    fn a_canonical_file_restores_only_the_key_groups_the_new_backend_owns() {
        let bytes = write_from(&mut filled()).unwrap();
        let file = CanonicalFile::parse(&bytes).unwrap();
        assert_eq!(file.len(), 11);
        let mut low = backend(KeyGroupRange { start: 0, end: 4 });
        let mut high = backend(KeyGroupRange { start: 5, end: 9 });
        assert_eq!(restore_into(&mut low, &file).unwrap(), 6);
        assert_eq!(restore_into(&mut high, &file).unwrap(), 5);
        let count = crate::StateId(0);
        assert_eq!(low.get(count, &key(3, b"k")).unwrap(), Some(&[3u8; 3][..]));
        assert_eq!(high.get(count, &key(9, b"k")).unwrap(), Some(&[9u8; 3][..]));
        assert_eq!(
            low.get(crate::StateId(1), &key(4, b"x")).unwrap(),
            Some(&b"yes"[..])
        );
    }

    #[test]
    fn every_flipped_byte_of_a_canonical_file_is_refused() {
        let bytes = write_from(&mut filled()).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let verdict = CanonicalFile::parse(&bad)
                .map_err(|e| e.to_string())
                .and_then(|f| f.for_each(&mut |_| Ok(())).map_err(|e| e.to_string()));
            assert!(verdict.is_err(), "byte {i} flipped went unnoticed");
        }
    }

    #[test]
    fn a_truncated_canonical_file_is_refused() {
        let bytes = write_from(&mut filled()).unwrap();
        for cut in [0, 5, 12, bytes.len() / 2, bytes.len() - 1] {
            assert!(CanonicalFile::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn another_canonical_version_is_named() {
        let mut bytes = write_from(&mut filled()).unwrap();
        bytes[5] = 9;
        assert_eq!(
            CanonicalFile::parse(&bytes).unwrap_err(),
            CanonicalError::UnsupportedVersion { found: 9 }
        );
    }

    #[test]
    fn restoring_a_state_under_another_kind_is_a_kind_mismatch() {
        let bytes = write_from(&mut filled()).unwrap();
        let file = CanonicalFile::parse(&bytes).unwrap();
        let mut b = backend(KeyGroupRange { start: 0, end: 9 });
        b.register(&StateDescriptor {
            name: "count".into(),
            kind: StateKind::Map,
        })
        .unwrap();
        assert!(matches!(
            restore_into(&mut b, &file),
            Err(StateError::KindMismatch { .. })
        ));
    }
}
