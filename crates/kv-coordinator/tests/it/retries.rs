//! A write the client sends again (its first coordinator's answer was lost,
//! or came too late) carries the first attempt's write tag, and the
//! cluster keeps one version of it.

use kv_coordinator::Config;
use kv_core::WriteTag;

use super::Cluster;

const FIRST: Option<WriteTag> = Some(WriteTag {
    id: 0x5eed,
    retry: false,
});
const AGAIN: Option<WriteTag> = Some(WriteTag {
    id: 0x5eed,
    retry: true,
});

/// The first attempt is stored by the key's coordinator, cut off from
/// everyone (so its answer never reaches the client); the retry goes to
/// the second replica.
async fn first_attempt_cut_off(c: &Cluster, key: &[u8]) -> kv_coordinator::PutResult {
    let replicas = c.replicas(key);
    c.network.set_down(replicas[0], true);
    c.node(replicas[0])
        .write_once(key, Some(b"v1"), &[], Some(1), FIRST)
        .await
        .unwrap();
    c.node(replicas[1])
        .write_once(key, Some(b"v1"), &[], None, AGAIN)
        .await
        .unwrap()
}

async fn heal(c: &Cluster, key: &[u8]) {
    c.network.set_down(c.replicas(key)[0], false);
    for node in &c.nodes {
        node.deliver_hints(100).await.unwrap();
    }
    c.converge(0).await;
}

#[tokio::test(start_paused = true)]
async fn a_write_sent_again_to_another_coordinator_is_stored_once() {
    let c = Cluster::new(5, Config::default());
    let key = b"retried";
    let replicas = c.replicas(key);
    let retried = first_attempt_cut_off(&c, key).await;
    assert_eq!(retried.dot.actor.node(), replicas[1], "stored by the retry");
    heal(&c, key).await;
    let state = c.agreed_state(key, "after the heal");
    assert_eq!(
        state.values().flatten().collect::<Vec<_>>(),
        [b"v1"],
        "one version of the write"
    );
    let kept = state.siblings()[0].dot;
    assert!(kept <= retried.dot, "the copy with the smaller dot stays");
    assert!(
        state
            .context()
            .covers(retried.dot.actor, retried.dot.counter)
    );
    assert_eq!(
        c.node(replicas[2]).get(key, None).await.unwrap().values,
        [b"v1".to_vec()]
    );
    // One more attempt, at any replica, stores nothing new and answers
    // with the kept copy's dot.
    let again = c
        .node(replicas[2])
        .write_once(key, Some(b"v1"), &[], None, AGAIN)
        .await
        .unwrap();
    assert_eq!(again.dot, kept);
    assert_eq!(c.agreed_state(key, "after a third attempt"), state);
}

#[tokio::test(start_paused = true)]
async fn a_late_first_copy_does_not_return_after_its_write_was_overwritten() {
    let c = Cluster::new(5, Config::default());
    let key = b"overwritten";
    let replicas = c.replicas(key);
    first_attempt_cut_off(&c, key).await;
    // A client reads the acknowledged copy and overwrites it while the
    // first coordinator is still cut off.
    let read = c.node(replicas[1]).get(key, None).await.unwrap();
    assert_eq!(read.values, [b"v1".to_vec()]);
    c.node(replicas[1])
        .put(key, b"v2", &read.context, None)
        .await
        .unwrap();
    // The first coordinator comes back with its copy of v1.
    assert_eq!(c.stored(replicas[0], key), [b"v1".to_vec()]);
    heal(&c, key).await;
    let state = c.agreed_state(key, "after the heal");
    assert_eq!(
        state.values().flatten().collect::<Vec<_>>(),
        [b"v2"],
        "v1 stays overwritten"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_is_coordinated_by_the_replica_it_reaches() {
    let c = Cluster::new(5, Config::default());
    let key = b"paused";
    let replicas = c.replicas(key);
    // The key's coordinator is paused: alive to failure detection, but it
    // answers nothing.
    c.network.set_paused(replicas[0], true);
    let started = tokio::time::Instant::now();
    let written = c
        .node(replicas[1])
        .write_once(key, Some(b"v"), &[], None, AGAIN)
        .await
        .unwrap();
    assert_eq!(written.dot.actor.node(), replicas[1]);
    assert!(
        started.elapsed() < c.node(replicas[1]).config().request_timeout / 2,
        "not forwarded to the paused coordinator"
    );
    // A first attempt is still forwarded there (and so waits for it).
    let first = c
        .node(replicas[1])
        .write_once(
            key,
            Some(b"w"),
            &[],
            None,
            FIRST.map(|t| WriteTag { id: 1, ..t }),
        )
        .await;
    assert!(
        started.elapsed() >= c.node(replicas[1]).config().request_timeout,
        "{first:?}"
    );
    c.network.set_paused(replicas[0], false);
}
