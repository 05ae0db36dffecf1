//! Errors of the engine.

use std::path::PathBuf;

use kv_core::StorageError;
use kv_core::codec::DecodeError;

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option is out of range; the engine did not open.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// A write is larger than the configured limits; nothing was written.
    #[error("{what} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// "key" or "value".
        what: &'static str,
        /// The size given.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("fsync", "open", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A record of the commit log failed verification before the end of
    /// the log. Open with `RecoveryMode::TruncateAtCorruption` to discard
    /// it and everything after it.
    #[error("commit log segment {segment} is corrupt at byte {offset}: {reason}")]
    LogCorruption {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What failed.
        reason: String,
    },
    /// A table, manifest or other file failed verification.
    #[error("{path} is corrupt: {reason}")]
    Corruption {
        /// The file.
        path: PathBuf,
        /// What failed (with offsets where known).
        reason: String,
    },
    /// An earlier failure (a failed fsync, a failed flush) left state on
    /// disk that the engine cannot vouch for; it refuses writes until it is
    /// reopened, which recovers from the log.
    #[error("engine is poisoned by an earlier failure ({0}); reopen it to recover")]
    Poisoned(String),
    /// Another process (or engine in this process) has the directory open.
    #[error("{0} is locked by another engine instance")]
    Locked(PathBuf),
    /// The engine has been closed.
    #[error("engine is closed")]
    Closed,
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Corruption {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn decode(path: impl Into<PathBuf>, what: &str, err: DecodeError) -> Self {
        Error::corrupt(path, format!("{what}: {err}"))
    }

    /// Whether retrying may help: only I/O errors can be transient.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Io { .. })
    }
}

impl From<Error> for StorageError {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::InvalidOption { .. } | Error::TooLarge { .. } => {
                StorageError::InvalidInput(message)
            }
            Error::Io { .. } | Error::Locked(_) => StorageError::Io(message),
            Error::LogCorruption { .. } | Error::Corruption { .. } => {
                StorageError::Corruption(message)
            }
            Error::Poisoned(_) => StorageError::Poisoned(message),
            Error::Closed => StorageError::Closed,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
