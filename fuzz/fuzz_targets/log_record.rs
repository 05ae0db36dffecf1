//! Commit-log segments and batch payloads from arbitrary bytes: the
//! scanner and the batch decoder return, never panic.
#![no_main]

use kv_lsm::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let number = data.first().copied().unwrap_or(0) as u64;
    let _ = decode::scan_log_segment(data, number);
    let _ = decode::decode_log_batch(data);
});
