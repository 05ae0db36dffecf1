//! The load generator against a real three-node cluster in this process:
//! the report counts what was asked, and the recorded history passes the
//! checker.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use kv_bench::run::{RunConfig, run};
use kv_bench::workload::{Distribution, Op, Workload};
use kv_server::{NodeConfig, RunningNode};

async fn cluster(dir: &std::path::Path) -> Vec<RunningNode> {
    kv_server::start_local(3, dir, |config| {
        NodeConfig {
            vnodes: 32,
            memtable_bytes: 1 << 20,
            durability: kv_lsm::Durability::Never,
            coordinator: kv_coordinator::Config {
                sloppy_quorum: false,
                ..kv_coordinator::Config::default()
            },
            ..config
        }
        .with_gossip_interval(Duration::from_millis(100))
    })
    .await
    .unwrap()
}

fn config(
    nodes: &[RunningNode],
    workload: Workload,
    history: Option<std::path::PathBuf>,
) -> RunConfig {
    RunConfig {
        nodes: nodes.iter().map(|n| n.addr.to_string()).collect(),
        workload,
        distribution: Distribution::Zipfian,
        records: 200,
        ops: 2_000,
        concurrency: 16,
        value_size: 64,
        w: Some(2),
        r: Some(2),
        rate: None,
        warmup_ops: 200,
        duration: None,
        load: true,
        history,
        strict: true,
        max_siblings: 100,
        seed: 7,
        timeout: Duration::from_secs(5),
        converge: Duration::from_secs(30),
        progress: false,
        credentials: Default::default(),
        pipeline: true,
        watch: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_run_passes_the_checker() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path()).await;
    let path = dir.path().join("history.jsonl");
    // With a watch of every key: the checker holds the change feed to
    // every acknowledged write.
    let mut watched = config(&nodes, Workload::F, Some(path.clone()));
    watched.watch = true;
    let report = run(watched).await.unwrap();
    assert_eq!(report.ops(), 2_000);
    assert_eq!(report.errors(), 0);
    // Every measured operation is in the timeline, and the plot draws it.
    assert_eq!(report.timeline.iter().map(|s| s.ops()).sum::<u64>(), 2_000);
    // The CSV has a line for each second under its header.
    let csv = kv_bench::run::timeline_csv(&report.timeline, report.started_unix_ms);
    assert_eq!(csv.lines().count(), report.timeline.len() + 1, "{csv}");
    let svg = kv_bench::plot::plot(&report, "f");
    assert!(
        svg.contains(">rmw<") && svg.matches("<polyline").count() >= 2,
        "{svg}"
    );
    assert!(report.per_op[Op::ReadModifyWrite.index()].latency.len() > 800);
    assert!(
        report.final_keys > 150,
        "{} keys written",
        report.final_keys
    );
    let text = report.render();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("throughput: ") && lines[0].ends_with(" ops/s"),
        "{text}"
    );
    assert!(lines[1].starts_with("latency: p50_us="), "{text}");
    assert_eq!(lines[2], "errors: 0");

    let events = kv_bench::record::read(&path).unwrap();
    let checked = kv_bench::check::check(&events).unwrap();
    assert_eq!(checked.violations(), 0, "{checked:?}");
    assert!(checked.reads_checked > 1_000);
    assert!(checked.history.acked > 1_000);
    assert!(checked.changes >= checked.history.keys, "{checked:?}");

    // The same without pipelines: one call per operation.
    let mut unary = config(&nodes, Workload::A, None);
    unary.pipeline = false;
    unary.load = false;
    unary.ops = 300;
    let report = run(unary).await.unwrap();
    assert_eq!((report.ops(), report.errors()), (300, 0));

    // An open-loop run of updates at a fixed rate.
    let mut open = config(&nodes, Workload::W, None);
    open.rate = Some(2_000.0);
    open.load = false;
    open.ops = 500;
    let report = run(open).await.unwrap();
    assert_eq!(report.ops(), 500);
    assert_eq!(report.timeline.iter().map(|s| s.ops()).sum::<u64>(), 500);
    assert!(
        report.elapsed >= Duration::from_millis(240),
        "paced: {:?}",
        report.elapsed
    );
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// The binary on its default single-threaded runtime and on a
/// multi-threaded one: each run completes every operation without an
/// error, and a thread count of zero is refused before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_on_one_thread_and_on_several() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path()).await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let bench = |threads: &str| {
        let args = [
            "--nodes",
            &addrs.join(","),
            "--records",
            "100",
            "--ops",
            "500",
            "--concurrency",
            "8",
            "--threads",
            threads,
        ]
        .map(String::from);
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_kv-bench"))
                .args(args)
                .env_remove("KV_CERTS_DIR")
                .env_remove("KV_TOKEN")
                .output()
                .unwrap()
        })
    };
    for threads in ["1", "3"] {
        let out = bench(threads).await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "--threads {threads}: {out:?}");
        assert!(text.starts_with("throughput: "), "{text}");
        assert!(text.contains("\nerrors: 0\n"), "{text}");
    }
    let refused = bench("0").await.unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--threads"));
}
