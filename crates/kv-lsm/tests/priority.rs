//! The CPU priority of an engine's threads, read from /proc (Linux, where
//! a thread has a nice value of its own). One test in its own process, so
//! the only engine threads there are the ones it opens.

#![cfg(target_os = "linux")]
#![allow(missing_docs, clippy::unwrap_used)]

use kv_lsm::{BackgroundPriority, Durability, LsmEngine};

/// The nice value of thread `tid` of this process (field 19 of its stat,
/// counted after the parenthesised name).
fn nice_of(tid: &str) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    // Fields from the third (state) on; the nice value is the 19th.
    after_name.split(' ').nth(16).unwrap().parse().unwrap()
}

/// Every live thread of this process named `name`, with its nice value.
fn threads_named(name: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let tid = task.unwrap().file_name().into_string().unwrap();
        let Ok(comm) = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")) else {
            continue; // it ended meanwhile
        };
        if comm.trim_end() == name {
            found.push(nice_of(&tid));
        }
    }
    found
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
