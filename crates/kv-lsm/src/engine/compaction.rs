//! Leveled compaction.
//!
//! Level 0 holds flushed memtables, which may overlap; when it has
//! `l0_compaction_trigger` tables they are merged with the level-1 tables
//! they overlap into level 1. Level n (n >= 1) has a target size of
//! `level1_bytes * level_ratio^(n-1)`; the level furthest over its target
//! gives its oldest table, merged with the overlapping tables of level
//! n+1. A table with nothing to merge with is moved down without being
//! rewritten.
//!
//! A merge keeps the newest version of each key (older versions are
//! unreachable: readers of older states keep the old tables alive). When
//! no deeper level holds any key of the merged range, the output is the
//! bottom for those keys: tombstones are dropped there, because no older
//! version of their key can exist below, and sequence numbers are zeroed.
//!
//! Compaction runs on its own thread and touches the write path only
//! through back-pressure: writers stall while level 0 holds
//! `l0_stop_writes_trigger` tables.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{BackgroundWork, Inner, SuperVersion};
use crate::error::{Error, Result};
use crate::iter::{InternalIter, MergingIter};
use crate::manifest::{LEVELS, VersionEdit};
use crate::table::{Table, TableBuilder, TableMeta, table_name};
use crate::version::{TableHandle, Version};

/// A chosen compaction.
#[derive(Debug)]
pub(crate) struct Pick {
    level: usize,
    inputs: Vec<Arc<TableHandle>>,
    /// Tables of `level + 1` overlapping the inputs.
    overlapping: Vec<Arc<TableHandle>>,
}

fn key_range(tables: &[Arc<TableHandle>]) -> Option<(Vec<u8>, Vec<u8>)> {
    let start = tables.iter().map(|t| &t.meta().smallest.0).min()?.clone();
    let end = tables.iter().map(|t| &t.meta().largest.0).max()?.clone();
    Some((start, end))
}

fn overlapping(version: &Version, level: usize, start: &[u8], end: &[u8]) -> Vec<Arc<TableHandle>> {
    version.levels[level]
        .iter()
        .filter(|t| t.meta().overlaps(start, end))
        .cloned()
        .collect()
}

fn target_bytes(inner: &Inner, level: usize) -> u64 {
    level_target(&inner.opts, level)
}

/// How many bytes level `level` (1 and up) may hold before it is due for
/// compaction.
fn level_target(opts: &crate::Options, level: usize) -> u64 {
    let mut target = opts.level1_bytes;
    for _ in 1..level {
        target = target.saturating_mul(u64::from(opts.level_ratio));
    }
    target
}

/// The compaction debt of a tree with `l0_tables` tables in level 0 and
/// `bytes_per_level`: the bytes waiting to be compacted down (all of level
/// 0 once it has reached its trigger, and each deeper level's bytes over
/// its target; the last level has no target).
pub(crate) fn debt(opts: &crate::Options, l0_tables: usize, bytes_per_level: &[u64]) -> u64 {
    let mut owed = 0u64;
    if l0_tables >= opts.l0_compaction_trigger {
        owed = bytes_per_level.first().copied().unwrap_or(0);
    }
    let last = bytes_per_level.len().saturating_sub(1);
    for (level, &bytes) in bytes_per_level.iter().enumerate().take(last).skip(1) {
        owed = owed.saturating_add(bytes.saturating_sub(level_target(opts, level)));
    }
    owed
}

/// The compaction due in `version`, if any.
pub(crate) fn pick(inner: &Inner, version: &Version) -> Option<Pick> {
    if version.levels[0].len() >= inner.opts.l0_compaction_trigger {
        let inputs = version.levels[0].clone();
        let (start, end) = key_range(&inputs)?;
        return Some(Pick {
            level: 0,
            overlapping: overlapping(version, 1, &start, &end),
            inputs,
        });
    }
    let mut best: Option<(f64, usize)> = None;
    for level in 1..LEVELS - 1 {
        let score = version.level_bytes(level) as f64 / target_bytes(inner, level) as f64;
        if score >= 1.0 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, level));
        }
    }
    let (_, level) = best?;
    let oldest = version.levels[level]
        .iter()
        .min_by_key(|t| t.meta().number)?
        .clone();
    let (start, end) = (
        oldest.meta().smallest.0.clone(),
        oldest.meta().largest.0.clone(),
    );
    Some(Pick {
        level,
        overlapping: overlapping(version, level + 1, &start, &end),
        inputs: vec![oldest],
    })
}

/// The compaction thread.
pub(crate) fn compaction_loop(inner: &Inner) {
    loop {
        if inner.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let due = inner.check_poison().is_ok() && {
            let version = inner.sv.read().version.clone();
            pick(inner, &version).is_some()
        };
        if !due {
            let mut bg = inner.bg.lock();
            inner
                .bg_cond
                .wait_for(&mut bg, std::time::Duration::from_millis(100));
            continue;
        }
        let _running = inner.compacting.lock();
        let version = inner.sv.read().version.clone();
        if let Some(chosen) = pick(inner, &version)
            && let Err(err) = run(inner, &version, chosen)
        {
            inner.poison(&err);
        }
    }
}

/// Merges every level down into the deepest one that holds data.
pub(crate) fn compact_all(inner: &Inner) -> Result<()> {
    // A background compaction under way hurries to let this one run.
    let _hurry = super::Counted::new(&inner.hurry);
    let _running = inner.compacting.lock();
    loop {
        inner.check_poison()?;
        let version = inner.sv.read().version.clone();
        let deepest = (0..LEVELS).rev().find(|&l| !version.levels[l].is_empty());
        let Some(deepest) = deepest else {
            return Ok(());
        };
        let target = deepest.max(1);
        // The shallowest level above the target that still holds tables.
        let Some(level) = (0..target).find(|&l| !version.levels[l].is_empty()) else {
            return Ok(());
        };
        let inputs = version.levels[level].clone();
        let Some((start, end)) = key_range(&inputs) else {
            return Ok(());
        };
        let chosen = Pick {
            level,
            overlapping: overlapping(&version, level + 1, &start, &end),
            inputs,
        };
        run_merge(inner, &version, chosen)?;
    }
}

fn run(inner: &Inner, version: &Version, chosen: Pick) -> Result<()> {
    let _running = BackgroundWork::start();
    if chosen.level > 0 && chosen.inputs.len() == 1 && chosen.overlapping.is_empty() {
        // Nothing to merge with: move the table down as it is.
        let table = chosen.inputs[0].clone();
        let edit = VersionEdit {
            deleted: vec![(chosen.level, table.meta().number)],
            added: vec![(chosen.level + 1, table.meta().clone())],
            ..VersionEdit::default()
        };
        return install(inner, edit, vec![(chosen.level + 1, table)], &[]);
    }
    run_merge(inner, version, chosen)
}

fn run_merge(inner: &Inner, version: &Version, chosen: Pick) -> Result<()> {
    let output_level = chosen.level + 1;
    let all: Vec<Arc<TableHandle>> = chosen
        .inputs
        .iter()
        .chain(&chosen.overlapping)
        .cloned()
        .collect();
    let Some((start, end)) = key_range(&all) else {
        return Ok(());
    };
    let bottom = !version.overlaps_below(output_level, &start, &end);
    let mut children: Vec<Box<dyn InternalIter>> = Vec::with_capacity(all.len());
    for table in &all {
        children.push(Box::new(table.table.iter(std::ops::Bound::Unbounded)?));
    }
    let mut merged = MergingIter::new(children);
    let input_bytes: u64 = all.iter().map(|t| t.meta().size).sum();
    let mut steps =
        inner.steps(|| super::pacing::Pacer::compaction(inner.opts.memtable_bytes, input_bytes));
    let mut outputs: Vec<TableMeta> = Vec::new();
    let mut builder: Option<TableBuilder> = None;
    let mut last: Option<Vec<u8>> = None;
    while merged.valid() {
        let key = merged.key();
        if last.as_deref() == Some(key) {
            merged.advance()?;
            continue;
        }
        match &mut last {
            Some(l) => {
                l.clear();
                l.extend_from_slice(key);
            }
            None => last = Some(key.to_vec()),
        }
        let value = merged.value();
        if value.is_none() && bottom {
            merged.advance()?;
            continue;
        }
        if builder
            .as_ref()
            .is_some_and(|b| b.estimated_size() >= inner.opts.table_target_bytes)
            && let Some(done) = builder.take()
        {
            outputs.push(finish(inner, done)?);
        }
        let b = match &mut builder {
            Some(b) => b,
            None => builder.insert(new_builder(inner)?),
        };
        let seq = if bottom { 0 } else { merged.seq() };
        b.add(key, seq, value)?;
        inner.pace(&mut steps, b)?;
        merged.advance()?;
    }
    if let Some(done) = builder.take()
        && !done.is_empty()
    {
        outputs.push(finish(inner, done)?);
    }
    let mut handles = Vec::with_capacity(outputs.len());
    for meta in &outputs {
        let path = inner.dir.join(table_name(meta.number));
        let table = Table::open(&path, meta.number)?;
        handles.push((output_level, TableHandle::new(table, inner.fs.clone())));
    }
    inner
        .fs
        .sync_dir(&inner.dir)
        .map_err(|e| Error::io("fsync directory", &inner.dir, e))?;
    let deleted: Vec<(usize, u64)> = chosen
        .inputs
        .iter()
        .map(|t| (chosen.level, t.meta().number))
        .chain(
            chosen
                .overlapping
                .iter()
                .map(|t| (output_level, t.meta().number)),
        )
        .collect();
    let edit = VersionEdit {
        next_file: Some(inner.next_file.load(Ordering::SeqCst)),
        added: outputs.iter().map(|m| (output_level, m.clone())).collect(),
        deleted: deleted.clone(),
        ..VersionEdit::default()
    };
    let written: u64 = outputs.iter().map(|m| m.size).sum();
    install(inner, edit, handles, &all)?;
    inner.counters.compactions.fetch_add(1, Ordering::Relaxed);
    inner
        .counters
        .compaction_bytes_written
        .fetch_add(written, Ordering::Relaxed);
    Ok(())
}

fn new_builder(inner: &Inner) -> Result<TableBuilder> {
    let number = inner.new_file_number();
    let path = inner.dir.join(table_name(number));
    let file = inner
        .fs
        .create(&path)
        .map_err(|e| Error::io("create table", &path, e))?;
    Ok(TableBuilder::new(
        file,
        &path,
        number,
        inner.opts.block_bytes,
        inner.opts.bloom_bits_per_key,
    ))
}

fn finish(_inner: &Inner, builder: TableBuilder) -> Result<TableMeta> {
    builder.finish()
}

/// Records `edit` in the manifest, then publishes the new version; the
/// replaced tables are deleted once no reader holds them.
fn install(
    inner: &Inner,
    edit: VersionEdit,
    added: Vec<(usize, Arc<TableHandle>)>,
    retired: &[Arc<TableHandle>],
) -> Result<()> {
    let mut ctl = inner.manifest.lock();
    inner.log_edit(&mut ctl, &edit)?;
    inner.swap_super(|current| SuperVersion {
        mem: current.mem.clone(),
        imms: current.imms.clone(),
        version: Arc::new(current.version.apply(&added, &edit.deleted)),
    });
    drop(ctl);
    for table in retired {
        table.mark_obsolete();
    }
    let _bg = inner.bg.lock();
    inner.bg_cond.notify_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debt_counts_a_full_level_zero_and_each_level_over_its_target() {
        let opts = crate::Options {
            l0_compaction_trigger: 4,
            level1_bytes: 100,
            level_ratio: 10,
            ..crate::Options::default()
        };
        // Under the trigger and the targets: nothing owed.
        assert_eq!(debt(&opts, 3, &[500, 100, 1_000, 10_000]), 0);
        // Level 0 at its trigger owes all of it; level 1 owes 50 over 100,
        // level 2 owes 200 over 1,000; the last level owes nothing.
        assert_eq!(debt(&opts, 4, &[500, 150, 1_200, 999_999]), 500 + 50 + 200);
        assert_eq!(debt(&opts, 0, &[]), 0);
    }
}
