//! The sending side: [`Connections`] (one HTTP/2 connection per peer TaskManager) and the pump
//! of one outbound channel ([`Connections::spawn_outbound`]).
//!
//! # The flow of one outbound channel
//!
//! 1. **Connect.** The *driver* (a tokio task) takes the peer's cached [`Channel`], connecting it
//!    first if needed ([`ConnectOptions::attempts`] tries with doubling backoff).
//! 2. **Open.** It opens a `Transfer` stream whose first frame is `open` with the channel id, and
//!    waits for the receiver's answer (the receiver waits for the channel to be registered).
//! 3. **Credit.** Every `Credit` message adds permits to a [`Semaphore`].
//! 4. **Frames.** The *producer* thread (a std thread: `next` blocks, and no tokio worker may)
//!    takes one permit, then calls `next`, then hands the frame to the driver, which writes it
//!    to the stream. Without a permit it does not call `next`, so the producing task's bounded
//!    queue fills and the task blocks: backpressure. In flight at most: the receiver's credits
//!    plus one frame in the hand-over and one in the request buffer.
//! 5. **End.** After [`Frame::EndOfInput`] (or when `next` returns `None`, the producer is gone)
//!    the producer thread drops `next` and ends; the driver half-closes the request and reads
//!    credits until the receiver ends the stream. `OK` after `EndOfInput`:
//!    [`OutboundEnd::Finished`].
//! 6. **Errors.** When the connect fails, the receiver refuses or breaks the stream, or the pump
//!    is aborted, the driver ends and closes the semaphore: the producer thread stops before
//!    its next call of `next` and drops it, so the producing task's next send fails ("downstream
//!    lost"). A producer blocked inside `next` notices once `next` returns. The driver logs the
//!    reason with the channel and returns it from [`OutboundHandle::join`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, OnceCell, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, warn};
use weir_proto::v1::data_exchange_service_client::DataExchangeServiceClient;
use weir_proto::v1::{data_frame::Kind, DataFrame};

use crate::{ChannelKey, ExchangeError, Frame, MAX_FRAME_BYTES};

/// Blocks until the producing task emits its next frame; `None` once the producer dropped its
/// end of the channel (the task finished or failed). Dropping it makes the producer's next send
/// fail.
pub type NextFn = Box<dyn FnMut() -> Option<Frame> + Send>;

/// More credit than this at once is a receiver bug (and would overflow the semaphore).
const MAX_CREDITS: usize = 1 << 20;

/// HTTP/2 keep-alive pings, so a peer whose machine vanished (no TCP reset) is noticed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How [`Connections`] connects to a peer TaskManager.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The limit on one TCP + HTTP/2 connect attempt.
    pub connect_timeout: Duration,
    /// Attempts before giving up (at least 1).
    pub attempts: u32,
    /// The wait after the first failed attempt; it doubles after each further one.
    pub backoff: Duration,
    /// The cluster's token, presented on every stream.
    pub auth: Option<weir_security::Token>,
    /// TLS (`security.ssl.*`): peers are dialled over `https` and must present a certificate
    /// from the cluster's CA.
    pub tls: Option<weir_security::Tls>,
}

impl Default for ConnectOptions {
    /// 5 attempts, 100 ms backoff doubling: about 1.5 s of waiting plus the attempts.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            attempts: 5,
            backoff: Duration::from_millis(100),
            auth: None,
            tls: None,
        }
    }
}

/// The sending side of a TaskManager: a cache of one [`Channel`] (one HTTP/2 connection,
/// multiplexing every stream) per peer data address. Cheap to clone; clones share the cache.
#[derive(Clone, Default)]
pub struct Connections {
    inner: Arc<ConnectionsInner>,
}

#[derive(Default)]
struct ConnectionsInner {
    options: ConnectOptions,
    /// A cell per address, so concurrent first uses connect once; a failed connect leaves the
    /// cell empty for the next caller to try again.
    peers: Mutex<HashMap<String, Arc<OnceCell<Channel>>>>,
}

impl Connections {
    /// An empty cache.
    pub fn new(options: ConnectOptions) -> Self {
        Self {
            inner: Arc::new(ConnectionsInner {
                options,
                peers: Mutex::default(),
            }),
        }
    }

    /// The channel to the TaskManager at `address` (`host:port`), connecting on first use.
    /// A cached channel reconnects by itself after its connection broke.
    pub async fn channel(&self, address: &str) -> Result<Channel, ExchangeError> {
        let cell = {
            let mut peers = self
                .inner
                .peers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Arc::clone(peers.entry(address.to_string()).or_default())
        };
        cell.get_or_try_init(|| connect(address, &self.inner.options))
            .await
            .cloned()
    }

    /// Starts the pump of one outbound channel to the TaskManager at `address`: a driver task
    /// on `runtime` and a producer thread that calls `next` (never on a tokio worker). See the
    /// [crate docs](crate) for the flow. `next` is dropped when the pump ends, whatever the
    /// reason.
    pub fn spawn_outbound(
        &self,
        runtime: &Handle,
        address: &str,
        key: ChannelKey,
        next: NextFn,
    ) -> OutboundHandle {
        let credits = Arc::new(Semaphore::new(0));
        let producer_end = Arc::new(OnceLock::new());
        // The hand-over from the producer thread to the driver.
        let (frames_tx, frames_rx) = mpsc::channel(1);
        let producer = Producer {
            key: key.clone(),
            next,
            credits: Arc::clone(&credits),
            frames: frames_tx,
            end: Arc::clone(&producer_end),
            runtime: runtime.clone(),
        };
        let driver = match std::thread::Builder::new()
            .name("weir-exchange-out".into())
            .spawn(move || producer.run())
        {
            Ok(_) => runtime.spawn(
                Driver {
                    connections: self.clone(),
                    address: address.to_string(),
                    key: key.clone(),
                    credits: Arc::clone(&credits),
                    frames: frames_rx,
                    producer_end,
                }
                .run(),
            ),
            Err(source) => {
                // The failed spawn dropped the closure, and `next` with it.
                let error = ExchangeError::Spawn {
                    key: key.clone(),
                    source,
                };
                warn!(channel = %key, %error, "outbound channel failed; the producer's output is dropped");
                runtime.spawn(async move { Err(error) })
            }
        };
        OutboundHandle {
            key,
            credits,
            driver,
        }
    }
}

/// Step 1: connect with bounded retries.
async fn connect(address: &str, options: &ConnectOptions) -> Result<Channel, ExchangeError> {
    let invalid = |error: tonic::transport::Error| ExchangeError::InvalidAddress {
        address: address.to_string(),
        reason: error_chain(&error),
    };
    let endpoint = match &options.tls {
        Some(tls) => Endpoint::from_shared(weir_security::Tls::url(address))
            .map_err(invalid)?
            .tls_config(tls.grpc_client())
            .map_err(invalid)?,
        None => Endpoint::from_shared(format!("http://{address}")).map_err(invalid)?,
    };
    let endpoint = endpoint
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let attempts = options.attempts.max(1);
    let mut backoff = options.backoff;
    let mut reason = String::new();
    for attempt in 1..=attempts {
        match endpoint.connect().await {
            Ok(channel) => {
                debug!(address, attempt, "connected to TaskManager");
                return Ok(channel);
            }
            Err(error) => {
                reason = error_chain(&error);
                debug!(address, attempt, error = %reason, "connect to TaskManager failed");
            }
        }
        if attempt < attempts {
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
    }
    Err(ExchangeError::Connect {
        address: address.to_string(),
        attempts,
        reason,
    })
}

/// An error and its sources, `: `-separated (tonic's transport errors say little on their own).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How an outbound channel ended, when it ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundEnd {
    /// [`Frame::EndOfInput`] was sent and the receiver confirmed it handed it to its task.
    Finished,
    /// `next` returned `None` before [`Frame::EndOfInput`] (the producing task stopped); the
    /// stream was half-closed without an end of input, which the receiver treats as input lost.
    ProducerGone,
    /// [`OutboundHandle::abort`] stopped the pump.
    Aborted,
}

/// How the producer thread ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProducerEnd {
    /// It handed [`Frame::EndOfInput`] to the driver.
    EndOfInputSent,
    /// `next` returned `None`.
    ProducerGone,
    /// The driver ended first (failure or abort).
    Stopped,
}

/// Step 4 (task half): the thread that owns `next`.
struct Producer {
    key: ChannelKey,
    next: NextFn,
    credits: Arc<Semaphore>,
    frames: mpsc::Sender<Frame>,
    end: Arc<OnceLock<ProducerEnd>>,
    runtime: Handle,
}

impl Producer {
    fn run(self) {
        let Producer {
            key,
            mut next,
            credits,
            frames,
            end,
            runtime,
        } = self;
        let outcome = loop {
            // Wait for credit before asking for a frame: this is the backpressure.
            match runtime.block_on(credits.acquire()) {
                Ok(permit) => permit.forget(),
                Err(_closed) => break ProducerEnd::Stopped,
            }
            let Some(frame) = next() else {
                break ProducerEnd::ProducerGone;
            };
            let last = frame == Frame::EndOfInput;
            if frames.blocking_send(frame).is_err() {
                break ProducerEnd::Stopped;
            }
            if last {
                break ProducerEnd::EndOfInputSent;
            }
        };
        drop(next); // the producing task's next send fails, unless it already finished
        debug!(channel = %key, outcome = ?outcome, "outbound producer thread ended");
        // Before dropping `frames`: the driver reads this once it sees the hand-over closed.
        let _ = end.set(outcome);
        drop(frames);
    }
}

/// Closes the semaphore when the driver ends in any way, aborted included, so the producer
/// thread stops at its next wait for credit.
struct CloseOnDrop(Arc<Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Steps 1–3 and the network half of 4–6.
struct Driver {
    connections: Connections,
    address: String,
    key: ChannelKey,
    credits: Arc<Semaphore>,
    frames: mpsc::Receiver<Frame>,
    producer_end: Arc<OnceLock<ProducerEnd>>,
}

impl Driver {
    async fn run(mut self) -> Result<OutboundEnd, ExchangeError> {
        let _close = CloseOnDrop(Arc::clone(&self.credits));
        let streamed = self.stream().await;
        let result = match (streamed, self.producer_end.get().copied()) {
            (Ok(()), Some(ProducerEnd::EndOfInputSent)) => Ok(OutboundEnd::Finished),
            (Ok(()), _) => Err(ExchangeError::Protocol {
                key: self.key.clone(),
                address: self.address.clone(),
                reason: "the receiver ended the stream before end_of_input".into(),
            }),
            // The receiver refuses a stream that ends without end of input; that is expected.
            (Err(ExchangeError::StreamFailed { .. }), Some(ProducerEnd::ProducerGone)) => {
                Ok(OutboundEnd::ProducerGone)
            }
            (Err(error), _) => Err(error),
        };
        match &result {
            Ok(end) => {
                debug!(channel = %self.key, address = %self.address, ?end, "outbound channel ended")
            }
            Err(error) => warn!(
                channel = %self.key,
                address = %self.address,
                %error,
                "outbound channel failed; the producer's output is dropped"
            ),
        }
        result
    }

    /// Returns `Ok` when the receiver ended the stream with `OK`.
    async fn stream(&mut self) -> Result<(), ExchangeError> {
        let channel = self.connections.channel(&self.address).await?;
        let auth = weir_security::ClientAuth::new(self.connections.inner.options.auth.as_ref());
        let mut client = DataExchangeServiceClient::with_interceptor(channel, auth)
            .max_encoding_message_size(MAX_FRAME_BYTES)
            .max_decoding_message_size(MAX_FRAME_BYTES);

        // 2. Open. The request body reads from `body`; dropping `body` half-closes it.
        let (body_tx, body_rx) = mpsc::channel(1);
        body_tx
            .try_send(DataFrame {
                kind: Some(Kind::Open((&self.key).into())),
            })
            .expect("a fresh channel has room for the first message");
        let mut body = Some(body_tx);
        let mut credit_stream = client
            .transfer(ReceiverStream::new(body_rx))
            .await
            .map_err(|status| ExchangeError::Refused {
                key: self.key.clone(),
                address: self.address.clone(),
                code: status.code(),
                message: status.message().to_string(),
            })?
            .into_inner();
        debug!(channel = %self.key, address = %self.address, "outbound stream opened");

        loop {
            tokio::select! {
                // 4. Frames from the producer thread, forwarded in order.
                frame = self.frames.recv(), if body.is_some() => match frame {
                    Some(frame) => {
                        let sender = body.as_ref().expect("guarded by the select condition");
                        if sender.send(crate::to_wire(frame)).await.is_err() {
                            // The call is failing; the credit stream says why.
                            body = None;
                        }
                    }
                    // 5. The producer thread ended: half-close.
                    None => body = None,
                },
                // 3. Credit.
                credit = credit_stream.message() => match credit {
                    Ok(Some(credit)) => {
                        let frames = credit.frames as usize;
                        if self.credits.available_permits().saturating_add(frames) > MAX_CREDITS {
                            return Err(ExchangeError::Protocol {
                                key: self.key.clone(),
                                address: self.address.clone(),
                                reason: format!("more than {MAX_CREDITS} credits granted"),
                            });
                        }
                        self.credits.add_permits(frames);
                    }
                    Ok(None) => return Ok(()),
                    Err(status) => {
                        return Err(ExchangeError::StreamFailed {
                            key: self.key.clone(),
                            address: self.address.clone(),
                            code: status.code(),
                            message: status.message().to_string(),
                        })
                    }
                },
            }
        }
    }
}

/// The TaskManager's handle on one outbound channel's pump. Dropping it detaches the pump, which
/// runs to its end.
#[derive(Debug)]
pub struct OutboundHandle {
    key: ChannelKey,
    credits: Arc<Semaphore>,
    driver: JoinHandle<Result<OutboundEnd, ExchangeError>>,
}

impl OutboundHandle {
    /// The channel.
    pub fn key(&self) -> &ChannelKey {
        &self.key
    }

    /// Stops the pump (say, the attempt is cancelled): the stream is dropped, which the
    /// receiver sees as input lost, and `next` is dropped once it is not being called.
    pub fn abort(&self) {
        self.credits.close();
        self.driver.abort();
    }

    /// Whether the pump's driver has ended.
    pub fn is_finished(&self) -> bool {
        self.driver.is_finished()
    }

    /// Waits up to `timeout` for the pump to end and says how it ended; on timeout it aborts
    /// the pump and fails with [`ExchangeError::JoinTimeout`].
    pub async fn join(self, timeout: Duration) -> Result<OutboundEnd, ExchangeError> {
        let OutboundHandle {
            key,
            credits,
            driver,
        } = self;
        let abort = driver.abort_handle();
        match tokio::time::timeout(timeout, driver).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) if error.is_cancelled() => Ok(OutboundEnd::Aborted),
            Ok(Err(_panic)) => Err(ExchangeError::Panicked { key }),
            Err(_elapsed) => {
                credits.close();
                abort.abort();
                Err(ExchangeError::JoinTimeout { key, timeout })
            }
        }
    }
}
