//! Errors of this crate.

/// Why bytes could not be decoded into a clock or a sibling set.
///
/// Every variant names the byte offset at which decoding stopped, so a
/// corrupted record can be located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended in the middle of a field.
    #[error("unexpected end of input at byte {offset} while reading {what}")]
    Truncated {
        /// Where the missing bytes should have been.
        offset: usize,
        /// The field being read.
        what: &'static str,
    },
    /// A varint ran past ten bytes or past `u64::MAX`.
    #[error("varint at byte {offset} overflows 64 bits")]
    VarintOverflow {
        /// Where the varint started.
        offset: usize,
    },
    /// The format version byte is not one this build understands.
    #[error("unknown encoding version {version} at byte {offset}")]
    UnknownVersion {
        /// Where the version byte is.
        offset: usize,
        /// The version found.
        version: u8,
    },
    /// A field holds a value the format forbids (for example a zero counter,
    /// actors out of order, or a sibling whose dot the context does not cover).
    #[error("invalid {what} at byte {offset}")]
    Invalid {
        /// Where the offending field starts.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// Bytes were left over after a complete value.
    #[error("{count} trailing bytes after the encoded value at byte {offset}")]
    TrailingBytes {
        /// Where the trailing bytes begin.
        offset: usize,
        /// How many there are.
        count: usize,
    },
}

/// `Result` with this crate's [`DecodeError`].
pub type Result<T, E = DecodeError> = std::result::Result<T, E>;
