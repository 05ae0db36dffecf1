//! The node's configuration file, flags, and their validation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kv_core::NodeId;
use kv_lsm::Durability;
use serde::Deserialize;

use crate::node::NodeConfig;
use crate::security::certs::CertsDir;
use crate::security::{NodeTls, Security, TokenTable};

/// A node's configuration, as read from TOML (every field optional in the
/// file; flags override it).
///
/// ```toml
/// node_id = 1
/// listen = "127.0.0.1:7001"
/// data_dir = "data/n1"
/// members = ["1@127.0.0.1:7001", "2@127.0.0.1:7002", "3@127.0.0.1:7003"]
/// # a node joining later lists seeds instead, and joins the ring:
/// # seeds = ["127.0.0.1:7001"]
/// # join = true
/// n = 3
/// w = 2
/// r = 2
/// durability = "always"        # or "never", or "interval:100" (ms)
/// ```
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// This node's id.
    pub node_id: Option<u64>,
    /// Address the gRPC services listen on.
    pub listen: Option<String>,
    /// Address for `/metrics` and the status page (none: no HTTP).
    pub http: Option<String>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// The directory `kvctl snapshot DIR` must write below (an absolute
    /// path on the node's machine; none: anywhere the node can write).
    pub snapshot_root: Option<PathBuf>,
    /// The initial ring's members as `id@host:port` (used on the first
    /// start of a cluster; later the ring lives in the data directory).
    pub members: Option<Vec<String>>,
    /// Addresses (`host:port`) of running nodes to join gossip through.
    pub seeds: Option<Vec<String>>,
    /// The address peers reach this node at (default: `listen`).
    pub advertise: Option<String>,
    /// Failure domain (rack, zone) of this node.
    pub zone: Option<String>,
    /// Relative capacity of this node (1).
    pub weight: Option<u32>,
    /// Join the ring at start if this node is not in it (false).
    pub join: Option<bool>,
    /// Take the place of this node id, gone for good, at start.
    pub replace: Option<u64>,
    /// Gossip probe interval in milliseconds (1,000).
    pub gossip_interval_ms: Option<u64>,
    /// How often a peer is asked for a newer ring, in milliseconds (2,000).
    pub ring_sync_ms: Option<u64>,
    /// Virtual nodes per node (150).
    pub vnodes: Option<u32>,
    /// Replicas per key (3).
    pub n: Option<usize>,
    /// Write quorum (2).
    pub w: Option<usize>,
    /// Read quorum (2).
    pub r: Option<usize>,
    /// Request timeout in milliseconds (200).
    pub request_timeout_ms: Option<u64>,
    /// `always`, `never` or `interval:<ms>` (always).
    pub durability: Option<String>,
    /// How the commit log's syncer is woken (`always` only): `preempting`
    /// (the default) or `yielding` (more writes per sync on nodes whose
    /// CPUs are busy, at a higher p99 at half load; see
    /// [`kv_lsm::SyncerScheduling`]).
    pub syncer: Option<String>,
    /// Whether flushes and compactions pace their table writes so that the
    /// log's syncs do not wait behind a whole table (true; see
    /// [`kv_lsm::Options::pace_background_writes`]).
    pub pace_background_writes: Option<bool>,
    /// How replica writes and reads reach peers: `frames` (the default:
    /// length-prefixed frames on TCP, mutual TLS when TLS is on) or `grpc`
    /// (long-lived gRPC streams). Every node serves both.
    pub internode: Option<String>,
    /// Hints kept for other nodes at most (1,000,000).
    pub max_hints: Option<usize>,
    /// Between anti-entropy exchanges, in milliseconds (10,000).
    pub anti_entropy_interval_ms: Option<u64>,
    /// Keys anti-entropy repairs per second at most, pulled and pushed
    /// together (100,000; 0 for no limit).
    pub repair_keys_per_sec: Option<u32>,
    /// Memtable size in MiB (64).
    pub memtable_mib: Option<usize>,
    /// Log filter, as `info` or `warn,kv_server=debug`; `RUST_LOG` wins.
    pub log: Option<String>,
    /// A client request that takes this long or longer (milliseconds) is
    /// logged with its span tree and counted (100; 0: none).
    pub slow_request_ms: Option<u64>,
    /// One client request in this many is traced (its spans made, and
    /// logged when slow): 10; 1, every one (costs about a sixth of the
    /// throughput, docs/benchmarks.md); 0, none.
    pub trace_every: Option<u32>,
    /// Export the traced requests' spans to this OpenTelemetry collector
    /// (OTLP/gRPC, `http://host:4317`; kvd built with the `otel` feature).
    pub otlp_endpoint: Option<String>,
    /// Client requests in flight at most; more are refused with
    /// ResourceExhausted (4096).
    pub max_in_flight: Option<usize>,
    /// Siblings kept per key at most; beyond it the oldest are dropped
    /// (10).
    pub max_siblings: Option<usize>,
    /// Sloppy quorum: writes for a down replica go to the next healthy
    /// node with a hint (true). Off, a write needs W true replicas.
    pub sloppy_quorum: Option<bool>,
    /// A tombstone is collected no sooner than this many seconds after the
    /// delete, once every replica holds it; hints older than this are dropped
    /// unsent (86,400: one day).
    pub tombstone_grace_secs: Option<u64>,
    /// Repair stale replicas before a read answers, not after (false).
    pub read_repair_blocking: Option<bool>,
    /// Largest key accepted, in bytes (65,536).
    pub max_key_bytes: Option<usize>,
    /// Largest value accepted, in bytes (16 MiB).
    pub max_value_bytes: Option<usize>,
    /// Largest stored state of one key (its siblings and clock), in bytes
    /// (48 MiB); a write that would store more is refused alone.
    pub max_state_bytes: Option<usize>,
    /// Bytes of hinted states kept for other nodes at most (1 GiB).
    pub max_hint_bytes: Option<u64>,
    /// Between hint deliveries and tombstone collections, in milliseconds
    /// (1,000).
    pub maintenance_interval_ms: Option<u64>,
    /// A write waits this many times the recent replica latency for a replica
    /// before it also sends the state to a fallback with a hint (4).
    pub hedge_factor: Option<u32>,
    /// The shortest such wait, in milliseconds (10); the longest is half the
    /// request timeout.
    pub hedge_floor_ms: Option<u64>,
    /// A certificates directory (`kvctl certs`): `ca.pem`,
    /// `node-<id>.pem` and `node-<id>.key` turn TLS on, and `tokens.toml`,
    /// when present, is the token table. `tls_*` and `tokens_file` override
    /// single files.
    pub certs_dir: Option<PathBuf>,
    /// The cluster CA's certificate (PEM).
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), issued by the cluster CA.
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// The token table: `[[token]]` entries with `name`, `role` and
    /// `sha256` (see `kv_server::security::TokenTable`).
    pub tokens_file: Option<PathBuf>,
    /// Serve without TLS on an address other than loopback (false): anyone
    /// who reaches the port can then read, write and change the cluster.
    pub insecure: Option<bool>,
    /// `/metrics` and the status page ask for a token (any role) (false).
    pub http_token: Option<bool>,
}

/// Why a configuration was refused; each message names the setting, and
/// [`setting`](ConfigError::setting) gives it to programs.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML does not parse, or names a setting that does not exist.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A required setting is absent.
    #[error("invalid configuration: {message}")]
    Missing {
        /// The setting.
        setting: &'static str,
        /// What to give.
        message: String,
    },
    /// A setting's value is refused.
    #[error("invalid configuration: {message}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// Why.
        message: String,
    },
    /// The node's credentials cannot be loaded or do not fit it, or the
    /// settings would serve the cluster to anyone.
    #[error("invalid configuration: {message}")]
    Security {
        /// The setting.
        setting: &'static str,
        /// Why.
        message: String,
    },
}

impl ConfigError {
    fn parse(message: impl Into<String>) -> Self {
        ConfigError::Parse(message.into())
    }

    /// The setting refused, when one is to blame.
    pub fn setting(&self) -> Option<&'static str> {
        match self {
            ConfigError::Parse(_) => None,
            ConfigError::Missing { setting, .. }
            | ConfigError::Invalid { setting, .. }
            | ConfigError::Security { setting, .. } => Some(setting),
        }
    }
}

fn missing(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Missing {
        setting,
        message: message.into(),
    }
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

fn security(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Security {
        setting,
        message: message.into(),
    }
}

impl ServerConfig {
    /// Parses a TOML file's contents.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for TOML that does not parse or unknown settings.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::parse(e.to_string()))
    }

    /// `self` with every field `over` sets replaced.
    pub fn overridden_by(self, over: ServerConfig) -> ServerConfig {
        ServerConfig {
            node_id: over.node_id.or(self.node_id),
            listen: over.listen.or(self.listen),
            http: over.http.or(self.http),
            data_dir: over.data_dir.or(self.data_dir),
            snapshot_root: over.snapshot_root.or(self.snapshot_root),
            members: over.members.or(self.members),
            seeds: over.seeds.or(self.seeds),
            advertise: over.advertise.or(self.advertise),
            zone: over.zone.or(self.zone),
            weight: over.weight.or(self.weight),
            join: over.join.or(self.join),
            replace: over.replace.or(self.replace),
            gossip_interval_ms: over.gossip_interval_ms.or(self.gossip_interval_ms),
            ring_sync_ms: over.ring_sync_ms.or(self.ring_sync_ms),
            vnodes: over.vnodes.or(self.vnodes),
            n: over.n.or(self.n),
            w: over.w.or(self.w),
            r: over.r.or(self.r),
            request_timeout_ms: over.request_timeout_ms.or(self.request_timeout_ms),
            durability: over.durability.or(self.durability),
            syncer: over.syncer.or(self.syncer),
            pace_background_writes: over.pace_background_writes.or(self.pace_background_writes),
            internode: over.internode.or(self.internode),
            max_hints: over.max_hints.or(self.max_hints),
            anti_entropy_interval_ms: over
                .anti_entropy_interval_ms
                .or(self.anti_entropy_interval_ms),
            repair_keys_per_sec: over.repair_keys_per_sec.or(self.repair_keys_per_sec),
            memtable_mib: over.memtable_mib.or(self.memtable_mib),
            log: over.log.or(self.log),
            slow_request_ms: over.slow_request_ms.or(self.slow_request_ms),
            trace_every: over.trace_every.or(self.trace_every),
            otlp_endpoint: over.otlp_endpoint.or(self.otlp_endpoint),
            max_in_flight: over.max_in_flight.or(self.max_in_flight),
            max_siblings: over.max_siblings.or(self.max_siblings),
            sloppy_quorum: over.sloppy_quorum.or(self.sloppy_quorum),
            tombstone_grace_secs: over.tombstone_grace_secs.or(self.tombstone_grace_secs),
            read_repair_blocking: over.read_repair_blocking.or(self.read_repair_blocking),
            max_key_bytes: over.max_key_bytes.or(self.max_key_bytes),
            max_value_bytes: over.max_value_bytes.or(self.max_value_bytes),
            max_state_bytes: over.max_state_bytes.or(self.max_state_bytes),
            max_hint_bytes: over.max_hint_bytes.or(self.max_hint_bytes),
            maintenance_interval_ms: over
                .maintenance_interval_ms
                .or(self.maintenance_interval_ms),
            hedge_factor: over.hedge_factor.or(self.hedge_factor),
            hedge_floor_ms: over.hedge_floor_ms.or(self.hedge_floor_ms),
            certs_dir: over.certs_dir.or(self.certs_dir),
            tls_ca: over.tls_ca.or(self.tls_ca),
            tls_cert: over.tls_cert.or(self.tls_cert),
            tls_key: over.tls_key.or(self.tls_key),
            tokens_file: over.tokens_file.or(self.tokens_file),
            insecure: over.insecure.or(self.insecure),
            http_token: over.http_token.or(self.http_token),
        }
    }

    /// From how long a client request is logged as slow; `None` when
    /// `slow_request_ms` is 0.
    pub fn slow_request_threshold(&self) -> Option<std::time::Duration> {
        match self.slow_request_ms.unwrap_or(100) {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        }
    }

    /// Where peers' pages link to this node's: the HTTP address, its host
    /// taken from `advertise` (else the listen address) when it listens
    /// on every interface; none without HTTP, or when no host is known.
    fn status_page(&self, listen: SocketAddr) -> Result<Option<String>, ConfigError> {
        let Some(http) = self.http_addr()? else {
            return Ok(None);
        };
        if !http.ip().is_unspecified() {
            return Ok(Some(http.to_string()));
        }
        let host = match self.advertise.as_deref() {
            Some(a) => a.rsplit_once(':').map(|(host, _)| host.to_string()),
            None => (!listen.ip().is_unspecified()).then(|| match listen {
                SocketAddr::V4(v4) => v4.ip().to_string(),
                SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
            }),
        };
        Ok(host.map(|h| format!("{h}:{}", http.port())))
    }

    /// The HTTP address, if one is set and valid.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an address that does not parse.
    pub fn http_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.http
            .as_deref()
            .map(|a| a.parse().map_err(|e| invalid("http", format!("http: {e}"))))
            .transpose()
    }

    /// Checks everything and produces the node's settings and listen address.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first missing or invalid setting.
    pub fn validate(&self) -> Result<(NodeConfig, SocketAddr), ConfigError> {
        let (id, listen) = self.identity()?;
        let data_dir = self
            .data_dir
            .clone()
            .ok_or_else(|| missing("data_dir", "data_dir is required"))?;
        let Addresses {
            members,
            seeds,
            advertise,
        } = self.addresses(id, listen)?;
        let weight = self.weight.unwrap_or(1);
        if weight == 0 {
            return Err(invalid("weight", "weight must be at least 1"));
        }
        let node = self.tune_node(NodeConfig::new(id, data_dir))?;
        let durability = parse_durability(self.durability.as_deref().unwrap_or("always"))?;
        let coordinator = self.coordinator()?;
        let vnodes = self.vnodes.unwrap_or(150);
        if vnodes == 0 {
            return Err(invalid("vnodes", "vnodes must be at least 1"));
        }
        let memtable_bytes = self.memtable_mib.unwrap_or(64).saturating_mul(1 << 20);
        let security = self.security(id, listen)?;
        Ok((
            NodeConfig {
                members: members
                    .into_iter()
                    .map(|(id, addr)| (id, addr.to_string()))
                    .collect(),
                seeds,
                advertise,
                zone: self.zone.clone(),
                weight,
                join: self.join.unwrap_or(false),
                replace: self.replace.map(NodeId),
                coordinator,
                durability,
                syncer: parse_syncer(self.syncer.as_deref().unwrap_or("preempting"))?,
                pace_background_writes: self
                    .pace_background_writes
                    .unwrap_or(node.pace_background_writes),
                internode_frames: self.internode_frames()?,
                status_page: self.status_page(listen)?,
                vnodes,
                memtable_bytes,
                security,
                ..node
            },
            listen,
        ))
    }

    /// The node's id and the address it listens on.
    fn identity(&self) -> Result<(NodeId, SocketAddr), ConfigError> {
        let id = NodeId(
            self.node_id
                .ok_or_else(|| missing("node_id", "node_id is required"))?,
        );
        if id.0 > kv_core::ActorId::MAX_NODE {
            return Err(invalid(
                "node_id",
                format!("node_id must be at most {}", kv_core::ActorId::MAX_NODE),
            ));
        }
        let listen: SocketAddr = self
            .listen
            .as_deref()
            .ok_or_else(|| missing("listen", "listen is required (for example 127.0.0.1:7001)"))?
            .parse()
            .map_err(|e| invalid("listen", format!("listen: {e}")))?;
        Ok((id, listen))
    }

    /// The initial ring's members, the seeds, and the address peers reach
    /// this node at (when not the listen address).
    fn addresses(&self, id: NodeId, listen: SocketAddr) -> Result<Addresses, ConfigError> {
        let members = self
            .members
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|m| parse_member(m))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ids: Vec<u64> = members.iter().map(|(m, _)| m.0).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != members.len() {
            return Err(invalid("members", "members lists a node id twice"));
        }
        let seeds = self.seeds.clone().unwrap_or_default();
        for seed in &seeds {
            seed.parse::<SocketAddr>()
                .map_err(|e| invalid("seeds", format!("seed {seed:?}: {e}")))?;
        }
        if members.is_empty() && seeds.is_empty() {
            return Err(missing(
                "members",
                "give members (id@host:port, the initial ring) or seeds (host:port of running nodes)",
            ));
        }
        if let Some((_, addr)) = members.iter().find(|(m, _)| *m == id)
            && self.advertise.is_none()
            && *addr != listen
            && !listen.ip().is_unspecified()
        {
            return Err(invalid(
                "listen",
                format!(
                    "node {} is listed at {addr} in members but listens on {listen}",
                    id.0
                ),
            ));
        }
        let advertise = match &self.advertise {
            Some(a) => Some(
                a.parse::<SocketAddr>()
                    .map_err(|e| invalid("advertise", format!("advertise: {e}")))?
                    .to_string(),
            ),
            None if listen.ip().is_unspecified() => {
                return Err(missing(
                    "advertise",
                    format!("listen {listen} is not an address peers can reach: set advertise"),
                ));
            }
            None => None,
        };
        Ok(Addresses {
            members,
            seeds,
            advertise,
        })
    }

    /// `node` with the file's gossip, admission and ring sync settings.
    fn tune_node(&self, mut node: NodeConfig) -> Result<NodeConfig, ConfigError> {
        if let Some(ms) = self.gossip_interval_ms {
            if ms < 10 {
                return Err(invalid(
                    "gossip_interval_ms",
                    "gossip_interval_ms must be at least 10",
                ));
            }
            node = node.with_gossip_interval(Duration::from_millis(ms));
        }
        node.gossip
            .validate()
            .map_err(|e| invalid("gossip_interval_ms", format!("gossip: {e}")))?;
        if let Some(limit) = self.max_in_flight {
            if limit == 0 {
                return Err(invalid("max_in_flight", "max_in_flight must be at least 1"));
            }
            node.max_in_flight = limit;
        }
        if let Some(ms) = self.ring_sync_ms {
            node.ring_sync = Duration::from_millis(ms.max(10));
        }
        if let Some(root) = &self.snapshot_root {
            if !root.is_absolute() {
                return Err(invalid(
                    "snapshot_root",
                    format!("snapshot_root {}: give an absolute path", root.display()),
                ));
            }
            node.snapshot_root = Some(root.clone());
        }
        Ok(node)
    }

    /// The coordinator's settings: the defaults, overridden by the file,
    /// checked together (a state must also fit one internode message).
    fn coordinator(&self) -> Result<kv_coordinator::Config, ConfigError> {
        let mut coordinator = kv_coordinator::Config::default();
        if let Some(n) = self.n {
            coordinator.n = n;
        }
        if let Some(w) = self.w {
            coordinator.w = w;
        }
        if let Some(r) = self.r {
            coordinator.r = r;
        }
        if let Some(ms) = self.request_timeout_ms {
            coordinator.request_timeout = Duration::from_millis(ms);
        }
        if let Some(h) = self.max_hints {
            coordinator.max_hints = h;
        }
        if let Some(sloppy) = self.sloppy_quorum {
            coordinator.sloppy_quorum = sloppy;
        }
        if let Some(cap) = self.max_siblings {
            coordinator.max_siblings = cap;
        }
        if let Some(ms) = self.anti_entropy_interval_ms {
            coordinator.anti_entropy_interval = Duration::from_millis(ms);
        }
        if let Some(rate) = self.repair_keys_per_sec {
            coordinator.repair_keys_per_sec = rate;
        }
        if let Some(secs) = self.tombstone_grace_secs {
            coordinator.tombstone_grace = Duration::from_secs(secs);
        }
        if let Some(blocking) = self.read_repair_blocking {
            coordinator.read_repair_blocking = blocking;
        }
        if let Some(bytes) = self.max_key_bytes {
            coordinator.max_key_bytes = bytes;
        }
        if let Some(bytes) = self.max_value_bytes {
            coordinator.max_value_bytes = bytes;
        }
        if let Some(bytes) = self.max_state_bytes {
            coordinator.max_state_bytes = bytes;
        }
        if let Some(bytes) = self.max_hint_bytes {
            coordinator.max_hint_bytes = bytes;
        }
        if let Some(ms) = self.maintenance_interval_ms {
            coordinator.maintenance_interval = Duration::from_millis(ms);
        }
        if let Some(factor) = self.hedge_factor {
            if factor == 0 {
                return Err(invalid("hedge_factor", "hedge_factor must be at least 1"));
            }
            coordinator.hedge_factor = factor;
        }
        if let Some(ms) = self.hedge_floor_ms {
            coordinator.hedge_floor = Duration::from_millis(ms);
        }
        coordinator.trace_every = self.trace_every.unwrap_or(10);
        // A state must travel between nodes in one message, and fit the
        // engine's value limit (1 GiB).
        let wire_room = crate::transport::MAX_MESSAGE_BYTES - coordinator.max_key_bytes - 4096;
        if coordinator.max_state_bytes > wire_room {
            return Err(invalid(
                "max_state_bytes",
                format!(
                    "max_state_bytes ({}) must leave room for the key in one {}-byte message: at most {wire_room}",
                    coordinator.max_state_bytes,
                    crate::transport::MAX_MESSAGE_BYTES
                ),
            ));
        }
        coordinator
            .validate()
            .map_err(|e| invalid("coordinator", e.to_string()))?;
        Ok(coordinator)
    }

    /// Whether replica batches go over framed connections: `internode`
    /// `frames`, the default (measured ahead of the gRPC streams:
    /// docs/benchmarks.md).
    fn internode_frames(&self) -> Result<bool, ConfigError> {
        match self.internode.as_deref().unwrap_or("frames") {
            "grpc" => Ok(false),
            "frames" => Ok(true),
            other => Err(invalid(
                "internode",
                format!("internode {other:?}: use grpc or frames"),
            )),
        }
    }

    /// The node's TLS material and tokens, read from their files, and the
    /// rule that a node reachable from other machines is secure unless told
    /// otherwise.
    fn security(&self, id: NodeId, listen: SocketAddr) -> Result<Security, ConfigError> {
        let dir = self.certs_dir.clone().map(CertsDir);
        let (cert, key) = match &dir {
            Some(d) => {
                let (c, k) = d.node(id);
                (Some(c), Some(k))
            }
            None => (None, None),
        };
        let ca = self.tls_ca.clone().or(dir.as_ref().map(CertsDir::ca_cert));
        let cert = self.tls_cert.clone().or(cert);
        let key = self.tls_key.clone().or(key);
        let tls = match (ca, cert, key) {
            (Some(ca), Some(cert), Some(key)) => {
                let tls = NodeTls::load(&ca, &cert, &key)
                    .map_err(|e| security("tls_cert", format!("TLS: {e}")))?;
                crate::security::certs::check_node_cert(&tls.cert_pem, id)
                    .map_err(|e| security("tls_cert", format!("TLS ({}): {e}", cert.display())))?;
                Some(tls)
            }
            (None, None, None) => None,
            _ => {
                return Err(security(
                    "tls_ca",
                    "TLS needs tls_ca, tls_cert and tls_key (or certs_dir)",
                ));
            }
        };
        let tokens_file = self.tokens_file.clone().or_else(|| {
            dir.as_ref()
                .map(CertsDir::tokens)
                .filter(|path| path.exists())
        });
        let tokens = match tokens_file {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    security(
                        "tokens_file",
                        format!("tokens_file {}: {e}", path.display()),
                    )
                })?;
                TokenTable::from_toml(&text).map_err(|e| {
                    security(
                        "tokens_file",
                        format!("tokens_file {}: {e}", path.display()),
                    )
                })?
            }
            None => TokenTable::default(),
        };
        let insecure = self.insecure.unwrap_or(false);
        if insecure && tls.is_some() {
            return Err(security(
                "insecure",
                "insecure and TLS both given: drop one",
            ));
        }
        if tls.is_none() && !insecure && !listen.ip().is_loopback() {
            return Err(security(
                "insecure",
                format!(
                    "refusing to serve on {listen} without TLS: give certs_dir (or tls_ca, tls_cert, tls_key; `kvctl certs` makes them), or insecure = true (--insecure) to let anyone who reaches the port read, write and change the cluster"
                ),
            ));
        }
        if let Some(http) = self.http_addr()?
            && !http.ip().is_loopback()
            && !insecure
            && (!self.http_token.unwrap_or(false) || tokens.is_empty())
        {
            return Err(security(
                "http_token",
                format!(
                    "refusing to serve /metrics and the status page on {http} to anyone: set http_token = true (with a tokens file), bind it to loopback, or give --insecure"
                ),
            ));
        }
        Ok(Security {
            tls,
            tokens,
            insecure,
            http_token: self.http_token.unwrap_or(false),
        })
    }
}

fn parse_member(text: &str) -> Result<(NodeId, SocketAddr), ConfigError> {
    let (id, addr) = text
        .split_once('@')
        .ok_or_else(|| invalid("members", format!("member {text:?} is not id@host:port")))?;
    let id: u64 = id.parse().map_err(|_| {
        invalid(
            "members",
            format!("member {text:?}: {id:?} is not a node id"),
        )
    })?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| invalid("members", format!("member {text:?}: {e}")))?;
    Ok((NodeId(id), addr))
}

/// `preempting` or `yielding` (see [`kv_lsm::SyncerScheduling`]).
///
/// # Errors
///
/// [`ConfigError`] for any other text.
pub fn parse_syncer(text: &str) -> Result<kv_lsm::SyncerScheduling, ConfigError> {
    text.parse().map_err(|_| {
        invalid(
            "syncer",
            format!("syncer {text:?}: use preempting or yielding"),
        )
    })
}

/// `always`, `never` or `interval:<ms>`.
///
/// # Errors
///
/// [`ConfigError`] unless the text is `always`, `never` or `interval:<ms>` with
/// a positive interval.
pub fn parse_durability(text: &str) -> Result<Durability, ConfigError> {
    match text {
        "always" => Ok(Durability::Always),
        "never" => Ok(Durability::Never),
        other => match other.strip_prefix("interval:").map(str::parse::<u64>) {
            Some(Ok(ms)) if ms > 0 => Ok(Durability::Interval(Duration::from_millis(ms))),
            _ => Err(invalid(
                "durability",
                format!("durability {other:?}: use always, never or interval:<ms>"),
            )),
        },
    }
}

/// Where a node's peers are, as the file gives them.
struct Addresses {
    /// The initial ring: id and address of each member.
    members: Vec<(NodeId, SocketAddr)>,
    /// Running nodes to learn the cluster from.
    seeds: Vec<String>,
    /// The address peers reach this node at, when not the listen address.
    advertise: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> ServerConfig {
        ServerConfig::from_toml(
            r#"
node_id = 2
listen = "127.0.0.1:7002"
data_dir = "/tmp/x"
members = ["1@127.0.0.1:7001", "2@127.0.0.1:7002", "3@127.0.0.1:7003"]
w = 3
durability = "interval:50"
"#,
        )
        .unwrap()
    }

    #[test]
    fn a_good_file_validates() {
        let (node, listen) = good().validate().unwrap();
        assert_eq!(node.id, NodeId(2));
        assert_eq!(listen.port(), 7002);
        assert_eq!(node.coordinator.w, 3);
        assert_eq!(
            node.durability,
            Durability::Interval(Duration::from_millis(50))
        );
        assert_eq!(node.members.len(), 3);
    }

    #[test]
    fn replication_settings_reach_the_coordinator() {
        let config = ServerConfig {
            sloppy_quorum: Some(false),
            max_siblings: Some(1000),
            ..good()
        };
        let (node, _) = config.validate().unwrap();
        assert!(!node.coordinator.sloppy_quorum);
        assert_eq!(node.coordinator.max_siblings, 1000);
        assert!(good().validate().unwrap().0.coordinator.sloppy_quorum);
    }

    #[test]
    fn paced_table_writes_are_on_unless_turned_off() {
        assert!(good().validate().unwrap().0.pace_background_writes);
        let off = ServerConfig {
            pace_background_writes: Some(false),
            ..good()
        };
        assert!(!off.validate().unwrap().0.pace_background_writes);
    }

    #[test]
    fn errors_name_their_setting_and_kind() {
        let mut c = good();
        c.listen = None;
        let err = c.validate().unwrap_err();
        assert!(matches!(err, ConfigError::Missing { .. }), "{err:?}");
        assert_eq!(err.setting(), Some("listen"));
        let mut c = good();
        c.weight = Some(0);
        let err = c.validate().unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err:?}");
        assert_eq!(err.setting(), Some("weight"));
        let mut c = good();
        c.listen = Some("10.1.2.3:7002".into());
        c.advertise = Some("10.1.2.3:7002".into());
        let err = c.validate().unwrap_err();
        assert!(matches!(err, ConfigError::Security { .. }), "{err:?}");
        assert_eq!(err.setting(), Some("insecure"));
        let err = ServerConfig::from_toml("no_such_setting = 1").unwrap_err();
        assert!(matches!(err, ConfigError::Parse(_)), "{err:?}");
        assert_eq!(err.setting(), None);
    }

    #[test]
    fn grace_repair_and_limits_reach_the_coordinator() {
        let config = ServerConfig::from_toml(
            r#"
node_id = 2
listen = "127.0.0.1:7002"
data_dir = "/tmp/x"
members = ["2@127.0.0.1:7002"]
n = 1
w = 1
r = 1
tombstone_grace_secs = 30
read_repair_blocking = true
max_key_bytes = 1024
max_value_bytes = 100000
max_state_bytes = 400000
max_hint_bytes = 5000000
maintenance_interval_ms = 250
hedge_factor = 6
hedge_floor_ms = 20
"#,
        )
        .unwrap();
        let c = config.validate().unwrap().0.coordinator;
        assert_eq!(c.tombstone_grace, Duration::from_secs(30));
        assert!(c.read_repair_blocking);
        assert_eq!(
            (c.max_key_bytes, c.max_value_bytes, c.max_state_bytes),
            (1024, 100_000, 400_000)
        );
        assert_eq!(c.max_hint_bytes, 5_000_000);
        assert_eq!(c.maintenance_interval, Duration::from_millis(250));
        assert_eq!(
            (c.hedge_factor, c.hedge_floor),
            (6, Duration::from_millis(20))
        );
        // Limits that disagree are refused, naming the setting.
        for (bad, name) in [
            (
                ServerConfig {
                    max_state_bytes: Some(10),
                    ..config.clone()
                },
                "max_state_bytes",
            ),
            (
                ServerConfig {
                    max_state_bytes: Some(1 << 30),
                    max_value_bytes: Some(1 << 20),
                    ..config.clone()
                },
                "max_state_bytes",
            ),
            (
                ServerConfig {
                    node_id: Some(1 << 33),
                    ..config.clone()
                },
                "node_id",
            ),
            (
                ServerConfig {
                    hedge_factor: Some(0),
                    ..config.clone()
                },
                "hedge_factor",
            ),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let merged = good().overridden_by(ServerConfig {
            w: Some(1),
            ..ServerConfig::default()
        });
        assert_eq!(merged.validate().unwrap().0.coordinator.w, 1);
    }

    #[test]
    fn syncer_chooses_preempting_or_yielding() {
        use kv_lsm::SyncerScheduling;
        assert_eq!(
            good().validate().unwrap().0.syncer,
            SyncerScheduling::Preempting,
            "the default"
        );
        let yielding = ServerConfig {
            syncer: Some("yielding".into()),
            ..good()
        };
        assert_eq!(
            yielding.validate().unwrap().0.syncer,
            SyncerScheduling::Yielding
        );
    }

    #[test]
    fn internode_chooses_frames_or_grpc() {
        let framed = ServerConfig {
            internode: Some("frames".into()),
            ..good()
        };
        assert!(framed.validate().unwrap().0.internode_frames);
        assert!(good().validate().unwrap().0.internode_frames, "the default");
        let grpc = ServerConfig {
            internode: Some("grpc".into()),
            ..good()
        };
        assert!(!grpc.validate().unwrap().0.internode_frames);
    }

    #[test]
    fn bad_settings_are_named() {
        let cases: Vec<(ServerConfig, &str)> = vec![
            (
                ServerConfig {
                    members: None,
                    ..good()
                },
                "give members",
            ),
            (
                ServerConfig {
                    listen: Some("127.0.0.1:7005".into()),
                    ..good()
                },
                "listed at 127.0.0.1:7002",
            ),
            (
                ServerConfig {
                    seeds: Some(vec!["here".into()]),
                    ..good()
                },
                "seed \"here\"",
            ),
            (
                ServerConfig {
                    weight: Some(0),
                    ..good()
                },
                "weight",
            ),
            (
                ServerConfig {
                    internode: Some("pigeons".into()),
                    ..good()
                },
                "use grpc or frames",
            ),
            (
                ServerConfig {
                    syncer: Some("sometimes".into()),
                    ..good()
                },
                "use preempting or yielding",
            ),
            (
                ServerConfig {
                    listen: Some("0.0.0.0:7002".into()),
                    ..good()
                },
                "set advertise",
            ),
            (
                ServerConfig {
                    w: Some(4),
                    ..good()
                },
                "w=4",
            ),
            (
                ServerConfig {
                    listen: Some("nowhere".into()),
                    ..good()
                },
                "listen",
            ),
            (
                ServerConfig {
                    durability: Some("sometimes".into()),
                    ..good()
                },
                "durability",
            ),
            (
                ServerConfig {
                    members: Some(vec!["x".into()]),
                    ..good()
                },
                "id@host:port",
            ),
            (
                ServerConfig {
                    node_id: None,
                    ..good()
                },
                "node_id is required",
            ),
        ];
        for (config, expected) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
        assert!(
            ServerConfig::from_toml("colour = 1")
                .unwrap_err()
                .to_string()
                .contains("colour")
        );
    }

    #[test]
    fn the_status_page_peers_link_to_has_a_host_they_can_reach() {
        let page = |http: Option<&str>, advertise: Option<&str>, listen: &str| {
            ServerConfig {
                http: http.map(str::to_string),
                advertise: advertise.map(str::to_string),
                ..ServerConfig::default()
            }
            .status_page(listen.parse().unwrap())
            .unwrap()
        };
        assert_eq!(page(None, None, "127.0.0.1:7001"), None);
        assert_eq!(
            page(Some("127.0.0.1:8001"), None, "127.0.0.1:7001").as_deref(),
            Some("127.0.0.1:8001")
        );
        // Every interface: the advertised host, else the listen address's.
        assert_eq!(
            page(
                Some("0.0.0.0:8001"),
                Some("node-2.example:7001"),
                "0.0.0.0:7001"
            )
            .as_deref(),
            Some("node-2.example:8001")
        );
        assert_eq!(
            page(Some("0.0.0.0:8001"), None, "10.0.0.5:7001").as_deref(),
            Some("10.0.0.5:8001")
        );
        assert_eq!(
            page(Some("[::]:8001"), None, "[fd00::5]:7001").as_deref(),
            Some("[fd00::5]:8001")
        );
        assert_eq!(page(Some("0.0.0.0:8001"), None, "0.0.0.0:7001"), None);
    }
}
