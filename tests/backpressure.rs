//! Backpressure: a deliberately slow sink slows an unbounded source, and the records in flight
//! (so the memory they take) stay bounded by the channel and batch sizes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir::connectors::{GeneratedRecord, GeneratorSource};
use weir::minicluster::{LocalJob, MiniCluster, MiniClusterOptions};
use weir::restart::RestartStrategy;
use weir::state::HeapStateBackendFactory;
use weir::{RuntimeOptions, Sink, SinkContext, SinkWriter, StreamEnvironment, UserError};

/// Counts what it receives, sleeps per batch, and stops the job after `stop_after`.
struct SlowSink {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    stop_after: Duration,
}

struct SlowWriter {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
}

impl Sink<GeneratedRecord> for SlowSink {
    fn name(&self) -> String {
        "slow".into()
    }
    fn create_writer(
        &self,
        _ctx: &SinkContext,
        _restored: Option<&[u8]>,
    ) -> Result<Box<dyn SinkWriter<GeneratedRecord>>, UserError> {
        Ok(Box::new(SlowWriter {
            received: self.received.clone(),
            stop: self.stop.clone(),
            deadline: Instant::now() + self.stop_after,
        }))
    }
}

impl SinkWriter<GeneratedRecord> for SlowWriter {
    fn write_batch(&mut self, batch: Vec<GeneratedRecord>) -> Result<(), UserError> {
        std::thread::sleep(Duration::from_millis(2));
        self.received
            .fetch_add(batch.len() as u64, Ordering::SeqCst);
        if Instant::now() > self.deadline {
            self.stop.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
    fn finish(&mut self) -> Result<(), UserError> {
        Ok(())
    }
}

#[test]
fn a_slow_sink_slows_an_unbounded_source_and_keeps_records_in_flight_bounded() {
    let received = Arc::new(AtomicU64::new(0));
    let options = RuntimeOptions {
        batch_size: 256,
        channel_capacity: 4,
        buffer_timeout: Duration::from_millis(50),
        metrics: true,
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Counted by the operator chained to the sources: what they emitted, record by record.
    let emitted_count = Arc::new(AtomicU64::new(0));
    let env = StreamEnvironment::new("backpressure");
    let counter = emitted_count.clone();
    env.add_source(GeneratorSource::new(1, 1000)) // unbounded
        .uid("gen")
        .parallelism(2)
        .map(move |r: GeneratedRecord| {
            counter.fetch_add(1, Ordering::SeqCst);
            r
        })
        .uid("identity")
        .rebalance()
        .sink_to(SlowSink {
            received: received.clone(),
            stop: stop.clone(),
            stop_after: Duration::from_secs(3),
        })
        .uid("slow")
        .parallelism(1);
    let job = env.build();

    // Sample records in flight (emitted by sources minus received by the sink) while it runs.
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (emitted, received, stop) = (
            emitted_count.clone(),
            received.clone(),
            sampler_stop.clone(),
        );
        std::thread::spawn(move || {
            let mut max_in_flight = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let emitted = emitted.load(Ordering::SeqCst);
                let got = received.load(Ordering::SeqCst);
                max_in_flight = max_in_flight.max(emitted.saturating_sub(got));
                std::thread::sleep(Duration::from_millis(5));
            }
            max_in_flight
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let outcome = MiniCluster::run_local(
        MiniClusterOptions::new(2, dir.path().to_path_buf()),
        LocalJob {
            job,
            parallelism: Default::default(),
            options: options.clone(),
            state_backend: Arc::new(HeapStateBackendFactory::new()),
            checkpointing: None,
            restart: RestartStrategy::None,
        },
        &stop,
    )
    .unwrap();
    sampler_stop.store(true, Ordering::SeqCst);
    let max_in_flight = sampler.join().unwrap();
    assert!(
        !outcome.finished(),
        "the unbounded job ends only by cancellation"
    );

    // Upper bound, in batches: per source subtask (one channel each) the batch it just polled,
    // its output buffer, the batch blocked in `send`, and `capacity` batches in the channel;
    // the sink's batch in hand and its pending buffer; one batch of sampling skew (the two
    // counters are read one after the other).
    let b = options.batch_size as u64;
    let sources = 2u64;
    let bound = (sources * (options.channel_capacity as u64 + 3) + 2 + 1) * b;
    let emitted = emitted_count.load(Ordering::SeqCst);
    assert!(
        received.load(Ordering::SeqCst) > 10 * b,
        "the sink made progress"
    );
    assert!(
        max_in_flight <= bound,
        "in flight {max_in_flight} > bound {bound}"
    );
    // Without backpressure a generator makes millions of records per second; with it, the
    // source runs at the sink's pace (~256 records per 2 ms ≈ 128K/s at most).
    assert!(
        emitted < 3 * 200_000 + bound,
        "the source was slowed down: emitted {emitted}"
    );
}
