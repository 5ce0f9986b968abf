//! Session merging as pure logic: a key's live sessions, and what adding a record's window
//! does to them (Flink's `MergingWindowSet`).
//!
//! Each session has the window it covers now (`actual`) and the window its state lives under
//! (`state`): the state of sessions that merge moves into one of them, whose `state` window
//! stays what it was, so merging moves no state but that of the absorbed sessions.

use crate::window::TimeWindow;
use serde::{Deserialize, Serialize};

/// One live session of a key.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The window the session covers now.
    pub actual: TimeWindow,
    /// The namespace its state and timers live under.
    pub state: TimeWindow,
}

/// What [`add`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merge {
    /// The session the new window is now part of.
    pub result: Session,
    /// The window `result` covered before, when it existed (its timers are stale now).
    pub previous: Option<TimeWindow>,
    /// Other sessions merged into `result`: their state moves into `result.state`, their
    /// timers go.
    pub absorbed: Vec<Session>,
}

/// Adds `window` to a key's `sessions` (kept disjoint: no two intersect or touch), merging
/// every session it intersects into one. The survivor's state window is that of the earliest
/// session merged; a window that meets none is a session of its own.
pub fn add(sessions: &mut Vec<Session>, window: TimeWindow) -> Merge {
    let mut cover = window;
    let mut merged: Vec<Session> = Vec::new();
    // A cover can reach a session the window alone did not; repeat until nothing joins.
    loop {
        let before = merged.len();
        sessions.retain(|s| {
            if s.actual.intersects(&cover) {
                cover = cover.cover(&s.actual);
                merged.push(*s);
                false
            } else {
                true
            }
        });
        if merged.len() == before {
            break;
        }
    }
    merged.sort_by_key(|s| s.actual.start);
    let (result, previous, absorbed) = match merged.split_first() {
        None => (
            Session {
                actual: window,
                state: window,
            },
            None,
            Vec::new(),
        ),
        Some((first, rest)) => (
            Session {
                actual: cover,
                state: first.state,
            },
            Some(first.actual),
            rest.to_vec(),
        ),
    };
    sessions.push(result);
    sessions.sort_by_key(|s| s.actual.start);
    Merge {
        result,
        previous,
        absorbed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Sessions the slow way: sort the windows, join each to the previous while they touch.
    fn brute(windows: &[TimeWindow]) -> Vec<TimeWindow> {
        let mut sorted = windows.to_vec();
        sorted.sort();
        let mut out: Vec<TimeWindow> = Vec::new();
        for w in sorted {
            match out.last_mut() {
                Some(last) if last.intersects(&w) => *last = last.cover(&w),
                _ => out.push(w),
            }
        }
        out
    }

    #[test]
    fn a_window_between_two_sessions_joins_them_into_the_earlier_ones_state() {
        let mut s = Vec::new();
        add(&mut s, TimeWindow::new(0, 10));
        add(&mut s, TimeWindow::new(20, 30));
        let m = add(&mut s, TimeWindow::new(8, 22));
        assert_eq!(m.result.actual, TimeWindow::new(0, 30));
        assert_eq!(m.result.state, TimeWindow::new(0, 10));
        assert_eq!(m.previous, Some(TimeWindow::new(0, 10)));
        assert_eq!(m.absorbed.len(), 1);
        assert_eq!(m.absorbed[0].state, TimeWindow::new(20, 30));
        assert_eq!(s.len(), 1);
    }

    proptest! {
        #[test]
        fn merging_in_any_order_gives_the_sessions_of_a_brute_force_model(
            timestamps in proptest::collection::vec(-500i64..500, 1..60),
            gap in 1i64..80,
        ) {
            let mut sessions = Vec::new();
            let mut windows = Vec::new();
            for ts in timestamps {
                let w = TimeWindow::new(ts, ts + gap);
                windows.push(w);
                let m = add(&mut sessions, w);
                prop_assert!(m.result.actual.start <= w.start && w.end <= m.result.actual.end);
                let actual: Vec<TimeWindow> = sessions.iter().map(|s| s.actual).collect();
                prop_assert_eq!(&actual, &brute(&windows));
                // Every state window is its own: state never lands in two sessions.
                let mut states: Vec<TimeWindow> = sessions.iter().map(|s| s.state).collect();
                states.sort();
                states.dedup();
                prop_assert_eq!(states.len(), sessions.len());
            }
        }
    }
}
