//! Encoding: round trips, sizes, and garbage that must not panic.

use kv_clock::{DvvSet, VectorClock};
use kv_core::NodeId;
use proptest::prelude::*;

fn clock() -> impl Strategy<Value = VectorClock> {
    prop::collection::vec((any::<u64>(), 1u64..u64::MAX, any::<u32>()), 0..12).prop_map(|entries| {
        let mut c = VectorClock::new();
        for (a, n, ts) in entries {
            c.observe(NodeId(a), n, u64::from(ts));
        }
        c
    })
}

proptest! {
    #[test]
    fn clock_round_trips(c in clock()) {
        let bytes = c.to_bytes();
        let back = VectorClock::from_bytes(&bytes).unwrap();
        prop_assert_eq!(back.entries(), c.entries());
        let mut without = Vec::new();
        c.encode_into(&mut without, false);
        let back = VectorClock::from_bytes(&without).unwrap();
        prop_assert_eq!(&back, &c);
    }

    #[test]
    fn dvv_round_trips(writes in prop::collection::vec((0u64..5, prop::option::of(prop::collection::vec(any::<u8>(), 0..20)), any::<bool>()), 0..20)) {
        let mut key: DvvSet<Option<Vec<u8>>> = DvvSet::new();
        for (actor, value, with_ctx) in writes {
            let ctx = if with_ctx { key.context().clone() } else { VectorClock::new() };
            key.update(&ctx, NodeId(actor), value, 1_790_000_000).unwrap();
        }
        let bytes = key.to_bytes();
        prop_assert_eq!(DvvSet::<Option<Vec<u8>>>::from_bytes(&bytes).unwrap(), key);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = VectorClock::from_bytes(&bytes);
        let _ = DvvSet::<Vec<u8>>::from_bytes(&bytes);
        let _ = DvvSet::<Option<Vec<u8>>>::from_bytes(&bytes);
    }

    #[test]
    fn mutated_encodings_never_panic(c in clock(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut bytes = c.to_bytes();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = VectorClock::from_bytes(&bytes);
        let end = cut.index(bytes.len() + 1);
        let _ = VectorClock::from_bytes(&bytes[..end]);
    }

    #[test]
    fn every_strict_prefix_is_an_error(c in clock()) {
        let bytes = c.to_bytes();
        for end in 0..bytes.len() {
            prop_assert!(VectorClock::from_bytes(&bytes[..end]).is_err());
        }
    }
}

#[test]
fn encoded_sizes_for_the_note() {
    // Realistic clocks: small node ids, counters in the thousands, one
    // timestamp base. Printed so the sizes can be quoted; asserted against
    // the budget of the design (3 actors in at most 30 bytes).
    let now = 1_790_000_000;
    for actors in [1u64, 3, 10] {
        let mut c = VectorClock::new();
        for a in 1..=actors {
            c.observe(NodeId(a), 100_000 + a, now + a);
        }
        let with_ts = c.to_bytes().len();
        let mut ctx = Vec::new();
        c.encode_into(&mut ctx, false);
        println!(
            "clock actors={actors} bytes_with_timestamps={with_ts} bytes_as_client_context={}",
            ctx.len()
        );
        if actors == 3 {
            assert!(with_ts <= 30, "3-actor clock took {with_ts} bytes");
        }
        assert!(ctx.len() < with_ts);
    }
}
