//! Cluster-wide settings of the coordinator.

use std::time::Duration;

use kv_clock::PrunePolicy;

use crate::error::{Error, Result};

/// Replication settings (Dynamo's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Replicas per key (3).
    pub n: usize,
    /// Acknowledgements a write waits for, its coordinator's included (2).
    pub w: usize,
    /// Answers a read waits for (2).
    pub r: usize,
    /// The longest any request waits (200 ms).
    pub request_timeout: Duration,
    /// Largest key accepted (64 KiB).
    pub max_key_bytes: usize,
    /// Largest value accepted (16 MiB).
    pub max_value_bytes: usize,
    /// Largest encoded state of one key, every sibling and the clock
    /// together (48 MiB): a write that would store more fails on its own,
    /// with `InvalidInput`. It must hold at least one largest value; the
    /// node sizes its engine's value limit to it, and keeps it below the
    /// wire's message limit.
    pub max_state_bytes: usize,
    /// Siblings kept per key at most; more are dropped oldest first and
    /// counted (10).
    pub max_siblings: usize,
    /// Write to the next healthy nodes, with hints, when replicas are down
    /// (sloppy quorum); off means strict quorums (true).
    pub sloppy_quorum: bool,
    /// Hints a node keeps for others at most (1,000,000).
    pub max_hints: usize,
    /// Bytes of hinted states a node keeps for others at most (1 GiB).
    pub max_hint_bytes: u64,
    /// A tombstone is collected no sooner than this after the delete, and
    /// only once every replica holds it and confirms; hints older than this
    /// are dropped unsent (a late hint could bring back a collected delete)
    /// (1 day).
    pub tombstone_grace: Duration,
    /// Wait for read repair before answering a read (false: repair after
    /// the reply).
    pub read_repair_blocking: bool,
    /// Clock pruning applied by the coordinator on every write (Riak's
    /// small/big/young/old).
    pub prune: PrunePolicy,
    /// Between anti-entropy exchanges of the maintenance task; each tick
    /// exchanges with one peer, round robin (rate limit) (10 s).
    pub anti_entropy_interval: Duration,
    /// Nodes per message in anti-entropy exchanges (256).
    pub anti_entropy_fanout: usize,
    /// Bytes of keys and states per page of an anti-entropy repair, about
    /// (1 MiB): a peer answers the differing buckets' states in pages, so
    /// no call carries or scans the whole store.
    pub anti_entropy_page_bytes: u32,
    /// Stored keys a peer looks at for one page at most (65,536).
    pub anti_entropy_page_scan: u32,
    /// How long one page (and one Merkle exchange step) may take (5 s);
    /// repair has a timeout of its own, not the client request's.
    pub anti_entropy_timeout: Duration,
    /// Keys repaired per second at most, pulled and pushed together,
    /// across every exchange of this node, so repair leaves room for
    /// clients (100,000; 0 for no limit).
    pub repair_keys_per_sec: u32,
    /// Between hint deliveries and tombstone collections (1 s).
    pub maintenance_interval: Duration,
    /// With sloppy quorum, a write waits this many times the recent
    /// replica latency for a replica before it also sends the state to a
    /// fallback with a hint, so W is met without waiting for failure
    /// detection (4).
    pub hedge_factor: u32,
    /// The shortest such wait (10 ms); the longest is half the request
    /// timeout.
    pub hedge_floor: Duration,
    /// One client request in this many is traced: its spans
    /// ([`crate::trace`]) are made (1, every one; 0, none). Spans cost
    /// only when a `tracing` subscriber takes them; a node that logs slow
    /// requests samples to bound that cost.
    pub trace_every: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            n: 3,
            w: 2,
            r: 2,
            request_timeout: Duration::from_millis(200),
            max_key_bytes: 64 << 10,
            max_value_bytes: 16 << 20,
            max_state_bytes: 48 << 20,
            max_siblings: 10,
            sloppy_quorum: true,
            max_hints: 1_000_000,
            max_hint_bytes: 1 << 30,
            tombstone_grace: Duration::from_secs(86_400),
            read_repair_blocking: false,
            prune: PrunePolicy::default(),
            anti_entropy_interval: Duration::from_secs(10),
            anti_entropy_fanout: 256,
            anti_entropy_page_bytes: 1 << 20,
            anti_entropy_page_scan: 1 << 16,
            anti_entropy_timeout: Duration::from_secs(5),
            repair_keys_per_sec: 100_000,
            maintenance_interval: Duration::from_secs(1),
            hedge_factor: 4,
            hedge_floor: Duration::from_millis(10),
            trace_every: 1,
        }
    }
}

impl Config {
    /// Checks the settings (W and R between 1 and N; W + R <= N is allowed).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the first setting out of range.
    pub fn validate(&self) -> Result<()> {
        if self.n == 0 {
            return Err(Error::InvalidInput("n must be at least 1".into()));
        }
        self.check_quorum("w", self.w)?;
        self.check_quorum("r", self.r)?;
        if self.request_timeout.is_zero() {
            return Err(Error::InvalidInput(
                "request_timeout must be positive".into(),
            ));
        }
        self.prune
            .validate()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        if self.anti_entropy_interval.is_zero()
            || self.maintenance_interval.is_zero()
            || self.anti_entropy_fanout == 0
            || self.anti_entropy_page_bytes == 0
            || self.anti_entropy_page_scan == 0
            || self.anti_entropy_timeout.is_zero()
        {
            return Err(Error::InvalidInput(
                "maintenance intervals, anti-entropy fan-out, page sizes and timeout must be positive".into(),
            ));
        }
        if self.max_state_bytes < self.max_value_bytes + self.max_key_bytes {
            return Err(Error::InvalidInput(format!(
                "max_state_bytes ({}) must hold at least one largest key and value ({} + {} bytes)",
                self.max_state_bytes, self.max_key_bytes, self.max_value_bytes
            )));
        }
        if self.max_siblings == 0 {
            return Err(Error::InvalidInput(
                "max_siblings must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The prune policy as writes apply it: its `old` age raised to the
    /// tombstone grace period, so that a retired actor's clock entry lives
    /// at least as long as a tombstone (a replica repaired within the grace
    /// period never sees a superseded value come back).
    pub fn effective_prune(&self) -> PrunePolicy {
        let mut prune = self.prune.clone();
        prune.old = prune.old.max(self.tombstone_grace);
        prune.young = prune.young.min(prune.old);
        prune
    }

    /// Checks a per-request W or R against N.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] unless `1 <= value <= n`.
    pub fn check_quorum(&self, name: &str, value: usize) -> Result<()> {
        if value == 0 || value > self.n {
            return Err(Error::InvalidInput(format!(
                "{name}={value} is out of range: it must be between 1 and n={}",
                self.n
            )));
        }
        Ok(())
    }
}
