//! The DataStream API: a typed builder that records a [`StreamGraph`] plus one typed factory
//! per node and per edge.

use crate::channel::{KeyBytesFn, RecordWriter, Router};
use crate::connect::{either_timestamps, ConnectedStreams, Either};
use crate::function::{
    Collector, KeyedContext, KeyedProcessFunction, OpenContext, Sink, Source, TimeState,
};
use crate::link::{combine, AnyBox, Link};
use crate::operators::{
    encode_key, FilterOp, FlatMapOp, KeyedProcessOp, MapOp, OpIdent, SinkOp, TryMapOp,
};
use crate::restore::SinkRestore;
use crate::side::{make_side, MakeSide, OutputTag};
use crate::subtask::SubtaskCtx;
use crate::task::{run_inputs, run_source, LoopEnv};
use crate::time::{TimestampFn, WatermarkStrategy, WatermarksOp};
use crate::timers::TimerService;
use crate::{TaskError, UserError};
use crossbeam_channel::{Receiver, Sender};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;
use weir_graph::{NodeKind, Partitioning, StreamEdge, StreamGraph, StreamNode};
use weir_state::{StateRegistry, ValueState};
use weir_types::{NodeId, StreamElement};

/// Records that flow on a stream: cloned for fan-out and broadcast, sent between threads, and
/// serialised (serde, postcard) when a channel crosses TaskManagers.
pub trait Data: Clone + Send + serde::Serialize + serde::de::DeserializeOwned + 'static {}
impl<T: Clone + Send + serde::Serialize + serde::de::DeserializeOwned + 'static> Data for T {}

/// Builds and runs one node's operator or source, with the node's types erased.
pub(crate) enum NodeRuntime {
    Source(Arc<dyn ErasedSource>),
    Operator(Arc<dyn ErasedOperator>),
}

pub(crate) trait ErasedSource: Send + Sync {
    /// Opens the reader and runs the source loop over `outputs` (each `Box<dyn Link<OUT>>`).
    fn run(&self, ctx: &SubtaskCtx, outputs: Vec<AnyBox>) -> Result<(), TaskError>;
}

pub(crate) trait ErasedOperator: Send + Sync {
    /// Builds the operator over `outputs`; returns a `Box<dyn Link<IN>>`.
    fn build(&self, ctx: &SubtaskCtx, outputs: Vec<AnyBox>) -> Result<AnyBox, TaskError>;
    /// Runs the input loop: `inputs` are `Receiver<StreamElement<IN>>`, `head` from `build`.
    fn run_inputs(
        &self,
        ctx: &SubtaskCtx,
        inputs: Vec<AnyBox>,
        head: AnyBox,
    ) -> Result<(), TaskError>;
}

pub(crate) trait ErasedEdge: Send + Sync {
    /// One in-memory channel: `(Box<Sender>, Box<Receiver>)`.
    fn pair(&self, capacity: usize) -> (AnyBox, AnyBox);
    /// Bundles single senders (from [`Self::pair`] or [`Self::outbound`]), in downstream
    /// order, into the senders of one upstream subtask (what [`Self::writer`] takes).
    fn bundle(&self, senders: Vec<AnyBox>) -> AnyBox;
    /// A channel whose far end is another process: the task writes into the returned sender;
    /// the pump calls `next` (blocking) for each element, encoded.
    fn outbound(&self, capacity: usize) -> (AnyBox, crate::remote::NextEncoded);
    /// A channel whose near end is fed from another process: the pump calls `push` (blocking
    /// while the task's input is full) with each encoded element; the task reads the receiver.
    fn inbound(&self, capacity: usize, label: String) -> (crate::remote::PushEncoded, AnyBox);
    /// The writer of one upstream subtask over its senders; returns a `Box<dyn Link<T>>`.
    fn writer(&self, ctx: &SubtaskCtx, senders: AnyBox, partitioning: Partitioning) -> AnyBox;
}

fn env_of<'a>(ctx: &'a SubtaskCtx, ident: &'a OpIdent) -> LoopEnv<'a> {
    LoopEnv {
        ident,
        cancelled: &ctx.cancelled,
        batch_size: ctx.options.batch_size,
        buffer_timeout: ctx.options.buffer_timeout,
        metrics: &ctx.metrics,
        io: ctx.io.as_deref(),
        checkpointing: ctx.checkpointing.as_deref(),
    }
}

struct SourceNode<T> {
    source: Arc<dyn Source<T>>,
}

impl<T: Data> ErasedSource for SourceNode<T> {
    fn run(&self, ctx: &SubtaskCtx, outputs: Vec<AnyBox>) -> Result<(), TaskError> {
        let ident = ctx.ident();
        let mut chain = combine::<T>(outputs);
        let restore = ctx.restore.as_ref();
        let source_ctx = ctx.source_context();
        let reader = match restore.and_then(|r| r.rescaled_of(&ctx.uid)) {
            // Restored at another parallelism: every old subtask's position, to split.
            Some(op) => {
                let positions: Vec<(u32, Vec<u8>)> = op
                    .subtasks
                    .iter()
                    .filter_map(|(i, s)| s.inline.clone().map(|b| (i.0, b)))
                    .collect();
                if positions.is_empty() {
                    self.source.create_reader(&source_ctx, None)
                } else {
                    self.source
                        .create_rescaled_reader(&source_ctx, op.old_parallelism, &positions)
                }
            }
            None => {
                let restored = restore
                    .and_then(|r| r.state_of(&ctx.uid))
                    .and_then(|s| s.inline.as_deref());
                self.source.create_reader(&source_ctx, restored)
            }
        };
        let mut reader = reader.map_err(|e| ident.user(e))?;
        run_source(&env_of(ctx, &ident), &ctx.uid, &mut *reader, &mut *chain)
    }
}

type MakeLink<IN, OUT> = Arc<
    dyn Fn(&SubtaskCtx, Box<dyn Link<OUT>>) -> Result<Box<dyn Link<IN>>, TaskError> + Send + Sync,
>;

struct OperatorNode<IN, OUT> {
    make: MakeLink<IN, OUT>,
}

impl<IN: Data, OUT: Data> ErasedOperator for OperatorNode<IN, OUT> {
    fn build(&self, ctx: &SubtaskCtx, outputs: Vec<AnyBox>) -> Result<AnyBox, TaskError> {
        let next = combine::<OUT>(outputs);
        let link: Box<dyn Link<IN>> = (self.make)(ctx, next)?;
        Ok(Box::new(link))
    }

    fn run_inputs(
        &self,
        ctx: &SubtaskCtx,
        inputs: Vec<AnyBox>,
        head: AnyBox,
    ) -> Result<(), TaskError> {
        let ident = ctx.ident();
        let inputs: Vec<Receiver<StreamElement<IN>>> = inputs
            .into_iter()
            .map(|r| *r.downcast().expect("receiver of the head's input type"))
            .collect();
        let mut head: Box<dyn Link<IN>> = *head.downcast().expect("head link of the input type");
        run_inputs(&env_of(ctx, &ident), inputs, &mut *head)
    }
}

struct EdgeNode<T> {
    key_bytes: Option<KeyBytesFn<T>>,
}

impl<T: Data> ErasedEdge for EdgeNode<T> {
    fn pair(&self, capacity: usize) -> (AnyBox, AnyBox) {
        let (tx, rx) = crossbeam_channel::bounded::<StreamElement<T>>(capacity);
        (Box::new(tx), Box::new(rx))
    }

    fn bundle(&self, senders: Vec<AnyBox>) -> AnyBox {
        let senders: Vec<Sender<StreamElement<T>>> = senders
            .into_iter()
            .map(|s| *s.downcast().expect("a sender of the edge type"))
            .collect();
        Box::new(senders)
    }

    fn outbound(&self, capacity: usize) -> (AnyBox, crate::remote::NextEncoded) {
        let (tx, rx) = crossbeam_channel::bounded::<StreamElement<T>>(capacity);
        (Box::new(tx), crate::remote::encoder(rx))
    }

    fn inbound(&self, capacity: usize, label: String) -> (crate::remote::PushEncoded, AnyBox) {
        let (tx, rx) = crossbeam_channel::bounded::<StreamElement<T>>(capacity);
        (crate::remote::decoder(tx, label), Box::new(rx))
    }

    fn writer(&self, ctx: &SubtaskCtx, senders: AnyBox, partitioning: Partitioning) -> AnyBox {
        let senders: Vec<Sender<StreamElement<T>>> =
            *senders.downcast().expect("senders of the edge type");
        let router = match partitioning {
            Partitioning::Forward => Router::Forward,
            Partitioning::Hash => Router::Hash {
                key_bytes: self
                    .key_bytes
                    .clone()
                    .expect("a hash edge has a key selector"),
                max_parallelism: ctx.max_parallelism,
            },
            Partitioning::Rebalance => Router::Rebalance,
            Partitioning::Rescale => Router::Rescale,
            Partitioning::Broadcast => Router::Broadcast,
        };
        let link: Box<dyn Link<T>> = Box::new(
            RecordWriter::new(
                ctx.uid.to_string(),
                ctx.subtask,
                ctx.parallelism,
                senders,
                router,
                ctx.options.batch_size,
                ctx.options.buffer_timeout,
            )
            .counting(ctx.io.clone()),
        );
        Box::new(link)
    }
}

/// Everything the builder collected.
pub(crate) struct Builder {
    graph: StreamGraph,
    nodes: Vec<NodeRuntime>,
    /// One per `graph.edges` entry.
    edges: Vec<Arc<dyn ErasedEdge>>,
    /// How each read side output's links become its collector, by node and tag.
    sides: HashMap<(NodeId, String), MakeSide>,
}

/// A job as built by the DataStream API: its StreamGraph and the typed factories that make its
/// operators. Built by every process from the same builder function and parameters.
pub struct JobDefinition {
    pub(crate) graph: StreamGraph,
    pub(crate) nodes: Vec<NodeRuntime>,
    pub(crate) edges: Vec<Arc<dyn ErasedEdge>>,
    pub(crate) sides: HashMap<(NodeId, String), MakeSide>,
}

impl JobDefinition {
    /// The StreamGraph as written (before parallelism is resolved).
    pub fn stream_graph(&self) -> &StreamGraph {
        &self.graph
    }

    /// The collector factory of `node`'s side output `tag`.
    pub(crate) fn side_runtime(&self, node: NodeId, tag: &str) -> &MakeSide {
        self.sides
            .get(&(node, tag.to_string()))
            .expect("a side output edge was made by side_output")
    }

    pub(crate) fn edge_runtime(&self, source: NodeId, target: NodeId) -> &Arc<dyn ErasedEdge> {
        let i = self
            .graph
            .edges
            .iter()
            .position(|e| e.source == source && e.target == target)
            .expect("job edge comes from a stream edge");
        &self.edges[i]
    }
}

/// Entry point of the DataStream API, as Flink's `StreamExecutionEnvironment`.
pub struct StreamEnvironment {
    b: Rc<RefCell<Builder>>,
}

impl StreamEnvironment {
    /// A new, empty job named `job_name`.
    pub fn new(job_name: &str) -> Self {
        Self {
            b: Rc::new(RefCell::new(Builder {
                graph: StreamGraph {
                    job_name: job_name.to_string(),
                    nodes: Vec::new(),
                    edges: Vec::new(),
                    job_parallelism: None,
                    max_parallelism: None,
                    resolved_max_parallelism: 0,
                },
                nodes: Vec::new(),
                edges: Vec::new(),
                sides: HashMap::new(),
            })),
        }
    }

    /// Job-level default parallelism (beats `-p` and the config file, loses to per-operator
    /// settings).
    pub fn set_parallelism(&self, parallelism: u32) -> &Self {
        self.b.borrow_mut().graph.job_parallelism = Some(parallelism);
        self
    }

    /// The job's max parallelism: its number of key groups, fixed for the job's life.
    pub fn set_max_parallelism(&self, max_parallelism: u32) -> &Self {
        self.b.borrow_mut().graph.max_parallelism = Some(max_parallelism);
        self
    }

    /// Adds a source.
    pub fn add_source<T: Data>(&self, source: impl Source<T>) -> DataStream<T> {
        let name = format!("Source: {}", source.name());
        let kind = NodeKind::Source {
            parallel: source.parallel(),
        };
        let rt = NodeRuntime::Source(Arc::new(SourceNode {
            source: Arc::new(source),
        }));
        let node = add_node::<T>(&self.b, None, name, kind, rt);
        DataStream {
            b: self.b.clone(),
            node,
            partitioning: None,
            timestamps: None,
            side: None,
            _t: PhantomData,
        }
    }

    /// Finishes building. Uids and parallelism are checked when the job is planned.
    pub fn build(self) -> JobDefinition {
        let b = Rc::try_unwrap(self.b)
            .map(RefCell::into_inner)
            .unwrap_or_else(|rc| {
                let mut b = rc.borrow_mut();
                Builder {
                    graph: b.graph.clone(),
                    nodes: std::mem::take(&mut b.nodes),
                    edges: std::mem::take(&mut b.edges),
                    sides: std::mem::take(&mut b.sides),
                }
            });
        JobDefinition {
            graph: b.graph,
            nodes: b.nodes,
            edges: b.edges,
            sides: b.sides,
        }
    }
}

/// The partitioning of the next edge out of a stream.
enum NextEdge<T> {
    Forward,
    Explicit(Partitioning),
    Hash(KeyBytesFn<T>),
}

struct Input<T> {
    node: NodeId,
    edge: NextEdge<T>,
    /// The side output of `node` read, if not its main output.
    side: Option<String>,
}

fn add_node<T: Data>(
    b: &Rc<RefCell<Builder>>,
    input: Option<Input<T>>,
    name: String,
    kind: NodeKind,
    rt: NodeRuntime,
) -> NodeId {
    add_node_with_inputs(b, input.into_iter().collect(), name, kind, rt)
}

fn add_node_with_inputs<T: Data>(
    b: &Rc<RefCell<Builder>>,
    inputs: Vec<Input<T>>,
    name: String,
    kind: NodeKind,
    rt: NodeRuntime,
) -> NodeId {
    let mut b = b.borrow_mut();
    let id = NodeId(b.graph.nodes.len() as u32);
    b.graph.nodes.push(StreamNode {
        id,
        uid: None,
        name,
        kind,
        parallelism: None,
        resolved_parallelism: 0,
    });
    b.nodes.push(rt);
    for input in inputs {
        let (partitioning, key_bytes) = match input.edge {
            NextEdge::Forward => (None, None),
            NextEdge::Explicit(p) => (Some(p), None),
            NextEdge::Hash(k) => (Some(Partitioning::Hash), Some(k)),
        };
        if let Some(tag) = &input.side {
            b.sides
                .entry((input.node, tag.clone()))
                .or_insert_with(make_side::<T>);
        }
        b.graph.edges.push(StreamEdge {
            source: input.node,
            target: id,
            partitioning,
            side_output: input.side,
        });
        b.edges.push(Arc::new(EdgeNode { key_bytes }));
    }
    id
}

/// A stream of records of type `T`.
pub struct DataStream<T> {
    b: Rc<RefCell<Builder>>,
    node: NodeId,
    partitioning: Option<NextEdge<T>>,
    /// The records' event time, when declared.
    timestamps: Option<TimestampFn<T>>,
    /// The side output of `node` this stream is, if not its main output.
    side: Option<String>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Data> DataStream<T> {
    fn node_mut<R>(&self, f: impl FnOnce(&mut StreamNode) -> R) -> R {
        f(&mut self.b.borrow_mut().graph.nodes[self.node.0 as usize])
    }

    /// Sets the uid of the operator that produces this stream: unique in the job and stable
    /// across versions (savepoint state is mapped by it).
    pub fn uid(self, uid: &str) -> Self {
        self.node_mut(|n| n.uid = Some(uid.to_string()));
        self
    }

    /// Sets the operator's display name.
    pub fn name(self, name: &str) -> Self {
        self.node_mut(|n| n.name = name.to_string());
        self
    }

    /// Sets the operator's parallelism (beats every other setting).
    pub fn parallelism(self, parallelism: u32) -> Self {
        self.node_mut(|n| n.parallelism = Some(parallelism));
        self
    }

    fn input(&self) -> Input<T> {
        let edge = match &self.partitioning {
            None => NextEdge::Forward,
            Some(NextEdge::Forward) => NextEdge::Explicit(Partitioning::Forward),
            Some(NextEdge::Explicit(p)) => NextEdge::Explicit(*p),
            Some(NextEdge::Hash(k)) => NextEdge::Hash(k.clone()),
        };
        Input {
            node: self.node,
            edge,
            side: self.side.clone(),
        }
    }

    fn then<OUT: Data>(
        &self,
        name: &str,
        kind: NodeKind,
        make: MakeLink<T, OUT>,
    ) -> DataStream<OUT> {
        let rt = NodeRuntime::Operator(Arc::new(OperatorNode { make }));
        let node = add_node(&self.b, Some(self.input()), name.to_string(), kind, rt);
        DataStream {
            b: self.b.clone(),
            node,
            partitioning: None,
            timestamps: None,
            side: None,
            _t: PhantomData,
        }
    }

    fn with_partitioning(&self, p: NextEdge<T>) -> Self {
        DataStream {
            b: self.b.clone(),
            node: self.node,
            partitioning: Some(p),
            timestamps: self.timestamps.clone(),
            side: self.side.clone(),
            _t: PhantomData,
        }
    }

    /// The same stream, its records' event time read by `timestamps`.
    fn timed(mut self, timestamps: Option<TimestampFn<T>>) -> Self {
        self.timestamps = timestamps;
        self
    }

    /// Reads each record's event time with `strategy` and generates watermarks from it, in
    /// an operator chained here (right after a source: per source subtask, i.e. per split).
    /// Watermarks from upstream are replaced by these. `weir plan` shows the operator as
    /// `Watermarks: …`.
    pub fn assign_timestamps_and_watermarks(
        &self,
        strategy: WatermarkStrategy<T>,
    ) -> DataStream<T> {
        let name = strategy.describe();
        let timestamps = strategy.timestamps.clone();
        let strategy = Arc::new(strategy);
        self.then(
            &name,
            NodeKind::Operator,
            Arc::new(move |ctx, next| {
                // Restored at the parallelism it was taken at: continue; else start afresh.
                let restored = ctx
                    .restore
                    .as_ref()
                    .and_then(|r| r.state_of(&ctx.uid))
                    .and_then(|s| s.inline.as_deref());
                Ok(Box::new(WatermarksOp::new(
                    ctx.ident(),
                    ctx.uid.clone(),
                    &strategy,
                    next,
                    restored,
                )?) as Box<dyn Link<T>>)
            }),
        )
        .timed(Some(timestamps))
    }

    /// Declares the records' event time without generating watermarks (those from upstream
    /// pass on): for streams whose type changed since the watermarks were assigned, such as
    /// window results (`|w| w.end - 1`).
    pub fn with_timestamps(
        &self,
        timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static,
    ) -> DataStream<T> {
        DataStream {
            b: self.b.clone(),
            node: self.node,
            partitioning: self.partitioning.as_ref().map(|p| match p {
                NextEdge::Forward => NextEdge::Forward,
                NextEdge::Explicit(p) => NextEdge::Explicit(*p),
                NextEdge::Hash(k) => NextEdge::Hash(k.clone()),
            }),
            timestamps: Some(Arc::new(timestamp)),
            side: self.side.clone(),
            _t: PhantomData,
        }
    }

    /// The side output `tag` of the operator that produces this stream (a keyed process
    /// function or a window emits to it through its context).
    pub fn side_output<X: Data>(&self, tag: &OutputTag<X>) -> DataStream<X> {
        DataStream {
            b: self.b.clone(),
            node: self.node,
            partitioning: None,
            timestamps: None,
            side: Some(tag.name().to_string()),
            _t: PhantomData,
        }
    }

    /// Connects this stream with `other` (of another type) into one two-input operator (see
    /// [`crate::ConnectedStreams`]). The watermark of the operator is the minimum of both.
    pub fn connect<B: Data>(&self, other: &DataStream<B>) -> ConnectedStreams<T, B> {
        let left = self.tag(Either::Left, "first");
        let right = other.tag(Either::Right, "second");
        let mut tagged = left.union(&[&right]).name("Connect");
        if let (Some(l), Some(r)) = (self.uid_of(), other.uid_of()) {
            tagged = tagged.uid(&format!("{l}-connect-{r}"));
        }
        ConnectedStreams {
            tagged: tagged.timed(either_timestamps(
                self.timestamps.clone(),
                other.timestamps.clone(),
            )),
        }
    }

    /// The uid of the operator that produces this stream, once set.
    fn uid_of(&self) -> Option<String> {
        self.b.borrow().graph.nodes[self.node.0 as usize]
            .uid
            .clone()
    }

    /// This stream's records as the `which` input of a connected pair: a map chained to
    /// this stream's operator (same parallelism setting), its uid derived from that one's.
    fn tag<B: Data>(&self, f: fn(T) -> B, which: &str) -> DataStream<B> {
        let parallelism = self.b.borrow().graph.nodes[self.node.0 as usize].parallelism;
        let mut tagged = self.map(f).name(&format!("Connect: {which}"));
        if let Some(uid) = self.uid_of() {
            let side = self
                .side
                .as_deref()
                .map(|s| format!("-{s}"))
                .unwrap_or_default();
            tagged = tagged.uid(&format!("{uid}{side}-as-{which}"));
        }
        if let Some(p) = parallelism {
            tagged = tagged.parallelism(p);
        }
        tagged
    }

    /// One stream of this stream's records and `others`' (all of one type), in no particular
    /// order between the inputs; the watermark is their minimum. Event time carries over when
    /// this stream has it.
    pub fn union(&self, others: &[&DataStream<T>]) -> DataStream<T> {
        let mut inputs = vec![self.input()];
        inputs.extend(others.iter().map(|o| o.input()));
        let make: MakeLink<T, T> = Arc::new(|_ctx, next| Ok(next));
        let rt = NodeRuntime::Operator(Arc::new(OperatorNode { make }));
        let node =
            add_node_with_inputs(&self.b, inputs, "Union".to_string(), NodeKind::Operator, rt);
        DataStream {
            b: self.b.clone(),
            node,
            partitioning: None,
            timestamps: self.timestamps.clone(),
            side: None,
            _t: PhantomData,
        }
    }

    /// Applies `f` to every record.
    pub fn map<OUT: Data>(&self, f: impl Fn(T) -> OUT + Send + Sync + 'static) -> DataStream<OUT> {
        let f = Arc::new(f);
        self.then(
            "Map",
            NodeKind::Operator,
            Arc::new(move |_ctx, next| {
                Ok(Box::new(MapOp {
                    f: f.clone(),
                    next,
                    _t: PhantomData,
                }) as Box<dyn Link<T>>)
            }),
        )
    }

    /// Applies `f` to every record; an error fails the job's attempt with the message and
    /// this operator's uid (input that cannot be read, for instance).
    pub fn try_map<OUT: Data>(
        &self,
        f: impl Fn(T) -> Result<OUT, UserError> + Send + Sync + 'static,
    ) -> DataStream<OUT> {
        let f = Arc::new(f);
        self.then(
            "Map",
            NodeKind::Operator,
            Arc::new(move |ctx, next| {
                Ok(Box::new(TryMapOp {
                    ident: ctx.ident(),
                    f: f.clone(),
                    next,
                    _t: PhantomData,
                }) as Box<dyn Link<T>>)
            }),
        )
    }

    /// Keeps the records for which `f` is true.
    pub fn filter(&self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> DataStream<T> {
        let f = Arc::new(f);
        self.then(
            "Filter",
            NodeKind::Operator,
            Arc::new(move |_ctx, next| {
                Ok(Box::new(FilterOp { f: f.clone(), next }) as Box<dyn Link<T>>)
            }),
        )
        .timed(self.timestamps.clone())
    }

    /// Replaces every record with the records `f` returns (zero or more).
    pub fn flat_map<OUT: Data, I>(
        &self,
        f: impl Fn(T) -> I + Send + Sync + 'static,
    ) -> DataStream<OUT>
    where
        I: IntoIterator<Item = OUT> + 'static,
    {
        let f = Arc::new(f);
        self.then(
            "FlatMap",
            NodeKind::Operator,
            Arc::new(move |_ctx, next| {
                Ok(Box::new(FlatMapOp {
                    f: f.clone(),
                    next,
                    _t: PhantomData,
                }) as Box<dyn Link<T>>)
            }),
        )
    }

    /// Distributes records round robin over the next operator's subtasks.
    pub fn rebalance(&self) -> DataStream<T> {
        self.with_partitioning(NextEdge::Explicit(Partitioning::Rebalance))
    }

    /// Distributes records round robin over a local subset of the next operator's subtasks.
    pub fn rescale(&self) -> DataStream<T> {
        self.with_partitioning(NextEdge::Explicit(Partitioning::Rescale))
    }

    /// Sends every record to every subtask of the next operator.
    pub fn broadcast(&self) -> DataStream<T> {
        self.with_partitioning(NextEdge::Explicit(Partitioning::Broadcast))
    }

    /// Keeps subtask `i` feeding subtask `i` of the next operator (needs equal parallelism).
    pub fn forward(&self) -> DataStream<T> {
        self.with_partitioning(NextEdge::Forward)
    }

    /// Partitions by key: every record of a key reaches the same subtask, which owns the key's
    /// key group.
    pub fn key_by<K>(&self, key: impl Fn(&T) -> K + Send + Sync + 'static) -> KeyedStream<T, K>
    where
        K: Serialize + DeserializeOwned + Send + 'static,
    {
        let key: Arc<dyn Fn(&T) -> K + Send + Sync> = Arc::new(key);
        let k2 = key.clone();
        let key_bytes: KeyBytesFn<T> = Arc::new(move |r, buf| encode_key(&k2(r), buf));
        KeyedStream {
            stream: self.with_partitioning(NextEdge::Hash(key_bytes)),
            key,
        }
    }

    /// Writes the stream to `sink`.
    pub fn sink_to(&self, sink: impl Sink<T>) -> DataStreamSink {
        let name = format!("Sink: {}", sink.name());
        let sink: Arc<dyn Sink<T>> = Arc::new(sink);
        let make: MakeLink<T, ()> = Arc::new(move |ctx, _next| {
            let ident = ctx.ident();
            let sink_ctx = ctx.source_context();
            // Downloaded now (no side effect); opened on first use (see `SinkWriterSlot`).
            let restored = crate::restore::sink_manifests(ctx, &ident)?;
            let (sink, open_ident) = (sink.clone(), ident.clone());
            let open: crate::operators::OpenWriter<T> = Box::new(move || {
                match restored {
                    SinkRestore::None => sink.create_writer(&sink_ctx, None),
                    SinkRestore::Own(manifest) => sink.create_writer(&sink_ctx, Some(&manifest)),
                    SinkRestore::Rescaled(_, manifests) if manifests.is_empty() => {
                        sink.create_writer(&sink_ctx, None)
                    }
                    SinkRestore::Rescaled(old, manifests) => {
                        sink.create_rescaled_writer(&sink_ctx, old, &manifests)
                    }
                }
                .map_err(|e| open_ident.user(e))
            });
            let writer = crate::operators::SinkWriterSlot::Closed(Some(open));
            Ok(Box::new(SinkOp {
                ident,
                writer,
                pending: Vec::new(),
                batch_size: ctx.options.batch_size,
                metrics: ctx.metrics.clone(),
                uid: ctx.uid.clone(),
            }) as Box<dyn Link<T>>)
        });
        let s = self.then::<()>(&name, NodeKind::Sink, make);
        DataStreamSink { inner: s }
    }
}

/// The end of a stream: a sink operator.
pub struct DataStreamSink {
    inner: DataStream<()>,
}

impl DataStreamSink {
    /// Sets the sink's uid.
    pub fn uid(self, uid: &str) -> Self {
        Self {
            inner: self.inner.uid(uid),
        }
    }

    /// Sets the sink's display name.
    pub fn name(self, name: &str) -> Self {
        Self {
            inner: self.inner.name(name),
        }
    }

    /// Sets the sink's parallelism.
    pub fn parallelism(self, parallelism: u32) -> Self {
        Self {
            inner: self.inner.parallelism(parallelism),
        }
    }
}

/// A stream partitioned by key; keyed operators on it get per-key state.
pub struct KeyedStream<T, K> {
    stream: DataStream<T>,
    key: Arc<dyn Fn(&T) -> K + Send + Sync>,
}

impl<T, K> KeyedStream<T, K>
where
    T: Data,
    K: Serialize + DeserializeOwned + Send + 'static,
{
    /// Whether the stream's records have event time (see
    /// [`DataStream::assign_timestamps_and_watermarks`]).
    pub fn has_timestamps(&self) -> bool {
        self.stream.timestamps.is_some()
    }

    /// Runs `f` on every record with the state of the record's key.
    pub fn process<OUT: Data, F>(&self, f: F) -> DataStream<OUT>
    where
        F: KeyedProcessFunction<K, T, OUT> + Sync,
    {
        let key_fn = self.key.clone();
        let timestamps = self.stream.timestamps.clone();
        let make: MakeLink<T, OUT> = Arc::new(move |ctx, next| {
            let ident = ctx.ident();
            let (mut backend, uploads) = crate::restore::keyed_backend(ctx, &ident)?;
            let timers =
                TimerService::restore(&mut *backend).map_err(|e| ident.incompatible(&e))?;
            let mut f = f.clone();
            f.open(&mut OpenContext {
                states: StateRegistry::new(&mut *backend),
                subtask: ctx.subtask,
                parallelism: ctx.parallelism,
                attempt: ctx.attempt,
            })
            .map_err(|e| ident.user(e))?;
            Ok(Box::new(KeyedProcessOp {
                ident,
                key_fn: key_fn.clone(),
                f,
                backend,
                max_parallelism: ctx.max_parallelism,
                key_groups: ctx.key_groups,
                key_buf: Vec::with_capacity(64),
                scratch: Vec::with_capacity(64),
                out: Collector::new(next),
                metrics: ctx.metrics.clone(),
                uid: ctx.uid.clone(),
                uploads,
                restored_finished: ctx.restore.as_ref().is_some_and(|r| r.finished(&ctx.uid)),
                canonical: crate::snapshot::CanonicalSource {
                    factory: ctx.state_backend.clone(),
                    scope: ctx.backend_scope(),
                },
                timestamps: timestamps.clone(),
                time: TimeState::new(timers),
                side: ctx.take_side_outputs(),
            }) as Box<dyn Link<T>>)
        });
        self.stream
            .then("KeyedProcess", NodeKind::KeyedOperator, make)
    }

    /// Folds every key's records with `f`, emitting the key's new value per record (Flink's
    /// `reduce`). The running value lives in a ValueState named `reduce`.
    pub fn reduce(&self, f: impl Fn(T, T) -> T + Send + Sync + 'static) -> DataStream<T>
    where
        T: Serialize + DeserializeOwned,
    {
        self.process(ReduceFn {
            f: Arc::new(f),
            state: None,
        })
        .name("Reduce")
    }

    /// Emits `(key, running sum of field(record))` per record. The sum lives in a ValueState
    /// named `sum`.
    pub fn sum<N>(&self, field: impl Fn(&T) -> N + Send + Sync + 'static) -> DataStream<(K, N)>
    where
        N: Data + Serialize + DeserializeOwned + std::ops::Add<Output = N> + Default,
        K: Clone + Sync,
    {
        self.process(SumFn {
            field: Arc::new(field),
            state: None,
            _k: PhantomData,
        })
        .name("Sum")
    }
}

struct ReduceFn<T> {
    f: Arc<dyn Fn(T, T) -> T + Send + Sync>,
    state: Option<ValueState<T>>,
}

impl<T> Clone for ReduceFn<T> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            state: self.state.clone(),
        }
    }
}

impl<K, T> KeyedProcessFunction<K, T, T> for ReduceFn<T>
where
    T: Data + Serialize + DeserializeOwned,
{
    fn open(&mut self, states: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.state = Some(states.value_state("reduce")?);
        Ok(())
    }

    fn process_element(
        &mut self,
        value: T,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<T>,
    ) -> Result<(), UserError> {
        let state = self.state.as_ref().expect("opened");
        let next = match state.get(ctx)? {
            Some(acc) => (self.f)(acc, value),
            None => value,
        };
        state.update(ctx, &next)?;
        out.collect(next);
        Ok(())
    }
}

struct SumFn<T, K, N> {
    field: Arc<dyn Fn(&T) -> N + Send + Sync>,
    state: Option<ValueState<N>>,
    _k: PhantomData<fn() -> K>,
}

impl<T, K, N> Clone for SumFn<T, K, N> {
    fn clone(&self) -> Self {
        Self {
            field: self.field.clone(),
            state: self.state.clone(),
            _k: PhantomData,
        }
    }
}

impl<T, K, N> KeyedProcessFunction<K, T, (K, N)> for SumFn<T, K, N>
where
    T: Data,
    K: Clone + Send + Sync + 'static,
    N: Data + Serialize + DeserializeOwned + std::ops::Add<Output = N> + Default,
{
    fn open(&mut self, states: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.state = Some(states.value_state("sum")?);
        Ok(())
    }

    fn process_element(
        &mut self,
        value: T,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<(K, N)>,
    ) -> Result<(), UserError> {
        let state = self.state.as_ref().expect("opened");
        let next = state.get(ctx)?.unwrap_or_default() + (self.field)(&value);
        state.update(ctx, &next)?;
        out.collect((ctx.key().clone(), next));
        Ok(())
    }
}
