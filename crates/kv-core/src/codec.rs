//! Byte-level primitives shared by the on-disk and on-wire formats:
//! LEB128 varints and a bounds-checked reader whose errors name offsets.

/// Why bytes could not be decoded into a value.
///
/// Every variant names the byte offset at which decoding stopped, so a
/// corrupted record can be located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended in the middle of a field.
    #[error("unexpected end of input at byte {offset} while reading {what}")]
    Truncated {
        /// Where the missing bytes should have been.
        offset: usize,
        /// The field being read.
        what: &'static str,
    },
    /// A varint ran past ten bytes or past `u64::MAX`.
    #[error("varint at byte {offset} overflows 64 bits")]
    VarintOverflow {
        /// Where the varint started.
        offset: usize,
    },
    /// The format version byte is not one this build understands.
    #[error("unknown encoding version {version} at byte {offset}")]
    UnknownVersion {
        /// Where the version byte is.
        offset: usize,
        /// The version found.
        version: u8,
    },
    /// A field holds a value the format forbids (for example a zero counter,
    /// actors out of order, or a sibling whose dot the context does not cover).
    #[error("invalid {what} at byte {offset}")]
    Invalid {
        /// Where the offending field starts.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// Bytes were left over after a complete value.
    #[error("{count} trailing bytes after the encoded value at byte {offset}")]
    TrailingBytes {
        /// Where the trailing bytes begin.
        offset: usize,
        /// How many there are.
        count: usize,
    },
}

/// `Result` with [`DecodeError`].
pub type DecodeResult<T> = std::result::Result<T, DecodeError>;

type Result<T> = DecodeResult<T>;

/// Appends `value` as an unsigned LEB128 varint (1 to 10 bytes).
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A cursor over encoded bytes that reports offsets in its errors.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    /// The offset of the next byte to read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Reads one byte.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] if the input ends first.
    pub fn u8(&mut self, what: &'static str) -> Result<u8> {
        let byte = *self.bytes.get(self.pos).ok_or(DecodeError::Truncated {
            offset: self.pos,
            what,
        })?;
        self.pos += 1;
        Ok(byte)
    }

    /// Reads a format's version byte, refusing any version but `expected`.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] if the input ends first or the byte is not `expected`.
    pub fn version(&mut self, expected: u8, what: &'static str) -> Result<()> {
        let offset = self.pos;
        let version = self.u8(what)?;
        if version != expected {
            return Err(DecodeError::UnknownVersion { offset, version });
        }
        Ok(())
    }

    /// Reads an unsigned LEB128 varint.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] if the input ends inside the varint or it overflows 64
    /// bits.
    pub fn varint(&mut self, what: &'static str) -> Result<u64> {
        let start = self.pos;
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = self.u8(what)?;
            let low = u64::from(byte & 0x7f);
            // The tenth byte may only carry the top bit of a u64.
            if shift == 63 && low > 1 {
                return Err(DecodeError::VarintOverflow { offset: start });
            }
            value |= low << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintOverflow { offset: start })
    }

    /// Reads a varint that counts items each at least `min_item_bytes` long,
    /// refusing counts the remaining input cannot hold (so garbage can never
    /// make the decoder allocate a huge vector).
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] if the count does not decode or the rest of the input
    /// cannot hold that many items of `min_item_bytes`.
    pub fn count(&mut self, what: &'static str, min_item_bytes: usize) -> Result<usize> {
        let offset = self.pos;
        let raw = self.varint(what)?;
        let fits = usize::try_from(raw)
            .ok()
            .filter(|&n| n.saturating_mul(min_item_bytes.max(1)) <= self.remaining());
        fits.ok_or(DecodeError::Invalid { offset, what })
    }

    /// Reads `len` raw bytes.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] if fewer than `len` bytes remain.
    pub fn bytes(&mut self, len: usize, what: &'static str) -> Result<&'a [u8]> {
        if len > self.remaining() {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                what,
            });
        }
        let slice = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(slice)
    }

    /// Fails unless every byte has been consumed.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] if bytes remain after the value.
    pub fn finish(&self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                offset: self.pos,
                count,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_accepts_only_the_expected_byte_and_reports_where() {
        let mut r = Reader::new(&[7, 1]);
        r.u8("pad").unwrap();
        assert!(matches!(
            r.version(2, "v"),
            Err(DecodeError::UnknownVersion {
                offset: 1,
                version: 1
            })
        ));
        let mut r = Reader::new(&[2]);
        r.version(2, "v").unwrap();
        assert_eq!(r.remaining(), 0);
        assert!(matches!(
            Reader::new(&[]).version(2, "v"),
            Err(DecodeError::Truncated { offset: 0, .. })
        ));
    }

    #[test]
    fn varint_round_trips_at_the_edges() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut reader = Reader::new(&out);
            assert_eq!(reader.varint("v").unwrap(), value);
            reader.finish().unwrap();
        }
    }

    #[test]
    fn varint_sizes() {
        let size = |v| {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            out.len()
        };
        assert_eq!(size(127), 1);
        assert_eq!(size(128), 2);
        assert_eq!(size(u64::MAX), 10);
    }

    #[test]
    fn overlong_varint_is_refused() {
        let eleven = [0xffu8; 11];
        assert_eq!(
            Reader::new(&eleven).varint("v"),
            Err(DecodeError::VarintOverflow { offset: 0 })
        );
        // Ten bytes whose last carries more than the top bit of a u64.
        let mut ten = [0xffu8; 10];
        ten[9] = 0x02;
        assert!(matches!(
            Reader::new(&ten).varint("v"),
            Err(DecodeError::VarintOverflow { .. })
        ));
    }

    #[test]
    fn counts_that_cannot_fit_are_refused() {
        let mut out = Vec::new();
        put_varint(&mut out, 1_000_000);
        out.extend_from_slice(&[0; 10]);
        assert!(matches!(
            Reader::new(&out).count("n", 2),
            Err(DecodeError::Invalid { .. })
        ));
    }
}
