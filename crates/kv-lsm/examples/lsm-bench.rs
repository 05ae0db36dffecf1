//! A db_bench-style load generator for kv-lsm (and, with `--features
//! peers`, for fjall through the same workloads).
//!
//! ```text
//! cargo run --release -p kv-lsm --example lsm-bench -- --workload fillrandom --num 1000000 --value-size 100
//! cargo run --release -p kv-lsm --features peers --example lsm-bench -- --workload fillrandom --engine fjall
//! ```
//!
//! Workloads (keys are 16 bytes, `{i:016}`):
//! - `fillseq`: insert keys in ascending order.
//! - `fillrandom`: insert every key once, in a random order.
//! - `overwrite`: fill, then overwrite `num` random existing keys.
//! - `readrandom`: fill and flush, then read `num` random existing keys.
//! - `readmissing`: fill and flush, then read `num` random absent keys
//!   (15 digits and an `x`: they sort among the present keys).
//! - `scan`: fill and flush, then scan every key (ops are keys).
//! - `fillsync`: insert with every write fsynced before it is acknowledged
//!   (kv-lsm `Durability::Always`; fjall `persist(SyncAll)` per write).
//! - `filldeferred`: as `fillsync`, through kv-lsm's `write_deferred` (the
//!   syncer thread syncs; the writer waits on the returned `Durable`);
//!   fjall has no such call and runs `fillsync`.
//!
//! Writes other than `fillsync` and `filldeferred` are acknowledged once in the operating
//! system's cache (kv-lsm `Durability::Never`, fjall's default). Work is
//! split over `--threads`. Each run prints one line:
//!
//! ```text
//! fillrandom engine=kv-lsm ops_per_sec=123456 p50_us=3.1 p99_us=8.0 space_amp=1.12
//! ```
//!
//! `--engine both --rounds R` (reads only, with `--features peers`) fills
//! both engines in one process, then splits the reads into `R` rounds and
//! runs each round on one engine and then the other, alternating which goes
//! first: a machine whose speed drifts between runs (a shared virtual
//! machine's does, by half from one hour to the next) then slows both
//! alike. An unmeasured round on each engine comes first (first reads map
//! pages or fill caches). It prints each round's figures and ratio on stderr, each
//! engine's line as above, and the ratio over all rounds (each engine's
//! reads over its time) with the rounds' minimum, median and maximum:
//!
//! ```text
//! readmissing ratio kv-lsm/fjall overall=1.21 min=0.99 median=1.20 max=1.81 rounds=100
//! ```
//!
//! Many short rounds (100 of 10,000 reads for a million keys) give the
//! steadiest overall ratio; a single round's ratio swings with the machine.
//!
//! `space_amp` is the bytes the engine's directory takes on disk (every
//! file's allocated blocks, as `du` counts them: tables, commit log
//! segments with their reserved space and those kept for reuse, manifest)
//! divided by the logical bytes (`distinct keys * (16 + value size)`),
//! measured after the fill has been flushed and compactions have settled.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use kv_core::StorageEngine;
use kv_lsm::{Durability, LsmEngine, SyncerScheduling};

const USAGE: &str = "usage: lsm-bench --workload <fillseq|fillrandom|overwrite|readrandom|readmissing|scan|fillsync|filldeferred>\n\
  [--num N (1000000)] [--value-size B (100)] [--threads T (1)] [--engine kv-lsm|fjall|both]\n\
  [--rounds R (10; with --engine both)] [--dir PATH] [--syncer preempting|yielding (preempting)]";

/// The engines `--engine both` compares, in this order.
const BOTH: [&str; 2] = ["kv-lsm", "fjall"];

#[derive(Debug, Clone)]
struct Args {
    workload: String,
    num: u64,
    value_size: usize,
    threads: usize,
    engine: String,
    rounds: u64,
    dir: Option<PathBuf>,
    /// kv-lsm's log syncer under `fillsync` and `filldeferred`.
    syncer: SyncerScheduling,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        workload: String::new(),
        num: 1_000_000,
        value_size: 100,
        threads: 1,
        engine: "kv-lsm".into(),
        rounds: 10,
        dir: None,
        syncer: SyncerScheduling::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--workload" => args.workload = value,
            "--num" => args.num = number(&value)?,
            "--value-size" => args.value_size = number(&value)? as usize,
            "--threads" => args.threads = number(&value)? as usize,
            "--engine" => args.engine = value,
            "--rounds" => args.rounds = number(&value)?,
            "--dir" => args.dir = Some(value.into()),
            "--syncer" => {
                args.syncer = value
                    .parse()
                    .map_err(|e| format!("--syncer: {e}\n{USAGE}"))?;
            }
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    let known = [
        "fillseq",
        "fillrandom",
        "overwrite",
        "readrandom",
        "readmissing",
        "scan",
        "fillsync",
        "filldeferred",
    ];
    if !known.contains(&args.workload.as_str()) {
        return Err(format!(
            "unknown or missing --workload {:?}\n{USAGE}",
            args.workload
        ));
    }
    if args.num == 0 || args.threads == 0 || args.rounds == 0 {
        return Err(format!(
            "--num, --threads and --rounds must be at least 1\n{USAGE}"
        ));
    }
    if args.engine == "both" && !is_read(&args.workload) {
        return Err(format!(
            "--engine both compares reads only (readrandom, readmissing), not {}\n{USAGE}",
            args.workload
        ));
    }
    if args.rounds > args.num {
        return Err(format!(
            "--rounds {} is more than --num {}",
            args.rounds, args.num
        ));
    }
    Ok(args)
}

/// What the workloads need of an engine.
trait Bench: Sync {
    fn put(&self, key: &[u8], value: &[u8]);
    fn put_synced(&self, key: &[u8], value: &[u8]);
    /// A synced put through the engine's deferred write, if it has one.
    fn put_deferred(&self, key: &[u8], value: &[u8]) {
        self.put_synced(key, value);
    }
    fn get(&self, key: &[u8]) -> bool;
    fn scan_all(&self) -> u64;
    /// Flushes memtables and waits for compactions.
    fn settle(&self);
    /// Engine figures worth a line on stderr.
    fn report(&self) -> Option<String> {
        None
    }
}

struct Lsm(LsmEngine);

impl Bench for Lsm {
    fn put(&self, key: &[u8], value: &[u8]) {
        self.0.put(key, value).unwrap();
    }
    fn put_synced(&self, key: &[u8], value: &[u8]) {
        self.0.put(key, value).unwrap();
    }
    fn put_deferred(&self, key: &[u8], value: &[u8]) {
        let mut batch = kv_core::WriteBatch::new();
        batch.put(key.to_vec(), value.to_vec());
        self.0.write_deferred(batch).unwrap().wait().unwrap();
    }
    fn get(&self, key: &[u8]) -> bool {
        self.0.get(key).unwrap().is_some()
    }
    fn scan_all(&self) -> u64 {
        let mut n = 0;
        for item in self.0.scan(Bound::Unbounded, Bound::Unbounded).unwrap() {
            item.unwrap();
            n += 1;
        }
        n
    }
    fn settle(&self) {
        self.0.flush_all().unwrap();
        self.0.wait_for_compactions().unwrap();
    }
    fn report(&self) -> Option<String> {
        let s = self.0.stats();
        Some(format!(
            "kv-lsm: write_groups={} log_syncs={} flushes={} compactions={} stalls={} tables_per_level={:?}",
            s.write_groups, s.log_syncs, s.flushes, s.compactions, s.stalls, s.tables_per_level
        ))
    }
}

#[cfg(feature = "peers")]
struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

#[cfg(feature = "peers")]
impl Bench for Fjall {
    fn put(&self, key: &[u8], value: &[u8]) {
        self.ks.insert(key, value).unwrap();
    }
    fn put_synced(&self, key: &[u8], value: &[u8]) {
        self.ks.insert(key, value).unwrap();
        self.db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    fn get(&self, key: &[u8]) -> bool {
        self.ks.get(key).unwrap().is_some()
    }
    fn scan_all(&self) -> u64 {
        let mut n = 0;
        for item in self.ks.iter() {
            let _ = item.into_inner().unwrap();
            n += 1;
        }
        n
    }
    fn settle(&self) {
        self.db.persist(fjall::PersistMode::SyncAll).unwrap();
        self.ks.rotate_memtable_and_wait().unwrap();
    }
}

/// Bytes the directory takes on disk, as `du` counts them: the blocks
/// allocated to every file under it, preallocated and reserved space
/// included.
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

fn open(
    engine: &str,
    dir: &Path,
    sync: bool,
    syncer: SyncerScheduling,
) -> Result<Box<dyn Bench>, String> {
    match engine {
        "kv-lsm" => {
            let durability = if sync {
                Durability::Always
            } else {
                Durability::Never
            };
            let engine = LsmEngine::builder(dir)
                .durability(durability)
                .syncer_scheduling(syncer)
                .open()
                .map_err(|e| e.to_string())?;
            Ok(Box::new(Lsm(engine)))
        }
        #[cfg(feature = "peers")]
        "fjall" => {
            let db = fjall::Database::builder(dir)
                .open()
                .map_err(|e| e.to_string())?;
            let ks = db
                .keyspace("bench", fjall::KeyspaceCreateOptions::default)
                .map_err(|e| e.to_string())?;
            Ok(Box::new(Fjall { db, ks }))
        }
        #[cfg(not(feature = "peers"))]
        "fjall" => Err("this build has no fjall: run with --features peers".into()),
        other => Err(format!("unknown engine {other:?} (kv-lsm or fjall)")),
    }
}

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k.copy_from_slice(format!("{i:016}").as_bytes());
    k
}

/// A key that is never written but sorts among the written ones (between
/// `key(10 * (i / 10) + 9)` and the next), so only the filters can tell.
fn missing_key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k.copy_from_slice(format!("{:015}x", i / 10).as_bytes());
    k
}

/// Puts every key once, in a random order, then flushes and lets
/// compactions settle: what the read workloads start from.
fn fill(engine: &dyn Bench, args: &Args) {
    let value = vec![b'v'; args.value_size];
    run(args.threads, &shuffled(args.num, 42), &|i| {
        engine.put(&key(i), &value)
    });
    engine.settle();
}

fn is_read(workload: &str) -> bool {
    workload == "readrandom" || workload == "readmissing"
}

/// The keys the read workloads read, by number: `n` drawn at random.
fn read_order(n: u64) -> Vec<u64> {
    let mut rng = Rng(9);
    (0..n).map(|_| rng.next() % n).collect()
}

/// Reads key `i` (or the missing key beside it) and checks the answer.
fn read(e: &dyn Bench, i: u64, missing: bool) {
    let found = if missing {
        e.get(&missing_key(i))
    } else {
        e.get(&key(i))
    };
    assert_eq!(found, !missing, "key {i}");
}

/// `--engine both`: fills each engine of [`BOTH`] in its own directory
/// under `dir`, then runs the reads in rounds, each round on one engine
/// and then the other (alternating which goes first).
fn compare(args: &Args, dir: &Path) -> Result<(), String> {
    let n = args.num;
    let mut engines = Vec::new();
    for name in BOTH {
        let engine = open(name, &dir.join(name), false, args.syncer)?;
        eprintln!("filling {name} with {n} keys");
        fill(engine.as_ref(), args);
        engines.push(engine);
    }
    let missing = args.workload == "readmissing";
    let order = read_order(n);
    let per_round = order.len().div_ceil(args.rounds as usize);
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); BOTH.len()];
    let mut secs = vec![0.0; BOTH.len()];
    let mut ratios = Vec::new();
    // A first round unmeasured on each engine: the first reads of a table
    // map its pages (kv-lsm) or fill a cache (fjall), and one engine's
    // background work after its fill would otherwise slow the other.
    for e in &engines {
        run(args.threads, &order[..per_round], &|i| {
            read(e.as_ref(), i, missing)
        });
    }
    for (round, part) in order.chunks(per_round).enumerate() {
        let mut rate = [0.0; BOTH.len()];
        for k in 0..BOTH.len() {
            // Even rounds kv-lsm first, odd rounds fjall first.
            let at = (k + round) % BOTH.len();
            let e = engines[at].as_ref();
            let (s, l) = run(args.threads, part, &|i| read(e, i, missing));
            rate[at] = part.len() as f64 / s;
            secs[at] += s;
            latencies[at].extend(l);
        }
        let ratio = rate[0] / rate[1];
        eprintln!(
            "round {round}: {} {:.0} {} {:.0} ratio {ratio:.2}",
            BOTH[0], rate[0], BOTH[1], rate[1]
        );
        ratios.push(ratio);
    }
    for (at, name) in BOTH.iter().enumerate() {
        let lat = &mut latencies[at];
        lat.sort_unstable();
        println!(
            "{} engine={name} ops_per_sec={:.0} p50_us={:.1} p99_us={:.1}",
            args.workload,
            lat.len() as f64 / secs[at],
            percentile(lat, 0.50),
            percentile(lat, 0.99),
        );
    }
    ratios.sort_by(f64::total_cmp);
    // Over all rounds: each engine's reads over its time.
    let overall = secs[1] / secs[0];
    println!(
        "{} ratio {}/{} overall={overall:.2} min={:.2} median={:.2} max={:.2} rounds={}",
        args.workload,
        BOTH[0],
        BOTH[1],
        ratios[0],
        ratios[ratios.len() / 2],
        ratios[ratios.len() - 1],
        ratios.len()
    );
    Ok(())
}

/// A seeded xorshift generator: the same sequence on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn shuffled(n: u64, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    let mut rng = Rng(seed);
    for i in (1..v.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// Runs `op` over `ops` split across threads; returns (seconds, sorted
/// latencies in nanoseconds).
fn run(threads: usize, ops: &[u64], op: &(dyn Fn(u64) + Sync)) -> (f64, Vec<u64>) {
    let started = Instant::now();
    let chunk = ops.len().div_ceil(threads);
    let mut latencies: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = ops
            .chunks(chunk.max(1))
            .map(|part| {
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(part.len());
                    for &i in part {
                        let t = Instant::now();
                        op(i);
                        lat.push(t.elapsed().as_nanos() as u64);
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    (secs, latencies)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at] as f64 / 1000.0
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let temp = tempfile::tempdir().expect("temporary directory");
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let sync = args.workload == "fillsync" || args.workload == "filldeferred";
    if args.engine == "both" {
        return match compare(&args, &dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("{msg}");
                ExitCode::FAILURE
            }
        };
    }
    let engine = match open(&args.engine, &dir, sync, args.syncer) {
        Ok(e) => e,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::FAILURE;
        }
    };
    let value = vec![b'v'; args.value_size];
    let n = args.num;
    let fill_order = |random: bool| {
        if random {
            shuffled(n, 42)
        } else {
            (0..n).collect()
        }
    };
    let e: &dyn Bench = engine.as_ref();
    let (secs, lat, ops) = match args.workload.as_str() {
        "fillseq" | "fillrandom" => {
            let order = fill_order(args.workload == "fillrandom");
            let (s, l) = run(args.threads, &order, &|i| e.put(&key(i), &value));
            (s, l, n)
        }
        "fillsync" => {
            let order = fill_order(true);
            let (s, l) = run(args.threads, &order, &|i| e.put_synced(&key(i), &value));
            (s, l, n)
        }
        "filldeferred" => {
            let order = fill_order(true);
            let (s, l) = run(args.threads, &order, &|i| e.put_deferred(&key(i), &value));
            (s, l, n)
        }
        "overwrite" => {
            fill(e, &args);
            let mut rng = Rng(7);
            let order: Vec<u64> = (0..n).map(|_| rng.next() % n).collect();
            let (s, l) = run(args.threads, &order, &|i| e.put(&key(i), &value));
            (s, l, n)
        }
        "readrandom" | "readmissing" => {
            fill(e, &args);
            let missing = args.workload == "readmissing";
            let (s, l) = run(args.threads, &read_order(n), &|i| read(e, i, missing));
            (s, l, n)
        }
        "scan" => {
            fill(e, &args);
            let started = Instant::now();
            let count = e.scan_all();
            assert_eq!(count, n, "scan saw every key");
            let secs = started.elapsed().as_secs_f64();
            (secs, vec![(secs * 1e9 / count as f64) as u64], count)
        }
        _ => unreachable!("checked in parse"),
    };
    e.settle();
    let logical = n as f64 * (16 + args.value_size) as f64;
    let space_amp = dir_bytes(&dir) as f64 / logical;
    println!(
        "{} engine={} ops_per_sec={:.0} p50_us={:.1} p99_us={:.1} space_amp={:.2}",
        args.workload,
        args.engine,
        ops as f64 / secs,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        space_amp
    );
    if let Some(report) = e.report() {
        eprintln!("{report}");
    }
    drop(engine);
    ExitCode::SUCCESS
}
