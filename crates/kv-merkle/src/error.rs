//! Errors of this crate.

/// Why a tree or an exchange could not proceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A leaf count that is not a power of two in range.
    #[error("a tree needs a power of two leaves from 1 to 2^24, got {0}")]
    InvalidLeaves(u32),
    /// The two trees of an exchange have different sizes.
    #[error("trees differ in size: ours has {ours} leaves, theirs {theirs}")]
    SizeMismatch {
        /// Our leaf count.
        ours: u32,
        /// The peer's leaf count.
        theirs: u32,
    },
    /// A message that does not fit the exchange (wrong count, a node that
    /// does not exist, a reply to nothing).
    #[error("unexpected exchange message: {0}")]
    Protocol(String),
    /// A fan-out of zero.
    #[error("fan-out must be at least 1")]
    ZeroFanout,
    /// Bytes that are not a message.
    #[error("malformed exchange message: {0}")]
    Decode(#[from] kv_core::codec::DecodeError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
