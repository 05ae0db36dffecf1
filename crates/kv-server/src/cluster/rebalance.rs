//! Ring changes and the data they move: join (pull the ranges gained from
//! every replica), leave (push the ranges lost), and the hand-off of keys
//! this node no longer replicates.

use super::*;

/// Keys per page of range streaming and hand-off.
const PAGE_KEYS: u32 = 512;
/// Bytes of states per page, about.
const PAGE_BYTES: usize = 4 << 20;

fn to_range(r: &TokenRange) -> Range {
    Range {
        start: r.start.0,
        end: r.end.0,
    }
}

fn from_range(r: &Range) -> TokenRange {
    TokenRange::new(Token(r.start), Token(r.end))
}

impl Cluster {
    /// Makes this node an owner: pulls the ranges it will replicate from
    /// every current replica of each, then installs and pushes the ring
    /// with it added. Nothing changes if a range has no reachable replica.
    ///
    /// # Errors
    ///
    /// `FailedPrecondition` if this node already owns ranges; `Aborted` if
    /// another ring change won meanwhile; `Unavailable` if a range could not be
    /// fetched from its replicas.
    pub async fn join(self: &Arc<Self>) -> Result<ChangeReply, ClusterError> {
        let _one = self.changing.lock().await;
        // No hand-off pass while the ranges arrive: until the new ring is
        // installed this node owns nothing, and a pass would hand the
        // pulled keys straight back to their old replicas and delete them.
        let _no_handoff = self.handoff_running.lock().await;
        let (before_state, before) = self.ring_to_enter().await?;
        let me = self.settings.id;
        let mut after = before.clone();
        after.join(self.spec()).map_err(ClusterError::internal)?;
        let lease = self.propose(&before_state, format!("join of {me}")).await?;
        let mut streamed = 0u64;
        let ranges;
        {
            let diff = RingDiff::between(&before, &after, self.settings.n)
                .map_err(ClusterError::internal)?;
            let gained: Vec<_> = diff.moves().iter().filter(|m| m.to.contains(&me)).collect();
            ranges = gained.len() as u32;
            let mut by_source: BTreeMap<NodeId, Vec<TokenRange>> = BTreeMap::new();
            for mv in &gained {
                for &source in &mv.from {
                    by_source.entry(source).or_default().push(mv.range);
                }
            }
            tracing::info!(ranges, sources = by_source.len(), "join: streaming ranges");
            let mut answered = BTreeSet::new();
            for (source, ranges) in by_source {
                match self.pull(source, &ranges).await {
                    Ok(keys) => {
                        streamed += keys;
                        answered.insert(source);
                    }
                    Err(e) => tracing::warn!(%source, error = %e, "join: source failed"),
                }
            }
            if let Some(mv) = gained
                .iter()
                .find(|mv| !mv.from.iter().any(|s| answered.contains(s)))
            {
                return Err(ClusterError::Unavailable(format!(
                    "join: no replica of range {:?} answered; the ring is unchanged",
                    mv.range
                )));
            }
        }
        let state = state_of(before_state.epoch + 1, &after, |id| {
            self.addr_of(id).unwrap_or_default()
        });
        lease.confirm().await?;
        self.commit(state, streamed, ranges).await
    }

    /// Installs `state` here and pushes it to every peer.
    pub(super) async fn commit(
        &self,
        state: RingState,
        streamed: u64,
        ranges: u32,
    ) -> Result<ChangeReply, ClusterError> {
        let targets: Vec<String> = {
            let mut t: BTreeSet<String> = self.peers().into_iter().collect();
            t.extend(state.members.iter().map(|m| m.addr.clone()));
            t.remove(&self.settings.addr);
            t.into_iter().collect()
        };
        if !self.install(state.clone()).await? {
            return Err(ClusterError::Conflict(
                "a newer ring arrived during the change; retry".into(),
            ));
        }
        let conflicts = self.push_ring(&state, targets).await;
        if !conflicts.is_empty() {
            return Err(ClusterError::Conflict(format!(
                "a concurrent ring change at {}; retry",
                conflicts.join(", ")
            )));
        }
        Ok(ChangeReply {
            epoch: state.epoch,
            keys_streamed: streamed,
            ranges,
        })
    }

    /// The newest ring, for a node that is about to enter it (a join or a
    /// replacement).
    ///
    /// # Errors
    ///
    /// `FailedPrecondition` (`AlreadyMember`) if this node owns ranges in
    /// it; `Unavailable` if no ring is known yet.
    pub(super) async fn ring_to_enter(
        &self,
    ) -> Result<(RingState, ConsistentHashRing), ClusterError> {
        self.refresh_ring().await;
        let (state, ring) = self.current_ring()?;
        let me = self.settings.id;
        if ring.node_spec(me).is_some() {
            return Err(ClusterError::AlreadyMember {
                node: me,
                epoch: state.epoch,
            });
        }
        if state.members.is_empty() {
            return Err(ClusterError::Unavailable(
                "no ring known yet: the seeds have not answered".into(),
            ));
        }
        Ok((state, ring))
    }

    /// Fetches every key of `ranges` from `source` page by page, handing
    /// each page to `take`; returns the keys fetched.
    async fn fetch_pages<F, Fut>(
        &self,
        source: NodeId,
        ranges: &[TokenRange],
        mut take: F,
    ) -> Result<u64, ClusterError>
    where
        F: FnMut(Vec<KeyState>) -> Fut,
        Fut: std::future::Future<Output = Result<(), ClusterError>>,
    {
        let mut client = self.transport.bulk_node(source)?;
        let ranges: Vec<Range> = ranges.iter().map(to_range).collect();
        let mut after = None;
        let mut keys = 0u64;
        loop {
            let page = client
                .fetch_range(FetchRequest {
                    ranges: ranges.clone(),
                    after: after.take(),
                    limit: PAGE_KEYS,
                })
                .await?
                .into_inner();
            keys += page.states.len() as u64;
            take(page.states).await?;
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Pulls every key of `ranges` from `source` into this replica.
    pub(super) async fn pull(
        &self,
        source: NodeId,
        ranges: &[TokenRange],
    ) -> Result<u64, ClusterError> {
        self.fetch_pages(source, ranges, |states| {
            let replica = self.coordinator.replica().clone();
            async move {
                off_runtime(move || {
                    for s in states {
                        replica.merge_bytes(&s.key, &s.state)?;
                    }
                    Ok(())
                })
                .await?;
                Ok(())
            }
        })
        .await
    }

    /// Answers a page of range streaming.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a request without ranges; storage errors as
    /// `Internal`.
    pub async fn fetch_page(
        &self,
        request: FetchRequest,
    ) -> Result<(Vec<KeyState>, Option<Vec<u8>>), ClusterError> {
        if request.ranges.is_empty() {
            return Err(ClusterError::Invalid("fetch: no range given".into()));
        }
        let ranges: Vec<TokenRange> = request.ranges.iter().map(from_range).collect();
        let replica = self.coordinator.replica().clone();
        let limit = (request.limit as usize).clamp(1, 10_000);
        let (page, next) = off_runtime(move || {
            replica.range_page(&ranges, request.after.as_deref(), limit, PAGE_BYTES)
        })
        .await?;
        Ok((
            page.into_iter()
                .map(|(key, state)| KeyState { key, state })
                .collect(),
            next,
        ))
    }

    /// Merges states handed to this node.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a state that does not decode; storage errors as
    /// `Internal`.
    pub async fn accept_transfer(&self, request: TransferRequest) -> Result<(), ClusterError> {
        let replica = self.coordinator.replica().clone();
        off_runtime(move || {
            for s in request.states {
                replica.merge_bytes(&s.key, &s.state)?;
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Sends `states` to `target`.
    pub(super) async fn transfer(
        &self,
        target: NodeId,
        states: Vec<KeyState>,
    ) -> Result<(), ClusterError> {
        let mut client = self.transport.bulk_node(target)?;
        client.transfer(TransferRequest { states }).await?;
        Ok(())
    }

    /// Takes this node out of the ring: pushes the ranges it replicates to
    /// the nodes that gain them, installs and pushes the ring without it,
    /// hands off what arrived meanwhile, announces the departure, and
    /// signals [`left`](Self::left). Nothing changes if a gaining node
    /// cannot take its ranges.
    ///
    /// # Errors
    ///
    /// `FailedPrecondition` for the last node or one that owns nothing;
    /// `Aborted` if another ring change won meanwhile; `Unavailable` if a range
    /// could not be handed to its new replicas.
    pub async fn leave(self: &Arc<Self>) -> Result<ChangeReply, ClusterError> {
        let _one = self.changing.lock().await;
        self.refresh_ring().await;
        let (before_state, before) = self.current_ring()?;
        let me = self.settings.id;
        if before.node_spec(me).is_none() {
            return Err(ClusterError::Precondition(format!(
                "node {me} owns no ranges (ring epoch {})",
                before_state.epoch
            )));
        }
        if before.node_count() < 2 {
            return Err(ClusterError::Precondition(
                "the last node of the ring cannot leave: its data would have nowhere to go".into(),
            ));
        }
        let after = before.without_node(me).map_err(ClusterError::internal)?;
        let lease = self
            .propose(&before_state, format!("leave of {me}"))
            .await?;
        let diff =
            RingDiff::between(&before, &after, self.settings.n).map_err(ClusterError::internal)?;
        let mut by_target: BTreeMap<NodeId, Vec<TokenRange>> = BTreeMap::new();
        let mut ranges = 0u32;
        for mv in diff.moves().iter().filter(|m| m.from.contains(&me)) {
            ranges += 1;
            for target in mv.gained() {
                by_target.entry(target).or_default().push(mv.range);
            }
        }
        tracing::info!(ranges, targets = by_target.len(), "leave: streaming ranges");
        let mut streamed = 0u64;
        for (target, ranges) in by_target {
            streamed += self.push_ranges(target, &ranges).await.map_err(|e| {
                ClusterError::Unavailable(format!(
                    "leave: node {target} did not take its ranges ({}); the ring is unchanged",
                    e
                ))
            })?;
        }
        let state = state_of(before_state.epoch + 1, &after, |id| {
            self.addr_of(id).unwrap_or_default()
        });
        lease.confirm().await?;
        let reply = self.commit(state, streamed, ranges).await?;
        drop(lease);
        // Whatever reached this node before every coordinator switched.
        let mut report = self.handoff_pass().await?;
        for _ in 0..20 {
            if report.remaining == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            report = self.handoff_pass().await?;
        }
        if report.remaining > 0 {
            return Err(ClusterError::Unavailable(format!(
                "left the ring (epoch {}), but {} keys could not be handed off yet; \
                 the node keeps running and retrying",
                reply.epoch, report.remaining
            )));
        }
        let now = self.now();
        let (out, events) = {
            let mut g = self.gossip.lock();
            g.leave(now);
            (g.drain_outbox(), g.drain_events())
        };
        self.dispatch(out, events);
        self.left.send_replace(true);
        Ok(reply)
    }

    /// Sends every local key of `ranges` to `target`.
    pub(super) async fn push_ranges(
        &self,
        target: NodeId,
        ranges: &[TokenRange],
    ) -> Result<u64, ClusterError> {
        let mut after: Option<Vec<u8>> = None;
        let mut keys = 0u64;
        loop {
            let replica = self.coordinator.replica().clone();
            let ranges = ranges.to_vec();
            let from = after.take();
            let (page, next) = off_runtime(move || {
                replica.range_page(&ranges, from.as_deref(), PAGE_KEYS as usize, PAGE_BYTES)
            })
            .await?;
            keys += page.len() as u64;
            let states = page
                .into_iter()
                .map(|(key, state)| KeyState { key, state })
                .collect();
            self.transfer(target, states).await?;
            match next {
                Some(next) => after = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Copies every key of `ranges` from `source` to `target` (either may
    /// be this node): pages fetched from the one, handed to the other.
    pub(super) async fn copy_ranges(
        &self,
        source: NodeId,
        target: NodeId,
        ranges: &[TokenRange],
    ) -> Result<u64, ClusterError> {
        let me = self.settings.id;
        if target == me {
            return self.pull(source, ranges).await;
        }
        if source == me {
            return self.push_ranges(target, ranges).await;
        }
        self.fetch_pages(source, ranges, |states| self.transfer(target, states))
            .await
    }

    /// Hands the keys this node holds but does not replicate (after a ring
    /// change) to their replicas; each is deleted here once every replica
    /// acknowledged it, and only if it did not change meanwhile.
    ///
    /// # Errors
    ///
    /// Storage errors as `Internal`; keys whose new replicas cannot be reached
    /// stay here for the next pass.
    pub async fn handoff_pass(&self) -> Result<Handoff, ClusterError> {
        let _one = self.handoff_running.lock().await;
        self.handoff_pending.store(false, Ordering::Relaxed);
        let full = [TokenRange::full(Token(0))];
        let mut report = Handoff::default();
        let mut after: Option<Vec<u8>> = None;
        let n = self.settings.n;
        loop {
            let replica = self.coordinator.replica().clone();
            let from = after.take();
            let (page, next) = off_runtime(move || {
                let (page, next) =
                    replica.range_page(&full, from.as_deref(), PAGE_KEYS as usize, PAGE_BYTES)?;
                Ok((
                    page.into_iter()
                        .filter(|(k, _)| !replica.replicates(k))
                        .collect::<Vec<_>>(),
                    next,
                ))
            })
            .await?;
            if !page.is_empty() {
                let page_len = page.len();
                let mut batches: BTreeMap<NodeId, Vec<KeyState>> = BTreeMap::new();
                let mut targets_of = Vec::with_capacity(page.len());
                for (key, state) in &page {
                    let targets = self.ring.preference_list(key, n).unwrap_or_default();
                    for &t in &targets {
                        batches.entry(t).or_default().push(KeyState {
                            key: key.clone(),
                            state: state.clone(),
                        });
                    }
                    targets_of.push(targets);
                }
                let sends = batches.into_iter().map(|(target, states)| async move {
                    (target, self.transfer(target, states).await)
                });
                let mut acked = BTreeSet::new();
                for (target, result) in join_all(sends).await {
                    match result {
                        Ok(()) => {
                            acked.insert(target);
                        }
                        Err(e) => tracing::debug!(%target, error = %e, "hand-off failed"),
                    }
                }
                let done: Vec<(Vec<u8>, Vec<u8>)> = page
                    .into_iter()
                    .zip(targets_of)
                    .filter_map(|(kv, targets)| {
                        (!targets.is_empty() && targets.iter().all(|t| acked.contains(t)))
                            .then_some(kv)
                    })
                    .collect();
                let replica = self.coordinator.replica().clone();
                let kept = (page_len - done.len()) as u64;
                let done_len = done.len() as u64;
                let moved = off_runtime(move || {
                    let mut moved = 0u64;
                    for (key, state) in &done {
                        moved += u64::from(replica.reap(key, state)?);
                    }
                    Ok(moved)
                })
                .await?;
                report.moved += moved;
                // Changed while handed off (reap refused): kept for the
                // next pass, like those a replica did not acknowledge.
                report.remaining += kept + (done_len - moved);
            }
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        self.handed_off.fetch_add(report.moved, Ordering::Relaxed);
        if report.remaining > 0 {
            self.handoff_pending.store(true, Ordering::Relaxed);
        }
        if report.moved > 0 || report.remaining > 0 {
            tracing::info!(
                moved = report.moved,
                remaining = report.remaining,
                "hand-off pass"
            );
        }
        Ok(report)
    }
}
