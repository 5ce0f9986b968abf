//! Time windows and the assigners that put a timestamp into them.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A window of time `[start, end)` in ms.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimeWindow {
    /// First millisecond in the window.
    pub start: i64,
    /// First millisecond after it.
    pub end: i64,
}

impl TimeWindow {
    /// `[start, end)`.
    pub fn new(start: i64, end: i64) -> Self {
        Self { start, end }
    }

    /// The last timestamp in the window (`end - 1`): when event time passes it, the window
    /// fires.
    pub fn max_timestamp(&self) -> i64 {
        self.end.saturating_sub(1)
    }

    /// Whether the two windows overlap or touch (session windows merge then).
    pub fn intersects(&self, other: &TimeWindow) -> bool {
        self.start <= other.end && self.end >= other.start
    }

    /// The smallest window that covers both.
    pub fn cover(&self, other: &TimeWindow) -> TimeWindow {
        TimeWindow::new(self.start.min(other.start), self.end.max(other.end))
    }

    /// The window as a state and timer namespace: start and end, sign-flipped big-endian,
    /// so namespaces sort by start.
    pub(crate) fn namespace(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&((self.start as u64) ^ (1 << 63)).to_be_bytes());
        b[8..].copy_from_slice(&((self.end as u64) ^ (1 << 63)).to_be_bytes());
        b
    }

    /// The window a namespace names (`None` for bytes [`namespace`](Self::namespace) never
    /// writes).
    pub(crate) fn from_namespace(bytes: &[u8]) -> Option<TimeWindow> {
        let b: &[u8; 16] = bytes.try_into().ok()?;
        let start = u64::from_be_bytes(b[..8].try_into().ok()?) ^ (1 << 63);
        let end = u64::from_be_bytes(b[8..].try_into().ok()?) ^ (1 << 63);
        Some(TimeWindow::new(start as i64, end as i64))
    }
}

/// Which clock a window follows.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum WindowTime {
    /// The records' event time; fires on watermarks.
    Event,
    /// The wall clock when a record arrives; fires on the wall clock.
    Processing,
}

/// How records are assigned to windows, as Flink's window assigners.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// Fixed, non-overlapping windows of `size`, aligned to the epoch plus `offset`.
    Tumbling {
        /// Window length (ms).
        size: i64,
        /// Shift of the window boundaries (ms).
        offset: i64,
    },
    /// Windows of `size` starting every `slide` (a record is in `size / slide` of them).
    Sliding {
        /// Window length (ms).
        size: i64,
        /// Distance between window starts (ms).
        slide: i64,
        /// Shift of the window boundaries (ms).
        offset: i64,
    },
    /// One window per burst of a key's records, closed after `gap` without one (merging).
    Session {
        /// Inactivity that ends a session (ms).
        gap: i64,
    },
}

/// A window assigner: what windows, on which clock.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Windows {
    pub(crate) kind: WindowKind,
    pub(crate) time: WindowTime,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Windows {
    /// Tumbling event-time windows of `size` (Flink's `TumblingEventTimeWindows.of`).
    pub fn tumbling(size: Duration) -> Self {
        Self {
            kind: WindowKind::Tumbling {
                size: ms(size),
                offset: 0,
            },
            time: WindowTime::Event,
        }
    }

    /// Sliding event-time windows of `size` every `slide`.
    pub fn sliding(size: Duration, slide: Duration) -> Self {
        Self {
            kind: WindowKind::Sliding {
                size: ms(size),
                slide: ms(slide),
                offset: 0,
            },
            time: WindowTime::Event,
        }
    }

    /// Event-time session windows that close after `gap` without a record of the key.
    pub fn session(gap: Duration) -> Self {
        Self {
            kind: WindowKind::Session { gap: ms(gap) },
            time: WindowTime::Event,
        }
    }

    /// The same windows on processing time (the wall clock at arrival).
    pub fn on_processing_time(mut self) -> Self {
        self.time = WindowTime::Processing;
        self
    }

    /// Shifts tumbling and sliding window boundaries by `offset` (time zones, for instance).
    pub fn with_offset(mut self, offset: Duration) -> Self {
        match &mut self.kind {
            WindowKind::Tumbling { offset: o, .. } | WindowKind::Sliding { offset: o, .. } => {
                *o = ms(offset)
            }
            WindowKind::Session { .. } => {}
        }
        self
    }

    /// Whether windows merge (sessions).
    pub fn is_merging(&self) -> bool {
        matches!(self.kind, WindowKind::Session { .. })
    }

    /// Why the assigner cannot work, if it cannot.
    pub(crate) fn check(&self) -> Result<(), String> {
        match self.kind {
            WindowKind::Tumbling { size, .. } if size <= 0 => {
                Err("a tumbling window's size must be above 0".into())
            }
            WindowKind::Sliding { size, slide, .. } if size <= 0 || slide <= 0 => {
                Err("a sliding window's size and slide must be above 0".into())
            }
            WindowKind::Sliding { size, slide, .. } if size / slide > 10_000 => Err(format!(
                "a sliding window of {size} ms every {slide} ms puts each record into {} windows; \
                 at most 10000",
                size / slide
            )),
            WindowKind::Session { gap } if gap <= 0 => {
                Err("a session window's gap must be above 0".into())
            }
            _ => Ok(()),
        }
    }

    /// The windows `timestamp` belongs to, earliest first.
    pub fn assign(&self, timestamp: i64) -> Vec<TimeWindow> {
        match self.kind {
            WindowKind::Tumbling { size, offset } => match window_start(timestamp, offset, size) {
                Some(start) => vec![TimeWindow::new(start, start.saturating_add(size))],
                None => Vec::new(),
            },
            WindowKind::Sliding {
                size,
                slide,
                offset,
            } => {
                let Some(last) = window_start(timestamp, offset, slide) else {
                    return Vec::new();
                };
                let mut out = Vec::with_capacity((size / slide).max(1) as usize);
                let mut start = last;
                while start > timestamp.saturating_sub(size) {
                    out.push(TimeWindow::new(start, start.saturating_add(size)));
                    match start.checked_sub(slide) {
                        Some(s) => start = s,
                        None => break,
                    }
                }
                out.reverse();
                out
            }
            WindowKind::Session { gap } => {
                vec![TimeWindow::new(timestamp, timestamp.saturating_add(gap))]
            }
        }
    }
}

/// The start of the window of length `size` (aligned to `offset`) that holds `timestamp`;
/// right for negative timestamps too. `None` when that start lies below `i64::MIN` (a
/// timestamp at the very bottom of the range: it belongs to no window, so it counts as late).
fn window_start(timestamp: i64, offset: i64, size: i64) -> Option<i64> {
    let rem = (i128::from(timestamp) - i128::from(offset)).rem_euclid(i128::from(size));
    i64::try_from(i128::from(timestamp) - rem).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tumbling_window_holds_its_start_and_not_its_end() {
        let w = Windows::tumbling(Duration::from_millis(10));
        assert_eq!(w.assign(0), vec![TimeWindow::new(0, 10)]);
        assert_eq!(w.assign(9), vec![TimeWindow::new(0, 10)]);
        assert_eq!(w.assign(10), vec![TimeWindow::new(10, 20)]);
        assert_eq!(w.assign(-1), vec![TimeWindow::new(-10, 0)]);
        let shifted = w.with_offset(Duration::from_millis(3));
        assert_eq!(shifted.assign(2), vec![TimeWindow::new(-7, 3)]);
        // The bottom of the range has no window start: no window, never an overflow.
        assert_eq!(
            Windows::tumbling(Duration::from_secs(60)).assign(i64::MIN),
            vec![]
        );
        let sliding = Windows::sliding(Duration::from_secs(60), Duration::from_secs(7));
        assert_eq!(sliding.assign(i64::MIN), vec![]);
        assert!(!sliding.assign(i64::MAX).is_empty());
    }

    #[test]
    fn a_sliding_window_puts_a_record_in_size_over_slide_windows() {
        let w = Windows::sliding(Duration::from_millis(10), Duration::from_millis(5));
        assert_eq!(
            w.assign(12),
            vec![TimeWindow::new(5, 15), TimeWindow::new(10, 20)]
        );
        assert_eq!(
            w.assign(-3),
            vec![TimeWindow::new(-10, 0), TimeWindow::new(-5, 5)]
        );
        let uneven = Windows::sliding(Duration::from_millis(10), Duration::from_millis(3));
        for ts in -20..20 {
            let ws = uneven.assign(ts);
            assert!(
                ws.iter().all(|w| w.start <= ts && ts < w.end),
                "{ts}: {ws:?}"
            );
            let brute = (-40..40)
                .filter(|s| s % 3 == 0 && *s <= ts && ts < s + 10)
                .count();
            assert_eq!(ws.len(), brute, "{ts}");
        }
    }

    #[test]
    fn namespaces_round_trip_and_sort_by_start() {
        for w in [
            TimeWindow::new(-5, 5),
            TimeWindow::new(i64::MIN, i64::MAX),
            TimeWindow::new(0, 1),
        ] {
            assert_eq!(TimeWindow::from_namespace(&w.namespace()), Some(w));
        }
        assert!(TimeWindow::new(-5, 0).namespace() < TimeWindow::new(3, 4).namespace());
        assert_eq!(TimeWindow::from_namespace(&[1, 2, 3]), None);
    }

    #[test]
    fn assigners_that_cannot_work_are_refused_with_the_reason() {
        let zero = Windows::tumbling(Duration::ZERO).check().unwrap_err();
        assert!(zero.contains("above 0"), "{zero}");
        let many = Windows::sliding(Duration::from_secs(3600), Duration::from_millis(1))
            .check()
            .unwrap_err();
        assert!(many.contains("at most 10000"), "{many}");
        assert!(Windows::session(Duration::from_secs(1)).check().is_ok());
    }
}
