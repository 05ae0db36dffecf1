//! Bloom filters over user keys, hashed with SipHash-1-3 under fixed keys
//! (so the bits mean the same in every build). Not the `bloomfilter`
//! crate: it hashes through `std::hash::Hash`, whose bytes for a slice
//! depend on the platform's `usize` and are not promised stable across
//! compilers, so another build could misread a table's filter
//! (docs/lsm-format.md, "Filter block").
//!
//! Layout: the bit array, then one byte with the number of probes `k`.
//! Probe `i` tests bit `(h1 + i * h2) mod m` (double hashing, Kirsch and
//! Mitzenmacher), `h1` and `h2` being the halves of the 64-bit hash.

use siphasher::sip::SipHasher13;

const KEY0: u64 = 0x626c_6f6f_6d2d_6b76; // "bloom-kv"
const KEY1: u64 = 0x6669_6c74_6572_2d31; // "filter-1"

fn hash(key: &[u8]) -> (u32, u32) {
    let h = SipHasher13::new_with_keys(KEY0, KEY1).hash(key);
    (h as u32, (h >> 32) as u32 | 1)
}

/// The bit probe hash `h` tests in a filter of `m` bits: `h mod m`. With
/// `m` below 2^32 the division is done in 32 bits (the same result, and
/// cheaper); above, `h` is already below `m`.
#[inline]
fn probe_bit(h: u32, m: u64) -> usize {
    match u32::try_from(m) {
        Ok(m) => (h % m) as usize,
        Err(_) => h as usize,
    }
}

/// A key's filter hash, computed once and probed against every table a
/// point read looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyHash(u32, u32);

impl KeyHash {
    pub(crate) fn of(key: &[u8]) -> Self {
        let (h1, h2) = hash(key);
        KeyHash(h1, h2)
    }
}

/// Builds a filter from key hashes.
#[derive(Debug)]
pub(crate) struct BloomBuilder {
    bits_per_key: u32,
    hashes: Vec<(u32, u32)>,
}

impl BloomBuilder {
    pub(crate) fn new(bits_per_key: u32) -> Self {
        BloomBuilder {
            bits_per_key,
            hashes: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, key: &[u8]) {
        self.hashes.push(hash(key));
    }

    /// Appends the filter to `out`; with 0 bits per key, an empty filter
    /// that matches everything.
    pub(crate) fn finish_into(self, out: &mut Vec<u8>) {
        if self.bits_per_key == 0 {
            out.push(0);
            return;
        }
        let bits = (self.hashes.len() * self.bits_per_key as usize).max(64);
        let bytes = bits.div_ceil(8);
        let m = (bytes * 8) as u64;
        let k =
            ((f64::from(self.bits_per_key) * std::f64::consts::LN_2).round() as u32).clamp(1, 30);
        let start = out.len();
        out.resize(start + bytes, 0);
        for (h1, h2) in self.hashes {
            let mut h = h1;
            for _ in 0..k {
                let bit = probe_bit(h, m);
                out[start + bit / 8] |= 1 << (bit % 8);
                h = h.wrapping_add(h2);
            }
        }
        out.push(k as u8);
    }
}

/// A filter read back from a table.
#[derive(Debug, Clone)]
pub(crate) struct Bloom {
    bits: Vec<u8>,
    k: u32,
}

impl Bloom {
    /// Parses a filter block; `None` if the block is not a filter.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (&k, bits) = bytes.split_last()?;
        if k > 30 || (k == 0 && !bits.is_empty()) {
            return None;
        }
        Some(Bloom {
            bits: bits.to_vec(),
            k: u32::from(k),
        })
    }

    /// False only if `key` is certainly absent.
    #[cfg(test)]
    pub(crate) fn may_contain(&self, key: &[u8]) -> bool {
        self.may_contain_hash(KeyHash::of(key))
    }

    /// False only if the key hashed to `hash` is certainly absent.
    pub(crate) fn may_contain_hash(&self, hash: KeyHash) -> bool {
        if self.k == 0 || self.bits.is_empty() {
            return true;
        }
        let KeyHash(mut h, h2) = hash;
        let m = (self.bits.len() * 8) as u64;
        for _ in 0..self.k {
            let bit = probe_bit(h, m);
            if self.bits[bit / 8] & (1 << (bit % 8)) == 0 {
                return false;
            }
            h = h.wrapping_add(h2);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives() {
        let mut b = BloomBuilder::new(10);
        for i in 0..10_000u32 {
            b.add(&i.to_be_bytes());
        }
        let mut bytes = Vec::new();
        b.finish_into(&mut bytes);
        let bloom = Bloom::from_bytes(&bytes).unwrap();
        for i in 0..10_000u32 {
            assert!(bloom.may_contain(&i.to_be_bytes()));
        }
        let false_positives = (10_000..110_000u32)
            .filter(|i| bloom.may_contain(&i.to_be_bytes()))
            .count();
        let rate = false_positives as f64 / 100_000.0;
        assert!(rate < 0.015, "false positive rate {rate}");
    }

    #[test]
    fn probes_follow_the_format_h_mod_m_at_every_filter_size() {
        // docs/lsm-format.md: probe i tests bit (h1 + i * h2) mod m.
        for m in [64u64, 1_000, 1 << 31, u64::from(u32::MAX), 1 << 33] {
            for h in [0u32, 1, 63, 64, 999, 1 << 31, u32::MAX - 1, u32::MAX] {
                assert_eq!(probe_bit(h, m) as u64, u64::from(h) % m, "h {h} m {m}");
            }
        }
    }

    #[test]
    fn zero_bits_matches_everything() {
        let mut bytes = Vec::new();
        BloomBuilder::new(0).finish_into(&mut bytes);
        assert!(Bloom::from_bytes(&bytes).unwrap().may_contain(b"anything"));
        assert!(Bloom::from_bytes(&[]).is_none());
        assert!(Bloom::from_bytes(&[0xff, 99]).is_none());
    }
}
