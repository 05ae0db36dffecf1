//! Causal order per key for a change feed: a state is news unless what
//! was already delivered of its key covers it.

use std::collections::{HashMap, VecDeque};

use crate::VectorClock;

/// Per key, the join of the clocks of the states delivered so far: a state
/// whose clock that join covers is old news (delivered, or superseded by
/// something delivered), and a feed that drops it never moves a key
/// backwards.
///
/// It remembers at most `capacity` keys, forgetting the longest-known
/// first; a forgotten key's next state is news again.
///
/// ```
/// use kv_clock::{CausalFilter, VectorClock};
/// use kv_core::NodeId;
///
/// let mut seen = CausalFilter::new(1000);
/// let first = VectorClock::from_counters([(NodeId(1), 1)]);
/// let second = VectorClock::from_counters([(NodeId(1), 2)]);
/// assert!(seen.admit(b"k", &second));
/// // Late, and covered by what was delivered.
/// assert!(!seen.admit(b"k", &first));
/// assert!(!seen.admit(b"k", &second));
/// // Concurrent with what was delivered: news.
/// assert!(seen.admit(b"k", &VectorClock::from_counters([(NodeId(2), 1)])));
/// ```
#[derive(Debug, Clone)]
pub struct CausalFilter {
    delivered: HashMap<Vec<u8>, VectorClock>,
    order: VecDeque<Vec<u8>>,
    capacity: usize,
}

impl CausalFilter {
    /// A filter that remembers up to `capacity` keys (at least one).
    pub fn new(capacity: usize) -> Self {
        CausalFilter {
            delivered: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Whether a state of `key` with `clock` is news; if so it counts as
    /// delivered from now on.
    pub fn admit(&mut self, key: &[u8], clock: &VectorClock) -> bool {
        if let Some(seen) = self.delivered.get_mut(key) {
            if seen.descends(clock) {
                return false;
            }
            seen.merge(clock);
            return true;
        }
        if self.delivered.len() >= self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.delivered.remove(&oldest);
        }
        self.delivered.insert(key.to_vec(), clock.clone());
        self.order.push_back(key.to_vec());
        true
    }

    /// How many keys it remembers.
    pub fn len(&self) -> usize {
        self.delivered.len()
    }

    /// Whether it remembers no key.
    pub fn is_empty(&self) -> bool {
        self.delivered.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vc(pairs: &[(u64, u64)]) -> VectorClock {
        VectorClock::from_counters(pairs.iter().map(|&(n, c)| (kv_core::NodeId(n), c)))
    }

    #[test]
    fn a_key_never_moves_backwards_and_concurrent_states_both_pass() {
        let mut f = CausalFilter::new(10);
        assert!(f.admit(b"k", &vc(&[(1, 1)])));
        assert!(f.admit(b"k", &vc(&[(2, 1)])), "concurrent with the first");
        // The join of both covers a state that merged them.
        assert!(!f.admit(b"k", &vc(&[(1, 1), (2, 1)])));
        assert!(!f.admit(b"k", &vc(&[(1, 1)])));
        assert!(f.admit(b"k", &vc(&[(1, 2), (2, 1)])));
        // Other keys are their own.
        assert!(f.admit(b"j", &vc(&[(1, 1)])));
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn a_full_filter_forgets_the_longest_known_key() {
        let mut f = CausalFilter::new(2);
        for key in [b"a", b"b", b"c"] {
            assert!(f.admit(key, &vc(&[(1, 1)])));
        }
        assert_eq!(f.len(), 2);
        assert!(f.admit(b"a", &vc(&[(1, 1)])), "forgotten: news again");
        assert!(!f.admit(b"c", &vc(&[(1, 1)])));
    }
}
