//! The gRPC services of a node.

mod listing;
mod pipeline;
mod watch;

use std::sync::Arc;

use kv_coordinator::Coordinator;
use kv_core::{BucketQuery, KeyQuery, NodeId, Partitioner, StorageEngine, Transport};
use tonic::{Request, Response, Status};

use crate::cluster::Cluster;
pub use crate::local::{Engine, NodeCoordinator};
use crate::local::{LiveRing, off_runtime};

use crate::proto::admin_server::Admin;
use crate::proto::internal_server::Internal;
use crate::proto::kv_server::Kv;
use crate::proto::{
    Ack, BatchOpsReply, BatchOpsRequest, BatchReply, BucketReply, BucketRequest, ChangeReply,
    DeleteRequest, Empty, FailureKind, FetchReply, FetchRequest, ForwardReply, ForwardRequest,
    GetReply, GetRequest, GossipRequest, HintsReply, InstallReply, KeyState, ListKeysReply,
    ListKeysRequest, ListReply, ListRequest, MerkleReply, MerkleRequest, PipelineReply,
    PipelineRequest, ProposalReply, PutReply, PutRequest, ReadBatchReply, ReadBatchRequest,
    ReadReply, ReadRequest, ReapReply, ReapRequest, RemoveRequest, RepairProgress, RepairRequest,
    ReplicateBatchRequest, RingProposal, RingQuery, RingState, SnapshotReply, SnapshotRequest,
    StatusReply, TransferRequest, WatchReply, WatchRequest,
};
use crate::security::calling_node;
use crate::status::to_status;
use crate::stopping::stopped;
use crate::transport::GrpcTransport;
use crate::version::Versions;
use crate::wire;

/// Runs a read of the node's engine: inline, since `LsmEngine` reads never
/// wait on I/O ([`kv_core::StorageEngine::inline_reads`]), else like
/// [`blocking`].
pub(crate) async fn engine_read<T: Send + 'static>(
    replica: &Arc<kv_coordinator::Replica<Engine>>,
    f: impl FnOnce(&kv_coordinator::Replica<Engine>) -> kv_coordinator::Result<T> + Send + 'static,
) -> Result<T, Status> {
    if kv_core::StorageEngine::inline_reads(replica.engine()) {
        f(replica).map_err(|e| to_status(&e))
    } else {
        let replica = replica.clone();
        blocking(move || f(&replica)).await
    }
}

/// Runs a blocking engine call off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> kv_coordinator::Result<T> + Send + 'static,
) -> Result<T, Status> {
    off_runtime(f).await.map_err(|e| to_status(&e))
}

fn quorum(n: u32) -> Option<usize> {
    wire::quorum(n).map(|n| n as usize)
}

/// Admission control: at most `limit` client requests in flight on a
/// node; the next one is refused at once with `ResourceExhausted` instead
/// of queueing without bound (the client backs off or tries another node).
#[derive(Debug, Clone)]
pub struct InFlight {
    permits: Arc<tokio::sync::Semaphore>,
    limit: usize,
}

impl InFlight {
    /// Admits up to `limit` requests at once (at least one).
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        InFlight {
            permits: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
        }
    }

    /// A slot for one request, held until the returned permit drops.
    ///
    /// # Errors
    ///
    /// `ResourceExhausted` when `limit` requests are already in flight.
    pub fn enter(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "overloaded: {} requests already in flight on this node; retry later",
                self.limit
            ))
        })
    }
}

/// The client service: get, put, delete, over any composition of the
/// coordinator (the node's own is `Coordinator<Engine, GrpcTransport,
/// LiveRing>`; `examples/custom_node.rs` serves one over `MemEngine` and an
/// in-process transport).
pub struct KvService<E = Engine, T = GrpcTransport, P = LiveRing> {
    coordinator: Arc<Coordinator<E, T, P>>,
    in_flight: InFlight,
    /// Becomes true when the node stops (never, unless set with
    /// [`KvService::stop_streams_on`]).
    stopping: tokio::sync::watch::Receiver<bool>,
    watches: watch::WatchSlots,
}

impl<E, T, P> Clone for KvService<E, T, P> {
    fn clone(&self) -> Self {
        KvService {
            coordinator: self.coordinator.clone(),
            in_flight: self.in_flight.clone(),
            stopping: self.stopping.clone(),
            watches: self.watches.clone(),
        }
    }
}

impl<E, T, P> KvService<E, T, P> {
    /// The client service of a coordinator, admitting at most
    /// `max_in_flight` requests at once.
    pub fn new(coordinator: Arc<Coordinator<E, T, P>>, max_in_flight: usize) -> Self {
        KvService {
            coordinator,
            in_flight: InFlight::new(max_in_flight),
            // The sender is gone: never stopping.
            stopping: tokio::sync::watch::channel(false).1,
            watches: watch::WatchSlots::default(),
        }
    }

    /// Ends the service's pipelines once `stopping` becomes true (after
    /// the operations under way answer), so that a graceful shutdown does
    /// not wait for clients to close them.
    #[must_use]
    pub fn stop_streams_on(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }
}

impl<E, T, P> KvService<E, T, P>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    /// A read, whether it came as a call of its own or in a pipeline.
    pub(crate) async fn read(&self, r: GetRequest) -> Result<GetReply, Status> {
        let _slot = self.in_flight.enter()?;
        let got = self
            .coordinator
            .get(&r.key, quorum(r.r))
            .await
            .map_err(|e| to_status(&e))?;
        Ok(GetReply {
            values: got.values,
            context: got.context,
        })
    }

    /// A put (`value`) or a delete (`None`), whether it came as a call of
    /// its own or in a pipeline; with a `condition`, only once a read at R
    /// finds it holds; with `expires`, a value that lapses then.
    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        context: &[u8],
        w: u32,
        write_id: u64,
        retry: bool,
        condition: Condition,
        expires: Option<u64>,
    ) -> Result<PutReply, Status> {
        let _slot = self.in_flight.enter()?;
        self.check_condition(key, context, condition).await?;
        let put = self
            .coordinator
            .write_expiring(
                key,
                value,
                context,
                quorum(w),
                wire::write_tag(write_id, retry),
                expires,
            )
            .await
            .map_err(|e| to_status(&e))?;
        Ok(put_reply(put))
    }

    /// A put, as a call of its own or in a pipeline or batch.
    pub(crate) async fn put_op(&self, r: &PutRequest) -> Result<PutReply, Status> {
        let condition = Condition::of_put(r);
        // The value lapses `ttl_secs` after this node's clock now.
        let expires = (r.ttl_secs > 0).then(|| kv_core::unix_secs() + u64::from(r.ttl_secs));
        self.write(
            &r.key,
            Some(&r.value),
            &r.context,
            r.w,
            r.write_id,
            r.retry,
            condition,
            expires,
        )
        .await
    }

    /// A delete, as a call of its own or in a pipeline or batch.
    pub(crate) async fn delete_op(&self, r: &DeleteRequest) -> Result<PutReply, Status> {
        let condition = Condition::of_delete(r);
        self.write(
            &r.key, None, &r.context, r.w, r.write_id, r.retry, condition, None,
        )
        .await
    }

    /// Reads `key` at the cluster's R and refuses the write unless
    /// `condition` holds (docs/api.md, "Conditional writes").
    async fn check_condition(
        &self,
        key: &[u8],
        context: &[u8],
        condition: Condition,
    ) -> Result<(), Status> {
        if condition == Condition::None {
            return Ok(());
        }
        let current = self
            .coordinator
            .get(key, None)
            .await
            .map_err(|e| to_status(&e))?;
        let refusal = match condition {
            Condition::None => None,
            Condition::IfNoneMatch => (!current.values.is_empty()).then(|| {
                format!(
                    "if-none-match: the key holds {} live value(s)",
                    current.values.len()
                )
            }),
            Condition::IfNotModified => {
                let clock = |bytes: &[u8]| {
                    if bytes.is_empty() {
                        Ok(kv_clock::VectorClock::new())
                    } else {
                        kv_clock::VectorClock::from_bytes(bytes).map_err(|e| {
                            Status::invalid_argument(format!("context does not decode: {e}"))
                        })
                    }
                };
                let (given, now) = (clock(context)?, clock(&current.context)?);
                (!given.descends(&now)).then(|| {
                    "if-not-modified: the key was written since the read the context came \
                     from; read it again"
                        .to_string()
                })
            }
        };
        match refusal {
            Some(message) => Err(crate::pipeline::precondition_failed(
                message,
                &current.context,
            )),
            None => Ok(()),
        }
    }

    /// Becomes true when the node stops: pipelines then end.
    pub(crate) fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.clone()
    }
}

#[tonic::async_trait]
impl<E, T, P> Kv for KvService<E, T, P>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetReply>, Status> {
        Ok(Response::new(self.read(request.into_inner()).await?))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutReply>, Status> {
        let r = request.into_inner();
        Ok(Response::new(self.put_op(&r).await?))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<PutReply>, Status> {
        let r = request.into_inner();
        Ok(Response::new(self.delete_op(&r).await?))
    }

    type PipelineStream = ReplyStream<PipelineReply>;

    async fn pipeline(
        &self,
        request: Request<tonic::Streaming<PipelineRequest>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        Ok(Response::new(pipeline::serve(self.clone(), request)))
    }

    async fn batch(
        &self,
        request: Request<BatchOpsRequest>,
    ) -> Result<Response<BatchOpsReply>, Status> {
        Ok(Response::new(pipeline::batch(self, request).await?))
    }

    type ListStream = ReplyStream<ListReply>;

    async fn list(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        Ok(Response::new(listing::serve(
            self.clone(),
            request.into_inner(),
        )))
    }

    type WatchStream = ReplyStream<WatchReply>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(
            watch::serve(self, request.into_inner()).await?,
        ))
    }
}

/// What a conditional write requires of the key's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Condition {
    /// Nothing: an ordinary write.
    None,
    /// No live value (absent or deleted).
    IfNoneMatch,
    /// Nothing the write's context does not cover.
    IfNotModified,
}

impl Condition {
    /// A put's condition (if-none-match wins when both are set: it is the
    /// stricter of the two for a key that exists).
    pub(crate) fn of_put(r: &PutRequest) -> Self {
        if r.if_none_match {
            Condition::IfNoneMatch
        } else if r.if_not_modified {
            Condition::IfNotModified
        } else {
            Condition::None
        }
    }

    /// A delete's condition.
    pub(crate) fn of_delete(r: &DeleteRequest) -> Self {
        if r.if_not_modified {
            Condition::IfNotModified
        } else {
            Condition::None
        }
    }
}

/// The replies of a long-lived internal stream.
pub(crate) type ReplyStream<T> =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The most items one batch (or one message of a stream) of replica
/// writes or reads may carry: peers send at most 256 (the transport's
/// batch), and a larger one is a request built to make this node work
/// or allocate for it alone.
pub(crate) const MAX_BATCH_ITEMS: usize = 1024;

/// Refuses a batch of more than [`MAX_BATCH_ITEMS`].
fn check_batch(items: usize, what: &str) -> Result<(), Status> {
    if items > MAX_BATCH_ITEMS {
        return Err(Status::invalid_argument(format!(
            "a batch of {items} {what}, above the limit of {MAX_BATCH_ITEMS}"
        )));
    }
    Ok(())
}

/// Merges a batch of replica writes as one engine batch; one result per
/// item.
async fn apply_replicas(
    replica: Arc<kv_coordinator::Replica<Engine>>,
    batch: ReplicateBatchRequest,
) -> Result<BatchReply, Status> {
    check_batch(batch.items.len(), "replica writes")?;
    let items: Vec<(Vec<u8>, Vec<u8>, Option<NodeId>)> = batch
        .items
        .into_iter()
        .map(|r| (r.key, r.state, r.hint_for.map(NodeId)))
        .collect();
    // Inline when the engine's write returns at once (its sync, if any,
    // awaited here): no blocking thread per batch. Else, and for hints
    // (written with a blocking sync), on the blocking pool.
    let results = match replica.receive_many_deferred(&items) {
        Some(pending) => pending.finish().await,
        None => off_runtime(move || Ok(replica.receive_many(&items)))
            .await
            .map_err(|e| to_status(&e))?,
    };
    let mut reply = BatchReply::default();
    for result in results {
        let (error, kind) = match result {
            Ok(()) => (String::new(), FailureKind::Internal),
            Err(e) => (e.to_string(), wire::failure_kind(e.kind().remote())),
        };
        reply.errors.push(error);
        reply.kinds.push(kind as i32);
    }
    Ok(reply)
}

/// Answers one request of the framed internode path ([`crate::frames`])
/// as the matching gRPC stream would.
pub(crate) async fn answer_frame(
    replica: Arc<kv_coordinator::Replica<Engine>>,
    frame: crate::frames::Frame,
) -> Result<crate::frames::Frame, Status> {
    use crate::frames::{Kind, reply, request};
    match frame.kind {
        Kind::Replicate => {
            let batch = request::<ReplicateBatchRequest>(&frame)?;
            Ok(reply::<ReplicateBatchRequest>(
                &apply_replicas(replica, batch).await?,
            ))
        }
        Kind::Read => {
            let batch = request::<ReadBatchRequest>(&frame)?;
            Ok(reply::<ReadBatchRequest>(
                &read_states(replica, batch).await?,
            ))
        }
        other => Err(Status::invalid_argument(format!(
            "a {other:?} frame is not a request"
        ))),
    }
}

/// This replica's states of a batch of keys, in order.
async fn read_states(
    replica: Arc<kv_coordinator::Replica<Engine>>,
    batch: ReadBatchRequest,
) -> Result<ReadBatchReply, Status> {
    check_batch(batch.keys.len(), "keys")?;
    let keys = batch.keys;
    let items = engine_read(&replica, move |r| {
        let mut bytes = 0usize;
        let mut items = Vec::with_capacity(keys.len());
        for key in &keys {
            let item = read_reply(&r.state(key)?);
            bytes += key.len() + item.state.as_ref().map_or(0, Vec::len);
            if bytes > MAX_REPLY_BYTES {
                return Err(kv_coordinator::Error::InvalidInput(format!(
                    "the states of these {} keys take more than {MAX_REPLY_BYTES} bytes: ask for fewer at a time",
                    keys.len()
                )));
            }
            items.push(item);
        }
        Ok(items)
    })
    .await?;
    Ok(ReadBatchReply { items })
}

/// The most state bytes one batch of replica reads answers with: what fits
/// in a message with room to spare.
const MAX_REPLY_BYTES: usize = crate::transport::MAX_MESSAGE_BYTES - (1 << 20);

/// The most bytes of states one page of anti-entropy bucket states holds
/// (one larger state is sent alone).
const MAX_PAGE_BYTES: u32 = 16 << 20;
/// The most stored keys one such page looks at.
const MAX_PAGE_SCAN: u32 = 1 << 20;

/// The most keys a peer may ask for in one page of key listing.
const MAX_LIST_PAGE_KEYS: u32 = 10_000;

/// A page budget a peer asked for: its default when it named none (0, as
/// a peer that predates pages sends), and never above `cap`.
fn page_budget(asked: u32, default: u32, cap: u32) -> u32 {
    if asked == 0 { default } else { asked.min(cap) }
}

/// A replica's answer for one key: its state, or none if it holds nothing.
fn read_reply(state: &kv_coordinator::Siblings) -> ReadReply {
    let stored = !state.is_empty() || !state.context().is_empty();
    ReadReply {
        state: stored.then(|| state.to_bytes()),
    }
}

fn put_reply(put: kv_coordinator::PutResult) -> PutReply {
    PutReply {
        context: put.context,
        dot_actor: put.dot.actor.0,
        dot_counter: put.dot.counter,
    }
}

/// The service nodes call on each other.
#[derive(Clone)]
pub struct InternalService {
    coordinator: Arc<NodeCoordinator>,
    cluster: Arc<Cluster>,
    /// Becomes true when the node stops: long-lived streams then end, so
    /// that a graceful shutdown does not wait for peers to close them.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl InternalService {
    /// Answers each request of `inbound` with `answer` on this node's
    /// replica, one at a time and in order, as the reply stream is polled;
    /// ends after the inbound stream ends or fails, or once the node stops
    /// (the caller then opens a new stream, to another node or to this one
    /// restarted).
    fn answer_each<Req, Rep, Fut>(
        &self,
        inbound: tonic::Streaming<Req>,
        answer: fn(Arc<kv_coordinator::Replica<Engine>>, Req) -> Fut,
    ) -> ReplyStream<Rep>
    where
        Req: Send + 'static,
        Rep: Send + 'static,
        Fut: std::future::Future<Output = Result<Rep, Status>> + Send + 'static,
    {
        let (stopping, replica) = (self.stopping.clone(), self.coordinator.replica().clone());
        Box::pin(futures_util::stream::unfold(
            Some((inbound, stopping)),
            move |state| {
                let replica = replica.clone();
                async move {
                    let (mut inbound, mut stopping) = state?;
                    let next = tokio::select! {
                        next = inbound.message() => next,
                        _ = stopped(&mut stopping) => return None,
                    };
                    match next {
                        Ok(Some(request)) => {
                            let reply = answer(replica, request).await;
                            Some((reply, Some((inbound, stopping))))
                        }
                        Ok(None) => None,
                        Err(status) => Some((Err(status), None)),
                    }
                }
            },
        ))
    }

    /// The internal service of a node; its streams end when `stopping`
    /// becomes true.
    pub fn new(
        coordinator: Arc<NodeCoordinator>,
        cluster: Arc<Cluster>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        InternalService {
            coordinator,
            cluster,
            stopping,
        }
    }
}

#[tonic::async_trait]
impl Internal for InternalService {
    type ReplicateStreamStream = ReplyStream<BatchReply>;

    async fn replicate_stream(
        &self,
        request: Request<tonic::Streaming<ReplicateBatchRequest>>,
    ) -> Result<Response<Self::ReplicateStreamStream>, Status> {
        Ok(Response::new(
            self.answer_each(request.into_inner(), apply_replicas),
        ))
    }

    type ReadStreamStream = ReplyStream<ReadBatchReply>;

    async fn read_stream(
        &self,
        request: Request<tonic::Streaming<ReadBatchRequest>>,
    ) -> Result<Response<Self::ReadStreamStream>, Status> {
        Ok(Response::new(
            self.answer_each(request.into_inner(), read_states),
        ))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadReply>, Status> {
        let key = request.into_inner().key;
        let state = engine_read(self.coordinator.replica(), move |r| r.state(&key)).await?;
        Ok(Response::new(read_reply(&state)))
    }

    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        let op = wire::client_op(request.into_inner());
        let reply = wire::forward_reply(self.coordinator.coordinate(op).await);
        Ok(Response::new(reply))
    }

    async fn merkle_exchange(
        &self,
        request: Request<MerkleRequest>,
    ) -> Result<Response<MerkleReply>, Status> {
        same_sender(&request, request.get_ref().from)?;
        let r = request.into_inner();
        let answer = self
            .coordinator
            .replica()
            .answer_exchange(NodeId(r.from), &r.request)
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(MerkleReply { answer }))
    }

    async fn bucket_states(
        &self,
        request: Request<BucketRequest>,
    ) -> Result<Response<BucketReply>, Status> {
        same_sender(&request, request.get_ref().from)?;
        // A peer from before pages (wire 1) expects every state at once.
        let paged = request
            .extensions()
            .get::<Versions>()
            .is_none_or(|v| v.wire >= 2);
        let r = request.into_inner();
        let replica = self.coordinator.replica().clone();
        let query = if paged {
            BucketQuery {
                buckets: r.buckets,
                after: r.after,
                max_bytes: page_budget(r.max_bytes, 1 << 20, MAX_PAGE_BYTES),
                max_scanned: page_budget(r.max_scanned, 1 << 16, MAX_PAGE_SCAN),
            }
        } else {
            BucketQuery {
                buckets: r.buckets,
                after: None,
                max_bytes: MAX_REPLY_BYTES as u32,
                max_scanned: u32::MAX,
            }
        };
        let page = blocking(move || replica.bucket_page(NodeId(r.from), &query, None)).await?;
        Ok(Response::new(BucketReply {
            states: page
                .states
                .into_iter()
                .map(|(key, state)| KeyState { key, state })
                .collect(),
            next: page.next,
        }))
    }

    async fn list_keys(
        &self,
        request: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysReply>, Status> {
        let r = request.into_inner();
        let replica = self.coordinator.replica().clone();
        let query = KeyQuery {
            prefix: r.prefix,
            after: r.after,
            end: r.end,
            limit: r.limit.clamp(1, MAX_LIST_PAGE_KEYS),
            max_scanned: page_budget(r.max_scanned, 1 << 16, MAX_PAGE_SCAN),
        };
        let page = blocking(move || replica.key_page(&query)).await?;
        Ok(Response::new(ListKeysReply {
            keys: page.keys,
            next: page.next,
        }))
    }

    async fn changes(
        &self,
        request: Request<crate::proto::ChangesRequest>,
    ) -> Result<Response<crate::proto::ChangesReply>, Status> {
        let r = request.into_inner();
        let query = kv_core::FeedQuery {
            prefix: r.prefix,
            exact: r.exact,
            at: r.at.map(crate::wire::position_of),
            wait_ms: r.wait_ms,
            max_bytes: r.max_bytes.clamp(1, MAX_REPLY_BYTES as u32),
        };
        let page = self
            .coordinator
            .replica()
            .changes(query)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(crate::proto::ChangesReply {
            changes: page
                .changes
                .into_iter()
                .map(|(key, state)| KeyState { key, state })
                .collect(),
            resync: page.resync,
            position: Some(crate::wire::feed_position(page.position)),
        }))
    }

    async fn reap(&self, request: Request<ReapRequest>) -> Result<Response<ReapReply>, Status> {
        let r = request.into_inner();
        let replica = self.coordinator.replica().clone();
        let reaped = blocking(move || replica.reap(&r.key, &r.expected)).await?;
        Ok(Response::new(ReapReply { reaped }))
    }

    async fn gossip(&self, request: Request<GossipRequest>) -> Result<Response<Ack>, Status> {
        let sender = calling_node(&request);
        let versions = request.extensions().get::<Versions>().copied();
        let page = request
            .extensions()
            .get::<crate::version::PeerPage>()
            .cloned();
        self.cluster
            .receive_gossip(&request.into_inner().message, sender, versions, page)?;
        Ok(Response::new(Ack {}))
    }

    async fn get_ring(&self, request: Request<RingQuery>) -> Result<Response<RingState>, Status> {
        Ok(Response::new(
            self.cluster.answer_ring_query(request.into_inner()),
        ))
    }

    async fn install_ring(
        &self,
        request: Request<RingState>,
    ) -> Result<Response<InstallReply>, Status> {
        // A ring comes from a node that owns tokens in it or in the ring it
        // replaces (a join, a leave, or one passing a newer ring on).
        if let Some(node) = calling_node(&request) {
            let offered = request.get_ref();
            if !offered.members.iter().any(|m| m.id == node.0) && !self.cluster.in_ring(node) {
                return Err(Status::permission_denied(format!(
                    "{node} owns tokens in neither this node's ring nor the one offered"
                )));
            }
        }
        let accepted = self.cluster.install(request.into_inner()).await?;
        Ok(Response::new(InstallReply {
            accepted,
            epoch: self.cluster.epoch(),
        }))
    }

    async fn fetch_range(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchReply>, Status> {
        let (states, next) = self.cluster.fetch_page(request.into_inner()).await?;
        Ok(Response::new(FetchReply { states, next }))
    }

    async fn propose_ring(
        &self,
        request: Request<RingProposal>,
    ) -> Result<Response<ProposalReply>, Status> {
        same_sender(&request, request.get_ref().proposer)?;
        Ok(Response::new(
            self.cluster.answer_proposal(request.get_ref()),
        ))
    }

    async fn transfer(&self, request: Request<TransferRequest>) -> Result<Response<Ack>, Status> {
        self.cluster.accept_transfer(request.into_inner()).await?;
        Ok(Response::new(Ack {}))
    }
}

/// Refuses a request whose claimed sender is not the node its
/// certificate names (when nodes authenticate).
fn same_sender<T>(request: &Request<T>, claimed: u64) -> Result<(), Status> {
    match calling_node(request) {
        Some(node) if node.0 != claimed => Err(Status::permission_denied(format!(
            "request claims to come from node {claimed} over {node}'s certificate"
        ))),
        _ => Ok(()),
    }
}

/// Operator commands: status, hints, join, leave.
#[derive(Clone)]
pub struct AdminService {
    cluster: Arc<Cluster>,
}

impl AdminService {
    /// The admin service of a node.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        AdminService { cluster }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _: Request<Empty>) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(self.cluster.status()?))
    }

    async fn hints(&self, _: Request<Empty>) -> Result<Response<HintsReply>, Status> {
        Ok(Response::new(self.cluster.hints().await?))
    }

    async fn join(&self, _: Request<Empty>) -> Result<Response<ChangeReply>, Status> {
        Ok(Response::new(self.cluster.join().await?))
    }

    async fn leave(&self, _: Request<Empty>) -> Result<Response<ChangeReply>, Status> {
        Ok(Response::new(self.cluster.leave().await?))
    }

    async fn remove(
        &self,
        request: Request<RemoveRequest>,
    ) -> Result<Response<ChangeReply>, Status> {
        let node = NodeId(request.into_inner().node);
        Ok(Response::new(self.cluster.remove(node).await?))
    }

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotReply>, Status> {
        let dir = request.into_inner().dir;
        Ok(Response::new(self.cluster.snapshot(&dir).await?))
    }

    type RepairStream = ReplyStream<RepairProgress>;

    async fn repair(
        &self,
        request: Request<RepairRequest>,
    ) -> Result<Response<Self::RepairStream>, Status> {
        let peer = request.into_inner().peer;
        let progress = self.cluster.repair((peer != 0).then_some(NodeId(peer)))?;
        Ok(Response::new(Box::pin(futures_util::stream::unfold(
            progress,
            |mut rx| async move { rx.recv().await.map(|p| (Ok(p), rx)) },
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_refuses_beyond_the_limit_and_frees_slots() {
        let gate = InFlight::new(2);
        let a = gate.enter().unwrap();
        let _b = gate.enter().unwrap();
        let refused = gate.enter().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("2 requests"), "{refused}");
        drop(a);
        assert!(gate.enter().is_ok(), "a finished request frees its slot");
        assert!(
            InFlight::new(0).enter().is_ok(),
            "the limit is at least one"
        );
    }
}
