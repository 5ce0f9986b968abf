//! A deterministic record generator, for demos, benchmarks and recovery tests.
//!
//! Record number `seq` is a pure function of `(seed, keys, seq)` ([`record_at`]) and is
//! produced by subtask `seq % parallelism`, so the whole output of a bounded generator is the
//! same set of records whatever the parallelism — a test can compute the expected result
//! without running a job.
//!
//! A reader's position is the number of its next record; it is saved with the split's identity
//! (subtask, parallelism, seed, keys, total) so that a restore into a differently configured
//! generator is refused instead of producing other records (see
//! [`GeneratorSource::resume`]).

use crate::lanes::{check_lanes, poll_lanes, splitmix64, Lane, Pacing};
use crate::{position, subtask_of, ConnectorError};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use weir_runtime::{Source, SourceContext, SourcePoll, SourceReader, UserError};

/// One generated record.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GeneratedRecord {
    /// In `0..keys`.
    pub key: u64,
    /// In `0..1000`.
    pub value: u64,
    /// The record's number, `0..records`.
    pub seq: u64,
}

/// Record number `seq` of a generator with this `seed` and `keys` (`keys` ≥ 1; 0 is treated as
/// 1). Pure: the readers and the tests both call it.
pub fn record_at(seed: u64, keys: u64, seq: u64) -> GeneratedRecord {
    let mix = splitmix64(seed ^ seq.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let mix2 = splitmix64(mix);
    GeneratedRecord {
        key: mix % keys.max(1),
        value: mix2 % 1000,
        seq,
    }
}

/// A source of [`GeneratedRecord`]s: bounded or unbounded, optionally rate limited.
///
/// ```
/// use weir_connectors::GeneratorSource;
/// let source = GeneratorSource::new(42, 100).records(1_000_000).rate(10_000);
/// source.check().expect("valid");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratorSource {
    seed: u64,
    keys: u64,
    records: Option<u64>,
    rate: Option<u64>,
}

impl GeneratorSource {
    /// An unbounded, unthrottled generator over `keys` keys. Call [`check`](Self::check) (or
    /// let [`Source::create_reader`] do it) to validate `keys ≥ 1`.
    pub fn new(seed: u64, keys: u64) -> Self {
        Self {
            seed,
            keys,
            records: None,
            rate: None,
        }
    }

    /// Stops after `records` records in total (over all subtasks).
    pub fn records(mut self, records: u64) -> Self {
        self.records = Some(records);
        self
    }

    /// Emits at most `rate` records per second in total, split evenly over the subtasks.
    pub fn rate(mut self, rate: u64) -> Self {
        self.rate = Some(rate);
        self
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The number of keys.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// The total number of records, `None` when unbounded.
    pub fn total_records(&self) -> Option<u64> {
        self.records
    }

    /// Validates the configuration: at least one key, and a rate of at least 1 record/s.
    pub fn check(&self) -> Result<(), ConnectorError> {
        let invalid = |reason: &str| ConnectorError::InvalidConfig {
            connector: "generator",
            reason: reason.to_string(),
        };
        if self.keys == 0 {
            return Err(invalid("keys must be at least 1"));
        }
        if self.rate == Some(0) {
            return Err(invalid("rate must be at least 1 record per second"));
        }
        Ok(())
    }

    /// The reader of subtask `subtask` of `parallelism` at the start of its input, after
    /// [`check`](Self::check).
    pub fn reader(
        &self,
        subtask: u32,
        parallelism: u32,
    ) -> Result<GeneratorReader, ConnectorError> {
        self.check()?;
        if parallelism == 0 || subtask >= parallelism {
            return Err(ConnectorError::BadSubtask {
                subtask,
                parallelism,
            });
        }
        Ok(GeneratorReader {
            seed: self.seed,
            keys: self.keys,
            end: self.records,
            subtask,
            parallelism,
            next_seq: u64::from(subtask),
            exhausted: false,
            lanes: Vec::new(),
            pacing: self.rate.map(|rate| Pacing::share(rate, parallelism)),
        })
    }

    /// The reader of subtask `subtask` of `parallelism`, resumed at `position` (what
    /// [`GeneratorReader::saved_position`] returned): its first record is the one after the last
    /// record returned before the snapshot. The rate limit, if any, starts afresh from there.
    ///
    /// A position taken by another split — a different subtask, parallelism, seed, number of
    /// keys or total — is refused with an error naming every setting that differs, as are
    /// bytes of an unknown format version.
    pub fn resume(
        &self,
        subtask: u32,
        parallelism: u32,
        position: &[u8],
    ) -> Result<GeneratorReader, ConnectorError> {
        let mut reader = self.reader(subtask, parallelism)?;
        if position.first() == Some(&GENERATOR_LANES_VERSION) {
            let saved: LanesPosition =
                position::decode("generator", GENERATOR_LANES_VERSION, position)?;
            let identity = GeneratorPosition {
                subtask: saved.subtask,
                parallelism: saved.parallelism,
                seed: saved.seed,
                keys: saved.keys,
                total: saved.total,
                next_seq: None,
            };
            check_identity(&identity, &reader.identity())?;
            reader.set_lanes(saved.lanes)?;
            return Ok(reader);
        }
        let saved: GeneratorPosition =
            position::decode("generator", GENERATOR_POSITION_VERSION, position)?;
        let here = reader.identity();
        check_identity(&saved, &here)?;
        match saved.next_seq {
            Some(seq) if seq % u64::from(parallelism) != u64::from(subtask) => {
                return Err(ConnectorError::BadPosition {
                    connector: "generator",
                    reason: format!(
                        "record {seq} is not produced by subtask {subtask} of {parallelism}"
                    ),
                });
            }
            Some(seq) => reader.next_seq = seq,
            None => reader.exhausted = true,
        }
        Ok(reader)
    }

    /// The reader of subtask `subtask` of `parallelism` restored from `positions`, every old
    /// subtask's position taken at `old_parallelism` (index, bytes): each old reader's
    /// unread records (its lanes) are split `parallelism` ways by record number — lane
    /// `next, next + d, …` gives subtask `j` the lane `next + j·d, next + j·d + p·d, …` — so
    /// the new subtasks together read every unread record exactly once. Refused, naming the
    /// problem: a position of a differently configured generator, of another parallelism, a
    /// missing or repeated old subtask.
    pub fn rescaled(
        &self,
        subtask: u32,
        parallelism: u32,
        old_parallelism: u32,
        positions: &[(u32, Vec<u8>)],
    ) -> Result<GeneratorReader, ConnectorError> {
        let mut reader = self.reader(subtask, parallelism)?;
        position::check_rescaled("generator", old_parallelism, positions)?;
        let mut old_lanes = Vec::new();
        for (old, bytes) in positions {
            let old_reader = self.resume(*old, old_parallelism, bytes)?;
            old_lanes.extend(old_reader.remaining_lanes());
        }
        let lanes = old_lanes
            .into_iter()
            .filter_map(|lane| lane.rescaled(subtask, parallelism))
            .collect();
        reader.set_lanes(lanes)?;
        Ok(reader)
    }
}

/// Refuses a position taken by a differently configured split, naming every difference.
fn check_identity(
    saved: &GeneratorPosition,
    here: &GeneratorPosition,
) -> Result<(), ConnectorError> {
    {
        let mut differences = Vec::new();
        let mut differs = |what: &str, then: String, now: String| {
            if then != now {
                differences.push(format!("{what} was {then}, is now {now}"));
            }
        };
        differs(
            "subtask",
            saved.subtask.to_string(),
            here.subtask.to_string(),
        );
        let (p_then, p_now) = (saved.parallelism, here.parallelism);
        differs("parallelism", p_then.to_string(), p_now.to_string());
        differs("seed", saved.seed.to_string(), here.seed.to_string());
        differs("keys", saved.keys.to_string(), here.keys.to_string());
        let total = |t: Option<u64>| t.map_or_else(|| "unbounded".to_string(), |t| t.to_string());
        differs("records", total(saved.total), total(here.total));
        if !differences.is_empty() {
            return Err(ConnectorError::BadPosition {
                connector: "generator",
                reason: format!(
                    "it was taken by a differently configured generator: {}",
                    differences.join("; ")
                ),
            });
        }
    }
    Ok(())
}

/// The format version of [`GeneratorPosition`] bytes.
const GENERATOR_POSITION_VERSION: u8 = 1;

/// A generator reader's saved position: the next record and the identity of the split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct GeneratorPosition {
    subtask: u32,
    parallelism: u32,
    seed: u64,
    keys: u64,
    /// The generator's total number of records, `None` when unbounded.
    total: Option<u64>,
    /// The number of the next record; `None` once the reader went past `u64::MAX`.
    next_seq: Option<u64>,
}

impl Source<GeneratedRecord> for GeneratorSource {
    fn name(&self) -> String {
        "generator".to_string()
    }

    fn create_reader(
        &self,
        ctx: &SourceContext,
        restored: Option<&[u8]>,
    ) -> Result<Box<dyn SourceReader<GeneratedRecord>>, UserError> {
        let (subtask, parallelism) = subtask_of(ctx)?;
        Ok(Box::new(match restored {
            None => self.reader(subtask, parallelism)?,
            Some(position) => self.resume(subtask, parallelism, position)?,
        }))
    }

    fn create_rescaled_reader(
        &self,
        ctx: &SourceContext,
        old_parallelism: u32,
        positions: &[(u32, Vec<u8>)],
    ) -> Result<Box<dyn SourceReader<GeneratedRecord>>, UserError> {
        let (subtask, parallelism) = subtask_of(ctx)?;
        Ok(Box::new(self.rescaled(
            subtask,
            parallelism,
            old_parallelism,
            positions,
        )?))
    }
}

/// One subtask's generator: emits records `subtask, subtask + p, subtask + 2p, …`.
#[derive(Clone, Debug)]
pub struct GeneratorReader {
    seed: u64,
    keys: u64,
    end: Option<u64>,
    subtask: u32,
    parallelism: u32,
    next_seq: u64,
    /// Set once the next record number would pass `u64::MAX`: an unbounded generator stops.
    exhausted: bool,
    pacing: Option<Pacing>,
    /// A reader restored at another parallelism reads these lanes instead of
    /// `subtask, subtask + p, …` (see [`GeneratorSource::rescaled`]); empty otherwise.
    lanes: Vec<Lane>,
}

/// The format version of [`LanesPosition`] bytes (a rescaled reader's position).
const GENERATOR_LANES_VERSION: u8 = 2;

/// A rescaled reader's saved position: its split's identity and its unfinished lanes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LanesPosition {
    subtask: u32,
    parallelism: u32,
    seed: u64,
    keys: u64,
    total: Option<u64>,
    lanes: Vec<Lane>,
}

impl GeneratorReader {
    /// The number of the next record this reader will emit: its whole position.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The saved form of the reader's position (versioned bytes), from which
    /// [`GeneratorSource::resume`] continues with the next record.
    pub fn saved_position(&self) -> Vec<u8> {
        if !self.lanes.is_empty() {
            let id = self.identity();
            let saved = LanesPosition {
                subtask: id.subtask,
                parallelism: id.parallelism,
                seed: id.seed,
                keys: id.keys,
                total: id.total,
                lanes: self.remaining_lanes(),
            };
            return position::encode(GENERATOR_LANES_VERSION, &saved);
        }
        let saved = GeneratorPosition {
            next_seq: (!self.exhausted).then_some(self.next_seq),
            ..self.identity()
        };
        position::encode(GENERATOR_POSITION_VERSION, &saved)
    }

    /// The split this reader reads, as a position at its start.
    fn identity(&self) -> GeneratorPosition {
        GeneratorPosition {
            subtask: self.subtask,
            parallelism: self.parallelism,
            seed: self.seed,
            keys: self.keys,
            total: self.end,
            next_seq: Some(u64::from(self.subtask)),
        }
    }

    fn finished(&self) -> bool {
        if !self.lanes.is_empty() {
            return self.lanes.iter().all(|l| self.lane_done(l));
        }
        self.exhausted || self.end.is_some_and(|end| self.next_seq >= end)
    }

    fn lane_done(&self, lane: &Lane) -> bool {
        self.end.is_some_and(|end| lane.next >= end)
    }

    /// The record numbers this reader has not returned yet, as lanes.
    fn remaining_lanes(&self) -> Vec<Lane> {
        if !self.lanes.is_empty() {
            return self
                .lanes
                .iter()
                .filter(|l| !self.lane_done(l))
                .copied()
                .collect();
        }
        if self.finished() {
            return Vec::new();
        }
        vec![Lane {
            next: self.next_seq,
            stride: u64::from(self.parallelism),
        }]
    }

    /// Makes the reader read `lanes` (none left: it is finished).
    fn set_lanes(&mut self, lanes: Vec<Lane>) -> Result<(), ConnectorError> {
        check_lanes("generator", &lanes)?;
        self.exhausted = lanes.is_empty();
        self.lanes = lanes;
        Ok(())
    }

    /// Polls the lanes: the lowest record number first. A lane whose next number would pass
    /// `u64::MAX` ends.
    fn poll_lanes(&mut self, out: &mut Vec<GeneratedRecord>, budget: u64) -> u64 {
        let (seed, keys) = (self.seed, self.keys);
        let emitted = poll_lanes(&mut self.lanes, self.end, budget, |n| {
            out.push(record_at(seed, keys, n))
        });
        if self.lanes.is_empty() {
            self.exhausted = true;
        }
        emitted
    }
}

impl SourceReader<GeneratedRecord> for GeneratorReader {
    fn poll(
        &mut self,
        out: &mut Vec<GeneratedRecord>,
        max: usize,
    ) -> Result<SourcePoll, UserError> {
        if self.finished() {
            return Ok(SourcePoll::Finished);
        }
        let mut budget = max as u64;
        if let Some(pacing) = &mut self.pacing {
            match pacing.allowance(Instant::now()) {
                Ok(allowed) => budget = budget.min(allowed),
                Err(wait) => return Ok(SourcePoll::Idle(wait)),
            }
        }
        let mut emitted = 0;
        if !self.lanes.is_empty() {
            emitted = self.poll_lanes(out, budget);
        }
        while self.lanes.is_empty() && emitted < budget && !self.finished() {
            out.push(record_at(self.seed, self.keys, self.next_seq));
            emitted += 1;
            // Past u64::MAX an unbounded generator simply stops.
            match self.next_seq.checked_add(u64::from(self.parallelism)) {
                Some(next) => self.next_seq = next,
                None => {
                    self.exhausted = true;
                    break;
                }
            }
        }
        if let Some(pacing) = &mut self.pacing {
            pacing.emitted += emitted;
        }
        Ok(if self.finished() {
            SourcePoll::Finished
        } else {
            SourcePoll::More
        })
    }

    fn snapshot_position(&mut self) -> Result<Option<Vec<u8>>, UserError> {
        Ok(Some(self.saved_position()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ctx, drain, read_with_restores};
    use std::time::Duration;

    fn all_records(source: &GeneratorSource, parallelism: u32) -> Vec<GeneratedRecord> {
        let mut all = Vec::new();
        for subtask in 0..parallelism {
            let mut reader = source
                .create_reader(&ctx("gen", subtask, parallelism), None)
                .expect("reader");
            let records = drain(reader.as_mut(), 7);
            assert!(records
                .iter()
                .all(|r| r.seq % u64::from(parallelism) == u64::from(subtask)));
            all.extend(records);
        }
        all.sort_by_key(|r| r.seq);
        all
    }

    #[test]
    fn the_generator_output_does_not_depend_on_parallelism() {
        let source = GeneratorSource::new(7, 13).records(1000);
        let expected: Vec<_> = (0..1000).map(|seq| record_at(7, 13, seq)).collect();
        for parallelism in 1..=5 {
            assert_eq!(
                all_records(&source, parallelism),
                expected,
                "parallelism {parallelism}"
            );
        }
    }

    #[test]
    fn records_are_a_pure_function_of_seed_and_seq() {
        assert_eq!(record_at(1, 10, 5), record_at(1, 10, 5));
        assert_ne!(record_at(1, 10, 5), record_at(2, 10, 5));
        let records: Vec<_> = (0..10_000).map(|seq| record_at(3, 10, seq)).collect();
        assert!(records.iter().all(|r| r.key < 10 && r.value < 1000));
        // Every key shows up, and values spread out.
        for key in 0..10 {
            assert!(
                records.iter().any(|r| r.key == key),
                "key {key} never generated"
            );
        }
        let distinct_values: std::collections::HashSet<_> =
            records.iter().map(|r| r.value).collect();
        assert!(distinct_values.len() > 900);
    }

    #[test]
    fn a_bounded_generator_finishes_after_its_records() {
        let mut reader = GeneratorSource::new(1, 4)
            .records(10)
            .reader(0, 1)
            .expect("reader");
        let mut out = Vec::new();
        assert_eq!(reader.poll(&mut out, 4).expect("poll"), SourcePoll::More);
        assert_eq!(out.len(), 4);
        assert_eq!(reader.next_seq(), 4);
        assert_eq!(
            reader.poll(&mut out, 100).expect("poll"),
            SourcePoll::Finished
        );
        assert_eq!(out.len(), 10);
        assert_eq!(
            reader.poll(&mut out, 100).expect("poll"),
            SourcePoll::Finished
        );
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn a_subtask_with_no_records_finishes_at_once() {
        let mut reader = GeneratorSource::new(1, 4)
            .records(2)
            .reader(3, 4)
            .expect("reader");
        let mut out = Vec::new();
        assert_eq!(
            reader.poll(&mut out, 10).expect("poll"),
            SourcePoll::Finished
        );
        assert!(out.is_empty());
    }

    #[test]
    fn an_unbounded_generator_keeps_producing() {
        let mut reader = GeneratorSource::new(1, 4).reader(1, 2).expect("reader");
        let mut out = Vec::new();
        for _ in 0..10 {
            assert_eq!(reader.poll(&mut out, 100).expect("poll"), SourcePoll::More);
        }
        assert_eq!(out.len(), 1000);
        assert_eq!(reader.next_seq(), 2001);
    }

    #[test]
    fn a_rate_limited_generator_idles_when_ahead_of_schedule() {
        // 2 records/s over 2 subtasks: 1/s each, so the first poll gets 1 record and the next
        // is due a second later.
        let mut reader = GeneratorSource::new(1, 4)
            .rate(2)
            .reader(0, 2)
            .expect("reader");
        let mut out = Vec::new();
        assert_eq!(reader.poll(&mut out, 100).expect("poll"), SourcePoll::More);
        assert_eq!(out.len(), 1);
        match reader.poll(&mut out, 100).expect("poll") {
            SourcePoll::Idle(wait) => assert!(wait <= Duration::from_secs(1), "{wait:?}"),
            other => panic!("expected Idle, got {other:?}"),
        }
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_rate_limited_generator_keeps_roughly_to_its_rate() {
        let source = GeneratorSource::new(1, 4).rate(400).records(40);
        let started = Instant::now();
        let mut reader = source.reader(0, 1).expect("reader");
        let records = drain(&mut reader, 1000);
        let elapsed = started.elapsed();
        assert_eq!(records.len(), 40);
        // 40 records at 400/s: the last is due after 97.5 ms.
        assert!(elapsed >= Duration::from_millis(90), "{elapsed:?}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Records before each snapshot, then the restored reader's records, equal an
        /// uninterrupted run; records a reader returned after its snapshot are dropped, as a
        /// failure would.
        #[test]
        fn a_restored_generator_continues_exactly_after_the_snapshot(
            seed in proptest::prelude::any::<u64>(),
            keys in 1u64..20,
            total in proptest::option::of(0u64..400),
            parallelism in 1u32..5,
            subtask in proptest::prelude::any::<proptest::sample::Index>(),
            sizes in proptest::collection::vec(1usize..12, 1..8),
            failures in proptest::collection::vec((0usize..15, 0usize..4), 0..6),
        ) {
            // An unbounded generator is compared on its first 300 records.
            const LIMIT: usize = 300;
            let subtask = subtask.index(parallelism as usize) as u32;
            let source = GeneratorSource::new(seed, keys);
            let source = match total {
                Some(total) => source.records(total),
                None => source,
            };
            let context = ctx("gen", subtask, parallelism);
            let open = |restored: Option<&[u8]>| {
                source.create_reader(&context, restored).expect("reader")
            };
            let uninterrupted = read_with_restores(open, &sizes, &[], LIMIT);
            let restored = read_with_restores(open, &sizes, &failures, LIMIT);
            proptest::prop_assert_eq!(restored, uninterrupted);
        }
    }

    #[test]
    fn a_position_from_a_differently_configured_generator_is_refused_naming_what_differs() {
        let source = GeneratorSource::new(1, 4).records(100);
        let mut reader = source.reader(1, 2).expect("reader");
        reader.poll(&mut Vec::new(), 3).expect("poll");
        let position = reader.saved_position();
        source.resume(1, 2, &position).expect("same split");

        let message = |result: Result<GeneratorReader, ConnectorError>| {
            let err = result.expect_err("mismatch");
            assert!(!err.retry_may_help());
            err.to_string()
        };
        let m = message(
            GeneratorSource::new(2, 5)
                .records(100)
                .resume(1, 2, &position),
        );
        assert!(
            m.contains("seed was 1, is now 2") && m.contains("keys was 4, is now 5"),
            "{m}"
        );
        assert!(!m.contains("subtask") && !m.contains("records"), "{m}");
        let m = message(source.resume(0, 2, &position));
        assert!(m.contains("subtask was 1, is now 0"), "{m}");
        let m = message(source.resume(1, 3, &position));
        assert!(m.contains("parallelism was 2, is now 3"), "{m}");
        let m = message(GeneratorSource::new(1, 4).resume(1, 2, &position));
        assert!(m.contains("records was 100, is now unbounded"), "{m}");
    }

    #[test]
    fn a_position_of_another_version_or_garbage_is_refused() {
        let source = GeneratorSource::new(1, 4);
        let mut position = source.reader(0, 1).expect("reader").saved_position();
        for bad in [&[][..], &[9, 1, 2, 3][..], &position[..position.len() - 1]] {
            let err = source.resume(0, 1, bad).expect_err("bad position");
            assert!(
                matches!(
                    err,
                    ConnectorError::BadPosition {
                        connector: "generator",
                        ..
                    }
                ),
                "{err}"
            );
        }
        position[0] = 9;
        let err = source.resume(0, 1, &position).expect_err("version 9");
        assert!(err.to_string().contains("format version 9"), "{err}");
        position[0] = 1;
        position.push(0);
        let err = source.resume(0, 1, &position).expect_err("trailing byte");
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    #[test]
    fn a_restored_rate_limited_generator_paces_from_the_restored_point() {
        // 1 record/s: a reader that already emitted one record may emit the next at once after
        // a restore (its schedule restarts), then must wait about a second.
        let source = GeneratorSource::new(1, 4).rate(1);
        let mut reader = source.reader(0, 1).expect("reader");
        let mut out = Vec::new();
        assert_eq!(reader.poll(&mut out, 10).expect("poll"), SourcePoll::More);
        let mut restored = source
            .resume(0, 1, &reader.saved_position())
            .expect("restore");
        assert_eq!(restored.poll(&mut out, 10).expect("poll"), SourcePoll::More);
        assert_eq!(out.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0, 1]);
        assert!(matches!(
            restored.poll(&mut out, 10).expect("poll"),
            SourcePoll::Idle(_)
        ));
    }

    #[test]
    fn a_generator_past_the_last_sequence_number_stays_finished_after_restore() {
        let source = GeneratorSource::new(1, 4);
        let mut reader = source.reader(0, 1).expect("reader");
        reader.next_seq = u64::MAX;
        let mut out = Vec::new();
        assert_eq!(
            reader.poll(&mut out, 10).expect("poll"),
            SourcePoll::Finished
        );
        assert_eq!(out.len(), 1);
        let mut restored = source
            .resume(0, 1, &reader.saved_position())
            .expect("restore");
        assert_eq!(
            restored.poll(&mut out, 10).expect("poll"),
            SourcePoll::Finished
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn zero_keys_or_zero_rate_is_a_configuration_error() {
        let err = GeneratorSource::new(1, 0).check().expect_err("keys = 0");
        assert!(matches!(err, ConnectorError::InvalidConfig { .. }));
        assert!(err.to_string().contains("keys"), "{err}");
        let err = GeneratorSource::new(1, 1)
            .rate(0)
            .check()
            .expect_err("rate = 0");
        assert!(err.to_string().contains("rate"), "{err}");
        assert!(GeneratorSource::new(1, 0)
            .create_reader(&ctx("gen", 0, 1), None)
            .is_err());
    }

    /// Reads `steps[i]` records from each of the `old` readers, snapshots them, rescales to
    /// `new` readers (twice: `old` → `new` → `old`), drains; returns every record read.
    fn read_across_rescales(records: u64, old: u32, new: u32, steps: &[usize]) -> Vec<u64> {
        let source = GeneratorSource::new(5, 17).records(records);
        let mut seen = Vec::new();
        let mut positions = Vec::new();
        for i in 0..old {
            let mut r = source.reader(i, old).expect("reader");
            let mut out = Vec::new();
            let n = steps.get(i as usize).copied().unwrap_or(3);
            r.poll(&mut out, n).expect("poll");
            seen.extend(out.iter().map(|r| r.seq));
            positions.push((i, r.saved_position()));
        }
        // Rescale to `new`, read a little, then back to `old`.
        let mut middle = Vec::new();
        for j in 0..new {
            let mut r = source.rescaled(j, new, old, &positions).expect("rescaled");
            let mut out = Vec::new();
            r.poll(&mut out, 5).expect("poll");
            seen.extend(out.iter().map(|r| r.seq));
            middle.push((j, r.saved_position()));
        }
        for i in 0..old {
            let mut r = source
                .rescaled(i, old, new, &middle)
                .expect("rescaled back");
            seen.extend(drain(&mut r, 11).iter().map(|r| r.seq));
        }
        seen
    }

    #[test]
    fn a_generator_rescaled_from_two_to_three_and_back_reads_every_record_once() {
        let mut seen = read_across_rescales(1000, 2, 3, &[10, 4]);
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_rescaled_generator_position_survives_a_same_parallelism_restore() {
        let source = GeneratorSource::new(5, 17).records(100);
        let positions: Vec<(u32, Vec<u8>)> = (0..2)
            .map(|i| (i, source.reader(i, 2).expect("r").saved_position()))
            .collect();
        let mut a = source.rescaled(0, 3, 2, &positions).expect("rescaled");
        let mut first = Vec::new();
        a.poll(&mut first, 7).expect("poll");
        let again = source.resume(0, 3, &a.saved_position()).expect("resume");
        let rest = drain(&mut again.clone(), 5);
        let direct = drain(&mut a, 5);
        assert_eq!(rest, direct);
    }

    #[test]
    fn rescaling_with_a_missing_or_foreign_position_is_refused() {
        let source = GeneratorSource::new(5, 17).records(100);
        let one = vec![(0, source.reader(0, 2).expect("r").saved_position())];
        let err = source.rescaled(0, 3, 2, &one).unwrap_err().to_string();
        assert!(err.contains("would be lost"), "{err}");
        let other = GeneratorSource::new(6, 17).records(100);
        let foreign: Vec<(u32, Vec<u8>)> = (0..2)
            .map(|i| (i, other.reader(i, 2).expect("r").saved_position()))
            .collect();
        let err = source.rescaled(0, 3, 2, &foreign).unwrap_err().to_string();
        assert!(err.contains("seed"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn every_record_is_read_exactly_once_across_any_rescale(
            records in 0u64..400,
            old in 1u32..6,
            new in 1u32..6,
            steps in proptest::collection::vec(0usize..40, 6),
        ) {
            let mut seen = read_across_rescales(records, old, new, &steps);
            seen.sort_unstable();
            proptest::prop_assert_eq!(seen, (0..records).collect::<Vec<_>>());
        }
    }
}
