//! Members, their states, and how news about them is ordered.

use kv_core::NodeId;

/// What the cluster believes about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Answering probes.
    Alive,
    /// Missed a probe; declared dead unless it refutes in time.
    Suspect,
    /// Declared failed.
    Dead,
    /// Left gracefully.
    Left,
}

impl Status {
    fn rank(self) -> u8 {
        match self {
            Status::Alive => 0,
            Status::Suspect => 1,
            Status::Dead => 2,
            Status::Left => 3,
        }
    }

    pub(crate) fn code(self) -> u8 {
        self.rank()
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Status::Alive,
            1 => Status::Suspect,
            2 => Status::Dead,
            3 => Status::Left,
            _ => return None,
        })
    }
}

/// What a member tells others about itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Meta {
    /// Failure domain, for replica placement.
    pub zone: Option<String>,
    /// Relative capacity (virtual-node weight); 1 by default.
    pub weight: u32,
    /// Its storage refuses writes (a full disk, a failed sync): it still
    /// answers probes and reads, but others route its keys' writes to the
    /// next replica, as if it were down.
    pub unhealthy: bool,
}

/// A member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Where to reach it.
    pub addr: String,
    /// Raised by the member itself to refute suspicion.
    pub incarnation: u64,
    /// What is believed of it.
    pub status: Status,
    /// Its metadata.
    pub meta: Meta,
}

/// News about a member, piggybacked on messages.
pub type Update = Member;

/// Whether news `new` supersedes what is known, `old` (SWIM's rules):
/// a higher incarnation always wins; at the same incarnation the more
/// severe state wins (Alive < Suspect < Dead < Left). Left is final at its
/// incarnation, so stale news never brings a departed member back.
pub fn supersedes(new: &Update, old: &Member) -> bool {
    if new.incarnation != old.incarnation {
        return new.incarnation > old.incarnation;
    }
    new.status.rank() > old.status.rank()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(inc: u64, status: Status) -> Member {
        Member {
            id: NodeId(1),
            addr: "a".into(),
            incarnation: inc,
            status,
            meta: Meta::default(),
        }
    }

    #[test]
    fn swim_precedence() {
        assert!(supersedes(&m(1, Status::Suspect), &m(1, Status::Alive)));
        assert!(!supersedes(&m(1, Status::Alive), &m(1, Status::Suspect)));
        assert!(
            supersedes(&m(2, Status::Alive), &m(1, Status::Suspect)),
            "refutation"
        );
        assert!(supersedes(&m(1, Status::Dead), &m(1, Status::Suspect)));
        assert!(!supersedes(&m(1, Status::Alive), &m(1, Status::Dead)));
        assert!(
            !supersedes(&m(1, Status::Alive), &m(1, Status::Left)),
            "left stays left"
        );
        assert!(!supersedes(&m(1, Status::Dead), &m(1, Status::Left)));
        assert!(!supersedes(&m(1, Status::Suspect), &m(1, Status::Suspect)));
    }
}
