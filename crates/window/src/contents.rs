//! What a window keeps of its records, and what it emits when it fires: an incremental
//! aggregate (one accumulator per window, never a buffer) or, for functions that need every
//! record, the records themselves.

use crate::window::TimeWindow;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::sync::Arc;
use weir_runtime::{Collector, Data, OpenContext, UserError};
use weir_state::{KeyedScope, ListState, ValueState};

/// An incremental aggregation, as Flink's `AggregateFunction`: records are folded into an
/// accumulator as they arrive; the window keeps only the accumulator.
pub trait AggregateFunction<T>: Clone + Send + Sync + 'static {
    /// What is kept per window (serialised into keyed state).
    type Acc: Serialize + DeserializeOwned + Send + 'static;
    /// What a fired window emits.
    type Out: Data;
    /// An empty accumulator.
    fn create(&self) -> Self::Acc;
    /// Folds one record in.
    fn add(&self, acc: Self::Acc, value: T) -> Self::Acc;
    /// Joins two accumulators (session windows merge).
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
    /// The result of a window.
    fn result(&self, acc: &Self::Acc) -> Self::Out;
}

/// A window's result: its key, its window and the value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Windowed<K, V> {
    /// The key.
    pub key: K,
    /// The window.
    pub window: TimeWindow,
    /// What the window computed.
    pub value: V,
}

/// How one window operator keeps its windows' records and emits a fired window.
pub trait WindowContents<K, T>: Clone + Send + Sync + 'static {
    /// What a fired window emits.
    type Out: Data;
    /// Describes the contents for `weir plan` (`Aggregate`, `Process`).
    fn describe(&self) -> &'static str;
    /// Declares the state.
    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError>;
    /// Adds a record to the window of `scope`; true when it may be the window's first (its
    /// timers are set then, and only then).
    fn add(&self, scope: &mut KeyedScope<'_>, value: T) -> Result<bool, UserError>;
    /// Moves the contents under `from` into those under `into` (session windows merge).
    fn merge(&self, scope: &mut KeyedScope<'_>, from: &[u8], into: &[u8]) -> Result<(), UserError>;
    /// Emits the window of `scope`, as `window`.
    fn emit(
        &self,
        key: &K,
        window: TimeWindow,
        scope: &mut KeyedScope<'_>,
        out: &mut Collector<Self::Out>,
    ) -> Result<(), UserError>;
    /// Drops the window of `scope`.
    fn clear(&self, scope: &mut KeyedScope<'_>) -> Result<(), UserError>;
}

/// The state every window's contents live in (one per window namespace).
const CONTENTS: &str = "window-contents";

/// An aggregate's accumulator per window.
pub struct Aggregated<A: AggregateFunction<T>, T> {
    pub(crate) agg: A,
    pub(crate) state: Option<ValueState<A::Acc>>,
    pub(crate) _t: PhantomData<fn(T)>,
}

impl<A: AggregateFunction<T>, T> Clone for Aggregated<A, T> {
    fn clone(&self) -> Self {
        Self {
            agg: self.agg.clone(),
            state: self.state.clone(),
            _t: PhantomData,
        }
    }
}

impl<A: AggregateFunction<T>, T> Aggregated<A, T> {
    fn state(&self) -> &ValueState<A::Acc> {
        self.state.as_ref().expect("opened before use")
    }
}

impl<K, T, A> WindowContents<K, T> for Aggregated<A, T>
where
    K: Data,
    T: 'static,
    A: AggregateFunction<T>,
{
    type Out = Windowed<K, A::Out>;

    fn describe(&self) -> &'static str {
        "Aggregate"
    }

    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.state = Some(ctx.value_state(CONTENTS)?);
        Ok(())
    }

    fn add(&self, scope: &mut KeyedScope<'_>, value: T) -> Result<bool, UserError> {
        let (acc, first) = match self.state().get(scope)? {
            Some(acc) => (acc, false),
            None => (self.agg.create(), true),
        };
        self.state().update(scope, &self.agg.add(acc, value))?;
        Ok(first)
    }

    fn merge(&self, scope: &mut KeyedScope<'_>, from: &[u8], into: &[u8]) -> Result<(), UserError> {
        let moved = {
            let mut s = scope.namespaced(from);
            let acc = self.state().get(&mut s)?;
            self.state().clear(&mut s)?;
            acc
        };
        let Some(moved) = moved else { return Ok(()) };
        let mut s = scope.namespaced(into);
        let merged = match self.state().get(&mut s)? {
            Some(acc) => self.agg.merge(acc, moved),
            None => moved,
        };
        self.state().update(&mut s, &merged)?;
        Ok(())
    }

    fn emit(
        &self,
        key: &K,
        window: TimeWindow,
        scope: &mut KeyedScope<'_>,
        out: &mut Collector<Self::Out>,
    ) -> Result<(), UserError> {
        if let Some(acc) = self.state().get(scope)? {
            out.collect(Windowed {
                key: key.clone(),
                window,
                value: self.agg.result(&acc),
            });
        }
        Ok(())
    }

    fn clear(&self, scope: &mut KeyedScope<'_>) -> Result<(), UserError> {
        Ok(self.state().clear(scope)?)
    }
}

/// A window function over all of a window's records (Flink's `ProcessWindowFunction`).
pub type ProcessWindowFn<K, T, OUT> =
    Arc<dyn Fn(&K, TimeWindow, Vec<T>, &mut Collector<OUT>) -> Result<(), UserError> + Send + Sync>;

/// Every record of a window, for a function that needs them all.
pub struct Buffered<K, T, OUT> {
    pub(crate) f: ProcessWindowFn<K, T, OUT>,
    pub(crate) state: Option<ListState<T>>,
}

impl<K, T, OUT> Clone for Buffered<K, T, OUT> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            state: self.state.clone(),
        }
    }
}

impl<K, T, OUT> Buffered<K, T, OUT> {
    fn state(&self) -> &ListState<T> {
        self.state.as_ref().expect("opened before use")
    }
}

impl<K, T, OUT> WindowContents<K, T> for Buffered<K, T, OUT>
where
    K: Data,
    T: Data,
    OUT: Data,
{
    type Out = OUT;

    fn describe(&self) -> &'static str {
        "Process"
    }

    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.state = Some(ctx.list_state(CONTENTS)?);
        Ok(())
    }

    fn add(&self, scope: &mut KeyedScope<'_>, value: T) -> Result<bool, UserError> {
        self.state().add(scope, &value)?;
        Ok(true)
    }

    fn merge(&self, scope: &mut KeyedScope<'_>, from: &[u8], into: &[u8]) -> Result<(), UserError> {
        let moved = {
            let mut s = scope.namespaced(from);
            let v = self.state().get(&mut s)?;
            self.state().clear(&mut s)?;
            v
        };
        let mut s = scope.namespaced(into);
        for v in moved {
            self.state().add(&mut s, &v)?;
        }
        Ok(())
    }

    fn emit(
        &self,
        key: &K,
        window: TimeWindow,
        scope: &mut KeyedScope<'_>,
        out: &mut Collector<OUT>,
    ) -> Result<(), UserError> {
        let records = self.state().get(scope)?;
        if records.is_empty() {
            return Ok(());
        }
        (self.f)(key, window, records, out)
    }

    fn clear(&self, scope: &mut KeyedScope<'_>) -> Result<(), UserError> {
        Ok(self.state().clear(scope)?)
    }
}

/// Counts records (the `count` shortcut).
#[derive(Clone, Copy, Debug, Default)]
pub struct Count;

impl<T> AggregateFunction<T> for Count {
    type Acc = u64;
    type Out = u64;
    fn create(&self) -> u64 {
        0
    }
    fn add(&self, acc: u64, _value: T) -> u64 {
        acc + 1
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// Folds records with a function (the `reduce` shortcut): the accumulator is the value so far.
pub struct Reduce<T> {
    pub(crate) f: Arc<dyn Fn(T, T) -> T + Send + Sync>,
}

impl<T> Clone for Reduce<T> {
    fn clone(&self) -> Self {
        Self { f: self.f.clone() }
    }
}

/// The accumulator of [`Reduce`]: nothing yet, or the value so far.
#[derive(Serialize, Deserialize)]
#[serde(bound = "T: Serialize + DeserializeOwned")]
pub struct Reduced<T>(Option<T>);

impl<T: Data> AggregateFunction<T> for Reduce<T> {
    type Acc = Reduced<T>;
    type Out = T;
    fn create(&self) -> Reduced<T> {
        Reduced(None)
    }
    fn add(&self, acc: Reduced<T>, value: T) -> Reduced<T> {
        Reduced(Some(match acc.0 {
            Some(a) => (self.f)(a, value),
            None => value,
        }))
    }
    fn merge(&self, a: Reduced<T>, b: Reduced<T>) -> Reduced<T> {
        match (a.0, b.0) {
            (Some(a), Some(b)) => Reduced(Some((self.f)(a, b))),
            (a, b) => Reduced(a.or(b)),
        }
    }
    fn result(&self, acc: &Reduced<T>) -> T {
        acc.0.clone().expect("a window holds at least one record")
    }
}
