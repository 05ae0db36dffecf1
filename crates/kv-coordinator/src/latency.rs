//! A recent-latency average that a deadline can be derived from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The recent latency of some operation: an exponentially weighted
/// average (each sample weighs 1/8), shared between threads without a lock.
/// Used to decide when an answer is late enough to ask someone else
/// (hedged replica writes, hedged reads in the client SDK).
///
/// ```
/// use std::time::Duration;
/// use kv_coordinator::RecentLatency;
///
/// let recent = RecentLatency::default();
/// let (floor, ceiling) = (Duration::from_millis(10), Duration::from_secs(1));
/// // Before any sample: the initial guess.
/// assert_eq!(recent.scaled(4, floor, ceiling, Duration::from_millis(50)), Duration::from_millis(50));
/// recent.observe(Duration::from_millis(5));
/// assert_eq!(recent.scaled(4, floor, ceiling, Duration::from_millis(50)), Duration::from_millis(20));
/// ```
#[derive(Debug, Default)]
pub struct RecentLatency {
    /// Microseconds; 0 until the first sample.
    micros: AtomicU64,
}

impl RecentLatency {
    /// Folds one sample in.
    pub fn observe(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = self.micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old.saturating_mul(7).saturating_add(sample) / 8
        };
        self.micros.store(new, Ordering::Relaxed);
    }

    /// The average, once there is a sample.
    pub fn get(&self) -> Option<Duration> {
        match self.micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// `factor` times the average (`initial` before any sample), kept
    /// within `floor ..= ceiling` (a ceiling below the floor counts as the
    /// floor).
    pub fn scaled(
        &self,
        factor: u32,
        floor: Duration,
        ceiling: Duration,
        initial: Duration,
    ) -> Duration {
        self.get()
            .map_or(initial, |recent| recent.saturating_mul(factor))
            .clamp(floor, ceiling.max(floor))
    }
}
