//! Balance figures of a ring.

use crate::error::Result;
use crate::ring::ConsistentHashRing;

/// The largest value divided by the mean (1.0 is perfect balance; 0.0 for
/// no values).
pub fn max_over_mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (mut max, mut sum, mut count) = (f64::MIN, 0.0, 0usize);
    for v in values {
        max = max.max(v);
        sum += v;
        count += 1;
    }
    if count == 0 || sum <= 0.0 {
        return 0.0;
    }
    max / (sum / count as f64)
}

impl ConsistentHashRing {
    /// Max over mean of each node's primary share divided by its weight.
    pub fn balance(&self) -> f64 {
        let shares = self.ownership();
        max_over_mean(
            self.node_specs()
                .map(|s| shares[&s.id] / f64::from(s.weight)),
        )
    }

    /// Max over mean of each node's replicated share (over `n` replicas)
    /// divided by its weight.
    ///
    /// # Errors
    ///
    /// [`RingError::ZeroReplicas`](crate::RingError::ZeroReplicas) if `n` is zero.
    pub fn replicated_balance(&self, n: usize) -> Result<f64> {
        let shares = self.replicated_ownership(n)?;
        Ok(max_over_mean(
            self.node_specs()
                .map(|s| shares[&s.id] / f64::from(s.weight)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_over_mean_cases() {
        assert_eq!(max_over_mean([]), 0.0);
        assert_eq!(max_over_mean([2.0, 2.0]), 1.0);
        assert!((max_over_mean([1.0, 3.0]) - 1.5).abs() < 1e-12);
    }
}
