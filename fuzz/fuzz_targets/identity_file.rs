//! A data directory's identity file from arbitrary bytes: decoded or
//! refused, never a panic; whatever decodes re-encodes to itself.
#![no_main]

use kv_server::identity::Identity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(identity) = Identity::decode(data) {
        assert_eq!(Identity::decode(identity.encode().as_bytes()), Ok(identity));
    }
});
