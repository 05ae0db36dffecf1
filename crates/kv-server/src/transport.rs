//! The transport between nodes: the internal gRPC service.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kv_coordinator::batch::{Batcher, RunBatch};
use kv_core::{
    BucketPage, BucketQuery, ClientOp, ClientReply, KeyPage, KeyQuery, NodeId, RemoteFailure,
    Transport, TransportError,
};
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::endpoint::{self, ConnectSettings};
use crate::frames::{self, FrameTls, FramedPeer};
use crate::security::NodeTls;
use crate::wire;

use crate::proto::internal_client::InternalClient;
use futures_util::future::BoxFuture;

use crate::proto::{
    BatchReply, BucketRequest, ListKeysRequest, MerkleRequest, ReadBatchReply, ReadBatchRequest,
    ReapRequest, ReplicateBatchRequest, ReplicateRequest,
};

pub use crate::endpoint::MAX_MESSAGE_BYTES;

/// Makes a channel from an endpoint: how this process reaches others.
/// The default connects over TCP ([`Endpoint::connect_lazy`]); a
/// simulation passes one that connects over its simulated network.
pub type Connect = Arc<dyn Fn(Endpoint) -> Channel + Send + Sync>;

/// Connects over TCP, lazily (on first use, again after failures).
pub fn tcp_connect() -> Connect {
    Arc::new(|endpoint: Endpoint| endpoint.connect_lazy())
}

/// Replica writes sent to one peer in one call at most.
const BATCH_MAX: usize = 256;
/// Batches in flight to one peer at most; while all are out, writes queue
/// and the next batch grows (batching adapts to load, with no added
/// waiting when the peer is idle).
const BATCHES_IN_FLIGHT: usize = 1;

/// The outcome of one batch call: one result per item (`Err` with the
/// peer's reason), or the call's failure.
type BatchOutcome<O> =
    BoxFuture<'static, Result<Vec<Result<O, (RemoteFailure, String)>>, tonic::Status>>;

/// Sends one batch to a peer over its link `S`, waiting at most the
/// given time for the reply.
type SendBatch<I, O, S> = fn(Arc<S>, Vec<I>, Duration) -> BatchOutcome<O>;

/// The queue of calls to one peer.
type PeerBatcher<I, O> = Batcher<I, Result<O, TransportError>>;

/// Per peer, a queue of calls sent in batches over a long-lived stream of
/// type `S`.
struct Batchers<I, O, S> {
    queues: Mutex<HashMap<NodeId, PeerBatcher<I, O>>>,
    send: SendBatch<I, O, S>,
    timeout: Duration,
}

impl<I: Send + 'static, O: Send + 'static, S: Send + Sync + 'static> Batchers<I, O, S> {
    fn new(send: SendBatch<I, O, S>, timeout: Duration) -> Self {
        Batchers {
            queues: Mutex::new(HashMap::new()),
            send,
            timeout,
        }
    }

    fn forget(&self, node: NodeId) {
        self.queues.lock().remove(&node);
    }

    /// Queues `item` for `node` (starting its batcher over the link
    /// `link` makes on first use) and waits for its result.
    async fn call(
        &self,
        node: NodeId,
        link: impl FnOnce() -> Result<S, TransportError>,
        item: I,
    ) -> Result<O, TransportError> {
        let existing = self
            .queues
            .lock()
            .get(&node)
            .filter(|b| !b.is_stopped())
            .cloned();
        let batcher = match existing {
            Some(batcher) => batcher,
            None => {
                let batcher = Batcher::spawn(
                    BATCH_MAX,
                    BATCHES_IN_FLIGHT,
                    send_to(node, link()?, self.send, self.timeout),
                );
                self.queues.lock().insert(node, batcher.clone());
                batcher
            }
        };
        batcher
            .call(item)
            .await
            .map_err(|_| TransportError::Unreachable(node))?
    }
}

/// Runs batches for `node` over one link.
fn send_to<I: Send + 'static, O: Send + 'static, S: Send + Sync + 'static>(
    node: NodeId,
    link: S,
    send: SendBatch<I, O, S>,
    timeout: Duration,
) -> RunBatch<I, Result<O, TransportError>> {
    let link = Arc::new(link);
    Arc::new(move |items: Vec<I>| {
        let link = link.clone();
        Box::pin(async move {
            let count = items.len();
            match send(link, items, timeout).await {
                Ok(results) if results.len() == count => results
                    .into_iter()
                    .map(|r| {
                        r.map_err(|(kind, message)| TransportError::Remote {
                            node,
                            kind,
                            message,
                        })
                    })
                    .collect(),
                Ok(_) => {
                    let error = TransportError::Remote {
                        node,
                        kind: RemoteFailure::Internal,
                        message: "a batch reply with the wrong number of items".into(),
                    };
                    (0..count).map(|_| Err(error.clone())).collect()
                }
                Err(status) => {
                    let error = unreachable(node)(status);
                    (0..count).map(|_| Err(error.clone())).collect()
                }
            }
        })
    })
}

/// The requests of a long-lived stream, as they are sent.
struct RequestStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_util::Stream for RequestStream<T> {
    type Item = T;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// Opens a long-lived stream on a peer.
type Open<Req, Rep> = fn(
    InternalClient<Channel>,
    RequestStream<Req>,
) -> BoxFuture<'static, Result<tonic::Streaming<Rep>, tonic::Status>>;

/// One long-lived request/reply stream to a peer: opened on first use and
/// again after any failure. A batch is one request and gets one reply, in
/// order, so one batch at a time goes over it (the batcher sends one at a
/// time). This saves setting up an HTTP/2 stream per batch.
struct PeerStream<Req, Rep> {
    open: tokio::sync::Mutex<Option<(tokio::sync::mpsc::Sender<Req>, tonic::Streaming<Rep>)>>,
}

impl<Req, Rep> Default for PeerStream<Req, Rep> {
    fn default() -> Self {
        PeerStream {
            open: tokio::sync::Mutex::new(None),
        }
    }
}

impl<Req: Send + 'static, Rep: Send + 'static> PeerStream<Req, Rep> {
    /// Sends `request` and waits at most `timeout` for its reply. A
    /// failure or a late reply closes the stream; the next call opens a
    /// new one.
    async fn call(
        &self,
        client: InternalClient<Channel>,
        open: Open<Req, Rep>,
        request: Req,
        timeout: Duration,
    ) -> Result<Rep, tonic::Status> {
        let mut slot = self.open.lock().await;
        let exchange = async {
            if slot.is_none() {
                let (tx, rx) = tokio::sync::mpsc::channel::<Req>(1);
                let inbound = open(client, RequestStream(rx)).await?;
                *slot = Some((tx, inbound));
            }
            let Some((tx, inbound)) = slot.as_mut() else {
                return Err(tonic::Status::internal("the stream did not open"));
            };
            tx.send(request)
                .await
                .map_err(|_| tonic::Status::unavailable("the stream to the peer closed"))?;
            match inbound.message().await {
                Ok(Some(reply)) => Ok(reply),
                Ok(None) => Err(tonic::Status::unavailable("the peer ended the stream")),
                Err(status) => Err(status),
            }
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(tonic::Status::deadline_exceeded(
                "no reply on the stream in time",
            )),
        };
        if result.is_err() {
            *slot = None;
        }
        result
    }
}

/// How batches of one kind reach one peer: its gRPC client, the
/// long-lived stream over it and how to open that stream, and, when this
/// node sends frames, a framed connection ([`crate::frames`]) tried first.
/// The stream also serves a peer that does not speak frames (a release
/// before them, during a rolling upgrade).
struct Link<Req, Rep> {
    client: InternalClient<Channel>,
    stream: PeerStream<Req, Rep>,
    open: Open<Req, Rep>,
    frames: Option<FramedPeer>,
}

impl<Req, Rep> Link<Req, Rep>
where
    Req: frames::Request<Reply = Rep> + Send + 'static,
    Rep: Send + 'static,
{
    async fn call(&self, request: Req, timeout: Duration) -> Result<Rep, tonic::Status> {
        if let Some(peer) = self.frames.as_ref().filter(|p| p.speaks_frames()) {
            match peer.call(&request, timeout).await {
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    tracing::info!(%status, "framed connection refused; using gRPC");
                }
                other => return other,
            }
        }
        self.stream
            .call(self.client.clone(), self.open, request, timeout)
            .await
    }
}

type ReplicaLink = Link<ReplicateBatchRequest, BatchReply>;
type ReadLink = Link<ReadBatchRequest, ReadBatchReply>;

fn open_replicas(
    mut client: InternalClient<Channel>,
    requests: RequestStream<ReplicateBatchRequest>,
) -> BoxFuture<'static, Result<tonic::Streaming<BatchReply>, tonic::Status>> {
    Box::pin(async move { Ok(client.replicate_stream(requests).await?.into_inner()) })
}

fn open_reads(
    mut client: InternalClient<Channel>,
    requests: RequestStream<ReadBatchRequest>,
) -> BoxFuture<'static, Result<tonic::Streaming<ReadBatchReply>, tonic::Status>> {
    Box::pin(async move { Ok(client.read_stream(requests).await?.into_inner()) })
}

fn send_replicas(
    link: Arc<ReplicaLink>,
    items: Vec<ReplicateRequest>,
    timeout: Duration,
) -> BatchOutcome<()> {
    Box::pin(async move {
        let reply = link.call(ReplicateBatchRequest { items }, timeout).await?;
        let kinds = reply.kinds;
        Ok(reply
            .errors
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                if e.is_empty() {
                    Ok(())
                } else {
                    Err((wire::remote_failure(kinds.get(i).copied()), e))
                }
            })
            .collect())
    })
}

fn send_reads(
    link: Arc<ReadLink>,
    keys: Vec<Vec<u8>>,
    timeout: Duration,
) -> BatchOutcome<Option<Vec<u8>>> {
    Box::pin(async move {
        let reply = link.call(ReadBatchRequest { keys }, timeout).await?;
        Ok(reply.items.into_iter().map(|r| Ok(r.state)).collect())
    })
}

/// How long a bulk call (a page of range streaming, a ring change) may
/// take, independent of the request timeout.
pub(crate) const BULK_TIMEOUT: Duration = Duration::from_secs(30);

/// Reaches peers over gRPC. Channels are created lazily per peer and
/// reconnect by themselves; HTTP/2 keepalive notices a dead connection
/// (after a partition) within about a second.
pub struct GrpcTransport {
    addresses: Mutex<HashMap<NodeId, String>>,
    clients: Mutex<HashMap<NodeId, InternalClient<Channel>>>,
    /// By address, with the bulk timeout: gossip (whose messages name
    /// addresses) and streaming.
    by_addr: Mutex<HashMap<String, InternalClient<Channel>>>,
    /// Replica writes and reads, batched per peer, each kind on its own
    /// long-lived stream.
    replicas: Batchers<ReplicateRequest, (), ReplicaLink>,
    reads: Batchers<Vec<u8>, Option<Vec<u8>>, ReadLink>,
    /// Replica batches go over framed connections ([`crate::frames`])
    /// instead of gRPC streams, this node naming itself by this id, over
    /// TLS when `tls` is set.
    frames: Option<(NodeId, Option<FrameTls>)>,
    /// Per peer, a client whose calls have no deadline (the streams'
    /// exchanges are bounded one by one).
    stream_clients: Mutex<HashMap<NodeId, InternalClient<Channel>>>,
    timeout: Duration,
    connect: Connect,
    /// Mutual TLS with peers, when on.
    tls: Option<NodeTls>,
    /// The user agent of every call: versions, and where this node's
    /// status page is ([`crate::version::user_agent`]).
    agent: String,
}

impl std::fmt::Debug for GrpcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTransport")
            .field("addresses", &*self.addresses.lock())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn unreachable(node: NodeId) -> impl Fn(tonic::Status) -> TransportError {
    move |status| match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => TransportError::Timeout(node),
        tonic::Code::Unavailable => TransportError::Unreachable(node),
        code => TransportError::Remote {
            node,
            kind: wire::status_failure(code),
            message: status.message().to_string(),
        },
    }
}

fn internal_client(
    addr: &str,
    timeout: Duration,
    connect: &Connect,
    tls: Option<(&NodeTls, &str)>,
    agent: &str,
) -> Option<InternalClient<Channel>> {
    internal_endpoint(addr, timeout, connect, true, tls, agent)
}

/// A client for `addr`; calls time out after `timeout` when `deadline`.
/// With `tls`, the connection is mutual TLS: this node presents its
/// certificate, and the peer's must carry the given name.
fn internal_endpoint(
    addr: &str,
    timeout: Duration,
    connect: &Connect,
    deadline: bool,
    tls: Option<(&NodeTls, &str)>,
    agent: &str,
) -> Option<InternalClient<Channel>> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = ConnectSettings::peer(timeout, deadline)
        .endpoint(
            format!("{scheme}://{addr}"),
            tls.map(|(tls, name)| tls.peer(name)),
        )
        .ok()?
        .user_agent(agent.to_string())
        .ok()?;
    Some(endpoint::internal_client(connect(endpoint)))
}

/// Clients kept by address at most (gossip names addresses); beyond it the
/// cache starts over (channels are made again on demand).
const MAX_CACHED_BY_ADDR: usize = 1024;

impl GrpcTransport {
    /// A transport over TCP that gives up on a call after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self::with_connect(timeout, tcp_connect())
    }

    /// A transport that makes its channels with `connect`.
    pub fn with_connect(timeout: Duration, connect: Connect) -> Self {
        GrpcTransport {
            addresses: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            by_addr: Mutex::new(HashMap::new()),
            replicas: Batchers::new(send_replicas, timeout),
            reads: Batchers::new(send_reads, timeout),
            stream_clients: Mutex::new(HashMap::new()),
            timeout,
            connect,
            tls: None,
            frames: None,
            agent: crate::version::user_agent(None),
        }
    }

    /// This transport, announcing to peers that this node's status page is
    /// served at `page` (`host:port`), so theirs link to it.
    #[must_use]
    pub fn with_status_page(mut self, page: Option<&str>) -> Self {
        self.agent = crate::version::user_agent(page);
        self
    }

    /// This transport, sending replica writes and reads over framed
    /// connections as node `me` (over mutual TLS with the certificates
    /// [`with_tls`](Self::with_tls) gave, when it gave some).
    ///
    /// # Errors
    ///
    /// Why the TLS material does not make a TLS configuration.
    pub fn with_frames(mut self, me: Option<NodeId>) -> Result<Self, String> {
        self.frames = match me {
            Some(me) => {
                let tls = self.tls.as_ref().map(FrameTls::new).transpose()?;
                Some((me, tls))
            }
            None => None,
        };
        Ok(self)
    }

    /// The link replica batches of one kind take to `node`.
    fn link<Req, Rep>(
        &self,
        node: NodeId,
        open: Open<Req, Rep>,
    ) -> Result<Link<Req, Rep>, TransportError> {
        let frames = match &self.frames {
            Some((me, tls)) => {
                let addr = self
                    .address(node)
                    .ok_or(TransportError::Unreachable(node))?;
                Some(FramedPeer::new(addr, node, *me, tls.clone()))
            }
            None => None,
        };
        Ok(Link {
            client: self.stream_client(node)?,
            stream: PeerStream::default(),
            open,
            frames,
        })
    }

    /// This transport, speaking mutual TLS with `tls` (none: plaintext).
    #[must_use]
    pub fn with_tls(mut self, tls: Option<NodeTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Drops every connection and the address of `node` (it left the
    /// cluster): nothing is kept for a node that is gone.
    pub fn forget(&self, node: NodeId) {
        let addr = self.addresses.lock().remove(&node);
        self.clients.lock().remove(&node);
        self.stream_clients.lock().remove(&node);
        self.replicas.forget(node);
        self.reads.forget(node);
        if let Some(addr) = addr {
            self.by_addr.lock().remove(&addr);
        }
    }

    /// Peers whose connections are cached (for tests and metrics).
    pub fn cached_peers(&self) -> usize {
        self.clients.lock().len() + self.by_addr.lock().len()
    }

    /// Where `node` listens (replaces a previous address).
    pub fn set_address(&self, node: NodeId, addr: String) {
        let changed = self.addresses.lock().insert(node, addr.clone()) != Some(addr);
        if changed {
            self.clients.lock().remove(&node);
            self.stream_clients.lock().remove(&node);
            self.replicas.forget(node);
            self.reads.forget(node);
        }
    }

    /// Where `node` listens, if known.
    pub fn address(&self, node: NodeId) -> Option<String> {
        self.addresses.lock().get(&node).cloned()
    }

    fn client(&self, node: NodeId) -> Result<InternalClient<Channel>, TransportError> {
        if let Some(client) = self.clients.lock().get(&node) {
            return Ok(client.clone());
        }
        let addr = self
            .address(node)
            .ok_or(TransportError::Unreachable(node))?;
        let name = crate::security::certs::node_name(node);
        let tls = self.tls.as_ref().map(|t| (t, name.as_str()));
        let client = internal_client(&addr, self.timeout, &self.connect, tls, &self.agent)
            .ok_or(TransportError::Unreachable(node))?;
        self.clients.lock().insert(node, client.clone());
        Ok(client)
    }

    fn stream_client(&self, node: NodeId) -> Result<InternalClient<Channel>, TransportError> {
        if let Some(client) = self.stream_clients.lock().get(&node) {
            return Ok(client.clone());
        }
        let addr = self
            .address(node)
            .ok_or(TransportError::Unreachable(node))?;
        let name = crate::security::certs::node_name(node);
        let tls = self.tls.as_ref().map(|t| (t, name.as_str()));
        let client = internal_endpoint(&addr, self.timeout, &self.connect, false, tls, &self.agent)
            .ok_or(TransportError::Unreachable(node))?;
        self.stream_clients.lock().insert(node, client.clone());
        Ok(client)
    }

    /// A client for the node at `addr`, for calls bounded by
    /// [`BULK_TIMEOUT`] (gossip, ring changes, range streaming).
    pub(crate) fn bulk(&self, addr: &str) -> Result<InternalClient<Channel>, tonic::Status> {
        if let Some(client) = self.by_addr.lock().get(addr) {
            return Ok(client.clone());
        }
        let tls = self
            .tls
            .as_ref()
            .map(|t| (t, crate::security::certs::ANY_NODE));
        let client = internal_client(addr, BULK_TIMEOUT, &self.connect, tls, &self.agent)
            .ok_or_else(|| tonic::Status::invalid_argument(format!("bad address {addr:?}")))?;
        let mut cached = self.by_addr.lock();
        if cached.len() >= MAX_CACHED_BY_ADDR {
            cached.clear();
        }
        cached.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// [`bulk`](Self::bulk) for a node by id.
    pub(crate) fn bulk_node(&self, node: NodeId) -> Result<InternalClient<Channel>, tonic::Status> {
        let addr = self
            .address(node)
            .ok_or_else(|| tonic::Status::unavailable(format!("no address known for {node}")))?;
        self.bulk(&addr)
    }
}

#[async_trait::async_trait]
impl Transport for GrpcTransport {
    async fn replicate(
        &self,
        to: NodeId,
        key: Vec<u8>,
        state: Vec<u8>,
        hint_for: Option<NodeId>,
    ) -> Result<(), TransportError> {
        let request = ReplicateRequest {
            key,
            state,
            hint_for: hint_for.map(|n| n.0),
        };
        // Through the peer's batcher: concurrent writes to one peer share
        // calls, and their engine writes share one sync there.
        self.replicas
            .call(to, || self.link(to, open_replicas), request)
            .await
    }

    async fn read(&self, to: NodeId, key: Vec<u8>) -> Result<Option<Vec<u8>>, TransportError> {
        self.reads.call(to, || self.link(to, open_reads), key).await
    }

    async fn forward(&self, to: NodeId, op: ClientOp) -> Result<ClientReply, TransportError> {
        let request = crate::wire::forward_request(op);
        let reply = self
            .client(to)?
            .forward(request)
            .await
            .map_err(unreachable(to))?
            .into_inner();
        Ok(crate::wire::client_reply(reply))
    }

    async fn merkle_exchange(
        &self,
        to: NodeId,
        from: NodeId,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        let reply = self
            .client(to)?
            .merkle_exchange(MerkleRequest {
                from: from.0,
                request,
            })
            .await
            .map_err(unreachable(to))?;
        Ok(reply.into_inner().answer)
    }

    async fn bucket_states(
        &self,
        to: NodeId,
        from: NodeId,
        query: BucketQuery,
    ) -> Result<BucketPage, TransportError> {
        let reply = self
            .client(to)?
            .bucket_states(BucketRequest {
                from: from.0,
                buckets: query.buckets,
                after: query.after,
                max_bytes: query.max_bytes,
                max_scanned: query.max_scanned,
            })
            .await
            .map_err(unreachable(to))?
            .into_inner();
        Ok(BucketPage {
            states: reply.states.into_iter().map(|s| (s.key, s.state)).collect(),
            next: reply.next,
        })
    }

    async fn list_keys(&self, to: NodeId, query: KeyQuery) -> Result<KeyPage, TransportError> {
        let reply = self
            .client(to)?
            .list_keys(ListKeysRequest {
                prefix: query.prefix,
                after: query.after,
                end: query.end,
                limit: query.limit,
                max_scanned: query.max_scanned,
            })
            .await
            .map_err(unreachable(to))?
            .into_inner();
        Ok(KeyPage {
            keys: reply.keys,
            next: reply.next,
        })
    }

    async fn changes(
        &self,
        to: NodeId,
        query: kv_core::FeedQuery,
    ) -> Result<kv_core::FeedPage, TransportError> {
        // A long poll: the stream client has no deadline of its own; the
        // node answers within the query's wait.
        let limit = Duration::from_millis(u64::from(query.wait_ms)) + self.timeout;
        let request = crate::proto::ChangesRequest {
            prefix: query.prefix,
            exact: query.exact,
            at: query.at.map(wire::feed_position),
            wait_ms: query.wait_ms,
            max_bytes: query.max_bytes,
        };
        let mut client = self.stream_client(to)?;
        let reply = tokio::time::timeout(limit, client.changes(request))
            .await
            .map_err(|_| TransportError::Timeout(to))?
            .map_err(unreachable(to))?
            .into_inner();
        Ok(kv_core::FeedPage {
            changes: reply
                .changes
                .into_iter()
                .map(|s| (s.key, s.state))
                .collect(),
            resync: reply.resync,
            position: wire::position_of(reply.position.unwrap_or_default()),
        })
    }

    async fn reap(
        &self,
        to: NodeId,
        key: Vec<u8>,
        expected: Vec<u8>,
    ) -> Result<bool, TransportError> {
        let reply = self
            .client(to)?
            .reap(ReapRequest { key, expected })
            .await
            .map_err(unreachable(to))?;
        Ok(reply.into_inner().reaped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_forgotten_peer_leaves_no_address_or_channel_and_the_address_cache_is_bounded() {
        let t = GrpcTransport::new(Duration::from_millis(100));
        t.set_address(NodeId(2), "127.0.0.1:9".into());
        t.client(NodeId(2)).unwrap();
        t.bulk("127.0.0.1:9").unwrap();
        assert_eq!(t.cached_peers(), 2);
        t.forget(NodeId(2));
        assert_eq!(t.cached_peers(), 0);
        assert!(t.address(NodeId(2)).is_none());
        assert!(t.client(NodeId(2)).is_err(), "no address, no channel");
        // Gossip names addresses; however many, the cache stays bounded.
        for i in 0..MAX_CACHED_BY_ADDR + 10 {
            t.bulk(&format!("127.0.0.1:{}", 10_000 + i)).unwrap();
            assert!(t.cached_peers() <= MAX_CACHED_BY_ADDR);
        }
    }
}
