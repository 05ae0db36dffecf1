//! In-memory implementations of the kv ports, and the conformance suites
//! that every implementation of a port must pass.
//!
//! Not published and not for production: this crate exists so that each
//! layer can be tested alone and every implementation of a port is held to
//! one standard (TiKV's `engine_traits_tests`, raft-rs's `MemStorage`).
//!
//! - [`MemEngine`]: a `BTreeMap` storage engine.
//! - [`Rng`]: a seeded generator for tests that must replay.
//! - [`engine_conformance!`]: expands to one `#[test]` per case of the
//!   storage-engine conformance suite ([`conformance`]).
//!
//! ```
//! use kv_core::StorageEngine;
//! use kv_testkit::MemEngine;
//!
//! let engine = MemEngine::new();
//! engine.put(b"k", b"v").unwrap();
//! assert_eq!(engine.get(b"k").unwrap(), Some(b"v".to_vec()));
//! ```

pub mod conformance;
mod mem_engine;

pub use mem_engine::MemEngine;

/// A small deterministic generator (SplitMix64), so that a test's cases
/// replay exactly from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator that starts from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A fair coin.
    pub fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// Expands to a module `conformance` with one `#[test]` per case of the
/// storage-engine conformance suite. `$make` is a closure returning
/// `(guard, engine)`: the guard (a temporary directory, say) lives as long
/// as the test.
///
/// ```ignore
/// kv_testkit::engine_conformance!(|| ((), kv_testkit::MemEngine::new()));
/// ```
#[macro_export]
macro_rules! engine_conformance {
    ($make:expr) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::engine_conformance!(@cases $make;
                put_get_delete,
                empty_values_and_binary_keys,
                batch_is_atomic_and_last_op_wins,
                scan_respects_bounds_and_order,
                scan_is_a_point_in_time_view,
                sequence_numbers_advance,
                flush_keeps_everything,
                matches_a_model_over_many_keys,
                concurrent_writers_lose_nothing,
                deferred_writes_are_seen_by_get_latest_at_once_and_by_get_once_durable,
            );
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let (_guard, engine) = ($make)();
                $crate::conformance::$case(&engine);
            }
        )*
    };
}
