//! Pipelines: many client operations on one long-lived gRPC stream, each
//! named by an id, their results coming back as they finish, several per
//! message. One call per operation costs an HTTP/2 stream, its headers and
//! a round of wake-ups at both ends; on a pipeline, operations that are
//! under way together share messages, so the cost per operation falls as
//! load rises (the same self-clocking as the replica streams).
//!
//! The node's half is `service::pipeline` (crate-private, behind
//! `KvService`); [`Pipe`] is the client's. Both speak the limits and the
//! error mapping here.

mod dial;

pub use dial::Pipe;

use tonic::Status;

use crate::proto::OpError;

/// The most operations one pipeline message may carry (either way).
pub const MAX_PIPELINED_OPS: usize = 1024;

/// Operations of one batch under way at a time, on the node (a `Batch`
/// call) and in the SDK (`Client::get_many`, `Client::write_many`): enough
/// to fill pipeline messages to every node, few enough that one batch does
/// not push its own operations past the request timeout (1,024 at once
/// did, on a debug build).
pub const BATCH_WINDOW: usize = 64;

/// The most operations one `Batch` call may carry.
pub const MAX_BATCH_OPS: usize = 1024;

/// The most bytes of keys and values one `Batch` call may carry, and of
/// values and contexts its reply may (results past it fail on their own).
pub const MAX_BATCH_BYTES: usize = 32 << 20;

/// The metadata key of a refused conditional write's status that carries
/// the key's current context.
pub const CONTEXT_METADATA: &str = "kv-context-bin";

/// A refused conditional write: `FailedPrecondition` carrying the key's
/// current `context`.
pub(crate) fn precondition_failed(message: String, context: &[u8]) -> Status {
    let mut status = Status::failed_precondition(message);
    status.metadata_mut().insert_bin(
        CONTEXT_METADATA,
        tonic::metadata::MetadataValue::from_bytes(context),
    );
    status
}

/// The current context a refused conditional write's status carries
/// (empty for any other status).
pub(crate) fn status_context(status: &Status) -> Vec<u8> {
    status
        .metadata()
        .get_bin(CONTEXT_METADATA)
        .and_then(|v| v.to_bytes().ok())
        .map(|b| b.to_vec())
        .unwrap_or_default()
}

/// A failed operation as it travels in a pipeline.
pub(crate) fn op_error(status: &Status) -> OpError {
    OpError {
        code: status.code() as i32,
        message: status.message().to_string(),
        context: status_context(status),
    }
}

/// The status a pipelined operation failed with, as the unary call would
/// have failed.
fn op_status(error: &OpError) -> Status {
    let code = tonic::Code::from_i32(error.code);
    if code == tonic::Code::FailedPrecondition {
        return precondition_failed(error.message.clone(), &error.context);
    }
    Status::new(code, error.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_cross_a_pipeline_unchanged() {
        for status in [
            Status::unavailable("no replica answered"),
            Status::resource_exhausted("overloaded"),
            Status::invalid_argument("empty key"),
            Status::permission_denied("reader has the read role; Put needs write"),
        ] {
            let back = op_status(&op_error(&status));
            assert_eq!(back.code(), status.code());
            assert_eq!(back.message(), status.message());
        }
        // A code from a newer peer is Unknown, not a panic.
        let odd = op_status(&OpError {
            code: 99,
            message: "what".into(),
            context: Vec::new(),
        });
        assert_eq!(odd.code(), tonic::Code::Unknown);
        // A refused conditional write keeps its current context.
        let refused = precondition_failed("modified".into(), b"\x01ctx");
        let back = op_status(&op_error(&refused));
        assert_eq!(back.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status_context(&back), b"\x01ctx".to_vec());
    }
}
