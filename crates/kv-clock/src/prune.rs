//! Clock pruning policy, after Riak's `small_vclock`, `big_vclock`,
//! `young_vclock` and `old_vclock` bucket properties.

use std::time::Duration;

/// When to drop the oldest entries of a clock.
///
/// A clock with at most `small` entries is never pruned. Above that, entries
/// are considered oldest first: an entry younger than `young` stops pruning;
/// otherwise it is removed while the clock has more than `big` entries or
/// the entry is older than `old`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunePolicy {
    /// At or below this many entries nothing is pruned.
    pub small: usize,
    /// Above this many entries, any entry older than `young` is pruned.
    pub big: usize,
    /// Entries younger than this are never pruned.
    pub young: Duration,
    /// Entries older than this are pruned while above `small`.
    pub old: Duration,
}

impl Default for PrunePolicy {
    /// Riak's defaults: small 50, big 50, young 20 s, old one day.
    fn default() -> Self {
        PrunePolicy {
            small: 50,
            big: 50,
            young: Duration::from_secs(20),
            old: Duration::from_secs(86_400),
        }
    }
}

/// Why a [`PrunePolicy`] is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrunePolicyError {
    /// `big` below `small` would prune below the floor.
    #[error("prune policy: big ({big}) must be at least small ({small})")]
    BigBelowSmall {
        /// The configured small.
        small: usize,
        /// The configured big.
        big: usize,
    },
    /// `old` below `young` makes the age window empty.
    #[error("prune policy: old ({old:?}) must be at least young ({young:?})")]
    OldBelowYoung {
        /// The configured young.
        young: Duration,
        /// The configured old.
        old: Duration,
    },
    /// A floor of zero would prune every clock to nothing.
    #[error("prune policy: small must be at least 1")]
    ZeroSmall,
}

impl PrunePolicy {
    /// Checks that the thresholds are consistent.
    ///
    /// # Errors
    ///
    /// [`PrunePolicyError`] if a small limit exceeds its big one or the young
    /// age exceeds the old age.
    pub fn validate(&self) -> Result<(), PrunePolicyError> {
        if self.small == 0 {
            return Err(PrunePolicyError::ZeroSmall);
        }
        if self.big < self.small {
            return Err(PrunePolicyError::BigBelowSmall {
                small: self.small,
                big: self.big,
            });
        }
        if self.old < self.young {
            return Err(PrunePolicyError::OldBelowYoung {
                young: self.young,
                old: self.old,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_ones_are_refused() {
        PrunePolicy::default().validate().unwrap();
        let bad = PrunePolicy {
            small: 10,
            big: 5,
            ..PrunePolicy::default()
        };
        assert_eq!(
            bad.validate(),
            Err(PrunePolicyError::BigBelowSmall { small: 10, big: 5 })
        );
        let zero = PrunePolicy {
            small: 0,
            ..PrunePolicy::default()
        };
        assert_eq!(zero.validate(), Err(PrunePolicyError::ZeroSmall));
        let ages = PrunePolicy {
            young: Duration::from_secs(10),
            old: Duration::from_secs(5),
            ..PrunePolicy::default()
        };
        assert!(matches!(
            ages.validate(),
            Err(PrunePolicyError::OldBelowYoung { .. })
        ));
    }
}
