//! Anti-entropy: Merkle exchanges with peers and the repair of the keys
//! that differ.

use super::*;

impl<E, T, P> Coordinator<E, T, P>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    /// Anti-entropy with `peer`: compares the trees of the keys both
    /// replicate (kv-merkle's exchange, `fanout` nodes per message), then
    /// pulls the peer's states of the differing buckets, merges them here,
    /// and pushes the merged states back where the peer's differ. Afterwards
    /// both hold the merge of both, siblings kept.
    ///
    /// # Errors
    ///
    /// The peer's or the transport's error, or a storage error; nothing is
    /// half-applied (each key merges atomically).
    pub async fn anti_entropy_with(&self, peer: NodeId, fanout: usize) -> Result<RepairReport> {
        use kv_merkle::{Exchange, Message, Step};
        let peer_error = |e: &dyn std::fmt::Display| Error::Peer(format!("{peer}: {e}"));
        let mut report = RepairReport::default();
        let mut exchange =
            Exchange::new(self.replica.merkle_leaves(), fanout).map_err(|e| peer_error(&e))?;
        let buckets = loop {
            let step = self
                .replica
                .with_tree(peer, |tree| exchange.poll(tree))
                .map_err(|e| peer_error(&e))?;
            let compare = match step {
                Step::Done(buckets) => break buckets,
                Step::Send(compare) => compare,
            };
            let request = Message::Compare(compare).encode();
            report.exchange_bytes += request.len() as u64;
            let answer = tokio::time::timeout(
                self.config.request_timeout,
                self.transport
                    .merkle_exchange(peer, self.replica.id(), request),
            )
            .await
            .map_err(|_| peer_error(&"timed out"))?
            .map_err(|e| peer_error(&e))?;
            report.exchange_bytes += answer.len() as u64;
            let Message::Differences(differences) =
                Message::decode(&answer).map_err(|e| peer_error(&e))?
            else {
                return Err(peer_error(&"answered with a request"));
            };
            exchange.handle(&differences).map_err(|e| peer_error(&e))?;
        };
        report.buckets = buckets.len();
        if buckets.is_empty() {
            return Ok(report);
        }
        let theirs = tokio::time::timeout(
            self.config.request_timeout,
            self.transport
                .bucket_states(peer, self.replica.id(), buckets.clone()),
        )
        .await
        .map_err(|_| peer_error(&"timed out"))?
        .map_err(|e| peer_error(&e))?;
        let mut their_states = std::collections::BTreeMap::new();
        for (key, state) in theirs {
            let r = self.replica.clone();
            let (k, st) = (key.clone(), state.clone());
            let changed = off_runtime(move || {
                let before = r.state(&k)?.to_bytes();
                Ok(r.merge_bytes(&k, &st)?.to_bytes() != before)
            })
            .await?;
            if changed {
                Metrics::add(&self.metrics.keys_repaired, 1);
            }
            report.keys_pulled += 1;
            their_states.insert(key, state);
        }
        let mut keys: std::collections::BTreeSet<Vec<u8>> = their_states.keys().cloned().collect();
        let mine = {
            let (r, b) = (self.replica.clone(), buckets.clone());
            off_runtime(move || r.bucket_states(peer, &b)).await?
        };
        keys.extend(mine.into_iter().map(|(k, _)| k));
        for key in keys {
            let ours = {
                let (r, k) = (self.replica.clone(), key.clone());
                off_runtime(move || Ok(r.state(&k)?.to_bytes())).await?
            };
            if their_states.get(&key) != Some(&ours) {
                self.transport
                    .replicate(peer, key, ours, None)
                    .await
                    .map_err(|e| peer_error(&e))?;
                report.keys_pushed += 1;
                Metrics::add(&self.metrics.keys_repaired, 1);
            }
        }
        Ok(report)
    }

    /// One anti-entropy pass: an exchange with every live peer. Failures
    /// with one peer do not stop the others; they are returned with it.
    pub async fn anti_entropy_round(&self, fanout: usize) -> (RepairReport, Vec<Error>) {
        let mut total = RepairReport::default();
        let mut errors = Vec::new();
        for peer in self.ring.nodes() {
            if peer == self.replica.id() || !self.membership.is_alive(peer) {
                continue;
            }
            match self.anti_entropy_with(peer, fanout).await {
                Ok(report) => total += report,
                Err(e) => errors.push(e),
            }
        }
        (total, errors)
    }
}
