//! Watching keys: every node's changes of a key or a prefix, fanned in,
//! in causal order per key, with a cursor to resume from.
//!
//! Every node is polled (a key's replicas may be any nodes, and a write
//! under sloppy quorum lands on others); a node's changes come from its
//! change log ([`Replica::changes`]). Each acknowledged write reached at
//! least one node that records changes for this watch, so it is delivered,
//! unless a state that covers it was delivered first. A node that cannot
//! serve the watch's position (it restarted, or dropped changes) resends
//! the current states of the watched keys (a resync).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use kv_clock::CausalFilter;
use kv_core::{FeedCursor, FeedPage, FeedPosition, FeedQuery};

use super::*;

/// How long a node holds a poll waiting for a change.
const POLL_WAIT: Duration = Duration::from_secs(5);

/// About how many bytes of changes one poll brings.
const POLL_BYTES: u32 = 1 << 20;

/// A watch with nothing to deliver still answers this often (with its
/// cursor), so that a client sees it is alive.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// How often a watch looks for nodes that joined the ring.
const MEMBERSHIP_CHECK: Duration = Duration::from_secs(5);

/// Keys whose delivered clocks a watch remembers (see [`CausalFilter`]).
const FILTER_KEYS: usize = 1 << 20;

/// Retries of an unreachable node back off up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One change a watch delivers: a key's state at one replica after a
/// change (it may lack siblings another replica holds: a read merges
/// them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchChange {
    /// The key.
    pub key: Vec<u8>,
    /// Its live values: none (deleted), one, or several siblings.
    pub values: Vec<Vec<u8>>,
    /// The state's context: a write with it supersedes what this change
    /// shows.
    pub context: Vec<u8>,
    /// Whether this is a resent current state (the watch may have missed
    /// changes before it).
    pub resync: bool,
}

/// What one step of a watch delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// Changes, each newer than what was delivered of its key; none for a
    /// heartbeat.
    pub changes: Vec<WatchChange>,
    /// Where to resume to get what follows these changes.
    pub cursor: FeedCursor,
}

type PollFuture = Pin<Box<dyn Future<Output = std::result::Result<FeedPage, String>> + Send>>;
type Poll = Arc<dyn Fn(NodeId, FeedQuery) -> PollFuture + Send + Sync>;
type Nodes = Arc<dyn Fn() -> Vec<NodeId> + Send + Sync>;

/// A running watch (see [`Coordinator::watch`]); dropping it stops it.
pub struct Watch {
    /// What every node is asked (the position and the wait aside).
    watched: FeedQuery,
    poll: Poll,
    nodes: Nodes,
    pages: mpsc::Receiver<(NodeId, FeedPage)>,
    sender: mpsc::Sender<(NodeId, FeedPage)>,
    pollers: tokio::task::JoinSet<()>,
    polled: BTreeSet<NodeId>,
    cursor: FeedCursor,
    filter: CausalFilter,
    next_membership_check: Instant,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("prefix", &String::from_utf8_lossy(&self.watched.prefix))
            .field("exact", &self.watched.exact)
            .field("polled", &self.polled)
            .finish_non_exhaustive()
    }
}

impl<E, T, P> Coordinator<E, T, P>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    /// Watches the keys that start with `prefix` (only the key `prefix`
    /// when `exact`), from `cursor` (a [`WatchBatch::cursor`] of an earlier
    /// watch, at this node or any other), or from now on without one.
    ///
    /// Without a cursor, every node is asked for the end of its log before
    /// this returns: a write acknowledged after that is delivered. Nodes
    /// that did not answer, and nodes without a position in the cursor,
    /// resend the current states of the watched keys once reached.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a prefix longer than a key may be, or an
    /// empty key with `exact`.
    pub async fn watch(
        &self,
        prefix: Vec<u8>,
        exact: bool,
        cursor: Option<FeedCursor>,
    ) -> Result<Watch> {
        let max = self.config.max_key_bytes;
        if prefix.len() > max || (exact && prefix.is_empty()) {
            return Err(Error::InvalidInput(format!(
                "a watched key or prefix is at most {max} bytes, and an exact key is not empty"
            )));
        }
        // Without a position, a node answers at once with its log's end.
        let watched = FeedQuery {
            prefix,
            exact,
            at: None,
            wait_ms: 0,
            max_bytes: POLL_BYTES,
        };
        let me = self.replica.id();
        let (replica, transport) = (self.replica.clone(), self.transport.clone());
        let timeout = self.config.anti_entropy_timeout;
        let poll: Poll = Arc::new(move |node, query| {
            let (replica, transport) = (replica.clone(), transport.clone());
            Box::pin(async move {
                if node == me {
                    return replica.changes(query).await.map_err(|e| e.to_string());
                }
                let limit = Duration::from_millis(u64::from(query.wait_ms)) + timeout;
                match tokio::time::timeout(limit, transport.changes(node, query)).await {
                    Ok(Ok(page)) => Ok(page),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {limit:?}")),
                }
            })
        });
        let ring = self.ring.clone();
        let nodes: Nodes = Arc::new(move || ring.nodes());
        let cursor = match cursor {
            Some(cursor) => cursor,
            None => log_ends(&poll, &nodes(), &watched).await,
        };
        let (sender, pages) = mpsc::channel(16);
        let mut watch = Watch {
            watched,
            poll,
            nodes,
            pages,
            sender,
            pollers: tokio::task::JoinSet::new(),
            polled: BTreeSet::new(),
            cursor,
            filter: CausalFilter::new(FILTER_KEYS),
            next_membership_check: Instant::now(),
        };
        watch.poll_new_nodes();
        Ok(watch)
    }
}

/// Where every node's log ends now; nodes that do not answer are left out
/// (they resync when reached).
async fn log_ends(poll: &Poll, nodes: &[NodeId], watched: &FeedQuery) -> FeedCursor {
    let mut asks = tokio::task::JoinSet::new();
    for &node in nodes {
        let ask = poll(node, watched.clone());
        asks.spawn(async move { (node, ask.await) });
    }
    let mut cursor = FeedCursor::new();
    while let Some(joined) = asks.join_next().await {
        if let Ok((node, Ok(page))) = joined {
            cursor.set(node, page.position);
        }
    }
    cursor
}

impl Watch {
    /// The next changes, or a heartbeat with the cursor when there were
    /// none for a while. Never fails: unreachable nodes are retried until
    /// the watch is dropped.
    pub async fn next(&mut self) -> WatchBatch {
        let heartbeat = Instant::now() + HEARTBEAT;
        loop {
            if Instant::now() >= self.next_membership_check {
                self.poll_new_nodes();
            }
            let wake = heartbeat.min(self.next_membership_check);
            let (node, page) = tokio::select! {
                got = self.pages.recv() => match got {
                    Some(got) => got,
                    // The watch holds a sender itself: never closed.
                    None => continue,
                },
                () = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= heartbeat {
                        return self.batch(Vec::new());
                    }
                    continue;
                }
            };
            self.cursor.set(node, page.position);
            let now = kv_core::unix_secs();
            let mut changes = Vec::new();
            for (key, state) in page.changes {
                let Ok(state) = Siblings::from_bytes(&state) else {
                    tracing::warn!(%node, "a watched state does not decode; skipped");
                    continue;
                };
                if !self.filter.admit(&key, state.context()) {
                    continue;
                }
                changes.push(WatchChange {
                    key,
                    values: state.live_values(now).flatten().cloned().collect(),
                    context: encode_context(&state),
                    resync: page.resync,
                });
            }
            if !changes.is_empty() {
                return self.batch(changes);
            }
        }
    }

    /// The cursor after everything delivered so far.
    pub fn cursor(&self) -> &FeedCursor {
        &self.cursor
    }

    fn batch(&self, changes: Vec<WatchChange>) -> WatchBatch {
        WatchBatch {
            changes,
            cursor: self.cursor.clone(),
        }
    }

    /// Starts polling the ring's nodes not polled yet.
    fn poll_new_nodes(&mut self) {
        self.next_membership_check = Instant::now() + MEMBERSHIP_CHECK;
        for node in (self.nodes)() {
            if !self.polled.insert(node) {
                continue;
            }
            let start = self
                .cursor
                .get(node)
                .cloned()
                .unwrap_or_else(FeedPosition::resync);
            let (poll, sender) = (self.poll.clone(), self.sender.clone());
            let watched = self.watched.clone();
            self.pollers
                .spawn(poll_node(node, start, watched, poll, sender));
        }
    }
}

/// Polls one node from `at` until the watch is dropped, handing each page
/// to the watch; an unreachable node is asked again, backing off.
async fn poll_node(
    node: NodeId,
    mut at: FeedPosition,
    watched: FeedQuery,
    poll: Poll,
    pages: mpsc::Sender<(NodeId, FeedPage)>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let query = FeedQuery {
            at: Some(at.clone()),
            wait_ms: POLL_WAIT.as_millis() as u32,
            ..watched.clone()
        };
        match poll(node, query).await {
            Ok(page) => {
                backoff = Duration::from_millis(100);
                at = page.position.clone();
                if pages.send((node, page)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(%node, error = %e, "watch poll failed; asking again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
