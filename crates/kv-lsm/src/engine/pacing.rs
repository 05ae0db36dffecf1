//! Paced table writes: flushes and compactions hand their bytes to the
//! disk a step at a time, spread over the time they have.
//!
//! A flush writes a memtable's worth of table, which the file system makes
//! durable with one sync at its end. On a disk with a volatile write cache
//! (and on a virtual disk, whose host writes out its own cache on every
//! guest sync), a log sync issued meanwhile waits for everything written
//! before it: the synced writes of the foreground wait for the table. Three
//! nodes on one disk flush together (each holds every replica), and those
//! seconds were the README cluster's p99 at half its peak.
//!
//! Paced, a background write waits for each step it writes (a mebibyte,
//! [`WRITE_CHUNK`]) to reach the disk (`WritableFile::write_back`), then
//! sleeps so that its steps are spread until the active memtable is half
//! full, at the rate writes are filling it. Each log sync then meets a step
//! at most. The pace is dropped (full speed, no write-backs) whenever it
//! could fall behind or protects nothing: the active memtable half full,
//! another memtable frozen, writes not flowing, or someone waiting for the
//! background work (an explicit flush or compaction, a stalled writer, a
//! close).

use std::time::Instant;

use super::*;
use crate::table::builder::WRITE_CHUNK;

/// The slowest pace: a step a second (a 64 MiB memtable's table in about
/// a minute at most).
const MIN_RATE: f64 = WRITE_CHUNK as f64;

/// Writes slower than this (bytes a second into the memtable) are not
/// protected: too few log syncs to be worth slowing a flush for.
const MIN_INFLOW: f64 = 64.0 * 1024.0;

/// A memtable younger than this says too little about the rate it fills
/// at.
const MIN_AGE: Duration = Duration::from_millis(100);

/// The longest sleep between two looks at whether someone waits.
const SLICE: Duration = Duration::from_millis(20);

/// What a paced write looks at after each step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    /// Bytes in the active memtable.
    pub active_bytes: usize,
    /// How long ago the active memtable was made.
    pub active_age: Duration,
    /// Frozen memtables waiting for their flush (one being flushed
    /// included).
    pub frozen: usize,
    /// Someone waits for the background work, or the engine closes.
    pub hurry: bool,
}

/// The pace of one background write (a flush, or a compaction's tables).
#[derive(Debug)]
pub(crate) struct Pacer {
    memtable_bytes: usize,
    /// What the write comes to at most (bytes).
    expected: u64,
    /// Bytes written so far, over all its tables.
    written: u64,
    /// Frozen memtables that do not mean falling behind: the one a flush
    /// writes (1), none for a compaction (0).
    frozen_allowed: usize,
    /// The rate writes came in at when it began (the flushed memtable's),
    /// for while the active memtable is too young to tell.
    inflow_before: Option<f64>,
}

impl Pacer {
    /// The pace of a flush of `imm`.
    pub(crate) fn flush(memtable_bytes: usize, imm: &Memtable) -> Self {
        let (bytes, age) = (imm.approximate_bytes(), imm.age());
        Pacer {
            memtable_bytes,
            expected: bytes as u64,
            written: 0,
            frozen_allowed: 1,
            inflow_before: (age >= MIN_AGE).then(|| bytes as f64 / age.as_secs_f64()),
        }
    }

    /// The pace of a compaction of `input_bytes` of tables.
    pub(crate) fn compaction(memtable_bytes: usize, input_bytes: u64) -> Self {
        Pacer {
            memtable_bytes,
            expected: input_bytes,
            written: 0,
            frozen_allowed: 0,
            inflow_before: None,
        }
    }

    /// After `step` more bytes were written: the rate (bytes a second) to
    /// hold until the next step, or `None` to go at full speed.
    pub(crate) fn rate(&mut self, step: u64, load: Load) -> Option<f64> {
        self.written += step;
        let half = self.memtable_bytes / 2;
        if load.hurry || load.frozen > self.frozen_allowed || load.active_bytes >= half {
            return None;
        }
        let inflow = if load.active_age >= MIN_AGE {
            load.active_bytes as f64 / load.active_age.as_secs_f64()
        } else {
            self.inflow_before?
        };
        if inflow < MIN_INFLOW {
            return None;
        }
        // Done by the time the active memtable is half full.
        let time_left = (half - load.active_bytes) as f64 / inflow;
        let remaining = self.expected.saturating_sub(self.written).max(1) as f64;
        Some((remaining / time_left).max(MIN_RATE))
    }
}

/// A paced write's progress through its tables.
#[derive(Debug)]
pub(crate) struct Steps {
    pacer: Option<Pacer>,
    /// The table being written (its file number), and where its next
    /// step begins.
    table: u64,
    from: u64,
    /// When the last step ended.
    last: Instant,
}

impl Steps {
    /// Steps paced by `pacer` (`None`: never paced).
    pub(crate) fn new(pacer: Option<Pacer>) -> Self {
        Steps {
            pacer,
            table: 0,
            from: 0,
            last: Instant::now(),
        }
    }
}

impl Inner {
    /// The steps of a flush or compaction, paced by `pacer` if the options
    /// say to pace.
    pub(crate) fn steps(&self, pacer: impl FnOnce() -> Pacer) -> Steps {
        Steps::new(self.opts.pace_background_writes.then(pacer))
    }

    /// What a paced write looks at now.
    fn load(&self) -> Load {
        let sv = self.sv.read();
        Load {
            active_bytes: sv.mem.approximate_bytes(),
            active_age: sv.mem.age(),
            frozen: sv.imms.len(),
            hurry: self.in_a_hurry(),
        }
    }

    fn in_a_hurry(&self) -> bool {
        self.hurry.load(Ordering::SeqCst) > 0 || self.shutdown.load(Ordering::SeqCst)
    }

    /// After an entry was added to `builder`: see [`pace`].
    pub(crate) fn pace(&self, steps: &mut Steps, builder: &mut TableBuilder) -> Result<()> {
        pace(steps, builder, || self.load(), || self.in_a_hurry())
    }
}

/// After an entry was added to `builder`: once a step has been written out,
/// and if the pace holds under `load()`, waits for the step to reach the
/// disk and then as long as the pace asks, giving up the wait as soon as
/// `hurry()` says someone waits.
fn pace(
    steps: &mut Steps,
    builder: &mut TableBuilder,
    load: impl Fn() -> Load,
    hurry: impl Fn() -> bool,
) -> Result<()> {
    if builder.number() != steps.table {
        // A compaction's next table: its steps start at its beginning.
        steps.table = builder.number();
        steps.from = 0;
    }
    let written = builder.written();
    if written <= steps.from {
        return Ok(());
    }
    let step = written - steps.from;
    let from = std::mem::replace(&mut steps.from, written);
    let Some(pacer) = &mut steps.pacer else {
        return Ok(());
    };
    let Some(rate) = pacer.rate(step, load()) else {
        steps.last = Instant::now();
        return Ok(());
    };
    builder.write_back(from)?;
    let due = steps.last + Duration::from_secs_f64(step as f64 / rate);
    while !hurry() {
        let Some(left) = due
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            break;
        };
        std::thread::sleep(left.min(SLICE));
    }
    steps.last = Instant::now();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FaultFs, FileSystem};
    use std::cell::Cell;

    const MIB: usize = 1 << 20;

    fn load(active_mib: usize, age_ms: u64) -> Load {
        Load {
            active_bytes: active_mib * MIB,
            active_age: Duration::from_millis(age_ms),
            frozen: 1,
            hurry: false,
        }
    }

    fn flush_of(expected_mib: u64) -> Pacer {
        Pacer {
            memtable_bytes: 64 * MIB,
            expected: expected_mib << 20,
            written: 0,
            frozen_allowed: 1,
            inflow_before: Some(8.0 * MIB as f64),
        }
    }

    #[test]
    fn a_flush_is_spread_until_the_active_memtable_is_half_full() {
        // 4 MiB in the active memtable after 1 s: 4 MiB/s coming in, so
        // 28 MiB (7 s) until half of 64; 33 MiB of table left after the
        // first step: 33 / 7 MiB/s.
        let mut pacer = flush_of(34);
        let rate = pacer.rate(MIB as u64, load(4, 1_000));
        let expected = 33.0 * MIB as f64 / 7.0;
        assert!(rate.is_some_and(|r| (r - expected).abs() < 1.0), "{rate:?}");
        // Writes coming in faster leave less time: a faster pace.
        let faster = pacer.rate(MIB as u64, load(16, 1_000));
        assert!(faster.is_some_and(|f| f > expected * 4.0), "{faster:?}");
    }

    #[test]
    fn the_pace_drops_when_it_could_fall_behind_or_protects_nothing() {
        let mut pacer = flush_of(34);
        let step = MIB as u64;
        assert!(pacer.rate(step, load(4, 1_000)).is_some());
        // The active memtable half full.
        assert_eq!(pacer.rate(step, load(32, 1_000)), None);
        // Another memtable frozen behind the one being flushed.
        assert_eq!(
            pacer.rate(
                step,
                Load {
                    frozen: 2,
                    ..load(4, 1_000)
                }
            ),
            None
        );
        // Someone waits (a flush asked for, a stalled writer, a close).
        assert_eq!(
            pacer.rate(
                step,
                Load {
                    hurry: true,
                    ..load(4, 1_000)
                }
            ),
            None
        );
        // Writes hardly flowing: a trickle into an old memtable.
        assert_eq!(pacer.rate(step, load(0, 60_000)), None);
        // A compaction does not take a frozen memtable for its own.
        let mut compaction = Pacer::compaction(64 * MIB, 100 << 20);
        assert_eq!(
            compaction.rate(
                step,
                Load {
                    frozen: 1,
                    ..load(4, 1_000)
                }
            ),
            None
        );
        assert!(
            compaction
                .rate(
                    step,
                    Load {
                        frozen: 0,
                        ..load(4, 1_000)
                    }
                )
                .is_some()
        );
    }

    #[test]
    fn a_young_memtable_borrows_the_rate_of_the_one_flushed() {
        let mut pacer = flush_of(34);
        // 50 ms old: the flushed memtable's 8 MiB/s stands in, 32 MiB (4 s)
        // until half full.
        let rate = pacer.rate(MIB as u64, load(0, 50));
        let expected = 33.0 * MIB as f64 / 4.0;
        assert!(rate.is_some_and(|r| (r - expected).abs() < 1.0), "{rate:?}");
        // A compaction has no such rate: unpaced until the memtable tells.
        let mut compaction = Pacer::compaction(64 * MIB, 100 << 20);
        assert_eq!(
            compaction.rate(
                MIB as u64,
                Load {
                    frozen: 0,
                    ..load(0, 50)
                }
            ),
            None
        );
    }

    #[test]
    fn the_pace_never_falls_below_a_step_a_second() {
        // Plenty of time and little left to write: a step a second, not
        // slower (a table written past its estimate included).
        let mut pacer = flush_of(2);
        for _ in 0..4 {
            let rate = pacer.rate(MIB as u64, load(1, 10_000));
            assert_eq!(rate, Some(MIN_RATE));
        }
    }

    /// Writes `entries` entries of about 1 KiB through `pace` into table
    /// `number` on `fs`; returns how many steps were written in all (each a
    /// little over a mebibyte: a block past the chunk at most).
    fn write_table(
        fs: &FaultFs,
        dir: &Path,
        (steps, number): (&mut Steps, u64),
        entries: u32,
        load: impl Fn() -> Load,
        hurry: impl Fn() -> bool,
    ) -> u64 {
        let path = dir.join(format!("{number:06}.sst"));
        let file = fs.create(&path).expect("create");
        let mut builder = TableBuilder::new(file, &path, number, 4096, 10);
        let value = vec![7u8; 1000];
        for i in 0..entries {
            builder
                .add(format!("key{i:08}").as_bytes(), 1, Some(&value))
                .expect("add");
            pace(steps, &mut builder, &load, &hurry).expect("pace");
        }
        builder.written() / WRITE_CHUNK as u64
    }

    #[test]
    fn a_paced_table_reaches_the_disk_a_step_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = FaultFs::new();
        // Writes flowing fast (240 MiB/s) into a memtable not yet half
        // full: paced, at a rate that keeps the test quick.
        let flowing = || load(30, 125);
        let mut steps = Steps::new(Some(flowing_pacer()));
        let first = write_table(&fs, dir.path(), (&mut steps, 1), 5_000, flowing, || false);
        assert!(first >= 4, "{first} steps");
        assert_eq!(fs.write_backs(), first, "each step handed to the disk");
        // A compaction's next table, smaller than the first: its steps
        // count from its own beginning.
        let second = write_table(&fs, dir.path(), (&mut steps, 2), 3_000, flowing, || false);
        assert!(second >= 2, "{second} steps");
        assert_eq!(fs.write_backs(), first + second);

        // Unpaced: none.
        let fs = FaultFs::new();
        let mut steps = Steps::new(None);
        write_table(&fs, dir.path(), (&mut steps, 1), 5_000, flowing, || false);
        assert_eq!(fs.write_backs(), 0);
    }

    #[test]
    fn someone_waiting_ends_the_pace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = FaultFs::new();
        // A pace of a step a second (writes flowing slowly into a nearly
        // empty memtable): without the hurry this would take seconds.
        let slow = || Load {
            active_bytes: 64 * 1024,
            active_age: Duration::from_millis(500),
            frozen: 1,
            hurry: false,
        };
        let asked = Cell::new(0u32);
        // The first step is paced; from the second on someone waits.
        let hurry = || {
            asked.set(asked.get() + 1);
            true
        };
        let loads = Cell::new(0u32);
        let load = || {
            loads.set(loads.get() + 1);
            Load {
                hurry: loads.get() > 1,
                ..slow()
            }
        };
        let mut steps = Steps::new(Some(flowing_pacer()));
        let written = write_table(&fs, dir.path(), (&mut steps, 1), 5_000, load, hurry);
        assert!(written >= 4, "{written} steps");
        // Only the first step was handed to the disk and waited on, and its
        // wait gave up at once.
        assert_eq!(fs.write_backs(), 1);
        assert_eq!(asked.get(), 1);
    }

    fn flowing_pacer() -> Pacer {
        Pacer {
            memtable_bytes: 64 * MIB,
            expected: 64 << 20,
            written: 0,
            frozen_allowed: 1,
            inflow_before: None,
        }
    }
}
