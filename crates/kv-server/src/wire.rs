//! The client operations of `kv-core` and their protobuf messages, both
//! ways, in one place: a request forwarded to a key's coordinator is
//! encoded by the transport and decoded by the internal service with the
//! functions here, and the client service reads quorums and write tags
//! the same way. Likewise the kinds of a peer's failures
//! ([`RemoteFailure`]), as a batch reply carries them and as a status code
//! says them.

use kv_core::{ActorId, ClientOp, ClientReply, RemoteFailure, WriteTag};
use tonic::Code;

use crate::proto::{FailureKind, ForwardReply, ForwardRequest, PutOp};

/// A failure kind as the wire carries it.
pub(crate) fn failure_kind(kind: RemoteFailure) -> FailureKind {
    match kind {
        RemoteFailure::Invalid => FailureKind::Invalid,
        RemoteFailure::Storage => FailureKind::Storage,
        RemoteFailure::Corrupt => FailureKind::Corrupt,
        RemoteFailure::Refused => FailureKind::Refused,
        RemoteFailure::Busy => FailureKind::Busy,
        _ => FailureKind::Internal,
    }
}

/// A failure kind from the wire: an unknown or missing one (a newer or an
/// older peer) is internal.
pub(crate) fn remote_failure(kind: Option<i32>) -> RemoteFailure {
    match kind.and_then(|k| FailureKind::try_from(k).ok()) {
        Some(FailureKind::Invalid) => RemoteFailure::Invalid,
        Some(FailureKind::Storage) => RemoteFailure::Storage,
        Some(FailureKind::Corrupt) => RemoteFailure::Corrupt,
        Some(FailureKind::Refused) => RemoteFailure::Refused,
        Some(FailureKind::Busy) => RemoteFailure::Busy,
        Some(FailureKind::Internal) | None => RemoteFailure::Internal,
    }
}

/// The kind of failure a peer's status code says (codes for down and slow
/// peers are not failures a peer reported; the transport maps them to
/// unreachable and timed out before asking this).
pub(crate) fn status_failure(code: Code) -> RemoteFailure {
    match code {
        Code::InvalidArgument | Code::OutOfRange => RemoteFailure::Invalid,
        Code::DataLoss => RemoteFailure::Corrupt,
        Code::PermissionDenied | Code::Unauthenticated | Code::FailedPrecondition => {
            RemoteFailure::Refused
        }
        Code::ResourceExhausted => RemoteFailure::Busy,
        _ => RemoteFailure::Internal,
    }
}

/// A per-request quorum: 0 on the wire means the node's default.
pub(crate) fn quorum(n: u32) -> Option<u32> {
    (n > 0).then_some(n)
}

/// A request's write tag: `None` for id 0 (the client gave none).
pub(crate) fn write_tag(id: u64, retry: bool) -> Option<WriteTag> {
    (id != 0).then_some(WriteTag { id, retry })
}

/// A client operation as the forwarded request that carries it.
pub(crate) fn forward_request(op: ClientOp) -> ForwardRequest {
    match op {
        ClientOp::Put {
            key,
            value,
            context,
            w,
            write,
            expires,
        } => ForwardRequest {
            key,
            put: Some(PutOp {
                value,
                context,
                write_id: write.map_or(0, |t| t.id),
                retry: write.is_some_and(|t| t.retry),
                expires: expires.unwrap_or(0),
            }),
            quorum: w.unwrap_or(0),
        },
        ClientOp::Get { key, r } => ForwardRequest {
            key,
            put: None,
            quorum: r.unwrap_or(0),
        },
    }
}

/// The client operation a forwarded request carries.
pub(crate) fn client_op(request: ForwardRequest) -> ClientOp {
    match request.put {
        Some(put) => ClientOp::Put {
            key: request.key,
            value: put.value,
            context: put.context,
            w: quorum(request.quorum),
            write: write_tag(put.write_id, put.retry),
            expires: (put.expires != 0).then_some(put.expires),
        },
        None => ClientOp::Get {
            key: request.key,
            r: quorum(request.quorum),
        },
    }
}

/// The coordinator's answer as the forwarded reply.
pub(crate) fn forward_reply(reply: ClientReply) -> ForwardReply {
    match reply {
        ClientReply::Written { context, dot } => ForwardReply {
            context,
            dot_actor: dot.0.0,
            dot_counter: dot.1,
            ..ForwardReply::default()
        },
        ClientReply::Read { values, context } => ForwardReply {
            values,
            context,
            read: true,
            ..ForwardReply::default()
        },
        ClientReply::Failed {
            invalid,
            not_applied,
            message,
        } => ForwardReply {
            error: Some(message),
            invalid,
            not_applied,
            ..ForwardReply::default()
        },
    }
}

/// The coordinator's answer a forwarded reply carries.
pub(crate) fn client_reply(reply: ForwardReply) -> ClientReply {
    match (reply.error, reply.read) {
        (Some(message), _) => ClientReply::Failed {
            invalid: reply.invalid,
            not_applied: reply.not_applied,
            message,
        },
        (None, true) => ClientReply::Read {
            values: reply.values,
            context: reply.context,
        },
        (None, false) => ClientReply::Written {
            context: reply.context,
            dot: (ActorId(reply.dot_actor), reply.dot_counter),
        },
    }
}

/// A change-feed position as the wire carries it.
pub(crate) fn feed_position(p: kv_core::FeedPosition) -> crate::proto::FeedPosition {
    crate::proto::FeedPosition {
        log: p.log,
        seq: p.seq,
        resync_after: p.resync_after,
    }
}

/// A change-feed position from the wire.
pub(crate) fn position_of(p: crate::proto::FeedPosition) -> kv_core::FeedPosition {
    kv_core::FeedPosition {
        log: p.log,
        seq: p.seq,
        resync_after: p.resync_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_kinds_survive_the_wire() {
        for kind in [
            RemoteFailure::Invalid,
            RemoteFailure::Storage,
            RemoteFailure::Corrupt,
            RemoteFailure::Refused,
            RemoteFailure::Busy,
            RemoteFailure::Internal,
        ] {
            assert_eq!(remote_failure(Some(failure_kind(kind) as i32)), kind);
        }
        // An older peer sends no kind; a newer one may send a kind this
        // build does not know.
        assert_eq!(remote_failure(None), RemoteFailure::Internal);
        assert_eq!(remote_failure(Some(99)), RemoteFailure::Internal);
        assert_eq!(
            status_failure(Code::InvalidArgument),
            RemoteFailure::Invalid
        );
        assert_eq!(status_failure(Code::ResourceExhausted), RemoteFailure::Busy);
        assert!(!status_failure(Code::PermissionDenied).is_retryable());
        assert!(status_failure(Code::Internal).is_retryable());
    }

    #[test]
    fn every_client_operation_survives_the_wire() {
        let tag = |id, retry| Some(WriteTag { id, retry });
        let ops = [
            ClientOp::Get {
                key: b"k".to_vec(),
                r: None,
            },
            ClientOp::Get {
                key: b"k".to_vec(),
                r: Some(2),
            },
            ClientOp::Put {
                key: b"k".to_vec(),
                value: Some(b"v".to_vec()),
                context: b"ctx".to_vec(),
                w: Some(3),
                write: tag(7, true),
                expires: Some(1_800_000_000),
            },
            ClientOp::Put {
                key: b"k".to_vec(),
                value: Some(Vec::new()),
                context: Vec::new(),
                w: None,
                write: tag(9, false),
                expires: None,
            },
            // A delete: no value, and no tag.
            ClientOp::Put {
                key: b"k".to_vec(),
                value: None,
                context: b"ctx".to_vec(),
                w: None,
                write: None,
                expires: None,
            },
        ];
        for op in ops {
            assert_eq!(client_op(forward_request(op.clone())), op);
        }
    }

    #[test]
    fn every_reply_survives_the_wire() {
        let replies = [
            ClientReply::Written {
                context: b"ctx".to_vec(),
                dot: (ActorId(5 << 32 | 3), 42),
            },
            ClientReply::Read {
                values: vec![b"a".to_vec(), Vec::new()],
                context: b"ctx".to_vec(),
            },
            ClientReply::Read {
                values: Vec::new(),
                context: Vec::new(),
            },
            ClientReply::Failed {
                invalid: true,
                not_applied: false,
                message: "key too long".into(),
            },
            ClientReply::Failed {
                invalid: false,
                not_applied: true,
                message: String::new(),
            },
        ];
        for reply in replies {
            assert_eq!(client_reply(forward_reply(reply.clone())), reply);
        }
    }

    #[test]
    fn zero_means_the_default_quorum_and_no_tag() {
        assert_eq!(quorum(0), None);
        assert_eq!(quorum(2), Some(2));
        assert_eq!(write_tag(0, true), None);
        assert_eq!(write_tag(3, true), Some(WriteTag { id: 3, retry: true }));
    }
}
