//! State time-to-live, as Flink's `StateTtlConfig`: a state declared with a TTL stores each
//! value (each map entry, each list) behind the wall-clock time it expires at, an 8-byte
//! big-endian prefix in ms since the Unix epoch. The handles never return an expired value
//! (they delete it when they meet it); the backends drop expired entries on their own: RocksDB
//! in compaction (a compaction filter on the state's column family), the heap backend
//! incrementally, a few entries per access. The expiry travels with the value, so TTL
//! survives checkpoints, savepoints and restores unchanged.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// When a TTL state's expiry is pushed back.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TtlUpdate {
    /// On every write (Flink's `OnCreateAndWrite`).
    OnCreateAndWrite,
    /// On every write and every read that finds the value (Flink's `OnReadAndWrite`).
    OnReadAndWrite,
}

/// How long a state's values live after their last update.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct StateTtl {
    /// The time to live.
    pub ttl: Duration,
    /// What renews it.
    pub update: TtlUpdate,
}

impl StateTtl {
    /// Values live `ttl` after their last write.
    pub fn after_write(ttl: Duration) -> Self {
        Self {
            ttl,
            update: TtlUpdate::OnCreateAndWrite,
        }
    }

    /// Values live `ttl` after their last write or read.
    pub fn after_access(ttl: Duration) -> Self {
        Self {
            ttl,
            update: TtlUpdate::OnReadAndWrite,
        }
    }

    /// The expiry of a value written now.
    pub(crate) fn expiry_from_now(&self) -> i64 {
        now_ms().saturating_add(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX))
    }
}

/// The wall clock in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Bytes of the expiry prefix.
pub const PREFIX: usize = 8;

/// Writes `expires ‖ payload` into `out` (cleared first).
pub(crate) fn wrap(expires: i64, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&expires.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The expiry and payload of stored bytes; `None` for bytes too short to hold an expiry.
pub fn split(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let (e, payload) = bytes.split_at_checked(PREFIX)?;
    Some((i64::from_be_bytes(e.try_into().ok()?), payload))
}

/// Whether stored bytes of a TTL state are expired at `now` (bytes without an expiry are
/// kept: they are damaged, and the handle that reads them says so).
pub fn expired(bytes: &[u8], now: i64) -> bool {
    split(bytes).is_some_and(|(e, _)| e <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_value_splits_back_and_expires_at_its_time() {
        let mut out = Vec::new();
        wrap(1_000, b"abc", &mut out);
        assert_eq!(split(&out), Some((1_000, &b"abc"[..])));
        assert!(!expired(&out, 999));
        assert!(expired(&out, 1_000));
        assert_eq!(split(b"short"), None);
        assert!(
            !expired(b"short", i64::MAX),
            "damaged bytes are not silently dropped"
        );
    }
}
