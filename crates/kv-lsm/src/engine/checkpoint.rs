//! Checkpoints: a consistent point-in-time copy of a running engine in
//! another directory, which opens as an engine of its own (a backup, or a
//! seed for a new replica).
//!
//! Tables never change once written, so they are hard-linked (copied when
//! the destination is on another file system). The commit log holds what
//! the tables do not: the segments the manifest still needs are copied,
//! the one being written up to the last complete write at the moment of
//! the checkpoint. A new manifest describing exactly the copied tables is
//! written beside them. Writers are held off only while the log's
//! buffered bytes are written out and its length read; flushes and
//! compactions wait while the files are linked and copied, so none of the
//! files the checkpoint names can be retired under it.
//!
//! What it holds is a prefix of the engine's history: every write
//! acknowledged before the call, and possibly some that raced with it,
//! never a later write without an earlier one.

use std::io::Write;

use super::*;
use crate::engine::recovery::list_numbered;

/// What a checkpoint copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Tables in the checkpoint.
    pub tables: usize,
    /// Of those, tables hard-linked (the rest were copied).
    pub linked: usize,
    /// Bytes of tables.
    pub table_bytes: u64,
    /// Commit-log segments copied.
    pub log_segments: usize,
    /// Bytes of commit log copied.
    pub log_bytes: u64,
}

impl LsmEngine {
    /// Makes a consistent point-in-time copy of the engine in `dest`
    /// without stopping it: open it with [`LsmEngine::builder`] like any
    /// engine directory. `dest` must not exist or be an empty directory;
    /// it is created readable by its owner only, and everything in it is
    /// durable when this returns.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for a `dest` that holds anything (the
    /// engine's own directory among them); [`Error::Poisoned`] for an engine that
    /// cannot vouch for its files; I/O errors (a partial copy is left in
    /// `dest` for the caller to remove).
    pub fn checkpoint(&self, dest: &Path) -> Result<Checkpoint> {
        let inner = &self.inner;
        inner.check_poison()?;
        kv_core::files::create_empty_private_dir(dest).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::InvalidOption {
                    option: "checkpoint directory",
                    reason: e.to_string(),
                }
            } else {
                Error::io("create directory", dest, e)
            }
        })?;
        // The last complete write: everything acknowledged is in the file.
        let (current, length) = {
            let mut log = inner.log.lock();
            log.writer.write_buffered()?;
            (log.writer.number(), log.writer.len())
        };
        let mut done = Checkpoint::default();
        let ctl = inner.manifest.lock();
        let mut state = ctl.state.clone();
        for meta in state.levels.iter().flatten() {
            let name = table_name(meta.number);
            let (from, to) = (inner.dir.join(&name), dest.join(&name));
            match std::fs::hard_link(&from, &to) {
                Ok(()) => done.linked += 1,
                Err(_) => {
                    copy_prefix(&from, &to, None)?;
                }
            }
            done.tables += 1;
            done.table_bytes += meta.size;
        }
        for number in list_numbered(&inner.dir, ".log")? {
            if number < state.log_number || number > current {
                continue;
            }
            let name = segment_name(number);
            let limit = (number == current).then_some(length);
            done.log_bytes += copy_prefix(&inner.dir.join(&name), &dest.join(&name), limit)?;
            done.log_segments += 1;
        }
        let manifest_number = inner.new_file_number();
        state.next_file = state.next_file.max(manifest_number + 1).max(current + 1);
        drop(ctl);
        Manifest::create(dest, inner.fs.clone(), manifest_number, &state, None)?;
        inner
            .fs
            .sync_dir(dest)
            .map_err(|e| Error::io("fsync directory", dest, e))?;
        Ok(done)
    }
}

/// Copies `from` to `to` (its first `limit` bytes when given), durably;
/// returns the bytes copied.
fn copy_prefix(from: &Path, to: &Path, limit: Option<u64>) -> Result<u64> {
    use std::io::Read;
    let file = File::open(from).map_err(|e| Error::io("open", from, e))?;
    let mut reader = file.take(limit.unwrap_or(u64::MAX));
    let mut out = kv_core::files::private_file()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| Error::io("create", to, e))?;
    let copied = std::io::copy(&mut reader, &mut out).map_err(|e| Error::io("copy to", to, e))?;
    out.flush().map_err(|e| Error::io("write", to, e))?;
    out.sync_all().map_err(|e| Error::io("fsync", to, e))?;
    Ok(copied)
}
