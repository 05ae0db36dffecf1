//! Internode frames from arbitrary bytes, as a node reads a peer's framed
//! connection: decoded or refused, never a panic; a decoded frame
//! re-encodes to the bytes it came from, and its payload is refused or
//! decoded as the message its kind names.
#![no_main]

use kv_server::frames::{Frame, Kind};
use kv_server::proto::{BatchReply, ReadBatchReply, ReadBatchRequest, ReplicateBatchRequest};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((frame, used))) = Frame::decode(data) else {
        return;
    };
    assert_eq!(frame.encode(), data[..used]);
    let payload = &*frame.payload;
    match frame.kind {
        Kind::Replicate => drop(ReplicateBatchRequest::decode(payload)),
        Kind::Replicated => drop(BatchReply::decode(payload)),
        Kind::Read => drop(ReadBatchRequest::decode(payload)),
        Kind::States => drop(ReadBatchReply::decode(payload)),
        Kind::Hello | Kind::Error => {}
    }
});
