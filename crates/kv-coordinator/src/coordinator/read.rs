//! The read path: R answers merged, and the replicas that were behind
//! repaired.

use super::decide::{ReadTally, stale_replicas};
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
    /// Reads `key` from R replicas (this one included) and merges them.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad key or R out of range;
    /// [`Error::ReadQuorum`] when fewer than R replicas answered in time;
    /// storage errors from this node's engine.
    pub async fn get(&self, key: &[u8], r: Option<usize>) -> Result<GetResult> {
        // The request's steps are the span's children; it is never entered
        // (an entered span costs at every poll).
        let span = trace::request("get", || self.ring.token(key).0, false, self.traced());
        let result = self.get_routed(key, r, &span).await;
        trace::outcome(&span, &result);
        result
    }

    async fn get_routed(&self, key: &[u8], r: Option<usize>, span: &Span) -> Result<GetResult> {
        let started = Instant::now();
        let op = || ClientOp::Get {
            key: key.to_vec(),
            r: r.map(|r| r as u32),
        };
        // Any replica reads as well as the first (a read asks R of them
        // either way), and a read sent to a second replica because the
        // first was slow must not be forwarded back to it.
        let result = match self.dispatch(key, true, op, span).await {
            Ok(Dispatched::Here { .. }) => self.get_inner(key, r, span).await,
            Ok(Dispatched::There(_, ClientReply::Read { values, context })) => {
                Ok(GetResult { values, context })
            }
            Ok(Dispatched::There(node, other)) => written(node, other).map(|_| GetResult {
                values: Vec::new(),
                context: Vec::new(),
            }),
            Err(e) => Err(e),
        };
        self.metrics.get.observe(started.elapsed(), &result);
        self.count_quorum(&result);
        if let Ok(got) = &result {
            Metrics::add(&self.metrics.siblings_returned, got.values.len() as u64);
            if got.values.len() > 1 {
                Metrics::add(&self.metrics.reads_with_siblings, 1);
            }
        }
        result
    }

    pub(super) async fn get_inner(
        &self,
        key: &[u8],
        r: Option<usize>,
        span: &Span,
    ) -> Result<GetResult> {
        self.check_key(key)?;
        let r = r.unwrap_or(self.config.r);
        self.config.check_quorum("r", r)?;
        let replicas = self.replicas(key)?;
        if !span.is_disabled() {
            span.record("r", r);
            span.record("replicas", tracing::field::display(trace::nodes(&replicas)));
        }
        let deadline = Instant::now() + self.config.request_timeout;
        let local = {
            let key = key.to_vec();
            let step = trace::step!(span, "engine_read", outcome = Empty);
            let read = engine_read(&self.replica, move |r| r.state(&key)).await;
            trace::outcome(&step, &read);
            read?
        };
        let others: Vec<NodeId> = replicas
            .into_iter()
            .filter(|&n| n != self.replica.id())
            .collect();
        let (tx, mut rx) = mpsc::channel(others.len().max(1));
        let ask = |peer: NodeId| {
            let (transport, tx, key) = (self.transport.clone(), tx.clone(), key.to_vec());
            let step = trace::step!(span, "ask", peer = peer.0, outcome = Empty);
            tokio::spawn(async move {
                let result = transport.read(peer, key).await;
                trace::outcome(&step, &result);
                let _ = tx.send((peer, result)).await;
            });
        };
        // R-1 other replicas are asked, not all of them: one more for each
        // that fails, and the rest if those are slow.
        let mut tally = ReadTally::new(
            r,
            self.replica.id(),
            local,
            others,
            |peer| !self.membership.is_alive(peer),
            ask,
        );
        let mut hedge_at = tally
            .can_hedge()
            .then(|| Instant::now() + self.hedge_delay());
        while tally.waiting() {
            let wake = hedge_at.filter(|&h| h < deadline).unwrap_or(deadline);
            match tokio::time::timeout_at(wake, rx.recv()).await {
                Ok(Some((peer, answer))) => tally.answer(peer, answer, ask),
                Err(_) if hedge_at == Some(wake) => {
                    // Once per read (the counter counts reads), and only
                    // with someone left to ask.
                    hedge_at = None;
                    if tally.can_hedge() {
                        Metrics::add(&self.metrics.replica_reads_hedged, 1);
                        tally.hedge(ask);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        let unasked = tally.unasked().to_vec();
        let (merged, answers) = tally.finish()?;
        self.read_repair(key, &merged, &answers, &unasked, span)
            .await;
        Ok(GetResult {
            values: merged
                .live_values(kv_core::unix_secs())
                .flatten()
                .cloned()
                .collect(),
            context: encode_context(&merged),
        })
    }

    /// Sends the merged state to every replica that answered with less
    /// and, when the answers disagreed, to the replicas not asked (they
    /// merge it with whatever they hold, so a replica that was ahead loses
    /// nothing): after the reply, or before it with `read_repair_blocking`.
    pub(super) async fn read_repair(
        &self,
        key: &[u8],
        merged: &Siblings,
        answers: &[(NodeId, Siblings)],
        unasked: &[NodeId],
        span: &Span,
    ) {
        let stale = stale_replicas(merged, answers, unasked);
        if stale.is_empty() {
            return;
        }
        let repair = trace::step!(span, "read_repair", stale = %trace::nodes(&stale));
        let bytes = merged.to_bytes();
        let mut pending = Vec::new();
        for node in stale {
            Metrics::add(&self.metrics.read_repairs, 1);
            if node == self.replica.id() {
                // A synced write (under `always`, a wait for the syncer):
                // like a peer's repair, it holds up the reply only when
                // repairs are blocking.
                let (replica, key, merged) = (self.replica.clone(), key.to_vec(), merged.clone());
                pending.push(tokio::spawn(async move {
                    let _ = off_runtime(move || replica.merge(&key, &merged)).await;
                }));
                continue;
            }
            let (transport, peer, key, bytes) =
                (self.transport.clone(), node, key.to_vec(), bytes.clone());
            let step = trace::step!(&repair, "replicate", peer = peer.0, outcome = Empty);
            pending.push(tokio::spawn(async move {
                let result = transport.replicate(peer, key, bytes, None).await;
                trace::outcome(&step, &result);
            }));
        }
        if self.config.read_repair_blocking {
            let deadline = Instant::now() + self.config.request_timeout;
            for task in pending {
                let _ = tokio::time::timeout_at(deadline, task).await;
            }
        }
    }
}
