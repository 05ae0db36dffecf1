//! The Rust client SDK: get, put and delete with causal contexts, sibling
//! resolution by a function of yours, one multiplexed connection per node,
//! and retry on another node when one is unavailable.
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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::RwLock;
use std::time::Duration;

use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::proto::kv_client::KvClient;
use crate::proto::{DeleteRequest, GetRequest, PutRequest};
use crate::transport::MAX_MESSAGE_BYTES;

/// The causal context of a read or write: opaque bytes to send back with
/// the next write of the key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Context(pub Vec<u8>);

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
}

fn written(reply: crate::proto::PutReply) -> Written {
    Written {
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
    /// Nodes tried per request, at most, when they answer Unavailable (3).
    /// A node that could not even be connected to never received the
    /// request, so it is skipped without counting: a request is always
    /// tried on a node it can reach, even with `attempts = 1`.
    pub attempts: usize,
    /// Write quorum sent with writes; `None` for the cluster's W.
    pub w: Option<u32>,
    /// Read quorum sent with reads; `None` for the cluster's R.
    pub r: Option<u32>,
    /// Send each request first to the key's first replica (its
    /// coordinator), learned from the cluster's ring, which saves the
    /// forwarding hop (true).
    pub route_by_key: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            attempts: 3,
            w: None,
            r: None,
            route_by_key: true,
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
    kv: KvClient<Channel>,
    channel: Channel,
}

/// A client of a kv cluster. Cheap to clone; clones share connections.
///
/// Requests go to the nodes round robin (any node coordinates any key).
/// A node that answers Unavailable is skipped for the next one, up to
/// [`ClientConfig::attempts`] nodes; a node that cannot be connected to is
/// skipped without counting (it never received the request). Note that a
/// write retried after an Unavailable answer may have been applied by the
/// first node too: with an empty context it then shows as two equal
/// siblings, which a resolver folds back into one.
#[derive(Clone)]
pub struct Client {
    nodes: Arc<Vec<Node>>,
    next: Arc<AtomicUsize>,
    config: ClientConfig,
    routes: Arc<RwLock<Option<Routes>>>,
    refreshing: Arc<AtomicBool>,
    /// How long reads have recently taken.
    read_latency: Arc<kv_coordinator::RecentLatency>,
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

fn classify(status: &tonic::Status) -> ClientError {
    let message = status.message().to_string();
    match status.code() {
        Code::InvalidArgument => ClientError::InvalidArgument(message),
        Code::DeadlineExceeded | Code::Cancelled => ClientError::Timeout(message),
        Code::ResourceExhausted => ClientError::Overloaded(message),
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
        let mut nodes = Vec::new();
        for addr in addrs {
            let addr = addr.as_ref().to_string();
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| ClientError::InvalidArgument(format!("address {addr:?}: {e}")))?
                .connect_timeout(config.connect_timeout)
                .timeout(config.request_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(2))
                .keep_alive_while_idle(true);
            let channel = connect(endpoint);
            let kv = KvClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            nodes.push(Node { addr, kv, channel });
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
                let mut admin = crate::proto::admin_client::AdminClient::new(node.channel.clone());
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

    /// The index among the nodes of `key`'s first replica whose storage
    /// takes writes, if known.
    fn route(&self, key: &[u8]) -> Option<usize> {
        use kv_core::Partitioner as _;
        let routes = self.routes.read();
        let routes = routes.as_ref()?;
        let replicas = routes.ring.preference_list(key, routes.n).ok()?;
        let first = replicas
            .iter()
            .find(|r| !routes.unhealthy.contains(&r.0))
            .or(replicas.first())?;
        routes.index.get(&first.0).copied()
    }

    /// The nodes to try for `key`, in order: its coordinator first when
    /// known, then the others round robin.
    fn order(&self, key: &[u8]) -> Vec<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let routed = self.route(key);
        let count = self.nodes.len();
        routed
            .into_iter()
            .chain(
                (0..count)
                    .map(|i| (start + i) % count)
                    .filter(|&i| Some(i) != routed),
            )
            .collect()
    }

    /// Runs `call` against nodes until one answers something other than
    /// Unavailable: the key's coordinator first when known, then the
    /// others round robin.
    async fn with_retry<T, F, Fut>(&self, key: &[u8], mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(KvClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.refresh_routes();
        let order = self.order(key);
        let count = self.nodes.len();
        let attempts = self.config.attempts.clamp(1, count);
        let (mut counted, mut tried) = (0, 0);
        let mut last = String::new();
        for index in order {
            if counted == attempts {
                break;
            }
            let node = &self.nodes[index];
            let (addr, client) = (&node.addr, &node.kv);
            tried += 1;
            match call(client.clone()).await {
                Ok(value) => return Ok(value),
                Err(status) => match classify(&status) {
                    ClientError::Unavailable { message, .. } => {
                        if !never_sent(&message) {
                            counted += 1;
                        }
                        last = format!("{addr}: {message}");
                    }
                    other => return Err(other),
                },
            }
        }
        Err(ClientError::Unavailable {
            tried,
            message: last,
        })
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
        use futures_util::StreamExt as _;
        let request = GetRequest {
            key: key.to_vec(),
            r: self.config.r.unwrap_or(0),
        };
        self.refresh_routes();
        let mut order = self.order(key).into_iter();
        // Reads may always go to a second node; more only as configured.
        let budget = self.config.attempts.max(2).min(self.nodes.len());
        let call = |index: usize| {
            let mut client = self.nodes[index].kv.clone();
            let request = request.clone();
            async move {
                let started = std::time::Instant::now();
                (index, client.get(request).await, started.elapsed())
            }
        };
        let mut pending = futures_util::stream::FuturesUnordered::new();
        let mut sent = 0;
        if let Some(first) = order.next() {
            pending.push(call(first));
            sent += 1;
        }
        let mut last = String::new();
        loop {
            let hedge = tokio::time::sleep(self.hedge_delay());
            tokio::select! {
                done = pending.next() => {
                    let Some((index, result, took)) = done else {
                        return Err(ClientError::Unavailable { tried: sent, message: last });
                    };
                    match result {
                        Ok(reply) => {
                            self.read_latency.observe(took);
                            let reply = reply.into_inner();
                            return Ok(Versioned {
                                values: reply.values,
                                context: Context(reply.context),
                            });
                        }
                        Err(status) => match classify(&status) {
                            ClientError::Unavailable { message, .. }
                            | ClientError::Timeout(message) => {
                                last = format!("{}: {message}", self.nodes[index].addr);
                                if sent < budget && let Some(next) = order.next() {
                                    pending.push(call(next));
                                    sent += 1;
                                }
                            }
                            other => return Err(other),
                        },
                    }
                }
                () = hedge, if sent < budget && sent == pending.len() => {
                    if let Some(next) = order.next() {
                        pending.push(call(next));
                        sent += 1;
                    }
                }
            }
        }
    }

    /// How long a read waits before it is hedged on another node: three
    /// times the recent read latency, between 10 ms and half the request
    /// timeout (50 ms before any read has been timed).
    fn hedge_delay(&self) -> Duration {
        self.read_latency.scaled(
            3,
            Duration::from_millis(10),
            self.config.request_timeout / 2,
            Duration::from_millis(50),
        )
    }

    /// Writes `value`, superseding what `context` (from a read) covers;
    /// `None` supersedes nothing, so an existing value stays as a sibling.
    /// Returns the new version and its context.
    ///
    /// # Errors
    /// [`ClientError`] as the cluster reports it.
    pub async fn put(
        &self,
        key: &[u8],
        value: Vec<u8>,
        context: Option<&Context>,
    ) -> Result<Written, ClientError> {
        let w = self.config.w.unwrap_or(0);
        let context = context.map(|c| c.0.clone()).unwrap_or_default();
        self.with_retry(key, |mut c| {
            let request = PutRequest {
                key: key.to_vec(),
                value: value.clone(),
                context: context.clone(),
                w,
            };
            async move { c.put(request).await }
        })
        .await
        .map(|reply| written(reply.into_inner()))
    }

    /// Deletes what `context` covers (a tombstone, itself a version).
    ///
    /// # Errors
    /// [`ClientError`] as the cluster reports it.
    pub async fn delete(&self, key: &[u8], context: &Context) -> Result<Written, ClientError> {
        let w = self.config.w.unwrap_or(0);
        self.with_retry(key, |mut c| {
            let request = DeleteRequest {
                key: key.to_vec(),
                context: context.0.clone(),
                w,
            };
            async move { c.delete(request).await }
        })
        .await
        .map(|reply| written(reply.into_inner()))
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
    }

    #[test]
    fn no_nodes_is_refused() {
        let none: [&str; 0] = [];
        assert!(Client::new(none, ClientConfig::default()).is_err());
    }
}
