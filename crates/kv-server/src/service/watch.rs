//! Watches for clients: a stream of the changes of a key or a prefix,
//! each message with the cursor to resume from (see `Kv.Watch`).

use std::sync::Arc;

use kv_core::{FeedCursor, Partitioner, StorageEngine, Transport};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use super::{KvService, ReplyStream};
use crate::proto::{KeyChange, WatchReply, WatchRequest};
use crate::status::to_status;
use crate::stopping::stopped;

/// Watches one node serves at once: each polls every node, so a node
/// bounds them instead of letting clients open them without end.
const MAX_WATCHES: usize = 256;

/// The watches a node serves now (shared by clones of the service).
#[derive(Debug, Clone)]
pub(crate) struct WatchSlots(Arc<Semaphore>);

impl Default for WatchSlots {
    fn default() -> Self {
        WatchSlots(Arc::new(Semaphore::new(MAX_WATCHES)))
    }
}

/// A running watch and what it still has to do.
struct Watching {
    watch: kv_coordinator::Watch,
    stopping: tokio::sync::watch::Receiver<bool>,
    /// The first message (the cursor where the watch starts) is still to
    /// be sent.
    start: bool,
    done: bool,
    _slot: OwnedSemaphorePermit,
}

/// Opens a watch and streams it until the client goes or the node stops
/// (the stream then ends with UNAVAILABLE: resume elsewhere).
pub(crate) async fn serve<E, T, P>(
    service: &KvService<E, T, P>,
    request: WatchRequest,
) -> Result<ReplyStream<WatchReply>, Status>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    let cursor = match request.cursor.is_empty() {
        true => None,
        false => Some(FeedCursor::from_bytes(&request.cursor).map_err(|e| {
            Status::invalid_argument(format!("the cursor is not one a watch gave: {e}"))
        })?),
    };
    let slot = service.watches.0.clone().try_acquire_owned().map_err(|_| {
        Status::resource_exhausted(format!(
            "this node serves {MAX_WATCHES} watches already; watch through another node"
        ))
    })?;
    let watch = service
        .coordinator
        .watch(request.prefix, request.exact, cursor)
        .await
        .map_err(|e| to_status(&e))?;
    let start = Watching {
        watch,
        stopping: service.stopping.clone(),
        start: true,
        done: false,
        _slot: slot,
    };
    Ok(Box::pin(futures_util::stream::unfold(
        start,
        |mut at| async move {
            if at.done {
                return None;
            }
            if at.start {
                at.start = false;
                let cursor = at.watch.cursor().to_bytes();
                return Some((
                    Ok(WatchReply {
                        changes: Vec::new(),
                        cursor,
                    }),
                    at,
                ));
            }
            let batch = tokio::select! {
                batch = at.watch.next() => batch,
                () = stopped(&mut at.stopping) => {
                    at.done = true;
                    return Some((
                        Err(Status::unavailable(
                            "the node is stopping; resume the watch with the last cursor on another node",
                        )),
                        at,
                    ));
                }
            };
            let changes = batch
                .changes
                .into_iter()
                .map(|c| KeyChange {
                    key: c.key,
                    values: c.values,
                    context: c.context,
                    resync: c.resync,
                })
                .collect();
            let cursor = batch.cursor.to_bytes();
            Some((Ok(WatchReply { changes, cursor }), at))
        },
    )))
}
