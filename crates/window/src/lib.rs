//! Windows on keyed streams: tumbling, sliding and session windows on event or processing
//! time, with incremental aggregates (or every record, for a function that needs them all),
//! allowed lateness, late records to a side output, and count and continuous triggers — built
//! only on the runtime's public API: a keyed process function, keyed state namespaced by
//! window, and timers.
//!
//! ```ignore
//! use weir_window::{WindowExt, Windows};
//! let counts = events
//!     .assign_timestamps_and_watermarks(WatermarkStrategy::bounded_out_of_orderness(d, |e| e.ts))
//!     .key_by(|e| e.user.clone())
//!     .window(Windows::tumbling(Duration::from_secs(60)))
//!     .allowed_lateness(Duration::from_secs(5))
//!     .side_output_late_data(&late)
//!     .count()?;
//! ```
//!
//! Must not depend on a state backend, the network or the job manager: windows are user code
//! as far as the runtime can tell.

#![warn(missing_docs)]

mod contents;
mod join;
mod operator;
pub mod session;
mod window;

pub use contents::{AggregateFunction, Count, ProcessWindowFn, Reduce, Windowed};
pub use join::JoinExt;
pub use operator::Trigger;
pub use window::{TimeWindow, WindowKind, WindowTime, Windows};

use contents::{Aggregated, Buffered, WindowContents};
use operator::WindowOperator;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use weir_runtime::{Collector, Data, DataStream, KeyedStream, OutputTag, UserError};

/// Why a window cannot be built: the message names the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowError(pub String);

impl std::fmt::Display for WindowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WindowError {}

/// `window(…)` on a keyed stream.
pub trait WindowExt<T, K> {
    /// Groups each key's records into `windows`.
    fn window(&self, windows: Windows) -> WindowedStream<'_, T, K>;
}

impl<T, K> WindowExt<T, K> for KeyedStream<T, K>
where
    T: Data,
    K: Data + Serialize + DeserializeOwned + Sync,
{
    fn window(&self, windows: Windows) -> WindowedStream<'_, T, K> {
        WindowedStream {
            keyed: self,
            windows,
            lateness: Duration::ZERO,
            late: None,
            trigger: Trigger::Default,
        }
    }
}

/// A keyed stream grouped into windows, as Flink's `WindowedStream`; finished by
/// [`aggregate`](Self::aggregate), [`reduce`](Self::reduce), [`count`](Self::count) or
/// [`process`](Self::process).
pub struct WindowedStream<'a, T, K> {
    keyed: &'a KeyedStream<T, K>,
    windows: Windows,
    lateness: Duration,
    late: Option<OutputTag<T>>,
    trigger: Trigger,
}

impl<T, K> WindowedStream<'_, T, K>
where
    T: Data,
    K: Data + Serialize + DeserializeOwned + Sync,
{
    /// Keeps event-time windows for `lateness` after their end: a late record within it
    /// fires the window again with the updated result (default: none).
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.lateness = lateness;
        self
    }

    /// Sends records too late for every window they belong to to `tag` (default: dropped).
    pub fn side_output_late_data(mut self, tag: &OutputTag<T>) -> Self {
        self.late = Some(tag.clone());
        self
    }

    /// Fires with `trigger` instead of at the window's end.
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    fn check(&self) -> Result<(), WindowError> {
        self.windows.check().map_err(WindowError)?;
        if self.windows.time == WindowTime::Event && !self.keyed.has_timestamps() {
            return Err(WindowError(
                "an event-time window needs timestamps: call assign_timestamps_and_watermarks \
                 (or with_timestamps) before key_by, or use on_processing_time()"
                    .into(),
            ));
        }
        if self.windows.time == WindowTime::Processing && !self.lateness.is_zero() {
            return Err(WindowError(
                "allowed lateness applies to event-time windows only".into(),
            ));
        }
        match self.trigger {
            Trigger::Count(0) => Err(WindowError("a count trigger needs a count above 0".into())),
            Trigger::Continuous(d) if d.is_zero() => Err(WindowError(
                "a continuous trigger needs an interval above 0".into(),
            )),
            _ => Ok(()),
        }
    }

    fn name<C: WindowContents<K, T>>(&self, contents: &C) -> String {
        let kind = match self.windows.kind {
            WindowKind::Tumbling { size, .. } => format!("tumbling {size}ms"),
            WindowKind::Sliding { size, slide, .. } => format!("sliding {size}ms every {slide}ms"),
            WindowKind::Session { gap } => format!("session gap {gap}ms"),
        };
        let time = match self.windows.time {
            WindowTime::Event => "event time",
            WindowTime::Processing => "processing time",
        };
        format!("Window({kind}, {time}, {})", contents.describe())
    }

    fn with<C>(self, contents: C) -> Result<DataStream<C::Out>, WindowError>
    where
        C: WindowContents<K, T> + Sync,
    {
        self.check()?;
        let name = self.name(&contents);
        let op = WindowOperator {
            windows: self.windows,
            lateness_ms: i64::try_from(self.lateness.as_millis()).unwrap_or(i64::MAX),
            late: self.late,
            trigger: self.trigger,
            contents,
            sessions: None,
            counts: None,
            _k: PhantomData,
        };
        Ok(self.keyed.process(op).name(&name))
    }

    /// Folds each window's records into `agg`'s accumulator as they arrive (the window keeps
    /// only that) and emits its result when the window fires.
    pub fn aggregate<A>(self, agg: A) -> Result<DataStream<Windowed<K, A::Out>>, WindowError>
    where
        A: AggregateFunction<T>,
    {
        self.with(Aggregated {
            agg,
            state: None,
            _t: PhantomData,
        })
    }

    /// Folds each window's records with `f` (incrementally).
    pub fn reduce(
        self,
        f: impl Fn(T, T) -> T + Send + Sync + 'static,
    ) -> Result<DataStream<Windowed<K, T>>, WindowError> {
        self.aggregate(Reduce { f: Arc::new(f) })
    }

    /// Counts each window's records (incrementally).
    pub fn count(self) -> Result<DataStream<Windowed<K, u64>>, WindowError> {
        self.aggregate(Count)
    }

    /// Calls `f` with every record of a fired window (the window keeps them all: prefer an
    /// aggregate when one will do).
    pub fn process<OUT: Data>(
        self,
        f: impl Fn(&K, TimeWindow, Vec<T>, &mut Collector<OUT>) -> Result<(), UserError>
            + Send
            + Sync
            + 'static,
    ) -> Result<DataStream<OUT>, WindowError> {
        self.with(Buffered {
            f: Arc::new(f),
            state: None,
        })
    }
}
