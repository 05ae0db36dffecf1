//! `kvd`: one node of the kv store.
//!
//! ```text
//! kvd --config node.toml [--node-id 1] [--listen 127.0.0.1:7001] ...
//! ```
//! Flags override the file. Stops gracefully on Ctrl-C or SIGTERM: stops
//! accepting, finishes in-flight requests, flushes.
#![allow(clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kv_server::ServerConfig;

#[derive(Debug, Parser)]
#[command(name = "kvd", about = "A node of the kv store")]
struct Args {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the configuration (every setting, the certificates and
    /// tokens loaded) and exit: 0 if it would start, 1 with the reason if
    /// not. Binds nothing, writes nothing.
    #[arg(long)]
    check_config: bool,
    /// This node's id.
    #[arg(long)]
    node_id: Option<u64>,
    /// Address for the gRPC services.
    #[arg(long)]
    listen: Option<String>,
    /// Address for /metrics and the status page.
    #[arg(long)]
    http: Option<String>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The directory `kvctl snapshot DIR` must write below (absolute).
    #[arg(long)]
    snapshot_root: Option<PathBuf>,
    /// A member of the initial ring, as id@host:port (repeat for each).
    #[arg(long = "member")]
    members: Vec<String>,
    /// A running node to join gossip through, host:port (repeat).
    #[arg(long = "seed")]
    seeds: Vec<String>,
    /// The address peers reach this node at (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Failure domain (rack, zone).
    #[arg(long)]
    zone: Option<String>,
    /// Relative capacity.
    #[arg(long)]
    weight: Option<u32>,
    /// Join the ring at start if this node is not in it.
    #[arg(long)]
    join: bool,
    /// Take the place (the tokens) of this node, which is gone for good:
    /// its ranges are streamed from the surviving replicas first.
    #[arg(long, value_name = "ID")]
    replace: Option<u64>,
    /// Gossip probe interval in milliseconds.
    #[arg(long)]
    gossip_interval_ms: Option<u64>,
    /// How often a peer is asked for a newer ring, in milliseconds.
    #[arg(long)]
    ring_sync_ms: Option<u64>,
    /// Client requests in flight at most (more get ResourceExhausted).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Siblings kept per key at most.
    #[arg(long)]
    max_siblings: Option<usize>,
    /// Sloppy quorum on (true, the default) or off (false).
    #[arg(long)]
    sloppy_quorum: Option<bool>,
    /// Log filter, as `info` or `warn,kv_server=debug` (default: RUST_LOG,
    /// else the file's `log`, else info).
    #[arg(long)]
    log: Option<String>,
    /// Log each client request that takes this many milliseconds or
    /// longer, with its span tree (default 100; 0: none).
    #[arg(long, value_name = "MS")]
    slow_request_ms: Option<u64>,
    /// Trace one client request in this many (default 10; 1: every one;
    /// 0: none).
    #[arg(long, value_name = "N")]
    trace_every: Option<u32>,
    /// Export the traced requests' spans to this OpenTelemetry collector
    /// (OTLP/gRPC, as http://127.0.0.1:4317; needs kvd built with
    /// `--features otel`).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Virtual nodes per node.
    #[arg(long)]
    vnodes: Option<u32>,
    /// Replicas per key.
    #[arg(long)]
    n: Option<usize>,
    /// Write quorum.
    #[arg(long)]
    w: Option<usize>,
    /// Read quorum.
    #[arg(long)]
    r: Option<usize>,
    /// Request timeout in milliseconds.
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    /// `always`, `never` or `interval:<ms>`.
    #[arg(long)]
    durability: Option<String>,
    /// How the commit log's syncer is woken: `preempting` (the default) or
    /// `yielding` (more writes per sync when the CPUs are busy, a higher
    /// p99 at half load).
    #[arg(long)]
    syncer: Option<String>,
    /// Flushes and compactions pace their table writes (true, the default)
    /// or write at full speed (false).
    #[arg(long)]
    pace_background_writes: Option<bool>,
    /// How replica writes and reads reach peers: `frames` (the default;
    /// mutual TLS when TLS is on) or `grpc`.
    #[arg(long)]
    internode: Option<String>,
    /// Hints kept for other nodes at most.
    #[arg(long)]
    max_hints: Option<usize>,
    /// Between anti-entropy exchanges, in milliseconds.
    #[arg(long)]
    anti_entropy_interval_ms: Option<u64>,
    /// Keys anti-entropy repairs per second at most, pulled and pushed together (100,000; 0 for no limit).
    #[arg(long)]
    repair_keys_per_sec: Option<u32>,
    /// Memtable size in MiB.
    #[arg(long)]
    memtable_mib: Option<usize>,
    /// A tombstone is collected no sooner than this many seconds after the delete, once every replica holds it; hints older than this are dropped unsent (86,400: one day).
    #[arg(long)]
    tombstone_grace_secs: Option<u64>,
    /// Repair stale replicas before a read answers, not after (false).
    #[arg(long)]
    read_repair_blocking: Option<bool>,
    /// Largest key accepted, in bytes (65,536).
    #[arg(long)]
    max_key_bytes: Option<usize>,
    /// Largest value accepted, in bytes (16 MiB).
    #[arg(long)]
    max_value_bytes: Option<usize>,
    /// Largest stored state of one key (its siblings and clock), in bytes (48 MiB); a write that would store more is refused alone.
    #[arg(long)]
    max_state_bytes: Option<usize>,
    /// Bytes of hinted states kept for other nodes at most (1 GiB).
    #[arg(long)]
    max_hint_bytes: Option<u64>,
    /// Between hint deliveries and tombstone collections, in milliseconds (1,000).
    #[arg(long)]
    maintenance_interval_ms: Option<u64>,
    /// A write waits this many times the recent replica latency for a replica before it also sends the state to a fallback with a hint (4).
    #[arg(long)]
    hedge_factor: Option<u32>,
    /// The shortest such wait, in milliseconds (10); the longest is half the request timeout.
    #[arg(long)]
    hedge_floor_ms: Option<u64>,
    /// Certificates directory (`kvctl certs`): ca.pem and node-ID.pem/.key turn TLS on; tokens.toml, when present, holds the tokens.
    #[arg(long)]
    certs_dir: Option<PathBuf>,
    /// The cluster CA's certificate (PEM).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// The token table (`[[token]]` name, role, sha256).
    #[arg(long)]
    tokens_file: Option<PathBuf>,
    /// Serve without TLS on a non-loopback address: anyone who reaches the port can read, write and change the cluster.
    #[arg(long)]
    insecure: bool,
    /// /metrics and the status page ask for a token.
    #[arg(long)]
    http_token: bool,
}

async fn run(args: Args) -> Result<(), String> {
    let check = args.check_config;
    let file = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            ServerConfig::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => ServerConfig::default(),
    };
    let flags = ServerConfig {
        node_id: args.node_id,
        listen: args.listen,
        http: args.http,
        data_dir: args.data_dir,
        snapshot_root: args.snapshot_root,
        members: (!args.members.is_empty()).then_some(args.members),
        seeds: (!args.seeds.is_empty()).then_some(args.seeds),
        advertise: args.advertise,
        zone: args.zone,
        weight: args.weight,
        join: args.join.then_some(true),
        replace: args.replace,
        gossip_interval_ms: args.gossip_interval_ms,
        ring_sync_ms: args.ring_sync_ms,
        log: args.log,
        slow_request_ms: args.slow_request_ms,
        trace_every: args.trace_every,
        otlp_endpoint: args.otlp_endpoint,
        max_in_flight: args.max_in_flight,
        max_siblings: args.max_siblings,
        sloppy_quorum: args.sloppy_quorum,
        vnodes: args.vnodes,
        n: args.n,
        w: args.w,
        r: args.r,
        request_timeout_ms: args.request_timeout_ms,
        durability: args.durability,
        syncer: args.syncer,
        pace_background_writes: args.pace_background_writes,
        internode: args.internode,
        max_hints: args.max_hints,
        anti_entropy_interval_ms: args.anti_entropy_interval_ms,
        repair_keys_per_sec: args.repair_keys_per_sec,
        memtable_mib: args.memtable_mib,
        tombstone_grace_secs: args.tombstone_grace_secs,
        read_repair_blocking: args.read_repair_blocking,
        max_key_bytes: args.max_key_bytes,
        max_value_bytes: args.max_value_bytes,
        max_state_bytes: args.max_state_bytes,
        max_hint_bytes: args.max_hint_bytes,
        maintenance_interval_ms: args.maintenance_interval_ms,
        hedge_factor: args.hedge_factor,
        hedge_floor_ms: args.hedge_floor_ms,
        certs_dir: args.certs_dir,
        tls_ca: args.tls_ca,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tokens_file: args.tokens_file,
        insecure: args.insecure.then_some(true),
        http_token: args.http_token.then_some(true),
    };
    let merged = file.overridden_by(flags);
    let (node, listen) = merged.validate().map_err(|e| e.to_string())?;
    // The page says how many requests are traced: the node's setting.
    let slow = merged
        .slow_request_threshold()
        .map(|t| kv_server::trace::SlowLog::new(t, node.coordinator.trace_every))
        .unwrap_or_default();
    let export = if check {
        None
    } else {
        init_logs(
            merged.log.as_deref(),
            &slow,
            merged.otlp_endpoint.as_deref(),
            node.id.0,
        )?
    };
    let http = merged.http_addr().map_err(|e| e.to_string())?;
    if check {
        eprintln!(
            "kvd: configuration ok: node {}, listen {listen}, data dir {}, {} initial members, TLS {}",
            node.id,
            node.data_dir.display(),
            node.members.len(),
            if node.security.tls.is_some() {
                "on"
            } else {
                "off"
            },
        );
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listen on {listen}: {e}"))?;
    let id = node.id;
    let security = node.security.clone();
    if security.insecure {
        eprintln!(
            "kvd: WARNING: node {id} runs --insecure: no TLS, no authentication; anyone who reaches {listen} can read, write and change the cluster"
        );
    }
    if let Some(expires) = security.posture().cert_expires {
        let now = kv_core::unix_secs();
        let days = expires.saturating_sub(now) / 86_400;
        if days < 14 {
            eprintln!(
                "kvd: WARNING: node {id}'s certificate expires in {days} days: renew it (kvctl certs node) and restart"
            );
        }
    }
    let running = kv_server::start(node, listener)
        .await
        .map_err(|e| e.to_string())?;
    let maintenance = running.coordinator().spawn_maintenance();
    let http_task = match http {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("listen on {addr}: {e}"))?;
            eprintln!("kvd: metrics and status on http://{addr}/");
            Some(kv_server::http::serve(
                running.coordinator().clone(),
                running.cluster().clone(),
                listener,
                kv_server::http::HttpSettings {
                    slow_requests: slow.clone(),
                    ..kv_server::http::HttpSettings::of(&security)
                },
            ))
        }
        None => None,
    };
    eprintln!("kvd: node {id} serving on {}", running.addr);
    let mut left = running.left();
    tokio::select! {
        () = kv_server::shutdown_signal() => eprintln!("kvd: node {id} shutting down"),
        _ = left.wait_for(|&left| left) => eprintln!("kvd: node {id} left the ring; stopping"),
    }
    maintenance.abort();
    if let Some(task) = http_task {
        task.abort();
    }
    running.shutdown().await?;
    if let Some(export) = export {
        // The spans still buffered go to the collector.
        match tokio::task::spawn_blocking(move || finish_export(export)).await {
            Ok(Err(e)) => eprintln!("kvd: {e}"),
            Err(e) => eprintln!("kvd: otlp export: {e}"),
            Ok(Ok(())) => {}
        }
    }
    eprintln!("kvd: node {id} stopped");
    Ok(())
}

/// The OpenTelemetry export (feature `otel`), or nothing.
#[cfg(feature = "otel")]
type Export = kv_server::otel::OtelExport;
#[cfg(not(feature = "otel"))]
type Export = std::convert::Infallible;

/// Starts the export of request spans to `endpoint`, if one is given.
#[cfg(feature = "otel")]
fn start_export(endpoint: Option<&str>, node: u64) -> Result<Option<Export>, String> {
    endpoint
        .map(|e| kv_server::otel::OtelExport::start(e, node))
        .transpose()
}

#[cfg(not(feature = "otel"))]
fn start_export(endpoint: Option<&str>, _node: u64) -> Result<Option<Export>, String> {
    match endpoint {
        Some(e) => Err(format!(
            "otlp_endpoint {e}: this kvd was built without OpenTelemetry export; build it with `cargo build --release -p kv-server --features otel`"
        )),
        None => Ok(None),
    }
}

/// Sends the spans still buffered (blocks: call it off the runtime).
#[cfg(feature = "otel")]
fn finish_export(export: Export) -> Result<(), String> {
    export.shutdown()
}

#[cfg(not(feature = "otel"))]
fn finish_export(export: Export) -> Result<(), String> {
    match export {}
}

/// Logs to stderr through `tracing`: the filter from `RUST_LOG`, else the
/// configured one, else `info`. Client requests' spans go only to the
/// slow-request log (`slow`, when it has a threshold), which writes the
/// slow ones out as `kv::slow` warnings, and to the OpenTelemetry export
/// when `otlp_endpoint` is set (returned, to be shut down at the end).
fn init_logs(
    configured: Option<&str>,
    slow: &kv_server::trace::SlowLog,
    otlp_endpoint: Option<&str>,
    node: u64,
) -> Result<Option<Export>, String> {
    let text = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| configured.map(str::to_string))
        .unwrap_or_else(|| "info".to_string());
    let filter: tracing_subscriber::filter::Targets = text
        .parse()
        .map_err(|e| format!("log filter {text:?}: {e}"))?;
    // Every request makes spans: formatting them for every log line would
    // cost each request, so the log's own layer never sees them.
    let filter = filter.with_target(
        kv_coordinator::trace::TARGET,
        tracing_subscriber::filter::LevelFilter::OFF,
    );
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let slow_layer = slow.threshold().map(|_| {
        kv_server::trace::SlowRequests::new(slow.clone())
            .with_filter(kv_server::trace::SlowRequests::filter())
    });
    let export = start_export(otlp_endpoint, node)?;
    #[cfg(feature = "otel")]
    let otel_layer = export.as_ref().map(|e| {
        e.layer()
            .with_filter(kv_server::trace::SlowRequests::filter())
    });
    #[cfg(not(feature = "otel"))]
    let otel_layer: Option<tracing_subscriber::layer::Identity> = None;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(slow_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|e| format!("logging: {e}"))?;
    Ok(export)
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("kvd: {message}");
            ExitCode::FAILURE
        }
    }
}
