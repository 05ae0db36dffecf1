//! Coordinator errors as gRPC statuses, in one place.

use kv_coordinator::Error;
use tonic::{Code, Status};

/// The status a client sees for a coordinator error:
/// `InvalidArgument` for bad input, `Unavailable` for missed quorums (with
/// how many acknowledged), `DeadlineExceeded` when replicas did not answer
/// in time, `Internal` for local failures. (Overload, `ResourceExhausted`,
/// is decided before a request reaches the coordinator:
/// [`InFlight`](crate::InFlight).)
pub fn to_status(err: &Error) -> Status {
    let code = match err {
        Error::InvalidInput(_) => Code::InvalidArgument,
        Error::NotReplica(_) => Code::Unavailable,
        Error::Forwarded { invalid: true, .. } => Code::InvalidArgument,
        Error::WriteQuorum {
            failed, timed_out, ..
        }
        | Error::ReadQuorum {
            failed, timed_out, ..
        } if failed.is_empty() && !timed_out.is_empty() => Code::DeadlineExceeded,
        Error::WriteQuorum { .. }
        | Error::ReadQuorum { .. }
        | Error::Forwarded { .. }
        | Error::Peer(_) => Code::Unavailable,
        Error::Storage(kv_core::StorageError::InvalidInput(_)) => Code::InvalidArgument,
        Error::Storage(kv_core::StorageError::Poisoned(_) | kv_core::StorageError::Io(_)) => {
            Code::Unavailable
        }
        _ => Code::Internal,
    };
    Status::new(code, err.to_string())
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
    }
}
