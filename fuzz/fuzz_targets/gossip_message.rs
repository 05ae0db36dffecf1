//! Gossip messages from arbitrary bytes: decoded or refused, never a
//! panic; whatever decodes re-encodes to the same message.
#![no_main]

use kv_gossip::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        assert_eq!(Message::decode(&message.encode()).ok(), Some(message));
    }
});
