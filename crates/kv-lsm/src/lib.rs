//! A crash-safe LSM storage engine: commit log, memtable, sorted tables
//! with bloom filters, leveled compaction.
//!
//! `kv-lsm` is the per-replica store of the kv database and a product of
//! its own: it depends on nothing of the workspace but `kv-core` and on no
//! async runtime, so any Rust program can embed it. It is a key-value map
//! of bytes to bytes with atomic batches and point-in-time scans; it is not
//! a database with transactions, column families or secondary indexes.
//!
//! - [`LsmEngine`] (open with [`LsmEngine::builder`]): implements
//!   [`kv_core::StorageEngine`].
//! - [`Durability`]: `Always` (acknowledged after the fsync that covers the
//!   write; concurrent writers share fsyncs), `Interval` or `Never`.
//! - [`RecoveryMode`]: a damaged log record before the end of the log stops
//!   the open with an error naming segment and offset, unless the operator
//!   chooses to truncate there. A torn tail is always truncated.
//! - [`FileSystem`], [`FaultFs`]: the file layer, with fault injection.
//!
//! After a failed fsync the engine is poisoned: it refuses writes (reads
//! still work) until reopened, since what reached the disk is unknown.
//!
//! The byte-level formats of log, tables and manifest are in
//! `docs/lsm-format.md`.
//!
//! ```
//! use std::ops::Bound;
//! use kv_core::{StorageEngine, WriteBatch};
//! use kv_lsm::LsmEngine;
//!
//! let dir = tempfile::tempdir()?;
//! let engine = LsmEngine::builder(dir.path()).open()?;
//! let mut batch = WriteBatch::new();
//! batch.put(b"apple", b"red").put(b"banana", b"yellow").delete(b"cherry");
//! engine.write(batch)?; // atomic, durable when it returns
//! let fruit: Vec<_> = engine
//!     .scan(Bound::Included(b"a"), Bound::Excluded(b"c"))?
//!     .collect::<Result<_, _>>()?;
//! assert_eq!(fruit.len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod engine;
mod error;
mod fs;
mod iter;
mod log;
mod manifest;
mod memtable;
mod options;
mod table;
mod version;

pub use engine::{Checkpoint, EngineStats, LsmEngine, LsmEngineBuilder};
pub use error::{Error, Result};
pub use fs::{DiskSpace, FaultFs, FileSystem, StdFs, WritableFile, disk_space};
pub use options::{BackgroundPriority, Durability, Options, RecoveryMode, SyncerScheduling};

/// The engine's interface and batch type, from `kv-core`, so a program
/// that embeds the engine needs no other crate.
pub use kv_core::{BatchOp, ScanIter, SeqNo, StorageEngine, StorageError, WriteBatch};

/// Decoders of the on-disk formats, exposed for fuzzing: each returns an
/// error for any input it cannot parse and never panics.
pub mod decode {
    pub use crate::table::decode_table_for_fuzzing as decode_table;

    /// Decodes a commit-log batch payload; returns its operation count.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`](kv_core::codec::DecodeError) for bytes that are not a
    /// batch.
    pub fn decode_log_batch(bytes: &[u8]) -> Result<usize, kv_core::codec::DecodeError> {
        crate::log::decode_batch(bytes).map(|ops| ops.len())
    }

    /// Decodes a manifest edit.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`](kv_core::codec::DecodeError) for bytes that are not an
    /// edit.
    pub fn decode_manifest_edit(bytes: &[u8]) -> Result<(), kv_core::codec::DecodeError> {
        crate::manifest::VersionEdit::decode(bytes).map(|_| ())
    }

    /// Scans bytes as commit-log segment `number`; returns how many valid
    /// records precede the end.
    pub fn scan_log_segment(bytes: &[u8], number: u64) -> usize {
        crate::log::scan_segment(bytes, number).records.len()
    }
}
