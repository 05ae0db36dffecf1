//! Engine options and the builder that validates them.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::fs::{FileSystem, StdFs};

/// When a write is acknowledged relative to reaching stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged only after the fsync that covers it. Concurrent writers
    /// share fsyncs (group commit).
    Always,
    /// Acknowledged once in the operating system's cache; a background
    /// thread fsyncs at this interval. A machine crash loses at most the
    /// interval; a process crash loses nothing.
    Interval(Duration),
    /// Acknowledged once in the operating system's cache; never fsynced
    /// except when a log segment is closed.
    Never,
}

/// What to do with a commit-log record that fails verification before the
/// end of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Refuse to open, naming segment and offset (the default: nothing is
    /// ever skipped silently).
    #[default]
    Strict,
    /// Keep everything before the bad record and discard it and everything
    /// after it (the operator's explicit choice after inspecting the error).
    TruncateAtCorruption,
}

/// How the engine's flush and compaction threads share the CPU with the
/// threads that read and write through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackgroundPriority {
    /// Ten nice levels below the thread that opened the engine (at most
    /// 19; Linux, where a thread has a nice value of its own): a flush or a
    /// compaction takes the CPU that reads and writes leave, instead of a
    /// fair share beside them. The default: this project's three-node
    /// cluster at half its peak load had a p99 of 41-85 ms over a run
    /// without it, 9-26 ms with it, in four alternated runs
    /// (docs/benchmarks.md).
    #[default]
    Low,
    /// As the thread that opened the engine.
    Normal,
}

/// How the commit log's syncer thread (under [`Durability::Always`]) is
/// woken beside the threads that write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncerScheduling {
    /// Scheduled as any thread: writes arriving wake the syncer at once,
    /// preempting a running thread. The default.
    #[default]
    Preempting,
    /// On Linux, `SCHED_BATCH` (the same share of the CPU, no preemption
    /// on wake-up) while the syncer waits for writes and no flush or
    /// compaction runs in the process: writes arriving do not interrupt a
    /// running thread (usually one serving other requests) to start a
    /// sync; the syncer starts it when a CPU is free or that thread's time
    /// slice ends, and the sync then covers the writes that arrived
    /// meanwhile. It syncs in the normal policy, so the writes it covers
    /// are released as soon as the sync ends, and waits in it while
    /// flushes or compactions run (lowered by [`BackgroundPriority::Low`],
    /// they would otherwise hold a CPU for whole slices).
    ///
    /// For nodes whose CPUs requests keep busy: this project's three-node
    /// cluster on two cores made half as many syncs and 14-16% more
    /// operations a second at its peak, and its median latency at half
    /// the peak fell by a quarter, but the p99 of those half-peak runs rose
    /// (a sync waits for a CPU in the seconds a flush makes busy); synced
    /// writers that wait on their syncs, the CPUs idle meanwhile, see no
    /// difference (docs/benchmarks.md).
    Yielding,
}

impl std::str::FromStr for SyncerScheduling {
    type Err = Error;

    /// `preempting` or `yielding`, as `kvd`'s `syncer` setting and
    /// `lsm-bench --syncer` spell them.
    fn from_str(text: &str) -> Result<Self> {
        match text {
            "preempting" => Ok(SyncerScheduling::Preempting),
            "yielding" => Ok(SyncerScheduling::Yielding),
            other => Err(invalid(
                "syncer_scheduling",
                format!("{other:?}: use preempting or yielding"),
            )),
        }
    }
}

/// Every tunable of the engine. Built through [`LsmEngineBuilder`](crate::LsmEngineBuilder).
#[derive(Debug, Clone)]
pub struct Options {
    /// Size at which the memtable is frozen and flushed (64 MiB).
    pub memtable_bytes: usize,
    /// When writes are acknowledged ([`Durability::Always`]).
    pub durability: Durability,
    /// Target size of a data block (4 KiB).
    pub block_bytes: usize,
    /// Bloom filter bits per key (10, about 1% false positives; 0 disables).
    pub bloom_bits_per_key: u32,
    /// Size ratio between adjacent levels (10).
    pub level_ratio: u32,
    /// Level-0 tables that trigger a compaction into level 1 (4).
    pub l0_compaction_trigger: usize,
    /// Level-0 tables at which writes stall until compaction catches up (20).
    pub l0_stop_writes_trigger: usize,
    /// Frozen memtables waiting for flush before writes stall (2).
    pub max_immutable_memtables: usize,
    /// Flushed commit-log segments kept to be overwritten by later ones
    /// instead of deleted (0). A reused segment's blocks are allocated and
    /// written already, so no zeros are written ahead of its appends; each
    /// one kept costs about a memtable of disk. A new segment reserves its
    /// space (written zeros) a sixteenth of a memtable at a time.
    pub recycle_log_segments: usize,
    /// Largest key accepted (64 KiB).
    pub max_key_bytes: usize,
    /// Largest value accepted (16 MiB).
    pub max_value_bytes: usize,
    /// Target size of level 1; level n holds `level_ratio` times level n-1
    /// (256 MiB).
    pub level1_bytes: u64,
    /// Target size of a table written by compaction (64 MiB).
    pub table_target_bytes: u64,
    /// How recovery treats a bad log record ([`RecoveryMode::Strict`]).
    pub recovery: RecoveryMode,
    /// The CPU priority of flushes and compactions
    /// ([`BackgroundPriority::Low`]).
    pub background_priority: BackgroundPriority,
    /// How the log syncer is woken ([`SyncerScheduling::Preempting`]).
    pub syncer_scheduling: SyncerScheduling,
    /// Whether flushes and compactions pace their table writes (true):
    /// each mebibyte written is handed to the disk and waited for, the
    /// steps spread until the active memtable is half full at the rate
    /// writes fill it, so that the log's syncs meet a step of table at a
    /// time instead of a whole table at its sync. Full speed whenever
    /// that could fall behind (a second memtable frozen, the active one
    /// half full, a writer stalled, a flush or compaction waited for) or
    /// protects nothing (writes not flowing).
    pub pace_background_writes: bool,
    /// The file layer (the real one unless a test injects faults).
    pub fs: Arc<dyn FileSystem>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            memtable_bytes: 64 << 20,
            durability: Durability::Always,
            block_bytes: 4 << 10,
            bloom_bits_per_key: 10,
            level_ratio: 10,
            l0_compaction_trigger: 4,
            l0_stop_writes_trigger: 20,
            max_immutable_memtables: 2,
            recycle_log_segments: 0,
            max_key_bytes: 64 << 10,
            max_value_bytes: 16 << 20,
            level1_bytes: 256 << 20,
            table_target_bytes: 64 << 20,
            recovery: RecoveryMode::Strict,
            background_priority: BackgroundPriority::Low,
            syncer_scheduling: SyncerScheduling::Preempting,
            pace_background_writes: true,
            fs: Arc::new(StdFs),
        }
    }
}

fn invalid(option: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidOption {
        option,
        reason: reason.into(),
    }
}

impl Options {
    /// Checks every option; the engine refuses to open with an invalid one.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] naming the first option out of range.
    pub fn validate(&self) -> Result<()> {
        if !(64 << 10..=4 << 30).contains(&self.memtable_bytes) {
            return Err(invalid(
                "memtable_bytes",
                format!("{} is outside 64 KiB ..= 4 GiB", self.memtable_bytes),
            ));
        }
        if let Durability::Interval(d) = self.durability
            && d.is_zero()
        {
            return Err(invalid(
                "durability",
                "an interval of zero; use Durability::Always",
            ));
        }
        if !(256..=1 << 20).contains(&self.block_bytes) {
            return Err(invalid(
                "block_bytes",
                format!("{} is outside 256 ..= 1 MiB", self.block_bytes),
            ));
        }
        if self.bloom_bits_per_key > 64 {
            return Err(invalid(
                "bloom_bits_per_key",
                format!("{} is above 64", self.bloom_bits_per_key),
            ));
        }
        if self.level_ratio < 2 {
            return Err(invalid(
                "level_ratio",
                format!("{} is below 2", self.level_ratio),
            ));
        }
        if self.l0_compaction_trigger == 0 {
            return Err(invalid("l0_compaction_trigger", "must be at least 1"));
        }
        if self.l0_stop_writes_trigger <= self.l0_compaction_trigger {
            return Err(invalid(
                "l0_stop_writes_trigger",
                format!(
                    "{} must exceed l0_compaction_trigger ({})",
                    self.l0_stop_writes_trigger, self.l0_compaction_trigger
                ),
            ));
        }
        if self.max_immutable_memtables == 0 {
            return Err(invalid("max_immutable_memtables", "must be at least 1"));
        }
        if self.recycle_log_segments > 16 {
            return Err(invalid(
                "recycle_log_segments",
                format!("{} is above 16", self.recycle_log_segments),
            ));
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > 16 << 20 {
            return Err(invalid(
                "max_key_bytes",
                format!("{} is outside 1 ..= 16 MiB", self.max_key_bytes),
            ));
        }
        if self.max_value_bytes > 1 << 30 {
            return Err(invalid(
                "max_value_bytes",
                format!("{} is above 1 GiB", self.max_value_bytes),
            ));
        }
        if self.level1_bytes < self.memtable_bytes as u64 {
            return Err(invalid(
                "level1_bytes",
                format!(
                    "{} is below memtable_bytes ({})",
                    self.level1_bytes, self.memtable_bytes
                ),
            ));
        }
        if self.table_target_bytes < 64 << 10 {
            return Err(invalid(
                "table_target_bytes",
                format!("{} is below 64 KiB", self.table_target_bytes),
            ));
        }
        Ok(())
    }
}
