//! Power loss: the engine runs on a file layer that remembers what each
//! sync made durable, and at random moments the test cuts the power: it
//! builds the directory a machine could come back to (each file's synced
//! bytes, any mix of the 512-byte sectors written since its last sync, the
//! directory as of its last sync plus any prefix of the renames, creations
//! and deletions made since, in order, as a journal replays them) and opens
//! an engine there. The open must succeed in strict recovery and hold every
//! write acknowledged before the cut.
//!
//! A kill -9 (`crash.rs`) keeps the page cache; this loses it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kv_core::{StorageEngine, WriteBatch};
use kv_lsm::{Durability, FileSystem, LsmEngine, StdFs, WritableFile};
use kv_testkit::Rng;
use parking_lot::Mutex;

const SECTOR: usize = 512;

/// A file's contents: what the page cache holds and what a sync put on disk.
#[derive(Default, Clone)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
}

/// A directory operation not yet made durable by a directory sync.
#[derive(Clone)]
enum DirOp {
    Link(PathBuf, usize),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

/// What the page cache and the disk hold (`Debug` prints only the name:
/// the file layer must be `Debug`, its contents are too long to print).
#[derive(Default)]
struct Model {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    pending: Vec<DirOp>,
}

fn apply(names: &mut BTreeMap<PathBuf, usize>, op: &DirOp) {
    match op {
        DirOp::Link(path, inode) => {
            names.insert(path.clone(), *inode);
        }
        DirOp::Unlink(path) => {
            names.remove(path);
        }
        DirOp::Rename(from, to) => {
            if let Some(inode) = names.remove(from) {
                names.insert(to.clone(), inode);
            }
        }
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Model")
    }
}

impl Model {
    /// What a machine could find after the power went now.
    fn cut(&self, rng: &mut Rng) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut names = self.durable_names.clone();
        let replayed = rng.below(self.pending.len() as u64 + 1) as usize;
        for op in &self.pending[..replayed] {
            apply(&mut names, op);
        }
        names
            .into_iter()
            .map(|(path, inode)| (path, self.inodes[inode].after_cut(rng)))
            .collect()
    }
}

impl Inode {
    /// The synced bytes, with the length and each sector written since
    /// the sync taken from the page cache or not, at random.
    fn after_cut(&self, rng: &mut Rng) -> Vec<u8> {
        let len = if rng.coin() {
            self.live.len()
        } else {
            self.durable.len()
        };
        let mut out = self.durable.clone();
        out.resize(len, 0);
        for start in (0..len).step_by(SECTOR) {
            let end = (start + SECTOR).min(len);
            let live = self.live.get(start..end.min(self.live.len()));
            if live.is_some_and(|live| live != &out[start..start + live.len()]) && rng.coin() {
                let live = live.unwrap_or_default();
                out[start..start + live.len()].copy_from_slice(live);
            }
        }
        out
    }
}

/// The file layer: `StdFs` underneath (the engine reads its files back),
/// every change mirrored in the model.
#[derive(Debug, Clone, Default)]
struct PowerFs {
    model: Arc<Mutex<Model>>,
}

#[derive(Debug)]
struct PowerFile {
    inner: Box<dyn WritableFile>,
    model: Arc<Mutex<Model>>,
    inode: usize,
    position: usize,
}

impl WritableFile for PowerFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut model = self.model.lock();
        self.inner.write_all(buf)?;
        let live = &mut model.inodes[self.inode].live;
        let end = self.position + buf.len();
        if live.len() < end {
            live.resize(end, 0);
        }
        live[self.position..end].copy_from_slice(buf);
        self.position = end;
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        // The model's state is copied before the sync returns, and writes
        // wait for the lock: what it copies is at most what reached disk.
        let mut model = self.model.lock();
        self.inner.sync_data()?;
        let inode = &mut model.inodes[self.inode];
        inode.durable = inode.live.clone();
        Ok(())
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        let mut model = self.model.lock();
        self.inner.preallocate(len)?;
        let live = &mut model.inodes[self.inode].live;
        let len = usize::try_from(len).unwrap();
        if live.len() < len {
            live.resize(len, 0);
        }
        Ok(())
    }

    fn sync_handle(&self) -> Option<Box<dyn WritableFile>> {
        Some(Box::new(PowerFile {
            inner: self.inner.sync_handle()?,
            model: self.model.clone(),
            inode: self.inode,
            position: self.position,
        }))
    }
}

impl PowerFs {
    /// Does `real` and records `op`, not yet durable.
    fn dir_op(&self, op: DirOp, real: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut cell = self.model.lock();
        real()?;
        apply(&mut cell.names, &op);
        cell.pending.push(op);
        Ok(())
    }

    fn open_file(&self, inner: Box<dyn WritableFile>, inode: usize) -> Box<dyn WritableFile> {
        Box::new(PowerFile {
            inner,
            model: self.model.clone(),
            inode,
            position: 0,
        })
    }
}

impl FileSystem for PowerFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut cell = self.model.lock();
        let inner = StdFs.create(path)?;
        let model = &mut *cell;
        let inode = match model.names.get(path) {
            Some(&inode) => {
                model.inodes[inode].live.clear();
                inode
            }
            None => {
                model.inodes.push(Inode::default());
                let inode = model.inodes.len() - 1;
                model.names.insert(path.to_path_buf(), inode);
                model.pending.push(DirOp::Link(path.to_path_buf(), inode));
                inode
            }
        };
        drop(cell);
        Ok(self.open_file(inner, inode))
    }

    fn overwrite(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let cell = self.model.lock();
        let inner = StdFs.overwrite(path)?;
        let inode = cell.names[path];
        drop(cell);
        Ok(self.open_file(inner, inode))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let op = DirOp::Rename(from.to_path_buf(), to.to_path_buf());
        self.dir_op(op, || StdFs.rename(from, to))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.dir_op(DirOp::Unlink(path.to_path_buf()), || {
            StdFs.remove_file(path)
        })
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut cell = self.model.lock();
        StdFs.sync_dir(dir)?;
        let model = &mut *cell;
        model.durable_names = model.names.clone();
        model.pending.clear();
        Ok(())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut cell = self.model.lock();
        StdFs.truncate(path, len)?;
        let number = cell.names[path];
        let inode = &mut cell.inodes[number];
        inode.live.truncate(usize::try_from(len).unwrap());
        inode.durable = inode.live.clone();
        Ok(())
    }
}

fn value_for(i: u64) -> Vec<u8> {
    format!("value-{i:08}-").repeat(4).into_bytes()
}

fn key_for(i: u64) -> Vec<u8> {
    format!("key-{:08}", i.wrapping_mul(0x9E37_79B9) % 100_000_000).into_bytes()
}

/// Writes from one thread (every fourth write a batch of three, sixteen
/// in flight) while the
/// test cuts the power `cuts` times; each cut is opened and checked.
fn cut_the_power(seed: u64, durability: Durability, recycle: usize, cuts: usize) {
    let dir = tempfile::tempdir().unwrap();
    let fs = PowerFs::default();
    let engine = LsmEngine::builder(dir.path())
        .fs(Arc::new(fs.clone()))
        .durability(durability)
        .memtable_bytes(64 << 10)
        .level1_bytes(256 << 10)
        .table_target_bytes(64 << 10)
        .l0_compaction_trigger(2)
        .recycle_log_segments(recycle)
        .open()
        .unwrap();
    let acknowledged = Mutex::new(0u64);
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut rng = Rng::new(seed);
    std::thread::scope(|s| {
        s.spawn(|| {
            // Up to 16 writes in flight, as a node keeps them: switches
            // then find records not yet synced in the segment they close.
            let mut in_flight = std::collections::VecDeque::new();
            let mut i = 0u64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let mut batch = WriteBatch::new();
                let n = if i % 4 == 3 { 3 } else { 1 };
                for j in i..i + n {
                    batch.put(key_for(j), value_for(j));
                }
                in_flight.push_back((i + n, engine.write_deferred(batch).unwrap()));
                i += n;
                if in_flight.len() > 16 {
                    let (through, durable) = in_flight.pop_front().unwrap();
                    durable.wait().unwrap();
                    *acknowledged.lock() = through;
                }
            }
        });
        // Stops the writer however this thread leaves (a failed check
        // panics here, and the scope joins the writer before it unwinds).
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _stop = Stop(&done);
        let mut checked = 0;
        let mut last = 0;
        while checked < cuts {
            // Cut once the writer is some way on (switches, flushes and
            // compactions happen in between).
            let acked = *acknowledged.lock();
            if acked < last + 200 + rng.below(600) {
                std::thread::yield_now();
                continue;
            }
            last = acked;
            let image = fs.model.lock().cut(&mut rng);
            check(&image, dir.path(), acked, durability, seed, checked);
            checked += 1;
        }
    });
    assert!(engine.stats().flushes >= 2, "switches and flushes happened");
}

/// Writes `image` (paths under `live_dir`) to a new directory, opens an
/// engine there and checks it holds every write acknowledged (the first
/// `acked` keys) under `Always`.
fn check(
    image: &BTreeMap<PathBuf, Vec<u8>>,
    live_dir: &Path,
    acked: u64,
    durability: Durability,
    seed: u64,
    cut: usize,
) {
    let restored = tempfile::tempdir().unwrap();
    for (path, bytes) in image {
        let name = path.strip_prefix(live_dir).unwrap();
        std::fs::write(restored.path().join(name), bytes).unwrap();
    }
    let names: Vec<_> = image.keys().map(|p| p.file_name().unwrap()).collect();
    let engine = LsmEngine::builder(restored.path())
        .memtable_bytes(64 << 10)
        .level1_bytes(256 << 10)
        .table_target_bytes(64 << 10)
        .open()
        .unwrap_or_else(|err| panic!("seed {seed} cut {cut}: open failed: {err} ({names:?})"));
    if durability == Durability::Always {
        for i in 0..acked {
            assert_eq!(
                engine.get(&key_for(i)).unwrap(),
                Some(value_for(i)),
                "seed {seed} cut {cut}: acknowledged write {i} of {acked} lost ({names:?})"
            );
        }
    }
}

#[test]
fn every_acknowledged_write_survives_a_power_cut() {
    for seed in 1..=8 {
        cut_the_power(seed, Durability::Always, 0, 12);
    }
}

#[test]
fn every_acknowledged_write_survives_a_power_cut_through_recycled_segments() {
    for seed in 11..=18 {
        cut_the_power(seed, Durability::Always, 2, 12);
    }
}

#[test]
fn a_power_cut_under_a_periodic_sync_still_opens() {
    for seed in 21..=28 {
        let every = std::time::Duration::from_millis(5);
        cut_the_power(seed, Durability::Interval(every), 0, 12);
    }
}
