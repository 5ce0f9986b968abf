//! Two inputs: `connect` joins two streams of different types into one operator, as Flink's
//! `ConnectedStreams`; keyed by a key of each, a [`KeyedCoProcessFunction`] sees both with the
//! key's state and timers.
//!
//! How it runs: each input is tagged on its producer's side (a chained map to
//! [`Either::Left`] or [`Either::Right`]), and the operator reads one stream of `Either<A, B>`
//! over both inputs' channels. So the operator is an ordinary keyed operator: its watermark is
//! the minimum over both inputs, barriers align over both, and its state and timers are
//! checkpointed, restored and rescaled like any other.

use crate::api::{DataStream, KeyedStream};
use crate::function::{Collector, KeyedContext, KeyedProcessFunction, OpenContext};
use crate::timers::Timer;
use crate::{Data, UserError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::sync::Arc;

/// A record of the first (`Left`) or the second (`Right`) input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Either<A, B> {
    /// From the first input.
    Left(A),
    /// From the second input.
    Right(B),
}

/// Two streams to be processed together.
pub struct ConnectedStreams<A, B> {
    pub(crate) tagged: DataStream<Either<A, B>>,
}

impl<A: Data, B: Data> ConnectedStreams<A, B> {
    /// Partitions both inputs by key (`first` reads the first's, `second` the second's): the
    /// records of a key from both inputs reach the same subtask.
    pub fn key_by<K>(
        &self,
        first: impl Fn(&A) -> K + Send + Sync + 'static,
        second: impl Fn(&B) -> K + Send + Sync + 'static,
    ) -> KeyedConnectedStreams<A, B, K>
    where
        K: Serialize + DeserializeOwned + Send + 'static,
    {
        KeyedConnectedStreams {
            keyed: self.tagged.key_by(move |e: &Either<A, B>| match e {
                Either::Left(a) => first(a),
                Either::Right(b) => second(b),
            }),
        }
    }
}

/// Two inputs partitioned by one key.
pub struct KeyedConnectedStreams<A, B, K> {
    keyed: KeyedStream<Either<A, B>, K>,
}

impl<A, B, K> KeyedConnectedStreams<A, B, K>
where
    A: Data,
    B: Data,
    K: Serialize + DeserializeOwned + Send + 'static,
{
    /// Runs `f` on both inputs with the key's state and timers.
    pub fn process<OUT: Data, F>(&self, f: F) -> DataStream<OUT>
    where
        F: KeyedCoProcessFunction<K, A, B, OUT> + Sync,
    {
        self.keyed
            .process(CoProcess { f, _t: PhantomData })
            .name("KeyedCoProcess")
    }

    /// Whether both inputs have event time.
    pub fn has_timestamps(&self) -> bool {
        self.keyed.has_timestamps()
    }

    /// The underlying keyed stream of both inputs, tagged.
    pub fn tagged(&self) -> &KeyedStream<Either<A, B>, K> {
        &self.keyed
    }
}

/// A function over two keyed inputs, as Flink's `KeyedCoProcessFunction`: one call per record
/// of either input, with the current key's state (shared by both inputs) and timers.
pub trait KeyedCoProcessFunction<K, A, B, OUT>: Clone + Send + 'static {
    /// Declares the function's states.
    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError>;

    /// Handles a record of the first input.
    fn process_element1(
        &mut self,
        value: A,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<OUT>,
    ) -> Result<(), UserError>;

    /// Handles a record of the second input.
    fn process_element2(
        &mut self,
        value: B,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<OUT>,
    ) -> Result<(), UserError>;

    /// A timer of the current key fired.
    fn on_timer(
        &mut self,
        _timer: &Timer,
        _ctx: &mut KeyedContext<'_, K>,
        _out: &mut Collector<OUT>,
    ) -> Result<(), UserError> {
        Ok(())
    }
}

struct CoProcess<F, A, B> {
    f: F,
    _t: PhantomData<fn(A, B)>,
}

impl<F: Clone, A, B> Clone for CoProcess<F, A, B> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _t: PhantomData,
        }
    }
}

impl<K, A, B, OUT, F> KeyedProcessFunction<K, Either<A, B>, OUT> for CoProcess<F, A, B>
where
    A: Send + 'static,
    B: Send + 'static,
    F: KeyedCoProcessFunction<K, A, B, OUT>,
{
    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.f.open(ctx)
    }

    fn process_element(
        &mut self,
        value: Either<A, B>,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<OUT>,
    ) -> Result<(), UserError> {
        match value {
            Either::Left(a) => self.f.process_element1(a, ctx, out),
            Either::Right(b) => self.f.process_element2(b, ctx, out),
        }
    }

    fn on_timer(
        &mut self,
        timer: &Timer,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<OUT>,
    ) -> Result<(), UserError> {
        self.f.on_timer(timer, ctx, out)
    }
}

/// Reads the event time of either input, when both have one.
pub(crate) fn either_timestamps<A: 'static, B: 'static>(
    first: Option<crate::time::TimestampFn<A>>,
    second: Option<crate::time::TimestampFn<B>>,
) -> Option<crate::time::TimestampFn<Either<A, B>>> {
    let (ta, tb) = (first?, second?);
    Some(Arc::new(move |e: &Either<A, B>| match e {
        Either::Left(a) => ta(a),
        Either::Right(b) => tb(b),
    }))
}
