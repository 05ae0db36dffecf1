//! The write path: a new version made at this replica, sent to the
//! others, acknowledged at W; sloppy quorum and hedged fallbacks with hints.

use super::*;

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

    pub(super) async fn write(
        &self,
        key: &[u8],
        value: Value,
        context: &[u8],
        w: Option<usize>,
        write: Option<kv_core::WriteTag>,
    ) -> Result<PutResult> {
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
        let deadline = Instant::now() + self.config.request_timeout;
        let update = Update {
            key: key.to_vec(),
            value,
            context,
            write,
        };
        let (state, dot) = self
            .local_writes()
            .call(update)
            .await
            .map_err(|e| Error::Task(format!("the local write batch: {e}")))??;
        let bytes = state.to_bytes();
        // Fallbacks for a sloppy quorum: the healthy nodes after the
        // preference list, clockwise.
        let mut fallbacks: std::collections::VecDeque<NodeId> = if self.config.sloppy_quorum {
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
        let send = |target: NodeId, hint_for: Option<NodeId>| {
            let (transport, tx, key, bytes) = (
                self.transport.clone(),
                tx.clone(),
                key.to_vec(),
                bytes.clone(),
            );
            tokio::spawn(async move {
                let started = Instant::now();
                let result = transport.replicate(target, key, bytes, hint_for).await;
                let _ = tx.send((target, hint_for, result, started.elapsed())).await;
            });
        };
        let mut outstanding = 0;
        let mut failed = Vec::new();
        for &peer in &others {
            let down = self.config.sloppy_quorum && !self.membership.is_alive(peer);
            if down {
                match fallbacks.pop_front() {
                    Some(fallback) => send(fallback, Some(peer)),
                    None => {
                        failed.push(peer);
                        continue;
                    }
                }
            } else {
                send(peer, None);
            }
            outstanding += 1;
        }
        let mut acked = 1;
        let mut answered = Vec::new();
        // A replica that has not answered within a few times the recent
        // replica latency (paused, cut off, overloaded) gets a hinted
        // fallback without waiting for failure detection, so W is met.
        let mut hedge_at = (!fallbacks.is_empty()).then(|| Instant::now() + self.hedge_delay());
        let mut hinted: Vec<NodeId> = Vec::new();
        while acked < w && outstanding > 0 {
            let wake = hedge_at.filter(|&h| h < deadline).unwrap_or(deadline);
            match tokio::time::timeout_at(wake, rx.recv()).await {
                Ok(Some((target, hint_for, result, took))) => {
                    outstanding -= 1;
                    answered.push(hint_for.unwrap_or(target));
                    match result {
                        Ok(()) => {
                            acked += 1;
                            if hint_for.is_none() {
                                self.replica_latency.observe(took);
                            }
                        }
                        Err(_) => {
                            failed.push(target);
                            // A replica that failed gets a hinted fallback.
                            if hint_for.is_none()
                                && !hinted.contains(&target)
                                && let Some(fallback) = fallbacks.pop_front()
                            {
                                send(fallback, Some(target));
                                hinted.push(target);
                                outstanding += 1;
                            }
                        }
                    }
                }
                Err(_) if hedge_at == Some(wake) => {
                    hedge_at = None;
                    for &peer in &others {
                        if answered.contains(&peer)
                            || failed.contains(&peer)
                            || hinted.contains(&peer)
                        {
                            continue;
                        }
                        let Some(fallback) = fallbacks.pop_front() else {
                            break;
                        };
                        send(fallback, Some(peer));
                        hinted.push(peer);
                        outstanding += 1;
                        Metrics::add(&self.metrics.replica_writes_hedged, 1);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        if acked >= w {
            // The rest still answer: a replica that fails after W was met
            // gets its hinted fallback all the same, so the write still
            // reaches N nodes (the request does not wait for it).
            if outstanding > 0 && !fallbacks.is_empty() {
                let (transport, key, bytes) = (self.transport.clone(), key.to_vec(), bytes.clone());
                tokio::spawn(async move {
                    while outstanding > 0 {
                        let Ok(Some((target, hint_for, result, _))) =
                            tokio::time::timeout_at(deadline, rx.recv()).await
                        else {
                            return;
                        };
                        outstanding -= 1;
                        if result.is_err()
                            && hint_for.is_none()
                            && !hinted.contains(&target)
                            && let Some(fallback) = fallbacks.pop_front()
                        {
                            let _ = transport
                                .replicate(fallback, key.clone(), bytes.clone(), Some(target))
                                .await;
                        }
                    }
                });
            }
            return Ok(PutResult {
                context: encode_context(&state),
                dot,
            });
        }
        let timed_out = others
            .into_iter()
            .filter(|p| !answered.contains(p) && !failed.contains(p))
            .collect();
        Err(Error::WriteQuorum {
            acked,
            needed: w,
            failed,
            timed_out,
        })
    }
}
