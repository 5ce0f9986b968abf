//! Side outputs: a keyed process function (a window, for late records) emits records of
//! another type to a named output besides its main one, as Flink's `OutputTag`. A job reads
//! one with [`crate::DataStream::side_output`]; records sent to a tag nobody reads are
//! dropped.

use crate::function::Collector;
use crate::link::{combine, AnyBox};
use crate::snapshot::ChainSnapshot;
use crate::{TaskError, UserError};
use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;
use weir_types::{Barrier, CheckpointId, Watermark, WatermarkStatus};

/// The name and type of a side output.
pub struct OutputTag<X> {
    name: String,
    _t: PhantomData<fn() -> X>,
}

impl<X> Clone for OutputTag<X> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            _t: PhantomData,
        }
    }
}

impl<X> OutputTag<X> {
    /// A side output named `name` (unique among one operator's side outputs).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            _t: PhantomData,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One side output's collector with its type erased; events reach it like the main output.
pub(crate) trait SideLink: Send {
    fn as_any(&mut self) -> &mut dyn Any;
    fn drain(&mut self) -> Result<(), TaskError>;
    fn event(&mut self, event: &mut Event<'_>) -> Result<(), TaskError>;
}

/// An in-band event passed to every side output.
pub(crate) enum Event<'a> {
    Watermark(Watermark),
    Status(WatermarkStatus),
    EndOfInput,
    Flush(bool),
    Barrier(Barrier, &'a mut ChainSnapshot),
    Complete(CheckpointId),
}

struct Typed<X>(Collector<X>);

impl<X: Send + 'static> SideLink for Typed<X> {
    fn as_any(&mut self) -> &mut dyn Any {
        &mut self.0
    }
    fn drain(&mut self) -> Result<(), TaskError> {
        self.0.drain()
    }
    fn event(&mut self, event: &mut Event<'_>) -> Result<(), TaskError> {
        self.0.drain()?;
        let next = self.0.next();
        match event {
            Event::Watermark(wm) => next.watermark(*wm),
            Event::Status(s) => next.watermark_status(*s),
            Event::EndOfInput => next.end_of_input(),
            Event::Flush(force) => next.flush(*force),
            Event::Barrier(b, snapshot) => next.barrier(*b, snapshot),
            Event::Complete(id) => next.checkpoint_complete(*id),
        }
    }
}

/// Turns a side output's type-erased downstream links into its collector (recorded by
/// [`crate::DataStream::side_output`], which knows the type).
pub(crate) type MakeSide = Arc<dyn Fn(Vec<AnyBox>) -> Box<dyn SideLink> + Send + Sync>;

pub(crate) fn make_side<X: Clone + Send + 'static>() -> MakeSide {
    Arc::new(|outputs| Box::new(Typed(Collector::new(combine::<X>(outputs)))))
}

/// The side outputs of one operator subtask, by name.
#[derive(Default)]
pub struct SideOutputs {
    links: Vec<(String, Box<dyn SideLink>)>,
}

impl SideOutputs {
    pub(crate) fn new(links: Vec<(String, Box<dyn SideLink>)>) -> Self {
        Self { links }
    }

    /// Emits `record` to the side output `tag` (dropped when nothing reads it). Fails when the
    /// job reads that side output as another type.
    pub fn emit<X: Send + 'static>(
        &mut self,
        tag: &OutputTag<X>,
        record: X,
    ) -> Result<(), UserError> {
        let Some((_, link)) = self.links.iter_mut().find(|(n, _)| *n == tag.name) else {
            return Ok(());
        };
        let out = link
            .as_any()
            .downcast_mut::<Collector<X>>()
            .ok_or_else(|| {
                format!(
                    "the side output '{}' is read as another type than {}",
                    tag.name,
                    std::any::type_name::<X>()
                )
            })?;
        out.collect(record);
        Ok(())
    }

    pub(crate) fn drain(&mut self) -> Result<(), TaskError> {
        self.links.iter_mut().try_for_each(|(_, l)| l.drain())
    }

    /// Passes an event to every side output (after draining what they buffered).
    pub(crate) fn event(&mut self, mut event: Event<'_>) -> Result<(), TaskError> {
        self.links
            .iter_mut()
            .try_for_each(|(_, l)| l.event(&mut event))
    }
}
