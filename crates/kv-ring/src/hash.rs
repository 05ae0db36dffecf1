//! The key hash: SipHash-1-3 with fixed keys.

use kv_core::Token;
use siphasher::sip::SipHasher13;

/// SipHash keys of the ring. Fixed forever: every process of every version
/// must place a key at the same token, or data becomes unreachable.
const KEY0: u64 = 0x6b76_2d72_696e_6721; // "kv-ring!"
const KEY1: u64 = 0x746f_6b65_6e73_3031; // "tokens01"

/// The ring position of `key`: SipHash-1-3 of the raw bytes under fixed keys.
///
/// ```
/// use kv_ring::token_of;
/// // Stable across processes and versions: this value is part of the format.
/// assert_eq!(token_of(b"hello").get(), 0xe252_f5aa_563a_e1a0);
/// assert_ne!(token_of(b"hello"), token_of(b"hellp"));
/// ```
pub fn token_of(key: &[u8]) -> Token {
    Token(SipHasher13::new_with_keys(KEY0, KEY1).hash(key))
}

/// A deterministic 64-bit mix (SplitMix64's finaliser), used to derive
/// pseudo-random token offsets from node ids without any RNG state.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers_pin_the_format() {
        // Part of the on-disk and on-wire contract: if these change, every
        // stored key moves. Never change them.
        assert_eq!(token_of(b"").get(), 0x0429_0c3c_f301_df5c);
        assert_eq!(token_of(b"hello").get(), 0xe252_f5aa_563a_e1a0);
        assert_eq!(token_of(b"user:42").get(), 0x3059_90be_112f_0fd0);
    }

    #[test]
    fn mix_spreads_small_inputs() {
        let a = mix64(1);
        let b = mix64(2);
        assert_ne!(a, b);
        assert!((a ^ b).count_ones() > 16);
    }
}
