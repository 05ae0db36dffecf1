//! Watching keys from the SDK: a stream of changes that survives the node
//! it is served by (it re-subscribes elsewhere with its cursor) and keeps
//! causal order per key across re-subscriptions.

use std::time::Duration;

use kv_clock::{CausalFilter, VectorClock};

use super::{Client, ClientError, Context, try_elsewhere};
use crate::proto::{WatchReply, WatchRequest};

/// A watch sends a message at least every 10 s; one silent for this long
/// is taken for a lost node.
const SILENCE: Duration = Duration::from_secs(30);

/// Keys whose delivered clocks a watcher remembers.
const FILTER_KEYS: usize = 1 << 20;

/// One change of a watched key: its state at one replica after the
/// change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Vec<u8>,
    /// Its live values: none (deleted), one, or several siblings (another
    /// replica may hold more; a read merges them).
    pub values: Vec<Vec<u8>>,
    /// A write with it supersedes what this change shows.
    pub context: Context,
    /// A resent current state: the watch may have missed changes before.
    pub resync: bool,
}

/// A running watch ([`Client::watch`]): [`next`](Self::next) gives the
/// changes as they come.
///
/// Each acknowledged write of a watched key is delivered at least once
/// (or a state that covers it is), in causal order per key: a change that
/// what was delivered of its key already covers is never delivered (also
/// across re-subscriptions, which may bring states again). When the node
/// serving it fails or stops, the watch re-subscribes on the next node
/// from its cursor; a node that cannot serve the cursor resends the
/// current states (marked [`Change::resync`]).
#[derive(Debug)]
pub struct Watcher {
    client: Client,
    prefix: Vec<u8>,
    exact: bool,
    cursor: Vec<u8>,
    stream: Option<tonic::Streaming<WatchReply>>,
    /// The address of the node serving the watch now.
    serving: Option<String>,
    /// Where the next subscription starts in the client's node list.
    next_node: usize,
    filter: CausalFilter,
}

impl Client {
    /// Watches the keys that start with `prefix` (every key when empty),
    /// from now on: returns once a node has asked every node where its
    /// log ends, so a write acknowledged after this returns is delivered.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for an oversize prefix;
    /// [`ClientError::Unavailable`] when no node could start it.
    pub async fn watch(&self, prefix: &[u8]) -> Result<Watcher, ClientError> {
        self.watch_from(prefix, false, &[]).await
    }

    /// Watches the one key `key` from now on (as [`watch`](Self::watch)).
    ///
    /// # Errors
    /// As [`watch`](Self::watch).
    pub async fn watch_key(&self, key: &[u8]) -> Result<Watcher, ClientError> {
        self.watch_from(key, true, &[]).await
    }

    /// Resumes a watch of `prefix` (only the key `prefix` when `exact`)
    /// after what an earlier one delivered: `cursor` is its
    /// [`Watcher::cursor`] (empty: from now on).
    ///
    /// # Errors
    /// As [`watch`](Self::watch), and [`ClientError::InvalidArgument`] for
    /// a cursor no watch gave.
    pub async fn watch_from(
        &self,
        prefix: &[u8],
        exact: bool,
        cursor: &[u8],
    ) -> Result<Watcher, ClientError> {
        let mut watcher = Watcher {
            client: self.clone(),
            prefix: prefix.to_vec(),
            exact,
            cursor: cursor.to_vec(),
            stream: None,
            serving: None,
            next_node: self.order(prefix).first().copied().unwrap_or(0),
            filter: CausalFilter::new(FILTER_KEYS),
        };
        watcher.subscribe().await?;
        Ok(watcher)
    }
}

impl Watcher {
    /// The next changes (at least one), waiting for them. A node that
    /// fails is replaced by the next one, resuming from the cursor.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when every node was tried and none
    /// could serve the watch (call again to try again: the cursor is
    /// kept); an error the node answered with (refused, bad request).
    pub async fn next(&mut self) -> Result<Vec<Change>, ClientError> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                self.subscribe().await?;
                continue;
            };
            let reply = match tokio::time::timeout(SILENCE, stream.message()).await {
                Ok(Ok(Some(reply))) => reply,
                Ok(Ok(None)) | Err(_) => {
                    self.stream = None;
                    continue;
                }
                Ok(Err(status)) => {
                    try_elsewhere(&status)?;
                    self.stream = None;
                    continue;
                }
            };
            self.cursor = reply.cursor;
            let changes: Vec<Change> = reply
                .changes
                .into_iter()
                .filter(|c| match VectorClock::from_bytes(&c.context) {
                    Ok(clock) => self.filter.admit(&c.key, &clock),
                    // Nothing to order it by: deliver it.
                    Err(_) => true,
                })
                .map(|c| Change {
                    key: c.key,
                    values: c.values,
                    context: Context(c.context),
                    resync: c.resync,
                })
                .collect();
            if !changes.is_empty() {
                return Ok(changes);
            }
        }
    }

    /// Where to resume after what was delivered
    /// ([`Client::watch_from`]; keep it to pick up after a restart of
    /// your own program).
    pub fn cursor(&self) -> &[u8] {
        &self.cursor
    }

    /// The address of the node serving the watch, when one is.
    pub fn serving(&self) -> Option<&str> {
        self.stream.as_ref().and(self.serving.as_deref())
    }

    /// Opens the watch on the next node that takes it, from the cursor;
    /// waits for its first message (the watch's start).
    async fn subscribe(&mut self) -> Result<(), ClientError> {
        let nodes = self.client.nodes.len();
        let wait = self.client.config.request_timeout.max(SILENCE);
        let mut last = String::new();
        for _ in 0..nodes {
            let node = &self.client.nodes[self.next_node % nodes];
            self.next_node = (self.next_node + 1) % nodes;
            let request = WatchRequest {
                prefix: self.prefix.clone(),
                exact: self.exact,
                cursor: self.cursor.clone(),
            };
            let opened = tokio::time::timeout(wait, async {
                let mut stream = node.kv.clone().watch(request).await?.into_inner();
                let first = stream.message().await?;
                Ok::<_, tonic::Status>((stream, first))
            })
            .await;
            match opened {
                Ok(Ok((stream, Some(first)))) => {
                    self.cursor = first.cursor;
                    self.stream = Some(stream);
                    self.serving = Some(node.addr.clone());
                    return Ok(());
                }
                Ok(Ok((_, None))) => last = format!("{}: the watch ended at once", node.addr),
                Ok(Err(status)) => {
                    last = format!("{}: {}", node.addr, try_elsewhere(&status)?);
                }
                Err(_) => last = format!("{}: no answer within {wait:?}", node.addr),
            }
        }
        Err(ClientError::Unavailable {
            tried: nodes,
            message: last,
        })
    }
}
