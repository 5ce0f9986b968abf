//! The receiving side: [`ExchangeService`], the TaskManager's `DataExchangeService`.
//!
//! # The flow of one inbound stream
//!
//! 1. **Open.** [`ExchangeService::transfer`](weir_proto::v1::data_exchange_service_server::DataExchangeService::transfer)
//!    reads the first frame, which must be `open` naming the channel (else `INVALID_ARGUMENT`).
//! 2. **Claim.** It waits, until [`ExchangeOptions::open_timeout`] after the call arrived, for the
//!    channel to be registered with [`ExchangeService::register_inbound`] (woken by a
//!    [`Notify`], not by polling), then takes the registration's `push` closure. Unknown after
//!    the timeout: `NOT_FOUND`; a channel that already has (or had) a stream, or whose attempt
//!    was cancelled: `FAILED_PRECONDITION`.
//! 3. **Credit.** It answers with [`ExchangeOptions::credits`] credits and starts two workers:
//!    a *reader* task that takes frames off the stream, and a *delivery* thread that owns `push`.
//! 4. **Frames.** The reader spends one credit per frame (a frame without credit:
//!    `RESOURCE_EXHAUSTED`), decodes it (malformed: `INVALID_ARGUMENT`) and queues it for the
//!    delivery thread in a queue of `credits` places, which credit keeps from ever being full.
//!    The reader never waits for the task, so the HTTP/2 window of the connection is released
//!    at once and a blocked channel cannot stall the other channels sharing the connection.
//!    The delivery thread hands each frame to `push`, which blocks while the task's input queue
//!    is full (a thread of its own, so no tokio worker ever blocks), and then grants one credit.
//! 5. **End.** After `end_of_input` the delivery thread pushes [`Frame::EndOfInput`] and drops
//!    `push`; the reader waits for the sender's half-close; the credit stream ends with `OK`.
//! 6. **Errors.** The stream breaks (the sending TaskManager died), the sender half-closes
//!    without `end_of_input`, a frame is malformed, `push` fails (the task is gone), the
//!    registration is dropped or [`ExchangeService::cancel_attempts`] names the attempt: the
//!    workers stop, an error status goes back when the sender can still hear it, `push` is
//!    dropped without [`Frame::EndOfInput`] (so the task sees its input lost) and the reason is
//!    logged with the channel. The channel then accepts no further stream.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};
use weir_proto::v1::data_exchange_service_server::{
    DataExchangeService, DataExchangeServiceServer,
};
use weir_proto::v1::{data_frame::Kind, Credit, DataFrame};

use crate::{ChannelKey, ExchangeError, Frame, MAX_FRAME_BYTES};

/// Hands one received frame to the consuming task: blocks while the task's bounded input queue
/// is full, and fails (with a reason) once the task is gone. Dropping it closes the task's input.
pub type PushFn = Box<dyn FnMut(Frame) -> Result<(), String> + Send>;

/// The receiving side's settings.
#[derive(Clone, Debug)]
pub struct ExchangeOptions {
    /// Frames in flight per channel: the credits granted when a stream opens (at least 1).
    /// Memory per inbound channel is bounded by this many frames.
    pub credits: u32,
    /// How long an incoming stream waits for its channel to be registered (the upstream may be
    /// deployed before the downstream) and for its `open` frame.
    pub open_timeout: Duration,
    /// The cluster's token: a stream that does not present it is refused (`Unauthenticated`)
    /// before it can name a channel. `None`: no check.
    pub auth: Option<weir_security::Token>,
}

impl Default for ExchangeOptions {
    fn default() -> Self {
        Self {
            credits: 8,
            open_timeout: Duration::from_secs(10),
            auth: None,
        }
    }
}

/// The TaskManager's receiving side of the data plane: the `DataExchangeService` implementation
/// plus the registry of the remote input channels of the subtasks deployed here. Cheap to clone;
/// clones share the registry.
#[derive(Clone)]
pub struct ExchangeService {
    inner: Arc<Inner>,
}

struct Inner {
    options: ExchangeOptions,
    channels: Mutex<HashMap<ChannelKey, Registered>>,
    /// Woken on every registration, so streams waiting for their channel look again.
    registered: Notify,
    next_id: AtomicU64,
}

/// One registered channel. `id` tells registrations of the same key apart over time, so a
/// stale [`InboundRegistration`] never removes a newer one.
struct Registered {
    id: u64,
    slot: Slot,
}

enum Slot {
    /// Registered; no stream has arrived yet.
    Waiting(PushFn),
    /// A stream owns the `push` closure. The sender is never used, only dropped: that stops
    /// the stream.
    Attached { _stop: watch::Sender<()> },
    /// The stream ended, or the attempt was cancelled: no further stream is accepted.
    Closed,
}

impl Inner {
    fn channels(&self) -> MutexGuard<'_, HashMap<ChannelKey, Registered>> {
        // Nothing panics while holding the lock, and the map stays consistent if it did.
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Step 2: take the `push` closure of `key`, if it is registered and free.
    fn try_claim(&self, key: &ChannelKey) -> Claim {
        let mut channels = self.channels();
        let Some(registered) = channels.get_mut(key) else {
            return Claim::Unknown;
        };
        match registered.slot {
            Slot::Waiting(_) => {
                let (stop, stopped) = watch::channel(());
                let Slot::Waiting(push) =
                    std::mem::replace(&mut registered.slot, Slot::Attached { _stop: stop })
                else {
                    unreachable!("matched Waiting above")
                };
                Claim::Claimed {
                    id: registered.id,
                    push,
                    stopped,
                }
            }
            Slot::Attached { .. } => Claim::Busy,
            Slot::Closed => Claim::Closed,
        }
    }

    /// The stream of registration `id` of `key` ended: accept no other.
    fn close(&self, key: &ChannelKey, id: u64) {
        let old = {
            let mut channels = self.channels();
            match channels.get_mut(key) {
                Some(registered) if registered.id == id => {
                    Some(std::mem::replace(&mut registered.slot, Slot::Closed))
                }
                _ => None,
            }
        };
        drop(old); // outside the lock: may drop a closure
    }
}

enum Claim {
    Claimed {
        id: u64,
        push: PushFn,
        /// Changes (with an error) when the registration is dropped or cancelled.
        stopped: watch::Receiver<()>,
    },
    Unknown,
    Busy,
    Closed,
}

/// Whether the channel's registration was dropped or its attempt cancelled.
fn stop_requested(stopped: &watch::Receiver<()>) -> bool {
    stopped.has_changed().is_err()
}

impl ExchangeService {
    /// A service with no channels registered.
    pub fn new(options: ExchangeOptions) -> Self {
        let options = ExchangeOptions {
            credits: options.credits.max(1),
            ..options
        };
        Self {
            inner: Arc::new(Inner {
                options,
                channels: Mutex::new(HashMap::new()),
                registered: Notify::new(),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// The tonic service to add to the TaskManager's server. It accepts frames up to
    /// [`MAX_FRAME_BYTES`], from callers that present the token.
    pub fn server(
        &self,
    ) -> tonic::service::interceptor::InterceptedService<
        DataExchangeServiceServer<Self>,
        weir_security::ServerAuth,
    > {
        tonic::service::interceptor::InterceptedService::new(
            DataExchangeServiceServer::new(self.clone()).max_decoding_message_size(MAX_FRAME_BYTES),
            weir_security::ServerAuth::new(self.inner.options.auth.clone()),
        )
    }

    /// Registers a remote input channel of a subtask deployed here. The channel's stream (which
    /// may already be waiting) hands its frames to `push`, in order, from a thread of its own.
    ///
    /// `push` is dropped when the stream ends or fails, when the registration is dropped, or
    /// when [`Self::cancel_attempts`] names its attempt; only a clean end pushes
    /// [`Frame::EndOfInput`] first.
    ///
    /// Fails if `key` is registered already (its registration not yet dropped).
    pub fn register_inbound(
        &self,
        key: ChannelKey,
        push: PushFn,
    ) -> Result<InboundRegistration, ExchangeError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        match self.inner.channels().entry(key.clone()) {
            MapEntry::Occupied(_) => return Err(ExchangeError::AlreadyRegistered { key }),
            MapEntry::Vacant(vacant) => {
                vacant.insert(Registered {
                    id,
                    slot: Slot::Waiting(push),
                });
            }
        }
        self.inner.registered.notify_waiters();
        debug!(channel = %key, "inbound channel registered");
        Ok(InboundRegistration {
            inner: Arc::clone(&self.inner),
            key,
            id,
        })
    }

    /// Ends every inbound stream of `job_id` whose attempt is `<= up_to_attempt`, and drops the
    /// `push` closures of those attempts' channels that have no stream yet. Their registrations
    /// stay (so a late stream is refused) until dropped.
    pub fn cancel_attempts(&self, job_id: &str, up_to_attempt: u32) {
        let cancelled: Vec<Slot> = {
            let mut channels = self.inner.channels();
            channels
                .iter_mut()
                .filter(|(key, _)| key.job_id == job_id && key.attempt <= up_to_attempt)
                .map(|(_, registered)| std::mem::replace(&mut registered.slot, Slot::Closed))
                .collect()
        };
        if !cancelled.is_empty() {
            debug!(
                job = job_id,
                up_to_attempt,
                channels = cancelled.len(),
                "inbound channels cancelled"
            );
        }
        drop(cancelled); // outside the lock: stops streams, drops closures
    }

    /// Step 2: wait until `deadline` for `key` to be registered, then take its `push` closure.
    async fn claim(
        &self,
        key: &ChannelKey,
        deadline: Instant,
    ) -> Result<(u64, PushFn, watch::Receiver<()>), Status> {
        loop {
            // Listen before looking, so a registration between the two is not missed.
            let notified = self.inner.registered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.inner.try_claim(key) {
                Claim::Claimed { id, push, stopped } => return Ok((id, push, stopped)),
                Claim::Busy => {
                    return Err(Status::failed_precondition(format!(
                        "channel {key} already has a stream"
                    )))
                }
                Claim::Closed => {
                    return Err(Status::failed_precondition(format!(
                        "channel {key} already had a stream, or its attempt was cancelled"
                    )))
                }
                Claim::Unknown => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Status::not_found(format!(
                    "channel {key} is not registered here (waited {:?})",
                    self.inner.options.open_timeout
                )));
            }
        }
    }
}

/// Keeps a remote input channel registered; dropping it unregisters the channel and ends a
/// stream still attached to it.
#[must_use = "dropping the registration unregisters the channel at once"]
pub struct InboundRegistration {
    inner: Arc<Inner>,
    key: ChannelKey,
    id: u64,
}

impl InboundRegistration {
    /// The channel.
    pub fn key(&self) -> &ChannelKey {
        &self.key
    }
}

impl std::fmt::Debug for InboundRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundRegistration")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Drop for InboundRegistration {
    fn drop(&mut self) {
        let removed = {
            let mut channels = self.inner.channels();
            match channels.get(&self.key) {
                Some(registered) if registered.id == self.id => channels.remove(&self.key),
                _ => None,
            }
        };
        drop(removed); // outside the lock: stops the stream, drops the closure
        debug!(channel = %self.key, "inbound channel unregistered");
    }
}

/// The response stream: credits, or the status that ends the stream.
type CreditStream = ReceiverStream<Result<Credit, Status>>;

#[tonic::async_trait]
impl DataExchangeService for ExchangeService {
    type TransferStream = CreditStream;

    async fn transfer(
        &self,
        request: Request<Streaming<DataFrame>>,
    ) -> Result<Response<CreditStream>, Status> {
        let open_timeout = self.inner.options.open_timeout;
        let deadline = Instant::now() + open_timeout;
        let mut frames = request.into_inner();

        // 1. Open.
        let first = match tokio::time::timeout_at(deadline, frames.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no `open` frame within {open_timeout:?}"
                )))
            }
            Ok(first) => first?,
        };
        let key = opened_channel(first)?;

        // 2. Claim.
        let (id, push, stopped) = self.claim(&key, deadline).await?;

        // 3. Credit.
        let credits = self.inner.options.credits;
        // Room for the initial grant, one message per outstanding credit, and an error.
        let (credit_tx, credit_rx) = mpsc::channel(credits as usize + 2);
        credit_tx
            .try_send(Ok(Credit { frames: credits }))
            .expect("a fresh channel has room for the first message");
        let (queue_tx, queue_rx) = mpsc::channel(credits as usize);
        let available = Arc::new(AtomicU32::new(credits));

        let delivery = Delivery {
            inner: Arc::clone(&self.inner),
            key: key.clone(),
            id,
            push,
            queue: queue_rx,
            credits: credit_tx.clone(),
            available: Arc::clone(&available),
            stopped: stopped.clone(),
        };
        if let Err(error) = std::thread::Builder::new()
            .name("weir-exchange-in".into())
            .spawn(move || delivery.run())
        {
            // The closure (and with it `push`) was dropped by the failed spawn.
            self.inner.close(&key, id);
            warn!(channel = %key, %error, "cannot start the delivery thread; input lost");
            return Err(Status::resource_exhausted(format!(
                "channel {key}: cannot start its delivery thread: {error}"
            )));
        }
        let reader = Reader {
            key: key.clone(),
            frames,
            queue: queue_tx,
            credits: credit_tx,
            available,
            stopped,
            linger: open_timeout,
        };
        tokio::spawn(reader.run());
        debug!(channel = %key, credits, "inbound stream opened");
        Ok(Response::new(ReceiverStream::new(credit_rx)))
    }
}

/// Step 1: the channel a stream's first frame opens, or why it opens none.
fn opened_channel(first: Option<DataFrame>) -> Result<ChannelKey, Status> {
    const EXPECTED: &str = "the first frame of a Transfer stream must be `open` with a channel id";
    let key = match first {
        None => {
            return Err(Status::invalid_argument(format!(
                "{EXPECTED}; the stream ended before it"
            )))
        }
        Some(DataFrame {
            kind: Some(Kind::Open(id)),
        }) => ChannelKey::from(id),
        Some(other) => {
            return Err(Status::invalid_argument(format!(
                "{EXPECTED}, got {}",
                kind_name(&other)
            )))
        }
    };
    if key.job_id.is_empty() {
        return Err(Status::invalid_argument(format!(
            "`open` names no job (channel {key})"
        )));
    }
    Ok(key)
}

fn kind_name(frame: &DataFrame) -> &'static str {
    match frame.kind {
        None => "a frame without a kind",
        Some(Kind::Open(_)) => "open",
        Some(Kind::Batch(_)) => "batch",
        Some(Kind::Watermark(_)) => "watermark",
        Some(Kind::Idle(_)) => "watermark_status",
        Some(Kind::Barrier(_)) => "barrier",
        Some(Kind::EndOfInput(_)) => "end_of_input",
    }
}

/// Step 4 (network half): takes frames off the stream, checks credit, queues them.
struct Reader {
    key: ChannelKey,
    frames: Streaming<DataFrame>,
    queue: mpsc::Sender<Frame>,
    credits: mpsc::Sender<Result<Credit, Status>>,
    /// Credits granted and not yet spent by the sender.
    available: Arc<AtomicU32>,
    stopped: watch::Receiver<()>,
    /// How long to wait for the sender's half-close after `end_of_input`.
    linger: Duration,
}

/// How the reader's main phase ended.
enum ReadEnd {
    /// `end_of_input` was queued.
    EndOfInput,
    /// Registration dropped or attempt cancelled.
    Stopped,
    /// The delivery thread ended first (it reported why).
    DeliveryEnded,
    /// The call is over (tonic dropped the response stream).
    CallDropped,
    /// The stream broke: the sender died or reset it.
    Broken(Status),
    /// The sender broke the protocol, or ended without `end_of_input`; tell it why.
    Refuse(Status),
}

impl Reader {
    async fn run(mut self) {
        match self.read_frames().await {
            ReadEnd::EndOfInput => self.await_half_close().await,
            ReadEnd::Stopped => {
                let key = &self.key;
                debug!(channel = %key, "inbound channel unregistered or cancelled; ending its stream");
                let _ = self.credits.try_send(Err(Status::cancelled(format!(
                    "channel {key} was closed by the receiving TaskManager"
                ))));
            }
            ReadEnd::DeliveryEnded | ReadEnd::CallDropped => {}
            ReadEnd::Broken(status) => {
                warn!(channel = %self.key, %status, "inbound stream broke; input lost");
                // Heard only if the sender is alive (say, its frame was too large to decode).
                let _ = self.credits.try_send(Err(status));
            }
            ReadEnd::Refuse(status) => {
                warn!(channel = %self.key, %status, "inbound stream refused; input lost");
                let _ = self.credits.try_send(Err(status));
            }
        }
        // Dropping `queue` ends the delivery thread after the frames already queued (all
        // valid, in order); unless it delivered the end of input, it drops `push` without one.
    }

    async fn read_frames(&mut self) -> ReadEnd {
        let key = &self.key;
        loop {
            let message = tokio::select! {
                biased;
                _ = self.stopped.changed() => return ReadEnd::Stopped,
                _ = self.queue.closed() => return ReadEnd::DeliveryEnded,
                _ = self.credits.closed() => return ReadEnd::CallDropped,
                message = self.frames.message() => message,
            };
            let frame = match message {
                Err(status) => return ReadEnd::Broken(status),
                Ok(None) => {
                    return ReadEnd::Refuse(Status::aborted(format!(
                        "channel {key}: the sender half-closed before end_of_input"
                    )))
                }
                Ok(Some(frame)) => frame,
            };
            if self
                .available
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_err()
            {
                return ReadEnd::Refuse(Status::resource_exhausted(format!(
                    "channel {key}: a {} frame arrived without credit",
                    kind_name(&frame)
                )));
            }
            let frame = match crate::from_wire(frame) {
                Ok(frame) => frame,
                Err(error) => {
                    return ReadEnd::Refuse(Status::invalid_argument(format!(
                        "channel {key}: malformed frame: {error}"
                    )))
                }
            };
            let end = frame == Frame::EndOfInput;
            match self.queue.try_send(frame) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return ReadEnd::DeliveryEnded,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Credit accounting keeps the queue from filling; this is a bug.
                    return ReadEnd::Refuse(Status::internal(format!(
                        "channel {key}: the delivery queue is full despite credit"
                    )));
                }
            }
            if end {
                return ReadEnd::EndOfInput;
            }
        }
    }

    /// Step 5: after `end_of_input`, keep the request open until the sender half-closes, so
    /// the stream ends cleanly on both sides.
    async fn await_half_close(&mut self) {
        let key = &self.key;
        let message = tokio::select! {
            _ = self.credits.closed() => return,
            message = tokio::time::timeout(self.linger, self.frames.message()) => message,
        };
        match message {
            Ok(Ok(None)) => debug!(channel = %key, "inbound stream finished"),
            Ok(Ok(Some(frame))) => warn!(
                channel = %key,
                frame = kind_name(&frame),
                "a frame after end_of_input; ignored"
            ),
            Ok(Err(status)) => {
                debug!(channel = %key, %status, "inbound stream broke after end_of_input")
            }
            Err(_) => debug!(channel = %key, "no half-close after end_of_input; ending"),
        }
    }
}

/// Step 4 (task half): the thread that owns `push`.
struct Delivery {
    inner: Arc<Inner>,
    key: ChannelKey,
    id: u64,
    push: PushFn,
    queue: mpsc::Receiver<Frame>,
    credits: mpsc::Sender<Result<Credit, Status>>,
    available: Arc<AtomicU32>,
    stopped: watch::Receiver<()>,
}

impl Delivery {
    fn run(self) {
        let Delivery {
            inner,
            key,
            id,
            mut push,
            mut queue,
            credits,
            available,
            stopped,
        } = self;
        let mut clean = false;
        while let Some(frame) = queue.blocking_recv() {
            if stop_requested(&stopped) {
                break;
            }
            let end = frame == Frame::EndOfInput;
            if let Err(reason) = push(frame) {
                warn!(channel = %key, %reason, "the receiving task is gone; ending its stream");
                let _ = credits.try_send(Err(Status::aborted(format!(
                    "channel {key}: the receiving task is gone: {reason}"
                ))));
                break;
            }
            if end {
                clean = true;
                break;
            }
            // Count the credit before granting it, so the frame it pays for finds it counted.
            available.fetch_add(1, Ordering::AcqRel);
            if credits.blocking_send(Ok(Credit { frames: 1 })).is_err() {
                break; // the call is over; the reader reports why
            }
        }
        drop(push); // closes the task's input: after EndOfInput a clean end, else input lost
        inner.close(&key, id);
        if !clean {
            debug!(channel = %key, "inbound channel closed without end of input");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(job: &str, attempt: u32) -> ChannelKey {
        ChannelKey {
            job_id: job.into(),
            attempt,
            edge: 0,
            upstream: 0,
            downstream: 0,
        }
    }

    /// A `push` closure that reports its drop on `dropped`.
    fn push_reporting_drop(
        dropped: std::sync::mpsc::Sender<&'static str>,
        name: &'static str,
    ) -> PushFn {
        struct Guard(std::sync::mpsc::Sender<&'static str>, &'static str);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = self.0.send(self.1);
            }
        }
        let guard = Guard(dropped, name);
        Box::new(move |_| {
            let _owned = &guard; // the closure owns the whole guard
            Ok(())
        })
    }

    #[test]
    fn a_channel_registered_twice_is_refused_until_the_first_registration_is_dropped() {
        let service = ExchangeService::new(ExchangeOptions::default());
        let noop = || -> PushFn { Box::new(|_| Ok(())) };
        let first = service.register_inbound(key("j", 1), noop()).unwrap();
        let again = service.register_inbound(key("j", 1), noop());
        assert!(matches!(
            again,
            Err(ExchangeError::AlreadyRegistered { .. })
        ));
        drop(first);
        let _second = service.register_inbound(key("j", 1), noop()).unwrap();
    }

    #[test]
    fn cancelling_attempts_drops_the_waiting_closures_of_those_attempts_only() {
        let service = ExchangeService::new(ExchangeOptions::default());
        let (dropped, drops) = std::sync::mpsc::channel();
        let _a1 = service
            .register_inbound(key("a", 1), push_reporting_drop(dropped.clone(), "a1"))
            .unwrap();
        let _a2 = service
            .register_inbound(key("a", 2), push_reporting_drop(dropped.clone(), "a2"))
            .unwrap();
        let _a3 = service
            .register_inbound(key("a", 3), push_reporting_drop(dropped.clone(), "a3"))
            .unwrap();
        let _b1 = service
            .register_inbound(key("b", 1), push_reporting_drop(dropped, "b1"))
            .unwrap();

        service.cancel_attempts("a", 2);

        let mut gone: Vec<_> = drops.try_iter().collect();
        gone.sort();
        assert_eq!(gone, ["a1", "a2"]);
        assert!(matches!(
            service.inner.try_claim(&key("a", 1)),
            Claim::Closed
        ));
        assert!(matches!(
            service.inner.try_claim(&key("a", 3)),
            Claim::Claimed { .. }
        ));
    }

    #[test]
    fn a_stale_registration_does_not_remove_a_newer_one_of_the_same_channel() {
        let service = ExchangeService::new(ExchangeOptions::default());
        let old = service
            .register_inbound(key("j", 1), Box::new(|_| Ok(())))
            .unwrap();
        // Simulate the old registration's entry having been replaced by a newer one.
        let newer = {
            let mut channels = service.inner.channels();
            channels.remove(&key("j", 1));
            drop(channels);
            service
                .register_inbound(key("j", 1), Box::new(|_| Ok(())))
                .unwrap()
        };
        drop(old);
        assert!(matches!(
            service.inner.try_claim(newer.key()),
            Claim::Claimed { .. }
        ));
    }
}
