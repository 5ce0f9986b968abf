//! Keyed state several times larger than the RocksDB memory budget runs, and every key's state
//! is exact.

use std::collections::BTreeMap;
use std::sync::Arc;
use weir::connectors::{record_at, CollectSink, GeneratedRecord, GeneratorSource};
use weir::minicluster::{LocalJob, MiniCluster, MiniClusterOptions};
use weir::restart::RestartStrategy;
use weir::state::{RocksDbStateBackendFactory, ValueState};
use weir::{
    Collector, EndOfInputContext, KeyedContext, KeyedProcessFunction, OpenContext, RuntimeOptions,
    StreamEnvironment, UserError,
};

const VALUE_BYTES: usize = 200;

/// Appends a 200-byte block derived from each record to its key's ValueState<Vec<u8>>; at end
/// of input emits (key, length, checksum).
#[derive(Clone, Default)]
struct Grow {
    blob: Option<ValueState<Vec<u8>>>,
}

fn block(r: &GeneratedRecord) -> Vec<u8> {
    (0..VALUE_BYTES)
        .map(|i| (r.seq as usize + i) as u8 ^ r.value as u8)
        .collect()
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

impl KeyedProcessFunction<u64, GeneratedRecord, (u64, usize, u64)> for Grow {
    fn open(&mut self, states: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.blob = Some(states.value_state("blob")?);
        Ok(())
    }
    fn process_element(
        &mut self,
        r: GeneratedRecord,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<(u64, usize, u64)>,
    ) -> Result<(), UserError> {
        let s = self.blob.as_ref().unwrap();
        let mut v = s.get(ctx)?.unwrap_or_default();
        v.extend(block(&r));
        s.update(ctx, &v)?;
        Ok(())
    }
    fn end_of_input(
        &mut self,
        ctx: &mut EndOfInputContext<'_>,
        out: &mut Collector<(u64, usize, u64)>,
    ) -> Result<(), UserError> {
        ctx.for_each_key(self.blob.as_ref().unwrap(), |k: u64, v: Vec<u8>| {
            out.collect((k, v.len(), checksum(&v)));
            Ok(())
        })
    }
}

#[test]
fn keyed_state_four_times_the_rocksdb_memory_budget_runs_and_is_exact() {
    let (seed, keys, records) = (5u64, 100_000u64, 400_000u64);
    let budget: u64 = 16 << 20;
    let dir = tempfile::tempdir().unwrap();
    let factory = Arc::new(RocksDbStateBackendFactory::new(dir.path(), budget).unwrap());
    let env = StreamEnvironment::new("grow");
    let sink = CollectSink::new();
    let handle = sink.handle();
    env.add_source(GeneratorSource::new(seed, keys).records(records))
        .uid("gen")
        .parallelism(1) // one producer per key: the appends arrive in record order
        .key_by(|r: &GeneratedRecord| r.key)
        .process(Grow::default())
        .uid("grow")
        .sink_to(sink)
        .uid("collect");
    let outcome = MiniCluster::run_local(
        MiniClusterOptions::new(2, dir.path().join("tm")),
        LocalJob {
            job: env.build(),
            parallelism: weir::graph::ParallelismSettings {
                config_default: 2,
                ..Default::default()
            },
            options: RuntimeOptions::default(),
            state_backend: factory,
            checkpointing: None,
            restart: RestartStrategy::None,
        },
        &std::sync::atomic::AtomicBool::new(false),
    )
    .unwrap();
    assert!(outcome.finished(), "{:?}", outcome.failure());
    let report = outcome.details.metrics;

    let raw_bytes = records * VALUE_BYTES as u64;
    assert!(
        raw_bytes > 4 * budget,
        "the workload is larger than the budget"
    );
    assert!(
        report.state_bytes > 2 * budget,
        "state on disk {} vs budget {budget}",
        report.state_bytes
    );

    let mut want: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for seq in 0..records {
        let r = record_at(seed, keys, seq);
        want.entry(r.key).or_default().extend(block(&r));
    }
    let got: BTreeMap<u64, (usize, u64)> = handle
        .lock()
        .unwrap()
        .iter()
        .map(|(k, l, c)| (*k, (*l, *c)))
        .collect();
    assert_eq!(got.len(), want.len());
    for (k, v) in &want {
        assert_eq!(got.get(k), Some(&(v.len(), checksum(v))), "key {k}");
    }
}
