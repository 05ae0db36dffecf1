//! The exchange: two replicas find the buckets where their trees differ,
//! looking only into subtrees that differ.
//!
//! The initiator sends [`Compare`] messages listing (level, index, hash)
//! of some of its nodes, at most `fanout` per message, starting with the
//! root. The responder answers each with [`Differences`]: one bit per
//! listed node, set where its own hash differs. The initiator descends into
//! the children of every differing node, level by level, until the
//! differing nodes are leaves: those buckets are the result. The caller
//! then exchanges those buckets' keys.
//!
//! Traffic grows with the number of differing buckets times the depth, not
//! with the number of keys. Neither side holds the other's tree, and the
//! state machines do no I/O: the caller moves the messages.

use std::collections::VecDeque;

use kv_core::codec::{DecodeError, Reader, put_varint};

use crate::error::{Error, Result};
use crate::tree::MerkleTree;

const VERSION: u8 = 1;
const KIND_COMPARE: u8 = 1;
const KIND_DIFFERENCES: u8 = 2;
/// Deepest level a tree can have (2^24 leaves).
const MAX_LEVEL: u8 = 24;

/// One node of the initiator's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeHash {
    /// Its level (0 is the root).
    pub level: u8,
    /// Its index within the level.
    pub index: u32,
    /// The initiator's hash of it.
    pub hash: u64,
}

/// Initiator to responder: "here are some of my nodes".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// Leaf count of the initiator's tree (the trees must match).
    pub leaves: u32,
    /// The nodes to compare.
    pub nodes: Vec<NodeHash>,
}

/// Responder to initiator: for each node of the [`Compare`], whether the
/// responder's hash differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Differences {
    /// One flag per compared node, in order.
    pub differ: Vec<bool>,
}

/// An exchange message, with its wire encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A comparison request.
    Compare(Compare),
    /// Its answer.
    Differences(Differences),
}

impl Message {
    /// The compact encoding: version, kind, then for `Compare` the leaf
    /// count, the node count and each node (level byte, index varint, hash
    /// u64 LE); for `Differences` the count and a bitmap.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.push(VERSION);
        match self {
            Message::Compare(c) => {
                out.push(KIND_COMPARE);
                put_varint(&mut out, u64::from(c.leaves));
                put_varint(&mut out, c.nodes.len() as u64);
                for n in &c.nodes {
                    out.push(n.level);
                    put_varint(&mut out, u64::from(n.index));
                    out.extend_from_slice(&n.hash.to_le_bytes());
                }
            }
            Message::Differences(d) => {
                out.push(KIND_DIFFERENCES);
                put_varint(&mut out, d.differ.len() as u64);
                let mut byte = 0u8;
                for (i, &flag) in d.differ.iter().enumerate() {
                    if flag {
                        byte |= 1 << (i % 8);
                    }
                    if i % 8 == 7 {
                        out.push(byte);
                        byte = 0;
                    }
                }
                if !d.differ.len().is_multiple_of(8) {
                    out.push(byte);
                }
            }
        }
        out
    }

    /// Decodes a message; garbage gives an error, never a panic.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] for bytes that are not a whole message.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        r.version(VERSION, "message version")?;
        let kind_at = r.position();
        let message = match r.u8("message kind")? {
            KIND_COMPARE => {
                let leaves_at = r.position();
                let leaves = u32::try_from(r.varint("leaf count")?)
                    .ok()
                    .filter(|l| l.is_power_of_two() && *l <= 1 << MAX_LEVEL)
                    .ok_or(DecodeError::Invalid {
                        offset: leaves_at,
                        what: "leaf count",
                    })?;
                // Each node takes at least 10 bytes.
                let count = r.count("node count", 10)?;
                let mut nodes = Vec::with_capacity(count);
                for _ in 0..count {
                    let at = r.position();
                    let level = r.u8("node level")?;
                    let index = r.varint("node index")?;
                    if level > MAX_LEVEL || index >= 1u64 << level {
                        return Err(DecodeError::Invalid {
                            offset: at,
                            what: "node position",
                        }
                        .into());
                    }
                    let hash = r.bytes(8, "node hash")?;
                    let mut h = [0u8; 8];
                    h.copy_from_slice(hash);
                    nodes.push(NodeHash {
                        level,
                        index: index as u32,
                        hash: u64::from_le_bytes(h),
                    });
                }
                Message::Compare(Compare { leaves, nodes })
            }
            KIND_DIFFERENCES => {
                let count_at = r.position();
                let count = r.varint("flag count")?;
                let bytes_needed = usize::try_from(count.div_ceil(8))
                    .ok()
                    .filter(|&n| n <= r.remaining())
                    .ok_or(DecodeError::Invalid {
                        offset: count_at,
                        what: "flag count",
                    })?;
                let bitmap = r.bytes(bytes_needed, "flags")?;
                let count = count as usize;
                if !count.is_multiple_of(8) && bitmap.last().is_some_and(|b| b >> (count % 8) != 0)
                {
                    return Err(DecodeError::Invalid {
                        offset: count_at,
                        what: "flag padding",
                    }
                    .into());
                }
                let differ = (0..count)
                    .map(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
                    .collect();
                Message::Differences(Differences { differ })
            }
            _ => {
                return Err(DecodeError::Invalid {
                    offset: kind_at,
                    what: "message kind",
                }
                .into());
            }
        };
        r.finish()?;
        Ok(message)
    }
}

/// The responder's side: compares the listed nodes with its own tree.
///
/// # Errors
///
/// [`Error`] if the request names nodes the tree does not have or the trees
/// differ in size.
pub fn respond(tree: &MerkleTree, compare: &Compare) -> Result<Differences> {
    if compare.leaves != tree.leaves() {
        return Err(Error::SizeMismatch {
            ours: tree.leaves(),
            theirs: compare.leaves,
        });
    }
    let differ = compare
        .nodes
        .iter()
        .map(|n| {
            tree.node(u32::from(n.level), n.index)
                .map(|ours| ours != n.hash)
                .ok_or_else(|| Error::Protocol(format!("no node {} at level {}", n.index, n.level)))
        })
        .collect::<Result<Vec<bool>>>()?;
    Ok(Differences { differ })
}

/// What the initiator does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this request and feed the answer to [`Exchange::handle`].
    Send(Compare),
    /// The exchange is over: these buckets differ (ascending).
    Done(Vec<u32>),
}

/// The initiator's side of one exchange.
#[derive(Debug, Clone)]
pub struct Exchange {
    fanout: usize,
    leaves: u32,
    depth: u8,
    /// Nodes still to compare, breadth first.
    queue: VecDeque<(u8, u32)>,
    /// Nodes of the request awaiting an answer.
    outstanding: Option<Vec<(u8, u32)>>,
    differing: Vec<u32>,
    rounds: u32,
}

impl Exchange {
    /// An exchange of a tree of `leaves` buckets, comparing at most
    /// `fanout` nodes per message.
    ///
    /// # Errors
    ///
    /// [`Error`] if `leaves` is not a power of two in range or `fanout` is
    /// zero.
    pub fn new(leaves: u32, fanout: usize) -> Result<Self> {
        if fanout == 0 {
            return Err(Error::ZeroFanout);
        }
        if !leaves.is_power_of_two() || leaves > 1 << MAX_LEVEL {
            return Err(Error::InvalidLeaves(leaves));
        }
        Ok(Exchange {
            fanout,
            leaves,
            depth: leaves.trailing_zeros() as u8,
            queue: VecDeque::from([(0, 0)]),
            outstanding: None,
            differing: Vec::new(),
            rounds: 0,
        })
    }

    /// The next request, or the result. `tree` is the initiator's tree as
    /// it is now.
    ///
    /// # Errors
    ///
    /// [`Error::SizeMismatch`] if `tree` is not the size the exchange was made
    /// for.
    pub fn poll(&mut self, tree: &MerkleTree) -> Result<Step> {
        if self.outstanding.is_some() {
            return Err(Error::Protocol(
                "a request is still waiting for its answer".into(),
            ));
        }
        if tree.leaves() != self.leaves {
            return Err(Error::SizeMismatch {
                ours: tree.leaves(),
                theirs: self.leaves,
            });
        }
        if self.queue.is_empty() {
            let mut result = std::mem::take(&mut self.differing);
            result.sort_unstable();
            return Ok(Step::Done(result));
        }
        let take = self.fanout.min(self.queue.len());
        let batch: Vec<(u8, u32)> = self.queue.drain(..take).collect();
        let nodes = batch
            .iter()
            .map(|&(level, index)| NodeHash {
                level,
                index,
                hash: tree.node(u32::from(level), index).unwrap_or(0),
            })
            .collect();
        self.outstanding = Some(batch);
        self.rounds += 1;
        Ok(Step::Send(Compare {
            leaves: self.leaves,
            nodes,
        }))
    }

    /// Takes the answer to the last request.
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] for an answer that does not match the last
    /// request.
    pub fn handle(&mut self, answer: &Differences) -> Result<()> {
        let asked = self
            .outstanding
            .take()
            .ok_or_else(|| Error::Protocol("an answer without a request".into()))?;
        if asked.len() != answer.differ.len() {
            let message = format!(
                "asked about {} nodes, got {} answers",
                asked.len(),
                answer.differ.len()
            );
            self.outstanding = Some(asked);
            return Err(Error::Protocol(message));
        }
        for (&(level, index), &differs) in asked.iter().zip(&answer.differ) {
            if !differs {
                continue;
            }
            if level == self.depth {
                self.differing.push(index);
            } else {
                self.queue.push_back((level + 1, 2 * index));
                self.queue.push_back((level + 1, 2 * index + 1));
            }
        }
        Ok(())
    }

    /// Requests sent so far.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }
}

/// Runs a whole exchange between two trees in memory; returns the differing
/// buckets and the bytes both sides sent (encoded messages). For tests,
/// benchmarks and callers whose "transport" is a function call.
///
/// # Errors
///
/// [`Error`] if the trees differ in size or `fanout` is zero.
pub fn exchange_in_memory(
    ours: &MerkleTree,
    theirs: &MerkleTree,
    fanout: usize,
) -> Result<(Vec<u32>, u64)> {
    let mut exchange = Exchange::new(ours.leaves(), fanout)?;
    let mut bytes = 0u64;
    loop {
        match exchange.poll(ours)? {
            Step::Done(buckets) => return Ok((buckets, bytes)),
            Step::Send(compare) => {
                let request = Message::Compare(compare);
                let wire = request.encode();
                bytes += wire.len() as u64;
                let Message::Compare(compare) = Message::decode(&wire)? else {
                    return Err(Error::Protocol("request decoded as another kind".into()));
                };
                let answer = Message::Differences(respond(theirs, &compare)?);
                let wire = answer.encode();
                bytes += wire.len() as u64;
                let Message::Differences(answer) = Message::decode(&wire)? else {
                    return Err(Error::Protocol("answer decoded as another kind".into()));
                };
                exchange.handle(&answer)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let compare = Message::Compare(Compare {
            leaves: 1 << 15,
            nodes: vec![
                NodeHash {
                    level: 0,
                    index: 0,
                    hash: 42,
                },
                NodeHash {
                    level: 15,
                    index: (1 << 15) - 1,
                    hash: u64::MAX,
                },
            ],
        });
        assert_eq!(Message::decode(&compare.encode()).unwrap(), compare);
        for n in [0usize, 1, 7, 8, 9, 64] {
            let d = Message::Differences(Differences {
                differ: (0..n).map(|i| i % 3 == 0).collect(),
            });
            assert_eq!(Message::decode(&d.encode()).unwrap(), d);
        }
    }

    #[test]
    fn bad_messages_are_refused() {
        assert!(Message::decode(&[]).is_err());
        assert!(Message::decode(&[9, 1]).is_err());
        assert!(Message::decode(&[VERSION, 7]).is_err());
        // Leaf count 3 is not a power of two.
        assert!(Message::decode(&[VERSION, KIND_COMPARE, 3, 0]).is_err());
        // Node index 2 at level 1 does not exist.
        let mut bad = vec![VERSION, KIND_COMPARE, 4, 1, 1, 2];
        bad.extend_from_slice(&[0; 8]);
        assert!(Message::decode(&bad).is_err());
        // Padding bits set.
        assert!(Message::decode(&[VERSION, KIND_DIFFERENCES, 1, 0b10]).is_err());
        // A huge count with no bytes behind it.
        assert!(Message::decode(&[VERSION, KIND_DIFFERENCES, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn the_state_machine_refuses_misuse() {
        let tree = MerkleTree::new(8).unwrap();
        let mut ex = Exchange::new(8, 4).unwrap();
        assert!(ex.handle(&Differences { differ: vec![] }).is_err());
        let Step::Send(req) = ex.poll(&tree).unwrap() else {
            panic!("first step sends")
        };
        assert!(
            ex.poll(&tree).is_err(),
            "no second request before the answer"
        );
        assert!(
            ex.handle(&Differences {
                differ: vec![true, true]
            })
            .is_err(),
            "wrong count"
        );
        ex.handle(&respond(&tree, &req).unwrap()).unwrap();
        assert_eq!(ex.poll(&tree).unwrap(), Step::Done(vec![]));
        assert!(Exchange::new(8, 0).is_err());
        let other = MerkleTree::new(16).unwrap();
        assert!(matches!(
            respond(&other, &req),
            Err(Error::SizeMismatch { .. })
        ));
    }
}
