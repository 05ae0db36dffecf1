//! Anti-entropy: Merkle exchanges with peers and the repair of the keys
//! that differ, in pages, paced, with what each peer's last exchange found.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kv_core::{BucketPage, BucketQuery};

use super::*;

/// What this node's anti-entropy knows of one peer (for `/metrics`, the
/// status page and `kvctl repair`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerRepair {
    /// When the last exchange with the peer completed (seconds since the
    /// Unix epoch), `None` before the first.
    pub last_complete_unix: Option<u64>,
    /// Buckets that differed in the last exchange whose trees were
    /// compared (kept when a later exchange fails before comparing).
    pub divergent_buckets: usize,
    /// Keys repaired with this peer since start (changed here or pushed).
    pub keys_repaired: u64,
    /// Exchanges with this peer that completed since start.
    pub exchanges: u64,
    /// Why the last exchange failed, if it did.
    pub last_error: Option<String>,
}

/// A shared budget of keys per second for repair work: callers take what
/// they are about to move and wait when the budget is spent (a burst of
/// a quarter second is allowed).
#[derive(Debug)]
pub(crate) struct Pace {
    per_sec: u32,
    /// When the keys taken so far will have been paid for.
    paid_until: parking_lot::Mutex<Option<Instant>>,
}

/// Keys merged in one engine batch during repair.
const MERGE_BATCH: usize = 512;

/// Work a pace lets through at once before it starts waiting.
const PACE_BURST: Duration = Duration::from_millis(250);

impl Pace {
    pub(crate) fn new(per_sec: u32) -> Self {
        Pace {
            per_sec,
            paid_until: parking_lot::Mutex::new(None),
        }
    }

    /// Takes `keys` from the budget, waiting as long as they cost beyond it.
    pub(crate) async fn take(&self, keys: usize) {
        if self.per_sec == 0 || keys == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(keys as f64 / f64::from(self.per_sec));
        let wait_until = {
            let now = Instant::now();
            let mut paid = self.paid_until.lock();
            let from = paid.filter(|&t| t > now).unwrap_or(now);
            let until = from + cost;
            *paid = Some(until);
            until.checked_sub(PACE_BURST).filter(|&t| t > now)
        };
        if let Some(t) = wait_until {
            tokio::time::sleep_until(t).await;
        }
    }
}

impl<E, T, P> Coordinator<E, T, P>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    /// Anti-entropy with `peer`: compares the trees of the keys both
    /// replicate (kv-merkle's exchange, `fanout` nodes per message), then
    /// repairs the differing buckets page by page (see
    /// [`anti_entropy_observed`](Self::anti_entropy_observed)).
    ///
    /// # Errors
    ///
    /// The peer's or the transport's error, or a storage error; each page
    /// repaired before the failure stays repaired.
    pub async fn anti_entropy_with(&self, peer: NodeId, fanout: usize) -> Result<RepairReport> {
        self.anti_entropy_observed(peer, fanout, |_| {}).await
    }

    /// [`anti_entropy_with`](Self::anti_entropy_with), calling `observe`
    /// with the running totals after the trees are compared and after each
    /// page. A page: the peer's states of the differing buckets over a
    /// range of keys (bounded in bytes and keys scanned, under the
    /// anti-entropy timeout), merged here in one engine batch; then this
    /// node's states over the same range, pushed to the peer wherever the
    /// peer's differ. Afterwards both hold the merge of both, siblings
    /// kept. Pages are paced by `repair_keys_per_sec`, shared by every
    /// exchange of this node. The outcome is kept per peer
    /// ([`anti_entropy_peers`](Self::anti_entropy_peers)).
    ///
    /// # Errors
    ///
    /// As [`anti_entropy_with`](Self::anti_entropy_with).
    pub async fn anti_entropy_observed(
        &self,
        peer: NodeId,
        fanout: usize,
        mut observe: impl FnMut(&RepairReport) + Send,
    ) -> Result<RepairReport> {
        let mut report = RepairReport::default();
        let mut compared = false;
        let result = self
            .exchange(peer, fanout, &mut report, &mut |r: &RepairReport| {
                compared = true;
                observe(r);
            })
            .await;
        let mut peers = self.repair_peers.lock();
        let entry = peers.entry(peer).or_default();
        if compared {
            entry.divergent_buckets = report.buckets;
        }
        entry.keys_repaired += report.keys_changed as u64 + report.keys_pushed as u64;
        match &result {
            Ok(()) => {
                entry.last_complete_unix = Some(kv_core::unix_secs());
                entry.exchanges += 1;
                entry.last_error = None;
            }
            Err(e) => entry.last_error = Some(e.to_string()),
        }
        result.map(|()| report)
    }

    /// What anti-entropy knows of each peer it exchanged with.
    pub fn anti_entropy_peers(&self) -> BTreeMap<NodeId, PeerRepair> {
        self.repair_peers.lock().clone()
    }

    async fn exchange(
        &self,
        peer: NodeId,
        fanout: usize,
        report: &mut RepairReport,
        observe: &mut (impl FnMut(&RepairReport) + Send),
    ) -> Result<()> {
        let buckets = self.differing_buckets(peer, fanout, report).await?;
        report.buckets = buckets.len();
        observe(report);
        let mut after: Option<Vec<u8>> = None;
        while !buckets.is_empty() {
            let next = self
                .repair_page(peer, &buckets, after.take(), report)
                .await?;
            observe(report);
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        Ok(())
    }

    /// The Merkle exchange: the buckets whose digests differ.
    async fn differing_buckets(
        &self,
        peer: NodeId,
        fanout: usize,
        report: &mut RepairReport,
    ) -> Result<Vec<u32>> {
        use kv_merkle::{Exchange, Message, Step};
        let peer_error = |e: &dyn std::fmt::Display| Error::Peer(format!("{peer}: {e}"));
        let mut exchange =
            Exchange::new(self.replica.merkle_leaves(), fanout).map_err(|e| peer_error(&e))?;
        loop {
            let step = self
                .replica
                .with_tree(peer, |tree| exchange.poll(tree))
                .map_err(|e| peer_error(&e))?;
            let compare = match step {
                Step::Done(buckets) => return Ok(buckets),
                Step::Send(compare) => compare,
            };
            let request = Message::Compare(compare).encode();
            report.exchange_bytes += request.len() as u64;
            let answer = tokio::time::timeout(
                self.config.anti_entropy_timeout,
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
        }
    }

    /// Repairs the keys after `after` that one page covers; returns where
    /// the next page starts, `None` after the last.
    async fn repair_page(
        &self,
        peer: NodeId,
        buckets: &[u32],
        after: Option<Vec<u8>>,
        report: &mut RepairReport,
    ) -> Result<Option<Vec<u8>>> {
        let peer_error = |e: &dyn std::fmt::Display| Error::Peer(format!("{peer}: {e}"));
        let query = BucketQuery {
            buckets: buckets.to_vec(),
            after,
            max_bytes: self.config.anti_entropy_page_bytes,
            max_scanned: self.config.anti_entropy_page_scan,
        };
        let theirs: BucketPage = tokio::time::timeout(
            self.config.anti_entropy_timeout,
            self.transport
                .bucket_states(peer, self.replica.id(), query.clone()),
        )
        .await
        .map_err(|_| peer_error(&"timed out"))?
        .map_err(|e| peer_error(&e))?;
        check_page(&query, &theirs).map_err(|e| peer_error(&e))?;
        // This node's states over the same keys, with a larger budget so
        // that it rarely ends the page before the peer's does; when it
        // does, the page ends there and the peer's states beyond are asked
        // for again.
        let mine = {
            let r = self.replica.clone();
            let local = BucketQuery {
                max_bytes: query.max_bytes.saturating_mul(4),
                max_scanned: query.max_scanned.saturating_mul(4),
                ..query
            };
            let until = theirs.next.clone();
            off_runtime(move || r.bucket_page(peer, &local, until.as_deref())).await?
        };
        let end = mine.next.clone().or(theirs.next);
        let within = |key: &[u8]| end.as_deref().is_none_or(|end| key <= end);
        let pulled: Vec<(Vec<u8>, Vec<u8>)> = theirs
            .states
            .into_iter()
            .filter(|(k, _)| within(k))
            .collect();
        // Merged in batches of a few hundred keys: a batch holds its keys'
        // locks through its engine write, and clients' writes of those
        // keys wait for it.
        let mut merged = Vec::with_capacity(pulled.len());
        for chunk in pulled.chunks(MERGE_BATCH) {
            let (r, items) = (self.replica.clone(), chunk.to_vec());
            merged.extend(off_runtime(move || Ok(r.merge_many(&items))).await?);
        }
        let mut their_states: HashMap<Vec<u8>, Vec<u8>> = HashMap::with_capacity(pulled.len());
        let mut push = Vec::new();
        let mut changed = 0usize;
        for ((key, state), result) in pulled.into_iter().zip(merged) {
            let (was_changed, ours) = match result {
                Ok(done) => done,
                Err(e @ Error::InvalidInput(_)) => return Err(peer_error(&e)),
                Err(e) => return Err(e),
            };
            changed += usize::from(was_changed);
            if ours != state {
                push.push((key.clone(), ours));
            }
            their_states.insert(key, state);
        }
        push.extend(
            mine.states
                .into_iter()
                .filter(|(k, _)| !their_states.contains_key(k)),
        );
        report.keys_pulled += their_states.len();
        report.keys_changed += changed;
        let pushed = push.len();
        self.push_states(peer, push).await?;
        report.keys_pushed += pushed;
        Metrics::add(&self.metrics.keys_repaired, (changed + pushed) as u64);
        self.repair_pace.take(their_states.len() + pushed).await;
        Ok(end)
    }

    /// Sends `states` to `peer`, all at once (the transport batches
    /// concurrent sends); fails if any is not acknowledged in time.
    async fn push_states(&self, peer: NodeId, states: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        let mut sends = tokio::task::JoinSet::new();
        let timeout = self.config.anti_entropy_timeout;
        for (key, state) in states {
            let transport = self.transport.clone();
            sends.spawn(async move {
                tokio::time::timeout(timeout, transport.replicate(peer, key, state, None)).await
            });
        }
        while let Some(done) = sends.join_next().await {
            let sent = done.map_err(|e| Error::Task(format!("an anti-entropy push: {e}")))?;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Error::Peer(format!("{peer}: {e}"))),
                Err(_) => return Err(Error::Peer(format!("{peer}: a push timed out"))),
            }
        }
        Ok(())
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

/// A peer's page must move forward and hold only keys of the interval it
/// claims, in order: a peer that does not cannot make repair loop or
/// write keys it was not asked for.
fn check_page(query: &BucketQuery, page: &BucketPage) -> std::result::Result<(), String> {
    if let (Some(next), Some(after)) = (&page.next, &query.after)
        && next <= after
    {
        return Err("its page of bucket states did not move forward".into());
    }
    let mut last = query.after.as_deref();
    for (key, _) in &page.states {
        if last.is_some_and(|l| key.as_slice() <= l) {
            return Err("its page of bucket states is out of order or outside the range".into());
        }
        last = Some(key);
    }
    if let (Some(next), Some(last)) = (&page.next, last)
        && last > next.as_slice()
    {
        return Err("its page of bucket states holds keys beyond its end".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(after: Option<&[u8]>) -> BucketQuery {
        BucketQuery {
            buckets: vec![1],
            after: after.map(<[u8]>::to_vec),
            max_bytes: 100,
            max_scanned: 100,
        }
    }

    fn page(keys: &[&[u8]], next: Option<&[u8]>) -> BucketPage {
        BucketPage {
            states: keys.iter().map(|k| (k.to_vec(), vec![])).collect(),
            next: next.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn a_page_that_stalls_or_strays_is_refused() {
        assert!(check_page(&query(Some(b"b")), &page(&[b"c", b"d"], Some(b"d"))).is_ok());
        assert!(check_page(&query(None), &page(&[], None)).is_ok());
        // Does not move forward: would loop for ever.
        assert!(check_page(&query(Some(b"b")), &page(&[], Some(b"b"))).is_err());
        // A key at or before the start, out of order, or past its end.
        assert!(check_page(&query(Some(b"b")), &page(&[b"b"], None)).is_err());
        assert!(check_page(&query(None), &page(&[b"d", b"c"], None)).is_err());
        assert!(check_page(&query(None), &page(&[b"c", b"e"], Some(b"d"))).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_pace_lets_a_burst_through_then_spreads_the_rest() {
        let pace = Pace::new(1_000);
        let start = Instant::now();
        pace.take(250).await; // the burst
        assert_eq!(start.elapsed(), Duration::ZERO);
        pace.take(1_000).await; // paid until 1.25 s: waits until 1.0 s
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let unlimited = Pace::new(0);
        unlimited.take(1_000_000).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
