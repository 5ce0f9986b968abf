//! The window operator: a keyed process function that assigns each record to its windows,
//! keeps their contents in keyed state under the window's namespace, and fires and clears
//! them with timers — so windows are checkpointed, restored exactly once and rescaled by key
//! group like any other keyed state.
//!
//! Per record (event time): a window whose cleanup time (`max_timestamp + allowed lateness`)
//! the watermark passed is late; a record whose windows are all late goes to the late side
//! output (or is dropped). Otherwise it is added to each window that is not late, a cleanup
//! timer is set, and the trigger decides: the default fires when the watermark passes the
//! window's end (at once, for a late record within the allowed lateness: a late firing with
//! the updated result), a count trigger every N records, a continuous trigger every interval
//! and at the end. A fired window keeps its contents until cleanup.
//!
//! Session windows merge: a key's sessions live in one value state (see [`crate::session`]);
//! absorbed sessions' contents move into the survivor and their timers go.

use crate::contents::WindowContents;
use crate::session::{self, Session};
use crate::window::{TimeWindow, WindowTime, Windows};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::time::Duration;
use weir_runtime::{
    Collector, Data, KeyedContext, KeyedProcessFunction, OpenContext, OutputTag, TimeDomain, Timer,
    UserError,
};
use weir_state::ValueState;

/// When a window fires.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// When the window's time passes its end (event time: the watermark; processing time:
    /// the wall clock); again for each late record within the allowed lateness.
    Default,
    /// Every N records added to the window; never on time (Flink's `CountTrigger`).
    Count(u64),
    /// Every interval of the window's time while it is open, and at its end (Flink's
    /// continuous event-time and processing-time triggers).
    Continuous(Duration),
}

/// A window operator over contents `C`.
pub struct WindowOperator<K, T, C> {
    pub(crate) windows: Windows,
    pub(crate) lateness_ms: i64,
    pub(crate) late: Option<OutputTag<T>>,
    pub(crate) trigger: Trigger,
    pub(crate) contents: C,
    pub(crate) sessions: Option<ValueState<Vec<Session>>>,
    pub(crate) counts: Option<ValueState<u64>>,
    pub(crate) _k: PhantomData<fn(K)>,
}

impl<K, T, C: Clone> Clone for WindowOperator<K, T, C> {
    fn clone(&self) -> Self {
        Self {
            windows: self.windows,
            lateness_ms: self.lateness_ms,
            late: self.late.clone(),
            trigger: self.trigger,
            contents: self.contents.clone(),
            sessions: self.sessions.clone(),
            counts: self.counts.clone(),
            _k: PhantomData,
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl<K, T, C> WindowOperator<K, T, C>
where
    K: Data + Serialize + DeserializeOwned,
    T: Data,
    C: WindowContents<K, T>,
{
    fn domain(&self) -> TimeDomain {
        match self.windows.time {
            WindowTime::Event => TimeDomain::EventTime,
            WindowTime::Processing => TimeDomain::ProcessingTime,
        }
    }

    /// When a window's contents are dropped: after its end plus the allowed lateness (event
    /// time), at its end (processing time).
    fn cleanup_time(&self, w: &TimeWindow) -> i64 {
        match self.windows.time {
            WindowTime::Event => w.max_timestamp().saturating_add(self.lateness_ms),
            WindowTime::Processing => w.max_timestamp(),
        }
    }

    fn is_late(&self, w: &TimeWindow, ctx: &KeyedContext<'_, K>) -> bool {
        self.windows.time == WindowTime::Event && self.cleanup_time(w) <= ctx.current_watermark()
    }

    /// The window's clock now: the watermark or the wall clock.
    fn now(&self, ctx: &KeyedContext<'_, K>) -> i64 {
        match self.windows.time {
            WindowTime::Event => ctx.current_watermark(),
            WindowTime::Processing => ctx.current_processing_time(),
        }
    }

    fn late_record(&self, value: T, ctx: &mut KeyedContext<'_, K>) -> Result<(), UserError> {
        match &self.late {
            Some(tag) => ctx.output(tag, value),
            None => Ok(()),
        }
    }

    fn fire(
        &self,
        actual: TimeWindow,
        state: TimeWindow,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<C::Out>,
    ) -> Result<(), UserError> {
        let key = ctx.key().clone();
        let ns = state.namespace();
        self.contents
            .emit(&key, actual, &mut ctx.namespaced(&ns), out)
    }

    /// A record was added to `actual` (whose state lives under `state`): set its timers
    /// (when `first`: a window's timers never move, so later records need not set them) and
    /// let the trigger decide.
    fn on_element(
        &self,
        actual: TimeWindow,
        state: TimeWindow,
        first: bool,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<C::Out>,
    ) -> Result<(), UserError> {
        let ns = state.namespace();
        let domain = self.domain();
        if first {
            ctx.register_timer(domain, self.cleanup_time(&actual), &ns)?;
        }
        let passed = actual.max_timestamp() <= self.now(ctx);
        match self.trigger {
            Trigger::Default => {
                if passed && self.windows.time == WindowTime::Event {
                    self.fire(actual, state, ctx, out)?;
                } else if first {
                    ctx.register_timer(domain, actual.max_timestamp(), &ns)?;
                }
            }
            Trigger::Count(n) => {
                let counts = self.counts.as_ref().expect("opened");
                let mut scope = ctx.namespaced(&ns);
                let c = counts.get(&mut scope)?.unwrap_or(0) + 1;
                if c >= n {
                    counts.clear(&mut scope)?;
                    self.fire(actual, state, ctx, out)?;
                } else {
                    counts.update(&mut scope, &c)?;
                }
            }
            Trigger::Continuous(interval) => {
                if passed && self.windows.time == WindowTime::Event {
                    self.fire(actual, state, ctx, out)?;
                } else {
                    let iv = ms(interval).max(1);
                    let now = self.now(ctx).max(actual.start);
                    let next = now
                        .saturating_sub(now.rem_euclid(iv))
                        .saturating_add(iv)
                        .min(actual.max_timestamp());
                    ctx.register_timer(domain, next, &ns)?;
                    ctx.register_timer(domain, actual.max_timestamp(), &ns)?;
                }
            }
        }
        Ok(())
    }

    fn delete_timers(
        &self,
        actual: TimeWindow,
        state: TimeWindow,
        ctx: &mut KeyedContext<'_, K>,
    ) -> Result<(), UserError> {
        let ns = state.namespace();
        ctx.delete_timer(self.domain(), actual.max_timestamp(), &ns)?;
        ctx.delete_timer(self.domain(), self.cleanup_time(&actual), &ns)?;
        Ok(())
    }

    fn process_session(
        &self,
        value: T,
        timestamp: i64,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<C::Out>,
    ) -> Result<(), UserError> {
        let sessions_state = self.sessions.as_ref().expect("opened");
        let window = self.windows.assign(timestamp)[0];
        let mut sessions = sessions_state.get(ctx)?.unwrap_or_default();
        let merge = session::add(&mut sessions, window);
        if self.is_late(&merge.result.actual, ctx) {
            return self.late_record(value, ctx);
        }
        let into = merge.result.state.namespace();
        if let Some(previous) = merge.previous.filter(|p| *p != merge.result.actual) {
            self.delete_timers(previous, merge.result.state, ctx)?;
        }
        for gone in &merge.absorbed {
            self.delete_timers(gone.actual, gone.state, ctx)?;
            let from = gone.state.namespace();
            self.contents.merge(ctx, &from, &into)?;
            if let Some(counts) = &self.counts {
                let moved = {
                    let mut s = ctx.namespaced(&from);
                    let c = counts.get(&mut s)?;
                    counts.clear(&mut s)?;
                    c
                };
                if let Some(c) = moved {
                    let mut s = ctx.namespaced(&into);
                    let total = counts.get(&mut s)?.unwrap_or(0) + c;
                    counts.update(&mut s, &total)?;
                }
            }
        }
        sessions_state.update(ctx, &sessions)?;
        self.contents.add(&mut ctx.namespaced(&into), value)?;
        // A session's window moves as it merges: its timers are set again every time.
        self.on_element(merge.result.actual, merge.result.state, true, ctx, out)
    }
}

impl<K, T, C> KeyedProcessFunction<K, T, C::Out> for WindowOperator<K, T, C>
where
    K: Data + Serialize + DeserializeOwned,
    T: Data,
    C: WindowContents<K, T>,
{
    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.contents.open(ctx)?;
        if self.windows.is_merging() {
            self.sessions = Some(ctx.value_state("window-sessions")?);
        }
        if matches!(self.trigger, Trigger::Count(_)) {
            self.counts = Some(ctx.value_state("window-count")?);
        }
        Ok(())
    }

    fn process_element(
        &mut self,
        value: T,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<C::Out>,
    ) -> Result<(), UserError> {
        let timestamp = match self.windows.time {
            WindowTime::Event => ctx.timestamp().ok_or(
                "an event-time window got a record without a timestamp: assign timestamps \
                 (assign_timestamps_and_watermarks or with_timestamps) before key_by",
            )?,
            WindowTime::Processing => ctx.current_processing_time(),
        };
        if self.windows.is_merging() {
            return self.process_session(value, timestamp, ctx, out);
        }
        let windows: Vec<TimeWindow> = self
            .windows
            .assign(timestamp)
            .into_iter()
            .filter(|w| !self.is_late(w, ctx))
            .collect();
        let Some((last, rest)) = windows.split_last() else {
            return self.late_record(value, ctx);
        };
        for w in rest {
            let first = self
                .contents
                .add(&mut ctx.namespaced(&w.namespace()), value.clone())?;
            self.on_element(*w, *w, first, ctx, out)?;
        }
        let first = self
            .contents
            .add(&mut ctx.namespaced(&last.namespace()), value)?;
        self.on_element(*last, *last, first, ctx, out)
    }

    fn on_timer(
        &mut self,
        timer: &Timer,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<C::Out>,
    ) -> Result<(), UserError> {
        if timer.domain != self.domain() {
            return Ok(());
        }
        let state = TimeWindow::from_namespace(&timer.namespace)
            .ok_or("a window timer with a namespace that names no window")?;
        let actual = match &self.sessions {
            None => state,
            Some(sessions) => {
                let list = sessions.get(ctx)?.unwrap_or_default();
                match list.iter().find(|s| s.state == state) {
                    Some(s) => s.actual,
                    // Merged away or cleaned up: a stale timer.
                    None => return Ok(()),
                }
            }
        };
        let ts = timer.timestamp;
        let max = actual.max_timestamp();
        let fire = match self.trigger {
            Trigger::Default => ts == max,
            Trigger::Count(_) => false,
            Trigger::Continuous(interval) => {
                if ts < max {
                    let next = ts.saturating_add(ms(interval).max(1)).min(max);
                    ctx.register_timer(self.domain(), next, &timer.namespace)?;
                }
                ts <= max
            }
        };
        if fire {
            self.fire(actual, state, ctx, out)?;
        }
        if ts == self.cleanup_time(&actual) {
            let ns = state.namespace();
            self.contents.clear(&mut ctx.namespaced(&ns))?;
            if let Some(counts) = &self.counts {
                counts.clear(&mut ctx.namespaced(&ns))?;
            }
            if let Some(sessions) = &self.sessions {
                let mut list = sessions.get(ctx)?.unwrap_or_default();
                list.retain(|s| s.state != state);
                if list.is_empty() {
                    sessions.clear(ctx)?;
                } else {
                    sessions.update(ctx, &list)?;
                }
            }
        }
        Ok(())
    }
}
