//! The Rust client SDK: get, put and delete with causal contexts, sibling
//! resolution by a function of yours, one multiplexed connection per node,
//! and hedged, safely retried requests: a node that is down, paused or
//! slow is joined by the next replica, and a write sent twice is stored
//! once.
//!
//! ```no_run
//! use kv_server::client::{Client, ClientConfig};
//!
//! # async fn demo() -> Result<(), kv_server::client::ClientError> {
//! let client = Client::new(["127.0.0.1:7001", "127.0.0.1:7002"], ClientConfig::default())?;
//! let first = client.put(b"cart:7", b"apple".to_vec(), None).await?;
//! // Read, change, write back with the context of the read: the new value
//! // supersedes what was read instead of becoming a sibling of it.
//! let read = client.get(b"cart:7").await?;
//! client.put(b"cart:7", b"apple,pear".to_vec(), Some(&read.context)).await?;
//! // Concurrent writers make siblings; resolve them with your own merge.
//! let merged = client
//!     .get_resolved(b"cart:7", |siblings| siblings.iter().max().cloned().unwrap_or_default())
//!     .await?;
//! # let _ = (first, merged);
//! # Ok(()) }
//! ```

mod attempts;
mod watch;

pub use watch::{Change, Watcher};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::RwLock;
use std::time::Duration;

use tonic::Code;
use tonic::service::interceptor::InterceptedService;

use crate::security::AuthChannel;

use crate::endpoint::{ConnectSettings, kv_client};
use crate::pipeline::Pipe;
use crate::proto::kv_client::KvClient;
use crate::proto::pipelined_op::Op;
use crate::proto::pipelined_result::Result as Outcome;
use crate::proto::{DeleteRequest, GetReply, GetRequest, ListRequest, PutReply, PutRequest};
use attempts::Attempts;

/// The causal context of a read or write: opaque bytes to send back with
/// the next write of the key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Context(pub Vec<u8>);

/// A page of a key listing ([`Client::list`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyList {
    /// The keys, ascending.
    pub keys: Vec<Vec<u8>>,
    /// Pass as `after` to continue; `None` when the listing reached the
    /// end of the prefix's keys.
    pub next: Option<Vec<u8>>,
}

/// How long a listing waits for each page at least (a page asks every
/// node of the cluster).
const LIST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// One item of [`Client::write_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchWrite {
    /// The key.
    pub key: Vec<u8>,
    /// The value to put; `None` deletes.
    pub value: Option<Vec<u8>>,
    /// What the write supersedes (from a read); `None` supersedes nothing
    /// (a put then makes a sibling of what exists).
    pub context: Option<Context>,
    /// A put's time to live (see [`Client::put_with_ttl`]); `None`: the
    /// value never lapses.
    pub ttl: Option<Duration>,
    /// What the key must be like for the write to be stored.
    pub condition: WriteCondition,
}

/// A condition on a write in [`Client::write_many`], as the single-key
/// calls have them (docs/api.md, "Conditional writes"). A refused item
/// fails alone with [`ClientError::PreconditionFailed`] and the key's
/// current context; a conditional item is sent once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteCondition {
    /// None: an ordinary write.
    #[default]
    Always,
    /// Create only: stored if a read at R finds no live value
    /// ([`Client::put_if_absent`]).
    IfAbsent,
    /// Stored if nothing was written since the read the item's context
    /// came from ([`Client::put_if_unchanged`],
    /// [`Client::delete_if_unchanged`]).
    IfUnchanged,
}

impl BatchWrite {
    /// A put of `value` at `key`, superseding what `context` covers.
    pub fn put(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        context: Option<Context>,
    ) -> Self {
        BatchWrite {
            key: key.into(),
            value: Some(value.into()),
            context,
            ttl: None,
            condition: WriteCondition::Always,
        }
    }

    /// A create of `key` with `value`, only if it holds no live value.
    pub fn put_if_absent(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        BatchWrite {
            condition: WriteCondition::IfAbsent,
            ..BatchWrite::put(key, value, None)
        }
    }

    /// This write only if nothing was written since the read its context
    /// came from.
    #[must_use]
    pub fn if_unchanged(self) -> Self {
        BatchWrite {
            condition: WriteCondition::IfUnchanged,
            ..self
        }
    }

    /// This put with a time to live (see [`Client::put_with_ttl`]).
    #[must_use]
    pub fn with_ttl(self, ttl: Duration) -> Self {
        BatchWrite {
            ttl: Some(ttl),
            ..self
        }
    }

    /// A delete of what `context` covers at `key`.
    pub fn delete(key: impl Into<Vec<u8>>, context: Context) -> Self {
        BatchWrite {
            key: key.into(),
            value: None,
            context: Some(context),
            ttl: None,
            condition: WriteCondition::Always,
        }
    }
}

/// How a write is sent: its condition and time to live.
#[derive(Debug, Clone, Copy, Default)]
struct WriteOptions {
    condition: WriteCondition,
    /// Time to live in seconds; 0 for none.
    ttl_secs: u32,
}

impl From<WriteCondition> for WriteOptions {
    fn from(condition: WriteCondition) -> Self {
        WriteOptions {
            condition,
            ttl_secs: 0,
        }
    }
}

/// A time to live in whole seconds, rounded up.
fn ttl_secs(ttl: Duration) -> Result<u32, ClientError> {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    match u32::try_from(secs) {
        Ok(0) => Err(ClientError::InvalidArgument(
            "a time to live must be positive".into(),
        )),
        Ok(secs) => Ok(secs),
        Err(_) => Err(ClientError::InvalidArgument(format!(
            "a time to live of {secs} s is beyond {} s",
            u32::MAX
        ))),
    }
}

/// Lower-case hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses [`hex`] output (either case).
///
/// # Errors
/// A message naming `text` when it is not hexadecimal.
pub fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("{text:?} is not hex");
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

impl Context {
    /// The empty context: a write with it supersedes nothing.
    pub fn empty() -> Self {
        Context(Vec::new())
    }

    /// Lower-case hexadecimal, for people and command lines.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses [`to_hex`](Self::to_hex) output.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] when `text` is not hexadecimal.
    pub fn from_hex(text: &str) -> Result<Self, ClientError> {
        unhex(text)
            .map(Context)
            .map_err(|e| ClientError::InvalidArgument(format!("context {e}")))
    }
}

/// What a read returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versioned {
    /// The live siblings: none when the key is absent or deleted, one
    /// normally, several after concurrent writes.
    pub values: Vec<Vec<u8>>,
    /// Send this with the next write of the key.
    pub context: Context,
}

impl Versioned {
    /// The only value, if there is exactly one.
    pub fn single(&self) -> Option<&[u8]> {
        match self.values.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// A version's identity: the actor that coordinated the write (a node in
/// one epoch of its life, see [`kv_core::ActorId`]) and its counter.
/// Unique for the life of the cluster; what a history checker follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    /// The coordinating actor, raw (`epoch << 32 | node id`).
    pub actor: u64,
    /// Its counter for the key.
    pub counter: u64,
}

/// What a write returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// The context of the new state: send it with the next write of the
    /// key to supersede this one.
    pub context: Context,
    /// The new version.
    pub version: Version,
    /// The write's tag id, the same on every attempt of it (see
    /// [`kv_core::WriteTag`]).
    pub write_id: u64,
}

fn written(reply: crate::proto::PutReply, write_id: u64) -> Written {
    Written {
        write_id,
        context: Context(reply.context),
        version: Version {
            actor: reply.dot_actor,
            counter: reply.dot_counter,
        },
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request is wrong (empty or oversize key or value, a context
    /// that does not decode, a quorum above N); retrying cannot help.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No node could serve the request: the last node's answer.
    #[error("unavailable after trying {tried} node(s): {message}")]
    Unavailable {
        /// Nodes tried.
        tried: usize,
        /// What the last one said.
        message: String,
    },
    /// The node did not answer in time. For a write the outcome is
    /// unknown: it may have been applied.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The node is overloaded; back off and retry.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// A conditional write was refused: the key did not hold what the
    /// condition asked. `context` is the key's current one (read the key,
    /// decide, write again with it).
    #[error("precondition failed: {message}")]
    PreconditionFailed {
        /// Why.
        message: String,
        /// The key's current context.
        context: Context,
    },
    /// Any other failure reported by the node.
    #[error("{code:?}: {message}")]
    Other {
        /// The gRPC code.
        code: Code,
        /// The node's message.
        message: String,
    },
}

/// How the client behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Time allowed for one attempt (2 s).
    pub request_timeout: Duration,
    /// Time allowed to connect to a node (1 s).
    pub connect_timeout: Duration,
    /// Nodes asked per request, at most (3): the next one is asked when
    /// one answers Unavailable or times out, or is slow (see
    /// `hedge_factor`). A node that could not even be connected to never
    /// received the request, so it is skipped without counting: a request
    /// is always tried on a node it can reach, even with `attempts = 1`.
    /// Reads always may ask two. Every attempt of a write carries the same
    /// write tag, so a write asked of two nodes is stored once.
    pub attempts: usize,
    /// A request not answered within this many times the recent latency
    /// of its kind (reads, writes) is also sent to the next node (4); 0
    /// turns hedging off (the next node is then asked only after a
    /// failure or the request timeout).
    pub hedge_factor: u32,
    /// The shortest wait before hedging (20 ms).
    pub hedge_floor: Duration,
    /// Write quorum sent with writes; `None` for the cluster's W.
    pub w: Option<u32>,
    /// Read quorum sent with reads; `None` for the cluster's R.
    pub r: Option<u32>,
    /// Send each request first to the key's first replica (its
    /// coordinator), learned from the cluster's ring, which saves the
    /// forwarding hop (true).
    pub route_by_key: bool,
    /// TLS (the cluster CA to trust, a client certificate) and a token;
    /// default: plaintext, no token (a node on loopback without security).
    pub credentials: crate::security::ClientCredentials,
    /// Send reads and writes on one long-lived stream per node (a
    /// pipeline: operations under way together share messages) instead of
    /// one call each (true). Hedging, retries and timeouts are the same
    /// either way.
    pub pipeline: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            attempts: 3,
            hedge_factor: 4,
            hedge_floor: Duration::from_millis(20),
            w: None,
            r: None,
            route_by_key: true,
            credentials: crate::security::ClientCredentials::default(),
            pipeline: true,
        }
    }
}

/// How often the ring is fetched again for routing.
const ROUTES_TTL: Duration = Duration::from_secs(5);

/// Where keys live, as this client last learned it.
struct Routes {
    ring: kv_ring::ConsistentHashRing,
    /// Node id to its index among the client's nodes (nodes it was not
    /// given are not routed to).
    index: std::collections::HashMap<u64, usize>,
    /// Replicas per key.
    n: usize,
    /// Nodes whose storage refuses writes: routed around.
    unhealthy: std::collections::HashSet<u64>,
    fetched: std::time::Instant,
}

struct Node {
    addr: String,
    kv: KvClient<AuthChannel>,
    channel: AuthChannel,
    /// The node's pipeline, when pipelining is on.
    pipe: Option<Arc<Pipe>>,
}

impl Node {
    async fn get(&self, request: GetRequest, timeout: Duration) -> Result<GetReply, tonic::Status> {
        let Some(pipe) = &self.pipe else {
            return Ok(self.kv.clone().get(request).await?.into_inner());
        };
        match pipe.call(Op::Get(request), timeout).await? {
            Outcome::Get(reply) => Ok(reply),
            _ => Err(tonic::Status::internal("a read answered as a write")),
        }
    }

    async fn write(&self, op: Op, timeout: Duration) -> Result<PutReply, tonic::Status> {
        let Some(pipe) = &self.pipe else {
            let mut kv = self.kv.clone();
            let reply = match op {
                Op::Put(request) => kv.put(request).await?,
                Op::Delete(request) => kv.delete(request).await?,
                Op::Get(_) => return Err(tonic::Status::internal("a read sent as a write")),
            };
            return Ok(reply.into_inner());
        };
        match pipe.call(op, timeout).await? {
            Outcome::Put(reply) => Ok(reply),
            _ => Err(tonic::Status::internal("a write answered as a read")),
        }
    }
}

/// A client of a kv cluster. Cheap to clone; clones share connections.
///
/// Requests go to the key's replicas (its coordinator first) once the
/// client has learned the ring, to the nodes round robin before (any node
/// coordinates any key). A node that answers Unavailable, times out, or
/// is slower than a few times the recent latency is joined by the next
/// one, up to [`ClientConfig::attempts`] nodes; a node that cannot be
/// connected to is skipped without counting (it never received the
/// request). Every attempt of one write carries the same random
/// [`kv_core::WriteTag`], so a write that reached two coordinators (the
/// first answered too late, or its answer was lost) is stored once.
#[derive(Clone)]
pub struct Client {
    nodes: Arc<Vec<Node>>,
    next: Arc<AtomicUsize>,
    config: ClientConfig,
    routes: Arc<RwLock<Option<Routes>>>,
    refreshing: Arc<AtomicBool>,
    /// How long reads have recently taken.
    read_latency: Arc<kv_coordinator::RecentLatency>,
    /// How long writes have recently taken.
    write_latency: Arc<kv_coordinator::RecentLatency>,
    /// Where write tags come from.
    write_ids: Arc<WriteIds>,
}

/// Random write tag ids: a keyed hash (SipHash with a random key per
/// client, from the standard library's `RandomState`) of a counter, so
/// ids are unpredictable, never repeat within a client, and differ
/// between clients.
#[derive(Default)]
struct WriteIds {
    keys: std::collections::hash_map::RandomState,
    next: std::sync::atomic::AtomicU64,
}

impl WriteIds {
    /// A fresh id, never 0 (0 means "no tag" on the wire).
    fn next(&self) -> u64 {
        use std::hash::BuildHasher as _;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.keys.hash_one(n).max(1)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field(
                "nodes",
                &self.nodes.iter().map(|n| &n.addr).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Whether an Unavailable message says the request never left this
/// client: the connection to the node could not be made (refused, or no
/// route), so retrying it elsewhere cannot apply it twice.
fn never_sent(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("tcp connect error")
        || message.contains("connection refused")
        || message.contains("error trying to connect")
}

/// Whether a failed write attempt may nevertheless have been stored by
/// the node (it timed out or lost its connection after it was sent).
fn may_have_stored(status: &tonic::Status) -> bool {
    try_elsewhere(status).is_ok_and(|message| !never_sent(&message))
}

/// A failure that another node may not have (down, cut off, too slow):
/// its message, to try the next node with; any other failure is the
/// answer.
fn try_elsewhere(status: &tonic::Status) -> Result<String, ClientError> {
    match classify(status) {
        ClientError::Unavailable { message, .. } | ClientError::Timeout(message) => Ok(message),
        other => Err(other),
    }
}

/// Whether `status` is this client's transport failing rather than an
/// answer from the node.
fn broken_connection(status: &tonic::Status) -> bool {
    let message = status.message();
    matches!(
        status.code(),
        Code::Unknown | Code::Internal | Code::ResourceExhausted
    ) && (message.starts_with("transport error") || message.starts_with("h2 protocol error"))
}

fn classify(status: &tonic::Status) -> ClientError {
    let message = status.message().to_string();
    // The connection broke under the request (the node was killed, or
    // closed the connection): tonic reports that as Unknown ("transport
    // error") or by the HTTP/2 reason, not as Unavailable.
    if broken_connection(status) {
        return ClientError::Unavailable { tried: 1, message };
    }
    match status.code() {
        Code::InvalidArgument => ClientError::InvalidArgument(message),
        Code::DeadlineExceeded | Code::Cancelled => ClientError::Timeout(message),
        Code::ResourceExhausted => ClientError::Overloaded(message),
        Code::FailedPrecondition => ClientError::PreconditionFailed {
            message,
            context: Context(crate::pipeline::status_context(status)),
        },
        Code::Unavailable => ClientError::Unavailable { tried: 1, message },
        code => ClientError::Other { code, message },
    }
}

impl Client {
    /// A client of the nodes at `addrs` (`host:port`). Connections are made
    /// lazily, on first use, and re-made after failures.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] when no address is given, one does
    /// not parse, or no Tokio runtime is running (connections live on it).
    pub fn new<S: AsRef<str>>(
        addrs: impl IntoIterator<Item = S>,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        Self::with_connect(addrs, config, crate::tcp_connect())
    }

    /// [`new`](Self::new), making connections with `connect` (for example
    /// over a simulated network).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_connect<S: AsRef<str>>(
        addrs: impl IntoIterator<Item = S>,
        config: ClientConfig,
        connect: crate::Connect,
    ) -> Result<Self, ClientError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ClientError::InvalidArgument(
                "Client::new must be called inside a Tokio runtime".into(),
            ));
        }
        let bearer = config
            .credentials
            .bearer()
            .map_err(ClientError::InvalidArgument)?;
        let mut nodes = Vec::new();
        for addr in addrs {
            let addr = addr.as_ref().to_string();
            let endpoint = config
                .credentials
                .endpoint(
                    &addr,
                    &ConnectSettings::client(config.connect_timeout, config.request_timeout),
                )
                .map_err(ClientError::InvalidArgument)?;
            let channel = InterceptedService::new(connect(endpoint), bearer.clone());
            let kv = kv_client(channel.clone());
            let pipe = if config.pipeline {
                // A connection of its own, without a per-call deadline
                // (it would end the stream; each operation has its own).
                let settings = ConnectSettings {
                    request_timeout: None,
                    ..ConnectSettings::client(config.connect_timeout, config.request_timeout)
                };
                let endpoint = config
                    .credentials
                    .endpoint(&addr, &settings)
                    .map_err(ClientError::InvalidArgument)?;
                let channel = InterceptedService::new(connect(endpoint), bearer.clone());
                Some(Arc::new(Pipe::new(kv_client(channel), addr.clone())))
            } else {
                None
            };
            nodes.push(Node {
                addr,
                kv,
                channel,
                pipe,
            });
        }
        if nodes.is_empty() {
            return Err(ClientError::InvalidArgument("no node address given".into()));
        }
        Ok(Client {
            nodes: Arc::new(nodes),
            next: Arc::new(AtomicUsize::new(0)),
            config,
            routes: Arc::new(RwLock::new(None)),
            refreshing: Arc::new(AtomicBool::new(false)),
            read_latency: Arc::new(kv_coordinator::RecentLatency::default()),
            write_latency: Arc::new(kv_coordinator::RecentLatency::default()),
            write_ids: Arc::new(WriteIds::default()),
        })
    }

    /// This client, sending write quorum `w` and read quorum `r` with
    /// every request (`None`: the cluster's).
    #[must_use]
    pub fn with_quorums(mut self, w: Option<u32>, r: Option<u32>) -> Self {
        self.config.w = w;
        self.config.r = r;
        self
    }

    /// Fetches the ring in the background when routing is on and the
    /// last fetch is missing or old; requests never wait for it.
    fn refresh_routes(&self) {
        if !self.config.route_by_key {
            return;
        }
        let fresh = self
            .routes
            .read()
            .as_ref()
            .is_some_and(|r| r.fetched.elapsed() < ROUTES_TTL);
        if fresh || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (nodes, routes, refreshing) = (
            self.nodes.clone(),
            self.routes.clone(),
            self.refreshing.clone(),
        );
        let start = self.next.load(Ordering::Relaxed);
        tokio::spawn(async move {
            for i in 0..nodes.len() {
                let node = &nodes[(start + i) % nodes.len()];
                let mut admin = crate::endpoint::admin_client(node.channel.clone());
                let Ok(status) = admin.status(crate::proto::Empty {}).await else {
                    continue;
                };
                let status = status.into_inner();
                let unhealthy = status
                    .members
                    .iter()
                    .filter(|m| m.unhealthy)
                    .map(|m| m.id)
                    .collect();
                let n = (status.n as usize).max(1);
                let state = status.ring.unwrap_or_default();
                let Ok(ring) = crate::ring_state::ring_of(&state) else {
                    continue;
                };
                let index = state
                    .members
                    .iter()
                    .filter_map(|m| {
                        nodes
                            .iter()
                            .position(|n| n.addr == m.addr)
                            .map(|i| (m.id, i))
                    })
                    .collect();
                *routes.write() = Some(Routes {
                    ring,
                    index,
                    n,
                    unhealthy,
                    fetched: std::time::Instant::now(),
                });
                break;
            }
            refreshing.store(false, Ordering::Release);
        });
    }

    /// Whether the client currently knows the ring and routes by key.
    pub fn routes_known(&self) -> bool {
        self.routes.read().is_some()
    }

    /// The indexes among the nodes of `key`'s replicas, those whose
    /// storage takes writes first, in preference order, if known.
    fn replicas(&self, key: &[u8]) -> Vec<usize> {
        use kv_core::Partitioner as _;
        let routes = self.routes.read();
        let Some(routes) = routes.as_ref() else {
            return Vec::new();
        };
        let Ok(replicas) = routes.ring.preference_list(key, routes.n) else {
            return Vec::new();
        };
        let (healthy, failing): (Vec<&kv_core::NodeId>, Vec<_>) = replicas
            .iter()
            .partition(|r| !routes.unhealthy.contains(&r.0));
        healthy
            .into_iter()
            .chain(failing)
            .filter_map(|r| routes.index.get(&r.0).copied())
            .collect()
    }

    /// The nodes to try for `key`, in order: its replicas when known (its
    /// coordinator first), then the others round robin.
    fn order(&self, key: &[u8]) -> Vec<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut order = self.replicas(key);
        let count = self.nodes.len();
        let others: Vec<usize> = (0..count)
            .map(|i| (start + i) % count)
            .filter(|i| !order.contains(i))
            .collect();
        order.extend(others);
        order
    }

    /// Sends a request for `key` to its nodes in [`order`](Self::order)
    /// until one answers: to the next node when one fails with Unavailable
    /// or a timeout, and also, hedging, when none has answered within
    /// [`hedge_delay`](Self::hedge_delay) (a paused or cut-off node); the
    /// first answer wins. At most `budget` nodes are asked; a node that
    /// could not even be connected to never received the request and does
    /// not count. `call` gets the node and whether an earlier attempt was
    /// sent (a write's retry flag).
    ///
    /// With `settle`, an attempt that wins waits for the attempts sent
    /// after it to finish too (each within the request timeout; earlier
    /// attempts are left, they were given up on): when a write's first
    /// attempt wins against its hedge, the hedge's copy is then stored
    /// before anyone can read the acknowledged one and overwrite it, so
    /// the two copies meet (and become one) instead of the hedge's copy
    /// arriving after the overwrite. And when the first attempt wins
    /// while another may have stored a copy (a hedge that answered, or
    /// failed without saying), the winner gets the request once more as a
    /// retry, so that the replicas remember the write for the tombstone
    /// grace once it is overwritten, not briefly (docs/architecture.md).
    async fn hedged<'a, T, F, Fut>(
        &'a self,
        key: &[u8],
        budget: usize,
        latency: &kv_coordinator::RecentLatency,
        settle: bool,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(&'a Node, bool) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.refresh_routes();
        let mut order = self.order(key).into_iter();
        let budget = budget.clamp(1, self.nodes.len());
        // Attempt `n` (from 0) to node `index`.
        let call = |index: usize, n: usize| {
            let attempt = call(&self.nodes[index], n > 0);
            async move {
                let started = std::time::Instant::now();
                (n, index, attempt.await, started.elapsed())
            }
        };
        let mut pending = Attempts::with_capacity(budget);
        let (mut counted, mut tried) = (0, 0);
        if let Some(first) = order.next() {
            pending.push(call(first, 0));
            (counted, tried) = (1, 1);
        }
        let mut last = String::new();
        let mut finished: Vec<usize> = Vec::new();
        // Whether an attempt other than the one that wins may have stored
        // a copy (see `settle`).
        let mut other_copy = false;
        loop {
            let hedge = tokio::time::sleep(self.hedge_delay(latency));
            tokio::select! {
                done = pending.next() => {
                    let Some((n, index, result, took)) = done else {
                        return Err(ClientError::Unavailable { tried, message: last });
                    };
                    finished.push(n);
                    let status = match result {
                        Ok(value) => {
                            latency.observe(took);
                            // Attempts are numbered in the order sent, and
                            // `tried` of them were sent.
                            let mut waiting: Vec<usize> =
                                (n + 1..tried).filter(|m| !finished.contains(m)).collect();
                            while settle
                                && !waiting.is_empty()
                                && let Some((m, _, later, _)) = pending.next().await
                            {
                                waiting.retain(|&x| x != m);
                                // A hedge that was stored (answered or not)
                                // is another copy of this write.
                                other_copy |= later.as_ref().map_or_else(may_have_stored, |_| true);
                            }
                            if settle && other_copy && n == 0 {
                                // Another attempt may have left a copy of
                                // this write on another coordinator, which
                                // a partition or sloppy quorum may keep
                                // from meeting this one for a long time.
                                // Telling the winner it met a retry makes
                                // the replicas remember the write for the
                                // tombstone grace once it is overwritten
                                // (a later attempt's own copy already is),
                                // so the other copy cannot come back then.
                                // Best effort: the write is stored already.
                                let _ = call(index, tried).await;
                            }
                            return Ok(value);
                        }
                        Err(status) => status,
                    };
                    let message = try_elsewhere(&status)?;
                    if never_sent(&message) {
                        counted -= 1;
                    } else {
                        // Sent, then lost: it may have been stored.
                        other_copy = true;
                    }
                    last = format!("{}: {message}", self.nodes[index].addr);
                    if counted < budget && let Some(next) = order.next() {
                        pending.push(call(next, tried));
                        counted += 1;
                        tried += 1;
                    }
                }
                () = hedge, if self.config.hedge_factor > 0 && counted < budget && !pending.is_empty() => {
                    if let Some(next) = order.next() {
                        pending.push(call(next, tried));
                        counted += 1;
                        tried += 1;
                    }
                }
            }
        }
    }

    /// Reads `key`: every live sibling and the context.
    ///
    /// # Errors
    /// [`ClientError`] as the cluster reports it.
    ///
    /// Reads are hedged: when the first node has not answered within a
    /// few times the recent read latency (a paused or cut-off node), the
    /// same read goes to the next node too and the first answer wins. A
    /// read changes nothing, so asking twice is safe.
    pub async fn get(&self, key: &[u8]) -> Result<Versioned, ClientError> {
        let request = GetRequest {
            key: key.to_vec(),
            r: self.config.r.unwrap_or(0),
        };
        // Reads may always go to a second node; more only as configured.
        let budget = self.config.attempts.max(2);
        let reply = self
            .hedged(key, budget, &self.read_latency, false, |node, _| {
                let request = request.clone();
                let timeout = self.config.request_timeout;
                async move { node.get(request, timeout).await }
            })
            .await?;
        Ok(Versioned {
            values: reply.values,
            context: Context(reply.context),
        })
    }

    /// How long a request waits before it is hedged on another node:
    /// [`ClientConfig::hedge_factor`] times the recent latency, at least
    /// [`ClientConfig::hedge_floor`], at most half the request timeout
    /// (four times the floor before any request has been timed).
    fn hedge_delay(&self, latency: &kv_coordinator::RecentLatency) -> Duration {
        let floor = self.config.hedge_floor;
        latency.scaled(
            self.config.hedge_factor,
            floor,
            self.config.request_timeout / 2,
            floor * 4,
        )
    }

    /// A write (`None`: a delete) under one fresh [`kv_core::WriteTag`]
    /// for all its attempts: hedged and retried like a read, and stored
    /// once however many nodes took it.
    async fn write(
        &self,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: &[u8],
    ) -> Result<Written, ClientError> {
        self.write_if(key, value, context, WriteOptions::default())
            .await
    }

    /// [`write`](Self::write) with [`WriteOptions`]. A conditional write
    /// is sent once, neither hedged nor retried: an attempt whose first
    /// copy was stored would find its own write and be refused, so a lost
    /// answer is reported as [`ClientError::Timeout`] (outcome unknown)
    /// instead.
    async fn write_if(
        &self,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: &[u8],
        options: WriteOptions,
    ) -> Result<Written, ClientError> {
        let WriteOptions {
            condition,
            ttl_secs,
        } = options;
        let if_none_match = condition == WriteCondition::IfAbsent;
        let if_not_modified = condition == WriteCondition::IfUnchanged;
        let w = self.config.w.unwrap_or(0);
        let write_id = self.write_ids.next();
        let attempts = if condition == WriteCondition::Always {
            self.config.attempts
        } else {
            1
        };
        let reply = self
            .hedged(key, attempts, &self.write_latency, true, |node, retry| {
                let (key, context) = (key.to_vec(), context.to_vec());
                let op = match value.clone() {
                    Some(value) => Op::Put(PutRequest {
                        key,
                        value,
                        context,
                        w,
                        write_id,
                        retry,
                        if_none_match,
                        if_not_modified,
                        ttl_secs,
                    }),
                    None => Op::Delete(DeleteRequest {
                        key,
                        context,
                        w,
                        write_id,
                        retry,
                        if_not_modified,
                    }),
                };
                let timeout = self.config.request_timeout;
                async move { node.write(op, timeout).await }
            })
            .await?;
        Ok(written(reply, write_id))
    }

    /// Writes `value`, superseding what `context` (from a read) covers;
    /// `None` supersedes nothing, so an existing value stays as a sibling.
    /// Returns the new version and its context. The write may be sent to
    /// more than one node (see [`Client`]); it is stored once.
    ///
    /// # Errors
    /// [`ClientError`] as the cluster reports it.
    pub async fn put(
        &self,
        key: &[u8],
        value: Vec<u8>,
        context: Option<&Context>,
    ) -> Result<Written, ClientError> {
        let context = context.map(|c| c.0.as_slice()).unwrap_or_default();
        self.write(key, Some(value), context).await
    }

    /// [`put`](Self::put) of a value that lapses `ttl` from now (whole
    /// seconds, rounded up): from then on every replica reads the key as
    /// absent (unless another version of it is live), and the version is
    /// collected like a tombstone. The node the write reaches stamps it
    /// with its clock plus `ttl`, so nodes' clocks should agree (NTP):
    /// docs/api.md, "Time to live".
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for a zero `ttl` or one beyond
    /// `u32::MAX` seconds; otherwise as [`put`](Self::put).
    pub async fn put_with_ttl(
        &self,
        key: &[u8],
        value: Vec<u8>,
        context: Option<&Context>,
        ttl: Duration,
    ) -> Result<Written, ClientError> {
        let context = context.map(|c| c.0.as_slice()).unwrap_or_default();
        let options = WriteOptions {
            ttl_secs: ttl_secs(ttl)?,
            ..WriteOptions::default()
        };
        self.write_if(key, Some(value), context, options).await
    }

    /// Deletes what `context` covers (a tombstone, itself a version).
    ///
    /// # Errors
    /// [`ClientError`] as the cluster reports it.
    pub async fn delete(&self, key: &[u8], context: &Context) -> Result<Written, ClientError> {
        self.write(key, None, &context.0).await
    }

    /// Creates `key` with `value` only if a read at R finds it absent (or
    /// deleted); otherwise [`ClientError::PreconditionFailed`] with its
    /// current context. Not atomic with concurrent writers: see
    /// docs/api.md, "Conditional writes".
    ///
    /// # Errors
    /// [`ClientError`] as the cluster reports it.
    pub async fn put_if_absent(&self, key: &[u8], value: Vec<u8>) -> Result<Written, ClientError> {
        self.write_if(key, Some(value), &[], WriteCondition::IfAbsent.into())
            .await
    }

    /// Writes `value` only if nothing was written to `key` since the read
    /// `context` came from (a read at R finds nothing it does not cover);
    /// otherwise [`ClientError::PreconditionFailed`] with the current
    /// context. See docs/api.md, "Conditional writes".
    ///
    /// # Errors
    /// [`ClientError`] as the cluster reports it.
    pub async fn put_if_unchanged(
        &self,
        key: &[u8],
        value: Vec<u8>,
        context: &Context,
    ) -> Result<Written, ClientError> {
        self.write_if(
            key,
            Some(value),
            &context.0,
            WriteCondition::IfUnchanged.into(),
        )
        .await
    }

    /// Deletes `key` only if nothing was written to it since the read
    /// `context` came from; otherwise
    /// [`ClientError::PreconditionFailed`].
    ///
    /// # Errors
    /// [`ClientError`] as the cluster reports it.
    pub async fn delete_if_unchanged(
        &self,
        key: &[u8],
        context: &Context,
    ) -> Result<Written, ClientError> {
        self.write_if(key, None, &context.0, WriteCondition::IfUnchanged.into())
            .await
    }

    /// Reads many keys at once: one result per key, in the order given; a
    /// key that fails fails only itself. Each read is routed, hedged and
    /// retried as [`get`](Self::get) is, and at most [`BATCH_WINDOW`](crate::pipeline::BATCH_WINDOW)
    /// are in flight at a time (they share pipeline messages to each
    /// node).
    pub async fn get_many<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
    ) -> Vec<Result<Versioned, ClientError>> {
        use futures_util::StreamExt as _;
        futures_util::stream::iter(keys.iter().map(|k| self.get(k.as_ref())))
            .buffered(crate::pipeline::BATCH_WINDOW)
            .collect()
            .await
    }

    /// Writes many keys at once (puts and deletes, [`BatchWrite`]): one
    /// result per item, in the order given; an item that fails fails only
    /// itself. Each write has its own tag, so a retried item is stored
    /// once, as with [`put`](Self::put); at most [`BATCH_WINDOW`](crate::pipeline::BATCH_WINDOW) are in
    /// flight at a time.
    pub async fn write_many(&self, items: Vec<BatchWrite>) -> Vec<Result<Written, ClientError>> {
        use futures_util::StreamExt as _;
        futures_util::stream::iter(items.into_iter().map(|item| async move {
            let context = item.context.map(|c| c.0).unwrap_or_default();
            let options = WriteOptions {
                condition: item.condition,
                ttl_secs: item.ttl.map(ttl_secs).transpose()?.unwrap_or(0),
            };
            self.write_if(&item.key, item.value, &context, options)
                .await
        }))
        .buffered(crate::pipeline::BATCH_WINDOW)
        .collect()
        .await
    }

    /// Lists the keys that start with `prefix`, after `after` (from the
    /// first when `None`), in key order: at most `limit` of them (all when
    /// 0). The node streams pages of keys, asking every node of the
    /// cluster for each (docs/api.md, "Key listing", for the cost); when
    /// the node fails or stops mid-way, the listing resumes after the last
    /// page received on the next node, so it survives a node restart.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for an oversize prefix or cursor;
    /// [`ClientError::Unavailable`] when no node could finish it (some
    /// range had no replica answering, or every node tried failed).
    pub async fn list(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<KeyList, ClientError> {
        self.list_within(prefix, after, None, limit).await
    }

    /// The keys in the range after `after` (from the first key when
    /// `None`) and before `end` (to the last when `None`), in key order:
    /// at most `limit` (all when 0). As [`list`](Self::list) otherwise.
    ///
    /// # Errors
    /// As [`list`](Self::list).
    pub async fn list_range(
        &self,
        after: Option<&[u8]>,
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<KeyList, ClientError> {
        self.list_within(b"", after, end, limit).await
    }

    async fn list_within(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<KeyList, ClientError> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut cursor: Option<Vec<u8>> = after.map(<[u8]>::to_vec);
        let wait = self.config.request_timeout.max(LIST_MESSAGE_TIMEOUT);
        let (mut tried, mut last) = (0, String::new());
        for index in self
            .order(prefix)
            .into_iter()
            .take(self.config.attempts.max(2))
        {
            tried += 1;
            let node = &self.nodes[index];
            let request = ListRequest {
                prefix: prefix.to_vec(),
                after: cursor.clone().unwrap_or_default(),
                limit: if limit == 0 {
                    0
                } else {
                    limit - keys.len() as u32
                },
                end: end.map(<[u8]>::to_vec).unwrap_or_default(),
            };
            let failed = |status: tonic::Status| {
                try_elsewhere(&status).map(|message| format!("{}: {message}", node.addr))
            };
            let mut stream = match tokio::time::timeout(wait, node.kv.clone().list(request)).await {
                Ok(Ok(reply)) => reply.into_inner(),
                Ok(Err(status)) => {
                    last = failed(status)?;
                    continue;
                }
                Err(_) => {
                    last = format!("{}: no answer within {wait:?}", node.addr);
                    continue;
                }
            };
            loop {
                match tokio::time::timeout(wait, stream.message()).await {
                    Ok(Ok(Some(page))) => {
                        keys.extend(page.keys);
                        if !page.more {
                            return Ok(KeyList { keys, next: None });
                        }
                        cursor = Some(page.cursor);
                        if limit != 0 && keys.len() >= limit as usize {
                            return Ok(KeyList { keys, next: cursor });
                        }
                    }
                    // The node ended the stream with keys left (it says
                    // so in `more`): the caller continues from `next`.
                    Ok(Ok(None)) => return Ok(KeyList { keys, next: cursor }),
                    Ok(Err(status)) => {
                        last = failed(status)?;
                        break;
                    }
                    Err(_) => {
                        last = format!("{}: no page within {wait:?}", node.addr);
                        break;
                    }
                }
            }
        }
        Err(ClientError::Unavailable {
            tried,
            message: last,
        })
    }

    /// Reads `key`; when it has siblings, merges them with `resolve` and
    /// writes the result back with the read's context (so the siblings
    /// collapse into it). Returns the value, `None` when the key is absent.
    ///
    /// # Errors
    /// [`ClientError`] from the read or the write-back.
    pub async fn get_resolved(
        &self,
        key: &[u8],
        resolve: impl FnOnce(&[Vec<u8>]) -> Vec<u8>,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let read = self.get(key).await?;
        match read.values.len() {
            0 => Ok(None),
            1 => Ok(read.values.into_iter().next()),
            _ => {
                let merged = resolve(&read.values);
                self.put(key, merged.clone(), Some(&read.context)).await?;
                Ok(Some(merged))
            }
        }
    }

    /// Read-modify-write: reads `key`, resolves siblings with `resolve`,
    /// applies `change` to the value (`None` when absent), and writes the
    /// result with the read's context. Returns the new version.
    ///
    /// # Errors
    /// [`ClientError`] from the read or the write.
    pub async fn update(
        &self,
        key: &[u8],
        resolve: impl FnOnce(&[Vec<u8>]) -> Vec<u8>,
        change: impl FnOnce(Option<Vec<u8>>) -> Vec<u8>,
    ) -> Result<Written, ClientError> {
        let read = self.get(key).await?;
        let current = match read.values.len() {
            0 => None,
            1 => read.values.into_iter().next(),
            _ => Some(resolve(&read.values)),
        };
        self.put(key, change(current), Some(&read.context)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_round_trip_through_hex() {
        let c = Context(vec![0, 1, 0xab, 0xff]);
        assert_eq!(c.to_hex(), "0001abff");
        assert_eq!(Context::from_hex("0001abff").unwrap(), c);
        assert_eq!(Context::from_hex("").unwrap(), Context::empty());
        for bad in ["abc", "zz", "é0", "0g"] {
            assert!(
                matches!(Context::from_hex(bad), Err(ClientError::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn statuses_map_to_errors() {
        assert!(matches!(
            classify(&tonic::Status::invalid_argument("x")),
            ClientError::InvalidArgument(_)
        ));
        assert!(matches!(
            classify(&tonic::Status::deadline_exceeded("x")),
            ClientError::Timeout(_)
        ));
        assert!(matches!(
            classify(&tonic::Status::resource_exhausted("x")),
            ClientError::Overloaded(_)
        ));
        assert!(matches!(
            classify(&tonic::Status::unavailable("x")),
            ClientError::Unavailable { .. }
        ));
        // A connection that broke under the request is not an answer.
        for status in [
            tonic::Status::unknown("transport error"),
            tonic::Status::resource_exhausted("h2 protocol error: http2 error"),
            tonic::Status::internal("h2 protocol error: error reading a body from connection"),
        ] {
            assert!(
                matches!(classify(&status), ClientError::Unavailable { .. }),
                "{status:?}"
            );
        }
        assert!(matches!(
            classify(&tonic::Status::resource_exhausted(
                "overloaded: 512 requests in flight"
            )),
            ClientError::Overloaded(_)
        ));
    }

    #[test]
    fn no_nodes_is_refused() {
        let none: [&str; 0] = [];
        assert!(Client::new(none, ClientConfig::default()).is_err());
    }
}
