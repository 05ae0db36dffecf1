//! Values with a time to live: the expiry is part of the version, so it
//! travels with it, survives merges and encodings, and every replica
//! reads a lapsed value as absent.

use kv_clock::{DvvSet, VectorClock};
use kv_core::{NodeId, WriteTag};

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);

fn live(s: &DvvSet<Option<Vec<u8>>>, now: u64) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = s.live_values(now).flatten().cloned().collect();
    v.sort();
    v
}

#[test]
fn a_lapsed_value_reads_as_absent_and_its_sibling_stays() {
    let empty = VectorClock::new();
    let mut key = DvvSet::new();
    key.update(&empty, A, Some(b"forever".to_vec()), 100)
        .unwrap();
    let dot = key
        .update_expiring(&empty, B, 0, Some(b"brief".to_vec()), None, Some(160), 100)
        .unwrap();
    assert_eq!(live(&key, 159), [b"brief".to_vec(), b"forever".to_vec()]);
    assert_eq!(live(&key, 160), [b"forever".to_vec()], "lapsed at its time");
    // The version is still there (it is collected later, like a
    // tombstone), and still covered by the context.
    assert_eq!(key.len(), 2);
    assert!(key.context().covers(dot.actor, dot.counter));
    let lapsing = key.siblings().iter().find(|s| s.dot == dot).unwrap();
    assert_eq!(lapsing.expires, Some(160));
    assert!(lapsing.lapsed(160) && !lapsing.lapsed(159));
    // A write with the read's context supersedes the lapsed version too:
    // nothing older comes back.
    let read = key.context().clone();
    key.update(&read, A, Some(b"new".to_vec()), 200).unwrap();
    assert_eq!(live(&key, 1_000), [b"new".to_vec()]);
    assert_eq!(key.len(), 1);
}

#[test]
fn the_expiry_travels_with_the_version_through_merges_and_bytes() {
    let empty = VectorClock::new();
    let mut at_a = DvvSet::new();
    at_a.update_expiring(
        &empty,
        A,
        0,
        Some(b"v".to_vec()),
        Some(WriteTag {
            id: 7,
            retry: false,
        }),
        Some(500),
        100,
    )
    .unwrap();
    // Another replica gets it by merge: same version, same expiry, so the
    // two states are equal byte for byte (anti-entropy sees nothing).
    let mut at_b: DvvSet<Option<Vec<u8>>> = DvvSet::new();
    at_b.sync(&at_a);
    assert_eq!(at_a.to_bytes(), at_b.to_bytes());
    assert_eq!(live(&at_b, 499), [b"v".to_vec()]);
    assert!(live(&at_b, 500).is_empty());
    // Through bytes, tagged and untagged.
    let decoded = DvvSet::<Option<Vec<u8>>>::from_bytes(&at_a.to_bytes()).unwrap();
    assert_eq!(decoded, at_a);
    assert_eq!(decoded.siblings()[0].expires, Some(500));
    let mut plain = DvvSet::new();
    plain
        .update_expiring(&empty, B, 0, Some(b"w".to_vec()), None, Some(9), 1)
        .unwrap();
    let back = DvvSet::<Option<Vec<u8>>>::from_bytes(&plain.to_bytes()).unwrap();
    assert_eq!(back, plain);
    // A state without expiries encodes as before: no byte changes.
    let mut old = DvvSet::new();
    old.update(&empty, A, Some(b"x".to_vec()), 1).unwrap();
    let bytes = old.to_bytes();
    assert_eq!(DvvSet::<Option<Vec<u8>>>::from_bytes(&bytes).unwrap(), old);
    assert!(old.siblings()[0].expires.is_none());
    // A retry that finds its write keeps the first attempt's time.
    let mut again = at_a.clone();
    again
        .update_expiring(
            &empty,
            B,
            0,
            Some(b"v".to_vec()),
            Some(WriteTag { id: 7, retry: true }),
            Some(900),
            100,
        )
        .unwrap();
    assert_eq!(again.siblings()[0].expires, Some(500));
}

#[test]
fn garbage_expiry_flags_are_refused() {
    let empty = VectorClock::new();
    let mut key = DvvSet::new();
    key.update_expiring(&empty, A, 0, Some(b"v".to_vec()), None, Some(300), 1)
        .unwrap();
    let bytes = key.to_bytes();
    // Cut anywhere: an error, never a panic.
    for cut in 0..bytes.len() {
        assert!(DvvSet::<Option<Vec<u8>>>::from_bytes(&bytes[..cut]).is_err());
    }
    // The end of the encoding: flags (expiry only), the time (300 as a
    // varint), the value (tag, length, byte), no retired records.
    let flags_at = bytes.len() - 7;
    assert_eq!(&bytes[flags_at..], &[8, 0xac, 0x02, 1, 1, b'v', 0]);
    for bad_flags in [8 | 0x40, 8 | 2, 8 | 4] {
        // An unknown bit, or retry / copies without a write id.
        let mut bad = bytes.clone();
        bad[flags_at] = bad_flags;
        assert!(DvvSet::<Option<Vec<u8>>>::from_bytes(&bad).is_err());
    }
    // Any byte flipped: an error or another valid state, never a panic.
    for i in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0x5a;
        let _ = DvvSet::<Option<Vec<u8>>>::from_bytes(&flipped);
    }
}
