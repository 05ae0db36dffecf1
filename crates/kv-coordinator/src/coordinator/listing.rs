//! Key listing: the live keys with a prefix, a page at a time, from at
//! least one replica of every range.

use std::collections::BTreeSet;

use kv_core::{KeyPage, KeyQuery, Token, TokenRange};

use super::*;
use crate::replica::KEY_PAGE_BYTES;

impl<E, T, P> Coordinator<E, T, P>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    /// One page of the cluster's live keys that start with `query.prefix`,
    /// after `query.after`, in key order: at most `query.limit` of them.
    ///
    /// Every node of the ring is asked for its own page (keys lie on the
    /// ring by hash, so every range may hold keys of any prefix); the
    /// pages are merged up to the smallest key all of them cover. A key is
    /// listed when a replica that answered holds a live value of it: a
    /// delete that has not reached every replica yet may still show its
    /// key, as a read at R=1 would. The page's `next` is the key to
    /// continue after; `None` once the listing reached the end.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a prefix or cursor longer than a key
    /// may be; [`Error::ListingIncomplete`] when no replica of some range
    /// answered (its keys would be missing from the page).
    pub async fn list_keys(&self, query: KeyQuery) -> Result<KeyPage> {
        let max = self.config.max_key_bytes;
        let too_long = |k: &Option<Vec<u8>>| k.as_ref().is_some_and(|k| k.len() > max);
        if query.prefix.len() > max || too_long(&query.after) || too_long(&query.end) {
            return Err(Error::InvalidInput(format!(
                "a listing's prefix, cursor and end are keys: at most {max} bytes"
            )));
        }
        let me = self.replica.id();
        // A page scans up to a budget of keys on every node: the bulk
        // timeout, not a single read's.
        let timeout = self.config.anti_entropy_timeout;
        let mut asks = tokio::task::JoinSet::new();
        for node in self.ring.nodes() {
            let (query, transport, replica) =
                (query.clone(), self.transport.clone(), self.replica.clone());
            asks.spawn(async move {
                let page = if node == me {
                    off_runtime(move || replica.key_page(&query))
                        .await
                        .map_err(|e| e.to_string())
                } else {
                    match tokio::time::timeout(timeout, transport.list_keys(node, query)).await {
                        Ok(Ok(page)) => Ok(page),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {timeout:?}")),
                    }
                };
                (node, page)
            });
        }
        let mut pages = Vec::new();
        let mut answered = BTreeSet::new();
        let mut silent = Vec::new();
        while let Some(joined) = asks.join_next().await {
            let (node, page) = joined.map_err(|e| Error::Task(e.to_string()))?;
            match page.and_then(|p| check_key_page(&query, &p).map(|()| p)) {
                Ok(p) => {
                    answered.insert(node);
                    pages.push(p);
                }
                Err(e) => silent.push(format!("{node}: {e}")),
            }
        }
        silent.sort();
        if !silent.is_empty()
            && let Some(range) = self.uncovered(&answered)?
        {
            return Err(Error::ListingIncomplete { range, silent });
        }
        Ok(merge_key_pages(pages, query.limit, KEY_PAGE_BYTES))
    }

    /// A range none of whose replicas is in `answered`, if any.
    fn uncovered(&self, answered: &BTreeSet<NodeId>) -> Result<Option<TokenRange>> {
        let n = self.config.n;
        // A range's replica set changes only where some node's range
        // starts, so the set just after every start covers them all.
        for node in self.ring.nodes() {
            for range in self.ring.replicated_ranges(node, n)? {
                let inside = Token(range.start.0.wrapping_add(1));
                let replicas = self.ring.preference_list_for_token(inside, n)?;
                if !replicas.iter().any(|r| answered.contains(r)) {
                    return Ok(Some(range));
                }
            }
        }
        Ok(None)
    }
}

/// Checks a replica's page against its query: keys ascending, each with
/// the prefix, after `after`, and not past the page's `next`.
fn check_key_page(query: &KeyQuery, page: &KeyPage) -> std::result::Result<(), String> {
    let mut previous = query.after.as_deref();
    for key in &page.keys {
        if !key.starts_with(&query.prefix) {
            return Err("a listed key lacks the prefix".into());
        }
        if previous.is_some_and(|p| key.as_slice() <= p) {
            return Err("listed keys are not ascending after the cursor".into());
        }
        if query.end.as_ref().is_some_and(|end| key >= end) {
            return Err("a listed key lies past the end".into());
        }
        previous = Some(key);
    }
    if let (Some(next), Some(last)) = (&page.next, page.keys.last())
        && next < last
    {
        return Err("a page's end lies before its last key".into());
    }
    if page.keys.len() > query.limit.max(1) as usize {
        return Err("a page holds more keys than asked".into());
    }
    Ok(())
}

/// Merges the pages of every replica that answered: the keys up to the
/// smallest key all pages cover, each once, at most `limit` and about
/// `max_bytes` of them.
fn merge_key_pages(pages: Vec<KeyPage>, limit: u32, max_bytes: usize) -> KeyPage {
    let cover = pages.iter().filter_map(|p| p.next.clone()).min();
    let mut keys: Vec<Vec<u8>> = pages
        .into_iter()
        .flat_map(|p| p.keys)
        .filter(|k| cover.as_ref().is_none_or(|c| k <= c))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut limit = (limit.max(1) as usize).min(keys.len());
    let mut bytes = 0;
    for (i, key) in keys.iter().enumerate().take(limit) {
        bytes += key.len();
        if bytes >= max_bytes {
            limit = i + 1;
            break;
        }
    }
    if keys.len() > limit {
        keys.truncate(limit);
        let next = keys.last().cloned();
        return KeyPage { keys, next };
    }
    KeyPage { keys, next: cover }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(keys: &[&str], next: Option<&str>) -> KeyPage {
        KeyPage {
            keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            next: next.map(|n| n.as_bytes().to_vec()),
        }
    }

    #[test]
    fn pages_merge_up_to_what_every_replica_covers() {
        // One replica stopped at "c", the other went to the end: "d" is
        // not known to be complete yet, so the page ends at "c".
        let merged = merge_key_pages(
            vec![page(&["a", "c"], Some("c")), page(&["b", "c", "d"], None)],
            10,
            100,
        );
        assert_eq!(merged, page(&["a", "b", "c"], Some("c")));
        // Both at the end: everything, each key once, and no next.
        let merged = merge_key_pages(
            vec![page(&["a", "c"], None), page(&["c", "d"], None)],
            10,
            100,
        );
        assert_eq!(merged, page(&["a", "c", "d"], None));
        // The limit cuts the page and continues after its last key.
        let merged = merge_key_pages(
            vec![page(&["a", "c"], None), page(&["b", "d"], None)],
            3,
            100,
        );
        assert_eq!(merged, page(&["a", "b", "c"], Some("c")));
        // A replica that scanned its budget without a live key still
        // bounds the page.
        let merged = merge_key_pages(vec![page(&[], Some("b")), page(&["a", "z"], None)], 10, 100);
        assert_eq!(merged, page(&["a"], Some("b")));
        // So does the byte budget (two one-byte keys reach two bytes).
        let merged = merge_key_pages(vec![page(&["a", "b", "c"], None)], 10, 2);
        assert_eq!(merged, page(&["a", "b"], Some("b")));
    }

    #[test]
    fn a_page_that_breaks_its_query_is_refused() {
        let query = KeyQuery {
            prefix: b"p".to_vec(),
            after: Some(b"p1".to_vec()),
            end: Some(b"p9".to_vec()),
            limit: 2,
            max_scanned: 10,
        };
        assert!(check_key_page(&query, &page(&["p2", "p3"], Some("p3"))).is_ok());
        assert!(
            check_key_page(&query, &page(&["p1"], None)).is_err(),
            "not after the cursor"
        );
        assert!(
            check_key_page(&query, &page(&["p3", "p2"], None)).is_err(),
            "not ascending"
        );
        assert!(
            check_key_page(&query, &page(&["q"], None)).is_err(),
            "without the prefix"
        );
        assert!(
            check_key_page(&query, &page(&["p9"], None)).is_err(),
            "past the end"
        );
        assert!(
            check_key_page(&query, &page(&["p2", "p3", "p4"], None)).is_err(),
            "over the limit"
        );
        assert!(
            check_key_page(&query, &page(&["p3"], Some("p2"))).is_err(),
            "ends before its keys"
        );
    }
}
