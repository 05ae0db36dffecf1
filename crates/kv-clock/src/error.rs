//! Errors of this crate.

pub use kv_core::codec::DecodeError;

/// `Result` with [`DecodeError`].
pub type Result<T, E = DecodeError> = std::result::Result<T, E>;
