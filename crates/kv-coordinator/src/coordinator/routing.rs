//! Who coordinates a request: the key's first healthy replica; a request
//! that arrives elsewhere is forwarded (or, retried, coordinated where it
//! lands), and a client request is answered from whichever path ran.

use super::*;
use crate::trace;
use tracing::Span;

/// The outcome of forwarding a request.
enum Forwarded {
    Reply(ClientReply),
    /// The coordinator could not be reached and this node is a healthy
    /// replica.
    Unreachable,
    /// The coordinator applied nothing (its storage refuses writes):
    /// another replica may take the request. The coordinator's message.
    NotApplied(String),
}

/// A failure reply for a request nobody applied.
fn not_applied(message: String) -> ClientReply {
    ClientReply::Failed {
        invalid: false,
        not_applied: true,
        message,
    }
}

impl<E, T, P> Coordinator<E, T, P>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    /// A write (`value: None`: a delete) that the client may send more
    /// than once, to any node: every attempt carries the same `write` tag
    /// (a later attempt with `retry` set), and the store keeps one version
    /// of it. An attempt that reaches a replica already holding the write
    /// stores nothing new and answers with the first attempt's dot; copies
    /// stored by attempts at different coordinators become one version
    /// wherever they meet. `None` is an ordinary write.
    ///
    /// # Errors
    ///
    /// As [`put`](Self::put).
    pub async fn write_once(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        context: &[u8],
        w: Option<usize>,
        write: Option<kv_core::WriteTag>,
    ) -> Result<PutResult> {
        self.write_expiring(key, value, context, w, write, None)
            .await
    }

    /// [`write_once`](Self::write_once) of a value that lapses at
    /// `expires` (seconds since the Unix epoch; `None`: never): from then
    /// on every replica reads it as absent, and it is collected like a
    /// tombstone once the grace has passed (`Sibling::expires`).
    ///
    /// # Errors
    ///
    /// As [`put`](Self::put).
    pub async fn write_expiring(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        context: &[u8],
        w: Option<usize>,
        write: Option<kv_core::WriteTag>,
        expires: Option<u64>,
    ) -> Result<PutResult> {
        let started = Instant::now();
        // The request's steps are the span's children; it is never entered
        // (an entered span costs at every poll).
        let span = trace::request(
            trace::write_op(value),
            || self.ring.token(key).0,
            false,
            self.traced(),
        );
        let spec = WriteSpec {
            key,
            value,
            context,
            w,
            tag: write,
            expires,
            span: &span,
        };
        let result = self.routed_write(spec).await;
        trace::outcome(&span, &result);
        self.write_histogram(value.is_some())
            .observe(started.elapsed(), &result);
        self.count_quorum(&result);
        result
    }

    /// A write (`None`: a delete) coordinated here, or forwarded to the
    /// key's coordinator.
    pub(super) async fn routed_write(&self, spec: WriteSpec<'_>) -> Result<PutResult> {
        let op = || ClientOp::Put {
            key: spec.key.to_vec(),
            value: spec.value.map(<[u8]>::to_vec),
            context: spec.context.to_vec(),
            w: spec.w.map(|w| w as u32),
            write: spec.tag,
            expires: spec.expires,
        };
        // An attempt the client sent again may have been stored by the
        // coordinator it tried first, which may be paused or cut off:
        // this node takes it itself when it can (the copies are one write).
        let here = spec.tag.is_some_and(|t| t.retry);
        match self.dispatch(spec.key, here, op, spec.span).await? {
            Dispatched::Here { after_forward } => {
                // A forwarded attempt that went unanswered may have been
                // stored there: this one is a retry of it.
                let tag = spec.tag.map(|t| kv_core::WriteTag {
                    retry: t.retry || after_forward,
                    ..t
                });
                self.local_write(WriteSpec { tag, ..spec }).await
            }
            Dispatched::There(node, reply) => written(node, reply),
        }
    }

    /// Where a request for `key` is coordinated: here, or forwarded (`op`
    /// makes the request, only when it is) with the coordinator's reply. A
    /// coordinator that cannot be reached leaves it to this node when it is
    /// a healthy replica; one that applied nothing (its storage refuses
    /// writes) passes it to the next live replica, once. With `here`,
    /// this node coordinates whenever it is a healthy replica.
    pub(super) async fn dispatch(
        &self,
        key: &[u8],
        here: bool,
        op: impl FnOnce() -> ClientOp,
        span: &Span,
    ) -> Result<Dispatched> {
        let route = if here && self.healthy_replica(key)? {
            None
        } else {
            self.route(key)?
        };
        let Some(coordinator) = route else {
            return Ok(Dispatched::Here {
                after_forward: false,
            });
        };
        let op = op();
        let message = match self.forward(coordinator, op.clone(), span).await {
            Forwarded::Reply(reply) => return Ok(Dispatched::There(coordinator, reply)),
            Forwarded::Unreachable => {
                return Ok(Dispatched::Here {
                    after_forward: true,
                });
            }
            Forwarded::NotApplied(message) => message,
        };
        Ok(match self.next_coordinator(key, coordinator) {
            None => Dispatched::There(coordinator, not_applied(message)),
            Some(next) if next == self.replica.id() => Dispatched::Here {
                after_forward: false,
            },
            Some(next) => match self.forward(next, op, span).await {
                Forwarded::Reply(reply) => Dispatched::There(next, reply),
                Forwarded::Unreachable => Dispatched::Here {
                    after_forward: true,
                },
                Forwarded::NotApplied(message) => Dispatched::There(next, not_applied(message)),
            },
        })
    }

    /// How long a write waits for a replica before it also sends the state
    /// to a fallback with a hint: `hedge_factor` times the recent replica
    /// latency, at least `hedge_floor`, at most half the request timeout.
    pub(super) fn hedge_delay(&self) -> std::time::Duration {
        let floor = self.config.hedge_floor;
        self.replica_latency.scaled(
            self.config.hedge_factor,
            floor,
            self.config.request_timeout / 2,
            floor,
        )
    }

    /// The replica to try after `failed` refused a request without
    /// applying it: the next one of `key`'s preference list that is alive
    /// (this node when it is a healthy replica).
    pub(super) fn next_coordinator(&self, key: &[u8], failed: NodeId) -> Option<NodeId> {
        let me = self.replica.id();
        let me_healthy = self.replica.health().is_ok();
        self.ring
            .preference_list(key, self.config.n)
            .ok()?
            .into_iter()
            .find(|&r| {
                r != failed
                    && if r == me {
                        me_healthy
                    } else {
                        self.membership.is_alive(r)
                    }
            })
    }

    /// A write coordinated by this node.
    pub(super) async fn local_write(&self, spec: WriteSpec<'_>) -> Result<PutResult> {
        if let Some(value) = spec.value
            && value.len() > self.config.max_value_bytes
        {
            return Err(Error::InvalidInput(format!(
                "value of {} bytes exceeds the limit of {} bytes",
                value.len(),
                self.config.max_value_bytes
            )));
        }
        self.write(spec).await
    }

    /// Where a request for `key` should be coordinated: `None` for here
    /// (this node is the first healthy replica, or a replica and no other
    /// is healthy), or the node to forward it to. When this node is no
    /// replica and believes every replica down, the first replica is tried
    /// anyway: liveness may be stale, and only a replica can coordinate.
    /// A node whose storage refuses writes steps aside: it coordinates
    /// nothing while another replica may.
    pub(super) fn route(&self, key: &[u8]) -> Result<Option<NodeId>> {
        self.check_key(key)?;
        let replicas = self.ring.preference_list(key, self.config.n)?;
        let me = self.replica.id();
        let me_healthy = self.replica.health().is_ok();
        let first = replicas.iter().copied().find(|&r| {
            if r == me {
                me_healthy
            } else {
                self.membership.is_alive(r)
            }
        });
        Ok(match first {
            Some(c) if c == me => None,
            Some(c) => Some(c),
            None if replicas.contains(&me) && me_healthy => None,
            // Nobody is known healthy: try another replica (liveness may
            // be stale), or coordinate here when there is no other.
            None => replicas.iter().copied().find(|&r| r != me),
        })
    }

    /// Whether this node is a replica of `key` and its storage takes
    /// writes.
    pub(super) fn healthy_replica(&self, key: &[u8]) -> Result<bool> {
        self.check_key(key)?;
        Ok(self
            .ring
            .preference_list(key, self.config.n)?
            .contains(&self.replica.id())
            && self.replica.health().is_ok())
    }

    /// Sends a request to its coordinator (one hop).
    async fn forward(&self, coordinator: NodeId, op: ClientOp, span: &Span) -> Forwarded {
        let me = self.replica.id();
        let could_coordinate = {
            let key = match &op {
                ClientOp::Put { key, .. } | ClientOp::Get { key, .. } => key,
            };
            self.ring
                .preference_list(key, self.config.n)
                .is_ok_and(|r| r.contains(&me))
                && self.replica.health().is_ok()
        };
        // The request names the node that coordinated it (the last one
        // tried).
        span.record("coordinator", coordinator.0);
        let _hop = trace::step!(span, "forward", to = coordinator.0);
        match tokio::time::timeout(
            self.config.request_timeout,
            self.transport.forward(coordinator, op),
        )
        .await
        {
            Ok(Ok(ClientReply::Failed {
                not_applied: true,
                message,
                ..
            })) => Forwarded::NotApplied(message),
            Ok(Ok(reply)) => Forwarded::Reply(reply),
            // The coordinator is unreachable: a replica coordinates itself.
            _ if could_coordinate => Forwarded::Unreachable,
            Ok(Err(e)) => Forwarded::Reply(ClientReply::Failed {
                invalid: false,
                not_applied: false,
                message: e.to_string(),
            }),
            Err(_) => Forwarded::Reply(ClientReply::Failed {
                invalid: false,
                not_applied: false,
                message: format!("{coordinator} did not answer in time"),
            }),
        }
    }

    /// Coordinates a request forwarded by another node: here, never
    /// forwarded again (one hop, no loops).
    pub async fn coordinate(&self, op: ClientOp) -> ClientReply {
        // A node whose storage refuses writes takes none: the sender tries
        // the next replica (it may not know yet, gossip takes a moment).
        if let (ClientOp::Put { .. }, Err(e)) = (&op, self.replica.health()) {
            return not_applied(format!("{} cannot take writes: {e}", self.replica.id()));
        }
        let span = match &op {
            ClientOp::Put { key, value, .. } => trace::request(
                trace::write_op(value.as_deref()),
                || self.ring.token(key).0,
                true,
                self.traced(),
            ),
            ClientOp::Get { key, .. } => {
                trace::request("get", || self.ring.token(key).0, true, self.traced())
            }
        };
        let reply = self.coordinate_here(op, &span).await;
        if !span.is_disabled() {
            match &reply {
                ClientReply::Failed { message, .. } => span.record("outcome", message.as_str()),
                _ => span.record("outcome", "ok"),
            };
        }
        reply
    }

    async fn coordinate_here(&self, op: ClientOp, span: &Span) -> ClientReply {
        // A forwarded request this node cannot coordinate (the sender's
        // ring is older or newer) is a routing failure, not bad input: the
        // client may retry elsewhere.
        let failed = |e: Error| ClientReply::Failed {
            invalid: e.kind() == crate::ErrorKind::Invalid,
            // A storage error at the coordinator happens before anything
            // is stored (the local write is one atomic engine batch).
            not_applied: matches!(e, Error::Storage(_)),
            message: e.to_string(),
        };
        match op {
            ClientOp::Put {
                key,
                value,
                context,
                w,
                write,
                expires,
            } => {
                let started = Instant::now();
                let result = self
                    .local_write(WriteSpec {
                        key: &key,
                        value: value.as_deref(),
                        context: &context,
                        w: w.map(|w| w as usize),
                        tag: write,
                        expires,
                        span,
                    })
                    .await;
                self.write_histogram(value.is_some())
                    .observe(started.elapsed(), &result);
                result.map_or_else(failed, PutResult::into_reply)
            }
            ClientOp::Get { key, r } => {
                let started = Instant::now();
                let result = self.get_inner(&key, r.map(|r| r as usize), span).await;
                self.metrics.get.observe(started.elapsed(), &result);
                result.map_or_else(failed, |g| ClientReply::Read {
                    values: g.values,
                    context: g.context,
                })
            }
        }
    }
}
