//! The transport between nodes: the internal gRPC service.

use std::collections::HashMap;
use std::time::Duration;

use kv_core::{ClientOp, ClientReply, NodeId, Transport, TransportError};
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::proto::internal_client::InternalClient;
use crate::proto::{
    BucketRequest, ForwardRequest, MerkleRequest, PutOp, ReadRequest, ReapRequest, ReplicateRequest,
};

/// Largest message either side sends or accepts (64 MiB: a value of up to
/// 16 MiB with its siblings).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Reaches peers over gRPC. Channels are created lazily per peer and
/// reconnect by themselves; HTTP/2 keepalive notices a dead connection
/// (after a partition) within about a second.
#[derive(Debug)]
pub struct GrpcTransport {
    addresses: Mutex<HashMap<NodeId, String>>,
    clients: Mutex<HashMap<NodeId, InternalClient<Channel>>>,
    timeout: Duration,
}

fn unreachable(node: NodeId) -> impl Fn(tonic::Status) -> TransportError {
    move |status| match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => TransportError::Timeout(node),
        tonic::Code::Unavailable => TransportError::Unreachable(node),
        _ => TransportError::Remote {
            node,
            message: status.message().to_string(),
        },
    }
}

impl GrpcTransport {
    /// A transport that gives up on a call after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        GrpcTransport {
            addresses: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// Where `node` listens (replaces a previous address).
    pub fn set_address(&self, node: NodeId, addr: String) {
        let changed = self.addresses.lock().insert(node, addr.clone()) != Some(addr);
        if changed {
            self.clients.lock().remove(&node);
        }
    }

    fn client(&self, node: NodeId) -> Result<InternalClient<Channel>, TransportError> {
        if let Some(client) = self.clients.lock().get(&node) {
            return Ok(client.clone());
        }
        let addr = self
            .addresses
            .lock()
            .get(&node)
            .cloned()
            .ok_or(TransportError::Unreachable(node))?;
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| TransportError::Unreachable(node))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .http2_keep_alive_interval(Duration::from_millis(500))
            .keep_alive_timeout(Duration::from_secs(1))
            .keep_alive_while_idle(true);
        let client = InternalClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        self.clients.lock().insert(node, client.clone());
        Ok(client)
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
        self.client(to)?
            .replicate(request)
            .await
            .map_err(unreachable(to))?;
        Ok(())
    }

    async fn read(&self, to: NodeId, key: Vec<u8>) -> Result<Option<Vec<u8>>, TransportError> {
        let reply = self
            .client(to)?
            .read(ReadRequest { key })
            .await
            .map_err(unreachable(to))?;
        Ok(reply.into_inner().state)
    }

    async fn forward(&self, to: NodeId, op: ClientOp) -> Result<ClientReply, TransportError> {
        let request = match op {
            ClientOp::Put {
                key,
                value,
                context,
                w,
            } => ForwardRequest {
                key,
                put: Some(PutOp { value, context }),
                quorum: w.unwrap_or(0),
            },
            ClientOp::Get { key, r } => ForwardRequest {
                key,
                put: None,
                quorum: r.unwrap_or(0),
            },
        };
        let reply = self
            .client(to)?
            .forward(request)
            .await
            .map_err(unreachable(to))?
            .into_inner();
        Ok(match (reply.error, reply.read) {
            (Some(message), _) => ClientReply::Failed {
                invalid: reply.invalid,
                message,
            },
            (None, true) => ClientReply::Read {
                values: reply.values,
                context: reply.context,
            },
            (None, false) => ClientReply::Written {
                context: reply.context,
            },
        })
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
        buckets: Vec<u32>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, TransportError> {
        let reply = self
            .client(to)?
            .bucket_states(BucketRequest {
                from: from.0,
                buckets,
            })
            .await
            .map_err(unreachable(to))?;
        Ok(reply
            .into_inner()
            .states
            .into_iter()
            .map(|s| (s.key, s.state))
            .collect())
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
