//! Integration tests of kv-lsm.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

mod checkpoint;
mod concurrency;
mod conformance;
mod crash;
mod decoders;
mod faults;
mod model;
mod power;
mod recovery;

use std::path::Path;

use kv_lsm::{Durability, LsmEngine, LsmEngineBuilder};

/// A builder with small sizes, so tests exercise flushes and compactions.
pub(crate) fn small(dir: &Path) -> LsmEngineBuilder {
    LsmEngine::builder(dir)
        .memtable_bytes(64 << 10)
        .block_bytes(512)
        .level1_bytes(256 << 10)
        .table_target_bytes(64 << 10)
        .l0_compaction_trigger(2)
        .l0_stop_writes_trigger(8)
        .durability(Durability::Never)
}
