//! Event time in process, through the JobMaster: watermarks, timers, windows against a
//! brute-force model, late records, side outputs, union, idleness, and timers across a
//! failure and a restore.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir::connectors::{read_part_files, CollectSink, FileSink, GeneratedRecord, GeneratorSource};
use weir::graph::ParallelismSettings;
use weir::minicluster::{
    JobOutcome, LocalCheckpointing, LocalJob, MiniCluster, MiniClusterOptions,
};
use weir::restart::RestartStrategy;
use weir::state::{
    HeapStateBackendFactory, RocksDbStateBackendFactory, StateBackendFactory, ValueState,
};
use weir::window::{TimeWindow, WindowExt, Windowed, Windows};
use weir::{
    Collector, JobDefinition, KeyedConnectedStreams, KeyedContext, KeyedProcessFunction,
    OpenContext, OutputTag, RuntimeOptions, Source, SourceContext, SourcePoll, SourceReader,
    StreamEnvironment, TimeDomain, Timer, UserError, WatermarkStrategy,
};
use weir_checkpoint::CheckpointConfig;
use weir_storage::Store;

struct Run {
    p: u32,
    options: RuntimeOptions,
    backend: Arc<dyn StateBackendFactory>,
    checkpointing: Option<LocalCheckpointing>,
    restart: RestartStrategy,
}

impl Run {
    fn new(p: u32) -> Self {
        Self {
            p,
            options: RuntimeOptions::default(),
            backend: Arc::new(HeapStateBackendFactory::new()),
            checkpointing: None,
            restart: RestartStrategy::None,
        }
    }

    /// Runs `job`; the error is the job's failure cause.
    fn go(self, job: JobDefinition) -> Result<JobOutcome, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let outcome = MiniCluster::run_local(
            MiniClusterOptions::new(self.p, dir.path().to_path_buf()),
            LocalJob {
                job,
                parallelism: ParallelismSettings {
                    config_default: self.p,
                    ..Default::default()
                },
                options: self.options,
                state_backend: self.backend,
                checkpointing: self.checkpointing,
                restart: self.restart,
            },
            &AtomicBool::new(false),
        )
        .map_err(|e| e.to_string())?;
        match outcome.failure() {
            None => Ok(outcome),
            Some(cause) => Err(cause.to_string()),
        }
    }
}

/// One input record of the window tests: event time and key.
type Event = (i64, u8);

/// A fired window: key, start, end, count.
type Fired = (u8, i64, i64, u64);

/// A brute-force model of the window operator with the default trigger: before record `i`
/// the watermark is the one generated from records `0..i` (bounded out-of-orderness `bound`),
/// as a source task that emits a watermark after each one-record batch gives.
struct Model {
    windows: Windows,
    lateness: i64,
    /// Live windows per key: actual window → (count, pending fire time).
    live: BTreeMap<u8, Vec<(TimeWindow, u64, Option<i64>)>>,
    fired: Vec<Fired>,
    late: Vec<Event>,
}

impl Model {
    fn cleanup(&self, w: &TimeWindow) -> i64 {
        w.max_timestamp().saturating_add(self.lateness)
    }

    fn advance(&mut self, wm: i64) {
        let lateness = self.lateness;
        for (key, ws) in &mut self.live {
            for (w, count, pending) in ws.iter_mut() {
                if pending.is_some_and(|t| t <= wm) {
                    self.fired.push((*key, w.start, w.end, *count));
                    *pending = None;
                }
            }
            ws.retain(|(w, _, _)| w.max_timestamp().saturating_add(lateness) > wm);
        }
    }

    fn add(&mut self, (ts, key): Event, wm: i64) {
        let assigned = self.windows.assign(ts);
        let merging = self.windows.is_merging();
        let mut placed = false;
        for w in assigned {
            let ws = self.live.entry(key).or_default();
            let (actual, count) = if merging {
                let mut cover = w;
                let mut count = 0;
                loop {
                    let before = ws.len();
                    ws.retain(|(s, c, _)| {
                        if s.intersects(&cover) {
                            cover = cover.cover(s);
                            count += c;
                            false
                        } else {
                            true
                        }
                    });
                    if ws.len() == before {
                        break;
                    }
                }
                (cover, count)
            } else {
                match ws.iter().position(|(s, _, _)| *s == w) {
                    Some(i) => {
                        let (s, c, _) = ws.remove(i);
                        (s, c)
                    }
                    None => (w, 0),
                }
            };
            let late = self.cleanup(&actual) <= wm;
            let ws = self.live.entry(key).or_default();
            if late {
                // A live window is cleaned up before it could be late, so a late window (or
                // session cover) took nothing from the live ones.
                assert_eq!(count, 0, "a live window was late");
                continue;
            }
            placed = true;
            let count = count + 1;
            let pending = if actual.max_timestamp() <= wm {
                self.fired.push((key, actual.start, actual.end, count));
                None
            } else {
                Some(actual.max_timestamp())
            };
            ws.push((actual, count, pending));
        }
        if !placed {
            self.late.push((ts, key));
        }
    }

    fn run(windows: Windows, lateness: i64, bound: i64, events: &[Event]) -> Model {
        let mut m = Model {
            windows,
            lateness,
            live: BTreeMap::new(),
            fired: Vec::new(),
            late: Vec::new(),
        };
        let mut max_ts: Option<i64> = None;
        for &e in events {
            let wm = max_ts.map_or(i64::MIN, |t| t - bound - 1);
            m.advance(wm);
            m.add(e, wm);
            max_ts = Some(max_ts.map_or(e.0, |t| t.max(e.0)));
        }
        m.advance(i64::MAX);
        m.fired.sort();
        m.late.sort();
        m
    }
}

/// Emits `events` in order (one source subtask), watermarks after every record; counts per
/// key in `windows` at p=2; returns the fired windows and the late records, sorted.
fn run_windows(
    events: Vec<Event>,
    windows: Windows,
    lateness: i64,
    bound: i64,
) -> (Vec<Fired>, Vec<Event>) {
    let env = StreamEnvironment::new("windows");
    let late = OutputTag::<Event>::new("late");
    let fired = CollectSink::new();
    let fired_out = fired.handle();
    let late_sink = CollectSink::new();
    let late_out = late_sink.handle();
    let n = events.len() as u64;
    let events = Arc::new(events);
    let counts = env
        .add_source(GeneratorSource::new(1, 1).records(n))
        .uid("source")
        .parallelism(1)
        .map(move |r: GeneratedRecord| events[r.seq as usize])
        .uid("events")
        .parallelism(1)
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::bounded_out_of_orderness(
                Duration::from_millis(bound as u64),
                |e: &Event| e.0,
            )
            .with_interval(Duration::ZERO),
        )
        .uid("watermarks")
        .parallelism(1)
        .key_by(|e: &Event| e.1)
        .window(windows)
        .allowed_lateness(Duration::from_millis(lateness as u64))
        .side_output_late_data(&late)
        .count()
        .expect("a valid window")
        .uid("window");
    counts
        .map(|w: Windowed<u8, u64>| (w.key, w.window.start, w.window.end, w.value))
        .uid("flat")
        .sink_to(fired)
        .uid("fired");
    counts
        .side_output(&late)
        .sink_to(late_sink)
        .uid("late-sink");
    let mut run = Run::new(2);
    run.options.batch_size = 1;
    run.go(env.build()).expect("the job finishes");
    let mut f = fired_out.lock().unwrap().clone();
    let mut l = late_out.lock().unwrap().clone();
    f.sort();
    l.sort();
    (f, l)
}

/// Out-of-order timestamps: a rising walk with jitter within `bound`, and now and then a
/// record far behind (late).
fn events_strategy() -> impl Strategy<Value = (Vec<Event>, i64)> {
    (
        proptest::collection::vec((0i64..30, 0u8..3, 0u8..10), 5..120),
        5i64..40,
    )
        .prop_map(|(steps, bound)| {
            let mut t = 1_000i64;
            let events = steps
                .into_iter()
                .map(|(step, key, kind)| {
                    t += step;
                    let ts = match kind {
                        0 => t - 400,                 // far behind: late
                        1 => t - bound.min(step + 1), // out of order, within the bound
                        _ => t,
                    };
                    (ts, key)
                })
                .collect();
            (events, bound)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]

    #[test]
    fn tumbling_windows_with_lateness_match_the_brute_force_model(
        (events, bound) in events_strategy(),
        size in 20i64..200,
        lateness in prop_oneof![Just(0i64), 1i64..150],
    ) {
        let w = Windows::tumbling(Duration::from_millis(size as u64));
        let model = Model::run(w, lateness, bound, &events);
        let (fired, late) = run_windows(events, w, lateness, bound);
        prop_assert_eq!(fired, model.fired);
        prop_assert_eq!(late, model.late);
    }

    #[test]
    fn sliding_windows_with_lateness_match_the_brute_force_model(
        (events, bound) in events_strategy(),
        slide in 10i64..60,
        times in 1i64..4,
        lateness in prop_oneof![Just(0i64), 1i64..150],
    ) {
        let w = Windows::sliding(
            Duration::from_millis((slide * times) as u64),
            Duration::from_millis(slide as u64),
        );
        let model = Model::run(w, lateness, bound, &events);
        let (fired, late) = run_windows(events, w, lateness, bound);
        prop_assert_eq!(fired, model.fired);
        prop_assert_eq!(late, model.late);
    }

    #[test]
    fn session_windows_merge_fire_and_drop_late_records_as_the_brute_force_model(
        (events, bound) in events_strategy(),
        gap in 5i64..120,
        lateness in prop_oneof![Just(0i64), 1i64..150],
    ) {
        let w = Windows::session(Duration::from_millis(gap as u64));
        let model = Model::run(w, lateness, bound, &events);
        let (fired, late) = run_windows(events, w, lateness, bound);
        prop_assert_eq!(fired, model.fired);
        prop_assert_eq!(late, model.late);
    }
}

/// Registers an event-time timer at `ts + 10` per record and deletes the one of the record
/// before (when it is still pending); emits `(key, timer, watermark at firing)`.
#[derive(Clone, Default)]
struct TimerProbe {
    last: Option<ValueState<i64>>,
}

impl KeyedProcessFunction<u64, (i64, u64), (u64, i64, i64)> for TimerProbe {
    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.last = Some(ctx.value_state("last")?);
        Ok(())
    }

    fn process_element(
        &mut self,
        (ts, _): (i64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<(u64, i64, i64)>,
    ) -> Result<(), UserError> {
        let last = self.last.as_ref().unwrap();
        if let Some(prev) = last.get(ctx)? {
            // Every other timer is deleted before it fires.
            if prev % 2 == 1 {
                ctx.delete_event_time_timer(prev + 10)?;
            }
        }
        ctx.register_event_time_timer(ts + 10)?;
        last.update(ctx, &ts)?;
        Ok(())
    }

    fn on_timer(
        &mut self,
        timer: &Timer,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<(u64, i64, i64)>,
    ) -> Result<(), UserError> {
        assert_eq!(timer.domain, TimeDomain::EventTime);
        assert_eq!(ctx.timestamp(), Some(timer.timestamp));
        out.collect((*ctx.key(), timer.timestamp, ctx.current_watermark()));
        Ok(())
    }
}

#[test]
fn event_time_timers_fire_in_order_once_each_and_deleted_ones_never() {
    let env = StreamEnvironment::new("timers");
    let sink = CollectSink::new();
    let out = sink.handle();
    env.add_source(GeneratorSource::new(3, 7).records(3000))
        .uid("source")
        .parallelism(1)
        .map(|r: GeneratedRecord| (r.seq as i64, r.key))
        .uid("events")
        .parallelism(1)
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::ascending(|e: &(i64, u64)| e.0).with_interval(Duration::ZERO),
        )
        .uid("watermarks")
        .parallelism(1)
        .key_by(|e: &(i64, u64)| e.1)
        .process(TimerProbe::default())
        .uid("probe")
        .sink_to(sink)
        .uid("sink");
    let mut run = Run::new(2);
    run.options.batch_size = 1;
    run.go(env.build()).unwrap();
    let got = out.lock().unwrap().clone();
    // The model: per key, a timer at ts+10 for each record; when the key's next record comes
    // and the previous one's ts is odd, its timer is deleted unless it fired already (one
    // record per batch: record `i` arrives after the watermark `i - 2`).
    let mut want: BTreeSet<(u64, i64)> = BTreeSet::new();
    let mut last: BTreeMap<u64, i64> = BTreeMap::new();
    for seq in 0..3000u64 {
        let r = weir::connectors::record_at(3, 7, seq);
        let wm = seq as i64 - 2;
        if let Some(prev) = last.get(&r.key) {
            if prev % 2 == 1 && prev + 10 > wm {
                want.remove(&(r.key, prev + 10));
            }
        }
        want.insert((r.key, seq as i64 + 10));
        last.insert(r.key, seq as i64);
    }
    let fired: Vec<(u64, i64)> = got.iter().map(|(k, t, _)| (*k, *t)).collect();
    assert_eq!(fired.len(), want.len(), "every timer fires once");
    assert_eq!(fired.iter().copied().collect::<BTreeSet<_>>(), want);
    for (k, t, wm) in &got {
        assert!(wm >= t, "key {k}: timer {t} fired at watermark {wm}");
    }
    for k in 0..7u64 {
        let mine: Vec<i64> = got.iter().filter(|g| g.0 == k).map(|g| g.1).collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "key {k} out of order: {mine:?}"
        );
    }
}

/// Per key, on its first record: an event-time timer at its timestamp + 500 and a
/// processing-time timer 1 s ahead of the wall clock. Each firing emits one line. Fails
/// once, in the first attempt, after `fail_after` records.
#[derive(Clone)]
struct Restarted {
    seen: Option<ValueState<bool>>,
    fail_after: u64,
    count: u64,
    armed: bool,
}

impl KeyedProcessFunction<u64, (i64, u64), String> for Restarted {
    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.seen = Some(ctx.value_state("seen")?);
        self.armed = ctx.attempt() == 0 && ctx.subtask().0 == 0;
        Ok(())
    }

    fn process_element(
        &mut self,
        (ts, _): (i64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<String>,
    ) -> Result<(), UserError> {
        self.count += 1;
        if self.armed && self.count > self.fail_after {
            return Err("injected failure".into());
        }
        let seen = self.seen.as_ref().unwrap();
        if seen.get(ctx)?.is_none() {
            seen.update(ctx, &true)?;
            ctx.register_event_time_timer(ts + 500)?;
            let at = ctx.current_processing_time() + 1_000;
            ctx.register_processing_time_timer(at)?;
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        timer: &Timer,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<String>,
    ) -> Result<(), UserError> {
        let kind = match timer.domain {
            TimeDomain::EventTime => "event",
            TimeDomain::ProcessingTime => "processing",
        };
        if timer.domain == TimeDomain::ProcessingTime {
            assert!(ctx.current_processing_time() >= timer.timestamp);
        }
        out.collect(format!("{}\t{kind}", ctx.key()));
        Ok(())
    }
}

fn timers_across_a_failure(backend: Arc<dyn StateBackendFactory>, out: &Path) {
    const KEYS: u64 = 20;
    let env = StreamEnvironment::new("restarted-timers");
    // 4000 records at 2000/s: two seconds. The failure comes after about 0.3 s and the
    // restart waits 1.5 s, so the processing-time timers (1 s after each key's first record)
    // are due while the job is down and fire right after the restore.
    env.add_source(GeneratorSource::new(9, KEYS).records(4000).rate(2000))
        .uid("source")
        .map(|r: GeneratedRecord| (r.seq as i64, r.key))
        .uid("events")
        .assign_timestamps_and_watermarks(WatermarkStrategy::ascending(|e: &(i64, u64)| e.0))
        .uid("watermarks")
        .key_by(|e: &(i64, u64)| e.1)
        .process(Restarted {
            seen: None,
            fail_after: 300,
            count: 0,
            armed: false,
        })
        .uid("timers")
        .sink_to(FileSink::new(out))
        .uid("sink");
    let mut run = Run::new(2);
    run.backend = backend;
    run.checkpointing = Some(LocalCheckpointing {
        config: CheckpointConfig {
            interval_ms: 50,
            ..CheckpointConfig::default()
        },
        store: Store::in_memory(),
        job_id: None,
        resume: false,
    });
    run.restart = RestartStrategy::FixedDelay {
        attempts: 1,
        delay_ms: 1_500,
    };
    let outcome = run.go(env.build()).expect("the job recovers and finishes");
    assert!(outcome.completed_checkpoints() > 0);
    assert_eq!(
        outcome.details.restarts, 1,
        "the injected failure restarted the job once"
    );
    let lines = read_part_files(out).unwrap();
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for l in &lines {
        *counts.entry(l.clone()).or_default() += 1;
    }
    for key in 0..KEYS {
        for kind in ["event", "processing"] {
            assert_eq!(
                counts.get(&format!("{key}\t{kind}")),
                Some(&1),
                "key {key}'s {kind} timer must fire exactly once: {lines:?}"
            );
        }
    }
    assert_eq!(lines.len() as u64, 2 * KEYS);
}

#[test]
fn timers_fire_exactly_once_across_a_failure_on_the_heap_backend_and_overdue_processing_timers_fire_after_the_restore(
) {
    let dir = tempfile::tempdir().unwrap();
    timers_across_a_failure(Arc::new(HeapStateBackendFactory::new()), dir.path());
}

#[test]
fn timers_fire_exactly_once_across_a_failure_on_rocksdb_and_overdue_processing_timers_fire_after_the_restore(
) {
    let dir = tempfile::tempdir().unwrap();
    let backend = RocksDbStateBackendFactory::new(dir.path().join("state"), 64 << 20).unwrap();
    timers_across_a_failure(Arc::new(backend), &dir.path().join("out"));
}

/// A source of `n` records per subtask 0 (timestamps 0, 10, …), then idle until `done`; the
/// other subtasks are idle from the start. Both finish once `done` is set.
struct HalfIdle {
    n: i64,
    done: Arc<AtomicBool>,
}

struct HalfIdleReader {
    next: i64,
    n: i64,
    done: Arc<AtomicBool>,
}

impl Source<i64> for HalfIdle {
    fn name(&self) -> String {
        "half-idle".into()
    }

    fn create_reader(
        &self,
        ctx: &SourceContext,
        _restored: Option<&[u8]>,
    ) -> Result<Box<dyn SourceReader<i64>>, UserError> {
        Ok(Box::new(HalfIdleReader {
            next: 0,
            n: if ctx.subtask.0 == 0 { self.n } else { 0 },
            done: self.done.clone(),
        }))
    }
}

impl SourceReader<i64> for HalfIdleReader {
    fn poll(&mut self, out: &mut Vec<i64>, _max: usize) -> Result<SourcePoll, UserError> {
        if self.done.load(Ordering::SeqCst) {
            return Ok(SourcePoll::Finished);
        }
        if self.next < self.n {
            out.push(self.next * 10);
            self.next += 1;
            return Ok(SourcePoll::More);
        }
        Ok(SourcePoll::Idle(Duration::from_millis(10)))
    }
}

#[test]
fn an_idle_source_subtask_does_not_hold_back_event_time() {
    let env = StreamEnvironment::new("idle");
    let done = Arc::new(AtomicBool::new(false));
    let fired: Arc<Mutex<Vec<Windowed<u8, u64>>>> = Arc::default();
    let (seen, flag) = (fired.clone(), done.clone());
    env.add_source(HalfIdle {
        n: 100,
        done: done.clone(),
    })
    .uid("source")
    .assign_timestamps_and_watermarks(
        WatermarkStrategy::ascending(|t: &i64| *t)
            .with_interval(Duration::ZERO)
            .with_idleness(Duration::from_millis(100)),
    )
    .uid("watermarks")
    .key_by(|_: &i64| 0u8)
    .window(Windows::tumbling(Duration::from_millis(100)))
    .count()
    .unwrap()
    .uid("window")
    .map(move |w: Windowed<u8, u64>| {
        // The first window fired while both sources still run: event time moved on although
        // the second subtask never saw a record.
        seen.lock().unwrap().push(w.clone());
        flag.store(true, Ordering::SeqCst);
        w.value
    })
    .uid("seen")
    .sink_to(CollectSink::new())
    .uid("sink");
    let job = env.build();
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            // Without idleness the job would wait forever: end it after 30 s, failing below.
            for _ in 0..300 {
                if done.load(Ordering::SeqCst) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            done.store(true, Ordering::SeqCst);
            false
        })
    };
    Run::new(2).go(job).unwrap();
    assert!(
        watchdog.join().unwrap(),
        "no window fired while a source subtask was idle"
    );
    let got = fired.lock().unwrap().clone();
    assert_eq!(got[0].window, TimeWindow::new(0, 100));
    assert_eq!(got[0].value, 10);
}

/// Sends odd values to a side output, even ones to the main output.
#[derive(Clone)]
struct Split {
    odd: OutputTag<String>,
}

impl KeyedProcessFunction<u64, (i64, u64), u64> for Split {
    fn open(&mut self, _ctx: &mut OpenContext<'_>) -> Result<(), UserError> {
        Ok(())
    }

    fn process_element(
        &mut self,
        (ts, key): (i64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<u64>,
    ) -> Result<(), UserError> {
        if ts % 2 == 1 {
            ctx.output(&self.odd, format!("{key}:{ts}"))?;
        } else {
            out.collect(ts as u64);
        }
        Ok(())
    }
}

#[test]
fn side_outputs_and_union_carry_every_record_once() {
    let env = StreamEnvironment::new("side");
    let odd = OutputTag::<String>::new("odd");
    let evens = CollectSink::new();
    let evens_out = evens.handle();
    let odds = CollectSink::new();
    let odds_out = odds.handle();
    let a = env
        .add_source(GeneratorSource::new(1, 5).records(500))
        .uid("a")
        .map(|r: GeneratedRecord| (r.seq as i64, r.key))
        .uid("a-events");
    let b = env
        .add_source(GeneratorSource::new(2, 5).records(500))
        .uid("b")
        .map(|r: GeneratedRecord| (500 + r.seq as i64, r.key))
        .uid("b-events");
    let split = a
        .union(&[&b])
        .uid("union")
        .key_by(|e: &(i64, u64)| e.1)
        .process(Split { odd: odd.clone() })
        .uid("split");
    split.sink_to(evens).uid("evens");
    split.side_output(&odd).sink_to(odds).uid("odds");
    Run::new(2).go(env.build()).unwrap();
    let mut e = evens_out.lock().unwrap().clone();
    e.sort();
    assert_eq!(e, (0..1000u64).filter(|v| v % 2 == 0).collect::<Vec<_>>());
    let o = odds_out.lock().unwrap().clone();
    assert_eq!(o.len(), 500);
    assert!(o
        .iter()
        .all(|s| s.split(':').nth(1).unwrap().parse::<u64>().unwrap() % 2 == 1));
}

#[test]
fn an_event_time_window_on_a_stream_without_timestamps_is_refused_at_build_time() {
    let env = StreamEnvironment::new("no-ts");
    let err = env
        .add_source(GeneratorSource::new(1, 5).records(5))
        .uid("s")
        .key_by(|r: &GeneratedRecord| r.key)
        .window(Windows::tumbling(Duration::from_secs(1)))
        .count()
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("assign_timestamps_and_watermarks"),
        "{err}"
    );
}

/// Two inputs of `(timestamp, key)`: the first every 3 ms, the second every 5 ms from 1 ms,
/// each from one ascending source subtask (so no record is ever late).
fn two_inputs(env: &StreamEnvironment) -> KeyedConnectedStreams<(i64, u64), (i64, u64), u64> {
    let side = |uid: &str, seed: u64, step: i64, from: i64| {
        env.add_source(GeneratorSource::new(seed, 4).records(600))
            .uid(uid)
            .parallelism(1)
            .map(move |r: GeneratedRecord| (from + step * r.seq as i64, r.key))
            .uid(&format!("{uid}-events"))
            .parallelism(1)
            .assign_timestamps_and_watermarks(WatermarkStrategy::ascending(|e: &(i64, u64)| e.0))
            .uid(&format!("{uid}-watermarks"))
            .parallelism(1)
    };
    side("first", 21, 3, 0)
        .connect(&side("second", 22, 5, 1))
        .key_by(|a: &(i64, u64)| a.1, |b: &(i64, u64)| b.1)
}

/// A record of either join input: timestamp and key.
type Keyed = (i64, u64);

fn inputs_model() -> (Vec<Keyed>, Vec<Keyed>) {
    let first = (0..600u64)
        .map(|s| (3 * s as i64, weir::connectors::record_at(21, 4, s).key))
        .collect();
    let second = (0..600u64)
        .map(|s| (1 + 5 * s as i64, weir::connectors::record_at(22, 4, s).key))
        .collect();
    (first, second)
}

#[test]
fn an_interval_join_matches_a_brute_force_join() {
    use weir::window::JoinExt;
    let env = StreamEnvironment::new("interval-join");
    let sink = CollectSink::new();
    let out = sink.handle();
    two_inputs(&env)
        .interval_join(-7, 4, |k: &u64, a: &(i64, u64), b: &(i64, u64)| {
            (*k, a.0, b.0)
        })
        .unwrap()
        .uid("join")
        .sink_to(sink)
        .uid("sink");
    Run::new(2).go(env.build()).unwrap();
    let mut got = out.lock().unwrap().clone();
    got.sort();
    let (first, second) = inputs_model();
    let mut want = Vec::new();
    for a in &first {
        for b in &second {
            if a.1 == b.1 && b.0 >= a.0 - 7 && b.0 <= a.0 + 4 {
                want.push((a.1, a.0, b.0));
            }
        }
    }
    want.sort();
    assert!(!want.is_empty());
    assert_eq!(got, want);
}

#[test]
fn a_window_join_pairs_the_records_of_each_key_and_window() {
    use weir::window::JoinExt;
    let env = StreamEnvironment::new("window-join");
    let sink = CollectSink::new();
    let out = sink.handle();
    two_inputs(&env)
        .window_join(
            Windows::tumbling(Duration::from_millis(50)),
            |k: &u64, w: TimeWindow, a: &(i64, u64), b: &(i64, u64)| (*k, w.start, a.0, b.0),
        )
        .unwrap()
        .uid("join")
        .sink_to(sink)
        .uid("sink");
    Run::new(2).go(env.build()).unwrap();
    let mut got = out.lock().unwrap().clone();
    got.sort();
    let (first, second) = inputs_model();
    let mut want = Vec::new();
    for a in &first {
        for b in &second {
            if a.1 == b.1 && a.0.div_euclid(50) == b.0.div_euclid(50) {
                want.push((a.1, a.0.div_euclid(50) * 50, a.0, b.0));
            }
        }
    }
    want.sort();
    assert!(!want.is_empty());
    assert_eq!(got, want);
}

/// `n` records `(ts, key 0)` with ts 0, 10, 20, …, one per batch, a watermark after each.
fn ticking(env: &StreamEnvironment, n: u64) -> weir::KeyedStream<(i64, u8), u8> {
    env.add_source(GeneratorSource::new(1, 1).records(n))
        .uid("source")
        .parallelism(1)
        .map(|r: GeneratedRecord| (10 * r.seq as i64, 0u8))
        .uid("events")
        .parallelism(1)
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::ascending(|e: &(i64, u8)| e.0).with_interval(Duration::ZERO),
        )
        .uid("watermarks")
        .parallelism(1)
        .key_by(|e: &(i64, u8)| e.1)
}

fn fired_per_window(trigger: weir::window::Trigger, n: u64) -> BTreeMap<i64, Vec<u64>> {
    let env = StreamEnvironment::new("triggers");
    let sink = CollectSink::new();
    let out = sink.handle();
    ticking(&env, n)
        .window(Windows::tumbling(Duration::from_millis(100)))
        .trigger(trigger)
        .count()
        .unwrap()
        .uid("window")
        .map(|w: Windowed<u8, u64>| (w.window.start, w.value))
        .uid("flat")
        .sink_to(sink)
        .uid("sink");
    let mut run = Run::new(1);
    run.options.batch_size = 1;
    run.go(env.build()).unwrap();
    let mut per: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for (start, count) in out.lock().unwrap().iter() {
        per.entry(*start).or_default().push(*count);
    }
    per
}

#[test]
fn a_count_trigger_fires_every_n_records_and_never_on_time() {
    let per = fired_per_window(weir::window::Trigger::Count(3), 50);
    assert_eq!(per.len(), 5);
    for (start, counts) in per {
        assert_eq!(counts, vec![3, 6, 9], "window {start}");
    }
}

#[test]
fn a_continuous_trigger_fires_every_interval_of_event_time_and_at_the_end() {
    let per = fired_per_window(
        weir::window::Trigger::Continuous(Duration::from_millis(25)),
        50,
    );
    // Each full window fires when the watermark passes 25, 50, 75 and its end (99): after
    // the records 30, 60, 80 and the next window's first.
    for start in [0, 100, 200] {
        assert_eq!(per[&start], vec![4, 7, 9, 10], "window {start}");
    }
}

/// Emits `n` records a millisecond apart, then idles 600 ms (so every processing-time window
/// has ended), then finishes.
struct Paced {
    n: u64,
}

struct PacedReader {
    sent: u64,
    n: u64,
    idle_since: Option<std::time::Instant>,
}

impl Source<u64> for Paced {
    fn name(&self) -> String {
        "paced".into()
    }

    fn parallel(&self) -> bool {
        false
    }

    fn create_reader(
        &self,
        _ctx: &SourceContext,
        _restored: Option<&[u8]>,
    ) -> Result<Box<dyn SourceReader<u64>>, UserError> {
        Ok(Box::new(PacedReader {
            sent: 0,
            n: self.n,
            idle_since: None,
        }))
    }
}

impl SourceReader<u64> for PacedReader {
    fn poll(&mut self, out: &mut Vec<u64>, _max: usize) -> Result<SourcePoll, UserError> {
        if self.sent < self.n {
            out.push(self.sent);
            self.sent += 1;
            std::thread::sleep(Duration::from_millis(1));
            return Ok(SourcePoll::More);
        }
        let since = *self.idle_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= Duration::from_millis(600) {
            return Ok(SourcePoll::Finished);
        }
        Ok(SourcePoll::Idle(Duration::from_millis(20)))
    }
}

#[test]
fn processing_time_windows_count_every_record_once_in_aligned_windows() {
    let env = StreamEnvironment::new("processing-time");
    let sink = CollectSink::new();
    let out = sink.handle();
    let started = weir::state::ttl::now_ms();
    env.add_source(Paced { n: 300 })
        .uid("source")
        .key_by(|v: &u64| v % 3)
        .window(Windows::tumbling(Duration::from_millis(200)).on_processing_time())
        .count()
        .unwrap()
        .uid("window")
        .sink_to(sink)
        .uid("sink");
    Run::new(2).go(env.build()).unwrap();
    let got = out.lock().unwrap().clone();
    let ended = weir::state::ttl::now_ms();
    assert_eq!(got.iter().map(|w| w.value).sum::<u64>(), 300);
    for w in &got {
        assert_eq!(w.window.end - w.window.start, 200);
        assert_eq!(w.window.start % 200, 0);
        assert!(w.window.end > started && w.window.start < ended, "{w:?}");
    }
}

#[test]
fn a_side_output_of_an_operator_that_has_none_and_a_self_union_are_refused_by_name() {
    let env = StreamEnvironment::new("bad-side");
    let tag = OutputTag::<u64>::new("odd");
    let m = env
        .add_source(GeneratorSource::new(1, 5).records(5))
        .uid("s")
        .map(|r: GeneratedRecord| r.value)
        .uid("values");
    m.side_output(&tag).sink_to(CollectSink::new()).uid("sink");
    let err = Run::new(1).go(env.build()).unwrap_err();
    assert!(err.contains("'values' has no side outputs"), "{err}");

    let env = StreamEnvironment::new("self-union");
    let s = env
        .add_source(GeneratorSource::new(1, 5).records(5))
        .uid("s");
    s.union(&[&s])
        .uid("u")
        .sink_to(CollectSink::new())
        .uid("sink");
    let err = Run::new(1).go(env.build()).unwrap_err();
    assert!(err.contains("two edges"), "{err}");
}
