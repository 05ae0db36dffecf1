//! Counters and latency histograms the server exports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets: upper bounds of 2^i microseconds, i = 0..BUCKETS.
pub const BUCKETS: usize = 24;

/// A latency histogram with power-of-two microsecond buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn record(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let bucket = (64 - micros.leading_zeros() as usize).min(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// (upper bound in microseconds, cumulative count) per bucket, then the
    /// sum of all observations in microseconds and their count.
    pub fn snapshot(&self) -> (Vec<(u64, u64)>, u64, u64) {
        let mut cumulative = 0;
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                cumulative += b.load(Ordering::Relaxed);
                (1u64 << i, cumulative)
            })
            .collect();
        (
            buckets,
            self.sum_micros.load(Ordering::Relaxed),
            self.count.load(Ordering::Relaxed),
        )
    }
}

/// One kind of request.
#[derive(Debug, Default)]
pub struct OpMetrics {
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests that failed.
    pub errors: AtomicU64,
    /// Time to answer.
    pub latency: Histogram,
}

impl OpMetrics {
    pub(crate) fn observe<T, E>(&self, elapsed: Duration, result: &Result<T, E>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.record(elapsed);
    }
}

/// Everything a coordinator counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Writes.
    pub put: OpMetrics,
    /// Reads.
    pub get: OpMetrics,
    /// Deletes.
    pub delete: OpMetrics,
    /// Writes or reads that missed their quorum.
    pub quorum_failures: AtomicU64,
    /// Replicas sent a merged state after a read.
    pub read_repairs: AtomicU64,
    /// Keys changed by anti-entropy (pulled here or pushed to a peer).
    pub keys_repaired: AtomicU64,
    /// Siblings returned by reads (a read of one value returns 1).
    pub siblings_returned: AtomicU64,
    /// Reads that returned more than one sibling.
    pub reads_with_siblings: AtomicU64,
    /// Hints delivered by this node.
    pub hints_delivered: AtomicU64,
    /// Tombstone collections left for a later pass because a replica did
    /// not confirm its reap (this node kept its tombstone).
    pub reaps_unconfirmed: AtomicU64,
    /// Tombstones this node collected as the keys' coordinator.
    pub tombstones_collected: AtomicU64,
    /// Replica writes also sent to a fallback with a hint because the
    /// replica had not answered within the hedge delay.
    pub replica_writes_hedged: AtomicU64,
    /// Reads that also asked the replicas not asked at first because those
    /// asked had not answered within the hedge delay.
    pub replica_reads_hedged: AtomicU64,
}

impl Metrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_powers_of_two() {
        let h = Histogram::default();
        h.record(Duration::from_micros(0));
        h.record(Duration::from_micros(3));
        h.record(Duration::from_millis(1));
        let (buckets, sum, count) = h.snapshot();
        assert_eq!(count, 3);
        assert_eq!(sum, 1003);
        assert_eq!(buckets[0], (1, 1));
        assert_eq!(buckets[2], (4, 2), "3 us lands at or below 4 us");
        assert_eq!(buckets[BUCKETS - 1].1, 3);
    }
}
