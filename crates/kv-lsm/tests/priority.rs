//! The CPU priority and scheduling policy of an engine's threads, read
//! from /proc (Linux, where a thread has a nice value and a policy of its
//! own). The tests take turns ([`ONE_AT_A_TIME`]), so the only engine
//! threads in the process are the ones the running test opens.

#![cfg(target_os = "linux")]
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_lsm::{
    BackgroundPriority, Durability, FaultFs, LsmEngine, StorageEngine, SyncerScheduling, WriteBatch,
};

/// Held by each test for its whole run.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Field `n` (1-based, as proc(5) numbers them) of thread `tid`'s stat,
/// counted after the parenthesised name (field 2).
fn stat_field(tid: &str, n: usize) -> String {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(n - 3).unwrap().to_string()
}

/// The nice value of thread `tid` of this process (field 19).
fn nice_of(tid: &str) -> i32 {
    stat_field(tid, 19).parse().unwrap()
}

/// The scheduling policy of thread `tid` (field 41).
fn policy_of(tid: &str) -> i32 {
    stat_field(tid, 41).parse().unwrap()
}

/// Waits (up to 10 s, then fails) until thread `tid` sleeps (state `S`,
/// field 3).
fn wait_until_asleep(tid: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat_field(tid, 3) != "S" {
        assert!(Instant::now() < deadline, "thread {tid} never slept");
        std::thread::yield_now();
    }
}

/// The ids of every live thread of this process named `name`.
fn tids_named(name: &str) -> Vec<String> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let tid = task.unwrap().file_name().into_string().unwrap();
        let Ok(comm) = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")) else {
            continue; // it ended meanwhile
        };
        if comm.trim_end() == name {
            found.push(tid);
        }
    }
    found
}

/// Every live thread of this process named `name`, with its nice value.
fn threads_named(name: &str) -> Vec<i32> {
    tids_named(name).iter().map(|tid| nice_of(tid)).collect()
}

/// The engine's threads by name, each with the nice value of every
/// thread of that name.
fn engine_threads() -> Vec<(String, Vec<i32>)> {
    ["lsm-flush", "lsm-compact", "lsm-syncer"]
        .iter()
        .map(|n| (n.to_string(), threads_named(n)))
        .collect()
}

/// The nice value of each engine thread (flush, compaction, syncer) just
/// after `open` returns with `priority`: the threads have theirs by then.
fn opened_with(dir: &std::path::Path, priority: BackgroundPriority) -> Vec<(String, Vec<i32>)> {
    let engine = LsmEngine::builder(dir)
        .durability(Durability::Always)
        .background_priority(priority)
        .open()
        .unwrap();
    let seen = engine_threads();
    drop(engine);
    seen
}

/// The engine threads as [`engine_threads`] lists them, one of each.
fn one_each(flush: i32, compact: i32, syncer: i32) -> Vec<(String, Vec<i32>)> {
    vec![
        ("lsm-flush".to_string(), vec![flush]),
        ("lsm-compact".to_string(), vec![compact]),
        ("lsm-syncer".to_string(), vec![syncer]),
    ]
}

#[test]
fn flushes_and_compactions_run_ten_nice_levels_below_the_opener_and_the_syncer_does_not() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let base = nice_of(&this_thread_id().to_string());
    let low = (base + 10).min(19);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        opened_with(&dir.path().join("low"), BackgroundPriority::default()),
        one_each(low, low, base),
        "the default lowers the background threads only"
    );
    assert_eq!(
        opened_with(&dir.path().join("normal"), BackgroundPriority::Normal),
        one_each(base, base, base),
        "Normal leaves every thread at the opener's priority"
    );
}

/// This thread's id, from /proc (no system call of our own).
fn this_thread_id() -> u64 {
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    link.file_name().unwrap().to_str().unwrap().parse().unwrap()
}

/// Waits (up to 10 s, then fails) until thread `tid`'s policy is
/// `policy`: a syncer sets its own before each wait for writes.
fn wait_for_policy(tid: &str, policy: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while policy_of(tid) != policy {
        assert!(
            Instant::now() < deadline,
            "{what}: policy {}",
            policy_of(tid)
        );
        std::thread::yield_now();
    }
}

/// The syncer of an engine opened with `scheduling` (under `Always`),
/// writing through `fs`: the engine and the syncer thread's id.
fn open_syncer(
    dir: &std::path::Path,
    scheduling: SyncerScheduling,
    fs: &FaultFs,
) -> (LsmEngine, String) {
    let engine = LsmEngine::builder(dir)
        .durability(Durability::Always)
        .syncer_scheduling(scheduling)
        .fs(Arc::new(fs.clone()))
        .open()
        .unwrap();
    let mut syncers = tids_named("lsm-syncer");
    assert_eq!(syncers.len(), 1, "one engine, one syncer");
    (engine, syncers.remove(0))
}

#[test]
fn a_yielding_syncer_waits_for_writes_in_sched_batch_and_syncs_in_the_normal_policy() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let (engine, syncer) = open_syncer(&dir.path().join("y"), SyncerScheduling::Yielding, &fs);
    wait_for_policy(&syncer, libc::SCHED_BATCH, "waiting for the first writes");

    // A write the syncer takes: its sync's write of the log stalls, with
    // the syncer in the policy it syncs in. (A failed assertion ends the
    // stall as it unwinds, so that the engine can close.)
    struct EndStall<'a>(&'a FaultFs);
    impl Drop for EndStall<'_> {
        fn drop(&mut self) {
            self.0.heal();
        }
    }
    let _end_stall = EndStall(&fs);
    fs.stall_writes(true);
    let mut batch = WriteBatch::new();
    batch.put(b"k".to_vec(), b"v".to_vec());
    let durable = engine.write_deferred(batch).unwrap();
    fs.wait_for_stalled_writes(1);
    assert_eq!(policy_of(&syncer), libc::SCHED_OTHER, "syncing");
    fs.stall_writes(false);
    durable.wait().unwrap();
    assert_eq!(engine.get(b"k").unwrap(), Some(b"v".to_vec()));

    wait_for_policy(
        &syncer,
        libc::SCHED_BATCH,
        "waiting for writes after a sync",
    );
    drop(engine);

    // Preempting (the default): after a synced write, the syncer back in
    // its wait for writes (asleep, nothing else to wait on) has the
    // normal policy.
    let (engine, syncer) = open_syncer(&dir.path().join("p"), SyncerScheduling::Preempting, &fs);
    engine.put(b"k", b"v").unwrap();
    wait_until_asleep(&syncer);
    assert_eq!(
        policy_of(&syncer),
        libc::SCHED_OTHER,
        "Preempting leaves the policy alone"
    );
    drop(engine);
}
