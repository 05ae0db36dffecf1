//! Key listing: the live keys of a prefix in pages, from one replica of
//! every range, or a clear refusal when some range has none answering.

use kv_coordinator::{Config, Error};
use kv_core::{KeyQuery, NodeId};

use super::{Cluster, Node};

/// Every page of a listing from `node` after `after`, `limit` keys at a
/// time and a small scan budget (so pages also end early); checks that
/// pages ascend and continue one another.
async fn list_all(
    node: &Node,
    prefix: &[u8],
    mut after: Option<Vec<u8>>,
    limit: u32,
) -> Result<Vec<Vec<u8>>, Error> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    loop {
        let page = node
            .list_keys(KeyQuery {
                prefix: prefix.to_vec(),
                after: after.clone(),
                end: None,
                limit,
                max_scanned: 64,
            })
            .await?;
        assert!(page.keys.len() <= limit as usize, "a page over its limit");
        for key in &page.keys {
            assert!(key.starts_with(prefix));
            assert!(after.as_ref().is_none_or(|a| a < key), "after the cursor");
            assert!(
                keys.last().is_none_or(|l| l < key),
                "ascending across pages"
            );
        }
        keys.extend(page.keys);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(keys),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn key_listing_pages_through_every_range_or_says_it_cannot() {
    let c = Cluster::new(5, Config::default());
    let mut users = std::collections::BTreeSet::new();
    for i in 0..300 {
        let key = format!("user:{i:04}").into_bytes();
        c.coordinator(&key)
            .put(&key, b"v", b"", None)
            .await
            .unwrap();
        users.insert(key);
    }
    for i in 0..40 {
        let key = format!("order:{i}").into_bytes();
        c.coordinator(&key)
            .put(&key, b"v", b"", None)
            .await
            .unwrap();
    }
    // Deleted keys are not listed.
    for i in (0..300).step_by(7) {
        let key = format!("user:{i:04}").into_bytes();
        let read = c.coordinator(&key).get(&key, None).await.unwrap();
        c.coordinator(&key)
            .delete(&key, &read.context, None)
            .await
            .unwrap();
        users.remove(&key);
    }
    let users: Vec<Vec<u8>> = users.into_iter().collect();
    // From any node, in pages of any size.
    for (node, limit) in [(1, 37), (3, 1), (5, 1000)] {
        let listed = list_all(c.node(NodeId(node)), b"user:", None, limit)
            .await
            .unwrap();
        assert_eq!(listed, users, "node {node}, pages of {limit}");
    }
    let everything = list_all(c.node(NodeId(2)), b"", None, 100).await.unwrap();
    assert_eq!(everything.len(), users.len() + 40);
    // Resuming after any key continues from there.
    let rest = list_all(c.node(NodeId(2)), b"user:", Some(users[99].clone()), 50)
        .await
        .unwrap();
    assert_eq!(rest, users[100..]);
    // A cursor past the prefix lists nothing.
    assert!(
        list_all(c.node(NodeId(2)), b"user:", Some(b"v".to_vec()), 50)
            .await
            .unwrap()
            .is_empty()
    );
    // The replicas of some key that the lister does not replicate.
    let me = NodeId(1);
    let others = users
        .iter()
        .map(|k| c.replicas(k))
        .find(|r| !r.contains(&me))
        .expect("a key node 1 does not replicate");
    // Two of them cut off from the lister: every range still has a
    // replica answering (N=3), so the listing is complete.
    c.network.set_cut(me, others[0], true);
    c.network.set_cut(me, others[1], true);
    assert_eq!(
        list_all(c.node(me), b"user:", None, 100).await.unwrap(),
        users
    );
    // The third too: that key's range has no replica left, and the
    // listing says so rather than leave its keys out.
    c.network.set_cut(me, others[2], true);
    let err = list_all(c.node(me), b"user:", None, 100).await.unwrap_err();
    assert!(matches!(err, Error::ListingIncomplete { .. }), "{err}");
    assert!(err.is_retryable());
    for silent in &others {
        assert!(
            err.to_string().contains(&silent.to_string()),
            "names the silent nodes: {err}"
        );
    }
    // An oversize prefix is refused.
    let huge = vec![b'k'; Config::default().max_key_bytes + 1];
    assert!(matches!(
        list_all(c.node(NodeId(2)), &huge, None, 10).await,
        Err(Error::InvalidInput(_))
    ));
}
