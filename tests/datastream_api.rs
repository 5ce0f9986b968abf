//! The DataStream API end to end, in process: transformations, shortcuts, partitioners and
//! error reporting.

use std::collections::BTreeMap;
use std::sync::Arc;
use weir::connectors::{CollectSink, GeneratedRecord, GeneratorSource};
use weir::graph::ParallelismSettings;
use weir::minicluster::{JobOutcome, LocalJob, MiniCluster, MiniClusterOptions};
use weir::restart::RestartStrategy;
use weir::state::{HeapStateBackendFactory, ListState, MapState, ReducingState};
use weir::{
    Collector, JobDefinition, KeyedContext, KeyedProcessFunction, OpenContext, RuntimeOptions,
    StreamEnvironment, UserError,
};

/// Runs `job` at parallelism `p` through the JobMaster, with an in-process TaskManager; the
/// error is the job's failure cause (or why it could not be submitted).
fn run(job: JobDefinition, p: u32) -> Result<JobOutcome, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = MiniCluster::run_local(
        MiniClusterOptions::new(p, dir.path().to_path_buf()),
        LocalJob {
            job,
            parallelism: ParallelismSettings {
                config_default: p,
                ..Default::default()
            },
            options: RuntimeOptions::default(),
            state_backend: Arc::new(HeapStateBackendFactory::new()),
            checkpointing: None,
            restart: RestartStrategy::None,
        },
        &std::sync::atomic::AtomicBool::new(false),
    )
    .map_err(|e| e.to_string())?;
    match outcome.failure() {
        None => Ok(outcome),
        Some(cause) => Err(cause.to_string()),
    }
}

fn numbers(env: &StreamEnvironment, records: u64) -> weir::DataStream<GeneratedRecord> {
    env.add_source(GeneratorSource::new(11, 50).records(records))
        .uid("numbers")
}

#[test]
fn map_filter_and_flat_map_compose_as_written() {
    let env = StreamEnvironment::new("t");
    let sink = CollectSink::new();
    let out = sink.handle();
    numbers(&env, 1000)
        .filter(|r: &GeneratedRecord| r.value < 500)
        .uid("small")
        .map(|r: GeneratedRecord| r.value)
        .uid("value")
        .flat_map(|v: u64| vec![v, v])
        .uid("twice")
        .sink_to(sink)
        .uid("sink");
    run(env.build(), 2).unwrap();
    let mut got = out.lock().unwrap().clone();
    let mut want: Vec<u64> = (0..1000)
        .map(|s| weir::connectors::record_at(11, 50, s).value)
        .filter(|v| *v < 500)
        .flat_map(|v| [v, v])
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn sum_and_reduce_emit_each_keys_running_value() {
    let env = StreamEnvironment::new("t");
    let sums = CollectSink::new();
    let sums_out = sums.handle();
    let maxes = CollectSink::new();
    let maxes_out = maxes.handle();
    let keyed = numbers(&env, 5000).key_by(|r: &GeneratedRecord| r.key);
    keyed
        .sum(|r: &GeneratedRecord| r.value)
        .uid("sum")
        .sink_to(sums)
        .uid("sums");
    keyed
        .reduce(|a: GeneratedRecord, b: GeneratedRecord| if b.value > a.value { b } else { a })
        .uid("max")
        .sink_to(maxes)
        .uid("maxes");
    run(env.build(), 3).unwrap();
    let mut want_sum: BTreeMap<u64, u64> = BTreeMap::new();
    let mut want_max: BTreeMap<u64, u64> = BTreeMap::new();
    for s in 0..5000 {
        let r = weir::connectors::record_at(11, 50, s);
        *want_sum.entry(r.key).or_default() += r.value;
        let m = want_max.entry(r.key).or_default();
        *m = (*m).max(r.value);
    }
    let mut got_sum: BTreeMap<u64, u64> = BTreeMap::new();
    for (k, s) in sums_out.lock().unwrap().iter() {
        let e = got_sum.entry(*k).or_default();
        *e = (*e).max(*s);
    }
    assert_eq!(got_sum, want_sum);
    let mut got_max: BTreeMap<u64, u64> = BTreeMap::new();
    for r in maxes_out.lock().unwrap().iter() {
        let e = got_max.entry(r.key).or_default();
        *e = (*e).max(r.value);
    }
    assert_eq!(got_max, want_max);
    assert_eq!(
        maxes_out.lock().unwrap().len(),
        5000,
        "reduce emits once per record"
    );
}

#[test]
fn broadcast_delivers_every_record_to_every_subtask_and_rebalance_to_exactly_one() {
    let env = StreamEnvironment::new("t");
    let b = CollectSink::new();
    let b_out = b.handle();
    let r = CollectSink::new();
    let r_out = r.handle();
    let values = numbers(&env, 1000)
        .parallelism(1)
        .map(|r: GeneratedRecord| r.seq)
        .uid("seq")
        .parallelism(1);
    values
        .broadcast()
        .map(|s: u64| s)
        .uid("b")
        .parallelism(3)
        .sink_to(b)
        .uid("bsink")
        .parallelism(3);
    values
        .rebalance()
        .map(|s: u64| s)
        .uid("r")
        .parallelism(3)
        .sink_to(r)
        .uid("rsink")
        .parallelism(3);
    run(env.build(), 1).unwrap();
    assert_eq!(b_out.lock().unwrap().len(), 3000);
    let mut got = r_out.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, (0..1000).collect::<Vec<u64>>());
}

/// Exercises List, Map and Reducing state in one function.
#[derive(Clone, Default)]
struct Kinds {
    list: Option<ListState<u64>>,
    map: Option<MapState<u64, u64>>,
    reducing: Option<ReducingState<u64>>,
}

impl KeyedProcessFunction<u64, GeneratedRecord, (u64, usize, usize, u64)> for Kinds {
    fn open(&mut self, s: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.list = Some(s.list_state("seen")?);
        self.map = Some(s.map_state("by-value-bucket")?);
        self.reducing = Some(s.reducing_state("max", |a: u64, b: u64| a.max(b))?);
        Ok(())
    }
    fn process_element(
        &mut self,
        r: GeneratedRecord,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<(u64, usize, usize, u64)>,
    ) -> Result<(), UserError> {
        let (list, map, red) = (
            self.list.as_ref().unwrap(),
            self.map.as_ref().unwrap(),
            self.reducing.as_ref().unwrap(),
        );
        list.add(ctx, &r.seq)?;
        let bucket = r.value / 100;
        let n = map.get(ctx, &bucket)?.unwrap_or(0);
        map.insert(ctx, &bucket, &(n + 1))?;
        red.add(ctx, r.value)?;
        let key = *ctx.key();
        out.collect((
            key,
            list.get(ctx)?.len(),
            map.entries(ctx)?.len(),
            red.get(ctx)?.unwrap_or(0),
        ));
        Ok(())
    }
}

#[test]
fn list_map_and_reducing_state_hold_each_keys_history() {
    let env = StreamEnvironment::new("t");
    let sink = CollectSink::new();
    let out = sink.handle();
    numbers(&env, 3000)
        .key_by(|r: &GeneratedRecord| r.key)
        .process(Kinds::default())
        .uid("kinds")
        .sink_to(sink)
        .uid("sink");
    run(env.build(), 2).unwrap();
    let mut last: BTreeMap<u64, (usize, usize, u64)> = BTreeMap::new();
    for (k, l, m, mx) in out.lock().unwrap().iter() {
        let e = last.entry(*k).or_default();
        if *l > e.0 {
            *e = (*l, *m, *mx);
        }
    }
    let mut want: BTreeMap<u64, (usize, std::collections::BTreeSet<u64>, u64)> = BTreeMap::new();
    for s in 0..3000 {
        let r = weir::connectors::record_at(11, 50, s);
        let e = want.entry(r.key).or_default();
        e.0 += 1;
        e.1.insert(r.value / 100);
        e.2 = e.2.max(r.value);
    }
    let want: BTreeMap<u64, (usize, usize, u64)> = want
        .into_iter()
        .map(|(k, (n, b, m))| (k, (n, b.len(), m)))
        .collect();
    assert_eq!(last, want);
}

#[derive(Clone)]
struct FailOn(u64);

impl KeyedProcessFunction<u64, GeneratedRecord, u64> for FailOn {
    fn open(&mut self, _: &mut OpenContext<'_>) -> Result<(), UserError> {
        Ok(())
    }
    fn process_element(
        &mut self,
        r: GeneratedRecord,
        _: &mut KeyedContext<'_, u64>,
        _: &mut Collector<u64>,
    ) -> Result<(), UserError> {
        if r.seq == self.0 {
            return Err(format!("record {} is poison", r.seq).into());
        }
        Ok(())
    }
}

#[test]
fn an_operator_error_fails_the_job_naming_the_uid_and_subtask() {
    let env = StreamEnvironment::new("t");
    numbers(&env, 100_000)
        .key_by(|r: &GeneratedRecord| r.key)
        .process(FailOn(777))
        .uid("picky")
        .sink_to(CollectSink::new())
        .uid("sink");
    let err = run(env.build(), 2).unwrap_err();
    assert!(err.contains("operator 'picky' subtask "), "{err}");
    assert!(err.contains("/2 failed: record 777 is poison"), "{err}");
}

#[test]
fn a_missing_uid_is_reported_when_the_job_is_planned() {
    let env = StreamEnvironment::new("t");
    numbers(&env, 10)
        .map(|r: GeneratedRecord| r.key)
        .sink_to(CollectSink::new())
        .uid("sink");
    let err = run(env.build(), 1).unwrap_err();
    assert_eq!(
        err,
        "operator 'Map' (node-1) has no uid: call .uid(\"…\") on it"
    );
}
