//! A node: engines, replica, coordinator and gRPC services, assembled.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use futures_util::Stream;
use kv_coordinator::{Coordinator, Replica, ReplicaSettings};
use kv_core::NodeId;
use kv_lsm::{Durability, LsmEngine};
use kv_ring::{ConsistentHashRing, TokenStrategy};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::server::{Connected, TcpIncoming};

use crate::cluster::{Cluster, ClusterError, ClusterSettings, GossipView, LiveRing};
use crate::proto::RingState;
use crate::proto::admin_server::AdminServer;
use crate::proto::internal_server::InternalServer;
use crate::proto::kv_server::KvServer;
use crate::ring_state::{self, RingStateError, ring_of, state_of};
use crate::service::{AdminService, Engine, InternalService, KvService, NodeCoordinator};
use crate::transport::{Connect, GrpcTransport, MAX_MESSAGE_BYTES, tcp_connect};

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node.
    pub id: NodeId,
    /// The initial ring's members with their gRPC addresses, used when the
    /// data directory holds no ring yet (the first start of a cluster).
    /// Empty for a node that joins an existing cluster.
    pub members: Vec<(NodeId, String)>,
    /// Addresses of running nodes to join gossip through.
    pub seeds: Vec<String>,
    /// The address peers reach this node at (default: the listen address).
    pub advertise: Option<String>,
    /// Failure domain.
    pub zone: Option<String>,
    /// Relative capacity.
    pub weight: u32,
    /// Joins the ring at start when this node is not in it.
    pub join: bool,
    /// Takes the place of this node, gone for good, at start (when this
    /// node is not in the ring).
    pub replace: Option<NodeId>,
    /// Gossip protocol settings.
    pub gossip: kv_gossip::Config,
    /// How often gossip timers advance.
    pub gossip_tick: Duration,
    /// How often a peer is asked for a newer ring (also paces hand-off).
    pub ring_sync: Duration,
    /// Client requests in flight at most; more are refused with
    /// `ResourceExhausted`.
    pub max_in_flight: usize,
    /// Seeds gossip's random choices (default: from the clock); fixed in
    /// simulations so a run replays.
    pub gossip_seed: Option<u64>,
    /// Where the node keeps its data (`data/` and `hints/` below it).
    pub data_dir: PathBuf,
    /// The directory snapshots must be written below (`None`: anywhere the
    /// node can write; `kvctl snapshot` needs the admin role either way).
    pub snapshot_root: Option<PathBuf>,
    /// Replication settings.
    pub coordinator: kv_coordinator::Config,
    /// Commit-log durability.
    pub durability: Durability,
    /// How the engines' log syncers are woken (under `Always`).
    pub syncer: kv_lsm::SyncerScheduling,
    /// Whether the engines pace their flushes' and compactions' table
    /// writes.
    pub pace_background_writes: bool,
    /// Virtual nodes per node.
    pub vnodes: u32,
    /// Memtable size of the data engine.
    pub memtable_bytes: usize,
    /// TLS between nodes and for clients, tokens, and the gate in front of
    /// the services (default: none of them: for tests and loopback only).
    pub security: crate::security::Security,
    /// Sends replica writes and reads to peers over framed TCP connections
    /// ([`crate::frames`], mutual TLS when `security.tls` is set) instead
    /// of gRPC streams. Every node started with [`start`] serves both.
    /// Off by default here, since a node on another network
    /// ([`start_on`], a simulation) dials frames over real TCP; `kvd`'s
    /// configuration turns it on by default.
    pub internode_frames: bool,
    /// Where this node's status page is served (`host:port`), announced
    /// on every call to peers so that their pages link to it (none: not
    /// announced).
    pub status_page: Option<String>,
}

impl NodeConfig {
    /// Node `id` keeping its data in `data_dir`, with the defaults: no
    /// members or seeds yet (set one of them), the coordinator's default
    /// settings, durability `Always`, 150 virtual nodes, a 64 MiB memtable,
    /// weight 1, no zone, default gossip timing, the ring synchronised
    /// every 2 s, 4096 client requests in flight at most.
    pub fn new(id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        let gossip = kv_gossip::Config::default();
        NodeConfig {
            id,
            members: Vec::new(),
            seeds: Vec::new(),
            advertise: None,
            zone: None,
            weight: 1,
            join: false,
            replace: None,
            gossip_tick: gossip.probe_interval / 10,
            gossip,
            ring_sync: Duration::from_secs(2),
            max_in_flight: 4096,
            gossip_seed: None,
            data_dir: data_dir.into(),
            snapshot_root: None,
            coordinator: kv_coordinator::Config::default(),
            durability: Durability::Always,
            syncer: kv_lsm::SyncerScheduling::Preempting,
            pace_background_writes: kv_lsm::Options::default().pace_background_writes,
            vnodes: 150,
            memtable_bytes: 64 << 20,
            security: crate::security::Security::default(),
            internode_frames: false,
            status_page: None,
        }
    }

    /// Faster gossip and ring synchronisation, for tests and local
    /// clusters on one machine: probes every `interval`.
    pub fn with_gossip_interval(mut self, interval: Duration) -> Self {
        self.gossip.probe_interval = interval;
        self.gossip.probe_timeout = interval * 2 / 5;
        self.gossip.reclaim_interval = interval * 5;
        self.gossip.push_pull_interval = interval * 10;
        self.gossip_tick = (interval / 10).max(Duration::from_millis(5));
        self.ring_sync = interval * 2;
        self
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A storage engine failed to open.
    #[error("storage: {0}")]
    Storage(#[from] kv_lsm::Error),
    /// The coordinator refused its settings or failed to start.
    #[error("coordinator: {0}")]
    Coordinator(#[from] kv_coordinator::Error),
    /// The ring could not be built from the members.
    #[error("ring: {0}")]
    Ring(#[from] kv_ring::RingError),
    /// The ring file is damaged or invalid.
    #[error("{0}")]
    RingState(#[from] RingStateError),
    /// Gossip refused its settings.
    #[error("gossip: {0}")]
    Gossip(#[from] kv_gossip::Error),
    /// Neither a ring nor a way to learn one.
    #[error("no ring: give the initial members, or seeds to learn the ring from")]
    NoRing,
    /// Listening failed.
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed while serving.
    #[error("serve: {0}")]
    Serve(String),
    /// The TLS settings were refused.
    #[error("TLS: {0}")]
    Tls(String),
    /// The data directory's identity could not be renewed.
    #[error("{0}")]
    Identity(#[from] crate::identity::IdentityError),
}

/// A running node.
pub struct RunningNode {
    /// Its id.
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
    coordinator: Arc<NodeCoordinator>,
    cluster: Arc<Cluster>,
    tasks: Vec<JoinHandle<()>>,
    shutdown: Option<oneshot::Sender<()>>,
    /// Ends the internal service's long-lived streams.
    stop_streams: watch::Sender<bool>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl RunningNode {
    /// The node's coordinator.
    pub fn coordinator(&self) -> &Arc<NodeCoordinator> {
        &self.coordinator
    }

    /// The node's membership and ring.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Becomes true once the node left the ring (`kvctl leave`) and
    /// handed off its data; the process should then stop.
    pub fn left(&self) -> watch::Receiver<bool> {
        self.cluster.left()
    }

    /// Stops accepting, finishes in-flight requests, and flushes.
    ///
    /// # Errors
    ///
    /// A description of a task that failed while stopping.
    pub async fn shutdown(mut self) -> Result<(), String> {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.stop_streams.send_replace(true);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        let replica = self.coordinator.replica().clone();
        tokio::task::spawn_blocking(move || kv_core::StorageEngine::flush(replica.engine()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

/// The ring this node starts with: the one in its data directory, else
/// the initial ring of the configured members (epoch 1, the same on every
/// node that is given the same members), else none (learned from seeds).
fn initial_ring(config: &NodeConfig) -> Result<RingState, NodeError> {
    if let Some(state) = ring_state::load(&config.data_dir)? {
        return Ok(state);
    }
    if config.members.is_empty() {
        if config.seeds.is_empty() {
            return Err(NodeError::NoRing);
        }
        return Ok(RingState {
            epoch: 0,
            vnodes: config.vnodes,
            members: Vec::new(),
        });
    }
    let mut members = config.members.clone();
    members.sort();
    let ring = ConsistentHashRing::builder()
        .vnodes(config.vnodes)
        .balance_replicas(config.coordinator.n)
        .nodes(members.iter().map(|(id, _)| *id))
        .build()?;
    let state = state_of(1, &ring, |id| {
        members
            .iter()
            .find(|(m, _)| *m == id)
            .map(|(_, a)| a.clone())
            .unwrap_or_default()
    });
    ring_state::store(&config.data_dir, &state)?;
    Ok(state)
}

/// Serves the client API (`Kv`: get, put, delete) of any coordinator on
/// `listener` until `shutdown` completes: the way to put a node composed
/// from the crates (another engine, transport or partitioner) behind the
/// client SDK and `kvctl`. It serves only the client service; the
/// composition brings its own replication between nodes. At most
/// `max_in_flight` requests run at once (the rest get `ResourceExhausted`).
///
/// # Errors
///
/// The listener's address cannot be read, or the server fails.
pub async fn serve_client_api<E, T, P>(
    coordinator: Arc<kv_coordinator::Coordinator<E, T, P>>,
    listener: TcpListener,
    max_in_flight: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError>
where
    E: kv_core::StorageEngine + 'static,
    T: kv_core::Transport + 'static,
    P: kv_core::Partitioner + Send + Sync + 'static,
{
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // Pipelines end when shutdown starts, so it does not wait for clients.
    let (stop_streams, stopping) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_streams.send(true);
    };
    let kv = KvServer::new(KvService::new(coordinator, max_in_flight).stop_streams_on(stopping))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .http2_max_pending_accept_reset_streams(Some(PENDING_ACCEPT_RESETS))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(kv)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| NodeError::Serve(e.to_string()))
}

/// Streams a client may open and reset before the server accepts them,
/// per connection, before the connection is closed with ENHANCE_YOUR_CALM
/// (h2's guard against "rapid reset" floods; its default is 20). A node
/// that was paused or slow comes back to every request that clients and
/// peers hedged elsewhere and then cancelled: with 20, it dropped the
/// whole connection, and every request on it, right as it recovered.
/// Accepting a reset stream costs little, and requests in flight are
/// bounded separately (`max_in_flight`).
const PENDING_ACCEPT_RESETS: usize = 1024;

/// Requests one connection may have open at once (HTTP/2 concurrent
/// streams; h2's default is unbounded). A client's SDK multiplexes every
/// request to a node on one connection, so this bounds what one client
/// connection can hold open on a node, beside `max_in_flight` for all.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Opens the node's engines, builds its coordinator, joins gossip, and
/// serves the client, internal and admin services on `listener` until shut
/// down: all of it when the returned future is awaited.
///
/// # Errors
///
/// [`NodeError`] if an engine cannot open, the ring cannot be built or loaded,
/// or the configuration is refused.
pub fn start(
    config: NodeConfig,
    listener: TcpListener,
) -> futures_util::future::BoxFuture<'static, Result<RunningNode, NodeError>> {
    // Boxed here, in this crate: the node's whole stack (coordinator,
    // services, engines) is then compiled once, in this library, instead
    // of again in every binary that awaits it (an `async fn`'s body is
    // compiled where it is polled).
    Box::pin(start_listening(config, listener))
}

async fn start_listening(
    config: NodeConfig,
    listener: TcpListener,
) -> Result<RunningNode, NodeError> {
    let addr = listener.local_addr()?;
    // Framed internode connections come in on the same port; TLS and the
    // gate's policy admit them as they do gRPC calls.
    let frame_tls = config
        .security
        .tls
        .as_ref()
        .map(crate::frames::FrameTls::new)
        .transpose()
        .map_err(NodeError::Tls)?;
    let policy = Arc::new(config.security.policy());
    let (incoming, mut framed) = crate::frames::split_listener(listener);
    let node = start_on(config, addr, incoming, tcp_connect()).await?;
    let replica = node.coordinator.replica().clone();
    let stopping = node.stop_streams.subscribe();
    tokio::spawn(async move {
        while let Some(conn) = framed.recv().await {
            let replica = replica.clone();
            tokio::spawn(crate::frames::admit_and_serve(
                conn,
                frame_tls.clone(),
                policy.clone(),
                stopping.clone(),
                move |frame| crate::service::answer_frame(replica.clone(), frame),
            ));
        }
    });
    Ok(node)
}

/// [`start`] on any transport: serves the connections `incoming` yields
/// (the node listens at `addr`) and reaches other nodes through channels
/// made by `connect`. This is how a simulated network (turmoil) runs real
/// nodes.
///
/// # Errors
///
/// As [`start`].
pub async fn start_on<I, IO, IE>(
    config: NodeConfig,
    addr: SocketAddr,
    incoming: I,
    connect: Connect,
) -> Result<RunningNode, NodeError>
where
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let epoch = fresh_epoch(&config).await?;
    let (coordinator, cluster) = assemble(&config, advertise, epoch, connect)?;
    let Serving {
        server,
        shutdown: tx,
        stop_streams,
    } = serve(&config, &coordinator, &cluster, incoming)?;
    let mut tasks = cluster.spawn();
    if let Some(old) = config.replace {
        tasks.push(spawn_change(&cluster, Change::Replace(old)));
    } else if config.join {
        tasks.push(spawn_change(&cluster, Change::Join));
    }
    Ok(RunningNode {
        id: config.id,
        addr,
        coordinator,
        cluster,
        tasks,
        shutdown: Some(tx),
        stop_streams,
        server: Some(server),
    })
}

/// Takes a fresh epoch, durable before anything is coordinated, and waits
/// until the clock passed it.
async fn fresh_epoch(config: &NodeConfig) -> Result<u32, NodeError> {
    // A fresh epoch, durable before anything is coordinated: the dots this
    // start issues can collide with none issued before, whatever the data
    // directory lost or was restored from.
    let wall_secs = kv_core::unix_secs();
    let identity = crate::identity::take_epoch(&config.data_dir, config.id, wall_secs)?;
    // Not one dot before the clock passed the epoch. On a multi-threaded
    // runtime the wait runs off the workers; on a current-thread runtime
    // (a simulation) it blocks the thread, so simulated time stands still.
    let epoch = identity.epoch;
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        tokio::task::spawn_blocking(move || crate::identity::wait_past(epoch))
            .await
            .map_err(|e| NodeError::Serve(format!("waiting for the epoch failed: {e}")))?;
    } else {
        crate::identity::wait_past(epoch);
    }
    tracing::info!(
        node = config.id.0,
        epoch = identity.epoch,
        "took a new epoch"
    );
    Ok(epoch)
}

/// The node's data and hint engines, opened.
fn open_engines(config: &NodeConfig) -> Result<(Engine, Engine), NodeError> {
    let open = |dir: &str, memtable: usize, max_value: usize| -> Result<Engine, NodeError> {
        Ok(Arc::new(
            LsmEngine::builder(config.data_dir.join(dir))
                .durability(config.durability)
                .syncer_scheduling(config.syncer)
                .pace_background_writes(config.pace_background_writes)
                .memtable_bytes(memtable)
                .max_value_bytes(max_value)
                .open()?,
        ))
    };
    // The engines hold whole sibling sets: their value limit is the
    // coordinator's state limit, so no state the coordinator accepts is
    // refused below it.
    let max_state = config.coordinator.max_state_bytes;
    let data = open("data", config.memtable_bytes, max_state)?;
    let hints = open("hints", 4 << 20, max_state.saturating_add(64))?;
    Ok((data, hints))
}

/// The node's parts wired together: engines, ring, transport, replica,
/// coordinator and cluster, in epoch `epoch`, advertised at `advertise`.
fn assemble(
    config: &NodeConfig,
    advertise: String,
    epoch: u32,
    connect: Connect,
) -> Result<(Arc<NodeCoordinator>, Arc<Cluster>), NodeError> {
    let max_state = config.coordinator.max_state_bytes;
    let (data, hints) = open_engines(config)?;
    let state = initial_ring(config)?;
    let ring = Arc::new(LiveRing::new(if state.members.is_empty() {
        ConsistentHashRing::empty(config.vnodes, TokenStrategy::Balanced)?
    } else {
        ring_of(&state)?
    }));
    let transport = Arc::new(
        GrpcTransport::with_connect(config.coordinator.request_timeout, connect)
            .with_tls(config.security.tls.clone())
            .with_status_page(config.status_page.as_deref())
            .with_frames(config.internode_frames.then_some(config.id))
            .map_err(NodeError::Tls)?,
    );
    for (id, member_addr) in &config.members {
        transport.set_address(*id, member_addr.clone());
    }
    let settings = ReplicaSettings {
        n: config.coordinator.n,
        hints: kv_coordinator::HintLimits {
            count: config.coordinator.max_hints,
            bytes: config.coordinator.max_hint_bytes,
        },
        merkle_leaves: 1 << 12,
        epoch,
        max_state_bytes: max_state,
    };
    let replica = Arc::new(Replica::new(
        config.id,
        data,
        hints,
        &settings,
        ring.clone(),
    )?);
    let view = Arc::new(GossipView::default());
    let coordinator = Arc::new(Coordinator::new(
        config.coordinator.clone(),
        replica,
        transport.clone(),
        ring.clone(),
        view.clone(),
    )?);
    let cluster = Arc::new(Cluster::new(
        ClusterSettings {
            id: config.id,
            addr: advertise,
            zone: config.zone.clone(),
            weight: config.weight,
            vnodes: config.vnodes,
            n: config.coordinator.n,
            gossip: config.gossip.clone(),
            seeds: config.seeds.clone(),
            tick: config.gossip_tick,
            ring_sync: config.ring_sync,
            data_dir: config.data_dir.clone(),
            snapshot_root: config.snapshot_root.clone(),
            seed: config.gossip_seed,
            posture: config.security.posture(),
        },
        state,
        ring,
        view,
        transport,
        coordinator.clone(),
    )?);
    Ok((coordinator, cluster))
}

/// The server task that answers the client, internal and admin services
/// on the connections `incoming` yields, the sender that shuts it down,
/// and the one that ends its long-lived streams.
fn serve<I, IO, IE>(
    config: &NodeConfig,
    coordinator: &Arc<NodeCoordinator>,
    cluster: &Arc<Cluster>,
    incoming: I,
) -> Result<Serving, NodeError>
where
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let (tx, rx) = oneshot::channel::<()>();
    let (stop_streams, stopping) = watch::channel(false);
    let kv = KvServer::new(
        KvService::new(coordinator.clone(), config.max_in_flight).stop_streams_on(stopping.clone()),
    )
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let internal = InternalServer::new(InternalService::new(
        coordinator.clone(),
        cluster.clone(),
        stopping,
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = AdminServer::new(AdminService::new(cluster.clone()));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.security.tls {
        builder = builder
            .tls_config(tls.server())
            .map_err(|e| NodeError::Tls(e.to_string()))?;
    }
    if config.security.insecure {
        tracing::warn!(
            node = config.id.0,
            "running insecure: no TLS or authentication; anyone who reaches this node's port can read, write, and change the cluster"
        );
    }
    let server = tokio::spawn(
        builder
            .layer(config.security.gate())
            .http2_max_pending_accept_reset_streams(Some(PENDING_ACCEPT_RESETS))
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .http2_keepalive_interval(Some(Duration::from_millis(500)))
            .http2_keepalive_timeout(Some(Duration::from_secs(1)))
            .add_service(kv)
            .add_service(internal)
            .add_service(admin)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            }),
    );
    Ok(Serving {
        server,
        shutdown: tx,
        stop_streams,
    })
}

/// A node's server task and its two off switches.
struct Serving {
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Shuts the server down.
    shutdown: oneshot::Sender<()>,
    /// Ends the internal service's long-lived streams.
    stop_streams: watch::Sender<bool>,
}

/// Starts `size` nodes on 127.0.0.1 (free ports) as one cluster, for
/// tests, benches and local experiments. Node `i` keeps its data in
/// `dir/n<i>`; `configure` adjusts each node's settings, which start as
/// [`NodeConfig::new`] with every node as an initial member.
///
/// # Errors
/// A node that cannot bind or start.
#[cfg(feature = "test-util")]
pub async fn start_local(
    size: u64,
    dir: &std::path::Path,
    configure: impl Fn(NodeConfig) -> NodeConfig,
) -> Result<Vec<RunningNode>, NodeError> {
    let mut listeners = Vec::new();
    for _ in 0..size {
        listeners.push(TcpListener::bind("127.0.0.1:0").await?);
    }
    let mut members = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        members.push((NodeId(i as u64 + 1), l.local_addr()?.to_string()));
    }
    // Started side by side: each start waits for the clock to pass its
    // epoch (see `identity::wait_past`), and they wait together.
    let mut starts = Vec::new();
    for ((id, _), listener) in members.clone().into_iter().zip(listeners) {
        let config = configure(NodeConfig {
            members: members.clone(),
            ..NodeConfig::new(id, dir.join(format!("n{}", id.0)))
        });
        starts.push(tokio::spawn(start(config, listener)));
    }
    let mut nodes = Vec::new();
    for started in starts {
        nodes.push(
            started
                .await
                .map_err(|e| NodeError::Serve(format!("node start failed: {e}")))??,
        );
    }
    Ok(nodes)
}

/// A ring change a node makes at start.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// Config `join`.
    Join,
    /// Config `replace`.
    Replace(NodeId),
}

/// Joins the ring, or takes a dead node's place in it, at start; retries
/// until it succeeds or finds the node already in the ring.
fn spawn_change(cluster: &Arc<Cluster>, change: Change) -> JoinHandle<()> {
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Some(cluster) = weak.upgrade() else {
                return;
            };
            let outcome = match change {
                Change::Join => cluster.join().await,
                Change::Replace(old) => cluster.replace(old).await,
            };
            match outcome {
                Ok(reply) => {
                    tracing::info!(
                        ?change,
                        epoch = reply.epoch,
                        keys = reply.keys_streamed,
                        "took ranges in the ring"
                    );
                    return;
                }
                Err(ClusterError::AlreadyMember { .. }) => return,
                Err(e) => tracing::warn!(?change, error = %e, "ring change failed; retrying"),
            }
        }
    })
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM: when a node should shut down
/// gracefully. Installing the handlers also un-ignores SIGINT for a
/// process started in the background by a shell.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
