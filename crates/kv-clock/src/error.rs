//! Errors of this crate.

pub use kv_core::codec::DecodeError;

/// `Result` with [`DecodeError`].
pub type Result<T, E = DecodeError> = std::result::Result<T, E>;

/// A counter would pass `u64::MAX`. Honest clocks never get there (a node
/// would have to coordinate 2^64 writes of one key); a forged client
/// context can, and is refused instead of wrapping or saturating (a
/// saturated counter would give two siblings one dot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the counter of actor {actor} cannot advance past {max}", max = u64::MAX)]
pub struct CounterOverflow {
    /// The actor whose counter is exhausted.
    pub actor: kv_core::ActorId,
}
