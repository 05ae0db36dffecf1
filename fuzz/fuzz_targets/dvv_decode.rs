//! The sibling-set decoder on arbitrary bytes: never panics; what it accepts
//! round-trips and merges with itself to itself.
#![no_main]

use kv_clock::DvvSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = DvvSet::<Option<Vec<u8>>>::from_bytes(data) {
        let again = DvvSet::<Option<Vec<u8>>>::from_bytes(&set.to_bytes()).expect("re-encoding decodes");
        assert_eq!(again, set);
        assert_eq!(set.synced(&set), set);
    }
});
