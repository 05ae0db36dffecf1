//! Versions: immutable snapshots of which tables are live at each level.

use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Result;
use crate::fs::FileSystem;
use crate::iter::InternalIter;
use crate::manifest::LEVELS;
use crate::table::{KeyHash, Table, TableIter, TableMeta};

/// A live table. When a compaction retires it, it is marked obsolete, and
/// its file is deleted when the last reader (iterator or version) lets go.
#[derive(Debug)]
pub(crate) struct TableHandle {
    pub(crate) table: Arc<Table>,
    obsolete: AtomicBool,
    fs: Arc<dyn FileSystem>,
}

impl TableHandle {
    pub(crate) fn new(table: Table, fs: Arc<dyn FileSystem>) -> Arc<Self> {
        Arc::new(TableHandle {
            table: Arc::new(table),
            obsolete: AtomicBool::new(false),
            fs,
        })
    }

    pub(crate) fn meta(&self) -> &TableMeta {
        self.table.meta()
    }

    pub(crate) fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }
}

impl Drop for TableHandle {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            // A file that cannot be removed now is removed at the next
            // open, which deletes every table the manifest does not list.
            if self.fs.remove_file(self.table.path()).is_ok()
                && let Some(dir) = self.table.path().parent()
            {
                let _ = self.fs.sync_dir(dir);
            }
        }
    }
}

/// The live tables: level 0 newest first (its tables may overlap), deeper
/// levels sorted by key without overlap.
#[derive(Debug, Clone)]
pub(crate) struct Version {
    pub(crate) levels: Vec<Vec<Arc<TableHandle>>>,
}

impl Version {
    pub(crate) fn empty() -> Self {
        Version {
            levels: vec![Vec::new(); LEVELS],
        }
    }

    /// Sorts each level into its read order.
    pub(crate) fn normalize(&mut self) {
        self.levels[0].sort_by_key(|t| std::cmp::Reverse(t.meta().number));
        for level in &mut self.levels[1..] {
            level.sort_by(|a, b| a.meta().smallest.0.cmp(&b.meta().smallest.0));
        }
    }

    /// The version after removing `deleted` and adding `added`.
    pub(crate) fn apply(
        &self,
        added: &[(usize, Arc<TableHandle>)],
        deleted: &[(usize, u64)],
    ) -> Version {
        let mut next = self.clone();
        for (level, number) in deleted {
            next.levels[*level].retain(|t| t.meta().number != *number);
        }
        for (level, table) in added {
            next.levels[*level].push(table.clone());
        }
        next.normalize();
        next
    }

    /// The newest version of `key` numbered `<= seq` in the tables.
    pub(crate) fn get(&self, key: &[u8], seq: u64) -> Result<Option<Option<Vec<u8>>>> {
        let hash = KeyHash::of(key);
        for table in &self.levels[0] {
            if let Some(found) = table.table.get_hashed(key, hash, seq)? {
                return Ok(Some(found));
            }
        }
        for level in &self.levels[1..] {
            let i = level.partition_point(|t| t.meta().largest.0.as_slice() < key);
            if let Some(table) = level.get(i)
                && table.meta().smallest.0.as_slice() <= key
                && let Some(found) = table.table.get_hashed(key, hash, seq)?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// One cursor per level-0 table and one per deeper level, from `start`.
    pub(crate) fn iters(&self, start: Bound<&[u8]>) -> Result<Vec<Box<dyn InternalIter>>> {
        let mut out: Vec<Box<dyn InternalIter>> = Vec::new();
        for table in &self.levels[0] {
            out.push(Box::new(table.table.iter(start)?));
        }
        for level in &self.levels[1..] {
            if !level.is_empty() {
                out.push(Box::new(LevelIter::new(level.clone(), start)?));
            }
        }
        Ok(out)
    }

    pub(crate) fn level_bytes(&self, level: usize) -> u64 {
        self.levels[level].iter().map(|t| t.meta().size).sum()
    }

    /// Whether any table below `level` holds user keys in `[start, end]`.
    pub(crate) fn overlaps_below(&self, level: usize, start: &[u8], end: &[u8]) -> bool {
        self.levels[level + 1..]
            .iter()
            .flatten()
            .any(|t| t.meta().overlaps(start, end))
    }
}

/// A cursor over a sorted, non-overlapping level, opening one table at a time.
struct LevelIter {
    tables: Vec<Arc<TableHandle>>,
    next_table: usize,
    current: Option<TableIter>,
}

impl LevelIter {
    fn new(tables: Vec<Arc<TableHandle>>, start: Bound<&[u8]>) -> Result<Self> {
        let first = match start {
            Bound::Unbounded => 0,
            Bound::Included(k) | Bound::Excluded(k) => {
                tables.partition_point(|t| t.meta().largest.0.as_slice() < k)
            }
        };
        let mut iter = LevelIter {
            tables,
            next_table: first,
            current: None,
        };
        iter.open_next(start)?;
        Ok(iter)
    }

    /// Opens tables from `next_table` until one has an entry at or after
    /// `start`.
    fn open_next(&mut self, start: Bound<&[u8]>) -> Result<()> {
        self.current = None;
        while let Some(table) = self.tables.get(self.next_table) {
            self.next_table += 1;
            let iter = table.table.iter(start)?;
            if iter.valid() {
                self.current = Some(iter);
                return Ok(());
            }
        }
        Ok(())
    }
}

impl InternalIter for LevelIter {
    fn valid(&self) -> bool {
        self.current.as_ref().is_some_and(InternalIter::valid)
    }

    fn key(&self) -> &[u8] {
        self.current.as_ref().map_or(&[], |c| c.key())
    }

    fn seq(&self) -> u64 {
        self.current.as_ref().map_or(0, InternalIter::seq)
    }

    fn value(&self) -> Option<&[u8]> {
        self.current.as_ref().and_then(InternalIter::value)
    }

    fn advance(&mut self) -> Result<()> {
        if let Some(current) = &mut self.current {
            current.advance()?;
            if !current.valid() {
                self.open_next(Bound::Unbounded)?;
            }
        }
        Ok(())
    }
}
