//! Drives a running cluster through the client SDK: load phase, warm-up,
//! measured phase (closed or open loop), and, when a history is recorded,
//! the converged final state of every key written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use kv_core::Partitioner as _;
use kv_server::client::{Client, ClientConfig, ClientError, Context};
use kv_server::endpoint::{ConnectSettings, admin_client, internal_client};
use kv_server::proto::internal_client::InternalClient;
use kv_server::proto::{Empty, ReadRequest};
use kv_server::security::AuthChannel;
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;

use crate::pace::PreciseTimer;
use crate::record::{Event, Recorder, hex};
use crate::watching::{RunWatch, Sink};
use crate::workload::{Distribution, KEY_PREFIX, KeyChooser, Op, Workload, key, value, value_id};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// gRPC addresses of the nodes to spread requests over.
    pub nodes: Vec<String>,
    /// The operation mix.
    pub workload: Workload,
    /// How keys are drawn.
    pub distribution: Distribution,
    /// Records loaded and drawn from.
    pub records: u64,
    /// Measured operations.
    pub ops: u64,
    /// Requests in flight (closed loop), or workers (open loop).
    pub concurrency: usize,
    /// Bytes per value (at least 16).
    pub value_size: usize,
    /// Write quorum sent (`None`: the cluster's).
    pub w: Option<u32>,
    /// Read quorum sent (`None`: the cluster's).
    pub r: Option<u32>,
    /// Open loop at this many operations per second (`None`: closed loop).
    pub rate: Option<f64>,
    /// Operations run before measuring.
    pub warmup_ops: u64,
    /// Stops the measured phase after this long even if `ops` are not
    /// done (`None`: run every operation).
    pub duration: Option<Duration>,
    /// Whether to load the records first.
    pub load: bool,
    /// Where to record the history (also collects the final state).
    pub history: Option<PathBuf>,
    /// Whether reads must see every write acknowledged before them (for
    /// the checker: R + W > N with sloppy quorum off).
    pub strict: bool,
    /// The cluster's sibling bound (for the checker).
    pub max_siblings: usize,
    /// Seeds key and operation choices.
    pub seed: u64,
    /// Per-request timeout.
    pub timeout: Duration,
    /// How long to wait for replicas to converge before the final read.
    pub converge: Duration,
    /// Show progress bars.
    pub progress: bool,
    /// TLS and token for the nodes (the checker's replica reads need the
    /// admin role).
    pub credentials: kv_server::security::ClientCredentials,
    /// Send operations on one pipeline per node instead of one call each
    /// (the SDK's default).
    pub pipeline: bool,
    /// With a history: watch every workload key from before the load, and
    /// record each change delivered (the checker then holds the change
    /// feed to every acknowledged write).
    pub watch: bool,
}

/// Latencies and errors of one kind of operation.
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Latencies in microseconds.
    pub latency: Histogram<u64>,
    /// Operations that failed.
    pub errors: u64,
    /// Failures by class (see [`error_class`]).
    pub error_classes: BTreeMap<&'static str, u64>,
}

impl Default for OpStats {
    fn default() -> Self {
        Self::new()
    }
}

impl OpStats {
    fn new() -> Self {
        OpStats {
            latency: new_histogram(),
            errors: 0,
            error_classes: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: &OpStats) {
        let _ = self.latency.add(&other.latency);
        self.errors += other.errors;
        for (class, n) in &other.error_classes {
            *self.error_classes.entry(class).or_default() += n;
        }
    }

    /// Counts one outcome that took `micros`.
    fn count(&mut self, result: &Result<(), ClientError>, micros: u64) {
        match result {
            Ok(()) => {
                let _ = self.latency.record(micros);
            }
            Err(e) => {
                self.errors += 1;
                *self.error_classes.entry(error_class(e)).or_default() += 1;
            }
        }
    }
}

/// What kind of failure a client error is, for reports and histories:
/// `timeout` (the node did not answer in time: the outcome of a write is
/// unknown), `unavailable/write-quorum` and `unavailable/read-quorum` (the
/// coordinator answered but too few replicas did), `unavailable/connect`
/// (no connection to the node), `unavailable/other`, `overloaded`,
/// `invalid`, `other`.
pub fn error_class(error: &ClientError) -> &'static str {
    match error {
        ClientError::Timeout(_) => "timeout",
        ClientError::Unavailable { message, .. } => {
            if message.contains("write quorum") {
                "unavailable/write-quorum"
            } else if message.contains("read quorum") {
                "unavailable/read-quorum"
            } else if message.contains("transport error")
                || message.contains("connect")
                || message.contains("unreachable")
            {
                "unavailable/connect"
            } else {
                "unavailable/other"
            }
        }
        ClientError::Overloaded(_) => "overloaded",
        ClientError::InvalidArgument(_) => "invalid",
        _ => "other",
    }
}

/// 1 us to 60 s at 3 significant digits (larger values widen it).
#[allow(clippy::expect_used)]
fn new_histogram() -> Histogram<u64> {
    // Constant bounds that satisfy the constructor (low >= 1, high >= 2 *
    // low, sigfig <= 5): it cannot fail.
    let mut h = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid constant bounds");
    h.auto(true);
    h
}

/// What the measured phase did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Wall time of the measured phase.
    pub elapsed: Duration,
    /// Per kind of operation, indexed by [`Op::index`].
    pub per_op: Vec<OpStats>,
    /// Keys whose final state was recorded (history runs).
    pub final_keys: usize,
    /// How long the replicas took to agree after the measured phase
    /// (history runs), reads of every replica included.
    pub converged_in: Option<Duration>,
    /// Each second of the measured phase: operations completed, and
    /// their latencies.
    pub timeline: Vec<Second>,
    /// When the measured phase began, in milliseconds since the Unix
    /// epoch (to line its seconds up with the nodes' logs and metrics).
    pub started_unix_ms: u64,
}

/// One second of the measured phase.
#[derive(Debug, Clone)]
pub struct Second {
    /// Of the operations completed in it, the ones that failed.
    pub errors: u64,
    /// Latencies (us) of the operations completed in it, failed ones
    /// included (a timeout is a latency too), at two significant digits.
    pub latency: Histogram<u64>,
}

impl Second {
    /// An empty second.
    pub fn new() -> Self {
        Second {
            errors: 0,
            latency: second_histogram(),
        }
    }

    /// Operations completed in it, failed ones included.
    pub fn ops(&self) -> u64 {
        self.latency.len()
    }
}

impl Default for Second {
    fn default() -> Self {
        Self::new()
    }
}

/// A second's latencies, coarser than a run's: a long run keeps one for
/// each of its seconds.
#[allow(clippy::expect_used)]
fn second_histogram() -> Histogram<u64> {
    // Constant bounds that satisfy the constructor: it cannot fail.
    let mut h = Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid constant bounds");
    h.auto(true);
    h
}

/// Milliseconds since the Unix epoch (0 for a clock set before it).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Counts one operation in second `i` of `seconds` (the seconds before it
/// that saw none are added empty).
fn count_in_second(seconds: &mut Vec<Second>, i: usize, micros: u64, failed: bool) {
    if seconds.len() <= i {
        seconds.resize_with(i + 1, Second::new);
    }
    let second = &mut seconds[i];
    second.errors += u64::from(failed);
    let _ = second.latency.record(micros);
}

/// The timeline as CSV, one line per second: `second,unix_ms,ops,errors,
/// p50_us,p99_us,max_us` (a header first), `unix_ms` the second's start
/// given the phase's. The last second may be cut short by the end of the
/// run.
pub fn timeline_csv(timeline: &[Second], started_unix_ms: u64) -> String {
    let mut out = String::from("second,unix_ms,ops,errors,p50_us,p99_us,max_us\n");
    for (i, s) in timeline.iter().enumerate() {
        // An empty second's quantiles and max are 0.
        let h = &s.latency;
        out.push_str(&format!(
            "{i},{},{},{},{},{},{}\n",
            started_unix_ms + 1_000 * i as u64,
            s.ops(),
            s.errors,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        ));
    }
    out
}

impl RunReport {
    /// Operations completed, failed ones included.
    pub fn ops(&self) -> u64 {
        self.per_op.iter().map(|s| s.latency.len() + s.errors).sum()
    }

    /// Failed operations.
    pub fn errors(&self) -> u64 {
        self.per_op.iter().map(|s| s.errors).sum()
    }

    /// Every latency together.
    pub fn overall(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for s in &self.per_op {
            let _ = all.add(&s.latency);
        }
        all
    }

    /// The report's text: the three summary lines, then one per kind.
    pub fn render(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let all = self.overall();
        let mut out = format!(
            "throughput: {:.0} ops/s\nlatency: p50_us={} p99_us={} p999_us={} max_us={}\nerrors: {}\n",
            self.ops() as f64 / secs,
            all.value_at_quantile(0.5),
            all.value_at_quantile(0.99),
            all.value_at_quantile(0.999),
            all.max(),
            self.errors()
        );
        for op in Op::ALL {
            let s = &self.per_op[op.index()];
            if s.latency.is_empty() && s.errors == 0 {
                continue;
            }
            out.push_str(&format!(
                "{}: ops={} ops_per_s={:.0} p50_us={} p99_us={} p999_us={} max_us={} errors={}\n",
                op.name(),
                s.latency.len() + s.errors,
                (s.latency.len() + s.errors) as f64 / secs,
                s.latency.value_at_quantile(0.5),
                s.latency.value_at_quantile(0.99),
                s.latency.value_at_quantile(0.999),
                s.latency.max(),
                s.errors
            ));
        }
        // Availability: operations that succeeded over those attempted,
        // reads and writes (updates, read-modify-writes, deletes) apart.
        let share = |ops: &[Op]| {
            let (mut done, mut failed) = (0u64, 0u64);
            for op in ops {
                let s = &self.per_op[op.index()];
                done += s.latency.len();
                failed += s.errors;
            }
            match done + failed {
                0 => "-".to_string(),
                all => format!("{:.3}%", 100.0 * done as f64 / all as f64),
            }
        };
        out.push_str(&format!(
            "availability: reads={} writes={}\n",
            share(&[Op::Read]),
            share(&[Op::Update, Op::ReadModifyWrite, Op::Delete])
        ));
        let classes: Vec<String> = Op::ALL
            .iter()
            .flat_map(|op| {
                self.per_op[op.index()]
                    .error_classes
                    .iter()
                    .map(move |(class, n)| format!("{}.{class}={n}", op.name()))
            })
            .collect();
        if !classes.is_empty() {
            out.push_str(&format!("errors_by_class: {}\n", classes.join(" ")));
        }
        out
    }
}

/// The context last seen for each record, in shards a record's number
/// picks (`record % SHARDS`), each a table indexed by `record / SHARDS`
/// and grown as far as the records used: a lookup is a lock and an index,
/// where a map hashed every record on every operation.
struct Contexts {
    shards: Vec<Mutex<Vec<Context>>>,
}

impl Contexts {
    const SHARDS: u64 = 64;

    fn new() -> Self {
        Contexts {
            shards: (0..Self::SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    fn place(record: u64) -> (usize, usize) {
        (
            (record % Self::SHARDS) as usize,
            (record / Self::SHARDS) as usize,
        )
    }

    /// The context last set for `record` (empty if none was).
    fn get(&self, record: u64) -> Context {
        let (shard, slot) = Self::place(record);
        self.shards[shard]
            .lock()
            .get(slot)
            .cloned()
            .unwrap_or_default()
    }

    fn set(&self, record: u64, context: Context) {
        let (shard, slot) = Self::place(record);
        let mut table = self.shards[shard].lock();
        if table.len() <= slot {
            table.resize_with(slot + 1, Context::default);
        }
        table[slot] = context;
    }
}

/// Shared by every worker.
struct Shared {
    client: Client,
    config: RunConfig,
    keys: KeyChooser,
    contexts: Contexts,
    next_value: AtomicU64,
    recorder: Option<Recorder>,
    started: Instant,
    written: Mutex<BTreeSet<u64>>,
    /// When the measured phase must stop, if bounded in time.
    deadline: Mutex<Option<Instant>>,
    /// The run's watch, when it has one.
    watch: std::sync::OnceLock<RunWatch>,
    /// When the measured phase began, and each of its seconds so far.
    timeline: Mutex<(Option<Instant>, Vec<Second>)>,
}

impl Shared {
    fn past_deadline(&self) -> bool {
        self.deadline.lock().is_some_and(|d| Instant::now() >= d)
    }

    fn context(&self, record: u64) -> Context {
        self.contexts.get(record)
    }

    fn remember(&self, record: u64, context: Context) {
        self.contexts.set(record, context);
    }

    /// Counts one operation completed now, after `micros`, in the
    /// measured phase's timeline (nothing before it begins).
    fn completed(&self, micros: u64, failed: bool) {
        let mut timeline = self.timeline.lock();
        let (start, seconds) = &mut *timeline;
        if let Some(start) = start {
            count_in_second(seconds, start.elapsed().as_secs() as usize, micros, failed);
        }
    }

    fn micros(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn record(&self, event: Event) {
        if let Some(r) = &self.recorder
            && let Err(e) = r.record(&event)
        {
            eprintln!("kv-bench: writing the history: {e}");
        }
    }

    /// A put of a new value, or a delete (`delete`), with `context`.
    async fn write(&self, record: u64, context: Context, delete: bool) -> Result<(), ClientError> {
        let id = self.next_value.fetch_add(1, Ordering::Relaxed);
        let k = key(record);
        let invoke = self.micros();
        let result = if delete {
            self.client.delete(&k, &context).await
        } else {
            self.client
                .put(&k, value(id, self.config.value_size), Some(&context))
                .await
        };
        let complete = self.micros();
        if self.recorder.is_some() {
            self.written.lock().insert(record);
            self.record(Event::Write {
                key: hex(&k),
                value: (!delete).then_some(id),
                context: hex(&context.0),
                acked: result
                    .as_ref()
                    .ok()
                    .map(|w| (w.version.actor, w.version.counter)),
                invoke_us: invoke,
                complete_us: complete,
                error: result
                    .as_ref()
                    .err()
                    .map(|e| format!("{}: {e}", error_class(e))),
                write_id: result.as_ref().map_or(0, |w| w.write_id),
            });
        }
        let written = result?;
        if let Some(watch) = self.watch.get() {
            watch.acked(&k, written.version.actor, written.version.counter);
        }
        self.remember(record, written.context);
        Ok(())
    }

    async fn read(&self, record: u64) -> Result<Context, ClientError> {
        let k = key(record);
        let invoke = self.micros();
        let read = match self.client.get(&k).await {
            Ok(read) => read,
            Err(e) => {
                if self.recorder.is_some() {
                    self.record(Event::ReadFailed {
                        key: hex(&k),
                        error: format!("{}: {e}", error_class(&e)),
                        invoke_us: invoke,
                        complete_us: self.micros(),
                    });
                }
                return Err(e);
            }
        };
        let complete = self.micros();
        if self.recorder.is_some() {
            self.record(Event::Read {
                key: hex(&k),
                values: read.values.iter().filter_map(|v| value_id(v)).collect(),
                invoke_us: invoke,
                complete_us: complete,
            });
        }
        self.remember(record, read.context.clone());
        Ok(read.context)
    }

    async fn op(&self, op: Op, record: u64) -> Result<(), ClientError> {
        match op {
            Op::Read => self.read(record).await.map(|_| ()),
            Op::Update => self.write(record, self.context(record), false).await,
            Op::ReadModifyWrite => {
                let context = self.read(record).await?;
                self.write(record, context, false).await
            }
            Op::Delete => self.write(record, self.context(record), true).await,
        }
    }
}

fn bar(show: bool, len: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// Runs `count` operations from `first` on `concurrency` workers, closed
/// loop; `make` picks each one. Returns per-kind statistics.
async fn closed_loop(
    shared: &Arc<Shared>,
    count: u64,
    bar: &ProgressBar,
    make: impl Fn(&mut SmallRng, u64) -> (Op, u64) + Send + Sync + Clone + 'static,
) -> Vec<OpStats> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..shared.config.concurrency {
        let (shared, next, bar, make) = (shared.clone(), next.clone(), bar.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(shared.config.seed ^ (worker as u64) << 32);
            let mut stats: Vec<OpStats> = Op::ALL.iter().map(|_| OpStats::new()).collect();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || shared.past_deadline() {
                    return stats;
                }
                let (op, record) = make(&mut rng, i);
                let started = Instant::now();
                let result = shared.op(op, record).await;
                let micros = started.elapsed().as_micros() as u64;
                stats[op.index()].count(&result, micros);
                shared.completed(micros, result.is_err());
                bar.inc(1);
            }
        }));
    }
    collect(tasks).await
}

/// Runs `count` operations issued at `rate` per second whatever the
/// latency (open loop); a latency counts from the operation's intended
/// start, so queueing behind slow requests is measured.
///
/// # Errors
///
/// The open loop's timer could not be made or failed (the run stops).
async fn open_loop(
    shared: &Arc<Shared>,
    count: u64,
    rate: f64,
    bar: &ProgressBar,
) -> Result<Vec<OpStats>, String> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let stats: Arc<Mutex<Vec<OpStats>>> =
        Arc::new(Mutex::new(Op::ALL.iter().map(|_| OpStats::new()).collect()));
    // At most `concurrency` operations are outstanding; one waiting for a
    // slot is already on the clock.
    let slots = Arc::new(tokio::sync::Semaphore::new(shared.config.concurrency));
    // Operations started and not yet finished, and a wake-up for when
    // that count reaches zero.
    let outstanding = Arc::new(AtomicU64::new(0));
    let idle = Arc::new(tokio::sync::Notify::new());
    // The pacer is a task that starts each operation as its own task, at
    // its moment to the microsecond (`PreciseTimer`); handing operations to
    // a fixed set of workers through one queue would serialise the
    // dispatch, which then becomes the bottleneck.
    let timer = PreciseTimer::new().map_err(|e| format!("the open loop's timer: {e}"))?;
    let pacer = {
        let (shared, stats, slots, bar) =
            (shared.clone(), stats.clone(), slots.clone(), bar.clone());
        let (outstanding, idle) = (outstanding.clone(), idle.clone());
        tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(shared.config.seed);
            let start = Instant::now();
            for i in 0..count {
                let due = start + interval.mul_f64(i as f64);
                if shared
                    .deadline
                    .lock()
                    .is_some_and(|d| due > d || Instant::now() >= d)
                {
                    return Ok(());
                }
                timer
                    .sleep_until(due.into_std())
                    .await
                    .map_err(|e| format!("the open loop's timer failed: {e}"))?;
                let op = shared.config.workload.pick(&mut rng);
                let record = shared.keys.next(&mut rng);
                let (shared, stats, slots, bar) =
                    (shared.clone(), stats.clone(), slots.clone(), bar.clone());
                let (outstanding, idle) = (outstanding.clone(), idle.clone());
                outstanding.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(_slot) = slots.acquire_owned().await {
                        let result = shared.op(op, record).await;
                        let micros = due.elapsed().as_micros() as u64;
                        let mut stats = stats.lock();
                        if let Some(s) = stats.get_mut(op.index()) {
                            s.count(&result, micros);
                        }
                        drop(stats);
                        shared.completed(micros, result.is_err());
                        bar.inc(1);
                    }
                    if outstanding.fetch_sub(1, Ordering::SeqCst) == 1 {
                        idle.notify_one();
                    }
                });
            }
            Ok(())
        })
    };
    let paced = pacer
        .await
        .map_err(|e| format!("the open loop's pacer: {e}"))
        .and_then(|paced| paced);
    // Wait until every operation the pacer started has finished (counting
    // them: a task not yet polled holds no slot, so waiting for the slots
    // alone could end early). A wake-up left from an earlier moment at
    // zero only makes the loop check again.
    while outstanding.load(Ordering::SeqCst) > 0 {
        idle.notified().await;
    }
    paced?;
    Ok(std::mem::take(&mut *stats.lock()))
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Vec<OpStats>>>) -> Vec<OpStats> {
    let mut total: Vec<OpStats> = Op::ALL.iter().map(|_| OpStats::new()).collect();
    for task in tasks {
        if let Ok(stats) = task.await {
            for (t, s) in total.iter_mut().zip(&stats) {
                t.merge(s);
            }
        }
    }
    total
}

/// Loads, warms up, measures; records the history and final states when
/// asked.
///
/// # Errors
/// Bad settings, or a cluster that cannot be reached at all.
pub async fn run(config: RunConfig) -> Result<RunReport, String> {
    if config.concurrency == 0 {
        return Err("concurrency must be at least 1".into());
    }
    if config.value_size < 16 {
        return Err("value size must be at least 16 bytes (values carry an id)".into());
    }
    let client = Client::new(
        &config.nodes,
        ClientConfig {
            request_timeout: config.timeout,
            w: config.w,
            r: config.r,
            // Retries and hedges are safe for recorded histories too:
            // every attempt of a write carries one write tag, so a value
            // stored by two coordinators is one version.
            credentials: config.credentials.clone(),
            pipeline: config.pipeline,
            ..ClientConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let recorder = match &config.history {
        Some(path) => Some(Recorder::create(path).map_err(|e| format!("{}: {e}", path.display()))?),
        None => None,
    };
    let shared = Arc::new(Shared {
        client,
        keys: KeyChooser::new(config.records, config.distribution)?,
        contexts: Contexts::new(),
        next_value: AtomicU64::new(1),
        recorder,
        started: Instant::now(),
        written: Mutex::new(BTreeSet::new()),
        deadline: Mutex::new(None),
        watch: std::sync::OnceLock::new(),
        timeline: Mutex::new((None, Vec::new())),
        config: config.clone(),
    });
    shared.record(Event::Meta {
        n: 3,
        w: config.w.unwrap_or(0),
        r: config.r.unwrap_or(0),
        strict: config.strict,
        value_size: config.value_size,
        max_siblings: config.max_siblings,
        started_unix_ms: Some(unix_ms()),
        watched: config.watch && shared.recorder.is_some(),
    });
    if config.watch && shared.recorder.is_some() {
        let sink: Sink = {
            let shared = shared.clone();
            Arc::new(move |event| shared.record(event))
        };
        let watch = RunWatch::start(&shared.client, KEY_PREFIX, shared.started, sink).await?;
        let _ = shared.watch.set(watch);
        eprintln!("watching every key");
    }
    if config.load {
        let b = bar(config.progress, config.records, "load");
        let stats = closed_loop(&shared, config.records, &b, |_, i| (Op::Update, i)).await;
        b.finish_and_clear();
        let failed: u64 = stats.iter().map(|s| s.errors).sum();
        if failed == config.records {
            return Err(format!(
                "every load write failed: is the cluster at {} running?",
                config.nodes.join(",")
            ));
        }
        eprintln!("loaded {} records ({failed} failed)", config.records);
    }
    let workload = config.workload;
    let pick = move |rng: &mut SmallRng, _: u64| (workload.pick(rng), 0);
    if config.warmup_ops > 0 {
        let b = bar(config.progress, config.warmup_ops, "warm-up");
        let chooser = shared.keys.clone();
        let _ = closed_loop(&shared, config.warmup_ops, &b, move |rng, i| {
            let (op, _) = pick(rng, i);
            (op, chooser.next(rng))
        })
        .await;
        b.finish_and_clear();
    }
    let b = bar(config.progress, config.ops, "run");
    let started = Instant::now();
    let started_unix_ms = unix_ms();
    *shared.deadline.lock() = config.duration.map(|d| started + d);
    shared.timeline.lock().0 = Some(started);
    // Ctrl-C (SIGINT) ends the measured phase now; what was measured is
    // reported as if the duration had run out.
    let interrupt = {
        let shared = shared.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: the measured phase stops here");
                *shared.deadline.lock() = Some(Instant::now());
            }
        })
    };
    let per_op = match config.rate {
        Some(rate) => open_loop(&shared, config.ops, rate, &b).await?,
        None => {
            let chooser = shared.keys.clone();
            closed_loop(&shared, config.ops, &b, move |rng, i| {
                let (op, _) = pick(rng, i);
                (op, chooser.next(rng))
            })
            .await
        }
    };
    let elapsed = started.elapsed();
    let timeline = std::mem::take(&mut *shared.timeline.lock()).1;
    interrupt.abort();
    b.finish_and_clear();
    let mut final_keys = 0;
    let mut converged_in = None;
    if shared.recorder.is_some() {
        let records: Vec<u64> = shared.written.lock().iter().copied().collect();
        final_keys = records.len();
        let waited = Instant::now();
        final_states(&shared, &records).await?;
        converged_in = Some(waited.elapsed());
        if let Some(watch) = shared.watch.get() {
            let missing = watch.finish(shared.config.converge).await;
            if missing > 0 {
                eprintln!("kv-bench: {missing} acknowledged writes never came through the watch");
            }
        }
        if let Some(r) = &shared.recorder {
            r.flush().map_err(|e| format!("writing the history: {e}"))?;
        }
    }
    Ok(RunReport {
        elapsed,
        per_op,
        final_keys,
        converged_in,
        timeline,
        started_unix_ms,
    })
}

/// The checker's connections: each replica read is short, and a node that
/// does not answer within 2 s is asked again on the next round.
fn checker_connection() -> ConnectSettings {
    ConnectSettings::client(Duration::from_secs(1), Duration::from_secs(2))
}

/// Waits until every written key's replicas hold the same state, then
/// records those states.
async fn final_states(shared: &Arc<Shared>, records: &[u64]) -> Result<(), String> {
    let first = &shared.config.nodes[0];
    let credentials = &shared.config.credentials;
    let bearer = credentials.bearer()?;
    let channel = credentials
        .endpoint(first, &checker_connection())?
        .connect()
        .await
        .map_err(|e| format!("{first}: {e}"))?;
    let mut admin = admin_client(InterceptedService::new(channel, bearer.clone()));
    let status = admin
        .status(Empty {})
        .await
        .map_err(|e| format!("status of {first}: {}", e.message()))?
        .into_inner();
    let ring = kv_server::ring_state::ring_of(&status.ring.unwrap_or_default())
        .map_err(|e| e.to_string())?;
    let mut peers: HashMap<u64, InternalClient<AuthChannel>> = HashMap::new();
    for m in &status.members {
        let endpoint = credentials.endpoint(&m.addr, &checker_connection())?;
        peers.insert(
            m.id,
            internal_client(InterceptedService::new(
                endpoint.connect_lazy(),
                bearer.clone(),
            )),
        );
    }
    let n = status.n as usize;
    let deadline = Instant::now() + shared.config.converge;
    let b = bar(shared.config.progress, records.len() as u64, "converge");
    let mut pending: Vec<u64> = records.to_vec();
    let mut finals: Vec<Event> = Vec::with_capacity(records.len());
    let mut diverged = 0usize;
    loop {
        let give_up = Instant::now() > deadline;
        let mut still = Vec::new();
        for &record in &pending {
            let k = key(record);
            let mut states = Vec::new();
            let mut answered = true;
            for replica in ring.preference_list(&k, n).map_err(|e| e.to_string())? {
                let client = peers
                    .get_mut(&replica.0)
                    .ok_or_else(|| format!("no connection to replica {replica}"))?;
                // A replica that does not answer (still partitioned,
                // restarting) is asked again on the next round.
                let state = match client.read(ReadRequest { key: k.clone() }).await {
                    Ok(reply) => reply.into_inner().state,
                    Err(_) => {
                        answered = false;
                        None
                    }
                };
                states.push((replica.0, state.map(|s| hex(&s))));
            }
            // After the deadline, keys are recorded as they are: the
            // checker reports the divergence.
            let same = answered && states.windows(2).all(|w| w[0].1 == w[1].1);
            diverged += usize::from(give_up && !same);
            if give_up || same {
                finals.push(Event::Final {
                    key: hex(&k),
                    replicas: states,
                });
                b.inc(1);
            } else {
                still.push(record);
            }
        }
        if still.is_empty() {
            break;
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.finish_and_clear();
    if diverged > 0 {
        eprintln!(
            "kv-bench: {diverged} keys still differ between replicas after {:?}",
            shared.config.converge
        );
    }
    for event in finals {
        shared.record(event);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_record_keeps_its_own_last_context() {
        let contexts = Contexts::new();
        // Never set: empty, even far past every table's end.
        assert_eq!(contexts.get(7), Context::default());
        // Records that share a shard (7 and 7 + 64) or a slot (7 and 8)
        // are kept apart; a later set replaces an earlier one.
        contexts.set(7, Context(vec![1]));
        contexts.set(7 + Contexts::SHARDS, Context(vec![2]));
        contexts.set(8, Context(vec![3]));
        contexts.set(7, Context(vec![4]));
        assert_eq!(contexts.get(7), Context(vec![4]));
        assert_eq!(contexts.get(7 + Contexts::SHARDS), Context(vec![2]));
        assert_eq!(contexts.get(8), Context(vec![3]));
        // A record far out grows its table; the records below it that
        // were never set stay empty.
        contexts.set(1_000_007, Context(vec![5]));
        assert_eq!(contexts.get(1_000_007), Context(vec![5]));
        assert_eq!(
            contexts.get(1_000_007 - Contexts::SHARDS),
            Context::default()
        );
        assert_eq!(contexts.get(7), Context(vec![4]));
    }

    #[test]
    fn the_timeline_keeps_each_seconds_latencies_apart() {
        let mut seconds = Vec::new();
        for micros in 1..=100u64 {
            count_in_second(&mut seconds, 0, micros * 10, false);
        }
        // Second 1 saw nothing; second 2 one slow failure among fast ones.
        for _ in 0..99 {
            count_in_second(&mut seconds, 2, 500, false);
        }
        count_in_second(&mut seconds, 2, 2_000_000, true);
        assert_eq!(seconds.len(), 3);
        let csv = timeline_csv(&seconds, 1_700_000_000_000);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "second,unix_ms,ops,errors,p50_us,p99_us,max_us");
        assert_eq!(lines[2], "1,1700000001000,0,0,0,0,0");
        let fields = |line: &str| -> Vec<u64> {
            line.split(',')
                .map(|f| f.parse().unwrap_or(u64::MAX))
                .collect()
        };
        let first = fields(lines[1]);
        assert_eq!(&first[..4], &[0, 1_700_000_000_000, 100, 0]);
        // Two significant digits: within 1% of 500 us and 990 us.
        assert!(
            first[4].abs_diff(500) <= 5 && first[5].abs_diff(990) <= 10,
            "{csv}"
        );
        let third = fields(lines[3]);
        assert_eq!(&third[..4], &[2, 1_700_000_002_000, 100, 1]);
        assert!(third[5].abs_diff(500) <= 5, "{csv}");
        // The one slow operation is the second's max, not its p99.
        assert!(third[6].abs_diff(2_000_000) <= 20_000, "{csv}");
    }

    #[test]
    fn errors_are_classed_and_availability_is_reported_apart() {
        let unavailable = |message: &str| ClientError::Unavailable {
            tried: 1,
            message: message.into(),
        };
        assert_eq!(
            error_class(&unavailable("write quorum not reached: 1 of 2")),
            "unavailable/write-quorum"
        );
        assert_eq!(
            error_class(&unavailable("read quorum not reached: 1 of 2")),
            "unavailable/read-quorum"
        );
        assert_eq!(
            error_class(&unavailable("10.77.0.3:7001: transport error")),
            "unavailable/connect"
        );
        assert_eq!(error_class(&ClientError::Timeout("late".into())), "timeout");
        let mut per_op: Vec<OpStats> = Op::ALL.iter().map(|_| OpStats::new()).collect();
        for i in 0..1000u64 {
            let result = if i < 3 {
                Err(ClientError::Timeout("late".into()))
            } else {
                Ok(())
            };
            per_op[Op::Update.index()].count(&result, 100);
            per_op[Op::Read.index()].count(&Ok(()), 50);
        }
        per_op[Op::Delete.index()].count(&Err(unavailable("write quorum not reached")), 9);
        let report = RunReport {
            elapsed: Duration::from_secs(1),
            per_op,
            final_keys: 0,
            converged_in: None,
            timeline: Vec::new(),
            started_unix_ms: 0,
        };
        let text = report.render();
        // 997 + 0 of 1001 writes; every read.
        assert!(
            text.contains("availability: reads=100.000% writes=99.600%"),
            "{text}"
        );
        assert!(
            text.contains("errors_by_class: update.timeout=3 delete.unavailable/write-quorum=1"),
            "{text}"
        );
    }
}
