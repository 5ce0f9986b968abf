//! Barrier alignment of a task with several input channels, as pure logic (the task loop in
//! `task.rs` does the I/O): which channels may be read, and when a checkpoint's snapshot is
//! due.
//!
//! - **Exactly-once**: a channel that delivered barrier *n* is blocked until every channel
//!   that has not ended delivered it; then the snapshot of *n* is due and every channel is
//!   unblocked. The snapshot sees exactly the records before barrier *n* on every channel.
//! - **At-least-once**: channels are not blocked, so records behind a barrier may reach the
//!   snapshot (they are replayed again after a restore: duplicates, never loss). Only a
//!   channel that delivers barrier *n+1* while *n* is still aligning waits, with *n+1* held.
//! - An ended channel counts as aligned (its producer finished and sends no more barriers).
//! - Invariants, checked on every barrier: ids strictly increase per channel and per task,
//!   and no channel skips the barrier being aligned.

use crate::snapshot::BarrierOrder;
use std::time::{Duration, Instant};
use weir_types::{Barrier, CheckpointId};

/// A snapshot that is due now, with the time its alignment took.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Due {
    pub barrier: Barrier,
    pub alignment: Duration,
}

struct Aligning {
    barrier: Barrier,
    started: Instant,
    /// Channels that delivered `barrier`.
    seen: Vec<bool>,
}

/// The alignment state of one task.
pub(crate) struct Aligner {
    exactly_once: bool,
    ended: Vec<bool>,
    blocked: Vec<bool>,
    /// At-least-once: a barrier that arrived before the previous alignment finished.
    stashed: Vec<Option<Barrier>>,
    last_on_channel: Vec<Option<CheckpointId>>,
    order: BarrierOrder,
    aligning: Option<Aligning>,
}

impl Aligner {
    /// A task with `channels` inputs.
    pub(crate) fn new(channels: usize, exactly_once: bool) -> Self {
        Self {
            exactly_once,
            ended: vec![false; channels],
            blocked: vec![false; channels],
            stashed: vec![None; channels],
            last_on_channel: vec![None; channels],
            order: BarrierOrder::default(),
            aligning: None,
        }
    }

    /// Whether channel `i` may be read now.
    pub(crate) fn readable(&self, i: usize) -> bool {
        !self.ended[i] && !self.blocked[i]
    }

    /// The task-wide barrier order (also used for direct triggers once the task finished).
    pub(crate) fn into_order(self) -> BarrierOrder {
        self.order
    }

    /// Barrier `b` arrived on channel `i` at `now`: the snapshots due now, in order.
    pub(crate) fn on_barrier(
        &mut self,
        i: usize,
        b: Barrier,
        now: Instant,
    ) -> Result<Vec<Due>, String> {
        if let Some(last) = self.last_on_channel[i].filter(|last| b.checkpoint <= *last) {
            return Err(format!(
                "barrier of {} on input {i} after {last}: ids must strictly increase",
                b.checkpoint
            ));
        }
        self.last_on_channel[i] = Some(b.checkpoint);
        let mut due = Vec::new();
        self.arrive(i, b, now, &mut due)?;
        Ok(due)
    }

    /// Channel `i` ended at `now`: the snapshots that no longer wait for it.
    pub(crate) fn on_end(&mut self, i: usize, now: Instant) -> Result<Vec<Due>, String> {
        self.ended[i] = true;
        self.blocked[i] = false;
        let mut due = Vec::new();
        self.complete_if_aligned(now, &mut due)?;
        Ok(due)
    }

    fn arrive(
        &mut self,
        i: usize,
        b: Barrier,
        now: Instant,
        due: &mut Vec<Due>,
    ) -> Result<(), String> {
        match &mut self.aligning {
            None => {
                self.order.accept(b.checkpoint)?;
                let mut seen = vec![false; self.ended.len()];
                seen[i] = true;
                self.aligning = Some(Aligning {
                    barrier: b,
                    started: now,
                    seen,
                });
            }
            Some(a) if a.barrier.checkpoint == b.checkpoint => a.seen[i] = true,
            Some(a) if b.checkpoint > a.barrier.checkpoint && !self.exactly_once && a.seen[i] => {
                self.stashed[i] = Some(b);
                self.blocked[i] = true;
                return Ok(());
            }
            Some(a) => {
                return Err(format!(
                    "input {i} delivered the barrier of {} while {} was being aligned: a \
                     barrier was skipped",
                    b.checkpoint, a.barrier.checkpoint
                ));
            }
        }
        if self.exactly_once {
            self.blocked[i] = true;
        }
        self.complete_if_aligned(now, due)
    }

    fn complete_if_aligned(&mut self, now: Instant, due: &mut Vec<Due>) -> Result<(), String> {
        let Some(a) = &self.aligning else {
            return Ok(());
        };
        if !(0..a.seen.len()).all(|i| a.seen[i] || self.ended[i]) {
            return Ok(());
        }
        let a = self.aligning.take().expect("checked above");
        due.push(Due {
            barrier: a.barrier,
            alignment: now.saturating_duration_since(a.started),
        });
        self.blocked.iter_mut().for_each(|b| *b = false);
        for i in 0..self.stashed.len() {
            if let Some(b) = self.stashed[i].take() {
                self.arrive(i, b, now, due)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn barrier(n: u64) -> Barrier {
        Barrier {
            checkpoint: CheckpointId(n),
            base: None,
            savepoint: None,
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Ev {
        Record,
        Barrier(u64),
        End,
    }

    /// One channel: `records[j]` records before barrier j+1, `checkpoints` barriers (fewer when
    /// the producer finished early), then end of input.
    fn channel(records: &[usize], checkpoints: usize) -> Vec<Ev> {
        let mut evs = Vec::new();
        for (j, &r) in records.iter().enumerate() {
            evs.extend(std::iter::repeat_n(Ev::Record, r));
            if j < checkpoints {
                evs.push(Ev::Barrier(j as u64 + 1));
            }
        }
        evs.push(Ev::End);
        evs
    }

    /// Runs the schedule: `picks` choose among readable channels. Returns, per snapshot, its
    /// id and how many records of each channel were processed before it.
    fn simulate(
        channels: &[Vec<Ev>],
        picks: &[usize],
        exactly_once: bool,
    ) -> Vec<(u64, Vec<usize>)> {
        let n = channels.len();
        let mut aligner = Aligner::new(n, exactly_once);
        let mut pos = vec![0usize; n];
        let mut processed = vec![0usize; n];
        let mut snapshots = Vec::new();
        let now = Instant::now();
        let mut pick = picks.iter().cycle();
        loop {
            let readable: Vec<usize> = (0..n).filter(|&i| aligner.readable(i)).collect();
            if readable.is_empty() {
                assert!(
                    (0..n).all(|i| pos[i] == channels[i].len()),
                    "deadlock: nothing readable, input left"
                );
                return snapshots;
            }
            let i = readable[*pick.next().expect("cycle") % readable.len()];
            let ev = channels[i][pos[i]];
            pos[i] += 1;
            let due = match ev {
                Ev::Record => {
                    processed[i] += 1;
                    Vec::new()
                }
                Ev::Barrier(id) => aligner.on_barrier(i, barrier(id), now).expect("valid"),
                Ev::End => aligner.on_end(i, now).expect("valid"),
            };
            snapshots.extend(
                due.into_iter()
                    .map(|d| (d.barrier.checkpoint.0, processed.clone())),
            );
        }
    }

    fn schedule() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<usize>, Vec<usize>)> {
        (1usize..4, 1usize..5).prop_flat_map(|(n, k)| {
            (
                prop::collection::vec(prop::collection::vec(0usize..4, k..=k), n..=n),
                prop::collection::vec(0usize..=k, n..=n),
                prop::collection::vec(0usize..8, 1..64),
            )
        })
    }

    proptest! {
        #[test]
        fn exactly_once_snapshots_see_exactly_the_records_before_their_barrier(
            (records, checkpoints, picks) in schedule()
        ) {
            let channels: Vec<Vec<Ev>> = records.iter().zip(&checkpoints)
                .map(|(r, &c)| channel(r, c)).collect();
            let snapshots = simulate(&channels, &picks, true);
            // Every id some channel carries is snapshotted once, in order.
            let max = checkpoints.iter().copied().max().unwrap_or(0) as u64;
            let ids: Vec<u64> = snapshots.iter().map(|s| s.0).collect();
            prop_assert_eq!(ids, (1..=max).collect::<Vec<_>>());
            for (id, seen) in &snapshots {
                for (i, r) in records.iter().enumerate() {
                    let before: usize = if (*id as usize) <= checkpoints[i] {
                        r[..*id as usize].iter().sum()
                    } else {
                        r.iter().sum() // ended before this barrier: all its records
                    };
                    prop_assert_eq!(seen[i], before, "chk-{} input {}", id, i);
                }
            }
        }

        #[test]
        fn at_least_once_snapshots_never_miss_a_record_before_their_barrier(
            (records, checkpoints, picks) in schedule()
        ) {
            let channels: Vec<Vec<Ev>> = records.iter().zip(&checkpoints)
                .map(|(r, &c)| channel(r, c)).collect();
            let snapshots = simulate(&channels, &picks, false);
            let max = checkpoints.iter().copied().max().unwrap_or(0) as u64;
            let ids: Vec<u64> = snapshots.iter().map(|s| s.0).collect();
            prop_assert_eq!(ids, (1..=max).collect::<Vec<_>>());
            for (id, seen) in &snapshots {
                for (i, r) in records.iter().enumerate() {
                    let upto = (*id as usize).min(checkpoints[i]);
                    let before: usize = if (*id as usize) <= checkpoints[i] {
                        r[..upto].iter().sum()
                    } else {
                        r.iter().sum()
                    };
                    prop_assert!(seen[i] >= before, "chk-{} input {} lost records", id, i);
                }
            }
        }
    }

    #[test]
    fn a_channel_that_skips_the_aligned_barrier_is_an_invariant_error() {
        let now = Instant::now();
        let mut a = Aligner::new(2, true);
        assert!(a.on_barrier(0, barrier(1), now).expect("ok").is_empty());
        assert!(!a.readable(0), "exactly-once blocks the aligned channel");
        let err = a.on_barrier(1, barrier(2), now).unwrap_err();
        assert!(err.contains("skipped"), "{err}");
    }

    #[test]
    fn barrier_ids_that_do_not_rise_on_a_channel_are_an_invariant_error() {
        let now = Instant::now();
        let mut a = Aligner::new(1, true);
        assert_eq!(a.on_barrier(0, barrier(3), now).expect("ok").len(), 1);
        let err = a.on_barrier(0, barrier(3), now).unwrap_err();
        assert!(err.contains("strictly increase"), "{err}");
    }

    #[test]
    fn an_ended_channel_counts_as_aligned() {
        let now = Instant::now();
        let mut a = Aligner::new(2, true);
        assert!(a.on_barrier(0, barrier(1), now).expect("ok").is_empty());
        let due = a.on_end(1, now).expect("ok");
        assert_eq!(due.len(), 1);
        assert!(a.readable(0));
    }
}
