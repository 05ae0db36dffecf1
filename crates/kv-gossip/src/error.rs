//! Errors of this crate.

use std::time::Duration;

/// Why a configuration or a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value out of range.
    #[error("invalid gossip config: {0}")]
    InvalidConfig(String),
    /// The probe timeout must leave room for indirect probes.
    #[error("probe timeout {timeout:?} must be shorter than the probe interval {interval:?}")]
    ProbeTimeout {
        /// The configured timeout.
        timeout: Duration,
        /// The configured interval.
        interval: Duration,
    },
    /// Bytes that are not a gossip message.
    #[error("malformed gossip message: {0}")]
    Decode(#[from] kv_core::codec::DecodeError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
