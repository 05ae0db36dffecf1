//! Key listing for clients: the cluster's keys with a prefix, streamed a
//! page at a time, each page with a cursor to resume after.

use kv_core::{KeyQuery, Partitioner, StorageEngine, Transport};
use tonic::Status;

use super::{KvService, ReplyStream};
use crate::proto::{ListReply, ListRequest};
use crate::status::to_status;

/// Keys per page: one message of the stream, one round of asking every
/// node.
const LIST_PAGE_KEYS: u32 = 1000;

/// Stored keys one replica looks at for one page (a page over keys that
/// are mostly deleted, or mostly another node's, ends early instead of
/// scanning on).
const LIST_PAGE_SCAN: u32 = 1 << 16;

/// Where a listing stream is.
struct Listing<E, T, P> {
    service: KvService<E, T, P>,
    prefix: Vec<u8>,
    after: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    limit: u32,
    sent: u32,
    finished: bool,
}

/// Serves one listing: pages until `limit` keys were sent (all when 0),
/// the prefix's keys are exhausted, a page fails (the stream ends with
/// its status; the client resumes after the last cursor), or the node
/// stops.
pub(crate) fn serve<E, T, P>(
    service: KvService<E, T, P>,
    request: ListRequest,
) -> ReplyStream<ListReply>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    let start = Listing {
        service,
        prefix: request.prefix,
        after: (!request.after.is_empty()).then_some(request.after),
        end: (!request.end.is_empty()).then_some(request.end),
        limit: request.limit,
        sent: 0,
        finished: false,
    };
    Box::pin(futures_util::stream::unfold(start, |mut at| async move {
        if at.finished {
            return None;
        }
        at.finished = true;
        if *at.service.stopping.borrow() {
            let resume =
                String::from_utf8_lossy(at.after.as_deref().unwrap_or_default()).into_owned();
            return Some((
                Err(Status::unavailable(format!(
                    "the node is stopping; resume the listing after {resume:?} on another node"
                ))),
                at,
            ));
        }
        let want = match at.limit {
            0 => LIST_PAGE_KEYS,
            limit => (limit - at.sent).min(LIST_PAGE_KEYS),
        };
        let query = KeyQuery {
            prefix: at.prefix.clone(),
            after: at.after.clone(),
            end: at.end.clone(),
            limit: want,
            max_scanned: LIST_PAGE_SCAN,
        };
        let page = match at.service.in_flight.enter() {
            Ok(_slot) => at
                .service
                .coordinator
                .list_keys(query)
                .await
                .map_err(|e| to_status(&e)),
            Err(refused) => Err(refused),
        };
        let page = match page {
            Ok(page) => page,
            Err(status) => return Some((Err(status), at)),
        };
        at.sent += page.keys.len() as u32;
        let more = page.next.is_some();
        let cursor = page
            .next
            .clone()
            .or_else(|| page.keys.last().cloned())
            .unwrap_or_default();
        at.finished = !more || (at.limit != 0 && at.sent >= at.limit);
        at.after = page.next;
        Some((
            Ok(ListReply {
                keys: page.keys,
                cursor,
                more,
            }),
            at,
        ))
    }))
}
