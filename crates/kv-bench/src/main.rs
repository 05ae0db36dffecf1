//! `kv-bench`: load a running cluster and report throughput and latency;
//! `kv-bench check --history FILE` checks a recorded history.
//!
//! ```text
//! kv-bench --nodes 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 --workload a \
//!     --records 100000 --ops 300000 --concurrency 64 --value-size 100
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kv_bench::run::{RunConfig, run};
use kv_bench::workload::{Distribution, Workload};
use kv_server::security::ClientCredentials;

#[derive(Debug, Parser)]
#[command(
    name = "kv-bench",
    about = "Load a kv cluster and report throughput and latency",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// gRPC addresses of the nodes, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    nodes: Vec<String>,
    /// a (50% read, 50% update), b (95/5), c (reads), f (read-modify-write), w (writes).
    #[arg(long, default_value = "a")]
    workload: Workload,
    /// uniform or zipfian.
    #[arg(long, default_value = "uniform")]
    distribution: Distribution,
    /// Records loaded and drawn from.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Measured operations.
    #[arg(long, default_value_t = 300_000)]
    ops: u64,
    /// Requests in flight (closed loop) or workers (open loop).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Write quorum sent with writes (default: the cluster's).
    #[arg(long)]
    w: Option<u32>,
    /// Read quorum sent with reads (default: the cluster's).
    #[arg(long)]
    r: Option<u32>,
    /// Open loop at this many operations per second (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Operations before measuring (default: a tenth of --ops, at most 10,000).
    #[arg(long)]
    warmup_ops: Option<u64>,
    /// Stop measuring after this many seconds, even if --ops are not done
    /// (Ctrl-C also stops it, and what was measured is reported).
    #[arg(long)]
    duration_secs: Option<u64>,
    /// Skip the load phase (the records are already there).
    #[arg(long)]
    no_load: bool,
    /// Record every operation and the final state to this file.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Tell the checker reads must be fresh (R + W > N, sloppy quorum off).
    #[arg(long)]
    strict: bool,
    /// The cluster's sibling bound (for the checker; the node default is 10).
    #[arg(long, default_value_t = 10)]
    max_siblings: usize,
    /// Seeds key and operation choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Seconds to wait for replicas to converge before reading final states.
    #[arg(long, default_value_t = 120)]
    converge_secs: u64,
    /// Certificates directory of a secured cluster (ca.pem; admin.token
    /// when present).
    #[arg(long, env = "KV_CERTS_DIR")]
    certs_dir: Option<PathBuf>,
    /// Token to send (wins over admin.token).
    #[arg(long, env = "KV_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// One call per operation instead of the SDK's pipeline per node.
    #[arg(long)]
    no_pipeline: bool,
    /// Runtime threads driving the requests. One (the default) costs the
    /// least CPU where the client shares the machine with the nodes (no
    /// wakes across threads); give it more when it has cores of its own.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    /// With --history: watch every workload key through the run and have
    /// the checker hold the change feed to every acknowledged write.
    #[arg(long, requires = "history")]
    watch: bool,
    /// Draw the run to this SVG file: operations per second over time,
    /// and latency by percentile for each kind of operation.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Write each second of the measured phase to this CSV file:
    /// operations, errors, and p50, p99 and max latency of the operations
    /// completed in it (to find when a run's tail happened).
    #[arg(long, value_name = "FILE.csv")]
    timeline: Option<PathBuf>,
    /// Open-loop sweep: one run at each of these rates (ops/s,
    /// comma-separated, ascending), each for --duration-secs (default
    /// 10); prints latency and throughput per rate, and with --plot draws
    /// them against the offered load.
    #[arg(long, value_delimiter = ',', value_name = "RATES", conflicts_with_all = ["rate", "history", "timeline"])]
    sweep: Vec<f64>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a recorded history: exit 1 on any violation.
    Check {
        /// The history file.
        #[arg(long)]
        history: PathBuf,
    },
}

fn check(path: &std::path::Path) -> Result<bool, String> {
    let events = kv_bench::record::read(path)?;
    let report = kv_bench::check::check(&events)?;
    println!(
        "history: {} writes ({} acknowledged) on {} keys, {} strict reads checked",
        report.history.writes, report.history.acked, report.history.keys, report.reads_checked
    );
    for v in &report.history.violations {
        println!("violation: {v}");
    }
    for v in &report.read_violations {
        println!("violation: {v}");
    }
    if !report.feed_violations.is_empty() || report.changes > 0 {
        println!("watch: {} changes delivered", report.changes);
    }
    for v in &report.feed_violations {
        println!("violation: {v}");
    }
    println!("violations: {}", report.violations());
    Ok(report.violations() == 0)
}

async fn bench(args: Args) -> Result<bool, String> {
    let credentials = match &args.certs_dir {
        Some(dir) => ClientCredentials::from_dir(dir, None, args.token.clone())
            .map_err(|e| format!("{e} (--certs-dir / KV_CERTS_DIR)"))?,
        None => ClientCredentials {
            token: args.token.clone(),
            ..ClientCredentials::default()
        },
    };
    let config = RunConfig {
        pipeline: !args.no_pipeline,
        watch: args.watch,
        credentials,
        nodes: args.nodes,
        workload: args.workload,
        distribution: args.distribution,
        records: args.records,
        ops: args.ops,
        concurrency: args.concurrency,
        value_size: args.value_size,
        w: args.w,
        r: args.r,
        rate: args.rate,
        warmup_ops: args.warmup_ops.unwrap_or((args.ops / 10).min(10_000)),
        duration: args.duration_secs.map(Duration::from_secs),
        load: !args.no_load,
        history: args.history.clone(),
        strict: args.strict,
        max_siblings: args.max_siblings,
        seed: args.seed,
        timeout: Duration::from_millis(args.timeout_ms),
        converge: Duration::from_secs(args.converge_secs),
        progress: std::io::stderr().is_terminal(),
    };
    if !args.sweep.is_empty() {
        return sweep(
            config,
            &args.sweep,
            args.duration_secs,
            args.plot.as_deref(),
        )
        .await;
    }
    let report = run(config).await?;
    print!("{}", report.render());
    if let Some(path) = &args.plot {
        std::fs::write(path, kv_bench::plot::plot(&report, "kv-bench"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("plot: {}", path.display());
    }
    if let Some(path) = &args.timeline {
        std::fs::write(
            path,
            kv_bench::run::timeline_csv(&report.timeline, report.started_unix_ms),
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("timeline: {}", path.display());
    }
    match &args.history {
        Some(path) => {
            println!(
                "history: {} ({} keys' final states)",
                path.display(),
                report.final_keys
            );
            if let Some(t) = report.converged_in {
                println!("converged: {:.1} s after the run", t.as_secs_f64());
            }
            check(path)
        }
        None => Ok(true),
    }
}

/// Runs the open loop at each rate of `rates` in turn (the records loaded
/// once, before the first), prints a line per rate and draws the sweep.
async fn sweep(
    config: RunConfig,
    rates: &[f64],
    secs: Option<u64>,
    plot: Option<&std::path::Path>,
) -> Result<bool, String> {
    if let Some(bad) = rates.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
        return Err(format!(
            "--sweep: {bad} is not a rate in operations per second"
        ));
    }
    if rates.windows(2).any(|w| w[1] <= w[0]) {
        return Err("--sweep: give the rates in ascending order".into());
    }
    let secs = secs.unwrap_or(10).max(1);
    let mut points = Vec::new();
    println!("offered_ops_s achieved_ops_s p50_us p99_us p999_us errors");
    for (i, &rate) in rates.iter().enumerate() {
        let step = RunConfig {
            rate: Some(rate),
            load: config.load && i == 0,
            // As many as the rate offers in the step; the duration ends it.
            ops: (rate * secs as f64).ceil() as u64,
            // A second at the rate to settle (two before the first step:
            // the cluster has just loaded the records).
            warmup_ops: (rate * if i == 0 { 2.0 } else { 1.0 }).ceil() as u64,
            duration: Some(Duration::from_secs(secs)),
            history: None,
            ..config.clone()
        };
        eprintln!(
            "kv-bench: sweep step {} of {}: {rate:.0} ops/s for {secs} s",
            i + 1,
            rates.len()
        );
        let report = run(step).await?;
        let all = report.overall();
        let point = kv_bench::plot::SweepPoint {
            offered: rate,
            report,
        };
        println!(
            "{rate:.0} {:.0} {} {} {} {}",
            point.achieved(),
            all.value_at_quantile(0.5),
            all.value_at_quantile(0.99),
            all.value_at_quantile(0.999),
            point.report.errors()
        );
        points.push(point);
    }
    if let Some(path) = plot {
        std::fs::write(path, kv_bench::plot::sweep(&points, "kv-bench sweep"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("plot: {}", path.display());
    }
    Ok(true)
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The runtime the requests run on: one thread, or `threads` workers.
fn runtime(threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(threads))
            .enable_all()
            .build()
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.command {
        Some(Command::Check { history }) => check(history),
        None => match runtime(args.threads) {
            Ok(rt) => rt.block_on(bench(args)),
            Err(e) => Err(format!("cannot start the runtime: {e}")),
        },
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("kv-bench: {message}");
            ExitCode::from(2)
        }
    }
}
