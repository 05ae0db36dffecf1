//! The builder that configures and opens an engine.

use std::path::PathBuf;
use std::sync::Arc;

use super::LsmEngine;
use crate::error::Result;
use crate::fs::FileSystem;
use crate::options::{BackgroundPriority, Durability, Options, RecoveryMode, SyncerScheduling};

/// Configures and opens an [`LsmEngine`] (a consuming builder).
///
/// ```
/// use kv_lsm::{Durability, LsmEngine};
/// let dir = tempfile::tempdir()?;
/// let engine = LsmEngine::builder(dir.path())
///     .memtable_bytes(4 << 20)
///     .durability(Durability::Never)
///     .open()?;
/// # drop(engine);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until open() is called"]
pub struct LsmEngineBuilder {
    path: PathBuf,
    options: Options,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.options.$name = value;
            self
        }
    };
}

impl LsmEngineBuilder {
    pub(crate) fn new(path: impl Into<PathBuf>) -> Self {
        LsmEngineBuilder {
            path: path.into(),
            options: Options::default(),
        }
    }

    /// Replaces every option at once.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    setter!(/// Memtable size before flush.
        memtable_bytes: usize);
    setter!(/// When writes are acknowledged.
        durability: Durability);
    setter!(/// Target data block size.
        block_bytes: usize);
    setter!(/// Bloom filter bits per key.
        bloom_bits_per_key: u32);
    setter!(/// Size ratio between levels.
        level_ratio: u32);
    setter!(/// Level-0 tables that trigger compaction.
        l0_compaction_trigger: usize);
    setter!(/// Level-0 tables at which writes stall.
        l0_stop_writes_trigger: usize);
    setter!(/// Frozen memtables before writes stall.
        max_immutable_memtables: usize);
    setter!(/// Flushed log segments kept for reuse.
        recycle_log_segments: usize);

    setter!(/// Largest key accepted.
        max_key_bytes: usize);
    setter!(/// Largest value accepted.
        max_value_bytes: usize);
    setter!(/// Target size of level 1.
        level1_bytes: u64);
    setter!(/// Target size of compaction output tables.
        table_target_bytes: u64);
    setter!(/// How recovery treats a bad log record.
        recovery: RecoveryMode);
    setter!(/// The CPU priority of flushes and compactions.
        background_priority: BackgroundPriority);
    setter!(/// How the log syncer is woken.
        syncer_scheduling: SyncerScheduling);
    setter!(/// Whether flushes and compactions pace their table writes.
        pace_background_writes: bool);
    setter!(/// The file layer.
        fs: Arc<dyn FileSystem>);

    /// Validates the options, recovers the directory (creating it if
    /// needed) and starts the background threads.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`](crate::Error::InvalidOption) for bad options; I/O errors; [`Error::Locked`](crate::Error::Locked)
    /// if another engine holds the directory; a corruption error naming segment
    /// and offset if the commit log is damaged before its end (see
    /// [`RecoveryMode`]).
    pub fn open(self) -> Result<LsmEngine> {
        self.options.validate()?;
        LsmEngine::open_with(self.path, self.options)
    }
}
