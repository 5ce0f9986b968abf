//! Joins of two keyed inputs on event time, built on [`weir_runtime::KeyedCoProcessFunction`]:
//! an interval join (each record of the first input meets the second's records of its key
//! whose time lies within bounds of its own) and a window join (the records of a key that fall
//! into the same window, paired when the window ends). Both keep each side in keyed state and
//! drop it with event-time timers once the watermark says no partner can come, so both are
//! checkpointed and restored exactly once. Records behind the watermark are late and dropped,
//! as in Flink.

use crate::window::{TimeWindow, Windows};
use crate::{WindowError, WindowTime};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use weir_runtime::{
    Collector, Data, DataStream, KeyedCoProcessFunction, KeyedConnectedStreams, KeyedContext,
    OpenContext, TimeDomain, Timer, UserError,
};
use weir_state::{ListState, MapState};

/// Joins on two keyed, connected inputs.
pub trait JoinExt<A, B, K> {
    /// Pairs each first-input record `a` with every second-input record `b` of its key with
    /// `a.ts + lower <= b.ts <= a.ts + upper` (ms; `lower` may be negative), emitting
    /// `f(key, a, b)` once per pair.
    fn interval_join<OUT: Data>(
        &self,
        lower: i64,
        upper: i64,
        f: impl Fn(&K, &A, &B) -> OUT + Send + Sync + 'static,
    ) -> Result<DataStream<OUT>, WindowError>;

    /// Pairs the records of each key that fall into the same window of `windows` (tumbling
    /// or sliding, event time), emitting `f(key, window, a, b)` per pair when the window ends.
    fn window_join<OUT: Data>(
        &self,
        windows: Windows,
        f: impl Fn(&K, TimeWindow, &A, &B) -> OUT + Send + Sync + 'static,
    ) -> Result<DataStream<OUT>, WindowError>;
}

impl<A, B, K> JoinExt<A, B, K> for KeyedConnectedStreams<A, B, K>
where
    A: Data,
    B: Data,
    K: Data + Serialize + DeserializeOwned + Sync,
{
    fn interval_join<OUT: Data>(
        &self,
        lower: i64,
        upper: i64,
        f: impl Fn(&K, &A, &B) -> OUT + Send + Sync + 'static,
    ) -> Result<DataStream<OUT>, WindowError> {
        if lower > upper {
            return Err(WindowError(format!(
                "an interval join's lower bound ({lower} ms) is above its upper bound ({upper} ms)"
            )));
        }
        if !self.has_timestamps() {
            return Err(WindowError(
                "an interval join needs event time on both inputs: assign timestamps before \
                 connect"
                    .into(),
            ));
        }
        Ok(self
            .process(IntervalJoin {
                lower,
                upper,
                f: Arc::new(f),
                left: None,
                right: None,
            })
            .name(&format!("IntervalJoin[{lower}ms, {upper}ms]")))
    }

    fn window_join<OUT: Data>(
        &self,
        windows: Windows,
        f: impl Fn(&K, TimeWindow, &A, &B) -> OUT + Send + Sync + 'static,
    ) -> Result<DataStream<OUT>, WindowError> {
        windows.check().map_err(WindowError)?;
        if windows.is_merging() || windows.time != WindowTime::Event {
            return Err(WindowError(
                "a window join takes tumbling or sliding event-time windows".into(),
            ));
        }
        if !self.has_timestamps() {
            return Err(WindowError(
                "a window join needs event time on both inputs: assign timestamps before connect"
                    .into(),
            ));
        }
        Ok(self
            .process(WindowJoin {
                windows,
                f: Arc::new(f),
                left: None,
                right: None,
            })
            .name("WindowJoin"))
    }
}

type PairFn<K, A, B, OUT> = Arc<dyn Fn(&K, &A, &B) -> OUT + Send + Sync>;

/// Timer namespaces: which side's buffered records a cleanup timer drops.
const LEFT: &[u8] = b"L";
const RIGHT: &[u8] = b"R";

struct IntervalJoin<K, A, B, OUT> {
    lower: i64,
    upper: i64,
    f: PairFn<K, A, B, OUT>,
    left: Option<MapState<i64, Vec<A>>>,
    right: Option<MapState<i64, Vec<B>>>,
}

impl<K, A, B, OUT> Clone for IntervalJoin<K, A, B, OUT> {
    fn clone(&self) -> Self {
        Self {
            lower: self.lower,
            upper: self.upper,
            f: self.f.clone(),
            left: self.left.clone(),
            right: self.right.clone(),
        }
    }
}

fn timestamp_of<K>(ctx: &KeyedContext<'_, K>) -> Result<i64, UserError> {
    Ok(ctx
        .timestamp()
        .ok_or("a join got a record without a timestamp")?)
}

fn buffer<T: Serialize + DeserializeOwned, K>(
    state: &MapState<i64, Vec<T>>,
    ctx: &mut KeyedContext<'_, K>,
    ts: i64,
    value: T,
) -> Result<(), UserError> {
    let mut at = state.get(ctx, &ts)?.unwrap_or_default();
    at.push(value);
    state.insert(ctx, &ts, &at)?;
    Ok(())
}

impl<K, A, B, OUT> KeyedCoProcessFunction<K, A, B, OUT> for IntervalJoin<K, A, B, OUT>
where
    K: Data,
    A: Data,
    B: Data,
    OUT: Data,
{
    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.left = Some(ctx.map_state("join-left")?);
        self.right = Some(ctx.map_state("join-right")?);
        Ok(())
    }

    fn process_element1(
        &mut self,
        a: A,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<OUT>,
    ) -> Result<(), UserError> {
        let ts = timestamp_of(ctx)?;
        // The watermark says no record at or before it follows: this one is late.
        if ts <= ctx.current_watermark() {
            return Ok(());
        }
        let key = ctx.key().clone();
        for (tb, bs) in self.right.as_ref().expect("opened").entries(ctx)? {
            if tb >= ts.saturating_add(self.lower) && tb <= ts.saturating_add(self.upper) {
                for b in &bs {
                    out.collect((self.f)(&key, &a, b));
                }
            }
        }
        buffer(self.left.as_ref().expect("opened"), ctx, ts, a)?;
        ctx.register_timer(TimeDomain::EventTime, ts.saturating_add(self.upper), LEFT)?;
        Ok(())
    }

    fn process_element2(
        &mut self,
        b: B,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<OUT>,
    ) -> Result<(), UserError> {
        let ts = timestamp_of(ctx)?;
        if ts <= ctx.current_watermark() {
            return Ok(());
        }
        let key = ctx.key().clone();
        for (ta, as_) in self.left.as_ref().expect("opened").entries(ctx)? {
            if ts >= ta.saturating_add(self.lower) && ts <= ta.saturating_add(self.upper) {
                for a in &as_ {
                    out.collect((self.f)(&key, a, &b));
                }
            }
        }
        buffer(self.right.as_ref().expect("opened"), ctx, ts, b)?;
        ctx.register_timer(TimeDomain::EventTime, ts.saturating_sub(self.lower), RIGHT)?;
        Ok(())
    }

    fn on_timer(
        &mut self,
        timer: &Timer,
        ctx: &mut KeyedContext<'_, K>,
        _out: &mut Collector<OUT>,
    ) -> Result<(), UserError> {
        // Each buffered timestamp set its own timer: the one that fired drops exactly that
        // timestamp's records, which no future partner can reach any more (the left ones
        // at `ts + upper`, the right ones at `ts - lower`).
        if timer.namespace == LEFT {
            let ta = timer.timestamp.saturating_sub(self.upper);
            self.left.as_ref().expect("opened").remove(ctx, &ta)?;
        } else if timer.namespace == RIGHT {
            let tb = timer.timestamp.saturating_add(self.lower);
            self.right.as_ref().expect("opened").remove(ctx, &tb)?;
        }
        Ok(())
    }
}

type WindowPairFn<K, A, B, OUT> = Arc<dyn Fn(&K, TimeWindow, &A, &B) -> OUT + Send + Sync>;

struct WindowJoin<K, A, B, OUT> {
    windows: Windows,
    f: WindowPairFn<K, A, B, OUT>,
    left: Option<ListState<A>>,
    right: Option<ListState<B>>,
}

impl<K, A, B, OUT> Clone for WindowJoin<K, A, B, OUT> {
    fn clone(&self) -> Self {
        Self {
            windows: self.windows,
            f: self.f.clone(),
            left: self.left.clone(),
            right: self.right.clone(),
        }
    }
}

impl<K, A, B, OUT> WindowJoin<K, A, B, OUT>
where
    A: Data,
    B: Data,
{
    /// Adds the current record to each of its windows that is not over yet, and sets the
    /// window's timer.
    fn buffer<T: Data, KK>(
        &self,
        state: &ListState<T>,
        value: &T,
        ctx: &mut KeyedContext<'_, KK>,
    ) -> Result<(), UserError> {
        let ts = timestamp_of(ctx)?;
        let wm = ctx.current_watermark();
        for w in self.windows.assign(ts) {
            if w.max_timestamp() <= wm {
                continue;
            }
            let ns = w.namespace();
            state.add(&mut ctx.namespaced(&ns), value)?;
            ctx.register_timer(TimeDomain::EventTime, w.max_timestamp(), &ns)?;
        }
        Ok(())
    }
}

impl<K, A, B, OUT> KeyedCoProcessFunction<K, A, B, OUT> for WindowJoin<K, A, B, OUT>
where
    K: Data,
    A: Data,
    B: Data,
    OUT: Data,
{
    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.left = Some(ctx.list_state("join-left")?);
        self.right = Some(ctx.list_state("join-right")?);
        Ok(())
    }

    fn process_element1(
        &mut self,
        a: A,
        ctx: &mut KeyedContext<'_, K>,
        _out: &mut Collector<OUT>,
    ) -> Result<(), UserError> {
        let state = self.left.as_ref().expect("opened");
        self.buffer(state, &a, ctx)
    }

    fn process_element2(
        &mut self,
        b: B,
        ctx: &mut KeyedContext<'_, K>,
        _out: &mut Collector<OUT>,
    ) -> Result<(), UserError> {
        let state = self.right.as_ref().expect("opened");
        self.buffer(state, &b, ctx)
    }

    fn on_timer(
        &mut self,
        timer: &Timer,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<OUT>,
    ) -> Result<(), UserError> {
        let w = TimeWindow::from_namespace(&timer.namespace)
            .ok_or("a join timer with a namespace that names no window")?;
        let key = ctx.key().clone();
        let mut scope = ctx.namespaced(&timer.namespace);
        let (left, right) = (
            self.left.as_ref().expect("opened"),
            self.right.as_ref().expect("opened"),
        );
        let (as_, bs) = (left.get(&mut scope)?, right.get(&mut scope)?);
        left.clear(&mut scope)?;
        right.clear(&mut scope)?;
        for a in &as_ {
            for b in &bs {
                out.collect((self.f)(&key, w, a, b));
            }
        }
        Ok(())
    }
}
