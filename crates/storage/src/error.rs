//! The errors of this crate, each carrying the URL or object path it is about and saying whether
//! a retry can help ([`RetryHint`]).

use std::fmt;

use crate::url::UrlError;

/// Whether repeating a failed operation may succeed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RetryHint {
    /// The failure may be transient (a dropped connection, a throttled request, a timeout):
    /// the same request may succeed later.
    Transient,
    /// Repeating the same request gives the same answer (not found, already exists, bad
    /// credentials, damaged bytes, a bad URL): retrying only wastes time.
    Permanent,
}

/// The object-store operation that failed, for error messages and logs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StorageOp {
    /// A create-only put ([`PutMode::Create`](object_store::PutMode::Create)).
    PutCreate,
    /// An overwriting put.
    Put,
    /// A read of a whole object.
    Get,
    /// A metadata-only read (existence check).
    Head,
    /// A delete.
    Delete,
    /// A listing.
    List,
}

impl fmt::Display for StorageOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageOp::PutCreate => "create-only put",
            StorageOp::Put => "put",
            StorageOp::Get => "get",
            StorageOp::Head => "head",
            StorageOp::Delete => "delete",
            StorageOp::List => "list",
        })
    }
}

/// Why a file name or relative path cannot become an object path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The name was empty.
    #[error("object name must not be empty")]
    Empty,
    /// The name had an empty, `.` or `..` segment, a leading `/`, or a backslash.
    #[error(
        "object name '{0}' must be a relative path without '.', '..', empty segments or backslashes"
    )]
    NotRelative(String),
    /// A segment held a character object stores do not accept unescaped.
    #[error("object name '{name}' is not a valid object path: {reason}")]
    Invalid {
        /// The rejected name.
        name: String,
        /// What object_store objected to.
        reason: String,
    },
    /// A savepoint id was not made of `[A-Za-z0-9._-]`.
    #[error("savepoint id '{0}' must be non-empty and made of letters, digits, '-', '_' or '.'")]
    BadSavepointId(String),
}

/// Everything that can go wrong between Weir and its object storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The storage URL could not be parsed.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// A name could not become an object path.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The local root directory of a `file://` store could not be created.
    #[error("cannot create the storage directory '{dir}' for {url}: {source}")]
    CreateRoot {
        /// The storage URL.
        url: String,
        /// The directory that could not be created.
        dir: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The object store client could not be built from the URL and options.
    #[error("cannot open object store {url}: {source}")]
    Open {
        /// The storage URL.
        url: String,
        /// What object_store reported.
        source: object_store::Error,
    },
    /// A create-only put found an object already at the path.
    #[error("object '{path}' already exists; create-only puts never overwrite")]
    AlreadyExists {
        /// The object path.
        path: String,
    },
    /// The object does not exist.
    #[error("object '{path}' not found")]
    NotFound {
        /// The object path.
        path: String,
    },
    /// The object's bytes do not have the CRC32 the caller recorded for them.
    #[error("object '{path}' is damaged: CRC32 is {actual:#010x}, expected {expected:#010x}")]
    CrcMismatch {
        /// The object path.
        path: String,
        /// The CRC32 recorded when the object was written.
        expected: u32,
        /// The CRC32 of the bytes read.
        actual: u32,
    },
    /// Any other failure of the backing store.
    #[error("{op} of '{path}' failed after {attempts} attempt(s) ({hint:?}): {source}")]
    Backend {
        /// What was attempted.
        op: StorageOp,
        /// The object path or prefix.
        path: String,
        /// How many attempts were made before giving up.
        attempts: u32,
        /// Whether a later retry may help.
        hint: RetryHint,
        /// What object_store reported for the last attempt.
        source: object_store::Error,
    },
}

impl StorageError {
    /// Whether repeating the operation may succeed.
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            StorageError::Backend { hint, .. } => *hint,
            StorageError::CreateRoot { .. } => RetryHint::Transient,
            StorageError::Url(_)
            | StorageError::Path(_)
            | StorageError::Open { .. }
            | StorageError::AlreadyExists { .. }
            | StorageError::NotFound { .. }
            | StorageError::CrcMismatch { .. } => RetryHint::Permanent,
        }
    }

    /// True when a create-only put found the path taken.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, StorageError::AlreadyExists { .. })
    }

    /// True when the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    /// Classifies an object_store error from `op` on `path` (one attempt so far).
    pub(crate) fn from_store(op: StorageOp, path: &str, source: object_store::Error) -> Self {
        match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound {
                path: path.to_owned(),
            },
            // A create-only put reports a taken path as AlreadyExists (memory, file) or as a
            // failed precondition (S3 `If-None-Match: *` answers 412).
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
                if op == StorageOp::PutCreate =>
            {
                StorageError::AlreadyExists {
                    path: path.to_owned(),
                }
            }
            source => StorageError::Backend {
                op,
                path: path.to_owned(),
                attempts: 1,
                hint: classify(&source),
                source,
            },
        }
    }

    /// Records that the error is the last of `attempts` attempts.
    pub(crate) fn with_attempts(mut self, n: u32) -> Self {
        if let StorageError::Backend { attempts, .. } = &mut self {
            *attempts = n;
        }
        self
    }
}

/// Which object_store errors may go away on their own.
fn classify(err: &object_store::Error) -> RetryHint {
    use object_store::Error as E;
    match err {
        // `Generic` is what the HTTP clients report for connection errors, timeouts and 5xx
        // answers that survived their own retries; a join error is a runtime hiccup.
        E::Generic { .. } | E::JoinError { .. } => RetryHint::Transient,
        _ => RetryHint::Permanent,
    }
}
