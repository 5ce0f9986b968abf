//! The one error type of the connectors.

use std::io;
use std::path::PathBuf;
use weir_types::CheckpointId;

/// Why a connector could not be set up or failed while running. Every variant names the path or
/// address involved.
///
/// The underlying I/O error is part of the message (`cannot read input 'in.txt': No such file
/// or directory (os error 2)`) and deliberately not exposed as [`source`](std::error::Error::source),
/// so that printing the error with its source chain does not repeat it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A connector was configured with values it cannot run with.
    #[error("invalid {connector} configuration: {reason}")]
    InvalidConfig {
        /// Which connector (`generator`, `file`, …).
        connector: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An input file or directory does not exist or cannot be read.
    #[error("cannot read input '{}': {cause}", path.display())]
    InputUnreadable {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        cause: io::Error,
    },
    /// An input file holds a line that is not valid UTF-8.
    #[error("input '{}' is not valid UTF-8 at byte offset {offset}", path.display())]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// The offset of the first invalid byte in the file.
        offset: u64,
    },
    /// A line is longer than [`crate::MAX_LINE_BYTES`] (a file without newlines, or a peer
    /// that never ends its line): refused before it fills the memory.
    #[error("a line of {source_name} at byte offset {offset} is longer than {max} bytes")]
    LineTooLong {
        /// The file or `host:port`.
        source_name: String,
        /// Where the line starts (for a socket: bytes read before it).
        offset: u64,
        /// The bound.
        max: usize,
    },
    /// A TCP connection could not be opened.
    #[error("cannot connect to {addr}: {cause}")]
    Connect {
        /// `host:port` as configured.
        addr: String,
        /// The I/O error of the last address tried.
        cause: io::Error,
    },
    /// Reading from an open socket failed.
    #[error("cannot read from socket {addr}: {cause}")]
    SocketRead {
        /// `host:port` as configured.
        addr: String,
        /// The I/O error.
        cause: io::Error,
    },
    /// A socket sent a line that is not valid UTF-8.
    #[error("socket {addr} sent a line that is not valid UTF-8 at byte offset {offset}")]
    SocketUtf8 {
        /// `host:port` as configured.
        addr: String,
        /// The offset of the first invalid byte in the stream.
        offset: u64,
    },
    /// An output directory or file cannot be created or written.
    #[error("cannot write output '{}': {cause}", path.display())]
    OutputUnwritable {
        /// The directory or file.
        path: PathBuf,
        /// The I/O error.
        cause: io::Error,
    },
    /// Writing to standard output failed (a closed pipe, for instance).
    #[error("cannot write to standard output: {cause}")]
    Stdout {
        /// The I/O error.
        cause: io::Error,
    },
    /// A sink writer was used after `finish` (a bug in the caller).
    #[error("sink writer for '{}' was used after finish", path.display())]
    WriterFinished {
        /// The part file that was already committed, or (with checkpointing) the output
        /// directory.
        path: PathBuf,
    },
    /// A source was asked to resume from a position it cannot use: bytes it cannot decode, a
    /// format version it does not know, or a position taken by a differently configured source.
    #[error("cannot restore the {connector} source position: {reason}")]
    BadPosition {
        /// Which source (`generator`, `file`).
        connector: &'static str,
        /// What does not fit, naming the setting or file that differs.
        reason: String,
    },
    /// An input file (or the listing of an input directory) is not what it was when the
    /// checkpoint being restored was taken, so the saved position no longer means anything.
    #[error("input '{}' changed since the checkpoint: {reason}", path.display())]
    InputChanged {
        /// The file or directory.
        path: PathBuf,
        /// What changed.
        reason: String,
    },
    /// A file sink writer's saved state (its manifest of staged transactions) cannot be used.
    #[error("file sink '{uid}' subtask {subtask} cannot restore its manifest: {reason}")]
    BadManifest {
        /// The sink's operator uid.
        uid: String,
        /// The subtask whose manifest it is.
        subtask: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// A transaction of a completed checkpoint cannot be published: its staged file is gone or
    /// damaged, so committed output would be lost. Never ignored.
    #[error(
        "file sink '{uid}' subtask {subtask} cannot commit {checkpoint}: '{}' {reason}",
        path.display()
    )]
    CommitLost {
        /// The sink's operator uid.
        uid: String,
        /// The subtask.
        subtask: u32,
        /// The checkpoint the transaction belongs to.
        checkpoint: CheckpointId,
        /// The staged (pending) file, or the final file when that is the one found damaged.
        path: PathBuf,
        /// What was found (`and its final file 'part-…' are both missing`, `has 10 bytes, the
        /// manifest says 12`, …).
        reason: String,
    },
    /// A sink writer was asked to prepare a checkpoint whose id is not above the one it
    /// prepared before (a bug in the caller: checkpoint ids only rise).
    #[error("file sink '{uid}' subtask {subtask} was asked to prepare {got} after {previous}")]
    CheckpointOutOfOrder {
        /// The sink's operator uid.
        uid: String,
        /// The subtask.
        subtask: u32,
        /// The checkpoint prepared before.
        previous: CheckpointId,
        /// The checkpoint asked for now.
        got: CheckpointId,
    },
    /// The runtime handed a context whose subtask index is not below its parallelism (a bug).
    #[error("subtask {subtask} is out of range for parallelism {parallelism}")]
    BadSubtask {
        /// The subtask index.
        subtask: u32,
        /// The parallelism.
        parallelism: u32,
    },
}

impl ConnectorError {
    /// Whether trying again (restarting the job) can help: true for network failures, which may
    /// be transient; false for configuration, missing files, bad data and bugs, which a retry
    /// would only repeat.
    pub fn retry_may_help(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::SocketRead { .. } | Self::Stdout { .. } => true,
            Self::OutputUnwritable { cause, .. } | Self::InputUnreadable { cause, .. } => matches!(
                cause.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            Self::InvalidConfig { .. }
            | Self::InvalidUtf8 { .. }
            | Self::LineTooLong { .. }
            | Self::SocketUtf8 { .. }
            | Self::WriterFinished { .. }
            | Self::BadSubtask { .. }
            | Self::BadPosition { .. }
            | Self::InputChanged { .. }
            | Self::BadManifest { .. }
            | Self::CommitLost { .. }
            | Self::CheckpointOutOfOrder { .. } => false,
        }
    }
}
