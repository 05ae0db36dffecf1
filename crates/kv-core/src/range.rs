//! Half-open ranges of tokens on the ring.

use std::fmt;

use crate::Token;

/// The tokens in `(start, end]`, going clockwise from `start`.
///
/// A range may wrap past `u64::MAX` back to zero. A range whose `start`
/// equals its `end` is the whole ring (a ring with a single token owns
/// everything); there is no empty range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenRange {
    /// Exclusive lower bound.
    pub start: Token,
    /// Inclusive upper bound.
    pub end: Token,
}

impl TokenRange {
    /// The range `(start, end]`.
    pub const fn new(start: Token, end: Token) -> Self {
        TokenRange { start, end }
    }

    /// The whole ring, `(end, end]`, ending at `end`.
    pub const fn full(end: Token) -> Self {
        TokenRange { start: end, end }
    }

    /// Whether this range is the whole ring.
    pub const fn is_full(&self) -> bool {
        self.start.0 == self.end.0
    }

    /// Whether `token` lies in `(start, end]`.
    pub const fn contains(&self, token: Token) -> bool {
        let (s, e, t) = (self.start.0, self.end.0, token.0);
        if s < e {
            s < t && t <= e
        } else if s > e {
            // Wraps: (s, MAX] and [0, e].
            t > s || t <= e
        } else {
            true
        }
    }

    /// The number of tokens in the range, as a `u128` so that the whole ring
    /// (2^64 tokens) is representable.
    pub const fn width(&self) -> u128 {
        if self.is_full() {
            1u128 << 64
        } else {
            self.end.0.wrapping_sub(self.start.0) as u128
        }
    }

    /// The share of the ring this range covers, in `(0, 1]`.
    pub fn fraction(&self) -> f64 {
        self.width() as f64 / (1u128 << 64) as f64
    }
}

impl fmt::Display for TokenRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {}]", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_range_bounds() {
        let r = TokenRange::new(Token(10), Token(20));
        assert!(!r.contains(Token(10)));
        assert!(r.contains(Token(11)));
        assert!(r.contains(Token(20)));
        assert!(!r.contains(Token(21)));
        assert_eq!(r.width(), 10);
    }

    #[test]
    fn wrapping_range_bounds() {
        let r = TokenRange::new(Token(u64::MAX - 2), Token(1));
        assert!(r.contains(Token(u64::MAX)));
        assert!(r.contains(Token(0)));
        assert!(r.contains(Token(1)));
        assert!(!r.contains(Token(2)));
        assert!(!r.contains(Token(u64::MAX - 2)));
        assert_eq!(r.width(), 4);
    }

    #[test]
    fn full_range_holds_everything() {
        let r = TokenRange::full(Token(42));
        assert!(r.is_full());
        for t in [0, 41, 42, 43, u64::MAX] {
            assert!(r.contains(Token(t)));
        }
        assert_eq!(r.width(), 1u128 << 64);
        assert!((r.fraction() - 1.0).abs() < f64::EPSILON);
    }
}
