//! The vector clock decoder on arbitrary bytes: never panics, and whatever
//! it accepts re-encodes to a clock that decodes to the same value.
#![no_main]

use kv_clock::VectorClock;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(clock) = VectorClock::from_bytes(data) {
        let again = VectorClock::from_bytes(&clock.to_bytes()).expect("re-encoding decodes");
        assert_eq!(again.entries(), clock.entries());
    }
});
