//! The one error type of the connectors.

use std::io;
use std::path::PathBuf;

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
        /// The part file that was already committed.
        path: PathBuf,
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
            | Self::SocketUtf8 { .. }
            | Self::WriterFinished { .. }
            | Self::BadSubtask { .. } => false,
        }
    }
}
