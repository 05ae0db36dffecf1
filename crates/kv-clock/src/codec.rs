//! How sibling values are encoded inside a sibling set.

use kv_core::codec::{DecodeError, Reader, put_varint};

use crate::error::Result;

/// How a sibling's value is written inside an encoded [`DvvSet`](crate::DvvSet).
///
/// Implemented for raw bytes (`Vec<u8>`) and for values that may be
/// tombstones (`Option<Vec<u8>>`, `None` being the tombstone).
pub trait ValueCodec: Sized {
    /// Appends the encoding of `self`.
    fn encode_value(&self, out: &mut Vec<u8>);
    /// Reads one value, consuming exactly what `encode_value` wrote.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] for bytes that are not a value of this type.
    fn decode_value(reader: &mut Reader<'_>) -> Result<Self>;
}

impl ValueCodec for Vec<u8> {
    fn encode_value(&self, out: &mut Vec<u8>) {
        put_varint(out, self.len() as u64);
        out.extend_from_slice(self);
    }

    fn decode_value(reader: &mut Reader<'_>) -> Result<Self> {
        let len = reader.count("value length", 1)?;
        Ok(reader.bytes(len, "value bytes")?.to_vec())
    }
}

impl ValueCodec for Option<Vec<u8>> {
    fn encode_value(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(bytes) => {
                out.push(1);
                bytes.encode_value(out);
            }
        }
    }

    fn decode_value(reader: &mut Reader<'_>) -> Result<Self> {
        let offset = reader.position();
        match reader.u8("value tag")? {
            0 => Ok(None),
            1 => Ok(Some(Vec::<u8>::decode_value(reader)?)),
            _ => Err(DecodeError::Invalid {
                offset,
                what: "value tag",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_core::codec::Reader;

    #[test]
    fn option_value_tags() {
        for value in [None, Some(vec![]), Some(b"abc".to_vec())] {
            let mut out = Vec::new();
            value.encode_value(&mut out);
            let mut reader = Reader::new(&out);
            assert_eq!(Option::<Vec<u8>>::decode_value(&mut reader).unwrap(), value);
            reader.finish().unwrap();
        }
        assert!(Option::<Vec<u8>>::decode_value(&mut Reader::new(&[7])).is_err());
    }
}
