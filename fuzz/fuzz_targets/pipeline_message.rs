//! Pipeline messages from arbitrary bytes, as a node reads a client's and
//! a client a node's: decoded or refused, never a panic; whatever decodes
//! re-encodes to the same message, and any status code in a result maps
//! to a code.
#![no_main]

use kv_server::proto::pipelined_result::Result as Outcome;
use kv_server::proto::{PipelineReply, PipelineRequest};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = PipelineRequest::decode(data) {
        assert_eq!(PipelineRequest::decode(&*request.encode_to_vec()).ok(), Some(request));
    }
    if let Ok(reply) = PipelineReply::decode(data) {
        for result in &reply.results {
            if let Some(Outcome::Error(error)) = &result.result {
                let _ = tonic::Code::from_i32(error.code);
            }
        }
        assert_eq!(PipelineReply::decode(&*reply.encode_to_vec()).ok(), Some(reply));
    }
});
