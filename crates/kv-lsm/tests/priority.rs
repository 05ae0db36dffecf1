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

/// The engine's threads as they run: the started ones may not have set
/// their priority yet, so wait (bounded) until `want` holds for them.
fn settle(want: impl Fn(&str, &[i32]) -> bool) -> Vec<(String, Vec<i32>)> {
    let names = ["lsm-flush", "lsm-compact", "lsm-syncer"];
    let mut seen = Vec::new();
    for _ in 0..500 {
        seen = names
            .iter()
            .map(|n| (n.to_string(), threads_named(n)))
            .collect();
        if seen.iter().all(|(n, nice)| want(n, nice)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    seen
}

#[test]
fn flushes_and_compactions_run_ten_nice_levels_below_the_opener_and_the_syncer_does_not() {
    let base = nice_of(&this_thread_id().to_string());
    let low = (base + 10).min(19);
    let dir = tempfile::tempdir().unwrap();

    let engine = LsmEngine::builder(dir.path().join("low"))
        .durability(Durability::Always)
        .open()
        .unwrap();
    let seen = settle(|name, nice| {
        let expected = if name == "lsm-syncer" { base } else { low };
        nice.len() == 1 && nice[0] == expected
    });
    assert_eq!(
        seen,
        vec![
            ("lsm-flush".to_string(), vec![low]),
            ("lsm-compact".to_string(), vec![low]),
            ("lsm-syncer".to_string(), vec![base]),
        ],
        "the default lowers the background threads only"
    );
    drop(engine);

    let engine = LsmEngine::builder(dir.path().join("normal"))
        .durability(Durability::Always)
        .background_priority(BackgroundPriority::Normal)
        .open()
        .unwrap();
    let seen = settle(|_, nice| nice.len() == 1 && nice[0] == base);
    assert!(
        seen.iter().all(|(_, nice)| nice == &vec![base]),
        "Normal leaves every thread at the opener's priority: {seen:?}"
    );
    drop(engine);
}

/// This thread's id, from /proc (no system call of our own).
fn this_thread_id() -> u64 {
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    link.file_name().unwrap().to_str().unwrap().parse().unwrap()
}
