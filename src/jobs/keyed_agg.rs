//! `keyed-agg`: generator → key_by(key) → per-key count and sum in ValueState → a file sink of
//! `key<TAB>count<TAB>sum` lines (one per key at end of input, or one per record), or a
//! blackhole when no output is given. The workload of `weir bench keyed-agg`.

use crate::jobs::{check_output_dir, fail_after, fail_after_param, FailAfter};
use std::path::PathBuf;
use weir_cli::{JobSpec, ParamError, ParamSpec, Params, StateSchema};
use weir_connectors::{BlackholeSink, FileSink, GeneratedRecord, GeneratorSource, KeyDistribution};
use weir_runtime::{
    Collector, EndOfInputContext, JobDefinition, KeyedContext, KeyedProcessFunction, OpenContext,
    StreamEnvironment, UserError,
};
use weir_state::ValueState;

/// Keeps `(count, sum)` per key; emits per record (`updates`) or once per key at end of input.
#[derive(Clone)]
pub struct CountSum {
    emit_updates: bool,
    agg: Option<ValueState<(u64, u64)>>,
    fail: FailAfter,
    /// Bytes of incompressible padding stored once per key (state-size experiments).
    padding: usize,
    pad: Option<ValueState<Vec<u8>>>,
    /// A planted bug for `weir drill`'s own tests: drop the first record this instance
    /// processes when it runs on restored state.
    drop_after_restore: bool,
    /// Whether this instance processed a record yet.
    processed_any: bool,
}

impl CountSum {
    /// A new aggregate; `emit_updates` emits a line per record instead of per key at the end.
    pub fn new(emit_updates: bool) -> Self {
        Self {
            emit_updates,
            agg: None,
            fail: FailAfter::default(),
            padding: 0,
            pad: None,
            drop_after_restore: false,
            processed_any: false,
        }
    }

    /// Plants a bug: after a restore, the first record is dropped (never counted). Only for
    /// checking that `weir drill` catches a lost record.
    pub fn with_planted_loss(mut self, drop_after_restore: bool) -> Self {
        self.drop_after_restore = drop_after_restore;
        self
    }

    /// Stores `bytes` of incompressible padding per key, written when the key is first seen,
    /// so the keyed state grows to about `keys × bytes` (recovery measurements).
    pub fn with_padding(mut self, bytes: usize) -> Self {
        self.padding = bytes;
        self
    }

    /// Injects a failure (see [`FailAfter`]).
    pub fn with_failure(mut self, fail: FailAfter) -> Self {
        self.fail = fail;
        self
    }
}

impl KeyedProcessFunction<u64, GeneratedRecord, String> for CountSum {
    fn open(&mut self, states: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.agg = Some(states.value_state("count-sum")?);
        if self.padding > 0 {
            self.pad = Some(states.value_state("padding")?);
        }
        self.fail.open(states);
        Ok(())
    }

    fn process_element(
        &mut self,
        r: GeneratedRecord,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<String>,
    ) -> Result<(), UserError> {
        self.fail.check()?;
        let state = self.agg.as_ref().ok_or("CountSum used before open")?;
        let current = state.get(ctx)?;
        let first = !std::mem::replace(&mut self.processed_any, true);
        if self.drop_after_restore && first && current.is_some() {
            // State before the first record: this instance was restored. The planted bug.
            return Ok(());
        }
        let (count, sum) = current.unwrap_or((0, 0));
        let next = (count + 1, sum + r.value);
        state.update(ctx, &next)?;
        if let (0, Some(pad)) = (count, self.pad.as_ref()) {
            pad.update(ctx, &padding_for(r.key, self.padding))?;
        }
        if self.emit_updates {
            out.collect(format!("{}\t{}\t{}", r.key, next.0, next.1));
        }
        Ok(())
    }

    fn end_of_input(
        &mut self,
        ctx: &mut EndOfInputContext<'_>,
        out: &mut Collector<String>,
    ) -> Result<(), UserError> {
        if self.emit_updates {
            return Ok(());
        }
        let state = self.agg.as_ref().ok_or("CountSum used before open")?;
        ctx.for_each_key(state, |key: u64, (count, sum)| {
            out.collect(format!("{key}\t{count}\t{sum}"));
            Ok(())
        })
    }
}

/// `len` pseudo-random bytes derived from `key` (splitmix64): the same on every run, and
/// incompressible, so RocksDB stores them at full size.
fn padding_for(key: u64, len: usize) -> Vec<u8> {
    let mut x = key;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What `keyed-agg` runs over.
#[derive(Clone, Debug)]
pub struct KeyedAggOptions {
    /// Distinct keys.
    pub keys: u64,
    /// Records in all; `None` = unbounded (runs until cancelled).
    pub records: Option<u64>,
    /// Generator seed.
    pub seed: u64,
    /// Records per second over all source subtasks; `None` = as fast as possible.
    pub rate: Option<u64>,
    /// Output directory; `None` = blackhole.
    pub output: Option<PathBuf>,
    /// One line per record instead of one per key at end of input.
    pub emit_updates: bool,
    /// Failure injection.
    pub fail: FailAfter,
    /// Padding bytes stored per key (0: none).
    pub padding: usize,
    /// The planted bug of [`CountSum::with_planted_loss`] (`weir drill`'s tests).
    pub drop_after_restore: bool,
    /// How records are spread over the keys: the generator's own uniform keys, or skewed ones
    /// (a `zipf-keys` map re-keys each record from its number, so the job stays deterministic).
    pub key_distribution: KeyDistribution,
}

/// Builds `keyed-agg`.
pub fn keyed_agg(o: &KeyedAggOptions) -> Result<JobDefinition, UserError> {
    let env = StreamEnvironment::new("keyed-agg");
    let mut source = GeneratorSource::new(o.seed, o.keys);
    if let Some(records) = o.records {
        source = source.records(records);
    }
    if let Some(rate) = o.rate {
        source = source.rate(rate);
    }
    source.check()?;
    let generated = env.add_source(source).uid("generator");
    let records = match o.key_distribution {
        KeyDistribution::Uniform => generated,
        skewed => {
            let seed = o.seed;
            generated
                .map(move |r: GeneratedRecord| GeneratedRecord {
                    key: skewed.key(seed, r.seq, r.key),
                    ..r
                })
                .uid("zipf-keys")
                .name("zipf keys")
        }
    };
    let aggregated = records
        .key_by(|r: &GeneratedRecord| r.key)
        .process(
            CountSum::new(o.emit_updates)
                .with_failure(o.fail)
                .with_padding(o.padding)
                .with_planted_loss(o.drop_after_restore),
        )
        .uid("aggregate")
        .name("CountSum");
    match &o.output {
        Some(dir) => aggregated.sink_to(FileSink::new(dir.clone())).uid("sink"),
        None => aggregated.sink_to(BlackholeSink::new()).uid("sink"),
    };
    Ok(env.build())
}

/// The catalog entry of `keyed-agg`.
pub fn keyed_agg_spec() -> JobSpec {
    JobSpec {
        name: "keyed-agg",
        description: "per-key count and sum over generated records: key<TAB>count<TAB>sum",
        params: vec![
            ParamSpec {
                name: "keys",
                help: "distinct keys (default 1000)",
            },
            ParamSpec {
                name: "records",
                help: "records to generate, or unbounded (default 1000000)",
            },
            ParamSpec {
                name: "seed",
                help: "generator seed (default 42)",
            },
            ParamSpec {
                name: "rate",
                help: "records per second over all sources (default: unlimited)",
            },
            ParamSpec {
                name: "output",
                help: "output directory of part files (default: blackhole)",
            },
            ParamSpec {
                name: "emit",
                help: "final (one line per key at the end, default) | updates (one per record)",
            },
            ParamSpec {
                name: "padding",
                help: "bytes of incompressible state stored per key (default 0; state ≈ keys × padding)",
            },
            fail_after_param(),
            ParamSpec {
                name: "key-distribution",
                help: "uniform (default) | zipf:S (key k drawn with weight (k+1)^-S, e.g. zipf:1.1)",
            },
            ParamSpec {
                name: "drop-after-restore",
                help: "test-only planted bug: true drops the first record after a restore (weir drill must catch it)",
            },
        ],
        build: build_from_params,
        states: vec![
            StateSchema::value::<u64, (u64, u64)>("aggregate", "count-sum"),
            StateSchema::value::<u64, Vec<u8>>("aggregate", "padding"),
        ],
    }
}

/// The largest `padding` (bytes stored per key): a TaskManager allocates it per record.
const MAX_PADDING: usize = 1 << 20;

fn build_from_params(params: &Params) -> Result<JobDefinition, ParamError> {
    let keys: u64 = params.get_or("keys", 1000)?;
    if keys == 0 {
        return Err(params.invalid("keys", "must be at least 1"));
    }
    let rate: Option<u64> = params.get("rate")?;
    if rate == Some(0) {
        return Err(params.invalid("rate", "must be at least 1"));
    }
    let emit_updates = match params.raw("emit").unwrap_or("final") {
        "final" => false,
        "updates" => true,
        _ => return Err(params.invalid("emit", "expected final or updates")),
    };
    let output: Option<PathBuf> = params.get("output")?;
    if let Some(dir) = &output {
        check_output_dir(params, "output", dir)?;
    }
    let options = KeyedAggOptions {
        keys,
        records: match params.raw("records") {
            Some("unbounded") => None,
            _ => Some(params.get_or("records", 1_000_000)?),
        },
        seed: params.get_or("seed", 42)?,
        rate,
        output,
        emit_updates,
        fail: fail_after(params)?,
        padding: match params.get_or("padding", 0)? {
            p if p > MAX_PADDING => {
                return Err(
                    params.invalid("padding", format!("at most {MAX_PADDING} bytes per key"))
                )
            }
            p => p,
        },
        drop_after_restore: params.get_or("drop-after-restore", false)?,
        key_distribution: KeyDistribution::parse(
            params.raw("key-distribution").unwrap_or("uniform"),
            keys,
        )
        .map_err(|e| params.invalid("key-distribution", e))?,
    };
    keyed_agg(&options).map_err(|e| params.invalid("keys", e.to_string()))
}
