//! The cluster's ring as it travels between nodes and as it is kept on
//! disk: an epoch and every owner's tokens.
//!
//! On disk (`<data_dir>/ring`): 8 bytes of magic `kvring\0\x01`, the CRC32C
//! of the body (u32, little endian), the body's length (u32, little
//! endian), then the body, a protobuf `RingState`. Written to `ring.tmp`,
//! synced, renamed over `ring`, and the directory synced, so a crash leaves
//! either the old ring or the new one.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;

use kv_core::{NodeId, Token};
use kv_ring::{ConsistentHashRing, NodeSpec, TokenStrategy};
use prost::Message as _;

use crate::proto::{RingMember, RingState};

const MAGIC: &[u8; 8] = b"kvring\0\x01";

/// Why a ring (from a file or a peer) was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RingStateError {
    /// Reading or writing the file failed.
    #[error("ring file: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a ring file, or are damaged.
    #[error("ring file: {0}")]
    Corrupt(String),
    /// The ring decodes but does not make sense.
    #[error("invalid ring: {0}")]
    Invalid(String),
}

/// Builds the placement ring a ring state describes, checking it: node
/// ids unique, weights and vnodes non-zero, no token claimed twice, and
/// every member owning tokens.
///
/// # Errors
///
/// [`RingStateError`] if the state does not give a valid ring (a node listed
/// twice, colliding tokens).
pub fn ring_of(state: &RingState) -> Result<ConsistentHashRing, RingStateError> {
    let invalid = |m: String| RingStateError::Invalid(m);
    if state.vnodes == 0 {
        return Err(invalid("vnodes is 0".into()));
    }
    let mut seen = BTreeSet::new();
    for m in &state.members {
        if !seen.insert(m.id) {
            return Err(invalid(format!("node {} listed twice", m.id)));
        }
        if m.tokens.is_empty() {
            return Err(invalid(format!("node {} owns no token", m.id)));
        }
        if m.addr.is_empty() {
            return Err(invalid(format!("node {} has no address", m.id)));
        }
    }
    ConsistentHashRing::from_tokens(
        state.vnodes,
        TokenStrategy::Balanced,
        state.members.iter().map(|m| {
            (
                NodeSpec {
                    id: NodeId(m.id),
                    weight: m.weight,
                    zone: m.zone.clone(),
                },
                m.tokens.iter().map(|&t| Token(t)).collect(),
            )
        }),
    )
    .map_err(|e| invalid(e.to_string()))
}

/// The state of `ring` at `epoch`, with each member's address from `addr`.
pub fn state_of(
    epoch: u64,
    ring: &ConsistentHashRing,
    addr: impl Fn(NodeId) -> String,
) -> RingState {
    RingState {
        epoch,
        vnodes: ring.vnodes(),
        members: ring
            .node_specs()
            .map(|spec| RingMember {
                id: spec.id.0,
                addr: addr(spec.id),
                zone: spec.zone.clone(),
                weight: spec.weight,
                tokens: ring.tokens_of(spec.id).into_iter().map(|t| t.0).collect(),
            })
            .collect(),
    }
}

/// The file form of a ring state.
pub fn encode_ring_file(state: &RingState) -> Vec<u8> {
    let body = state.encode_to_vec();
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a ring file; damage or garbage is an error, never a panic.
///
/// # Errors
///
/// [`RingStateError`] for bytes that are not a whole, checksummed ring file.
pub fn decode_ring_file(bytes: &[u8]) -> Result<RingState, RingStateError> {
    let corrupt = |m: &str| RingStateError::Corrupt(m.to_string());
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(corrupt("not a ring file (bad magic or too short)"));
    }
    let crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    let body = &bytes[16..];
    if body.len() != len {
        return Err(corrupt("length does not match the file (truncated?)"));
    }
    if crc32c::crc32c(body) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let state = RingState::decode(body).map_err(|e| RingStateError::Corrupt(e.to_string()))?;
    ring_of(&state)?;
    Ok(state)
}

/// Reads `<dir>/ring`, `None` if there is none yet.
///
/// # Errors
///
/// [`RingStateError`] for an I/O error or a damaged file.
pub fn load(dir: &Path) -> Result<Option<RingState>, RingStateError> {
    match std::fs::read(dir.join("ring")) {
        Ok(bytes) => decode_ring_file(&bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Replaces `<dir>/ring` atomically and durably.
///
/// # Errors
///
/// [`RingStateError`] for an I/O error.
pub fn store(dir: &Path, state: &RingState) -> Result<(), RingStateError> {
    kv_core::files::create_private_dir(dir)?;
    let tmp = dir.join("ring.tmp");
    let mut file = kv_core::files::private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(&encode_ring_file(state))?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join("ring"))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RingState {
        let ring = ConsistentHashRing::builder()
            .vnodes(8)
            .nodes((1..=3).map(NodeId))
            .build()
            .unwrap();
        state_of(7, &ring, |id| format!("127.0.0.1:{}", 7000 + id.0))
    }

    #[test]
    fn round_trip_rebuilds_the_same_ring() {
        let state = sample();
        let back = decode_ring_file(&encode_ring_file(&state)).unwrap();
        assert_eq!(back, state);
        let ring = ring_of(&back).unwrap();
        assert_eq!(ring.node_count(), 3);
        assert_eq!(
            state_of(7, &ring, |id| format!("127.0.0.1:{}", 7000 + id.0)),
            state
        );
    }

    #[test]
    fn damage_is_an_error() {
        let bytes = encode_ring_file(&sample());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(decode_ring_file(&bad).is_err(), "flip at {i} accepted");
        }
        for cut in 0..bytes.len() {
            assert!(decode_ring_file(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn nonsense_rings_are_refused() {
        let mut twice = sample();
        let first = twice.members[0].clone();
        twice.members.push(first);
        assert!(ring_of(&twice).unwrap_err().to_string().contains("twice"));
        let mut collide = sample();
        collide.members[1].tokens[0] = collide.members[0].tokens[0];
        assert!(ring_of(&collide).is_err());
        let mut none = sample();
        none.members[2].tokens.clear();
        assert!(ring_of(&none).unwrap_err().to_string().contains("no token"));
        let file = encode_ring_file(&twice);
        assert!(matches!(
            decode_ring_file(&file),
            Err(RingStateError::Invalid(_))
        ));
    }

    #[test]
    fn store_then_load() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        store(dir.path(), &sample()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(sample()));
    }
}
