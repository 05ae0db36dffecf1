//! The change feed's vocabulary: where a watcher is in each node's log of
//! changes ([`FeedPosition`], [`FeedCursor`]), what it asks a node
//! ([`FeedQuery`]) and what it gets back ([`FeedPage`]).
//!
//! Each node keeps a bounded, in-memory log of the changes to its stored
//! states while someone watches. A position names one log (`log`, fresh
//! every time a node starts or its log restarts after nobody watched) and
//! the last change taken from it (`seq`). A node that cannot serve a
//! position (another log, or changes it no longer holds) resends the
//! current state of the watched keys instead: a *resync*, paged by key,
//! after which the watcher continues from the log.

use std::collections::BTreeMap;

use crate::NodeId;
use crate::codec::{DecodeError, DecodeResult, Reader, put_varint};

/// Where a watcher is in one node's change log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FeedPosition {
    /// The log (0 is no log: a node asked with it resyncs).
    pub log: u64,
    /// The last change of `log` taken.
    pub seq: u64,
    /// While resending the current states (a resync): the last key resent,
    /// empty before the first. `None` when not resyncing.
    pub resync_after: Option<Vec<u8>>,
}

impl FeedPosition {
    /// A position no node can serve: asking with it starts a resync.
    pub fn resync() -> Self {
        FeedPosition::default()
    }
}

/// What a watcher asks one node for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedQuery {
    /// Keys that start with these bytes (every key when empty)...
    pub prefix: Vec<u8>,
    /// ...or, when set, only the key equal to `prefix`.
    pub exact: bool,
    /// Where the watcher is; `None` to start at the log's end (a new
    /// watch: the changes from now on).
    pub at: Option<FeedPosition>,
    /// How long the node may wait for a change before answering with none.
    pub wait_ms: u32,
    /// About how many bytes of keys and states one page may hold (at least
    /// one change is always sent).
    pub max_bytes: u32,
}

impl FeedQuery {
    /// Whether `key` is one of the watched keys.
    pub fn matches(&self, key: &[u8]) -> bool {
        if self.exact {
            key == self.prefix.as_slice()
        } else {
            key.starts_with(&self.prefix)
        }
    }
}

/// One node's answer to a [`FeedQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FeedPage {
    /// Changed keys and their encoded states (`kv_clock::DvvSet` bytes)
    /// after the change, oldest first; or, in a resync, the current states
    /// in key order.
    pub changes: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether `changes` are resent current states (a resync).
    pub resync: bool,
    /// Where to ask next: everything up to it has been sent.
    pub position: FeedPosition,
}

/// Where a watcher is in every node's log: what a client resumes a watch
/// from. Nodes it holds no position for are resynced when reached.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FeedCursor {
    positions: BTreeMap<NodeId, FeedPosition>,
}

const CURSOR_VERSION: u8 = 1;
/// Node, log, seq and the resync tag take at least this many bytes.
const MIN_POSITION_BYTES: usize = 1 + 8 + 1 + 1;

impl FeedCursor {
    /// A cursor without positions.
    pub fn new() -> Self {
        Self::default()
    }

    /// The position at `node`, if any.
    pub fn get(&self, node: NodeId) -> Option<&FeedPosition> {
        self.positions.get(&node)
    }

    /// Records where the watcher is at `node`.
    pub fn set(&mut self, node: NodeId, position: FeedPosition) {
        self.positions.insert(node, position);
    }

    /// Whether no node has a position.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// The nodes with a position and where the watcher is at each.
    pub fn positions(&self) -> impl Iterator<Item = (NodeId, &FeedPosition)> {
        self.positions.iter().map(|(n, p)| (*n, p))
    }

    /// The cursor's bytes (what clients hold and send back).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![CURSOR_VERSION];
        put_varint(&mut out, self.positions.len() as u64);
        for (node, p) in &self.positions {
            put_varint(&mut out, node.0);
            out.extend_from_slice(&p.log.to_le_bytes());
            put_varint(&mut out, p.seq);
            match &p.resync_after {
                None => out.push(0),
                Some(key) => {
                    out.push(1);
                    put_varint(&mut out, key.len() as u64);
                    out.extend_from_slice(key);
                }
            }
        }
        out
    }

    /// Decodes [`to_bytes`](Self::to_bytes).
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] for bytes that are not a cursor: another version,
    /// a cut or padded encoding, nodes out of order or repeated, an unknown
    /// resync tag.
    pub fn from_bytes(bytes: &[u8]) -> DecodeResult<Self> {
        let mut r = Reader::new(bytes);
        r.version(CURSOR_VERSION, "cursor version")?;
        let count = r.count("position count", MIN_POSITION_BYTES)?;
        let mut positions = BTreeMap::new();
        let mut previous: Option<u64> = None;
        for _ in 0..count {
            let offset = r.position();
            let node = r.varint("node")?;
            if previous.is_some_and(|p| p >= node) {
                return Err(DecodeError::Invalid {
                    offset,
                    what: "nodes not ascending",
                });
            }
            previous = Some(node);
            let log = r.bytes(8, "log")?;
            let log = u64::from_le_bytes([
                log[0], log[1], log[2], log[3], log[4], log[5], log[6], log[7],
            ]);
            let seq = r.varint("seq")?;
            let offset = r.position();
            let resync_after = match r.u8("resync tag")? {
                0 => None,
                1 => {
                    let len = r.count("resync key length", 1)?;
                    Some(r.bytes(len, "resync key")?.to_vec())
                }
                _ => {
                    return Err(DecodeError::Invalid {
                        offset,
                        what: "resync tag",
                    });
                }
            };
            positions.insert(
                NodeId(node),
                FeedPosition {
                    log,
                    seq,
                    resync_after,
                },
            );
        }
        r.finish()?;
        Ok(FeedCursor { positions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FeedCursor {
        let mut c = FeedCursor::new();
        c.set(
            NodeId(1),
            FeedPosition {
                log: u64::MAX,
                seq: 300,
                resync_after: None,
            },
        );
        c.set(
            NodeId(7),
            FeedPosition {
                log: 5,
                seq: 0,
                resync_after: Some(b"key".to_vec()),
            },
        );
        c.set(
            NodeId(9),
            FeedPosition {
                log: 6,
                seq: 1,
                resync_after: Some(Vec::new()),
            },
        );
        c
    }

    #[test]
    fn a_cursor_survives_its_bytes() {
        let c = sample();
        assert_eq!(FeedCursor::from_bytes(&c.to_bytes()).unwrap(), c);
        let empty = FeedCursor::new();
        assert_eq!(FeedCursor::from_bytes(&empty.to_bytes()).unwrap(), empty);
    }

    #[test]
    fn every_cut_and_every_flipped_byte_is_an_error_or_a_cursor_never_a_panic() {
        let bytes = sample().to_bytes();
        for cut in 0..bytes.len() {
            assert!(
                FeedCursor::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                if let Ok(c) = FeedCursor::from_bytes(&b) {
                    assert_eq!(FeedCursor::from_bytes(&c.to_bytes()).unwrap(), c);
                }
            }
        }
    }

    #[test]
    fn garbage_is_refused_with_where() {
        let mut padded = sample().to_bytes();
        padded.push(0);
        assert!(matches!(
            FeedCursor::from_bytes(&padded),
            Err(DecodeError::TrailingBytes { .. })
        ));
        assert!(matches!(
            FeedCursor::from_bytes(&[2, 0]),
            Err(DecodeError::UnknownVersion { version: 2, .. })
        ));
        // Two positions for one node.
        let mut twice = vec![CURSOR_VERSION, 2];
        for _ in 0..2 {
            twice.push(3);
            twice.extend_from_slice(&1u64.to_le_bytes());
            twice.extend_from_slice(&[4, 0]);
        }
        assert!(matches!(
            FeedCursor::from_bytes(&twice),
            Err(DecodeError::Invalid {
                what: "nodes not ascending",
                ..
            })
        ));
        // A resync tag that is neither 0 nor 1.
        let mut tag = vec![CURSOR_VERSION, 1, 3];
        tag.extend_from_slice(&1u64.to_le_bytes());
        tag.extend_from_slice(&[4, 2]);
        assert!(matches!(
            FeedCursor::from_bytes(&tag),
            Err(DecodeError::Invalid {
                what: "resync tag",
                ..
            })
        ));
        // A count the input cannot hold is refused before allocating.
        assert!(FeedCursor::from_bytes(&[CURSOR_VERSION, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn an_exact_query_matches_its_key_only() {
        let q = |exact| FeedQuery {
            prefix: b"user/1".to_vec(),
            exact,
            at: None,
            wait_ms: 0,
            max_bytes: 1,
        };
        assert!(q(false).matches(b"user/1"));
        assert!(q(false).matches(b"user/10"));
        assert!(!q(false).matches(b"user/"));
        assert!(q(true).matches(b"user/1"));
        assert!(!q(true).matches(b"user/10"));
    }
}
