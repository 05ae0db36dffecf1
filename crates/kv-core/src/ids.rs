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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_stable() {
        assert_eq!(NodeId(7).to_string(), "n7");
        assert_eq!(Token(255).to_string(), "0x00000000000000ff");
    }

    #[test]
    fn ordering_follows_the_integer() {
        assert!(NodeId(1) < NodeId(2));
        assert!(Token::MIN < Token(1));
        assert!(Token(u64::MAX - 1) < Token::MAX);
    }
}
