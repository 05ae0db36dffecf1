//! Manifest version edits from arbitrary bytes.
#![no_main]

use kv_lsm::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::decode_manifest_edit(data);
});
