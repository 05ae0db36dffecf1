//! Rings from arbitrary bytes, both as a ring file (checksummed) and as
//! the protobuf a peer sends: decoded and validated, or refused, never a
//! panic; whatever a file accepts re-encodes to the same ring.
#![no_main]

use kv_server::proto::RingState;
use kv_server::ring_state::{decode_ring_file, encode_ring_file, ring_of};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = decode_ring_file(data) {
        assert!(ring_of(&state).is_ok());
        let again = decode_ring_file(&encode_ring_file(&state)).ok();
        assert_eq!(again, Some(state));
    }
    if let Ok(state) = RingState::decode(data) {
        let _ = ring_of(&state);
    }
});
