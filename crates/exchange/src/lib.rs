//! Weir's network data plane: carries a job's channels between TaskManagers, one gRPC
//! `DataExchangeService.Transfer` stream per remote channel, with credit-based flow control so
//! backpressure reaches across processes and memory stays bounded on both sides.
//!
//! The crate moves opaque [`Frame`]s; turning a task's typed elements into frames and back is the
//! runtime's business. It must not depend on `weir-runtime`, the state crates or the JobManager:
//! it sees tasks only as two closures, one that *pushes* a received frame into a task's bounded
//! input queue and one that *pulls* the next frame a task emitted.
//!
//! Key types: [`ChannelKey`], [`Frame`], [`ExchangeService`] (the receiving side, a tonic
//! service), [`Connections`] (the sending side: one HTTP/2 connection per peer, one pump per
//! channel), [`ExchangeError`].
//!
//! # The flow of one remote channel
//!
//! 1. **Register.** The downstream TaskManager deploys the consuming subtask and calls
//!    [`ExchangeService::register_inbound`] with the channel's [`ChannelKey`] and a `push`
//!    closure that blocks while the task's input queue is full.
//! 2. **Open.** The upstream TaskManager calls [`Connections::spawn_outbound`] with a `next`
//!    closure that blocks until the producing task emits a frame. The pump connects (bounded
//!    retries), opens a `Transfer` stream and sends `open` with the channel id. The receiver waits
//!    up to [`ExchangeOptions::open_timeout`] for step 1 (either side may be deployed first).
//! 3. **Credit.** The receiver grants [`ExchangeOptions::credits`] credits. The sender calls
//!    `next` only while it holds a credit and spends one per frame, so a slow consumer leaves the
//!    producer's bounded queue full and the producing task blocks: backpressure, end to end.
//! 4. **Frames.** Batches, watermarks and barriers travel in one ordered stream. The receiver
//!    hands each frame to `push` on a thread of its own (never a tokio worker) and grants one
//!    credit back once `push` returned.
//! 5. **End.** The sender sends `end_of_input` and half-closes; the receiver pushes
//!    [`Frame::EndOfInput`], ends the credit stream with `OK`, and both sides drop their closures.
//! 6. **Errors.** Whatever breaks a stream (a peer process dies, a malformed or uncredited frame,
//!    the receiving task is gone, the channel is unregistered or its attempt cancelled), each side
//!    stops and drops its closure: dropping `push` closes the consuming task's input channel
//!    without an end of input ("input lost"), dropping `next` makes the producing task's next send
//!    fail ("downstream lost"). The reason is logged with the channel; neither side retries, since
//!    recovery is a new attempt with new channels.

#![warn(missing_docs)]

mod inbound;
mod outbound;

use std::fmt;

use weir_proto::v1::{data_frame::Kind, ChannelId, DataFrame};

pub use inbound::{ExchangeOptions, ExchangeService, InboundRegistration, PushFn};
pub use outbound::{ConnectOptions, Connections, NextFn, OutboundEnd, OutboundHandle};

/// The largest encoded frame either side accepts or sends (tonic's default is 4 MiB). The runtime
/// flushes batches well below this; a larger frame fails its stream.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// One channel of a job edge in one attempt: the output of subtask `upstream` to subtask
/// `downstream`. A remote channel is carried by exactly one `Transfer` stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    /// The job.
    pub job_id: String,
    /// The attempt (rises with every failover), so a late stream of an old attempt never
    /// reaches a task of a new one.
    pub attempt: u32,
    /// The job edge.
    pub edge: u32,
    /// The producing subtask's index.
    pub upstream: u32,
    /// The consuming subtask's index.
    pub downstream: u32,
}

impl fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}#{}/edge {}/{}->{}",
            self.job_id, self.attempt, self.edge, self.upstream, self.downstream
        )
    }
}

impl From<ChannelId> for ChannelKey {
    fn from(id: ChannelId) -> Self {
        Self {
            job_id: id.job_id,
            attempt: id.attempt,
            edge: id.edge,
            upstream: id.upstream,
            downstream: id.downstream,
        }
    }
}

impl From<&ChannelKey> for ChannelId {
    fn from(key: &ChannelKey) -> Self {
        Self {
            job_id: key.job_id.clone(),
            attempt: key.attempt,
            edge: key.edge,
            upstream: key.upstream,
            downstream: key.downstream,
        }
    }
}

/// What travels on a channel, in order: the runtime's encoded stream element. Barriers and
/// watermarks are in band, so a barrier never overtakes the batches before it.
pub type Frame = weir_types::EncodedElement;

/// The wire form of `frame`.
pub fn to_wire(frame: Frame) -> DataFrame {
    let kind = match frame {
        Frame::Batch(bytes) => Kind::Batch(bytes),
        Frame::Watermark(ms) => Kind::Watermark(ms),
        Frame::Status(s) => Kind::Idle(s == weir_types::WatermarkStatus::Idle),
        Frame::Barrier(barrier) => Kind::Barrier(barrier.into()),
        Frame::EndOfInput => Kind::EndOfInput(true),
    };
    DataFrame { kind: Some(kind) }
}

/// Why a received [`DataFrame`] is not a [`Frame`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame has no `kind` (an empty message, or a kind newer than this build knows).
    #[error("a frame without a kind")]
    Empty,
    /// `open` anywhere but as the first frame of a stream.
    #[error("`open` after the first frame")]
    UnexpectedOpen,
    /// `end_of_input` is only ever sent as `true`.
    #[error("`end_of_input = false`")]
    EndOfInputFalse,
}

/// The frame a received (non-`open`) [`DataFrame`] carries.
pub fn from_wire(frame: DataFrame) -> Result<Frame, FrameError> {
    match frame.kind {
        None => Err(FrameError::Empty),
        Some(Kind::Open(_)) => Err(FrameError::UnexpectedOpen),
        Some(Kind::Batch(bytes)) => Ok(Frame::Batch(bytes)),
        Some(Kind::Watermark(ms)) => Ok(Frame::Watermark(ms)),
        Some(Kind::Idle(idle)) => Ok(Frame::Status(if idle {
            weir_types::WatermarkStatus::Idle
        } else {
            weir_types::WatermarkStatus::Active
        })),
        Some(Kind::Barrier(barrier)) => Ok(Frame::Barrier(barrier.into())),
        Some(Kind::EndOfInput(true)) => Ok(Frame::EndOfInput),
        Some(Kind::EndOfInput(false)) => Err(FrameError::EndOfInputFalse),
    }
}

/// The errors of this crate. Each names the channel or address it concerns; none is worth
/// retrying within the same attempt except [`ExchangeError::Connect`] (see
/// [`ExchangeError::is_retryable`]).
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The peer address is not `host:port`.
    #[error("invalid TaskManager data address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What the URI parser said.
        reason: String,
    },
    /// Every connection attempt to the peer failed.
    #[error("cannot connect to the TaskManager at {address} ({attempts} attempts): {reason}")]
    Connect {
        /// The peer's data address.
        address: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        reason: String,
    },
    /// The receiver refused to open the channel (unknown after its open timeout, already
    /// streaming, malformed `open`) or the call failed before the stream was established.
    #[error("channel {key}: the TaskManager at {address} refused the stream: {code:?}: {message}")]
    Refused {
        /// The channel.
        key: ChannelKey,
        /// The receiver's data address.
        address: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// An established stream broke: the receiving TaskManager died, the receiving task is gone,
    /// or the channel was unregistered or cancelled there.
    #[error("channel {key}: the stream to {address} failed: {code:?}: {message}")]
    StreamFailed {
        /// The channel.
        key: ChannelKey,
        /// The receiver's data address.
        address: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The receiver broke the credit protocol (say, granted absurdly many credits, or ended the
    /// stream before `end_of_input`).
    #[error("channel {key}: protocol violation by {address}: {reason}")]
    Protocol {
        /// The channel.
        key: ChannelKey,
        /// The receiver's data address.
        address: String,
        /// What was wrong.
        reason: String,
    },
    /// A channel key was registered a second time while its first registration is alive.
    #[error("channel {key} is already registered")]
    AlreadyRegistered {
        /// The channel.
        key: ChannelKey,
    },
    /// The channel's thread could not be started.
    #[error("channel {key}: cannot start its thread: {source}")]
    Spawn {
        /// The channel.
        key: ChannelKey,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// [`OutboundHandle::join`] gave up waiting (the pump was aborted then).
    #[error("channel {key}: the sending pump did not finish within {timeout:?}")]
    JoinTimeout {
        /// The channel.
        key: ChannelKey,
        /// The timeout given.
        timeout: std::time::Duration,
    },
    /// The sending pump panicked (a bug).
    #[error("channel {key}: the sending pump panicked")]
    Panicked {
        /// The channel.
        key: ChannelKey,
    },
}

impl ExchangeError {
    /// Whether trying again later can help: only a failed connect (the peer may still be
    /// starting). Everything else is final for this attempt of the job.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ExchangeError::Connect { .. })
    }
}

/// Fuzz targets run in this binary: no single allocation may exceed 1 GiB.
#[cfg(test)]
#[global_allocator]
static ALLOC: weir_fuzz::Bounded = weir_fuzz::Bounded::new(1 << 30);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_types::{Barrier, CheckpointId};

    #[test]
    fn fuzzed_wire_frames_are_refused_or_read_never_a_panic_a_hang_or_a_huge_allocation() {
        use prost::Message;
        let seeds: Vec<Vec<u8>> = [
            to_wire(Frame::Batch(vec![1, 2, 3, 4, 5, 6, 7, 8])),
            to_wire(Frame::Watermark(-5)),
            to_wire(Frame::Status(weir_types::WatermarkStatus::Idle)),
            to_wire(Frame::Status(weir_types::WatermarkStatus::Active)),
            to_wire(Frame::Barrier(Barrier {
                checkpoint: CheckpointId(3),
                base: Some(CheckpointId(2)),
                savepoint: None,
            })),
            to_wire(Frame::EndOfInput),
            DataFrame {
                kind: Some(Kind::Open(ChannelId {
                    job_id: "0123456789abcdef0123456789abcdef".into(),
                    attempt: 2,
                    edge: 1,
                    upstream: 0,
                    downstream: 3,
                })),
            },
        ]
        .into_iter()
        .map(|f| f.encode_to_vec())
        .collect();
        weir_fuzz::run("data-plane frame", &seeds, |bytes| {
            if let Ok(frame) = DataFrame::decode(bytes) {
                let _ = from_wire(frame);
            }
        });
    }

    #[test]
    fn every_frame_survives_the_wire_unchanged() {
        let frames = [
            Frame::Batch(vec![1, 2, 3]),
            Frame::Watermark(-5),
            Frame::Status(weir_types::WatermarkStatus::Idle),
            Frame::Status(weir_types::WatermarkStatus::Active),
            Frame::Barrier(Barrier {
                checkpoint: CheckpointId(3),
                base: Some(CheckpointId(2)),
                savepoint: None,
            }),
            Frame::EndOfInput,
        ];
        for frame in frames {
            let wire = to_wire(frame.clone());
            assert_eq!(from_wire(wire), Ok(frame));
        }
    }

    #[test]
    fn open_empty_and_false_end_of_input_are_not_frames() {
        let key = ChannelKey {
            job_id: "j".into(),
            attempt: 1,
            edge: 2,
            upstream: 3,
            downstream: 4,
        };
        let open = DataFrame {
            kind: Some(Kind::Open((&key).into())),
        };
        assert_eq!(from_wire(open), Err(FrameError::UnexpectedOpen));
        assert_eq!(from_wire(DataFrame { kind: None }), Err(FrameError::Empty));
        let eoi = DataFrame {
            kind: Some(Kind::EndOfInput(false)),
        };
        assert_eq!(from_wire(eoi), Err(FrameError::EndOfInputFalse));
    }

    #[test]
    fn a_channel_key_round_trips_through_its_wire_id_and_prints_readably() {
        let key = ChannelKey {
            job_id: "wordcount".into(),
            attempt: 2,
            edge: 1,
            upstream: 0,
            downstream: 3,
        };
        assert_eq!(ChannelKey::from(ChannelId::from(&key)), key);
        assert_eq!(key.to_string(), "wordcount#2/edge 1/0->3");
    }
}
