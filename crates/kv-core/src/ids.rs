//! Identifier newtypes shared by every layer.

use std::fmt;

/// The identity of a physical node in the cluster.
///
/// Node ids are small integers chosen by the operator (`node_id = 3` in a
/// node's configuration). They double as the actor ids in version vectors,
/// so small ids keep clocks small on disk and on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The raw integer.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl From<u64> for NodeId {
    fn from(raw: u64) -> Self {
        NodeId(raw)
    }
}

/// The author of versions in a vector clock: a node in one *epoch* of its
/// life.
///
/// A dot `(actor, counter)` must name one write for the life of the
/// cluster. A node's counters live in its local state, and local state can
/// go backwards (a replaced disk, a restored backup, an unsynced tail lost
/// in a crash), after which "local counter + 1" would reissue a dot that
/// other replicas already cover, and they would drop the new value. So the
/// actor is not the node alone: every start of a node takes a fresh epoch,
/// made durable before the node coordinates anything, and a node never
/// issues a dot under an epoch it has used before.
///
/// Encoded as one integer, `epoch << 32 | node`: node ids that are used as
/// actors fit in 32 bits, and epoch 0 is the plain node id (the actors of
/// clocks written before epochs existed, and of tests and simulations that
/// do not model restarts).
///
/// ```
/// use kv_core::{ActorId, NodeId};
///
/// let actor = ActorId::of(NodeId(3), 1_800_000_000).unwrap();
/// assert_eq!((actor.node(), actor.epoch()), (NodeId(3), 1_800_000_000));
/// assert_eq!(ActorId::from(NodeId(3)), ActorId::of(NodeId(3), 0).unwrap());
/// assert!(ActorId::of(NodeId(1 << 32), 1).is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ActorId(pub u64);

impl ActorId {
    /// The largest node id that can author versions.
    pub const MAX_NODE: u64 = u32::MAX as u64;

    /// Node `node` in epoch `epoch`; `None` when the node id does not fit
    /// in 32 bits (see [`ActorId::MAX_NODE`]).
    pub const fn of(node: NodeId, epoch: u32) -> Option<ActorId> {
        if node.0 > Self::MAX_NODE {
            return None;
        }
        Some(ActorId(((epoch as u64) << 32) | node.0))
    }

    /// The node.
    pub const fn node(self) -> NodeId {
        NodeId(self.0 & Self::MAX_NODE)
    }

    /// The epoch (0: the node without epochs).
    pub const fn epoch(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The raw integer.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl From<NodeId> for ActorId {
    /// The node in epoch 0 (for node ids up to [`ActorId::MAX_NODE`]).
    fn from(node: NodeId) -> Self {
        ActorId(node.0)
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.epoch() {
            0 => write!(f, "{}", self.node()),
            e => write!(f, "{}.{e}", self.node()),
        }
    }
}

/// A position on the 64-bit hash ring.
///
/// Keys are hashed to tokens; each virtual node owns the tokens from the
/// previous virtual node's token (exclusive) up to its own (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Token(pub u64);

impl Token {
    /// The smallest token.
    pub const MIN: Token = Token(0);
    /// The largest token.
    pub const MAX: Token = Token(u64::MAX);

    /// The raw integer.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// A client's name for one logical write, the same on every attempt of
/// it: a write sent again (its first attempt's answer was lost, or came too
/// late) carries the tag of the first, so the store keeps one version of it
/// whichever nodes took the attempts.
///
/// `id` is chosen by the client at random (64 bits: two writes of one key
/// never share it in practice); `retry` marks every attempt after the
/// first, the ones that may meet an earlier copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteTag {
    /// The write's identity, the same on every attempt.
    pub id: u64,
    /// Whether this is a later attempt (or a copy that met another copy).
    pub retry: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_stable() {
        assert_eq!(NodeId(7).to_string(), "n7");
        assert_eq!(Token(255).to_string(), "0x00000000000000ff");
        assert_eq!(ActorId::from(NodeId(7)).to_string(), "n7");
        assert_eq!(
            ActorId::of(NodeId(7), 12).map(|a| a.to_string()),
            Some("n7.12".into())
        );
    }

    #[test]
    fn ordering_follows_the_integer() {
        assert!(NodeId(1) < NodeId(2));
        assert!(Token::MIN < Token(1));
        assert!(Token(u64::MAX - 1) < Token::MAX);
    }
}
