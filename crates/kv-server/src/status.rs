//! Coordinator errors as gRPC statuses, in one place.

use kv_coordinator::{Error, ErrorKind};

use crate::cluster::ClusterError;
use tonic::{Code, Status};

/// The status a client sees for a coordinator error, from its
/// [`ErrorKind`]: `InvalidArgument` for bad input, `Unavailable` for missed
/// quorums (with how many acknowledged) and for a node whose engine cannot
/// serve (the client tries another), `DeadlineExceeded` when replicas did
/// not answer in time, `DataLoss` for damaged stored data, `Internal` for
/// bugs, `ResourceExhausted` for work declined while other work covers
/// it (an exchange during an operator's repair). (Client overload, also
/// `ResourceExhausted`, is decided before a request reaches the
/// coordinator: [`InFlight`](crate::InFlight).)
pub fn to_status(err: &Error) -> Status {
    let code = match err.kind() {
        ErrorKind::Invalid => Code::InvalidArgument,
        ErrorKind::Unavailable | ErrorKind::LocalStorage => Code::Unavailable,
        ErrorKind::TimedOut => Code::DeadlineExceeded,
        ErrorKind::Corrupt => Code::DataLoss,
        ErrorKind::Internal => Code::Internal,
        // The peer's transport reads it back as busy (`wire::status_failure`).
        ErrorKind::Busy => Code::ResourceExhausted,
    };
    Status::new(code, err.to_string())
}

/// The status an operator, a peer or a joining node sees for a cluster
/// error: the kinds of [`ClusterError`] as codes, a peer's own status
/// passed on, a replica's error as [`to_status`] maps it.
pub fn cluster_status(err: &ClusterError) -> Status {
    let code = match err {
        ClusterError::Invalid(_) => Code::InvalidArgument,
        ClusterError::Impersonation(_) => Code::PermissionDenied,
        ClusterError::AlreadyMember { .. } | ClusterError::Precondition(_) => {
            Code::FailedPrecondition
        }
        ClusterError::Conflict(_) => Code::Aborted,
        ClusterError::Unavailable(_) => Code::Unavailable,
        ClusterError::Peer(status) => status.code(),
        ClusterError::Replica(e) => return to_status(e),
        _ => Code::Internal,
    };
    Status::new(code, err.to_string())
}

impl From<ClusterError> for Status {
    fn from(err: ClusterError) -> Self {
        cluster_status(&err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_core::NodeId;

    #[test]
    fn codes() {
        assert_eq!(
            to_status(&Error::InvalidInput("x".into())).code(),
            Code::InvalidArgument
        );
        let quorum = Error::WriteQuorum {
            acked: 1,
            needed: 2,
            failed: vec![NodeId(2)],
            timed_out: vec![],
        };
        let status = to_status(&quorum);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("1 of 2"), "{}", status.message());
        let slow = Error::ReadQuorum {
            answered: 1,
            needed: 2,
            failed: vec![],
            timed_out: vec![NodeId(3)],
        };
        assert_eq!(to_status(&slow).code(), Code::DeadlineExceeded);
        let misrouted = Error::NotReplica(vec![NodeId(1), NodeId(2)]);
        assert_eq!(
            to_status(&misrouted).code(),
            Code::Unavailable,
            "a request that reached a non-replica may be retried elsewhere"
        );
        let poisoned = Error::Storage(kv_core::StorageError::Poisoned("disk full".into()));
        assert_eq!(to_status(&poisoned).code(), Code::Unavailable);
        let damaged = Error::Corrupt("bad varint".into());
        assert_eq!(to_status(&damaged).code(), Code::DataLoss);
        let panicked = Error::Task("the engine task: panicked".into());
        assert_eq!(to_status(&panicked).code(), Code::Internal);
        let bad = Error::Storage(kv_core::StorageError::InvalidInput("key too long".into()));
        assert_eq!(to_status(&bad).code(), Code::InvalidArgument);
        // A busy refusal reaches the asking peer as busy over gRPC, as it
        // does through a transport that keeps the error (the simulation).
        let busy = Error::Busy("an operator repair runs".into());
        assert_eq!(
            crate::wire::status_failure(to_status(&busy).code()),
            kv_core::RemoteFailure::Busy
        );
        assert!(matches!(
            busy.to_transport(NodeId(3)),
            kv_core::TransportError::Remote {
                kind: kv_core::RemoteFailure::Busy,
                ..
            }
        ));
        assert!(busy.is_retryable());
    }

    #[test]
    fn cluster_codes() {
        let cases = [
            (
                ClusterError::Invalid("no range".into()),
                Code::InvalidArgument,
            ),
            (
                ClusterError::Impersonation("gossip from 3 over 2's certificate".into()),
                Code::PermissionDenied,
            ),
            (
                ClusterError::AlreadyMember {
                    node: NodeId(2),
                    epoch: 4,
                },
                Code::FailedPrecondition,
            ),
            (ClusterError::Conflict("a newer ring".into()), Code::Aborted),
            (
                ClusterError::Unavailable("no replica".into()),
                Code::Unavailable,
            ),
            (
                ClusterError::Peer(Status::resource_exhausted("busy")),
                Code::ResourceExhausted,
            ),
            (
                ClusterError::Replica(Error::InvalidInput("bad state".into())),
                Code::InvalidArgument,
            ),
            (ClusterError::internal("ring file"), Code::Internal),
        ];
        for (err, code) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{status:?}");
            assert!(!status.message().is_empty());
        }
    }
}
