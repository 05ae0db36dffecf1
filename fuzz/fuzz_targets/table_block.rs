//! Whole tables from arbitrary bytes: footer, index, filter, properties and
//! every data block are parsed with errors, never panics.
#![no_main]

use kv_lsm::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::decode_table(data);
});
