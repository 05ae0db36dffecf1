//! Time to live through gRPC: the node stamps the version with its clock
//! plus the TTL, every replica holds that time, and the SDK refuses a TTL
//! it cannot send.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kv_server::client::{BatchWrite, Client, ClientConfig, ClientError};

use crate::cluster;

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_to_live_is_stamped_on_the_version_every_replica_holds() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let sdk = Client::new(&addrs, ClientConfig::default()).unwrap();
    let before = unix_secs();
    sdk.put_with_ttl(b"ttl:a", b"v".to_vec(), None, Duration::from_millis(59_500))
        .await
        .unwrap();
    let batch = sdk
        .write_many(vec![
            BatchWrite::put("ttl:b", "w", None).with_ttl(Duration::from_secs(120)),
            BatchWrite::put("ttl:c", "x", None),
        ])
        .await;
    assert!(batch.iter().all(Result::is_ok), "{batch:?}");
    let after = unix_secs();
    assert_eq!(sdk.get(b"ttl:a").await.unwrap().values, [b"v".to_vec()]);
    // Every replica holds the same time: the clock of the node that took
    // the write plus the TTL (rounded up to whole seconds).
    for (key, ttl) in [
        (&b"ttl:a"[..], Some(60)),
        (b"ttl:b", Some(120)),
        (b"ttl:c", None),
    ] {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let times: Vec<Option<u64>> = nodes
                .iter()
                .filter_map(|n| n.coordinator().replica().state(key).ok())
                .filter(|s| s.len() == 1)
                .map(|s| s.siblings()[0].expires)
                .collect();
            if times.len() == nodes.len() {
                assert!(times.windows(2).all(|w| w[0] == w[1]), "{times:?}");
                match (ttl, times[0]) {
                    (Some(ttl), Some(at)) => assert!(
                        (before + ttl..=after + ttl).contains(&at),
                        "lapses at {at}, written between {before} and {after} with {ttl} s"
                    ),
                    (None, at) => assert_eq!(at, None),
                    (Some(_), None) => panic!("no expiry stored"),
                }
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replicas lack {key:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let err = sdk
        .put_with_ttl(b"ttl:d", b"v".to_vec(), None, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
