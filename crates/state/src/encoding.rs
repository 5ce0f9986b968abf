//! The byte layout of a state key, shared by every backend and (later) the canonical savepoint
//! format: `key_group (u16, big-endian) ‖ varint(len key) ‖ key ‖ varint(len namespace) ‖
//! namespace ‖ user_key`.
//!
//! The key group comes first and fixed-width, so one key group — and a contiguous range of them —
//! is one contiguous byte range (rescaling is a range copy or a range delete). The key and the
//! namespace are length-prefixed so that the bytes of `(key group, key, namespace)` are a prefix
//! of exactly that cell's entries and of no other key's.

use crate::{StateError, StateKey};
use weir_types::KeyGroup;

/// Version of this layout; stored in snapshots (invariant 5).
pub const STATE_KEY_LAYOUT_VERSION: u16 = 1;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut v: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, &bytes[i + 1..]));
        }
    }
    None
}

/// Appends the encoding of `key`'s key group, key and namespace (the prefix of its cell) to
/// `out`.
pub fn encode_prefix(out: &mut Vec<u8>, key: &StateKey<'_>) {
    out.extend_from_slice(&key.key_group.0.to_be_bytes());
    put_varint(out, key.key.len() as u64);
    out.extend_from_slice(key.key);
    put_varint(out, key.namespace.len() as u64);
    out.extend_from_slice(key.namespace);
}

/// Appends the full encoding of `key` to `out`.
pub fn encode_state_key(out: &mut Vec<u8>, key: &StateKey<'_>) {
    encode_prefix(out, key);
    out.extend_from_slice(key.user_key);
}

/// Splits encoded key bytes back into a [`StateKey`]. `None` when the bytes do not follow the
/// layout.
pub fn decode_state_key(bytes: &[u8]) -> Option<StateKey<'_>> {
    let kg = u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?);
    let (klen, rest) = take_varint(&bytes[2..])?;
    let klen = usize::try_from(klen).ok()?;
    let key = rest.get(..klen)?;
    let (nlen, rest) = take_varint(&rest[klen..])?;
    let nlen = usize::try_from(nlen).ok()?;
    let namespace = rest.get(..nlen)?;
    Some(StateKey {
        key_group: KeyGroup(kg),
        key,
        namespace,
        user_key: &rest[nlen..],
    })
}

/// Like [`decode_state_key`], but a malformed key is an error naming `state`.
pub fn decode_state_key_checked<'a>(
    state: &str,
    bytes: &'a [u8],
) -> Result<StateKey<'a>, StateError> {
    decode_state_key(bytes).ok_or_else(|| StateError::MalformedKey {
        state: state.to_string(),
        detail: format!("{} bytes do not follow the key layout", bytes.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_key_group_is_the_first_two_bytes_big_endian() {
        let mut out = Vec::new();
        let key = StateKey {
            key_group: KeyGroup(0x0102),
            key: b"k",
            namespace: b"",
            user_key: b"u",
        };
        encode_state_key(&mut out, &key);
        assert_eq!(out, vec![1, 2, 1, b'k', 0, b'u']);
    }

    proptest! {
        #[test]
        fn a_key_decodes_to_what_was_encoded(kg in 0u16..32768, key in proptest::collection::vec(any::<u8>(), 0..300),
            ns in proptest::collection::vec(any::<u8>(), 0..20), uk in proptest::collection::vec(any::<u8>(), 0..20)) {
            let k = StateKey { key_group: KeyGroup(kg), key: &key, namespace: &ns, user_key: &uk };
            let mut out = Vec::new();
            encode_state_key(&mut out, &k);
            prop_assert_eq!(decode_state_key(&out), Some(k));
        }

        #[test]
        fn one_cells_prefix_never_prefixes_another_keys_entry(a in proptest::collection::vec(any::<u8>(), 0..8),
            b in proptest::collection::vec(any::<u8>(), 0..8), uk in proptest::collection::vec(any::<u8>(), 0..8)) {
            prop_assume!(a != b);
            let mut pa = Vec::new();
            encode_prefix(&mut pa, &StateKey { key_group: KeyGroup(1), key: &a, namespace: b"", user_key: b"" });
            let mut eb = Vec::new();
            encode_state_key(&mut eb, &StateKey { key_group: KeyGroup(1), key: &b, namespace: b"", user_key: &uk });
            prop_assert!(!eb.starts_with(&pa));
        }
    }
}
