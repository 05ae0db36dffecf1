//! A time to live is replicated state: every replica holds the same
//! expiry, reads agree a lapsed value is absent, anti-entropy has nothing
//! to repair, and the lapsed version is collected like a tombstone and
//! never comes back.

use std::time::Duration;

use kv_coordinator::Config;
use kv_core::StorageEngine;

use super::Cluster;

#[tokio::test(start_paused = true)]
async fn a_lapsed_value_is_absent_everywhere_and_collected_like_a_tombstone() {
    let c = Cluster::new(5, Config::default());
    let now = kv_core::unix_secs();
    let (lapsed, lasting, sibling) = (&b"ttl:lapsed"[..], &b"ttl:lasting"[..], &b"ttl:sibling"[..]);
    // An old value superseded by a write that has already lapsed.
    let coordinator = c.coordinator(lapsed);
    coordinator.put(lapsed, b"old", b"", Some(3)).await.unwrap();
    let read = coordinator.get(lapsed, None).await.unwrap();
    coordinator
        .write_expiring(
            lapsed,
            Some(b"brief"),
            &read.context,
            Some(3),
            None,
            Some(now - 1),
        )
        .await
        .unwrap();
    // A value that lapses in an hour.
    c.coordinator(lasting)
        .write_expiring(
            lasting,
            Some(b"hour"),
            b"",
            Some(3),
            None,
            Some(now + 3_600),
        )
        .await
        .unwrap();
    // A lapsed value beside a concurrent one that never lapses.
    c.coordinator(sibling)
        .put(sibling, b"forever", b"", Some(3))
        .await
        .unwrap();
    c.coordinator(sibling)
        .write_expiring(sibling, Some(b"brief"), b"", Some(3), None, Some(now - 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;

    // Every node reads the same: the lapsed value absent, and what it
    // superseded does not come back.
    for node in &c.nodes {
        assert!(node.get(lapsed, Some(3)).await.unwrap().values.is_empty());
        assert_eq!(
            node.get(lasting, Some(1)).await.unwrap().values,
            [b"hour".to_vec()]
        );
        assert_eq!(
            node.get(sibling, Some(2)).await.unwrap().values,
            [b"forever".to_vec()]
        );
    }
    // The replicas hold the same state byte for byte: the expiry is part
    // of the version, so anti-entropy finds nothing to repair.
    c.assert_agree(
        &[lapsed.to_vec(), lasting.to_vec(), sibling.to_vec()],
        "after the writes",
    );
    for node in &c.nodes {
        let (report, errors) = node.anti_entropy_round(64).await;
        assert!(errors.is_empty());
        assert_eq!(report.buckets, 0, "nothing differs");
    }

    // Collected like a tombstone: not within the grace, then everywhere.
    let grace = Config::default().tombstone_grace.as_secs();
    let first = c.node(c.replicas(lapsed)[0]);
    assert_eq!(first.collect_tombstones(now).await.unwrap().1, 0);
    first.collect_tombstones(now + grace + 10).await.unwrap();
    for &r in &c.replicas(lapsed) {
        assert!(
            c.node(r).replica().engine().get(lapsed).unwrap().is_none(),
            "collected on {r}"
        );
    }
    // The one beside a live value, and the one not yet lapsed, stay.
    for key in [lasting, sibling] {
        let first = c.node(c.replicas(key)[0]);
        first.collect_tombstones(now + grace + 10).await.unwrap();
        for &r in &c.replicas(key) {
            assert!(
                c.node(r).replica().engine().get(key).unwrap().is_some(),
                "{r} keeps it"
            );
        }
    }
    // Nothing resurrects the collected key.
    for node in &c.nodes {
        let (_, errors) = node.anti_entropy_round(64).await;
        assert!(errors.is_empty());
        node.deliver_hints(100).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    for node in &c.nodes {
        assert!(node.get(lapsed, Some(3)).await.unwrap().values.is_empty());
    }
    for &r in &c.replicas(lapsed) {
        assert!(c.stored(r, lapsed).is_empty(), "{r} holds no value");
    }
}
