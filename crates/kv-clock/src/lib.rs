//! Causality for one key: vector clocks and dotted version vector sets.
//!
//! This crate decides which versions of a key survive a write and what two
//! replicas' states merge into. It is pure data and logic: no I/O, no
//! clocks of its own (callers pass the time in for pruning), no async.
//!
//! - [`VectorClock`]: actor -> counter, with [`compare`](VectorClock::compare)
//!   ([`Causality`]), [`merge`](VectorClock::merge),
//!   [`descends`](VectorClock::descends) and
//!   [`increment`](VectorClock::increment).
//! - [`DvvSet`]: one key's siblings, each with its [`Dot`], and the causal
//!   context a client sends back. New writes are numbered by the
//!   coordinator (never by incrementing the client's context, which loses
//!   concurrent writes); replicas merge with [`DvvSet::sync`].
//! - [`PrunePolicy`]: Riak-style clock pruning (small/big, young/old); every
//!   prune returns how many entries it removed.
//! - A compact, versioned binary encoding with varints; decoding garbage
//!   returns a [`DecodeError`] and never panics.
//!
//! ```
//! use kv_clock::{DvvSet, VectorClock};
//! use kv_core::NodeId;
//!
//! // Replica 1 coordinates a write; replica 2 coordinates a concurrent one.
//! let mut r1: DvvSet<Vec<u8>> = DvvSet::new();
//! r1.update(&VectorClock::new(), NodeId(1), b"red".to_vec(), 0)?;
//! let mut r2: DvvSet<Vec<u8>> = DvvSet::new();
//! r2.update(&VectorClock::new(), NodeId(2), b"blue".to_vec(), 0)?;
//!
//! // Anti-entropy merges both ways: both keep both siblings.
//! r1.sync(&r2);
//! r2.sync(&r1);
//! assert_eq!(r1, r2);
//! assert_eq!(r1.len(), 2);
//!
//! // The states round-trip through bytes.
//! let bytes = r1.to_bytes();
//! assert_eq!(DvvSet::<Vec<u8>>::from_bytes(&bytes).unwrap(), r1);
//! assert!(DvvSet::<Vec<u8>>::from_bytes(&bytes[..bytes.len() - 1]).is_err());
//! # Ok::<(), kv_clock::CounterOverflow>(())
//! ```

mod codec;
mod dvv;
mod error;
mod feed;
mod prune;
mod vclock;

pub use codec::ValueCodec;
pub use dvv::{BRIEF_CAP, BRIEF_SECS, Dot, DvvSet, Retired, Sibling};
pub use error::{CounterOverflow, DecodeError, Result};
pub use feed::CausalFilter;
pub use kv_core::codec::Reader;
pub use prune::{PrunePolicy, PrunePolicyError};
pub use vclock::{Causality, Entry, VectorClock};
