//! The write path: a new version made at this replica, sent to the
//! others, acknowledged at W; sloppy quorum and hedged fallbacks with hints.

use super::decide::{Delivery, WriteTally};
use super::*;
use crate::trace;
use tracing::Span;
use tracing::field::Empty;

impl<E, T, P> Coordinator<E, T, P>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    /// Writes `value` under `key`, superseding what `context` covers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty or oversize key, an oversize value,
    /// a context that does not decode or W out of range; [`Error::WriteQuorum`]
    /// when fewer than W replicas acknowledged in time (the write may still
    /// have reached some); storage errors from this node's engine.
    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        context: &[u8],
        w: Option<usize>,
    ) -> Result<PutResult> {
        self.write_once(key, Some(value), context, w, None).await
    }

    /// Deletes `key`: a tombstone that supersedes what `context` covers.
    ///
    /// # Errors
    ///
    /// As [`put`](Self::put).
    pub async fn delete(&self, key: &[u8], context: &[u8], w: Option<usize>) -> Result<PutResult> {
        self.write_once(key, None, context, w, None).await
    }

    /// The latency histogram of a put (`true`) or a delete.
    pub(super) fn write_histogram(&self, put: bool) -> &crate::metrics::OpMetrics {
        if put {
            &self.metrics.put
        } else {
            &self.metrics.delete
        }
    }

    pub(super) fn count_quorum<R>(&self, result: &Result<R>) {
        if matches!(
            result,
            Err(Error::WriteQuorum { .. } | Error::ReadQuorum { .. })
        ) {
            Metrics::add(&self.metrics.quorum_failures, 1);
        }
    }

    pub(super) async fn write(&self, spec: WriteSpec<'_>) -> Result<PutResult> {
        let WriteSpec {
            key,
            value,
            context,
            w,
            tag,
            expires,
            span,
        } = spec;
        self.check_key(key)?;
        let w = w.unwrap_or(self.config.w);
        self.config.check_quorum("w", w)?;
        // No context (a blind write) is the empty clock.
        let context = if context.is_empty() {
            VectorClock::new()
        } else {
            VectorClock::from_bytes(context)
                .map_err(|e| Error::InvalidInput(format!("context does not decode: {e}")))?
        };
        let replicas = self.replicas(key)?;
        if !span.is_disabled() {
            span.record("w", w);
            span.record("replicas", tracing::field::display(trace::nodes(&replicas)));
        }
        let deadline = Instant::now() + self.config.request_timeout;
        let update = Update {
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
            context,
            write: tag,
            expires,
        };
        // The new version goes to the other replicas as soon as it is made,
        // while this node stores (and syncs) its own copy: the two waits
        // overlap instead of adding up.
        let (announce, announced) = tokio::sync::oneshot::channel();
        let engine = trace::step!(span, "engine_write", outcome = Empty);
        let submitted = self.local_writes().submit((update, announce));
        // Stored once made and its batch synced.
        let local = async move {
            Ok(match submitted.await? {
                Ok((state, dot, stored)) => stored.wait().await.map(|()| (state, dot)),
                Err(e) => Err(e),
            })
        };
        tokio::pin!(local);
        let local_done = |result: std::result::Result<_, crate::batch::Stopped>| {
            let result = result.map_err(|e| Error::Task(format!("the local write batch: {e}")))?;
            trace::outcome(&engine, &result);
            result
        };
        let mut stored = false;
        let (state, dot) = match announced.await {
            Ok(made) => made,
            // Not made (refused, or the batch stopped): its result says why.
            Err(_) => {
                stored = true;
                local_done((&mut local).await)?
            }
        };
        let bytes = state.to_bytes();
        // Fallbacks for a sloppy quorum: the healthy nodes after the
        // preference list, clockwise.
        let fallbacks: std::collections::VecDeque<NodeId> = if self.config.sloppy_quorum {
            self.ring
                .preference_list(key, usize::MAX)?
                .into_iter()
                .skip(self.config.n)
                .filter(|&f| self.membership.is_alive(f))
                .collect()
        } else {
            std::collections::VecDeque::new()
        };
        let others: Vec<NodeId> = replicas
            .into_iter()
            .filter(|&n| n != self.replica.id())
            .collect();
        // Every replica gets the state, whether or not we wait for it.
        let (tx, mut rx) = mpsc::channel(2 * others.len().max(1));
        let fanout = Fanout {
            span: span.clone(),
            transport: self.transport.clone(),
            tx,
            key: key.to_vec(),
            bytes,
        };
        let sloppy = self.config.sloppy_quorum;
        let mut tally = WriteTally::new(
            w,
            others,
            fallbacks,
            |peer| sloppy && !self.membership.is_alive(peer),
            |to| fanout.send(to),
        );
        // A replica that has not answered within a few times the recent
        // replica latency (paused, cut off, overloaded) gets a hinted
        // fallback without waiting for failure detection, so W is met.
        let mut hedge_at = tally
            .can_hedge()
            .then(|| Instant::now() + self.hedge_delay());
        // This node's own copy counts as the first acknowledgement; the
        // answer waits for it whatever the others do (a write acknowledged
        // or failed on quorum is stored at its coordinator, which a read
        // there then sees).
        let mut replicas_due = true;
        while (replicas_due && tally.waiting()) || !stored {
            let wake = hedge_at.filter(|&h| h < deadline).unwrap_or(deadline);
            tokio::select! {
                biased;
                result = &mut local, if !stored => {
                    // A failure fails the write (the others may hold it: a
                    // retry with the same write tag is stored once).
                    local_done(result)?;
                    stored = true;
                }
                answer = tokio::time::timeout_at(wake, rx.recv()), if replicas_due && tally.waiting() => {
                    match answer {
                        Ok(Some((to, ok, took))) => {
                            if ok && to.hint_for.is_none() {
                                self.replica_latency.observe(took);
                            }
                            if let Some(fallback) = tally.answer(to.target, to.hint_for, ok) {
                                fanout.send(fallback);
                            }
                        }
                        Err(_) if hedge_at == Some(wake) => {
                            hedge_at = None;
                            tally.hedge(|to| {
                                fanout.send(to);
                                Metrics::add(&self.metrics.replica_writes_hedged, 1);
                            });
                        }
                        Ok(None) | Err(_) => replicas_due = false,
                    }
                }
            }
        }
        if !tally.is_met() {
            return Err(tally.error());
        }
        // The rest still answer: a replica that fails after W was met gets
        // its hinted fallback all the same, so the write still reaches N
        // nodes (the request does not wait for it).
        if tally.outstanding() > 0 && tally.can_hedge() {
            tokio::spawn(async move {
                while tally.outstanding() > 0 {
                    let Ok(Some((to, ok, _))) = tokio::time::timeout_at(deadline, rx.recv()).await
                    else {
                        return;
                    };
                    if let Some(fallback) = tally.answer(to.target, to.hint_for, ok) {
                        fanout.send(fallback);
                    }
                }
            });
        }
        Ok(PutResult {
            context: encode_context(&state),
            dot,
        })
    }
}

/// A replica's answer to one delivery: whether it took the state, and how
/// long it took.
type Answer = (Delivery, bool, std::time::Duration);

/// Sends one write's state to replicas and fallbacks; each answer comes
/// back on `tx`, to the request while it waits for W and to a background
/// task after.
struct Fanout<T> {
    /// The request's span: each delivery is its child (and keeps it open
    /// until it ends).
    span: Span,
    transport: Arc<T>,
    tx: mpsc::Sender<Answer>,
    key: Vec<u8>,
    bytes: Vec<u8>,
}

impl<T: Transport + 'static> Fanout<T> {
    fn send(&self, to: Delivery) {
        let (transport, tx, key, bytes) = (
            self.transport.clone(),
            self.tx.clone(),
            self.key.clone(),
            self.bytes.clone(),
        );
        let step = trace::step!(
            &self.span,
            "replicate",
            peer = to.target.0,
            hint_for = to.hint_for.map(|h| h.0),
            outcome = Empty
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let result = transport
                .replicate(to.target, key, bytes, to.hint_for)
                .await;
            trace::outcome(&step, &result);
            let _ = tx.send((to, result.is_ok(), started.elapsed())).await;
        });
    }
}
