//! Data and index blocks: prefix-compressed entries with restart points.
//!
//! An entry is `shared varint | unshared varint | value_len varint |
//! trailer varint | key bytes past the shared prefix | value bytes`, where
//! `trailer = seq << 8 | kind` (kind 1 put, 0 delete). Every
//! [`RESTART_INTERVAL`]th entry stores its whole key (shared = 0); the block
//! ends with the restart offsets (u32 LE each) and their count (u32 LE).
//! On disk each block is followed by its CRC32C (u32 LE).

use std::ops::Range;

use kv_core::codec::{DecodeError, DecodeResult, Reader, put_varint};

use crate::iter::compare_versions;

/// Entries between two full keys.
pub(crate) const RESTART_INTERVAL: usize = 16;

/// Kind of a put in a trailer.
pub(crate) const KIND_PUT: u64 = 1;
/// Kind of a tombstone in a trailer.
pub(crate) const KIND_DELETE: u64 = 0;

/// Builds one block.
#[derive(Debug, Default)]
pub(crate) struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    last_key: Vec<u8>,
    entries: usize,
}

impl BlockBuilder {
    pub(crate) fn add(&mut self, key: &[u8], seq: u64, value: Option<&[u8]>) {
        let shared = if self.entries.is_multiple_of(RESTART_INTERVAL) {
            self.restarts.push(self.buf.len() as u32);
            0
        } else {
            self.last_key
                .iter()
                .zip(key)
                .take_while(|(a, b)| a == b)
                .count()
        };
        let (kind, value) = match value {
            Some(v) => (KIND_PUT, v),
            None => (KIND_DELETE, &[][..]),
        };
        put_varint(&mut self.buf, shared as u64);
        put_varint(&mut self.buf, (key.len() - shared) as u64);
        put_varint(&mut self.buf, value.len() as u64);
        put_varint(&mut self.buf, seq << 8 | kind);
        self.buf.extend_from_slice(&key[shared..]);
        self.buf.extend_from_slice(value);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.entries += 1;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Bytes the finished block will take.
    pub(crate) fn estimated_size(&self) -> usize {
        self.buf.len() + 4 * self.restarts.len() + 4
    }

    pub(crate) fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// Appends the finished block to `out` and resets the builder.
    pub(crate) fn finish_into(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.buf);
        for r in &self.restarts {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        self.buf.clear();
        self.restarts.clear();
        self.last_key.clear();
        self.entries = 0;
    }
}

/// A position inside one block's bytes. The bytes are passed to every call,
/// so a cursor can live next to whatever owns them.
#[derive(Debug, Clone, Default)]
pub(crate) struct BlockCursor {
    /// Where the entries end (the restart array begins).
    entries_end: usize,
    restarts_at: usize,
    restart_count: usize,
    /// Offset of the next entry to decode.
    next: usize,
    pub(crate) key: Vec<u8>,
    pub(crate) seq: u64,
    pub(crate) is_put: bool,
    pub(crate) value: Range<usize>,
    pub(crate) valid: bool,
}

fn u32_at(data: &[u8], at: usize) -> DecodeResult<u32> {
    let bytes = data.get(at..at + 4).ok_or(DecodeError::Truncated {
        offset: at,
        what: "block restart",
    })?;
    let mut b = [0u8; 4];
    b.copy_from_slice(bytes);
    Ok(u32::from_le_bytes(b))
}

impl BlockCursor {
    /// A cursor before the first entry of `data` (a whole block without
    /// its checksum).
    pub(crate) fn new(data: &[u8]) -> DecodeResult<Self> {
        if data.len() < 4 {
            return Err(DecodeError::Truncated {
                offset: 0,
                what: "block restart count",
            });
        }
        let restart_count = u32_at(data, data.len() - 4)? as usize;
        let restarts_bytes = restart_count
            .checked_mul(4)
            .filter(|&n| n + 4 <= data.len())
            .ok_or(DecodeError::Invalid {
                offset: data.len() - 4,
                what: "block restart count",
            })?;
        let restarts_at = data.len() - 4 - restarts_bytes;
        if restart_count == 0 && restarts_at != 0 {
            return Err(DecodeError::Invalid {
                offset: data.len() - 4,
                what: "block without restarts has entries",
            });
        }
        for i in 0..restart_count {
            let r = u32_at(data, restarts_at + 4 * i)? as usize;
            if r >= restarts_at.max(1) {
                return Err(DecodeError::Invalid {
                    offset: restarts_at + 4 * i,
                    what: "block restart offset",
                });
            }
        }
        Ok(BlockCursor {
            entries_end: restarts_at,
            restarts_at,
            restart_count,
            next: 0,
            ..BlockCursor::default()
        })
    }

    fn restart(&self, data: &[u8], i: usize) -> DecodeResult<usize> {
        Ok(u32_at(data, self.restarts_at + 4 * i)? as usize)
    }

    /// Decodes the entry at `self.next`, making it current.
    fn decode_next(&mut self, data: &[u8]) -> DecodeResult<()> {
        if self.next >= self.entries_end {
            self.valid = false;
            return Ok(());
        }
        let mut reader = Reader::new(&data[..self.entries_end]);
        reader.bytes(self.next, "entry offset")?;
        let at = self.next;
        let shared = reader.varint("shared key length")? as usize;
        let unshared = reader.count("key length", 1)?;
        let value_len = reader.count("value length", 1)?;
        let trailer = reader.varint("trailer")?;
        if shared > self.key.len() {
            return Err(DecodeError::Invalid {
                offset: at,
                what: "shared key prefix longer than the previous key",
            });
        }
        let kind = trailer & 0xff;
        if kind > KIND_PUT {
            return Err(DecodeError::Invalid {
                offset: at,
                what: "entry kind",
            });
        }
        let delta = reader.bytes(unshared, "key")?;
        let value_start = reader.position();
        reader.bytes(value_len, "value")?;
        self.key.truncate(shared);
        self.key.extend_from_slice(delta);
        self.seq = trailer >> 8;
        self.is_put = kind == KIND_PUT;
        self.value = value_start..value_start + value_len;
        self.next = reader.position();
        self.valid = true;
        Ok(())
    }

    /// Moves to the first entry.
    pub(crate) fn seek_first(&mut self, data: &[u8]) -> DecodeResult<()> {
        self.key.clear();
        self.valid = false;
        self.next = 0;
        self.decode_next(data)
    }

    /// Moves to the next entry.
    pub(crate) fn advance(&mut self, data: &[u8]) -> DecodeResult<()> {
        self.decode_next(data)
    }

    /// Moves to the first entry at or after `(key, seq)` in version order.
    pub(crate) fn seek(&mut self, data: &[u8], key: &[u8], seq: u64) -> DecodeResult<()> {
        // Binary search for the last restart whose key is before the target.
        let (mut lo, mut hi) = (0usize, self.restart_count);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            self.key.clear();
            self.valid = false;
            self.next = self.restart(data, mid)?;
            self.decode_next(data)?;
            if compare_versions(&self.key, self.seq, key, seq).is_lt() {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.key.clear();
        self.valid = false;
        self.next = if self.restart_count == 0 {
            0
        } else {
            self.restart(data, lo)?
        };
        self.decode_next(data)?;
        while self.valid && compare_versions(&self.key, self.seq, key, seq).is_lt() {
            self.decode_next(data)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Case = (Vec<u8>, u64, Option<Vec<u8>>);

    fn build(entries: &[Case]) -> Vec<u8> {
        let mut b = BlockBuilder::default();
        for (k, s, v) in entries {
            b.add(k, *s, v.as_deref());
        }
        let mut out = Vec::new();
        b.finish_into(&mut out);
        out
    }

    fn entries(n: u32) -> Vec<Case> {
        (0..n)
            .map(|i| {
                let value = if i % 7 == 0 {
                    None
                } else {
                    Some(i.to_le_bytes().to_vec())
                };
                (
                    format!("key{:05}", i / 2).into_bytes(),
                    u64::from(1000 - i % 2),
                    value,
                )
            })
            .collect()
    }

    #[test]
    fn iterates_every_entry() {
        let es = entries(100);
        let data = build(&es);
        let mut c = BlockCursor::new(&data).unwrap();
        c.seek_first(&data).unwrap();
        for (k, s, v) in &es {
            assert!(c.valid);
            assert_eq!(&c.key, k);
            assert_eq!(c.seq, *s);
            assert_eq!(c.is_put, v.is_some());
            if let Some(v) = v {
                assert_eq!(&data[c.value.clone()], &v[..]);
            }
            c.advance(&data).unwrap();
        }
        assert!(!c.valid);
    }

    #[test]
    fn seek_finds_the_first_version_at_or_after() {
        let es = entries(100);
        let data = build(&es);
        let mut c = BlockCursor::new(&data).unwrap();
        for (i, (k, s, _)) in es.iter().enumerate() {
            c.seek(&data, k, *s).unwrap();
            assert_eq!((&c.key, c.seq), (k, *s), "entry {i}");
            // A read sequence below this version's lands on the next one.
            c.seek(&data, k, s - 1).unwrap();
            if let Some((nk, ns, _)) = es
                .iter()
                .find(|(nk, ns, _)| compare_versions(nk, *ns, k, s - 1).is_ge())
            {
                assert_eq!((&c.key, c.seq), (nk, *ns));
            } else {
                assert!(!c.valid);
            }
        }
        c.seek(&data, b"zzz", u64::MAX).unwrap();
        assert!(!c.valid);
        c.seek(&data, b"", u64::MAX).unwrap();
        assert_eq!(c.key, es[0].0);
    }

    #[test]
    fn garbage_never_panics() {
        let data = build(&entries(40));
        let mut state = 7u64;
        for round in 0..2000 {
            let mut bytes = data.clone();
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = (state >> 33) as usize % bytes.len();
            bytes[at] ^= (state >> 13) as u8 | 1;
            let cut = if round % 3 == 0 {
                (state >> 40) as usize % (bytes.len() + 1)
            } else {
                bytes.len()
            };
            let bytes = &bytes[..cut];
            if let Ok(mut c) = BlockCursor::new(bytes) {
                let _ = c.seek(bytes, b"key00010", 5);
                if c.seek_first(bytes).is_ok() {
                    for _ in 0..100 {
                        if !c.valid || c.advance(bytes).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }
}
