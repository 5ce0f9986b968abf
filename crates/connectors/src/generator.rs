//! A deterministic record generator, for demos, benchmarks and recovery tests.
//!
//! Record number `seq` is a pure function of `(seed, keys, seq)` ([`record_at`]) and is
//! produced by subtask `seq % parallelism`, so the whole output of a bounded generator is the
//! same set of records whatever the parallelism — a test can compute the expected result
//! without running a job.

use crate::{subtask_of, ConnectorError};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
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

/// The splitmix64 finaliser: a fixed, well-mixing bijection on `u64`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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

    /// The reader of subtask `subtask` of `parallelism`, after [`check`](Self::check).
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
            stride: u64::from(parallelism),
            next_seq: u64::from(subtask),
            pacing: self.rate.map(|rate| Pacing {
                per_second: rate as f64 / f64::from(parallelism),
                started: None,
                emitted: 0,
            }),
        })
    }
}

impl Source<GeneratedRecord> for GeneratorSource {
    fn name(&self) -> String {
        "generator".to_string()
    }

    fn create_reader(
        &self,
        ctx: &SourceContext,
        _restored: Option<&[u8]>,
    ) -> Result<Box<dyn SourceReader<GeneratedRecord>>, UserError> {
        let (subtask, parallelism) = subtask_of(ctx)?;
        Ok(Box::new(self.reader(subtask, parallelism)?))
    }
}

/// The rate limit of one reader: record `n` (counted from the reader's start) is due
/// `n / per_second` seconds after the first poll.
#[derive(Clone, Debug)]
struct Pacing {
    per_second: f64,
    started: Option<Instant>,
    emitted: u64,
}

impl Pacing {
    /// How many records may be emitted now, or how long to wait for the next one.
    fn allowance(&mut self, now: Instant) -> Result<u64, Duration> {
        let started = *self.started.get_or_insert(now);
        let elapsed = now.saturating_duration_since(started).as_secs_f64();
        // Record n is due at n / per_second; all of 0..=floor(elapsed * per_second) are due.
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

/// One subtask's generator: emits records `subtask, subtask + p, subtask + 2p, …`.
#[derive(Clone, Debug)]
pub struct GeneratorReader {
    seed: u64,
    keys: u64,
    end: Option<u64>,
    stride: u64,
    next_seq: u64,
    pacing: Option<Pacing>,
}

impl GeneratorReader {
    /// The number of the next record this reader will emit: its whole position.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn finished(&self) -> bool {
        self.end.is_some_and(|end| self.next_seq >= end)
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
        while emitted < budget && !self.finished() {
            out.push(record_at(self.seed, self.keys, self.next_seq));
            emitted += 1;
            // Past u64::MAX an unbounded generator simply stops.
            match self.next_seq.checked_add(self.stride) {
                Some(next) => self.next_seq = next,
                None => {
                    self.end = Some(0);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ctx, drain};

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
}
