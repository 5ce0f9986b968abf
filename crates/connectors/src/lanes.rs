//! What the numbered sources (the generator and Nexmark) share: record number `n` is a pure
//! function of `n`, a reader reads *lanes* of numbers (`next, next + stride, …`), a rescale
//! splits every unread lane over the new subtasks, and a rate limit paces the reads.

use crate::ConnectorError;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The splitmix64 finaliser: a fixed, well-mixing bijection on `u64`.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An arithmetic sequence of record numbers still to read: `next, next + stride, …` (below
/// the source's total).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lane {
    pub next: u64,
    pub stride: u64,
}

impl Lane {
    /// The part of this lane subtask `subtask` of `parallelism` reads after a rescale:
    /// `next + subtask·stride, … + parallelism·stride, …`; `None` when it lies beyond
    /// `u64::MAX` (nothing left there).
    pub(crate) fn rescaled(self, subtask: u32, parallelism: u32) -> Option<Lane> {
        Some(Lane {
            next: self
                .stride
                .checked_mul(u64::from(subtask))
                .and_then(|o| self.next.checked_add(o))?,
            stride: self.stride.checked_mul(u64::from(parallelism))?,
        })
    }
}

/// Most lanes one reader may hold: each rescale multiplies the lanes over all subtasks by the
/// new parallelism.
pub(crate) const MAX_LANES: usize = 1 << 16;

/// Refuses restored lanes that no reader of `connector` could have saved.
pub(crate) fn check_lanes(connector: &'static str, lanes: &[Lane]) -> Result<(), ConnectorError> {
    if lanes.len() > MAX_LANES {
        return Err(ConnectorError::BadPosition {
            connector,
            reason: format!(
                "{} lanes exceed {MAX_LANES}: the job was rescaled too many times",
                lanes.len()
            ),
        });
    }
    if lanes.iter().any(|l| l.stride == 0) {
        return Err(ConnectorError::BadPosition {
            connector,
            reason: "a lane with stride 0".into(),
        });
    }
    Ok(())
}

/// Reads up to `budget` numbers below `end` from `lanes`, the lowest first, handing each to
/// `emit`; a lane whose next number would pass `u64::MAX` ends. Returns how many were read.
pub(crate) fn poll_lanes(
    lanes: &mut Vec<Lane>,
    end: Option<u64>,
    budget: u64,
    mut emit: impl FnMut(u64),
) -> u64 {
    let mut emitted = 0;
    while emitted < budget {
        let Some(i) = (0..lanes.len())
            .filter(|&i| end.is_none_or(|e| lanes[i].next < e))
            .min_by_key(|&i| lanes[i].next)
        else {
            break;
        };
        let lane = lanes[i];
        emit(lane.next);
        emitted += 1;
        match lane.next.checked_add(lane.stride) {
            Some(next) => lanes[i].next = next,
            None => {
                lanes.swap_remove(i);
            }
        }
    }
    emitted
}

/// The rate limit of one reader: record `k` (counted from the reader's start) is due
/// `k / per_second` seconds after the first poll.
#[derive(Clone, Debug)]
pub(crate) struct Pacing {
    per_second: f64,
    started: Option<Instant>,
    /// Records emitted since the start.
    pub emitted: u64,
}

impl Pacing {
    /// A subtask's share of `rate` records per second over `parallelism` subtasks.
    pub(crate) fn share(rate: u64, parallelism: u32) -> Self {
        Self {
            per_second: rate as f64 / f64::from(parallelism),
            started: None,
            emitted: 0,
        }
    }

    /// How many records may be emitted now, or how long to wait for the next one.
    pub(crate) fn allowance(&mut self, now: Instant) -> Result<u64, Duration> {
        let started = *self.started.get_or_insert(now);
        let elapsed = now.saturating_duration_since(started).as_secs_f64();
        // Record k is due at k / per_second; all of 0..=floor(elapsed * per_second) are due.
        let due = (elapsed * self.per_second).floor() as u64 + 1;
        if due > self.emitted {
            Ok(due - self.emitted)
        } else {
            let next_at = self.emitted as f64 / self.per_second;
            Err(Duration::from_secs_f64((next_at - elapsed).max(0.0))
                .max(Duration::from_micros(100)))
        }
    }
}
